"""Input suites that probe a format: every code, every midpoint and one ulp either side, random
bit patterns, log-uniform magnitudes and the specials.

Usage rules: every suite is a deterministic function of (format, dtype, seed, size) and returns
a 1-D array of the dtype (float32 or float64); values the dtype cannot hold exactly are left out.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from refsim.formats import FloatFormat, Format, get_format
from refsim.formats.testing import boundary_values

__all__ = ["SUITES", "codes", "log_uniform", "midpoints", "random_bits", "specials", "suite"]


def _exact_in(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        cast = values.astype(dtype)
        keep = (cast.astype(np.float64) == values) | np.isnan(values)
    return cast[keep]


def codes(fmt: Format, dtype: np.dtype, seed: int = 0, size: int = 0) -> np.ndarray:
    """Every finite value of the format (both zeros where it has them), or a sample of `size`
    of them for formats over 16 bits."""
    if fmt.bits > 16:
        grid = boundary_values(fmt, np.float64) if fmt.bits <= 20 else np.zeros(0)
        return _exact_in(grid, np.dtype(dtype))
    values = fmt.all_values().astype(np.float64)
    return _exact_in(values[np.isfinite(values)], np.dtype(dtype))


def midpoints(fmt: Format, dtype: np.dtype, seed: int = 0, size: int = 0) -> np.ndarray:
    """Every midpoint between neighbours and one dtype-ulp either side, with the values
    themselves and the specials: refsim.formats.testing.boundary_values."""
    return boundary_values(fmt, dtype)


def random_bits(fmt: Format, dtype: np.dtype, seed: int = 0, size: int = 1 << 14) -> np.ndarray:
    """`size` uniformly random bit patterns of the dtype (NaNs, Infs and subnormals included)."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return rng.integers(0, 1 << 32, size, dtype=np.uint64).astype(np.uint32).view(dtype)
    return rng.integers(0, 1 << 64, size, dtype=np.uint64).view(dtype)


def log_uniform(fmt: Format, dtype: np.dtype, seed: int = 0, size: int = 1 << 14) -> np.ndarray:
    """`size` values with log2|x| uniform over the format's range widened by 4 binades either
    side, random signs, drawn in float64 and rounded to the dtype."""
    rng = np.random.default_rng(seed)
    if isinstance(fmt, FloatFormat):
        smallest = fmt.emin - (fmt.man_bits if fmt.subnormals else 0)
    else:
        smallest = -fmt.frac_bits
    largest = float(np.log2(fmt.max))
    exponents = rng.uniform(smallest - 4, largest + 4, size)
    values = np.exp2(exponents) * rng.choice([-1.0, 1.0], size)
    with np.errstate(over="ignore"):
        return values.astype(dtype)


def specials(fmt: Format, dtype: np.dtype, seed: int = 0, size: int = 0) -> np.ndarray:
    """+-0, +-Inf, NaN, +-max, +-smallest values of the format and of the dtype, and the
    overflow threshold region."""
    info = np.finfo(dtype)
    values = [0.0, -0.0, np.inf, -np.inf, np.nan, float(info.max), -float(info.max),
              float(info.smallest_subnormal), float(info.tiny), fmt.max, -fmt.max, 2 * fmt.max,
              -2 * fmt.max]
    return _exact_in(np.array(values, np.float64), np.dtype(dtype))


SUITES: dict[str, Callable[..., np.ndarray]] = {
    "codes": codes, "midpoints": midpoints, "random-bits": random_bits,
    "log-uniform": log_uniform, "specials": specials,
}
"""Suite name -> function(fmt, dtype, seed, size)."""


def suite(name: str, fmt: Format | str, dtype: np.dtype | type | str, seed: int = 0,
          size: int = 1 << 14) -> np.ndarray:
    """The inputs of suite `name` for `fmt` in `dtype`."""
    if name not in SUITES:
        raise ValueError(f"suite must be one of {', '.join(SUITES)}; got {name!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64; got {dtype}")
    return SUITES[name](get_format(fmt), dtype, seed, size)
