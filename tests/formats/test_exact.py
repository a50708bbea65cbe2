"""refsim.formats.exact, the executable specification, pinned to known facts and to brute force.

The facts come from docs/references.md (OCP FP8/MX v1.0, IEEE 754, checked with ml_dtypes).
The brute-force tests find the nearest / toward-zero value by direct comparison with every value
of the format (fmt.all_values()), independently of the grid and quantum logic in
refsim.formats.exact.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refsim.formats import NAMED, FixedFormat, FloatFormat, exact, get_format
from refsim.formats.policy import ROUNDINGS

INF = math.inf
NAN = math.nan


def same(actual: float, expected: float) -> bool:
    """Bitwise-style equality of Python floats: NaN equals NaN, zeros compare by sign."""
    if math.isnan(expected):
        return math.isnan(actual)
    return actual == expected and math.copysign(1.0, actual) == math.copysign(1.0, expected)


def case_id(value: object) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={w}" for k, w in value.items())
    return repr(value)


def check(x: object, fmt: str, expected: float, **kwargs: object) -> None:
    actual = exact.round_value(x, fmt, **kwargs)
    assert same(actual, expected), f"{fmt} {kwargs}: {x!r} -> {actual!r}, expected {expected!r}"


# ---- known facts (docs/references.md) ----------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "x", "expected", "kwargs"),
    [
        ("e4m3fn", 464.0, 448.0, {}),  # a tie, to the even 448
        ("e4m3fn", 465.0, NAN, {}),
        ("e4m3fn", INF, NAN, {}),
        ("e4m3fn", -INF, NAN, {}),
        ("e4m3fn", INF, 448.0, {"rounding": "rtz"}),
        ("e4m3fn", -INF, -448.0, {"rounding": "rtz"}),
        ("e4m3fn", INF, 448.0, {"overflow": "saturate"}),
        ("e4m3fn", 1e9, 448.0, {"overflow": "saturate"}),
        ("e5m2", 61440.0, INF, {}),  # a tie, to Inf
        ("e5m2", 61439.0, 57344.0, {}),
        ("e5m2", -61440.0, -INF, {}),
        ("fp16", 65519.99, 65504.0, {}),
        ("fp16", 65520.0, INF, {}),
        ("fp16", 1 + 2**-11, 1.0, {}),
        ("fp16", 1 + 2**-12, 1 + 2**-10, {"rounding": "rto"}),
        ("fp16", 1 + 2**-10, 1 + 2**-10, {"rounding": "rto"}),
        ("fp16", 1.0, 1.0, {"rounding": "rto"}),
        ("fp16", 65504.0, 65504.0, {"rounding": "rto"}),
        ("e4m3fn", -431.99999999999994, -416.0, {}),  # float64, rounded once (not via fp32)
        ("bf16", 1 + 2**-8 + 2**-40, 1.0078125, {}),
        ("e2m1fn", 0.25, 0.0, {}),
        ("e2m1fn", 0.75, 1.0, {}),
        ("e2m1fn", 5.0, 4.0, {}),
        ("e2m1fn", 100.0, 6.0, {}),  # 'none' formats saturate
        ("e2m1fn", -100.0, -6.0, {}),
        ("e2m1fn", INF, 6.0, {}),
        ("e2m1fn", NAN, NAN, {}),
        ("e2m3fn", 7.75, 7.5, {"rounding": "rup"}),
        ("e3m2fn", 1e30, 28.0, {"rounding": "rna"}),
        ("e8m0fnu", 1.5, 2.0, {}),  # man_bits=0: n=1 is odd, ties go up
        ("e8m0fnu", 3.0, 4.0, {}),
        ("e8m0fnu", 0.0, NAN, {}),
        ("e8m0fnu", -0.0, NAN, {}),
        ("e8m0fnu", -1.0, NAN, {}),
        ("e8m0fnu", 2.0**-130, 2.0**-127, {}),
        ("e8m0fnu", 2.0**-130, 2.0**-127, {"rounding": "rtz"}),
        ("e8m0fnu", 2.0**-1074, 2.0**-127, {"rounding": "rdn"}),
        ("e8m0fnu", 2.0**127, 2.0**127, {}),
        ("e8m0fnu", 1.5 * 2.0**127, NAN, {}),
        ("e8m0fnu", 1.5 * 2.0**127, 2.0**127, {"rounding": "rtz"}),
        ("e8m0fnu", INF, NAN, {}),
        ("e8m0fnu", NAN, NAN, {}),
        ("e4m3fnuz", -1e-10, 0.0, {"rounding": "rtz"}),  # no -0: +0
        ("e4m3fnuz", -0.0, 0.0, {}),
        ("e4m3fnuz", 241.0, 240.0, {}),
        ("e4m3fnuz", 248.0, NAN, {}),  # a tie past max: NaN (no Inf)
        ("e4m3fn", -1e-10, -0.0, {}),  # -0 kept
        ("fp16", -(2.0**-26), -0.0, {}),
        ("fp16", -0.0, -0.0, {}),
        ("fp16", INF, INF, {"overflow": "saturate"}),  # an infinite input is exact in ieee
        ("fp16", -INF, -INF, {"rounding": "rtz"}),
        ("fp16", NAN, NAN, {"rounding": "rtz"}),
        ("bf16", -(2.0**-135), -0.0, {}),
    ],
    ids=case_id,
)
def test_known_values(fmt: str, x: float, expected: float, kwargs: dict) -> None:
    check(x, fmt, expected, **kwargs)


@pytest.mark.parametrize(
    ("x", "rounding", "expected"),
    [
        (1.25, "rup", 1.5),
        (1.25, "rdn", 1.0),
        (-1.25, "rup", -1.0),
        (-1.25, "rdn", -1.5),
        (1.25, "rtz", 1.0),
        (-1.25, "rtz", -1.0),
        (-1.75, "rto", -1.5),
        (-1.5, "rup", -1.5),  # exact values stay put in every mode
        (-1.5, "rto", -1.5),
        (0.2, "rup", 0.5),
        (-0.2, "rup", -0.0),
        (0.2, "rdn", 0.0),
        (-0.2, "rdn", -0.5),
        (0.2, "rto", 0.5),  # n=0: n|1 = 1
        (2.5, "rne", 2.0),  # a tie: 2 is even (n=2 at quantum 1)
        (2.5, "rna", 3.0),
        (3.5, "rne", 4.0),
        (3.5, "rna", 4.0),
        (1.25, "rne", 1.0),
        (1.25, "rna", 1.5),
        (-1.25, "rna", -1.5),
    ],
    ids=lambda v: repr(v),
)
def test_directed_and_tie_modes_e2m1(x: float, rounding: str, expected: float) -> None:
    check(x, "e2m1fn", expected, rounding=rounding)


@pytest.mark.parametrize(
    ("x", "rounding", "expected"),
    [
        (65505.0, "rup", INF),
        (65505.0, "rdn", 65504.0),
        (-65505.0, "rup", -65504.0),
        (-65505.0, "rdn", -INF),
        (65536.0, "rtz", 65504.0),
        (65536.0, "rto", 65504.0),
        (1e300, "rna", INF),
        (-1e300, "sr", -INF),
    ],
    ids=lambda v: repr(v),
)
def test_overflow_by_mode_fp16(x: float, rounding: str, expected: float) -> None:
    u = Fraction(0) if rounding == "sr" else None
    check(x, "fp16", expected, rounding=rounding, u=u)
    saturated = math.copysign(65504.0, x)
    check(x, "fp16", saturated, rounding=rounding, overflow="saturate", u=u)


@pytest.mark.parametrize(
    ("x", "rounding", "expected"),
    [
        (449.0, "rup", NAN),
        (449.0, "rdn", 448.0),
        (449.0, "rto", 448.0),  # n|1 = 15 would be 480 > max: toward zero saturates
        (-449.0, "rup", -448.0),
        (-449.0, "rdn", NAN),
        (INF, "rdn", 448.0),
        (-INF, "rup", -448.0),
        (INF, "rup", NAN),
    ],
    ids=lambda v: repr(v),
)
def test_overflow_by_mode_e4m3fn(x: float, rounding: str, expected: float) -> None:
    check(x, "e4m3fn", expected, rounding=rounding)


def test_rna_differs_from_rne_only_on_ties() -> None:
    check(1 + 2**-11, "fp16", 1 + 2**-10, rounding="rna")
    check(1 + 3 * 2**-11, "fp16", 1 + 2**-9)  # n = 1025 is odd: up
    check(1 + 3 * 2**-11, "fp16", 1 + 2**-9, rounding="rna")
    check(1 + 2**-11 + 2**-30, "fp16", 1 + 2**-10)  # just above the tie
    check(1 + 2**-11 - 2**-30, "fp16", 1.0, rounding="rna")  # just below it


# ---- subnormals, no-subnormal formats --------------------------------------------------------
def test_subnormal_grid() -> None:
    check(2.0**-24, "fp16", 2.0**-24)
    check(2.0**-25, "fp16", 0.0)  # a tie between 0 (even) and 2^-24
    check(2.0**-25 * 3, "fp16", 2.0**-23)  # tie between 1 and 2 quanta: 2
    check(2.0**-25, "fp16", 2.0**-24, rounding="rna")
    check(2.0**-1074, "fp16", 2.0**-24, rounding="rup")
    check(-(2.0**-1074), "fp16", -(2.0**-24), rounding="rdn")


def test_no_subnormals_rounds_between_zero_and_min_normal() -> None:
    fmt = FloatFormat(4, 3, subnormals=False)  # emin = -6
    lo, hi, f = exact.candidates(2.0**-8, fmt)
    assert (lo, hi, f) == (0, Fraction(1, 64), Fraction(1, 4))
    assert exact.round_value(2.0**-7, fmt) == 0.0  # a tie: 0 is the even one
    assert exact.round_value(2.0**-7, fmt, "rna") == 2.0**-6
    assert exact.round_value(2.0**-7 + 2.0**-20, fmt) == 2.0**-6
    assert exact.round_value(2.0**-6 + 2.0**-9, fmt) == 2.0**-6 + 2.0**-9


# ---- candidates, the grid -----------------------------------------------------------------------
def test_candidates() -> None:
    assert exact.candidates(1 + 2**-11, "fp16") == (1, 1 + Fraction(1, 1024), Fraction(1, 2))
    lo, hi, f = exact.candidates(-431.99999999999994, "e4m3fn")
    assert (lo, hi) == (416, 448)
    assert f == Fraction(431.99999999999994) / 32 - 13
    lo, hi, f = exact.candidates(500.0, "e4m3fn")  # past max: hi may exceed it
    assert (lo, hi, f) == (480, 512, Fraction(5, 8))
    lo, hi, f = exact.candidates(255.0, "e4m3fn")  # hi is 2^(e+1)
    assert (lo, hi, f) == (240, 256, Fraction(15, 16))
    assert exact.candidates(0.3, "fx8.4") == (
        Fraction(4, 16), Fraction(5, 16), Fraction(0.3) * 16 - 4
    )
    assert exact.candidates(Fraction(1, 3), "e2m1fn") == (0, Fraction(1, 2), Fraction(2, 3))
    with pytest.raises(ValueError, match="finite"):
        exact.candidates(INF, "fp16")
    with pytest.raises(ValueError, match="finite"):
        exact.candidates(NAN, "fp16")


def test_binade_by_exact_comparison() -> None:
    for e in range(-1100, 1100, 7):
        p = exact.pow2(e)
        assert exact._binade(p) == e
        assert exact._binade(p * 2 - exact.pow2(e - 60)) == e
        assert exact._binade(p - exact.pow2(e - 60)) == e - 1
    assert exact._binade(Fraction(1, 3)) == -2
    assert exact._binade(Fraction(2, 3)) == -1


@pytest.mark.parametrize("name", [n for n, f in NAMED.items() if isinstance(f, FloatFormat)])
def test_limits_rederived_from_fields_agree(name: str) -> None:
    fmt = NAMED[name]
    assert exact.float_max(fmt) == Fraction(fmt.max)
    assert exact._float_emin(fmt) == fmt.emin


def test_limits_rederived_for_every_small_variant() -> None:
    checked = 0
    for e, m, specials, signed, subnormals, zero in itertools.product(
        range(1, 6), range(6), ("ieee", "fn", "fnuz", "none"), *[(True, False)] * 3
    ):
        try:
            fmt = FloatFormat(e, m, specials=specials, signed=signed, subnormals=subnormals,
                              zero=zero)
        except ValueError:
            continue
        assert exact.float_max(fmt) == Fraction(fmt.max), fmt
        assert exact._float_emin(fmt) == fmt.emin, fmt
        checked += 1
    assert checked > 300


# ---- stochastic rounding ------------------------------------------------------------------------
ONE_ULP_64 = Fraction(1, 2**64)


def test_sr_decision_boundary() -> None:
    x = 1 + 3 * 2.0**-12  # fp16: n = 1024, f = 3/4
    lo, hi = 1.0, 1 + 2.0**-10
    assert exact.round_value(x, "fp16", "sr", u=Fraction(0)) == lo
    assert exact.round_value(x, "fp16", "sr", u=Fraction(1, 4) - ONE_ULP_64) == lo
    assert exact.round_value(x, "fp16", "sr", u=Fraction(1, 4)) == hi  # u + f >= 1
    assert exact.round_value(x, "fp16", "sr", u=1 - ONE_ULP_64) == hi
    assert exact.round_value(-x, "fp16", "sr", u=Fraction(1, 4)) == -hi
    assert exact.round_value(1.0, "fp16", "sr", u=1 - ONE_ULP_64) == 1.0  # exact: never moves


def test_sr_bits_truncates_f() -> None:
    x = 1 + 3 * 2.0**-13  # fp16: f = 3/8
    # r = 2: floor(f * 4) = 1, so up iff floor(u * 4) >= 3
    assert exact.round_value(x, "fp16", "sr", sr_bits=2, u=Fraction(3, 4) - ONE_ULP_64) == 1.0
    assert exact.round_value(x, "fp16", "sr", sr_bits=2, u=Fraction(3, 4)) == 1 + 2.0**-10
    # f < 2^-r never rounds up, even with the largest u
    tiny = 1 + 2.0**-16  # f = 1/64
    for r in (1, 2, 5, 6):
        expected = 1.0 if r < 6 else 1 + 2.0**-10
        got = exact.round_value(tiny, "fp16", "sr", sr_bits=r, u=1 - ONE_ULP_64)
        assert got == expected, r
    assert exact.round_value(tiny, "fp16", "sr", u=1 - ONE_ULP_64) == 1 + 2.0**-10


@pytest.mark.parametrize("sr_bits", [None, 1, 2, 3, 4, 7])
@pytest.mark.parametrize(
    "x", [1 + 3 * 2.0**-13, 1 + 2.0**-16, 1 + 5 * 2.0**-14, 1.0, 1229 / 4096 + 7 * 2.0**-20]
)
def test_sr_exact_frequency_over_every_u(x: float, sr_bits: int | None) -> None:
    """Walking u over all 2^d grid points, the up-count is exactly probability * 2^d."""
    fmt = get_format("fp16")
    p = exact.sr_probability(x, fmt, sr_bits)
    d = exact.sr_bits_needed(x, fmt, sr_bits)
    assert d <= 16
    lo, hi, _ = exact.candidates(x, fmt)
    ups = 0
    for j in range(1 << d):
        v = exact.round_value(x, fmt, "sr", sr_bits=sr_bits, u=Fraction(j, 1 << d))
        assert v in (float(lo), float(hi))
        ups += v == float(hi) and hi != lo
    assert Fraction(ups, 1 << d) == p


def test_sr_probability_values() -> None:
    x = 1 + 3 * 2.0**-12
    assert exact.sr_probability(x, "fp16") == Fraction(3, 4)
    assert exact.sr_probability(x, "fp16", sr_bits=1) == Fraction(1, 2)
    assert exact.sr_probability(x, "fp16", sr_bits=2) == Fraction(3, 4)
    assert exact.sr_probability(1 + 2.0**-16, "fp16", sr_bits=5) == 0
    assert exact.sr_probability(1.0, "fp16") == 0
    assert exact.sr_probability(0.2, "e2m1fn") == Fraction(0.2) * 2
    assert exact.sr_probability(-(2.0**-1074), "fp64") == 0
    assert exact.sr_probability(2.0**-1074, "fp32") == Fraction(1, 2**925)


def test_sr_bits_needed() -> None:
    assert exact.sr_bits_needed(1 + 3 * 2.0**-12, "fp16") == 2
    assert exact.sr_bits_needed(1 + 3 * 2.0**-12, "fp16", sr_bits=9) == 9
    assert exact.sr_bits_needed(1.0, "fp16") == 0
    assert exact.sr_bits_needed(1.0, "fp16", sr_bits=9) == 0
    assert exact.sr_bits_needed(INF, "fp16") == 0
    assert exact.sr_bits_needed(NAN, "fp16") == 0
    assert exact.sr_bits_needed(0.0, "fp16") == 0
    assert exact.sr_bits_needed(2.0**-1074, "fp32") == 925  # deep underflow: several words
    assert exact.sr_bits_needed(float.fromhex("0x1.fffffffffffffp0"), "bf16") == 45
    with pytest.raises(ValueError, match="dyadic"):
        exact.sr_bits_needed(Fraction(1, 3), "fp16")


def test_sr_uniform_matches_the_documented_stream() -> None:
    seed = 12345
    halves = np.random.Philox(key=seed).random_raw(8).astype("<u8").view("<u4")
    for i in range(11):  # H_0 is the plain stream split into 32-bit halves, low half first
        assert exact.sr_uniform(seed, i, 32) == Fraction(int(halves[i]), 2**32)
        assert exact.sr_uniform(seed, i, 1) == Fraction(int(halves[i]), 2**32)
        assert exact.sr_uniform(seed, i, 0) == Fraction(int(halves[i]), 2**32)
    # H_1 comes from counter (i // 8) + (1 << 64): half i % 2 of word (i // 2) % 4
    i = 13
    raw1 = int(np.random.Philox(key=seed, counter=(i // 8) + (1 << 64)).random_raw(4)[2])
    u = exact.sr_uniform(seed, i, 33)
    assert u == Fraction(int(halves[i]), 2**32) + Fraction(raw1 >> 32, 2**64)
    assert exact.sr_uniform(seed, i, 64) == u
    raw2 = int(np.random.Philox(key=seed, counter=(i // 8) + (2 << 64)).random_raw(4)[2])
    assert exact.sr_uniform(seed, i, 65) == u + Fraction(raw2 >> 32, 2**96)
    assert 0 <= exact.sr_uniform(2**64 - 1, 2**40, 200) < 1


def test_sr_uniform_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="seed"):
        exact.sr_uniform(-1, 0, 8)
    with pytest.raises(ValueError, match="index"):
        exact.sr_uniform(0, -1, 8)
    with pytest.raises(ValueError, match="nbits"):
        exact.sr_uniform(0, 0, -8)


def test_sr_inf_and_overflow() -> None:
    assert math.isnan(exact.round_value(INF, "e4m3fn", "sr", u=Fraction(0)))
    assert exact.round_value(INF, "fp16", "sr", u=Fraction(0)) == INF
    assert exact.round_value(460.0, "e4m3fn", "sr", u=Fraction(0)) == 448.0
    assert math.isnan(exact.round_value(460.0, "e4m3fn", "sr", u=1 - ONE_ULP_64))
    assert exact.round_value(460.0, "e4m3fn", "sr", "saturate", u=1 - ONE_ULP_64) == 448.0


# ---- fixed point --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "x", "expected", "kwargs"),
    [
        ("int8", 127.5, 127.0, {}),  # rne gives 128, saturates
        ("int8", 127.5, 127.0, {"overflow": "saturate"}),
        ("int8", 127.5, -128.0, {"overflow": "wrap"}),
        ("int8", 130.0, -126.0, {"overflow": "wrap"}),
        ("int8", -129.0, 127.0, {"overflow": "wrap"}),
        ("int8", -128.5, -128.0, {}),  # 128 is even
        ("int8", -128.5, -128.0, {"overflow": "wrap"}),
        ("int8", -128.5, 127.0, {"overflow": "wrap", "rounding": "rna"}),
        ("int8", 2.5, 2.0, {}),
        ("int8", 2.5, 3.0, {"rounding": "rna"}),
        ("int8", -2.5, -3.0, {"rounding": "rdn"}),
        ("int8", -2.5, -2.0, {"rounding": "rup"}),
        ("int8", 2.25, 3.0, {"rounding": "rto"}),
        ("int8", 3.75, 3.0, {"rounding": "rto"}),
        ("int8", -0.3, 0.0, {}),  # no -0
        ("int8", -0.0, 0.0, {}),
        ("int8", INF, 127.0, {}),
        ("int8", -INF, -128.0, {"overflow": "saturate"}),
        ("int8", INF, NAN, {"overflow": "wrap"}),
        ("int8", NAN, NAN, {}),
        ("int8", NAN, NAN, {"overflow": "wrap"}),
        ("int8", 1e300, 127.0, {}),
        ("uint8", -3.0, 0.0, {}),
        ("uint8", -3.0, 0.0, {"overflow": "saturate"}),
        ("uint8", -3.0, 253.0, {"overflow": "wrap"}),
        ("uint8", 256.0, 0.0, {"overflow": "wrap"}),
        ("uint8", 255.5, 255.0, {}),
        ("uint8", -INF, 0.0, {}),
        ("uint4", 17.0, 1.0, {"overflow": "wrap"}),
        ("int4", 9.0, -7.0, {"overflow": "wrap"}),
        ("fx8.4", 0.03125, 0.0, {}),  # a tie at 1/32: 0 is even
        ("fx8.4", 0.09375, 0.125, {}),  # a tie at 3/32: 2/16 is even
        ("fx8.4", 0.03125, 0.0625, {"rounding": "rna"}),
        ("fx8.4", 0.3, 0.3125, {}),
        ("fx8.4", 0.3, 0.25, {"rounding": "rtz"}),
        ("fx8.4", -0.3, -0.3125, {"rounding": "rdn"}),
        ("fx8.4", 100.0, 7.9375, {}),
        ("fx8.4", -100.0, -8.0, {}),
        ("fx8.4", 8.0, -8.0, {"overflow": "wrap"}),
        ("fx8.4", -0.01, 0.0, {}),
        ("ufx8.8", 0.5 + 2**-9, 0.5, {}),
        ("fx8.-2", 5.0, 4.0, {}),  # quantum 4
        ("fx8.-2", 6.0, 8.0, {}),  # a tie: 2 is even
    ],
    ids=case_id,
)
def test_fixed_point(fmt: str, x: float, expected: float, kwargs: dict) -> None:
    check(x, fmt, expected, **kwargs)


def test_fixed_sr() -> None:
    assert exact.round_value(2.25, "int8", "sr", u=Fraction(3, 4) - ONE_ULP_64) == 2.0
    assert exact.round_value(2.25, "int8", "sr", u=Fraction(3, 4)) == 3.0
    assert exact.round_value(-2.25, "int8", "sr", u=Fraction(3, 4)) == -3.0
    assert exact.round_value(127.25, "int8", "sr", u=Fraction(3, 4)) == 127.0
    assert exact.round_value(127.25, "int8", "sr", "wrap", u=Fraction(3, 4)) == -128.0


def test_wide_fixed_values_must_be_exact_floats() -> None:
    assert exact.round_value(1e30, "int32") == 2.0**31 - 1
    with pytest.raises(ValueError, match="float64"):
        exact.round_value(1e30, "int64")


# ---- argument validation ----------------------------------------------------------------------
def test_argument_validation() -> None:
    with pytest.raises(ValueError, match="rounding"):
        exact.round_value(1.0, "fp16", "nearest")
    with pytest.raises(ValueError, match="overflow"):
        exact.round_value(1.0, "fp16", overflow="clamp")
    with pytest.raises(ValueError, match="overflow"):
        exact.round_value(1.0, "fp16", overflow="wrap")
    with pytest.raises(ValueError, match="sr_bits"):
        exact.round_value(1.0, "fp16", "rne", sr_bits=4)
    with pytest.raises(ValueError, match="sr_bits"):
        exact.round_value(1.0, "fp16", "sr", sr_bits=65, u=Fraction(0))
    with pytest.raises(ValueError, match="u"):
        exact.round_value(1.0, "fp16", "sr")
    with pytest.raises(ValueError, match="u"):
        exact.round_value(1.0, "fp16", "sr", u=Fraction(1))
    with pytest.raises(ValueError, match="u"):
        exact.round_value(1.0, "fp16", "rne", u=Fraction(0))
    with pytest.raises(ValueError, match="unknown format"):
        exact.round_value(1.0, "fp7")
    with pytest.raises(TypeError):
        exact.round_value("1.0", "fp16")
    with pytest.raises(TypeError):
        exact.round_value(True, "fp16")


def test_input_kinds() -> None:
    assert exact.round_value(np.float32(0.1), "fp32") == float(np.float32(0.1))
    assert exact.round_value(np.float32(0.1), "bf16") == 0.10009765625
    assert exact.round_value(Fraction(1, 3), "e2m1fn") == 0.5
    assert exact.round_value(3, "e2m1fn") == 3.0
    assert exact.round_value(np.int64(-7), "e2m1fn") == -6.0
    assert exact.round_value(1.0, NAMED["fp16"]) == 1.0


# ---- unsigned float formats ------------------------------------------------------------------
def test_unsigned_float_negatives() -> None:
    fmt = get_format("e4m3fnu")  # unsigned, with a zero
    assert math.isnan(exact.round_value(-1.0, fmt))
    assert math.isnan(exact.round_value(-(2.0**-100), fmt, "rtz"))
    assert math.isnan(exact.round_value(-INF, fmt))
    assert same(exact.round_value(-0.0, fmt), 0.0)
    assert exact.round_value(1e9, fmt, "rtz") == fmt.max


# ---- quantize_exact ----------------------------------------------------------------------------
def test_quantize_exact_shape_dtype_and_order() -> None:
    values = np.array([[1 + 2**-11, -0.0, NAN], [INF, 65520.0, -(2.0**-30)]], np.float64)
    out = exact.quantize_exact(values.T, "fp16")  # a non-contiguous view, C order of .T
    assert out.dtype == np.float64 and out.shape == (3, 2)
    expected = [exact.round_value(float(x), "fp16") for x in values.T.flat]
    assert all(same(float(a), b) for a, b in zip(out.flat, expected, strict=True))
    assert math.copysign(1.0, out[2, 1]) < 0  # -(2^-30) -> -0.0
    out32 = exact.quantize_exact(values.astype(np.float32), "e4m3fn")
    assert out32.dtype == np.float32 and out32.shape == (2, 3)
    assert exact.quantize_exact(np.zeros((0, 4), np.float32), "fp16").shape == (0, 4)


def test_quantize_exact_sr_uses_the_element_index() -> None:
    x = np.full(64, 1 + 2.0**-12 + 2.0**-20, np.float32)
    out = exact.quantize_exact(x, "fp16", "sr", seed=7)
    for i, v in enumerate(out):
        u = exact.sr_uniform(7, i, exact.sr_bits_needed(float(x[i]), "fp16"))
        assert v == exact.round_value(float(x[i]), "fp16", "sr", u=u)
    assert 0 < int(np.sum(out > 1.0)) < 64
    # f = 1/4 + 2^-10: floor(f * 8) = 2, so with sr_bits=3 up iff floor(8u) >= 6
    out_r = exact.quantize_exact(x, "fp16", "sr", sr_bits=3, seed=7)
    up = [exact.sr_uniform(7, i, 64) >= Fraction(6, 8) for i in range(64)]
    assert (out_r > 1.0).tolist() == up
    assert 0 < sum(up) < 64


def test_quantize_exact_sr_is_unbiased_in_the_mean() -> None:
    x = np.full(2000, 1 + 2.0**-12, np.float64)  # f = 1/4
    out = exact.quantize_exact(x, "fp16", "sr", seed=3)
    ups = int(np.sum(out > 1.0))
    # Binomial(2000, 1/4): mean 500, sd 19.4; this seed is fixed, so the test is deterministic.
    assert abs(ups - 500) < 5 * 19.4


def test_quantize_exact_dtype_must_hold_the_format() -> None:
    with pytest.raises(ValueError, match="float32"):
        exact.quantize_exact(np.ones(3, np.float32), "fp64")
    with pytest.raises(ValueError, match="float32"):
        exact.quantize_exact(np.ones(3, np.float32), "int32")
    with pytest.raises(ValueError, match="float32"):
        exact.quantize_exact(np.ones(3, np.float32), "e5m10b150")  # subnormals below 2^-149
    with pytest.raises(ValueError, match="float32"):
        exact.quantize_exact(np.ones(3, np.float32), "e9m2")  # emax 255
    with pytest.raises(TypeError, match="float32 or float64"):
        exact.quantize_exact(np.ones(3, np.float16), "e4m3fn")
    with pytest.raises(ValueError, match="seed"):
        exact.quantize_exact(np.ones(3), "e4m3fn", seed=-1)
    with pytest.raises(ValueError, match="overflow"):
        exact.quantize_exact(np.ones(3), "e4m3fn", overflow="wrap")
    assert exact.quantize_exact(np.ones(3, np.float32), "int16").dtype == np.float32
    assert exact.quantize_exact(np.ones(3, np.float32), "bf16").dtype == np.float32


# ---- independent checks against the value table -----------------------------------------------
SMALL_FLOATS = [n for n, f in NAMED.items() if isinstance(f, FloatFormat) and f.bits <= 8]
SMALL_CUSTOM = ["e3m3b5", "e2m2fnuz", "e3m1fn", "e3m0", "e4m2fnu", "e2m0fin"]
SMALL_FIXED = ["int4", "uint4", "fx6.2", "ufx5.3", "int8"]
NO_SUBNORMALS = [
    FloatFormat(3, 2, subnormals=False),
    FloatFormat(3, 1, subnormals=False, specials="fnuz"),
    FloatFormat(4, 1, subnormals=False, specials="fn", zero=False),  # signed, no zero
]
SMALL: list[str | FloatFormat] = [*SMALL_FLOATS, *SMALL_CUSTOM, *SMALL_FIXED, *NO_SUBNORMALS]


@cache
def finite_table(name: str | FloatFormat) -> tuple[list[Fraction], list[int]]:
    """(values, codes): every finite value of the format as a Fraction, sorted, with its code."""
    fmt = get_format(name)
    pairs = sorted(
        (Fraction(float(v)), int(c))
        for v, c in zip(fmt.all_values(), fmt.codes(), strict=True)
        if math.isfinite(v) and not (v == 0 and math.copysign(1.0, v) < 0)
    )
    return [v for v, _ in pairs], [c for _, c in pairs]


def has_negative_zero(fmt: FloatFormat | FixedFormat) -> bool:
    return isinstance(fmt, FloatFormat) and fmt.signed and fmt.zero and fmt.specials != "fnuz"


def expected_zero(negative: bool, fmt: FloatFormat | FixedFormat) -> float:
    return -0.0 if negative and has_negative_zero(fmt) else 0.0


def even_tie_choice(a: Fraction, b: Fraction, code_a: int, code_b: int, man_bits: int) -> Fraction:
    """The rne choice between neighbours a < b (magnitudes) at their midpoint.

    Ties go to zero when zero is a candidate; with man_bits >= 1 to the even code; with
    man_bits = 0 (one value per binade) to the larger value, as docs/rounding.md explains.
    """
    if a == 0:
        return a
    if man_bits == 0:
        return b
    return a if code_a % 2 == 0 else b


def nonneg(name: str | FloatFormat) -> tuple[list[Fraction], list[int]]:
    values, codes = finite_table(name)
    keep = [i for i, v in enumerate(values) if v >= 0]
    return [values[i] for i in keep], [codes[i] for i in keep]


@pytest.mark.parametrize("name", SMALL, ids=str)
def test_every_midpoint_and_its_neighbours(name: str | FloatFormat) -> None:
    """At each midpoint of neighbouring values, and just either side, rne/rna/rtz/rup/rdn agree
    with the choice read off the value table (both signs)."""
    fmt = get_format(name)
    values, codes = nonneg(name)
    if not values:
        return
    man_bits = fmt.man_bits if isinstance(fmt, FloatFormat) else 1
    for (a, ca), (b, cb) in zip(
        zip(values, codes, strict=True), zip(values[1:], codes[1:], strict=True), strict=False
    ):
        mid = (a + b) / 2
        eps = (b - a) / 2**40
        for x, nearest, tie in (
            (mid - eps, a, False), (mid, None, True), (mid + eps, b, False),
        ):
            for negative in (False, True):
                if negative and not fmt.signed:
                    continue
                if negative and isinstance(fmt, FixedFormat) and -b < fmt.min:
                    continue  # outside the fixed range on the negative side
                sx = -x if negative else x
                rne = even_tie_choice(a, b, ca, cb, man_bits) if tie else nearest
                rna = b if tie else nearest
                up, down = (a, b) if negative else (b, a)
                for rounding, magnitude in (
                    ("rne", rne), ("rna", rna), ("rtz", a), ("rup", up), ("rdn", down),
                ):
                    got = exact.round_value(sx, fmt, rounding)
                    want = (
                        expected_zero(negative, fmt)
                        if magnitude == 0
                        else float(-magnitude if negative else magnitude)
                    )
                    assert same(got, want), f"{name} {rounding} {sx} ({float(sx)!r}): {got!r}"


def bounded_values(fmt: FloatFormat | FixedFormat) -> st.SearchStrategy[float]:
    """Finite floats inside the format's range (no overflow)."""
    if isinstance(fmt, FixedFormat):
        return st.floats(min_value=fmt.min, max_value=fmt.max)
    low = -fmt.max if fmt.signed else 0.0
    return st.floats(min_value=low, max_value=fmt.max)


