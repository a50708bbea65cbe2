"""The GEMM fast paths (refsim.backends.cpu_gemm: its round-to-odd rows, and the register-tiled
routes of refsim.backends.cpu_tile) against the exact core, bit for bit.

Each case asserts which fast path really ran (the plan's route, and that it left few outputs to
the exact core), so a silent fall-back cannot make a test pass. The tiled routes have their own
hard cases in tests/refsim/test_gemm_routes.py. The exact core itself is held to the Fraction
twin by tests/refsim/test_accumulate.py, whose matmul cases also run the fast paths.
"""

from __future__ import annotations

import numpy as np
import pytest
from route_pairs import routes

from refsim import quantize
from refsim.backends import cpu_gemm
from refsim.formats import get_format
from refsim.formats.policy import ROUNDINGS
from refsim.kernels import tile
from refsim.specs import AccumSpec, Cast, format_fits
from refsim.validation.bits import assert_same_bits

DETERMINISTIC = [r for r in ROUNDINGS if r != "sr"]


def _operands(rng, m, n, k, fmt, scale=1.0):
    """(P=1, M, K) and (P=1, N, K) operands of `fmt` (None: float32) with the hard cases mixed
    in: exact cancellations, signed zeros, values of widely different sizes."""
    a = rng.standard_normal((1, m, k)) * scale * np.exp2(rng.integers(-8, 8, (1, m, k)))
    b = rng.standard_normal((1, n, k)) * np.exp2(rng.integers(-8, 8, (1, n, k)))
    a[0, 0, : k // 2] = 1.0
    b[0, 0, : k // 2] = 1.0
    b[0, 1, : k // 2] = -1.0  # row 0 . col 1 cancels exactly, then continues
    a[0, 1, ::5] = -0.0
    a[0, 2] = a[0, 3]
    b[0, 2] = -b[0, 2]
    a, b = a.astype(np.float32), b.astype(np.float32)
    if fmt is not None:
        a, b = quantize(a, fmt, overflow="saturate"), quantize(b, fmt, overflow="saturate")
    return a, b


def _route(acc_fmt: str, operands: str | None, rounding: str) -> str:
    """The route cpu_gemm.plan takes for the cases below (refsim.backends.cpu_tile's rules)."""
    if acc_fmt == "e5m2fnuz" or rounding in ("rna", "rto"):
        return "odd-rows"
    if rounding != "rne":
        return "directed-nested" if tile.AVX512 else "odd-rows"
    return "tile-odd" if operands is None else "double-rounding"


def _compare(a, b, acc, cast=None, *, lane, max_left=0.1, route=None):
    """The fast path equals the exact core on every output; it ran in `lane` (and `route`) and
    left at most max_left of the outputs to the exact core."""
    plan = cpu_gemm.plan(a, b, acc, cast, False)
    assert plan is not None and plan.lane == np.dtype(lane), (str(acc), plan)
    assert route is None or plan.route == route, (str(acc), plan)
    raw = cpu_gemm.run(plan, a, b)
    assert np.isnan(raw).mean() <= max_left, (str(acc), np.isnan(raw).mean())
    fast, exact = routes(a, b, acc, cast)
    assert_same_bits(fast, exact, context=f"{acc} cast={cast}")


@pytest.mark.parametrize("rounding", DETERMINISTIC)
@pytest.mark.parametrize("overflow", ["default", "saturate"])
@pytest.mark.parametrize(("acc_fmt", "operands", "lane"), [
    ("fp16", "e4m3fn", np.float32),  # the FP8 GEMM case
    ("bf16", "e5m2", np.float32),
    ("e5m2fnuz", "e4m3fn", np.float32),  # no -0, NaN on overflow: every rare lane
    ("fp32", None, np.float64),  # float32 operands: 48-bit products need float64 lanes
])
def test_sequential_matches_exact_core(acc_fmt, operands, lane, overflow, rounding):
    rng = np.random.default_rng(ROUNDINGS.index(rounding))
    a, b = _operands(rng, 6, 7, 50, operands)
    acc = AccumSpec(acc_fmt, rounding, overflow=overflow)
    _compare(a, b, acc, lane=lane, max_left=1.0 if acc_fmt == "e5m2fnuz" else 0.1,
             route=_route(acc_fmt, operands, rounding))


@pytest.mark.parametrize("rounding", ["rne", "rdn"])
def test_chunked_with_fp32_outer_matches_exact_core(rounding):
    rng = np.random.default_rng(1)
    a, b = _operands(rng, 5, 6, 70, "e4m3fn")
    for chunk in (1, 4, 32, 200):
        acc = AccumSpec("fp16", "rne", "chunked", chunk=chunk, outer=AccumSpec("fp32", rounding))
        _compare(a, b, acc, lane=np.float32)


def test_product_cast_and_output_cast_match_exact_core():
    rng = np.random.default_rng(2)
    a, b = _operands(rng, 5, 6, 40, "e4m3fn")
    acc = AccumSpec("fp32", "rtz", product=Cast("bf16", "rne"))
    _compare(a, b, acc, Cast("e5m2", "rna", "saturate"), lane=np.float64)
    _compare(a, b, AccumSpec("fp16"), Cast("int8"), lane=np.float32)


def test_overflow_to_inf_and_nan_are_redone_exactly():
    """An fp16 accumulator that overflows to Inf, and an e4m3fn one that overflows to NaN: those
    outputs go to the exact core; the others stay on the fast path."""
    rng = np.random.default_rng(3)
    a, b = _operands(rng, 4, 5, 30, "e4m3fn")
    a[0, 0] = 448.0
    b[0, 0] = 448.0  # 30 * 448^2 overflows fp16 (max 65504) and e4m3fn (448)
    for fmt in ("fp16", "e4m3fn"):
        _compare(a, b, AccumSpec(fmt), lane=np.float32, max_left=1.0)
        plan = cpu_gemm.plan(a, b, AccumSpec(fmt), None, False)
        assert np.isnan(cpu_gemm.run(plan, a, b)[0, 0, 0])


def test_ties_and_tiny_sums_in_the_accumulators_subnormals():
    """Products whose sums land on fp16 ties and below fp16's smallest normal."""
    a = np.full((1, 3, 8), 2.0 ** -9, np.float32)  # e4m3 subnormal steps
    b = np.array([[[2.0 ** -7, 2.0 ** -8, -2.0 ** -9, 2.0 ** -6, 1.0, -1.0, 2.0 ** -9,
                    2.0 ** -9]]], np.float32).repeat(4, axis=1)
    a[0, 1] = 2048.0 * 2.0 ** -9
    a[0, 2, ::2] = -a[0, 2, ::2]
    for rounding in DETERMINISTIC:
        _compare(a, b, AccumSpec("fp16", rounding), lane=np.float32)
        _compare(a, b, AccumSpec("e5m2", rounding), lane=np.float32)


def test_plan_refuses_what_it_cannot_do_exactly():
    rng = np.random.default_rng(4)
    a, b = _operands(rng, 4, 4, 8, "e4m3fn")
    long64 = rng.standard_normal((1, 3, 8))  # 53-bit significands: products need 106 bits
    refused = [
        (a, b, AccumSpec("fp16", "sr"), None, False),
        (a, b, AccumSpec("fp16"), None, True),  # counts
        (a, b, AccumSpec("e5m2", order="pairwise"), None, False),  # no tiled route for e5m2
        (a, b, AccumSpec("fp16", "rna", order="kahan"), None, False),
        (a, b, AccumSpec("fp32", product=Cast("bf16", "sr")), None, False),
        (a, b, AccumSpec("fp16"), Cast("e4m3fn", "sr"), False),
        (long64, long64, AccumSpec("fp32"), None, False),
        (np.where(a == a.max(), np.inf, a), b, AccumSpec("fp16"), None, False),
        (a, None, AccumSpec("fp16"), None, False),  # sum: no products
    ]
    for a3, b3, acc, cast, counts in refused:
        assert cpu_gemm.plan(a3, b3, acc, cast, counts) is None, str(acc)
    # float32 operands: fp16 accumulation runs in float64 rows (48-bit products); fp32 and fp64
    # accumulation in float64 tiles.
    f32 = rng.standard_normal((1, 3, 8)).astype(np.float32)
    plan = cpu_gemm.plan(f32, f32, AccumSpec("fp16"), None, False)
    assert (plan.route, plan.lane) == ("odd-rows", np.float64)
    for fmt, route in (("fp32", "tile-odd"), ("fp64", "lane-native")):
        plan = cpu_gemm.plan(f32, f32, AccumSpec(fmt), None, False)
        assert (plan.route, plan.lane) == (route, np.float64)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(40))
def test_random_specs_match_exact_core(seed):
    """Random accumulator, product and outer specs, every deterministic mode, both lanes."""
    rng = np.random.default_rng(1000 + seed)
    pick = rng.choice
    operands = pick(["e4m3fn", "e5m2", "bf16", "e3m2fn", "e2m1fn", None])
    acc_fmt = pick(["fp16", "bf16", "tf32", "e5m2", "e4m3fn", "e4m3fnuz", "e6m9", "fp32"])
    kwargs = {"overflow": pick(["default", "saturate"])}
    narrower = [f for f in ("bf16", "e5m2", "fp16", "e4m3fn", "e3m2fn")
                if format_fits(get_format(f), get_format(acc_fmt))]
    if narrower and rng.random() < 0.3:
        kwargs["product"] = Cast(pick(narrower), pick(DETERMINISTIC))
    wider = [f for f in ("fp32", "bf16", "e8m20") if format_fits(get_format(acc_fmt),
                                                                   get_format(f))]
    if rng.random() < 0.4:
        kwargs.update(order="chunked", chunk=int(rng.integers(1, 20)),
                      outer=AccumSpec(pick(wider), pick(DETERMINISTIC)))
    acc = AccumSpec(acc_fmt, pick(DETERMINISTIC), **kwargs)
    cast = Cast(pick(["e4m3fn", "fp16", "int8"]), pick(DETERMINISTIC)) if rng.random() < 0.3 \
        else None
    a, b = _operands(rng, 8, 9, int(rng.integers(1, 90)), operands,
                     scale=float(np.exp2(rng.integers(-20, 20))))
    plan = cpu_gemm.plan(a, b, acc, cast, False)
    fast, exact = routes(a, b, acc, cast, route="auto")
    assert_same_bits(fast, exact, context=f"{acc} cast={cast} plan={plan}")
