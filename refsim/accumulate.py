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
  - counts=True: every function also returns the accumulator's event counts, a dict with keys
    COUNT_KEYS (overflow, underflow, saturation) summed over all outputs.
  - conv2d is matmul on the im2col matrix (docs/accumulation.md, "conv2d").
  - One parallel kernel per order, compiled (and cached) on first use of that order.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.core import types
from numba.extending import overload

from formats import FloatFormat, Format
from formats.policy import OVERFLOWS, ROUNDINGS, check_int, check_seed
from refsim import accum_core as ac
from refsim.backends import cpu_gemm
from refsim.backends.threads import NS_PER_EXACT_MAC, threads_for
from refsim.blocks import cast_operand
from refsim.params import carrier_holds, check_array, format_params
from refsim.quantize import quantize
from refsim.specs import (
    MULTITERM_ALIGNS,
    MULTITERM_TRUNCATIONS,
    MULTITERM_VARIANTS,
    ORDERS,
    AccumSpec,
    Cast,
    GemmSpec,
)

__all__ = ["COUNT_KEYS", "conv2d", "dot", "matmul", "sum"]

_UINT64_MAX = (1 << 64) - 1


# One parallel kernel per order, made by _make_kernel on first use, so each order compiles only
# when it is used. The closure holds the order's index only (a plain int): Numba's on-disk cache
# keys a closure by its pickled cells, and a dispatcher there would differ in every process. The
# order function itself is chosen at compile time by _order (an overload on the literal index).
@njit(cache=True)
def _locate(flat, per_batch, n_cols):
    p = flat // per_batch
    rest = flat - p * per_batch
    m = rest // n_cols
    return p, m, rest - m * n_cols


@njit(cache=True)
def _store(out, counts, count_on, i, flat, bits, cnt, cast_on, cspec, seed):
    """out[i] = the cast value of output `flat`; counts[i] = its events when count_on."""
    out[i] = ac.cast_output(bits, cast_on, cspec, seed, flat)
    if count_on:
        counts[i, 0] = cnt[0]
        counts[i, 1] = cnt[1]
        counts[i, 2] = cnt[2]


_ORDER_FUNCTIONS = tuple(getattr(ac, "order_" + order) for order in ORDERS)


def _order(order, a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec, prod_on, pspec, mt,
           seed, index):
    """accum_core.order_<ORDERS[order]>(a, ...) for a compile-time `order`; Numba code only."""
    raise NotImplementedError("refsim.accumulate._order runs inside Numba kernels only")


@overload(_order, prefer_literal=True)
def _order_overload(order, a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec, prod_on, pspec,
                    mt, seed, index):
    if not isinstance(order, types.IntegerLiteral):
        return None
    function = _ORDER_FUNCTIONS[order.literal_value]

    def impl(order, a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec, prod_on, pspec, mt,
             seed, index):
        return function(a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec, prod_on, pspec,
                        mt, seed, index)

    return impl


def _make_kernel(order: int):
    @njit(parallel=True, cache=True)
    def reduce_outputs(a, b, has_b, c, has_c, todo, out, counts, count_on, chunk, spec, ospec,
                       prod_on, pspec, cast_on, cspec, mt, seed):
        """The outputs whose flat indices are listed in todo (out[i] is output todo[i]) in the
        order ORDERS[order], parallel over outputs only; c[flat] holds output flat's initial
        value C (float64 bits) when has_c."""
        n_cols = b.shape[1] if has_b else 1
        for i in prange(todo.shape[0]):
            flat = todo[i]
            p, m, n = _locate(flat, a.shape[1] * n_cols, n_cols)
            cbits = c[flat] if has_c else np.uint64(0)
            bits, cnt = _order(order, a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec,
                               prod_on, pspec, mt, seed, flat)
            _store(out, counts, count_on, i, flat, bits, cnt, cast_on, cspec, seed)

    return reduce_outputs


_KERNELS: dict[str, object] = {}


def _kernel(order: str):
    """The exact-core kernel of `order`, made on first use."""
    if order not in _KERNELS:
        _KERNELS[order] = _make_kernel(ORDERS.index(order))
    return _KERNELS[order]


COUNT_KEYS = ("overflow", "underflow", "saturation")
"""Keys of the counts dict (the order of refsim.accum_core.CNT_*)."""


# ---- host-side helpers ---------------------------------------------------------------------------
def _spec_tuple(fmt: Format, rounding: str, overflow: str, sr_bits: int | None) -> tuple:
    return (*format_params(fmt), ROUNDINGS.index(rounding), OVERFLOWS.index(overflow),
            sr_bits or 0)


