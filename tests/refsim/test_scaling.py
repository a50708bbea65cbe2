"""refsim.scaling: per-tensor / per-channel current scaling, delayed scaling, affine integers,
against a plain-Fraction twin written here; exact_quotient against exact rounding."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refsim import DelayedScaling, quantize_affine, quantize_scaled
from refsim.formats import get_format
from refsim.formats.exact import round_value, sr_uniform
from refsim.scaling import current_scale, exact_quotient, fp32_nearest


def twin_scaled(x: np.ndarray, fmt: str, d: np.ndarray, axis, rounding: str, sr_bits=None,
                seed=0, elements: bool = False) -> np.ndarray:
    """round(x / d) saturated, times d, rounded once to x's dtype; element i uses index i.
    elements=True returns the rounded quotients instead."""
    carrier = "fp32" if x.dtype == np.float32 else "fp64"
    shape = [1] * x.ndim
    if axis is not None:
        shape[axis] = d.size
    d_full = np.broadcast_to(np.asarray(d).reshape(shape), x.shape)
    out = np.empty(x.shape, np.float64 if elements else x.dtype)
    for i, (v, s) in enumerate(zip(x.ravel(), d_full.ravel(), strict=True)):
        q = Fraction(float(v)) / Fraction(float(s)) if v != 0 else float(v)
        u = sr_uniform(seed, i, sr_bits or 0) if rounding == "sr" else None
        p = round_value(q, fmt, rounding, "saturate", sr_bits, u)
        r = round_value(Fraction(p) * Fraction(float(s)), carrier)
        out.flat[i] = p if elements else math.copysign(abs(r), p)
    return out


def same(a, b) -> bool:
    nan = np.isnan(a)
    return bool(np.array_equal(nan, np.isnan(b)) and np.array_equal(a[~nan], b[~nan])
                and np.array_equal(np.signbit(a[~nan]), np.signbit(b[~nan])))


def sample(seed: int, shape, dtype) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-8, 8, shape))
    x.flat[0] = 0.0
    return x.astype(dtype)


@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m2", "e2m1fn", "int8"])
@pytest.mark.parametrize("rounding", ["rne", "rna", "rtz", "rup", "rdn", "rto", "sr"])
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_current_scaling_against_twin(fmt, rounding, axis):
    x = sample(1, (6, 9), np.float32)
    sr_bits = 12 if rounding == "sr" else None
    r = quantize_scaled(x, fmt, rounding, axis=axis, sr_bits=sr_bits, seed=4, return_codes=True)
    others = None if axis is None else tuple(i for i in range(2) if i != axis)
    amax = np.abs(x).max(axis=others)
    want_d = np.array([float(round_value(Fraction(float(a)) / Fraction(get_format(fmt).max),
                                         "fp32")) for a in np.ravel(amax)])
    assert np.array_equal(r.scales.ravel(), want_d)
    assert same(r.values, twin_scaled(x, fmt, want_d, axis, rounding, sr_bits, 4))
    assert same(get_format(fmt).decode(r.codes),
                twin_scaled(x, fmt, want_d, axis, rounding, sr_bits, 4, elements=True))


def test_power_of_two_and_margin():
    assert current_scale(448.0, "e4m3fn") == 1.0
    assert current_scale(449.0, "e4m3fn", power_of_two=True) == 2.0
    assert current_scale(448.0, "e4m3fn", margin=2) == 4.0
    assert current_scale(0.0, "e4m3fn") == 1.0 and current_scale(math.inf, "e5m2") == 1.0
    x = sample(2, (4, 8), np.float64)
    r = quantize_scaled(x, "e4m3fn", power_of_two=True, return_codes=True)
    assert np.frexp(r.scales)[0] == 0.5
    assert same(r.values, twin_scaled(x, "e4m3fn", r.scales, None, "rne"))
    # a power-of-two scale divides exactly: sr then takes every discarded bit
    quantize_scaled(x, "e4m3fn", "sr", power_of_two=True)


def test_given_scales_and_saturation():
    x = np.array([1.0, -1000.0, 3.0], np.float32)
    v = quantize_scaled(x, "e4m3fn", scale=0.5)
    assert v.tolist() == [1.0, -224.0, 3.0]
    with pytest.raises(ValueError, match="scale must have shape"):
        quantize_scaled(x, "e4m3fn", scale=[1.0, 2.0])
    with pytest.raises(ValueError, match="positive finite float32"):
        quantize_scaled(x, "e4m3fn", scale=0.1)
    with pytest.raises(ValueError, match=r"sr_bits must be in 1\.\.16"):
        quantize_scaled(x, "e4m3fn", "sr")
    with pytest.raises(ValueError, match="out of range"):
        quantize_scaled(x, "e4m3fn", axis=1)
    with pytest.raises(ValueError, match="at most 8 significant bits"):
        quantize_scaled(x, "fp16")


def test_affine_uint8():
    x = np.array([[-1.0, 0.0, 2.5, 7.0], [0.5, 0.25, 0.0, 1.0]], np.float32)
    r = quantize_affine(x, 8, return_codes=True)
    d = float(round_value(Fraction(8, 255), "fp32"))
    assert r.scales == d and r.zero_points == round(Fraction(1) / Fraction(d))
    assert r.values[0, 1] == 0.0 and r.values[1, 2] == 0.0  # zero is exact
    assert r.codes.min() >= 0 and r.codes.max() <= 255 and r.codes[0, 3] == 255
    want = [(min(max(round(Fraction(float(v)) / Fraction(d)) + int(r.zero_points), 0), 255)
             - int(r.zero_points)) * Fraction(d) for v in x.ravel()]
    assert r.values.ravel().tolist() == [float(round_value(w, "fp32")) for w in want]
    per = quantize_affine(x, 4, axis=0, return_codes=True)
    assert per.scales.shape == (2,) and per.codes.max() <= 15
    quantize_affine(x, 8, "sr", sr_bits=8, seed=1)
    with pytest.raises(ValueError, match=r"bits must be an int in 2\.\.16"):
        quantize_affine(x, 1)


def test_delayed_scaling_uses_past_amax():
    ds = DelayedScaling("e4m3fn", margin=1, history_len=2)
    steps = [np.full(4, 10.0, np.float32), np.full(4, 1000.0, np.float32),
             np.full(4, 20.0, np.float32), np.full(4, 30.0, np.float32)]
    scales = []
    for x in steps:
        scales.append(ds.scale)
        ds(x)
    want = [1.0] + [current_scale(a, "e4m3fn", 1) for a in (10.0, 1000.0, 1000.0)]
    assert scales == want
    assert ds.scale == current_scale(30.0, "e4m3fn", 1)  # 1000 left the 2-step history
    recent = DelayedScaling("e5m2", algo="most_recent")
    recent(np.array([4.0, -8.0]))
    recent(np.array([1.0]))
    assert recent.scale == current_scale(1.0, "e5m2")
    keep = recent.scale
    recent(np.array([np.nan, 1.0]))
    assert recent.scale == keep  # a non-finite amax keeps the previous scale
    with pytest.raises(ValueError, match="algo must be"):
        DelayedScaling("e4m3fn", algo="mean")


@pytest.mark.parametrize("algo", ["max", "most_recent"])
@pytest.mark.parametrize("bad", [[np.nan, 5.0], [np.inf, 5.0], [-np.inf, np.nan, -5.0],
                                 [np.nan, np.nan]], ids=["nan", "inf", "both", "all-nan"])
def test_delayed_scaling_nan_or_inf_amax_is_ignored_wherever_it_sits(bad, algo):
    """The scale must not depend on where a NaN sits in the history (Python's max made it so).
    The rule (docs/blocks.md, "Non-finite values"): an amax is over finite values, so the scale
    depends on the finite amaxes in the window only, whichever step brought the NaN or Inf."""
    big, small = np.array([300.0, -2.0]), np.array([3.0, 1.0])
    bad_x = np.array(bad)
    finite = [abs(v) for v in bad if math.isfinite(v)]
    bad_amax = max(finite, default=0.0)
    for order in ([bad_x, big, small], [big, bad_x, small], [big, small, bad_x]):
        ds = DelayedScaling("e4m3fn", history_len=4, algo=algo)
        for x in order:
            ds(x)
        if algo == "max":
            want = current_scale(300.0, "e4m3fn")
        else:  # the last step's finite amax; none (all NaN): the previous scale stays
            last = bad_amax if order[-1] is bad_x else 3.0
            want = current_scale(last if last > 0 else 3.0, "e4m3fn")  # small came before
        assert ds.scale == want, (order, ds.history)
    # A history given by hand: a NaN before or after the largest amax gives the same scale.
    for history in ([math.nan, 2.0], [2.0, math.nan], [math.inf, 2.0], [2.0, -math.inf]):
        ds = DelayedScaling("e4m3fn", history_len=3, algo="max", history=list(history))
        ds(np.array([1.0]))
        assert ds.scale == current_scale(2.0, "e4m3fn"), history


def test_delayed_scaling_takes_numpy_integers():
    ds = DelayedScaling("e4m3fn", margin=np.int8(1), history_len=np.int64(2))
    assert ds.history_len == 2 and type(ds.history_len) is int and ds.margin == 1
    with pytest.raises(TypeError, match="history_len must be a positive int; got the bool"):
        DelayedScaling("e4m3fn", history_len=True)
    with pytest.raises(ValueError, match="history_len must be a positive int; got 0"):
        DelayedScaling("e4m3fn", history_len=0)


def test_quantize_scaled_and_affine_take_a_0d_array():
    """A 0-d x gives 0-d results (it raised "'numpy.float64' object does not support item
    assignment" before)."""
    for dtype in (np.float32, np.float64):
        x = np.array(3.0, dtype)
        r = quantize_scaled(x, "e4m3fn", return_codes=True)
        assert r.values.shape == () and r.values.dtype == dtype and r.scales.shape == ()
        d = np.array([float(round_value(Fraction(3) / Fraction(448), "fp32"))])
        assert same(r.values, twin_scaled(x, "e4m3fn", d, None, "rne"))
        assert quantize_scaled(x, "e4m3fn", "sr", sr_bits=8).shape == ()
        affine = quantize_affine(x, 8, return_codes=True)
        assert affine.values.shape == () and affine.codes.shape == ()
        assert same(quantize_scaled(np.array(np.nan, dtype), "e4m3fn"), np.array(np.nan, dtype))
    with pytest.raises(ValueError, match="axis must be None for a 0-d array"):
        quantize_scaled(np.array(3.0), "e4m3fn", axis=0)
    ds = DelayedScaling("e4m3fn")
    ds(np.array(100.0))
    assert ds.scale == current_scale(100.0, "e4m3fn")


def test_quantize_affine_takes_any_integer_bits_and_refuses_bool():
    """Any integer type for bits, as for seeds (formats.policy.check_int); never a bool."""
    x = np.array([[-1.0, 0.0, 2.5, 7.0], [0.5, 0.25, 0.0, 1.0]], np.float32)
    want = quantize_affine(x, 4, "sr", sr_bits=6, seed=2, axis=0)
    for bits in (np.int64(4), np.uint8(4), np.int32(4)):
        got = quantize_affine(x, bits, "sr", sr_bits=np.int16(6), seed=np.uint64(2),
                              axis=np.int64(0))
        assert same(got, want)
    with pytest.raises(TypeError, match=r"bits must be an int in 2\.\.16; got the bool True"):
        quantize_affine(x, True)
    with pytest.raises(TypeError, match=r"bits must be an int in 2\.\.16; got 4\.0"):
        quantize_affine(x, 4.0)
    with pytest.raises(TypeError, match=r"axis must be an int or None; got 0\.0"):
        quantize_affine(x, 4, axis=0.0)


@settings(max_examples=150, deadline=None)
@given(x=st.floats(allow_nan=False, allow_infinity=False, width=64),
       d_sig=st.integers(1, (1 << 24) - 1), d_exp=st.integers(-160, 130),
       fmt=st.sampled_from(["e2m1fn", "e4m3fn", "e3m2fn", "int8", "e5m2"]),
       rounding=st.sampled_from(["rne", "rna", "rtz", "rup", "rdn", "rto", "sr"]),
       u=st.integers(0, (1 << 64) - 1))
def test_exact_quotient_rounds_like_the_exact_value(x, d_sig, d_exp, fmt, rounding, u):
    d = math.ldexp(d_sig, d_exp)
    v = float(exact_quotient(np.array([x]), d)[0])
    exact = Fraction(x) / Fraction(d) if x != 0 else x
    sr_bits = 16 if rounding == "sr" else None
    uf = Fraction(u, 1 << 64) if rounding == "sr" else None
    a = round_value(v, fmt, rounding, "saturate", sr_bits, uf)
    b = round_value(exact, fmt, rounding, "saturate", sr_bits, uf)
    assert a == b and math.copysign(1, a) == math.copysign(1, b)


@settings(max_examples=2000, deadline=None)
@given(st.integers(1, 2**80), st.integers(1, 2**80), st.integers(-300, 300), st.booleans())
def test_fp32_nearest_equals_the_oracle(num, den, exponent, negative):
    """Production's one rounding of a Fraction to float32 against the independent oracle."""
    value = Fraction(num, den) * Fraction(2) ** exponent * (-1 if negative else 1)
    assert fp32_nearest(value) == round_value(value, "fp32", "rne")


@pytest.mark.parametrize("value", [
    Fraction(0), Fraction(2) ** -150, Fraction(3, 2) * Fraction(2) ** -150,  # tie to 0 / to min
    Fraction(2) ** -126 * (1 - Fraction(1, 2**25)),  # rounds up into the normal range
    Fraction(2) ** 128 - Fraction(2) ** 103,  # the tie above float32's max: Inf
    Fraction(2) ** 128 - Fraction(2) ** 103 - 1, Fraction(2) ** 2000, -Fraction(2) ** 2000,
])
def test_fp32_nearest_edges(value):
    expected = round_value(value, "fp32", "rne")
    got = fp32_nearest(value)
    assert got == expected and math.copysign(1, got) == math.copysign(1, expected)
