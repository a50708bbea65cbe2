"""Test inputs that probe a format: every value, every tie, and the inputs one ulp either side.

`boundary_values(fmt, dtype)` is the deterministic suite the exhaustive tests run. The hypothesis
strategies draw from the same ideas, for property tests of any quantizer (docs/testing.md):

    values(fmt)         exact values of the format (every binade, subnormals, both signs)
    ties(fmt)           midpoints between neighbouring values, the overflow threshold included
    near_overflow(fmt)  inputs within a few float64 ulps of max, of the overflow threshold, and
                        of the first value beyond
    subnormals(fmt)     inputs below the smallest normal, on and off the grid
    formats(max_bits)   FloatFormat and FixedFormat objects of at most max_bits bits (IEEE
                        P3109 formats among them)
    p3109_formats(max_k) the IEEE P3109 formats (refsim.formats.P3109) of at most max_k bits

Every strategy draws Python floats that are exact float64 values. hypothesis is an optional
dependency of formats/: it is imported when a strategy is built, not when this module is.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from refsim.formats.fixed_format import FixedFormat
from refsim.formats.float_format import FloatFormat
from refsim.formats.registry import Format


def _positive_grid(fmt: Format) -> np.ndarray:
    """Sorted distinct finite non-negative values of fmt, plus the first value beyond max."""
    values = fmt.all_values()
    values = np.unique(np.abs(values[np.isfinite(values)]))
    if isinstance(fmt, FloatFormat):
        # The grid continues above max with the quantum of max's binade: its midpoint is the
        # overflow threshold of the nearest modes.
        beyond = float(np.ldexp(1.0, fmt.emax - fmt.man_bits))
    else:
        beyond = fmt.quantum
    return np.append(values, values[-1] + beyond)


def boundary_values(fmt: Format, dtype: np.dtype | type = np.float64) -> np.ndarray:
    """Inputs in `dtype`: every value of fmt, every midpoint of neighbours (including the one
    above max and the one between 0 and the smallest value), one dtype-ulp either side of each
    midpoint and of each value, both signs, and the specials (+-0, +-Inf, NaN, +-dtype max).

    Values the dtype cannot hold exactly are dropped (they cannot be inputs of that dtype).
    """
    dtype = np.dtype(dtype)
    grid = _positive_grid(fmt)
    lows = np.concatenate(([0.0], grid[:-1])) if grid[0] != 0.0 else grid[:-1]
    highs = grid[1:] if grid[0] == 0.0 else grid
    mids = (lows + highs) / 2  # exact in float64: one more bit than the format
    points = np.concatenate((grid, mids)).astype(np.float64)
    with np.errstate(over="ignore"):
        exact = points.astype(dtype).astype(np.float64) == points
    points = points[exact].astype(dtype)
    with np.errstate(over="ignore"):
        up = np.nextafter(points, np.array(np.inf, dtype))
        down = np.nextafter(points, np.array(0, dtype))
    positive = np.concatenate((points, up, down))
    finfo = np.finfo(dtype)
    positive = np.concatenate((positive, np.array([finfo.max, finfo.smallest_subnormal, np.inf],
                                                  dtype)))
    both = np.concatenate((positive, -positive, np.array([np.nan], dtype)))
    return np.unique(both)


# ---- hypothesis strategies ----------------------------------------------------------------------
if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy


def _st() -> Any:
    try:
        from hypothesis import strategies
    except ImportError as exc:  # formats/ works without hypothesis; the strategies need it
        raise ImportError("refsim.formats.testing strategies need hypothesis: "
                          "pip install hypothesis") from exc
    return strategies


def _grid(fmt: Format) -> tuple[int, int, int, int]:
    """(n_min, n_max, q_min, q_max): every positive finite value is n * 2^q with n in
    [n_min, n_max] at the quantum q in [q_min, q_max] (n_max at q_max is max)."""
    if isinstance(fmt, FixedFormat):
        return 1, fmt.k_max, -fmt.frac_bits, -fmt.frac_bits
    man = fmt.man_bits
    lowest = fmt.emin - man if fmt.subnormals else fmt.emin
    max_n = int(fmt.max / math.ldexp(1.0, fmt.emax - man))
    return 1, max_n, lowest, fmt.emax - man


def _finite_magnitudes(fmt: Format) -> SearchStrategy[float]:
    """Positive finite values of fmt: a binade (or the subnormal range), then a significand."""
    st = _st()
    if isinstance(fmt, FixedFormat):
        return st.integers(1, max(fmt.k_max, 1)).map(lambda k: math.ldexp(k, -fmt.frac_bits))
    man = fmt.man_bits
    max_value = fmt.max
    smallest = fmt.emin - man if fmt.subnormals else fmt.emin

    def build(binade: int, frac: int) -> float:
        if binade < fmt.emin:  # subnormal range: frac * 2^(emin - man), frac >= 1
            return math.ldexp(max(frac, 1), smallest)
        value = math.ldexp((1 << man) + frac, binade - man)
        return min(value, max_value)

    low = fmt.emin - 1 if fmt.subnormals and man > 0 else fmt.emin
    return st.builds(build, st.integers(low, fmt.emax), st.integers(0, (1 << man) - 1))


def _signed(fmt: Format, magnitudes: SearchStrategy[float]) -> SearchStrategy[float]:
    st = _st()
    if not fmt.signed:
        return magnitudes
    return st.tuples(magnitudes, st.booleans()).map(lambda p: -p[0] if p[1] else p[0])


def values(fmt: Format | str, *, zero: bool = True) -> SearchStrategy[float]:
    """Exact finite values of fmt, both signs (signed formats), zeros included when `zero`
    and the format has them: quantizing one in any rounding mode must give it back."""
    from refsim.formats.registry import get_format

    fmt = get_format(fmt)
    st = _st()
    out = _signed(fmt, _finite_magnitudes(fmt))
    has_zero = isinstance(fmt, FixedFormat) or fmt.zero
    if zero and has_zero:
        zeros = [0.0, -0.0] if fmt.has_negative_zero else [0.0]
        out = st.one_of(out, st.sampled_from(zeros))
    return out


def ties(fmt: Format | str) -> SearchStrategy[float]:
    """Midpoints between neighbouring values of fmt (and between 0 and the smallest value if
    fmt has a zero, and
    between max and the next value of an unbounded exponent range: the overflow threshold of
    the nearest modes). Each is exactly representable in float64 when fmt has at most 51
    mantissa bits."""
    from refsim.formats.registry import get_format

    fmt = get_format(fmt)
    st = _st()
    q_min = _grid(fmt)[2]

    def midpoint(v: float) -> float:
        # v = n * 2^q on its own grid: the midpoint above it is (2n + 1) * 2^(q - 1).
        if isinstance(fmt, FixedFormat):
            q = -fmt.frac_bits
        elif v == 0:
            q = q_min
        else:
            binade = math.frexp(v)[1] - 1
            q = max(binade, fmt.emin) - fmt.man_bits if fmt.subnormals else (
                binade - fmt.man_bits if binade >= fmt.emin else fmt.emin)
        n = int(v / math.ldexp(1.0, q))
        return math.ldexp(2 * n + 1, q - 1)

    has_zero = isinstance(fmt, FixedFormat) or fmt.zero
    lower = st.one_of(_finite_magnitudes(fmt), st.just(0.0)) if has_zero else (
        _finite_magnitudes(fmt))
    return _signed(fmt, lower.map(midpoint))


def _ulp_steps(x: float, steps: int) -> float:
    value = np.float64(x)
    direction = np.float64(np.inf if steps > 0 else -np.inf)
    for _ in range(abs(steps)):
        value = np.nextafter(value, direction)
    return float(value)


def near_overflow(fmt: Format | str, ulps: int = 3) -> SearchStrategy[float]:
    """Inputs within `ulps` float64 ulps of max, of the overflow threshold (the midpoint above
    max) and of the first value beyond max, both signs."""
    from refsim.formats.registry import get_format

    fmt = get_format(fmt)
    st = _st()
    _, n_max, _, q_max = _grid(fmt)
    anchors = [math.ldexp(n_max, q_max), math.ldexp(2 * n_max + 1, q_max - 1),
               math.ldexp(n_max + 1, q_max)]
    near = st.builds(_ulp_steps, st.sampled_from(anchors), st.integers(-ulps, ulps))
    return _signed(fmt, near)


def subnormals(fmt: Format | str) -> SearchStrategy[float]:
    """Inputs of magnitude below the smallest normal of fmt (its subnormal range, or the gap
    below 2^emin of a format without subnormals): values on the grid, ties and arbitrary
    float64 values, both signs."""
    from refsim.formats.registry import get_format

    fmt = get_format(fmt)
    st = _st()
    if isinstance(fmt, FixedFormat):
        top = math.ldexp(1.0, -fmt.frac_bits)
    else:
        top = fmt.min_normal
    lowest = math.ldexp(1.0, _grid(fmt)[2])
    arbitrary = st.floats(min_value=lowest / 4, max_value=top, exclude_max=True)
    on_grid = st.integers(1, max(int(top / lowest) - 1, 1)).map(lambda k: math.ldexp(k, 0)
                                                                  * lowest)
    halves = on_grid.map(lambda v: v - lowest / 2)
    return _signed(fmt, st.one_of(arbitrary, on_grid, halves).filter(lambda v: 0 < v < top))


def _float_format_or_none(exp_bits: int, man_bits: int, bias: int | None, subnormals: bool,
                          specials: str) -> FloatFormat | None:
    try:
        return FloatFormat(exp_bits, man_bits, bias=bias, subnormals=subnormals,
                           specials=specials)
    except ValueError:
        return None


def formats(max_bits: int = 16, *, fixed: bool = True) -> SearchStrategy[Format]:
    """FloatFormat objects (every specials kind, with and without subnormals, some unsigned,
    default and shifted biases) and, when `fixed`, FixedFormat objects, of at most max_bits
    bits (2 <= max_bits <= 64)."""
    if not 2 <= max_bits <= 64:
        raise ValueError(f"max_bits must be in 2..64; got {max_bits}")
    st = _st()

    @st.composite
    def float_formats(draw: Any) -> FloatFormat:
        exp_bits = draw(st.integers(1, min(10, max_bits - 1)))  # e11 "none" leaves float64
        man_bits = draw(st.integers(0, min(52, max_bits - 1 - exp_bits)))
        specials = draw(st.sampled_from(["ieee", "fn", "fnuz", "none", "ext"]))
        if specials == "ieee" and exp_bits < 2:
            specials = "none"
        subnormals = draw(st.booleans())
        shift = draw(st.sampled_from([0, 0, -1, 1, 3]))
        default = (1 << (exp_bits - 1)) - (0 if specials in ("fnuz", "ext") else 1)
        # Some combinations leave no finite binade or fall outside float64: try the drawn
        # bias, then the default one, then an all-finite format (always valid).
        for bias, kind in ((default + shift, specials), (None, specials), (None, "none")):
            fmt = _float_format_or_none(exp_bits, man_bits, bias, subnormals, kind)
            if fmt is not None:
                return fmt
        return FloatFormat(exp_bits, man_bits, specials="none")

    out = float_formats()
    if max_bits >= 3:
        out = st.one_of(out, p3109_formats(min(max_bits, 8)))
    if fixed:
        fixed_formats = st.builds(
            lambda bits, frac, signed: FixedFormat(bits, frac, signed=signed),
            st.integers(2, min(max_bits, 32)), st.integers(-4, 16), st.booleans())
        out = st.one_of(out, fixed_formats)
    return out


def p3109_formats(max_k: int = 8) -> SearchStrategy[FloatFormat]:
    """The IEEE P3109 formats of refsim.formats.P3109 (K 3..8, every precision, signedness and
    domain, converted by P3109's rules) of at most max_k bits (3 <= max_k <= 8)."""
    from refsim.formats.registry import P3109

    if not 3 <= max_k <= 8:
        raise ValueError(f"max_k must be in 3..8; got {max_k}")
    return _st().sampled_from([f for f in P3109.values() if f.bits <= max_k])


__all__ = ["FixedFormat", "FloatFormat", "boundary_values", "formats", "near_overflow",
           "p3109_formats", "subnormals", "ties", "values"]
