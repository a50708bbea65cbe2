"""Every study's quick mode on a tiny grid: outputs written, JSON matching the schema,
conclusions present; reruns come from the cache; results do not depend on the executor;
`refsim study all` assembles the combined report."""

from __future__ import annotations

import json
import re

import pytest

from refsim.cli import main
from refsim.studies import STUDIES, run_study
from refsim.studies.report import validate

pytest.importorskip("matplotlib", reason="the plots extra (matplotlib) draws the PNGs")

TINY = {
    "accumulation": {"log2_k": [4, 6], "formats": ["bf16"], "roundings": ["rne", "sr"],
                     "orders": ["sequential"], "trials": 2, "vrr_mantissas": [2, 3],
                     "vrr_log2_k": [4, 6, 8], "vrr_trials": 4},
    "frequency": {"log2_u": [0, 2], "product_seeds": [0], "batches": [8], "widths": [16],
                  "seeds": [0], "steps": 2, "roundings": ["rne"], "k": 16, "n": 4},
    "depth": {"layers": 3, "width": 8, "batch": 4, "chain_seeds": [0], "seeds": [0],
              "steps": 2, "inits": ["he-relu"], "roundings": ["rne"],
              "train_hidden": [8, 8, 8]},
    "sensitivity": {"models": ["mlp"], "seeds": [0], "steps": 2},
    "tolerance": {"architectures": ["mlp-down"], "seeds": [0, 1], "noise_seeds": [0, 1],
                  "doses": [2, 6], "steps": 2, "layers": ["fc1"]},
    "causal": {"sweeps": ["K/forward"], "levels": [16, 64], "seeds": [0, 1],
               "noise_seeds": [0, 1], "doses": [2, 6], "steps": 2},
    "allocate": {"architectures": ["mlp-down"], "seeds": [0, 1], "steps": 2,
                 "random_draws": 1, "policies": ["factor", "U"]},
    "recipes": {"models": ["mlp"], "seeds": [0, 1], "steps": 2, "recipes": ["mxfp8"],
                "roles": False},
    "accumulators": {"log2_k": [7, 8], "compare_k": 256, "m": 2, "n": 2, "trials": 2,
                     "data": ["uniform"], "claim_data": ["uniform"], "hidden": [8, 16],
                     "seeds": [0, 1], "steps": 2},
}

PAPER_IDS = {"accumulation", "frequency", "depth", "allocation"}
# refsim.studies.claims ids
CLAIM_PREFIXES = ("cross-gemm/", "causal/", "allocation/", "accumulators/")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Every study run once on its tiny grid (one cache shared by the tests below)."""
    base = tmp_path_factory.mktemp("studies")
    docs = {name: run_study(name, base / name, quick=True, overrides=TINY[name], workers=1,
                            cache_dir=base / "cache") for name in STUDIES}
    return base, docs


@pytest.mark.parametrize("name", STUDIES)
def test_quick_tiny_grid(tiny, name):
    base, _ = tiny
    out = base / name
    data = json.loads((out / "results.json").read_text())
    assert validate(data) == []
    assert data["study"] == name and data["quick"] is True
    assert data["params"] == {**data["params"], **TINY[name]}
    assert data["grid"]["runs"] == data["grid"]["computed"] > 0
    assert data["plots"]
    for f in data["plots"]:
        assert (out / f).read_bytes().startswith(b"\x89PNG")
    assert (out / "results.csv").read_text().count("\n") == len(data["rows"]) + 1
    assert (out / "report.md").read_text().startswith("## ")
    assert data["findings"], "every study states what its numbers support"
    if name == "recipes":
        assert {f["id"] for f in data["findings"]} == {"recipe-mxfp8"}
    elif name != "accumulation":
        ids = {f["id"] for f in data["findings"]}
        assert ids & PAPER_IDS or all(i.startswith(CLAIM_PREFIXES) for i in ids)


def test_rerun_comes_from_the_cache(tiny):
    base, docs = tiny
    again = run_study("sensitivity", base / "again", quick=True, overrides=TINY["sensitivity"],
                      cache_dir=base / "cache", plots=False)
    assert again["grid"]["cached"] == again["grid"]["runs"] and again["grid"]["computed"] == 0
    assert json.dumps(again["rows"]) == json.dumps(docs["sensitivity"]["rows"])


def test_same_config_same_numbers(tiny, tmp_path):
    _, docs = tiny
    fresh = run_study("depth", tmp_path, quick=True, overrides=TINY["depth"], workers=1,
                      use_cache=False, plots=False)
    assert fresh["grid"]["computed"] == fresh["grid"]["runs"]
    assert json.dumps(fresh["rows"]) == json.dumps(docs["depth"]["rows"])


def test_cli_all_writes_the_combined_report(tiny, capsys):
    base, _ = tiny
    sets = []
    for name, params in TINY.items():
        for key, value in params.items():
            sets += ["--set", f"{name}.{key}={json.dumps(value)}"]
    out = base / "all"
    assert main(["study", "all", "--quick", "--out", str(out), "--cache", str(base / "cache"),
                 "--workers", "1", "--quiet", "--no-plots", *sets]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in printed
    assert "findings (this run's numbers" in printed
    assert re.search(r"\[(SUPPORTED|NOT SUPPORTED|UNDECIDED)\] ", printed)  # a verdict line
    report = (out / "report.md").read_text()
    assert report.startswith("# refsim factor studies")
    assert "## Conclusions" in report and "## Factor profiles of the models" in report
    for name in STUDIES:
        assert json.loads((out / name / "results.json").read_text())["grid"]["computed"] == 0
    assert list((out / "profiles").glob("*.csv"))  # the profiled models (tolerance: its own)


def test_validate_reports_problems():
    assert validate([]) == ["document must be an object; got list"]
    problems = validate({"study": "x", "findings": [{"id": 1}], "plots": ["a.svg"]})
    assert "missing key 'title'" in problems
    assert any("findings[0].id" in p for p in problems)
    assert any("a.svg" in p for p in problems)
