"""Test inputs that probe a format: every value, every tie, and the inputs one ulp either side.

`boundary_values(fmt, dtype)` is the deterministic suite the exhaustive tests run; hypothesis
strategies over the same ideas live next to it (values, ties, near_overflow, subnormals).
"""

from __future__ import annotations

import numpy as np

from formats.fixed_format import FixedFormat
from formats.float_format import FloatFormat
from formats.registry import Format


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


__all__ = ["FixedFormat", "FloatFormat", "boundary_values"]