def _dummy_spec() -> tuple:
    return _spec_tuple(FloatFormat(8, 23), "rne", "default", None)


def order_params(acc: AccumSpec) -> tuple:
    """The int64 tuple of order parameters the kernels take (refsim.accum_core.MT_* layout)."""
    flush = acc.subnormals == "flush"
    emin = ac.NO_EMIN if acc.operands is None else acc.operands.emin
    return tuple(np.int64(v) for v in (
        acc.group or 1, acc.width or 1,
        MULTITERM_VARIANTS.index(acc.variant) if acc.variant else 0,
        MULTITERM_ALIGNS.index(acc.align) if acc.align else 0,
        MULTITERM_TRUNCATIONS.index(acc.truncation) if acc.truncation else 0,
        flush, emin, acc.c_entry == "outer"))


def initial_values(c: object, shape: tuple[int, ...]) -> np.ndarray:
    """C (matmul's and dot's c=) broadcast to the output shape, as flat float64 bits."""
    c = check_array(c, "c")
    try:
        full = np.broadcast_to(c, shape)
    except ValueError:
        raise ValueError(f"c of shape {c.shape} does not broadcast to the output shape "
                         f"{shape}") from None
    return np.ascontiguousarray(full, dtype=np.float64).reshape(-1).view(np.uint64)


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
         seed: int, count_on: bool = False, c: np.ndarray | None = None
         ) -> tuple[np.ndarray, dict[str, int]]:
    """The reduction of a (P, M, K) with b (P, N, K) (or of a alone): float64 values (P, M, N) and
    the event counts summed over all outputs (zeros unless count_on). c: None, or the initial
    values C as flat float64 bits, one per output.

    The fast path (refsim.backends.cpu_gemm) computes what it can; the exact core computes the
    rest: every output when the fast path does not apply (always with C), else only the outputs
    it left (NaN).
    """
    n_cols = 1 if b3 is None else b3.shape[1]
    shape = (a3.shape[0], a3.shape[1], n_cols)
    fast = None if c is not None else cpu_gemm.plan(a3, b3, acc, cast, count_on)
    if fast is not None:
        assert b3 is not None
        raw = cpu_gemm.run(fast, a3, b3)
        todo = np.flatnonzero(np.isnan(raw))
        values = raw if cast is None else quantize(raw, cast.fmt, cast.rounding,
                                                   overflow=cast.overflow)
        if todo.size == 0:
            return values, dict.fromkeys(COUNT_KEYS, 0)
    else:
        values = np.empty(shape, np.float64)
        todo = np.arange(values.size, dtype=np.int64)
    exact, events = _run_exact(a3, b3, acc, cast, seed, count_on, todo, c)
    values.reshape(-1)[todo] = exact
    return values, events


def _run_exact(a3: np.ndarray, b3: np.ndarray | None, acc: AccumSpec, cast: Cast | None,
               seed: int, count_on: bool, todo: np.ndarray, c: np.ndarray | None = None
               ) -> tuple[np.ndarray, dict[str, int]]:
    """The exact core on the outputs whose flat indices are `todo`: their float64 values and the
    event counts summed over them (c: as in _run)."""
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
    else:
        b_bits = np.ascontiguousarray(b3, dtype=np.float64).view(np.uint64)
    out = np.empty(todo.size, np.uint64)
    counts = np.zeros((todo.size if count_on else 0, 3), np.int64)
    has_c = c is not None
    c_bits = c if c is not None else np.zeros(1, np.uint64)
    with threads_for(todo.size * a3.shape[2] * NS_PER_EXACT_MAC):
        _kernel(acc.order)(a_bits, b_bits, has_b, c_bits, has_c, todo, out, counts, count_on,
                            np.int64(acc.chunk or 0), spec, ospec, prod_on, pspec, cast_on, cspec,
                            order_params(acc), np.uint64(seed))
    totals = counts.sum(axis=0)
    events = {key: int(totals[i]) for i, key in enumerate(COUNT_KEYS)}
    return out.view(np.float64), events


def _result_format(acc: AccumSpec, cast: Cast | None) -> Format:
    if cast is not None:
        return cast.fmt
    return acc.outer_spec.fmt if acc.order in ("chunked", "multiterm") else acc.fmt


def _with_counts(result: np.ndarray, events: dict[str, int], counts: bool):
    return (result, events) if counts else result


