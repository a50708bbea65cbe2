"""refsim.formats.testing hypothesis strategies: each draws what it promises, and the worked
property test of docs/testing.md runs."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from refsim import quantize
from refsim.formats import FixedFormat, FloatFormat, get_format
from refsim.formats.testing import (
    formats,
    near_overflow,
    p3109_formats,
    subnormals,
    ties,
    values,
)

NAMES = ["e4m3fn", "e5m2", "e2m1fn", "e8m0fnu", "bf16", "fp16", "e4m3fnuz", "int8", "fx8.4",
         "p3109_k8p1se", "p3109_k8p4ue", "p3109_k3p2sf"]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), name=st.sampled_from(NAMES),
       rounding=st.sampled_from(["rne", "rna", "rtz", "rup", "rdn", "rto", "sr"]))
def test_values_are_fixed_points_of_every_mode(data, name, rounding):
    x = data.draw(values(name))
    y = quantize(np.array([x]), name, rounding)[0]
    assert y == x and math.copysign(1, y) == math.copysign(1, x)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), name=st.sampled_from(NAMES))
def test_ties_are_halfway_and_rne_rna_split_them(data, name):
    fmt = get_format(name)
    x = np.array([data.draw(ties(name))])
    down = quantize(x, fmt, "rtz", overflow="saturate" if isinstance(fmt, FloatFormat) else
                    "default")[0]
    up = quantize(x, fmt, "rna")[0]
    if np.isfinite(up) and abs(up) <= fmt.max and abs(x[0]) < fmt.max:
        assert abs(x[0]) - abs(down) == abs(up) - abs(x[0]) > 0


@settings(max_examples=40, deadline=None)
@given(data=st.data(), name=st.sampled_from(NAMES))
def test_near_overflow_and_subnormals_land_where_promised(data, name):
    fmt = get_format(name)
    x = data.draw(near_overflow(name))
    assert abs(x) > fmt.max * 0.9
    saturated = quantize(np.array([x]), fmt, "rne", overflow="saturate" if isinstance(
        fmt, FloatFormat) else "default")[0]
    lowest = -fmt.max if isinstance(fmt, FloatFormat) else fmt.min
    assert lowest <= saturated <= fmt.max
    s = data.draw(subnormals(name))
    top = fmt.min_normal if isinstance(fmt, FloatFormat) else fmt.quantum
    assert 0 < abs(s) < top


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_formats_strategy_and_composition(data):
    fmt = data.draw(formats(12))
    assert isinstance(fmt, (FloatFormat, FixedFormat)) and fmt.bits <= 12
    x = data.draw(values(fmt))
    assert quantize(np.array([x]), fmt)[0] == x


@settings(max_examples=40, deadline=None)
@given(data=st.data(), fmt=p3109_formats(6),
       rounding=st.sampled_from(["rne", "rna", "rtz", "rup", "rdn", "rto"]))
def test_p3109_values_are_fixed_points_and_ties_split(data, fmt, rounding):
    assert fmt.p3109 and fmt.bits <= 6
    x = data.draw(values(fmt))
    assert quantize(np.array([x]), fmt, rounding)[0] == x
    t = data.draw(ties(fmt))
    if abs(t) < fmt.max:
        lo, hi = quantize(np.array([t, t]), fmt, "rtz")[0], quantize(np.array([t]), fmt, "rna")[0]
        assert abs(t) - abs(lo) == abs(hi) - abs(t) > 0


# The worked example of docs/testing.md.
@settings(max_examples=50, deadline=None)
@given(data=st.data(), fmt=formats(max_bits=10, fixed=False))
def test_docs_example_rounding_is_monotone_on_ties(data, fmt):
    a = data.draw(ties(fmt))
    b = data.draw(ties(fmt))
    qa, qb = quantize(np.array([a, b]), fmt, "rne", overflow="saturate")
    if a <= b:
        assert qa <= qb
