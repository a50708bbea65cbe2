"""What the exactness of a GEMM's products depends on: the operands' significand lengths and
exponent range (OperandRange, one pass over each operand), and the test that every product is
a value of a lane type (products_exact). Shared by the fast paths (refsim.backends.cpu_gemm,
refsim.backends.cpu_tile).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit

from refsim.kernels.lane import float_bits, select
from refsim.params import CARRIERS, readonly


@dataclass(frozen=True)
class OperandRange:
    """What the exactness of products depends on, over an array's finite nonzero values:
    significant bits (trailing zeros removed), exponents of the lowest set bit and of the
    leading bit. Empty: bits 0, low +inf-like, high -inf-like."""

    finite: bool
    bits: int
    low: int
    high: int

    @classmethod
    def of(cls, x: np.ndarray) -> OperandRange:
        flat = x.ravel(order="K")  # a view wherever x's memory is one block (any axis order)
        kernel = _RANGE_KERNELS.get(flat.dtype)
        if kernel is None:
            kernel = _RANGE_KERNELS[flat.dtype] = _make_range_kernel(flat.dtype)
        nonfinite, bits, low, high = kernel(readonly(flat))  # one compile per dtype
        if bits == 0:
            return cls(nonfinite == 0, 0, 1 << 20, -(1 << 20))
        return cls(nonfinite == 0, int(bits), int(low), int(high))


_RANGE_KERNELS: dict[np.dtype, Callable[[np.ndarray], tuple[int, int, int, int]]] = {}


def _make_range_kernel(dtype: np.dtype):
    """One pass over a float32 or float64 array: (count of non-finite values, and over the
    finite nonzero ones: most significant bits, lowest set bit's exponent, leading bit's
    exponent; 0, 0, 0 when there are none)."""
    c_man, c_bias, utype = CARRIERS[np.dtype(dtype)]
    U = utype
    MAN, MAN_MASK, IMPLICIT = U(c_man), U((1 << c_man) - 1), U(1 << c_man)
    E_ALL = U(2 * c_bias + 1)
    SHIFT52, F64_BIAS = np.uint64(52), np.int64(1023)
    EXP0 = np.int64(c_bias + c_man)
    WIDE = np.int64(1 << 20)

    @njit(cache=True)
    def scan(x):
        nonfinite = np.int64(0)
        bits, low, high = np.int64(0), WIDE, -WIDE
        for i in range(x.shape[0]):
            u = float_bits(x[i])
            e = U(U(u >> MAN) & E_ALL)
            sig = U(u & MAN_MASK)
            nonfinite += np.int64(e == E_ALL)
            keep = (e != E_ALL) & ((e != U(0)) | (sig != U(0)))
            sig = select(e != U(0), U(sig | IMPLICIT), sig)
            exp0 = np.int64(select(e != U(0), e, U(1))) - EXP0  # exponent of sig's bit 0
            # Bit length and trailing zeros from float64 exponents (sig < 2^53 is exact there).
            s64 = np.uint64(select(keep, sig, U(1)))
            lowest = np.uint64(s64 & (~s64 + np.uint64(1)))
            top = np.int64(float_bits(np.float64(s64)) >> SHIFT52) - F64_BIAS
            tz = np.int64(float_bits(np.float64(lowest)) >> SHIFT52) - F64_BIAS
            bits = max(bits, select(keep, top - tz + 1, np.int64(0)))
            low = min(low, select(keep, exp0 + tz, WIDE))
            high = max(high, select(keep, exp0 + top, -WIDE))
        return nonfinite, bits, low, high

    return scan


def lane_limits(lane: np.dtype) -> tuple[int, int, int]:
    """(man_bits, emax, exponent of the smallest subnormal) of a lane type."""
    c_man, c_bias, _ = CARRIERS[lane]
    return c_man, c_bias, 1 - c_bias - c_man


def products_exact(ra: OperandRange, rb: OperandRange, lane: np.dtype) -> bool:
    """Is every product a*b (and every operand) an exact lane value?"""
    c_man, c_emax, c_min_exp = lane_limits(lane)
    if ra.bits == 0 or rb.bits == 0:  # an all-zero operand: every product is a zero
        return True
    return (ra.bits + rb.bits <= c_man + 1 and ra.low + rb.low >= c_min_exp
            and ra.high + rb.high + 2 <= c_emax + 1 and ra.low >= c_min_exp
            and rb.low >= c_min_exp and ra.high <= c_emax and rb.high <= c_emax)
