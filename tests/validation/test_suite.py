"""The validation suite: adapters, the documented peer differences, the summary line."""

from __future__ import annotations

import numpy as np
import pytest

from refsim import quantize
from validation import adapters as adapters_module
from validation.__main__ import main
from validation.adapters import Adapter, adapters
from validation.run import format_table, run_adapter
from validation.suites import SUITES, suite

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


def test_torchao_mx_agrees_or_is_skipped_with_reason():
    found, skipped = adapters(("torchao-mx",))
    if "torchao-mx" in skipped:
        pytest.skip(f"torchao MX not available: {skipped['torchao-mx']}")
    for adapter in found:
        row = run_adapter(adapter, "float32", max_size=1024)
        assert row is not None and row.ok, adapter.name


def test_refsim_torch_adapter_passes_small_sample():
    found, _ = adapters(("refsim-torch-cpu",))
    for adapter in [a for a in found if a.fmt in ("e4m3fn", "int8")]:
        row = run_adapter(adapter, "float64", max_size=256)
        assert row is not None and row.ok and row.known == 0, adapter.name


def test_gfloat_agrees_or_is_skipped_with_reason():
    found, skipped = adapters(("gfloat",))
    if "gfloat" in skipped:
        pytest.skip(f"gfloat not available: {skipped['gfloat']}")
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