# ---- public API ----------------------------------------------------------------------------------
def sum(x, acc: AccumSpec | Format | str, axis: int | None = -1, *, seed: int = 0,
        counts: bool = False):
    """Sum `x` along `axis` in the accumulator `acc` (terms taken exactly, or rounded to
    acc.product).

    Args:
        x: NumPy float32/float64 array (at least 1-D, or any with axis=None).
        acc: an AccumSpec, or a format (rne, sequential).
        axis: the axis summed over (any integer); None sums every element, in C order, into
            one result (as np.sum with axis=None).
        seed: 0..2^64-1, the key of the random stream (sr only).
        counts: also return the event counts (docs/accumulation.md, "Event counts").

    Returns:
        An array of x's shape without `axis` (a 0-d array for 1-D x); with counts=True the pair
        (array, {"overflow": n, "underflow": n, "saturation": n}) summed over all outputs.
    """
    x = check_array(x, "x")
    acc = AccumSpec.of(acc, "acc")
    seed = check_seed(seed)
    if axis is None:  # every element, in C order: the terms of one output
        x, axis = x.reshape(-1), -1
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension (or axis=None); got a 0-d array")
    axis = check_int(axis, "axis", allowed="an int or None")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for x of shape {x.shape}")
    moved = np.moveaxis(x, axis, -1)
    out_shape = moved.shape[:-1]
    count = int(np.prod(out_shape))
    a3 = moved.reshape(1, count, moved.shape[-1])
    values, events = _run(a3, None, acc, None, seed, counts)
    dtype = _result_dtype(_result_format(acc, None), [x.dtype])
    return _with_counts(values.reshape(out_shape).astype(dtype), events, counts)


def dot(x, y, acc: AccumSpec | Format | str, c=None, *, seed: int = 0, counts: bool = False):
    """The dot product of two 1-D arrays, products exact (or rounded to acc.product).

    Args:
        x, y: 1-D NumPy float32/float64 arrays of one length.
        acc: an AccumSpec, or a format (rne, sequential).
        c: None, or the initial value C, a float32/float64 array of shape (): the result is
            x·y + C, with C entering as acc declares (docs/accumulation.md, "The initial
            value C").
        seed, counts: as in `sum`.

    Returns:
        A 0-d array; with counts=True the pair (array, counts dict) as in `sum`.
    """
    x = check_array(x, "x")
    y = check_array(y, "y")
    acc = AccumSpec.of(acc, "acc")
    seed = check_seed(seed)
    if x.ndim != 1 or y.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"dot needs two 1-D arrays of the same length; got x of shape {x.shape} "
                         f"and y of shape {y.shape}")
    _check_products(x, y, "x", "y")
    c_bits = None if c is None else initial_values(c, ())
    values, events = _run(x.reshape(1, 1, -1), y.reshape(1, 1, -1), acc, None, seed, counts,
                          c_bits)
    dtypes = [x.dtype, y.dtype] + ([] if c is None else [c.dtype])
    dtype = _result_dtype(_result_format(acc, None), dtypes)
    return _with_counts(values.reshape(()).astype(dtype), events, counts)


def matmul(a, b, spec: GemmSpec, c=None, *, seed: int = 0, counts: bool = False):
    """a @ b (+ C) as GemmSpec declares: Cast a and b, exact products, accumulate, Cast the result.

    Args:
        a: (..., M, K) NumPy float32/float64 array.
        b: (..., K, N) array; batch dimensions broadcast as in np.matmul (2-D and batched).
        spec: a GemmSpec.
        c: None, or the initial accumulator C: a float32/float64 array that broadcasts to the
            output shape (..., M, N); D = A·B + C with C entering the accumulation as spec.acc
            declares (docs/accumulation.md, "The initial value C"), taken exactly (not cast).
        seed: 0..2^64-1; a's Cast uses seed, b's Cast seed + 1, the accumulation seed.
        counts: also return the accumulator's event counts (as in `sum`).

    Returns:
        An array of shape (..., M, N); with counts=True the pair (array, counts dict).
    """
    from refsim.backends import cuda
    if cuda.is_device_array(a) or cuda.is_device_array(b):  # on the GPU: refsim.backends.cuda
        return cuda.matmul(a, b, spec, c, seed=seed, counts=counts)
    a = check_array(a, "a")
    b = check_array(b, "b")
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
    c_bits = None if c is None else initial_values(c, (*batch, a.shape[-2], b.shape[-1]))
    if spec.a is not None:  # a block format (MX) has its blocks along K: a's last axis
        a = cast_operand(a, spec.a, seed, axis=-1)
    if spec.b is not None:  # and b's second-to-last
        b = cast_operand(b, spec.b, (seed + 1) & _UINT64_MAX, axis=-2)
    _check_products(a, b, "a", "b")
    m, k = a.shape[-2:]
    n = b.shape[-1]
    count = int(np.prod(batch))
    a3 = np.broadcast_to(a, (*batch, m, k)).reshape(count, m, k)
    b3 = np.swapaxes(np.broadcast_to(b, (*batch, k, n)), -1, -2).reshape(count, n, k)
    values, events = _run(a3, b3, spec.acc, spec.out, seed, counts, c_bits)
    dtypes = [a.dtype, b.dtype] + ([] if c is None else [c.dtype])
    dtype = _result_dtype(_result_format(spec.acc, spec.out), dtypes)
    return _with_counts(values.reshape(*batch, m, n).astype(dtype), events, counts)



