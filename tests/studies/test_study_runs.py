"""Every study's quick mode on a tiny grid: outputs written, JSON matching the schema,
conclusions present; a second run is served from the cache with the same numbers."""

from __future__ import annotations

import json

import pytest

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
    "allocate": {"models": ["mlp"], "seeds": [0], "steps": 2, "random_draws": 1,
                 "policies": ["factor", "U"]},
}

PAPER_IDS = {"accumulation", "frequency", "depth", "allocation"}


@pytest.mark.parametrize("name", STUDIES)
def test_quick_tiny_grid(name, tmp_path):
    out = tmp_path / name
    doc = run_study(name, out, quick=True, overrides=TINY[name], workers=1)
    data = json.loads((out / "results.json").read_text())
    assert validate(data) == []
    assert data["study"] == name and data["quick"] is True
    assert data["params"] == {**data["params"], **TINY[name]}
    assert data["grid"]["runs"] == data["grid"]["computed"] > 0
    for f in data["plots"]:
        assert (out / f).stat().st_size > 0
    assert (out / "results.csv").read_text().count("\n") == len(data["rows"]) + 1
    assert (out / "report.md").read_text().startswith("## ")
    assert data["findings"], "every study states what its numbers support"
    if name != "accumulation":
        assert {f["id"] for f in data["findings"]} & PAPER_IDS
    # Resumed from the cache: nothing recomputed, the same numbers.
    again = run_study(name, out, quick=True, overrides=TINY[name], workers=1, plots=False)
    assert again["grid"]["cached"] == again["grid"]["runs"]
    assert json.dumps(again["rows"], sort_keys=True) == json.dumps(doc["rows"], sort_keys=True)


def test_validate_reports_problems():
    assert validate([]) == ["document must be an object; got list"]
    problems = validate({"study": "x", "findings": [{"id": 1}], "plots": ["a.svg"]})
    assert "missing key 'title'" in problems
    assert any("findings[0].id" in p for p in problems)
    assert any("a.svg" in p for p in problems)
