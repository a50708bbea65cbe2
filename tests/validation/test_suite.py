"""The validation suite: adapters, the documented peer differences, the summary line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from refsim import quantize
from refsim.validation import adapters as adapters_module
from refsim.validation.__main__ import main
from refsim.validation.adapters import (
    KNOWN,
    PEER_PACKAGES,
    Adapter,
    KnownDifference,
    adapters,
    known_differences,
    peer_version,
    version_key,
)
from refsim.validation.bits import same_bits
from refsim.validation.run import format_table, run_adapter
from refsim.validation.suites import SUITES, suite

torch = pytest.importorskip("torch", reason="the torch adapters need torch (the test extra)")


@pytest.mark.parametrize("name", list(SUITES))
def test_suites_are_deterministic_and_in_dtype(name):
    for dtype in (np.float32, np.float64):
        x = suite(name, "e4m3fn", dtype, seed=3, size=512)
        assert x.dtype == dtype and x.ndim == 1 and x.size > 0
        assert np.array_equal(x.view(np.uint8), suite(name, "e4m3fn", dtype, seed=3,
                                                      size=512).view(np.uint8))


def test_codes_suite_holds_every_finite_value():
    x = suite("codes", "e4m3fn", np.float32)
    assert x.size == 254  # 256 codes less the two NaNs; -0 included
    assert np.array_equal(quantize(x, "e4m3fn").view(np.uint32), x.view(np.uint32))


def test_torch_e4m3fn_saturates_and_it_is_reported_as_known():
    x = np.array([1e4, -np.inf, 470.0], np.float32)
    assert list(torch.from_numpy(x).to(torch.float8_e4m3fn).float().numpy()) == [448, -448, 448]
    assert np.isnan(quantize(x, "e4m3fn")).all()
    [cast] = [a for a in adapters(("torch-cast",))[0] if a.fmt == "e4m3fn"]
    row = run_adapter(cast, "float32", max_size=2048)
    assert row is not None and row.ok and row.known > 0
    assert "saturates" in format_table([row], {})


def test_unexpected_difference_fails_the_row():
    wrong = Adapter("broken", "e4m3fn", "rne", lambda x: np.asarray(quantize(x, "e4m3fn",
                                                                             "rtz")))
    row = run_adapter(wrong, "float32", max_size=512)
    assert row is not None and not row.ok
    table = format_table([row], {"absent-peer": "ImportError: no module"})
    assert table.endswith("0 passed, 1 failed")
    assert "absent-peer" in table and "skipped: ImportError" in table
    assert "first mismatches" in table


def test_main_prints_summary_and_exit_status(capsys, monkeypatch):
    def absent():
        raise ImportError("No module named 'absent_peer'")

    monkeypatch.setitem(adapters_module.PEERS, "absent-peer", absent)
    status = main(["--peers", "torch-cast", "ml_dtypes", "absent-peer", "--max-size", "512",
                   "--quiet"])
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert status == 0 and last.endswith("0 failed") and "passed" in last
    assert "absent-peer          skipped: ImportError: No module named 'absent_peer'" in out


def _installed_peer(module: str, adapter: str):
    """The adapters of a peer that the test extra installs: absent -> skip; installed but
    unusable -> fail (a broken peer must not pass as a skip)."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (it comes with the test extra)")
    found, skipped = adapters((adapter,))
    assert adapter not in skipped, f"{module} is installed but its adapter fails: {skipped}"
    assert found, adapter
    return found


def test_torchao_mx_agrees():
    found = _installed_peer("torchao", "torchao-mx")
    for adapter in found:
        row = run_adapter(adapter, "float32", max_size=1024)
        assert row is not None and row.ok, adapter.name


def test_torchao_nvfp4_agrees():
    """torchao's NVFP4 conversion, two-level and single-level, against refsim.quantize_blocks on
    every suite: bit-identical outside the documented differences, each of which shows."""
    found = _installed_peer("torchao", "torchao-nvfp4")
    assert {a.fmt for a in found} == {"nvfp4", "block(e2m1fn,16,e4m3fn,nearest)"}
    for adapter in found:
        row = run_adapter(adapter, "float32", max_size=1024)
        assert row is not None and row.ok, adapter.name
        assert row.known > 0, adapter.name  # random bit patterns hit the E4M3 scale floor


def test_refsim_torch_adapter_passes_small_sample():
    found, _ = adapters(("refsim-torch-cpu",))
    for adapter in [a for a in found if a.fmt in ("e4m3fn", "int8")]:
        row = run_adapter(adapter, "float64", max_size=256)
        assert row is not None and row.ok and row.known == 0, adapter.name


def test_gfloat_agrees():
    found = _installed_peer("gfloat", "gfloat")
    for adapter in [a for a in found if a.fmt in ("e4m3fn", "e2m1fn")]:
        row = run_adapter(adapter, "float64", max_size=1024)
        assert row is not None and row.ok, adapter.name


@pytest.mark.slow
def test_qtorch_rounds_ties_away_and_saturates():
    found, skipped = adapters(("qtorch",))
    if "qtorch" in skipped:
        pytest.skip(f"qtorch not available: {skipped['qtorch']}")
    from qtorch.quant import float_quantize
    got = float_quantize(torch.tensor([1 + 2.0**-4, 1e4]), 4, 3, rounding="nearest")
    assert got.tolist() == [1.125, 480.0]
    row = run_adapter(found[0], "float32", max_size=4096)
    assert row is not None and row.ok and row.known > 0