def _pair(value: object, name: str, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each at least `minimum`, as a pair."""
    pair = value if isinstance(value, tuple | list) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, int | np.integer) and not isinstance(v, bool)
                                 for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints; got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be at least {minimum}; got {value!r}")
    return int(pair[0]), int(pair[1])


def conv2d(x, w, spec: GemmSpec, stride: int | tuple[int, int] = 1,
           padding: int | tuple[int, int] = 0, *, seed: int = 0, counts: bool = False):
    """2-D convolution (cross-correlation, as in deep-learning frameworks) by im2col onto matmul.

    Output (n, o, i, j) reduces, in the order spec.acc declares, the K = C*KH*KW terms
    w[o, c, kh, kw] * xp[n, c, i*sh + kh, j*sw + kw] taken in C order of (c, kh, kw) (c slowest,
    kw fastest), where xp is x cast with spec.a and zero-padded (padded positions are +0 terms
    and take part in the order). It is matmul(W, cols) with W = w cast with spec.b and reshaped
    to (O, K), cols the (N, K, HO*WO) im2col matrix: so the flat output index that keys the
    random words is the C-order index of the (N, O, HO, WO) result.

    Args:
        x: (N, C, H, W) float32/float64 input.
        w: (O, C, KH, KW) weights.
        spec: a GemmSpec; spec.a casts x (seed), spec.b casts w (seed + 1), each element once,
            before im2col.
        stride, padding: an int or a (height, width) pair; stride >= 1, padding >= 0.
        seed, counts: as in matmul.

    Returns:
        An (N, O, HO, WO) array, HO = (H + 2*ph - KH) // sh + 1 (likewise WO); with
        counts=True the pair (array, counts dict).
    """
    x = check_array(x, "x")
    w = check_array(w, "w")
    if not isinstance(spec, GemmSpec):
        raise TypeError(f"spec must be a GemmSpec; got {type(spec).__name__}")
    seed = check_seed(seed)
    sh, sw = _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d needs x of shape (N, C, H, W) and w of shape (O, C, KH, KW); "
                         f"got x of shape {x.shape} and w of shape {w.shape}")
    n_img, chans, height, width = x.shape
    n_out, w_chans, kh, kw = w.shape
    if w_chans != chans:
        raise ValueError(f"conv2d: x has {chans} channels but w expects {w_chans}; got x of "
                         f"shape {x.shape} and w of shape {w.shape}")
    hp, wp = height + 2 * ph, width + 2 * pw
    if kh > hp or kw > wp or kh == 0 or kw == 0:
        raise ValueError(f"conv2d: the kernel ({kh}x{kw}) does not fit the padded input "
                         f"({hp}x{wp}); got x of shape {x.shape}, w of shape {w.shape}, "
                         f"padding ({ph}, {pw})")
    if spec.a is not None:  # a block format has its blocks along the channels C (axis 1)
        x = cast_operand(x, spec.a, seed, axis=1)
    if spec.b is not None:
        w = cast_operand(w, spec.b, (seed + 1) & _UINT64_MAX, axis=1)
    ho = (hp - kh) // sh + 1
    wo = (wp - kw) // sw + 1
    xp = np.zeros((n_img, chans, hp, wp), x.dtype)
    xp[:, :, ph:ph + height, pw:pw + width] = x
    # windows[n, c, i, j, a, b] = xp[n, c, i*sh + a, j*sw + b]
    windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw][:, :, :ho, :wo]
    cols = np.ascontiguousarray(windows.transpose(0, 1, 4, 5, 2, 3)).reshape(
        n_img, chans * kh * kw, ho * wo)
    w2 = w.reshape(n_out, chans * kh * kw)
    result = matmul(w2, cols, GemmSpec(acc=spec.acc, out=spec.out), seed=seed, counts=counts)
    if counts:
        values, events = result
        return values.reshape(n_img, n_out, ho, wo), events
    return result.reshape(n_img, n_out, ho, wo)
