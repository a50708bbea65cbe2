"""Property tests: arbitrary float32/float64 inputs, formats and policies against the spec."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from refsim import quantize
from refsim.formats import NAMED, FloatFormat, get_format
from refsim.formats.exact import quantize_exact
from refsim.formats.policy import ROUNDINGS
from refsim.params import carrier_holds
from refsim.validation.bits import assert_same_bits

CUSTOM = ["e5m10b3", "e3m0", "e6m5fnuz", "e7m3fn", "e2m2fin", "fx10.4", "ufx7.-1", "int12"]
FORMAT_NAMES = sorted(name for name in NAMED if name != "fp64") + CUSTOM


@st.composite
def requests(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    name = draw(st.sampled_from(FORMAT_NAMES).filter(
        lambda n: carrier_holds(get_format(n), np.dtype(dtype))))
    fmt = get_format(name)
    width = 32 if dtype is np.float32 else 64
    values = draw(st.lists(st.floats(width=width, allow_nan=True, allow_infinity=True),
                           min_size=1, max_size=40))
    rounding = draw(st.sampled_from(ROUNDINGS))
    policies = ["default", "saturate"] + ([] if isinstance(fmt, FloatFormat) else ["wrap"])
    overflow = draw(st.sampled_from(policies))
    sr_bits = draw(st.one_of(st.none(), st.integers(1, 64))) if rounding == "sr" else None
    seed = draw(st.integers(0, 2**64 - 1))
    return np.array(values, dtype), fmt, rounding, overflow, sr_bits, seed


@settings(max_examples=150, deadline=None)
@given(requests())
def test_matches_spec(request):
    x, fmt, rounding, overflow, sr_bits, seed = request
    kwargs = {"overflow": overflow, "sr_bits": sr_bits, "seed": seed}
    assert_same_bits(quantize(x, fmt, rounding, **kwargs),
                     quantize_exact(x, fmt, rounding, **kwargs), x,
                     context=f"{fmt.name} {rounding} {kwargs}")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=50),
       st.sampled_from(["e4m3fn", "e5m2", "bf16", "fp16", "e2m1fn"]))
def test_idempotent_and_monotone(values, name):
    """Rounding a rounded value changes nothing; RNE is monotone (non-decreasing)."""
    x = np.sort(np.array(values, np.float32))
    y = quantize(x, name)
    assert_same_bits(quantize(y, name), y)
    ordered = y[~np.isnan(y)]
    assert np.all(ordered[:-1] <= ordered[1:])
