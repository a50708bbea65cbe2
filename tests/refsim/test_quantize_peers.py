"""refsim.quantize against external oracles: ml_dtypes, NumPy float16.

ml_dtypes differs from refsim by design in ways that depend on its version: the table
refsim.validation.adapters.KNOWN says which (docs/validation.md). Every version maps NaN to +-0
in the formats with no NaN (FP6/FP4); before 0.7 it also converted float64 through float32 (double
rounding) and sent float32 subnormals above 2^-127 up to 2^-126 in e8m0fnu. Each comparison
excuses exactly the differences the table gives for the INSTALLED version, so a version that
fixes one is held to refsim; refsim's own answers are asserted whatever is installed.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from refsim import quantize
from refsim.formats import get_format
from refsim.formats.testing import boundary_values
from refsim.validation.adapters import known_differences, peer_version
from refsim.validation.bits import assert_same_bits

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
VERSION = peer_version("ml_dtypes")


def ml_dtypes_round_trip(x: np.ndarray, name: str) -> np.ndarray:
    """ml_dtypes' conversion of x to the format, back in x's dtype."""
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(ML_DTYPES[name]).astype(x.dtype)


def has_difference(key: str) -> bool:
    """Whether the installed ml_dtypes has the table's difference `key`."""
    return any(d.key == key for d in known_differences("ml_dtypes"))


def documented_difference(name: str, x: np.ndarray, got: np.ndarray,
                          expected: np.ndarray) -> np.ndarray:
    """Where the installed ml_dtypes may differ from refsim by design (the table)."""
    mask = np.zeros(x.shape, bool)
    for difference in known_differences("ml_dtypes", name):
        mask |= difference.mask(name)(x, got, expected)
    return mask


def compare_with_ml_dtypes(x: np.ndarray, name: str) -> None:
    got, expected = ml_dtypes_round_trip(x, name), quantize(x, name)
    keep = ~documented_difference(name, x, got, expected)
    assert_same_bits(expected[keep], got[keep], x[keep],
                     context=f"{name} from {x.dtype}, ml_dtypes {VERSION}")


@pytest.mark.parametrize("name", list(ML_DTYPES))
def test_ml_dtypes_on_boundaries_and_random_bits(name):
    x = boundary_values(get_format(name), np.float32)
    bits = np.random.default_rng(7).integers(0, 2**32, 1 << 18, dtype=np.uint64)
    x = np.concatenate((x, bits.astype(np.uint32).view(np.float32)))
    compare_with_ml_dtypes(x, name)


@pytest.mark.parametrize("name", list(ML_DTYPES))
def test_ml_dtypes_from_float64(name):
    """From float64: every midpoint and one float64 ulp either side of it (where rounding
    through float32 first goes wrong), random bit patterns and log-uniform values. Strict for
    ml_dtypes >= 0.7, which rounds float64 once; earlier versions excuse the double rounding."""
    fmt = get_format(name)
    rng = np.random.default_rng(11)
    with np.errstate(over="ignore"):
        wide = np.exp2(rng.uniform(np.log2(fmt.min_subnormal if fmt.subnormals else fmt.min_normal)
                                   - 4, np.log2(fmt.max) + 4, 1 << 14))
    x = np.concatenate((boundary_values(fmt, np.float64),
                        rng.integers(0, 2**63, 1 << 14, dtype=np.int64).view(np.float64),
                        wide * rng.choice([-1.0, 1.0], wide.size)))
    compare_with_ml_dtypes(x, name)


def test_ml_dtypes_float64_rounding_as_the_table_says():
    """ml_dtypes before 0.7 converted float64 through float32 (double rounding): the reason it
    was compared from float32 only. 0.7 rounds float64 once, as refsim does."""
    x = np.array([-431.99999999999994, 1 + 2.0**-8 + 2.0**-40])
    single = [-416.0, 1.0078125]  # each rounded once from its exact value
    assert [quantize(x[:1], "e4m3fn")[0], quantize(x[1:], "bf16")[0]] == single
    got = [ml_dtypes_round_trip(x[:1], "e4m3fn")[0], ml_dtypes_round_trip(x[1:], "bf16")[0]]
    via_float32 = [-448.0, 1.0]  # -431.99999999999994 -> -432.0 (a tie) -> -448 (even)
    assert got == (via_float32 if has_difference("double-rounding") else single), VERSION


def test_documented_ml_dtypes_differences_hold_for_the_installed_version():
    """The masked cases differ exactly where the table says the installed version differs, and
    agree with refsim where it says they do not (so the mask hides nothing else)."""
    x = np.array([np.nan], np.float32)
    assert np.isnan(quantize(x, "e2m1fn")[0])
    assert ml_dtypes_round_trip(x, "e2m1fn")[0] == 0.0  # every version checked
    assert has_difference("nan-to-zero")
    x = np.array([1.1 * 2.0**-127, 1.4 * 2.0**-127, 1.5 * 2.0**-127], np.float32)
    expected = np.array([2.0**-127, 2.0**-127, 2.0**-126], np.float32)  # nearest, ties up
    assert_same_bits(quantize(x, "e8m0fnu"), expected, x)
    if has_difference("e8m0-subnormal"):
        expected = np.full(3, 2.0**-126, np.float32)
    assert_same_bits(ml_dtypes_round_trip(x, "e8m0fnu"), expected, x, context=VERSION)


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
