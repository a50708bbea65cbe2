"""Input suites that probe a format: every code, every midpoint and one ulp either side, random
bit patterns, log-uniform magnitudes and the specials.

Usage rules: every suite is a deterministic function of (format, dtype, seed, size) and returns
a 1-D array of the dtype (float32 or float64); values the dtype cannot hold exactly are left out.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from refsim.formats import FloatFormat, Format, get_format
from refsim.formats.float_format import MAX_CODE_BITS_FOR_TABLES
from refsim.formats.testing import boundary_values

__all__ = ["SUITES", "WIDE", "codes", "log_uniform", "midpoints", "random_bits", "specials",
           "suite"]


def _exact_in(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        cast = values.astype(dtype)
        keep = (cast.astype(np.float64) == values) | np.isnan(values)
    return cast[keep]


WIDE = MAX_CODE_BITS_FOR_TABLES
"""Formats of more bits than this (fp32, int32, fp64) cannot be tabulated: codes and midpoints
sample `size` random codes instead of walking every one."""


def _sampled_pairs(fmt: Format, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Positive neighbours (v, w) of a wide format, v < w consecutive values, for `size` random
    magnitudes (float64; the pair at max's top is (max, max + one quantum))."""
    rng = np.random.default_rng([seed, fmt.bits])
    if isinstance(fmt, FloatFormat):
        top = fmt.magnitude_mask
        mags = rng.integers(0, top, size, dtype=np.uint64, endpoint=True)
        with np.errstate(over="ignore", invalid="ignore"):
            v = fmt.decode(mags)
            w = fmt.decode(np.minimum(mags + np.uint64(1), np.uint64(top)))
        ulp_max = float(fmt.max) - float(np.nextafter(float(fmt.max), 0.0)) \
            if fmt.man_bits >= 52 else 2.0 ** (fmt.emax - fmt.man_bits)
        v = np.append(v, float(fmt.max))
        w = np.append(w, float(fmt.max) + ulp_max)
    else:
        ks = rng.integers(max(fmt.k_min, 0), fmt.k_max, size, endpoint=False)
        v = ks.astype(np.float64) * fmt.quantum
        w = (ks + 1).astype(np.float64) * fmt.quantum
    keep = np.isfinite(v) & np.isfinite(w) & (w > v)
    return v[keep], w[keep]


def codes(fmt: Format, dtype: np.dtype, seed: int = 0, size: int = 1 << 14) -> np.ndarray:
    """Every finite value of the format (both zeros where it has them); for formats over 16 bits
    the values of the boundary grid (up to 20 bits), or `size` random codes' values (wider)."""
    if fmt.bits > 20:
        v, _ = _sampled_pairs(fmt, seed, size)
        return _exact_in(np.concatenate((v, -v, [0.0, -0.0])), np.dtype(dtype))
    if fmt.bits > 16:
        return _exact_in(boundary_values(fmt, np.float64), np.dtype(dtype))
    values = fmt.all_values().astype(np.float64)
    return _exact_in(values[np.isfinite(values)], np.dtype(dtype))


def midpoints(fmt: Format, dtype: np.dtype, seed: int = 0, size: int = 1 << 14) -> np.ndarray:
    """Every midpoint between neighbours and one dtype-ulp either side, with the values
    themselves and the specials: refsim.formats.testing.boundary_values. Formats over WIDE bits:
    the same around `size` random codes (midpoints the dtype cannot hold are left out)."""
    if fmt.bits <= WIDE:
        return boundary_values(fmt, dtype)
    dtype = np.dtype(dtype)
    v, w = _sampled_pairs(fmt, seed, size)
    mids = v + (w - v) / 2  # exact where the format has fewer than 53 significant bits
    exact = (mids > v) & (mids < w)
    points = _exact_in(np.concatenate((v, mids[exact])), dtype)
    with np.errstate(over="ignore"):
        up = np.nextafter(points, np.array(np.inf, dtype))
        down = np.nextafter(points, np.array(0, dtype))
    finfo = np.finfo(dtype)
    positive = np.concatenate((points, up, down,
                               np.array([finfo.max, finfo.smallest_subnormal, np.inf], dtype)))
    return np.unique(np.concatenate((positive, -positive, np.array([np.nan], dtype))))


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