@st.composite
def format_and_value(
    draw: st.DrawFn, names: list[str | FloatFormat]
) -> tuple[str | FloatFormat, float]:
    """A format and a finite x in its range: any float, or (small formats) a value of the format
    or a midpoint of two neighbours, each possibly nudged by one float64 ulp."""
    name = draw(st.sampled_from(names))
    fmt = get_format(name)
    values, _ = finite_table(name) if fmt.bits <= 12 else ([], [])
    kind = draw(st.sampled_from(["any", "value", "midpoint"] if len(values) > 1 else ["any"]))
    if kind == "any":
        x = draw(bounded_values(fmt))
    else:
        i = draw(st.integers(0, len(values) - 2))
        x = float(values[i] if kind == "value" else (values[i] + values[i + 1]) / 2)
        x = float(np.nextafter(x, draw(st.sampled_from([-INF, x, INF]))))
    low = fmt.min if isinstance(fmt, FixedFormat) else (-fmt.max if fmt.signed else 0.0)
    return name, min(max(x, low), fmt.max)


HYPOTHESIS_FORMATS: list[str | FloatFormat] = [
    *SMALL, "fp16", "bf16", "tf32", "fp32", "fp64", "e5m10b3", "fx16.-3",
]
Case = tuple[str | FloatFormat, float]


