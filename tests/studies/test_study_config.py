"""Bad study configurations give errors that name the parameter and what is allowed; the
statistics and the allocation policies behave as documented."""

from __future__ import annotations

import math

import pytest

from refsim.cli import main
from refsim.studies import run_study
from refsim.studies.allocate import allocation, widths
from refsim.studies.params import parse_assignments
from refsim.studies.stats import fmt_p, loglog_slope, paired, spearman


@pytest.mark.parametrize(("name", "overrides", "message"), [
    ("accumulation", {"trials": 0}, "parameter 'trials' must be a positive int"),
    ("accumulation", {"formats": ["nope"]}, "parameter 'formats'"),
    ("accumulation", {"orders": ["random"]}, "sequential, pairwise, chunked, kahan"),
    ("accumulation", {"tirals": 3}, "unknown parameter 'tirals' (allowed: "),
    ("accumulation", {"trials": "many"}, "parameter 'trials' must be a number"),
    ("accumulation", {"trials": 2.5}, "parameter 'trials' must be an int"),
    ("depth", {"inits": ["xavier"]}, "orthogonal, he-relu"),
    ("frequency", {"train_fmt": "e9m99x"}, "parameter 'train_fmt'"),
    ("sensitivity", {"models": ["vgg"]}, "mlp, cnn, resnet, transformer"),
    ("allocate", {"mean_bits": 0}, "mean_bits - spread >= 2 and mean_bits + spread <= 16"),
    ("allocate", {"operand_family": "fp"}, "parameter 'operand_family' must be one of int, float"),
    ("tolerance", {"doses": [0, 4]}, "ascending distinct ints in [2, 16] (operand_family int)"),
    ("causal", {"operand_family": "float", "doses": [0, 23]}, "in [0, 22] (operand_family float"),
])
def test_bad_config_is_a_clear_error(tmp_path, name, overrides, message):
    with pytest.raises(ValueError, match="study " + name) as info:
        run_study(name, tmp_path, quick=True, overrides=overrides)
    assert message in str(info.value)


def test_unknown_study(tmp_path):
    with pytest.raises(ValueError, match=r"unknown study 'accumulate' \(allowed: accumulation"):
        run_study("accumulate", tmp_path)


def test_cli_errors(capsys):
    assert main(["study", "nope", "--quick"]) == 2
    assert "unknown study 'nope'" in capsys.readouterr().err
    assert main(["study", "all", "--set", "trials=3"]) == 2
    assert "STUDY.KEY=VALUE" in capsys.readouterr().err
    assert main(["study", "depth", "--set", "layers=-1", "--workers", "1"]) == 2
    assert "parameter 'layers' must be a positive int" in capsys.readouterr().err


def test_cli_profile(tmp_path, capsys):
    assert main(["study", "profile", "--model", "mlp", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fc2" in out and "backward-weight" in out
    assert (tmp_path / "mlp.csv").is_file() and (tmp_path / "mlp.json").is_file()


def test_parse_assignments():
    assert parse_assignments(["a=3", "b=[1, 2]", "c=e5m2", "d=true"]) == {
        "a": 3, "b": [1, 2], "c": "e5m2", "d": True}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_assignments(["a"])


def test_stats_never_warn():
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])["rho"])
    assert math.isnan(spearman([1, 2], [1, 2])["p"])
    s = spearman([1, 2, 3, 4], [2, 4, 6, 9])
    assert s["rho"] == pytest.approx(1.0) and s["n"] == 4
    p = paired([1.0, 2.0, 3.0], [2.0, 2.5, 4.5])
    assert p["mean_diff"] == pytest.approx(-1.0) and p["a_lower"] == 3 and p["p"] < 0.2
    # 95% t interval: mean +- t(0.975, 2) * sd / sqrt(3), sd of (-1, -0.5, -1.5) = 0.5
    assert p["ci_high"] - p["mean_diff"] == pytest.approx(4.302653 * 0.5 / 3 ** 0.5, rel=1e-6)
    assert math.isnan(paired([1.0, 2.0], [2.0, 3.0])["p"])  # no spread in the differences
    assert loglog_slope([1, 4, 16], [1, 2, 4]) == pytest.approx(0.5)
    assert (fmt_p(0.0), fmt_p(0.0123), fmt_p(math.nan)) == ("< 1e-15", "0.012", "n/a")


def test_allocation_policies():
    factors = [{"layer": "a", "k": 9, "f": 100.0, "d": 1}, {"layer": "b", "k": 72, "f": 50.0,
               "d": 2}, {"layer": "c", "k": 64, "f": 10.0, "d": 3}]
    assert widths(3, 2, 1) == [1, 2, 3]
    assert sum(widths(7, 4, 2)) == 28 and sum(widths(4, 2, 1)) == 8
    assert allocation("A+", factors, 2, 1) == {"a": 1, "c": 2, "b": 3}
    assert allocation("A-", factors, 2, 1) == {"b": 1, "c": 2, "a": 3}
    assert allocation("F+", factors, 2, 1) == {"c": 1, "b": 2, "a": 3}
    assert allocation("D-", factors, 2, 1) == {"c": 1, "b": 2, "a": 3}
    assert allocation("U", factors, 2, 1) == {"a": 2, "b": 2, "c": 2}
    # factor: rank(F) - rank(K): a (small K, high F) gets the most bits, b the fewest.
    assert allocation("factor", factors, 2, 1) == {"b": 1, "c": 2, "a": 3}
    r = allocation("R", factors, 2, 1, (1, 2))
    assert sorted(r.values()) == [1, 2, 3] and r == allocation("R", factors, 2, 1, (1, 2))
