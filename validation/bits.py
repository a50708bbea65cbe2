"""Bit-level comparison of float arrays: NaN equals NaN (any payload), zeros compare by sign."""

from __future__ import annotations

import numpy as np

UNSIGNED: dict[np.dtype, type] = {
    np.dtype(np.float16): np.uint16,
    np.dtype(np.float32): np.uint32,
    np.dtype(np.float64): np.uint64,
}
"""The unsigned integer type of each float dtype: `x.view(UNSIGNED[x.dtype])` is its bits."""
_FIELDS = {np.dtype(np.float16): (5, 10), np.dtype(np.float32): (8, 23),
           np.dtype(np.float64): (11, 52)}


def same_bits(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Element-wise: identical bit patterns, or both NaN."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        raise ValueError(f"cannot compare {actual.dtype}{actual.shape} with "
                         f"{expected.dtype}{expected.shape}")
    utype = UNSIGNED[actual.dtype]
    equal = actual.view(utype) == expected.view(utype)
    return equal | (np.isnan(actual) & np.isnan(expected))


def describe(value: float, dtype: np.dtype) -> str:
    """`value` as hex bits, hex float and sign/exponent/mantissa fields of `dtype`."""
    dtype = np.dtype(dtype)
    exp_bits, man_bits = _FIELDS[dtype]
    bits = int(np.asarray(value, dtype).view(UNSIGNED[dtype]))
    sign = bits >> (exp_bits + man_bits)
    exponent = (bits >> man_bits) & ((1 << exp_bits) - 1)
    mantissa = bits & ((1 << man_bits) - 1)
    width = (exp_bits + man_bits + 1 + 3) // 4
    return (f"0x{bits:0{width}x} ({float(value).hex()}; s={sign} e={exponent:#x} "
            f"m={mantissa:#x})")


def mismatch_report(actual: np.ndarray, expected: np.ndarray, inputs: np.ndarray | None = None,
                    limit: int = 5, context: str = "") -> str:
    """A readable report of the first and last mismatches; empty string if none."""
    ok = same_bits(actual, expected)
    bad = np.flatnonzero(~ok.reshape(-1))
    if bad.size == 0:
        return ""
    flat_a = np.asarray(actual).reshape(-1)
    flat_e = np.asarray(expected).reshape(-1)
    flat_x = None if inputs is None else np.asarray(inputs).reshape(-1)
    picks = list(bad[:limit]) + [i for i in bad[-limit:] if i not in bad[:limit]]
    lines = [f"{bad.size} of {ok.size} elements differ{' (' + context + ')' if context else ''}"]
    for i in picks:
        line = f"  [{i}]"
        if flat_x is not None:
            line += f" input {describe(flat_x[i], flat_x.dtype)}"
        line += (f"\n      expected {describe(flat_e[i], flat_e.dtype)}"
                 f"\n      actual   {describe(flat_a[i], flat_a.dtype)}")
        lines.append(line)
    return "\n".join(lines)


def assert_same_bits(actual: np.ndarray, expected: np.ndarray, inputs: np.ndarray | None = None,
                     context: str = "") -> None:
    """Raise AssertionError with a mismatch report unless every element has the same bits."""
    report = mismatch_report(actual, expected, inputs, context=context)
    if report:
        raise AssertionError(report)