@settings(max_examples=400, deadline=None)
@given(format_and_value(HYPOTHESIS_FORMATS), st.sampled_from(ROUNDINGS), st.fractions(0, 1))
def test_result_is_a_candidate(case: Case, rounding: str, u: Fraction) -> None:
    name, x = case
    fmt = get_format(name)
    if u == 1:
        u = Fraction(0)
    got = exact.round_value(x, fmt, rounding, u=u if rounding == "sr" else None)
    if x == 0 and isinstance(fmt, FloatFormat) and not fmt.zero:
        assert math.isnan(got)
        return
    lo, hi, _ = exact.candidates(x, fmt)
    negative = math.copysign(1.0, x) < 0
    allowed = {lo, hi}
    if isinstance(fmt, FloatFormat) and not fmt.zero and lo == 0:
        allowed = {hi}  # raised to the smallest value
    assert Fraction(abs(got)) in allowed
    if got == 0:
        assert same(got, expected_zero(negative, fmt))
    else:
        assert (got < 0) == negative


@settings(max_examples=400, deadline=None)
@given(format_and_value(SMALL), st.sampled_from(["rne", "rna", "rtz"]))
def test_nearest_and_toward_zero_by_brute_force(case: Case, rounding: str) -> None:
    """rne/rna: the value at least distance (ties: even / away); rtz: the largest magnitude not
    above |x| with x's sign, each found by comparing x with every value of the format."""
    name, x = case
    fmt = get_format(name)
    values, codes = finite_table(name)
    fx = Fraction(x)
    negative = math.copysign(1.0, x) < 0
    got = exact.round_value(x, fmt, rounding)
    if x == 0 and isinstance(fmt, FloatFormat) and not fmt.zero:
        assert math.isnan(got)
        return
    smallest = min(abs(v) for v in values)
    if isinstance(fmt, FloatFormat) and not fmt.zero and abs(fx) < smallest:
        assert got == float(-smallest if negative else smallest)  # raised to the smallest
        return
    if rounding == "rtz":
        best = max((v for v in values if abs(v) <= abs(fx) and (v == 0 or (v < 0) == negative)),
                   key=abs)
    else:
        distance = min(abs(v - fx) for v in values)
        nearest = [(v, c) for v, c in zip(values, codes, strict=True) if abs(v - fx) == distance]
        if len(nearest) == 1:
            best = nearest[0][0]
        elif rounding == "rna":
            best = max((v for v, _ in nearest), key=abs)
        else:
            # codes of -v and v share their last bit (sign bit, or two's complement of even 2^bits)
            (a, ca), (b, cb) = sorted(nearest, key=lambda vc: abs(vc[0]))
            man_bits = fmt.man_bits if isinstance(fmt, FloatFormat) else 1
            best = even_tie_choice(abs(a), abs(b), ca, cb, man_bits)
            best = -best if negative else best
    want = expected_zero(negative, fmt) if best == 0 else float(best)
    assert same(got, want), f"{name} {rounding} {x!r}: {got!r}, expected {want!r}"


