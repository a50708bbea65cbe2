"""refsim.quantize against refsim.formats.exact, bit for bit: every value, tie, tie +- 1 ulp."""

from __future__ import annotations

import numpy as np
import pytest

from refsim import quantize
from refsim.formats import NAMED, FloatFormat, get_format
from refsim.formats.exact import quantize_exact
from refsim.formats.policy import ROUNDINGS
from refsim.formats.testing import boundary_values
from refsim.params import carrier_holds
from refsim.validation.bits import assert_same_bits

SMALL = [name for name, fmt in NAMED.items() if getattr(fmt, "bits", 64) <= 8]
WIDE16 = [name for name, fmt in NAMED.items() if 8 < fmt.bits <= 16] + ["e5m10b3"]
CUSTOM = ["e3m0", "e2m0fn", "e4m2fnuz", "e5m3fin", "e3m1b1", "e6m1", "e2m4fnu",
          "fx8.3", "ufx6.2", "fx5.-2", "int2", "fx12.4"]
DTYPES = [np.float32, np.float64]


def _policies(fmt):
    if isinstance(fmt, FloatFormat):
        return ["default", "saturate"]
    return ["default", "saturate", "wrap"]


def _check(fmt, dtype, x, rounding, overflow, seed=0, sr_bits=None):
    expected = quantize_exact(x, fmt, rounding, overflow=overflow, sr_bits=sr_bits, seed=seed)
    actual = quantize(x, fmt, rounding, overflow=overflow, sr_bits=sr_bits, seed=seed)
    assert_same_bits(actual, expected, x, context=f"{fmt.name} {rounding} {overflow} "
                     f"{np.dtype(dtype).name} sr_bits={sr_bits}")


def _cases(names):
    for name in names:
        for dtype in DTYPES:
            if carrier_holds(get_format(name), np.dtype(dtype)):
                yield pytest.param(name, dtype, id=f"{name}-{np.dtype(dtype).name}")


@pytest.mark.parametrize(("name", "dtype"), list(_cases(SMALL + CUSTOM)))
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_small_formats_every_boundary(name, dtype, rounding):
    fmt = get_format(name)
    x = boundary_values(fmt, dtype)
    for overflow in _policies(fmt):
        _check(fmt, dtype, x, rounding, overflow)
    if rounding == "sr":
        for sr_bits in (1, 3, 12):
            _check(fmt, dtype, x, rounding, "default", seed=7, sr_bits=sr_bits)


@pytest.mark.parametrize(("name", "dtype"), list(_cases(WIDE16)))
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_16bit_formats_sampled_boundary(name, dtype, rounding):
    """A fixed sample of the 16-bit boundary suite; the whole of it runs under -m slow."""
    fmt = get_format(name)
    x = boundary_values(fmt, dtype)
    x = np.random.default_rng(16).choice(x, 3000, replace=False)
    _check(fmt, dtype, x, rounding, "default", seed=3)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "dtype"), list(_cases(WIDE16)))
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_16bit_formats_every_boundary(name, dtype, rounding):
    fmt = get_format(name)
    x = boundary_values(fmt, dtype)
    for overflow in _policies(fmt):
        _check(fmt, dtype, x, rounding, overflow, seed=5)


@pytest.mark.parametrize("name", ["fp32", "tf32", "bf16", "e4m3fn", "e5m2", "fp16", "e2m1fn"])
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_float64_inputs_never_round_through_float32(name, rounding):
    """Random float64 bit patterns (normal, subnormal, huge) against the spec."""
    rng = np.random.default_rng(64)
    x = rng.integers(0, 2**63, 2000, dtype=np.int64).view(np.float64)
    x = np.concatenate((x, -x, rng.standard_normal(2000) * 300,
                        rng.standard_normal(500) * 1e-300))
    _check(get_format(name), np.float64, x, rounding, "default", seed=11)


# ---- overflow="satfinite" and caller-given random bits (rbits) ----------------------------------
@pytest.mark.parametrize(("name", "dtype"), list(_cases(SMALL + CUSTOM)))
@pytest.mark.parametrize("rounding", ["rne", "rtz", "rup", "sr"])
def test_satfinite_near_overflow(name, dtype, rounding):
    """satfinite on the boundary values from max/2 up (the overflow region), the specials
    included: +-Inf goes to +-max in every format."""
    fmt = get_format(name)
    x = boundary_values(fmt, dtype)
    top = float(fmt.max) if isinstance(fmt, FloatFormat) else float(fmt.k_max * fmt.quantum)
    x = x[~(np.abs(x) < top / 2)]  # NaN kept
    _check(fmt, dtype, x, rounding, "satfinite", seed=2)


def _between_codes(fmt, dtype, steps: int) -> np.ndarray:
    """For every pair of neighbouring magnitudes (and the pair max, max + max's quantum): the
    points k/steps of the way between them and one dtype-ulp either side of the midpoint, both
    signs; those dtype holds exactly."""
    values = fmt.all_values()
    grid = np.unique(np.abs(values[np.isfinite(values)]))
    beyond = (np.ldexp(1.0, fmt.emax - fmt.man_bits) if isinstance(fmt, FloatFormat)
              else fmt.quantum)
    grid = np.append(grid, grid[-1] + beyond)
    lo, hi = grid[:-1], grid[1:]
    points = (lo[:, None] + (hi - lo)[:, None] * (np.arange(1, steps) / steps)).ravel()
    with np.errstate(over="ignore"):
        points = points[points.astype(dtype).astype(np.float64) == points].astype(dtype)
        mids = ((lo + hi) / 2).astype(dtype)
        near = np.concatenate((np.nextafter(mids, np.array(np.inf, dtype)),
                               np.nextafter(mids, np.array(0, dtype))))
    x = np.concatenate((points, near))
    return np.concatenate((x, -x))


@pytest.mark.parametrize("name", ["e4m3fn", "e5m2", "e2m1fn", "int8"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rbits_every_r_between_every_code_pair(name, dtype):
    """Every R in 0..2^r-1 (r = 1, 2, 3) on every point k/8 of the way between neighbouring
    values, against the Fraction twin; bits of rbits above sr_bits are set at random (ignored)."""
    fmt = get_format(name)
    points = _between_codes(fmt, dtype, 8)
    noise = np.random.default_rng(8)
    for sr_bits in (1, 2, 3):
        scale = 1 << sr_bits
        x = np.repeat(points, scale)
        r_low = np.tile(np.arange(scale, dtype=np.uint8), points.size)
        high = noise.integers(0, 256 >> sr_bits, x.size, dtype=np.uint8) << np.uint8(sr_bits)
        rbits = r_low | high
        expected = quantize_exact(x, fmt, "sr", overflow="satfinite", sr_bits=sr_bits,
                                  rbits=rbits)
        assert_same_bits(quantize(x, fmt, "sr", overflow="satfinite", sr_bits=sr_bits,
                                  rbits=rbits), expected, x,
                         context=f"{name} rbits sr_bits={sr_bits}")