# ---- peer behaviour is a fact about a version ---------------------------------------------------
def test_version_key_orders_versions_without_packaging():
    assert version_key("0.7") == version_key("0.7.0") == version_key("0.7.0.post1")
    assert version_key("2.13.0+cpu") == version_key("2.13.0")
    assert version_key("0.6.0") < version_key("0.7.0rc1") < version_key("0.7")
    assert version_key("0.7") < version_key("0.7.1")
    assert version_key("0.7.0.dev3") < version_key("0.7.0")
    assert version_key("0.10.0") > version_key("0.9.9")
    with pytest.raises(ValueError, match="version must start with release numbers"):
        version_key("latest")


def test_known_difference_version_ranges():
    [double] = [d for d in KNOWN if (d.peer, d.key) == ("ml_dtypes", "double-rounding")]
    assert double.versions == "< 0.7"
    assert double.applies_to("0.5.4") and double.applies_to("0.6.0")
    assert not double.applies_to("0.7.0") and not double.applies_to("1.0")
    bounded = KnownDifference("p", "k", None, "r", double.mask, double.example, since="2.1",
                              fixed="2.5")
    assert bounded.versions == ">= 2.1, < 2.5"
    assert [bounded.applies_to(v) for v in ("2.0.9", "2.1.0", "2.4.9", "2.5")] == [
        False, True, True, False]


def test_table_is_well_formed():
    keys = [(d.peer, d.key) for d in KNOWN]
    assert len(keys) == len(set(keys))
    for d in KNOWN:
        assert d.peer in PEER_PACKAGES and d.checked and d.reason
        assert d.formats is None or d.example.fmt in d.formats
        assert len(d.example.inputs) == len(d.example.peer) == len(d.example.refsim)
        for version in (d.since, d.fixed, *d.checked):
            if version is not None:
                version_key(version)


def test_adapters_choose_masks_from_the_installed_version(monkeypatch):
    """ml_dtypes before 0.7 double-rounds float64 and sends e8m0fnu subnormals up; 0.7 does
    neither: the masks (and so what is excused) follow the installed version."""
    pytest.importorskip("ml_dtypes", reason="the ml_dtypes adapter needs ml_dtypes")
    x = np.array([-431.99999999999994])
    for version, excused in (("0.6.0", True), ("0.7.0", False)):
        monkeypatch.setattr(adapters_module, "peer_version", lambda peer, v=version: v)
        [adapter] = [a for a in adapters(("ml_dtypes",))[0] if a.fmt == "e4m3fn"]
        assert ("double rounding" in adapter.known_reason) == excused
        assert ("ml_dtypes: < 0.7" in adapter.known_reason) == excused
        stale = np.array([-448.0])  # what ml_dtypes 0.6 gives
        mask = (np.zeros(1, bool) if adapter.known is None
                else adapter.known(x, stale, adapter.reference(x)))
        assert bool(mask[0]) == excused
        [e8m0] = [a for a in adapters(("ml_dtypes",))[0] if a.fmt == "e8m0fnu"]
        assert ("2^-126" in e8m0.known_reason) == excused
    monkeypatch.setattr(adapters_module, "peer_version", lambda peer: None)
    assert {d.key for d in known_differences("ml_dtypes")} == {
        d.key for d in KNOWN if d.peer == "ml_dtypes"}  # unknown version: every row


def _example_params():
    for d in KNOWN:
        marks = [pytest.mark.slow] if d.peer == "qtorch" else []  # compiles C++ on import
        yield pytest.param(d, id=f"{d.peer}:{d.key}", marks=marks)


@pytest.mark.parametrize("difference", list(_example_params()))
def test_known_difference_holds_exactly_for_its_versions(difference):
    """refsim's answer on the example is asserted whatever is installed; the installed peer
    shows the difference when the table says its version has it, and agrees with refsim when
    the table says its version lacks it. A newer peer that fixes a difference fails here: the
    table needs its `fixed` version (make test pins the peers; make test-latest finds this)."""
    ex = difference.example
    x = np.array(ex.inputs, ex.dtype)
    refsim_value = np.array(ex.refsim, ex.dtype)
    found, skipped = adapters((difference.peer,))
    if difference.peer in skipped:
        pytest.skip(f"{difference.peer} not installed: {skipped[difference.peer]}")
    [adapter] = [a for a in found if a.fmt == ex.fmt and a.rounding == ex.rounding
                 and a.overflow == ex.overflow and a.variant == ex.variant]
    expected = adapter.reference(x)
    assert same_bits(expected, refsim_value).all(), (difference.key, expected)
    got = adapter.run(x)
    version = peer_version(difference.peer)
    assert version is not None
    package = PEER_PACKAGES[difference.peer]
    if difference.applies_to(version):
        assert same_bits(got, np.array(ex.peer, ex.dtype)).all(), (
            f"{package} {version} no longer shows {difference.key!r} ({got} on {ex.inputs}):"
            f" record the version that fixed it in validation/adapters.py KNOWN")
        assert not same_bits(got, expected).any()
        assert difference.mask(ex.fmt)(x, got, expected).all()
        assert adapter.known is not None and adapter.known(x, got, expected).all()
    else:
        assert same_bits(got, expected).all(), (
            f"{package} {version} shows {difference.key!r} although the table says it was "
            f"fixed in {difference.fixed}: {got} on {ex.inputs}")


def test_docs_list_every_known_difference_with_its_versions():
    """docs/validation.md's table of known differences is this table: peer, key, the versions
    that have it and the versions it was checked on."""
    text = (Path(__file__).parents[2] / "docs" / "validation.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 5 and cells[0] in PEER_PACKAGES:
            rows[(cells[0], cells[1])] = (cells[2], cells[3])
    assert rows == {(d.peer, d.key): (d.versions, ", ".join(d.checked)) for d in KNOWN}