def test_value_table_helper() -> None:
    values, codes = finite_table("e2m1fn")
    assert [float(v) for v in values] == [
        -6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6,
    ]
    assert codes[values.index(0)] == 0


# ---- refsim.formats.exact_sum on empty input (docs/accumulation.md, "Terms": the empty sum) ----
def _duck_acc(order: str, rounding: str, chunk: int | None = None):
    """An accumulator spec as exact_sum reads it (duck-typed, as refsim.specs.AccumSpec)."""
    from types import SimpleNamespace

    inner = SimpleNamespace(fmt=get_format("bf16"), rounding=rounding, overflow="default",
                            sr_bits=None)
    outer = SimpleNamespace(fmt=get_format("fp32"), rounding=rounding, overflow="default",
                            sr_bits=None)
    return SimpleNamespace(**vars(inner), order=order, chunk=chunk, product=None,
                           outer_spec=outer if order == "chunked" else inner)


@pytest.mark.parametrize("order", ["sequential", "pairwise", "chunked", "kahan"])
@pytest.mark.parametrize("rounding", ["rne", "rdn", "rup"])
def test_sum_exact_of_an_empty_axis_is_plus_zero(order: str, rounding: str) -> None:
    """sum_exact(np.zeros(0), acc) raised "cannot reshape array of size 0": the empty sum is +0
    (under rdn too: no addition happens, so no -0 from one), in the shape without the axis."""
    from refsim.formats.exact_sum import sum_exact

    acc = _duck_acc(order, rounding, chunk=4 if order == "chunked" else None)
    for x, axis, shape in ((np.zeros(0), -1, ()), (np.zeros((3, 0)), -1, (3,)),
                           (np.zeros((0, 2)), 0, (2,)), (np.zeros((2, 0)), None, ())):
        got = sum_exact(x, acc, axis=axis)
        assert got.shape == shape and got.dtype == np.float64
        assert not np.signbit(got).any() and not got.any()
    empty_rows = sum_exact(np.zeros((0, 3)), acc)
    assert empty_rows.shape == (0,)


