"""sum, dot and matmul with a declared accumulator format, order and rounding.

Usage rules:
  - Inputs are NumPy float32/float64 arrays; nothing is cast implicitly. Each product (or term)
    is exact, or rounded to `acc.product`; every partial sum is rounded to `acc.fmt` in exactly
    the order `acc.order` declares (docs/accumulation.md), so a result never depends on the
    number of threads.
  - Products must be exact in 64 bits: the significands of the two operands (trailing zeros
    removed) may total at most 64 bits. float32 operands always qualify; float64 operands are
    checked and refused with a message otherwise (quantize them first, e.g. with a GemmSpec Cast).
  - The result has the inputs' dtype when every value of the result format (out.fmt, else the
    outer or accumulator format) fits it, else float64.
  - Stochastic rounding: the random words of a rounding are a function of (seed, flat output
    index, step, family) only (refsim.accum_core). matmul's a and b Casts use refsim.quantize
    with seed and seed + 1 (mod 2^64) respectively.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from formats import FloatFormat, Format
from formats.policy import OVERFLOWS, ROUNDINGS, check_seed
from refsim import accum_core as ac
from refsim.params import CARRIERS, carrier_holds, format_params
from refsim.quantize import quantize
from refsim.specs import ORDERS, AccumSpec, Cast, GemmSpec

__all__ = ["dot", "matmul", "sum"]

_UINT64_MAX = (1 << 64) - 1


@njit(parallel=True, cache=True)
def _kernel(a, b, has_b, out, order, chunk, spec, ospec, prod_on, pspec, cast_on, cspec, seed):
    """out[flat] = reduce_one(...) for every output (p, m, n); parallel over outputs only."""
    n_batch = a.shape[0]
    n_rows = a.shape[1]
    n_cols = b.shape[1] if has_b else 1
    per_batch = n_rows * n_cols
    for flat in prange(n_batch * per_batch):
        p = flat // per_batch
        rest = flat - p * per_batch
        m = rest // n_cols
        n = rest - m * n_cols
        out[flat] = ac.reduce_one(a, b, has_b, p, m, n, order, chunk, spec, ospec, prod_on,
                                  pspec, cast_on, cspec, seed, flat)


# ---- host-side helpers ---------------------------------------------------------------------------
def _spec_tuple(fmt: Format, rounding: str, overflow: str, sr_bits: int | None) -> tuple:
    return (*format_params(fmt), ROUNDINGS.index(rounding), OVERFLOWS.index(overflow),
            sr_bits or 0)


def _dummy_spec() -> tuple:
    return _spec_tuple(FloatFormat(8, 23), "rne", "default", None)


def _check_array(x: object, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy float32/float64 array; got {type(x).__name__}")
    if x.dtype not in CARRIERS:
        raise TypeError(f"{name} must have dtype float32 or float64; got {x.dtype} (nothing is "
                        "cast implicitly)")
    return x


def _max_significant_bits(x: np.ndarray) -> int:
    """Largest number of significant bits (trailing zeros removed) among x's finite values."""
    if x.dtype == np.float32:
        return 24
    bits = np.ascontiguousarray(x, dtype=np.float64).reshape(-1).view(np.uint64)
    efield = (bits >> np.uint64(52)) & np.uint64(0x7FF)
    sig = bits & np.uint64((1 << 52) - 1)
    sig = np.where((efield > 0) & (efield < 0x7FF), sig | np.uint64(1 << 52), sig)
    sig = sig[(efield < 0x7FF) & (sig != 0)]
    if sig.size == 0:
        return 0
    lowest = sig & (~sig + np.uint64(1))
    # Both are below 2^53, so float64 holds them exactly and frexp gives their bit lengths.
    length = np.frexp(sig.astype(np.float64))[1]
    trailing = np.frexp(lowest.astype(np.float64))[1] - 1
    return int((length - trailing).max())


def _check_products(a: np.ndarray, b: np.ndarray, a_name: str, b_name: str) -> None:
    bits_a = _max_significant_bits(a)
    bits_b = _max_significant_bits(b)
    if bits_a + bits_b > 64:
        raise ValueError(
            f"products of {a_name} and {b_name} need up to {bits_a} + {bits_b} significant bits, "
            "more than the 64 an exact product may have: quantize the operands first (e.g. a "
            "GemmSpec with Casts to formats whose significands total at most 64 bits)"
        )


def _result_dtype(fmt: Format, dtypes: list[np.dtype]) -> np.dtype:
    dtype = np.result_type(*dtypes)
    return dtype if carrier_holds(fmt, dtype) else np.dtype(np.float64)


