"""The accumulators study (refsim.studies.accumulators): exact reference, accumulator specs,
parameter checks, and a tiny grid end to end."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

import refsim
from refsim.studies import accumulators as acc


def _e4m3(rng, shape, spread=4.0):
    return np.asarray(refsim.quantize(rng.standard_normal(shape) * spread, "e4m3fn"),
                      np.float64)


def test_exact_products_equal_fraction_sums():
    rng = np.random.default_rng(1)
    a = _e4m3(rng, (3, 50))
    b = _e4m3(rng, (50, 2))
    a[0, :5] = 2.0 ** -9  # the smallest subnormal
    b[:5, 0] = 448.0
    got = acc.exact_products(a, b)
    for i in range(3):
        for j in range(2):
            want = sum((Fraction(float(a[i, k])) * Fraction(float(b[k, j]))
                        for k in range(50)), Fraction(0))
            assert got[i, j] == float(want)


def test_exact_products_rejects_values_off_the_e4m3_grid():
    with pytest.raises(ValueError, match="e4m3 values"):
        acc.exact_products(np.full((1, 2), 2.0 ** -10), np.ones((2, 1)))


def test_to_e4m3_tensor_scaling_maps_amax_to_448():
    x = np.array([[0.5, -3.0, 1e-3]])
    q = acc.to_e4m3(x, "tensor")
    assert q[0, 1] == -448.0 and q[0, 0] == pytest.approx(448 / 6, rel=2 ** -3)
    assert np.array_equal(acc.to_e4m3(x, "none"), refsim.quantize(x, "e4m3fn"))


def test_operands_share_one_sequence_along_k():
    a, b = acc.operands("activation", 2, 3, 4, 64, seed=5)
    a2, b2 = acc.operands("activation", 2, 3, 4, 128, seed=5)
    assert np.array_equal(a, a2[:, :64]) and np.array_equal(b, b2[:64])
    assert (a >= 0).all() and (b < 0).any()  # |N| activations, N weights


def test_accumulator_specs_are_the_presets_and_the_deepseek_recipe():
    from refsim.hardware import gemm_spec
    from refsim.nn.recipes import recipe

    assert acc.gemm("h100") == gemm_spec("h100", "e4m3")
    assert acc.gemm("b200") == gemm_spec("b200", "e4m3")
    promote = acc.gemm("h100-promote")
    assert promote.acc.chunk == 128 and promote.acc.outer is not None
    assert promote.acc == recipe("deepseek-fp8")[1]["forward"][0].acc
    assert acc.gemm("fp32").acc.fmt.man_bits == 23
    with pytest.raises(ValueError, match="unknown accumulator"):
        acc.gemm("a100")


def test_promotion_changes_nothing_within_one_chunk_and_helps_beyond():
    # Up to 128 products the promoted chain is the H100 chain plus an exact fp32 addition to 0.
    rng = np.random.default_rng(2)
    a = np.abs(_e4m3(rng, (4, 1024), 1.0))
    b = np.abs(_e4m3(rng, (1024, 4), 1.0))
    h, pr = acc.gemm("h100"), acc.gemm("h100-promote")
    assert np.array_equal(refsim.matmul(a[:, :128], b[:128], h),
                          refsim.matmul(a[:, :128], b[:128], pr))
    exact = acc.exact_products(a, b)
    err_h = np.abs(np.asarray(refsim.matmul(a, b, h), np.float64) - exact) / exact
    err_p = np.abs(np.asarray(refsim.matmul(a, b, pr), np.float64) - exact) / exact
    assert err_p.max() < err_h.min()  # one-signed data: the H100 chain's truncation piles up


@pytest.mark.parametrize("key,value,match", [
    ("log2_k", [9, 8], "increasing"),
    ("log2_k", [7, 21], "increasing"),
    ("data", ["cauchy"], "distinct"),
    ("compare_k", 4097, "one of the K"),
    ("claim_data", ["normal"], "data kinds"),
    ("trials", 1, ">= 2"),
    ("seeds", [0], "at least two"),
    ("sesoi_seed_sd", 0.0, "positive"),
    ("claim_measure", "median_rel", "one of"),
    ("hidden", [64, 64], "increasing"),
])
def test_check_names_the_bad_parameter(key, value, match):
    p = dict(acc.QUICK)
    p[key] = value
    with pytest.raises(ValueError, match=f"'{key}'.*{match}"):
        acc.check(p)


def test_defaults_pass_their_checks():
    for p in (acc.QUICK, acc.STANDARD, acc.FULL):
        acc.check(dict(p))
    assert {1 << v for v in acc.STANDARD["log2_k"]} >= {128, 4096, 65536}


TINY = {"log2_k": [7, 8, 9], "compare_k": 256, "m": 4, "n": 4, "trials": 3, "hidden": [16, 64],
        "steps": 6, "seeds": [0, 1, 2], "data": ["uniform", "activation"]}


def test_tiny_grid_end_to_end(tmp_path):
    from refsim.studies import STUDIES, run_study

    assert "accumulators" in STUDIES
    doc = run_study("accumulators", tmp_path, quick=True, overrides=TINY, workers=1,
                    plots=False)
    assert doc["grid"]["runs"] == 2 * 1 * 3 + 4 * 2 * 3
    curves = doc["summary"]["synthetic"]["curves"]
    assert set(curves) == {f"{d}/tensor/{a}" for d in TINY["data"] for a in acc.LOW}
    # one-signed data: the H100 chain's error grows with K, the promoted one's does not
    h = curves["uniform/tensor/h100"]
    assert h["slope"]["frob_rel"]["slope"] > 0.5
    assert h["max_rel"][-1] > curves["uniform/tensor/h100-promote"]["max_rel"][-1]
    damage = doc["summary"]["training"]["damage"]
    assert set(damage) == {f"{a}/{hd}" for a in acc.LOW for hd in TINY["hidden"]}
    assert all(d["n"] == 3 for d in damage.values())
    claims = acc.claims(doc)
    ids = [c["claim"] for c in claims]
    assert len(ids) == len(set(ids)) == 2 * (3 + 2) + 3
    assert {c["family"] for c in claims} == {"accumulators"}
    assert all(i.startswith("accumulators/") for i in ids)
    train = {c["claim"]: c for c in claims if "/train-" in c["claim"]}
    assert train["accumulators/train-h100"]["direction"] == 1
    assert train["accumulators/train-b200"]["direction"] == 0
    assert all(math.isfinite(c["effect"]) for c in claims if "/slope-" in c["claim"])
    assert [f["id"] for f in doc["findings"]] == ids  # the findings are the claims' verdicts
    assert "DeepSeek-V3" in doc["section"] and (tmp_path / "report.md").exists()


@pytest.mark.slow
def test_quick_mode_runs_and_every_claim_has_power(tmp_path):
    from refsim.studies import run_study

    doc = run_study("accumulators", tmp_path, mode="quick", workers=2)
    claims = acc.claims(doc)
    assert claims and all(math.isfinite(c["se"]) for c in claims
                          if not c["claim"].endswith("train-b200"))