# ---- overflow="satfinite" (PTX cvt .satfinite) -------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "x", "expected", "kwargs"),
    [
        ("fp16", INF, 65504.0, {}),  # saturate keeps it infinite (exact in an ieee format)
        ("fp16", -INF, -65504.0, {}),
        ("fp16", 1e300, 65504.0, {"rounding": "rup"}),
        ("fp16", -65536.0, -65504.0, {"rounding": "rna"}),
        ("e5m2", INF, 57344.0, {}),
        ("e5m2", 61440.0, 57344.0, {}),  # the tie that default sends to Inf
        ("e5m2", NAN, NAN, {}),
        ("e4m3fn", INF, 448.0, {}),  # no Inf: the same as saturate
        ("e4m3fn", -INF, -448.0, {"rounding": "rup"}),
        ("e4m3fn", 465.0, 448.0, {}),
        ("e4m3fn", NAN, NAN, {}),
        ("e4m3fnuz", -INF, -240.0, {}),
        ("e2m1fn", INF, 6.0, {}),
        ("e8m0fnu", -INF, NAN, {}),  # unsigned: a negative input has no value, Inf or not
        ("e8m0fnu", INF, 2.0**127, {}),
        ("int8", INF, 127.0, {}),  # fixed point: the same as saturate
        ("int8", -INF, -128.0, {}),
        ("int8", 130.0, 127.0, {}),
        ("int8", NAN, NAN, {}),
        ("uint8", -3.0, 0.0, {}),
    ],
    ids=case_id,
)
def test_satfinite(fmt: str, x: float, expected: float, kwargs: dict) -> None:
    check(x, fmt, expected, overflow="satfinite", **kwargs)