def _run(a3: np.ndarray, b3: np.ndarray | None, acc: AccumSpec, cast: Cast | None,
         seed: int) -> np.ndarray:
    """The kernel on a (P, M, K) and b (P, N, K) (or None); returns float64 values (P, M, N)."""
    if acc.order == "multiterm":
        raise NotImplementedError("order='multiterm' is specified (refsim.specs) but its kernel "
                                  "is not implemented yet")
    spec = _spec_tuple(acc.fmt, acc.rounding, acc.overflow, acc.sr_bits)
    outer = acc.outer_spec
    ospec = _spec_tuple(outer.fmt, outer.rounding, outer.overflow, outer.sr_bits)
    prod_on = acc.product is not None
    pspec = _dummy_spec() if acc.product is None else _spec_tuple(
        acc.product.fmt, acc.product.rounding, acc.product.overflow, acc.product.sr_bits)
    cast_on = cast is not None
    cspec = _dummy_spec() if cast is None else _spec_tuple(cast.fmt, cast.rounding, cast.overflow,
                                                           cast.sr_bits)
    a_bits = np.ascontiguousarray(a3, dtype=np.float64).view(np.uint64)
    has_b = b3 is not None
    if b3 is None:
        b_bits = np.zeros((1, 1, 1), np.uint64)
        n_cols = 1
    else:
        b_bits = np.ascontiguousarray(b3, dtype=np.float64).view(np.uint64)
        n_cols = b3.shape[1]
    out = np.empty(a3.shape[0] * a3.shape[1] * n_cols, np.uint64)
    _kernel(a_bits, b_bits, has_b, out, np.int64(ORDERS.index(acc.order)),
            np.int64(acc.chunk or 1), spec, ospec, prod_on, pspec, cast_on, cspec,
            np.uint64(seed))
    return out.view(np.float64).reshape(a3.shape[0], a3.shape[1], n_cols)


def _result_format(acc: AccumSpec, cast: Cast | None) -> Format:
    if cast is not None:
        return cast.fmt
    return acc.outer_spec.fmt if acc.order == "chunked" else acc.fmt


# ---- public API ----------------------------------------------------------------------------------
def sum(x, acc: AccumSpec | Format | str, axis: int = -1, *, seed: int = 0):
    """Sum `x` along `axis` in the accumulator `acc` (terms taken exactly, or rounded to
    acc.product).

    Args:
        x: NumPy float32/float64 array (at least 1-D).
        acc: an AccumSpec, or a format (rne, sequential).
        axis: the axis summed over.
        seed: 0..2^64-1, the key of the random stream (sr only).

    Returns:
        An array of x's shape without `axis` (a 0-d array for 1-D x).
    """
    x = _check_array(x, "x")
    acc = AccumSpec.of(acc, "acc")
    seed = check_seed(seed)
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension; got a 0-d array")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for x of shape {x.shape}")
    moved = np.moveaxis(x, axis, -1)
    out_shape = moved.shape[:-1]
    count = int(np.prod(out_shape))
    a3 = moved.reshape(1, count, moved.shape[-1])
    values = _run(a3, None, acc, None, seed)
    dtype = _result_dtype(_result_format(acc, None), [x.dtype])
    return values.reshape(out_shape).astype(dtype)


def dot(x, y, acc: AccumSpec | Format | str, *, seed: int = 0):
    """The dot product of two 1-D arrays, products exact (or rounded to acc.product).

    Returns:
        A 0-d array.
    """
    x = _check_array(x, "x")
    y = _check_array(y, "y")
    acc = AccumSpec.of(acc, "acc")
    seed = check_seed(seed)
    if x.ndim != 1 or y.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"dot needs two 1-D arrays of the same length; got x of shape {x.shape} "
                         f"and y of shape {y.shape}")
    _check_products(x, y, "x", "y")
    values = _run(x.reshape(1, 1, -1), y.reshape(1, 1, -1), acc, None, seed)
    dtype = _result_dtype(_result_format(acc, None), [x.dtype, y.dtype])
    return values.reshape(()).astype(dtype)


def matmul(a, b, spec: GemmSpec, *, seed: int = 0):
    """a @ b as GemmSpec declares: Cast a and b, exact products, accumulate, Cast the result.

    Args:
        a: (..., M, K) NumPy float32/float64 array.
        b: (..., K, N) array; batch dimensions broadcast as in np.matmul (2-D and batched).
        spec: a GemmSpec.
        seed: 0..2^64-1; a's Cast uses seed, b's Cast seed + 1, the accumulation seed.

    Returns:
        An array of shape (..., M, N).
    """
    a = _check_array(a, "a")
    b = _check_array(b, "b")
    if not isinstance(spec, GemmSpec):
        raise TypeError(f"spec must be a GemmSpec; got {type(spec).__name__}")
    seed = check_seed(seed)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul needs arrays of at least 2 dimensions; got a of shape {a.shape} "
                         f"and b of shape {b.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: a's last dimension must equal b's second-to-last; got a of "
                         f"shape {a.shape} and b of shape {b.shape}")
    try:
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"matmul: batch dimensions do not broadcast; got a of shape {a.shape} "
                         f"and b of shape {b.shape}") from None
    if spec.a is not None:
        a = quantize(a, spec.a.fmt, spec.a.rounding, overflow=spec.a.overflow,
                     sr_bits=spec.a.sr_bits, seed=seed)
    if spec.b is not None:
        b = quantize(b, spec.b.fmt, spec.b.rounding, overflow=spec.b.overflow,
                     sr_bits=spec.b.sr_bits, seed=(seed + 1) & _UINT64_MAX)
    _check_products(a, b, "a", "b")
    m, k = a.shape[-2:]
    n = b.shape[-1]
    count = int(np.prod(batch))
    a3 = np.broadcast_to(a, (*batch, m, k)).reshape(count, m, k)
    b3 = np.swapaxes(np.broadcast_to(b, (*batch, k, n)), -1, -2).reshape(count, n, k)
    values = _run(a3, b3, spec.acc, spec.out, seed)
    dtype = _result_dtype(_result_format(spec.acc, spec.out), [a.dtype, b.dtype])
    return values.reshape(*batch, m, n).astype(dtype)

