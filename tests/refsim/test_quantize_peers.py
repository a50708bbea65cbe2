"""refsim.quantize against external oracles: ml_dtypes (from float32), NumPy float16.

Documented differences, by design (docs/rounding.md): ml_dtypes maps NaN to +-0 in formats with
no NaN (FP6/FP4), and sends float32 subnormals above 2^-127 up to 2^-126 in e8m0fnu; ml_dtypes
converts float64 through float32 (double rounding), so it is compared from float32 only.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from formats import get_format
from formats.testing import boundary_values
from refsim import quantize
from validation.bits import assert_same_bits

ML_DTYPES = {
    "bf16": ml_dtypes.bfloat16,
    "e5m2": ml_dtypes.float8_e5m2,
    "e4m3": ml_dtypes.float8_e4m3,
    "e3m4": ml_dtypes.float8_e3m4,
    "e4m3fn": ml_dtypes.float8_e4m3fn,
    "e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "e4m3b11fnuz": ml_dtypes.float8_e4m3b11fnuz,
    "e3m2fn": ml_dtypes.float6_e3m2fn,
    "e2m3fn": ml_dtypes.float6_e2m3fn,
    "e2m1fn": ml_dtypes.float4_e2m1fn,
    "e8m0fnu": ml_dtypes.float8_e8m0fnu,
}


def ml_dtypes_round_trip(x: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(ML_DTYPES[name]).astype(np.float32)


def documented_difference(name: str, x: np.ndarray) -> np.ndarray:
    """Inputs where ml_dtypes differs from refsim by design (see module docstring)."""
    fmt = get_format(name)
    mask = np.zeros(x.shape, bool)
    if not fmt.has_nan:
        mask |= np.isnan(x)
    if name == "e8m0fnu":
        mask |= (np.abs(x) > 2.0**-127) & (np.abs(x) < 2.0**-126)
    return mask


def compare_with_ml_dtypes(x: np.ndarray, name: str) -> None:
    keep = ~documented_difference(name, x)
    x = x[keep]
    assert_same_bits(quantize(x, name), ml_dtypes_round_trip(x, name), x, context=name)


@pytest.mark.parametrize("name", list(ML_DTYPES))
def test_ml_dtypes_on_boundaries_and_random_bits(name):
    x = boundary_values(get_format(name), np.float32)
    bits = np.random.default_rng(7).integers(0, 2**32, 1 << 18, dtype=np.uint64)
    x = np.concatenate((x, bits.astype(np.uint32).view(np.float32)))
    compare_with_ml_dtypes(x, name)


def test_documented_ml_dtypes_differences_are_real():
    """The masked cases do differ (so the mask hides nothing else)."""
    x = np.array([np.nan], np.float32)
    assert ml_dtypes_round_trip(x, "e2m1fn")[0] == 0.0 and np.isnan(quantize(x, "e2m1fn")[0])
    x = np.array([1.1 * 2.0**-127], np.float32)
    assert ml_dtypes_round_trip(x, "e8m0fnu")[0] == np.float32(2.0**-126)
    assert quantize(x, "e8m0fnu")[0] == np.float32(2.0**-127)


def test_ml_dtypes_double_rounds_float64():
    """The reason ml_dtypes is compared from float32 only (REFERENCES.md)."""
    x = np.array([-431.99999999999994, 1 + 2.0**-8 + 2.0**-40])
    assert quantize(x[:1], "e4m3fn")[0] == -416.0
    assert x[:1].astype(ml_dtypes.float8_e4m3fn).astype(np.float64)[0] == -448.0
    assert quantize(x[1:], "bf16")[0] == 1.0078125
    assert x[1:].astype(ml_dtypes.bfloat16).astype(np.float64)[0] == 1.0


def test_numpy_float16_from_float64():
    x = boundary_values(get_format("fp16"), np.float64)
    rng = np.random.default_rng(8)
    x = np.concatenate((x, rng.integers(0, 2**63, 1 << 18, dtype=np.int64).view(np.float64),
                        rng.standard_normal(1 << 16) * 1e4, rng.standard_normal(1 << 16) * 1e-6))
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).astype(np.float64)
    assert_same_bits(quantize(x, "fp16"), expected, x)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*ML_DTYPES, "fp16"])
def test_all_float32_bit_patterns(name):
    """Every one of the 2^32 float32 patterns, in chunks of 2^26."""
    step = 1 << 26
    for start in range(0, 1 << 32, step):
        x = np.arange(start, start + step, dtype=np.uint64).astype(np.uint32).view(np.float32)
        if name == "fp16":
            with np.errstate(over="ignore"):
                expected = x.astype(np.float16).astype(np.float32)
            assert_same_bits(quantize(x, name), expected, x, context=f"chunk {start:#x}")
        else:
            compare_with_ml_dtypes(x, name)