@pytest.mark.parametrize("name", ["fp16", "e5m2", "e4m3fn", "e4m3fnuz", "e2m1fn", "int8",
                                  "uint4", "fx8.3"])
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_satfinite_is_saturate_except_on_infinite_ieee_inputs(name: str, rounding: str) -> None:
    """On every finite input satfinite and saturate agree; an infinite input differs only in an
    ieee format (saturate: +-Inf, satfinite: +-max)."""
    fmt = get_format(name)
    top = float(fmt.max) if isinstance(fmt, FloatFormat) else float(fmt.k_max)
    xs = [top * s for s in (0.5, 0.99, 1.0, 1.01, 1.5, 2.0, 1e10)] + [1e300, INF, NAN]
    u = Fraction(1, 3) if rounding == "sr" else None
    for x in xs + [-v for v in xs]:
        saturated = exact.round_value(x, fmt, rounding, "saturate", u=u)
        finite = exact.round_value(x, fmt, rounding, "satfinite", u=u)
        if math.isinf(x) and isinstance(fmt, FloatFormat) and fmt.specials == "ieee":
            assert saturated == x and finite == math.copysign(float(fmt.max), x), (x, finite)
        else:
            assert same(finite, saturated), (x, finite, saturated)


# ---- caller-given random bits (round_value_rbits, quantize_exact(rbits=...)) --------------------
@pytest.mark.parametrize("sr_bits", [1, 2, 3, 5])
def test_rbits_rounds_up_for_exactly_floor_f_times_2r_values_of_r(sr_bits: int) -> None:
    """Over the 2^r values of R, |x| rounds up for exactly floor(f * 2^r) of them: the largest
    ones (R + floor(f * 2^r) >= 2^r)."""
    scale = 1 << sr_bits
    for num in range(64):
        x = 1.0 + num / 64 / 8  # e4m3fn's quantum at 1 is 1/8: f = num / 64
        f_scaled = num * scale // 64
        ups = [R for R in range(scale)
               if exact.round_value_rbits(x, "e4m3fn", R, sr_bits) > 1.0]
        assert ups == list(range(scale - f_scaled, scale)), (x, ups)
        assert [R for R in range(scale)
                if exact.round_value_rbits(-x, "e4m3fn", R, sr_bits) < -1.0] == ups


def test_rbits_is_round_value_with_u_equal_to_r_over_2r() -> None:
    rng = np.random.default_rng(2)
    for x in rng.standard_normal(300) * 100:
        for sr_bits in (1, 4, 13, 64):
            R = int(rng.integers(0, 2**63)) % (1 << sr_bits)
            expected = exact.round_value(x, "e5m2", "sr", "satfinite", sr_bits,
                                         Fraction(R, 1 << sr_bits))
            assert same(exact.round_value_rbits(x, "e5m2", R, sr_bits, "satfinite"), expected)


def test_rbits_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="rbits"):
        exact.round_value_rbits(1.1, "e4m3fn", 8, 3)  # R must be below 2^sr_bits
    with pytest.raises(ValueError, match="rbits"):
        exact.round_value_rbits(1.1, "e4m3fn", -1, 3)
    with pytest.raises(TypeError, match="rbits"):
        exact.round_value_rbits(1.1, "e4m3fn", 1.0, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sr_bits"):
        exact.round_value_rbits(1.1, "e4m3fn", 1, 0)
    x = np.ones(4)
    words = np.zeros(4, np.uint8)
    with pytest.raises(ValueError, match="needs sr_bits"):
        exact.quantize_exact(x, "e4m3fn", "sr", rbits=words)
    with pytest.raises(ValueError, match="seed"):
        exact.quantize_exact(x, "e4m3fn", "sr", sr_bits=2, seed=0, rbits=words)
    with pytest.raises(ValueError, match="rounding='sr'"):
        exact.quantize_exact(x, "e4m3fn", "rne", sr_bits=2, rbits=words)
    with pytest.raises(TypeError, match="unsigned"):
        exact.quantize_exact(x, "e4m3fn", "sr", sr_bits=2, rbits=words.astype(np.int8))
    with pytest.raises(ValueError, match="sr_bits=9"):
        exact.quantize_exact(x, "e4m3fn", "sr", sr_bits=9, rbits=words)
    with pytest.raises(ValueError, match="shape"):
        exact.quantize_exact(x, "e4m3fn", "sr", sr_bits=2, rbits=words[:3])


def test_quantize_exact_rbits_reads_the_low_bits_in_c_order() -> None:
    """Element i takes R = rbits.flat[i] & (2^r - 1): bits above sr_bits are ignored, and a
    transposed rbits is read in its own flat C order."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 6)) * 10
    low = rng.integers(0, 8, (5, 6), dtype=np.uint16)
    noisy = low | (rng.integers(0, 2**13, (5, 6), dtype=np.uint16) << np.uint16(3))
    got = exact.quantize_exact(x, "e4m3fn", "sr", sr_bits=3, rbits=noisy)
    expected = np.array([exact.round_value_rbits(v, "e4m3fn", int(R), 3)
                         for v, R in zip(x.flat, low.flat, strict=True)]).reshape(x.shape)
    np.testing.assert_array_equal(got, expected)
    t = exact.quantize_exact(x.T, "e4m3fn", "sr", sr_bits=3, rbits=low.T)
    np.testing.assert_array_equal(t, expected.T)
