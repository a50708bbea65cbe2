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
    index, step, family) only (kernels.accum_core). matmul's a and b Casts use refsim.quantize
    with seed and seed + 1 (mod 2^64) respectively.
  - counts=True: every function also returns the accumulator's event counts, a dict with keys
    COUNT_KEYS (overflow, underflow, saturation) summed over all outputs.
  - conv2d is matmul on the im2col matrix (docs/accumulation.md, "conv2d").
  - route= (ROUTES) chooses the kernels: a fast route where one applies (refsim.backends.cpu_gemm,
    default), the exact core alone (refsim.backends.cpu_exact), or a fast route or an error;
    the bits are the same on every route. Kernel arguments come from
    refsim.backends.kernel_args, shared with the CUDA backend.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from refsim.backends import cpu_exact, cpu_gemm, cuda
from refsim.backends.kernel_args import (
    COUNT_KEYS,
    batch_shape,
    check_products,
    events,
    initial_values,
    max_significant_bits,
    result_dtype,
    result_format,
)
from refsim.blocks import cast_operand
from refsim.formats import Format
from refsim.formats.block_format import BlockFormat
from refsim.formats.policy import check_int, check_seed
from refsim.params import check_array
from refsim.quantize import quantize
from refsim.specs import AccumSpec, Cast, GemmSpec

__all__ = ["COUNT_KEYS", "ROUTES", "conv2d", "dealt_positions", "dot", "matmul", "sum"]

_UINT64_MAX = (1 << 64) - 1

ROUTES = ("auto", "exact", "fast")
"""Which kernels compute a reduction (the same bits on every route):
  - auto: a fast route (refsim.backends.cpu_gemm's plan: register-tiled or round-to-odd rows)
    where one applies, the exact core (refsim.backends.cpu_exact) for every output it leaves;
  - exact: the exact core on every output;
  - fast: as auto, but a ValueError when no fast route applies (so a test or a benchmark
    cannot silently measure the exact core)."""


# ---- host side -----------------------------------------------------------------------------------
def _check_route(route: object) -> str:
    if route not in ROUTES:
        raise ValueError(f"route must be one of {', '.join(ROUTES)}; got {route!r}")
    return str(route)


def _check_products(a: np.ndarray, b: np.ndarray, a_name: str, b_name: str) -> None:
    check_products(max_significant_bits(a), max_significant_bits(b), a_name, b_name)


def dealt_positions(k: int, acc: AccumSpec) -> np.ndarray | None:
    """Where each position of a K-long reduction goes under acc.group_run (interleaved groups):
    an int64 index array into the K positions, -1 for a zero pad, laid out so that the kernels'
    consecutive groups are the dealt ones; None when acc deals nothing (consecutive groups).

    Each chunk's position p goes to group (p // group_run) % (chunk // group); a group's
    positions keep their order and groups that get no position (a partial last chunk) are left
    out, so only the last group of a partial chunk is shorter than group."""
    run = acc.group_run
    if run is None or k == 0:
        return None
    assert acc.chunk is not None and acc.group is not None
    chunk, group = acc.chunk, acc.group
    parts: list[np.ndarray] = []
    for c0 in range(0, k, chunk):
        here = np.arange(c0, min(c0 + chunk, k), dtype=np.int64)
        owner = ((here - c0) // run) % (chunk // group)
        groups = [here[owner == j] for j in range(chunk // group)]
        groups = [g for g in groups if g.size]
        for j, members in enumerate(groups):
            parts.append(members)
            if j < len(groups) - 1 or c0 + chunk < k:  # pad all but the very last group
                parts.append(np.full(group - members.size, -1, np.int64))
    return np.concatenate(parts)


def _dealt(x3: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """x3 (P, R, K) with its last axis laid out as dealt_positions says (pads are +0)."""
    out = np.zeros((*x3.shape[:-1], positions.size), x3.dtype)
    keep = positions >= 0
    out[..., keep] = x3[..., positions[keep]]
    return out


def _run(a3: np.ndarray, b3: np.ndarray | None, acc: AccumSpec, cast: Cast | None,
         seed: int, count_on: bool = False, c: np.ndarray | None = None, route: str = "auto"
         ) -> tuple[np.ndarray, dict[str, int]]:
    """The reduction of a (P, M, K) with b (P, N, K) (or of a alone): float64 values (P, M, N) and
    the event counts summed over all outputs (zeros unless count_on). c: None, or the initial
    values C as flat float64 bits, one per output. route: one of ROUTES.

    The fast path (refsim.backends.cpu_gemm) computes what it can; the exact core computes the
    rest: every output when the fast path does not apply, else only the outputs
    it left (NaN), with their C.
    """
    positions = dealt_positions(a3.shape[-1], acc)
    if positions is not None:  # interleaved groups: lay them out consecutively, then the
        a3 = _dealt(a3, positions)  # kernels see plain consecutive groups
        b3 = None if b3 is None else _dealt(b3, positions)
        acc = dataclasses.replace(acc, group_run=None)
    n_cols = 1 if b3 is None else b3.shape[1]
    shape = (a3.shape[0], a3.shape[1], n_cols)
    fast = None
    if route != "exact":
        fast = cpu_gemm.plan(a3, b3, acc, cast, count_on, c, seed)
    if fast is None and route == "fast":
        raise ValueError(f"route='fast': no fast route applies to {acc} with output Cast "
                         f"{cast}{' and counts' if count_on else ''}"
                         f"{' and an initial value c' if c is not None else ''} on these "
                         "operands (docs/accumulation.md lists the conditions)")
    if fast is not None:
        assert b3 is not None
        raw = cpu_gemm.run(fast, a3, b3, c)
        todo = np.flatnonzero(np.isnan(raw))
        values = raw
        if cast is not None:
            assert not isinstance(cast.fmt, BlockFormat)  # GemmSpec.out: element formats only
            values = quantize(raw, cast.fmt, cast.rounding, overflow=cast.overflow)
        if todo.size == 0:
            return values, events(None)
    else:
        values = np.empty(shape, np.float64)
        todo = np.arange(values.size, dtype=np.int64)
    exact, counted = cpu_exact.run(a3, b3, acc, cast, seed, count_on, todo, c)
    values.reshape(-1)[todo] = exact
    return values, counted


def _with_counts(result: np.ndarray, events: dict[str, int], counts: bool):
    return (result, events) if counts else result


# ---- public API ----------------------------------------------------------------------------------
def sum(x, acc: AccumSpec | Format | str, axis: int | None = -1, *, seed: int = 0,
        counts: bool = False, route: str = "auto"):
    """Sum `x` along `axis` in the accumulator `acc` (terms taken exactly, or rounded to
    acc.product).

    Args:
        x: NumPy float32/float64 array (at least 1-D, or any with axis=None).
        acc: an AccumSpec, or a format (rne, sequential).
        axis: the axis summed over (any integer); None sums every element, in C order, into
            one result (as np.sum with axis=None).
        seed: 0..2^64-1, the key of the random stream (sr only).
        counts: also return the event counts (docs/accumulation.md, "Event counts").
        route: which kernels compute it, one of ROUTES ("auto"; a sum has no fast route).

    Returns:
        An array of x's shape without `axis` (a 0-d array for 1-D x); with counts=True the pair
        (array, {"overflow": n, "underflow": n, "saturation": n}) summed over all outputs.
    """
    x = check_array(x, "x")
    acc = AccumSpec.of(acc, "acc")
    seed = check_seed(seed)
    route = _check_route(route)
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
    values, counted = _run(a3, None, acc, None, seed, counts, route=route)
    dtype = result_dtype(result_format(acc, None), [x.dtype])
    return _with_counts(values.reshape(out_shape).astype(dtype), counted, counts)


def dot(x, y, acc: AccumSpec | Format | str, c=None, *, seed: int = 0, counts: bool = False,
        route: str = "auto"):
    """The dot product of two 1-D arrays, products exact (or rounded to acc.product).

    Args:
        x, y: 1-D NumPy float32/float64 arrays of one length.
        acc: an AccumSpec, or a format (rne, sequential).
        c: None, or the initial value C, a float32/float64 array of shape (): the result is
            x·y + C, with C entering as acc declares (docs/accumulation.md, "The initial
            value C").
        seed, counts: as in `sum`.
        route: which kernels compute it, one of ROUTES (as in `matmul`).

    Returns:
        A 0-d array; with counts=True the pair (array, counts dict) as in `sum`.
    """
    x = check_array(x, "x")
    y = check_array(y, "y")
    acc = AccumSpec.of(acc, "acc")
    seed = check_seed(seed)
    route = _check_route(route)
    if x.ndim != 1 or y.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"dot needs two 1-D arrays of the same length; got x of shape {x.shape} "
                         f"and y of shape {y.shape}")
    _check_products(x, y, "x", "y")
    c_bits = None if c is None else initial_values(c, ())
    values, counted = _run(x.reshape(1, 1, -1), y.reshape(1, 1, -1), acc, None, seed, counts,
                           c_bits, route)
    dtypes = [x.dtype, y.dtype] + ([] if c is None else [c.dtype])
    dtype = result_dtype(result_format(acc, None), dtypes)
    return _with_counts(values.reshape(()).astype(dtype), counted, counts)


def matmul(a, b, spec: GemmSpec, c=None, *, seed: int = 0, counts: bool = False,
           route: str = "auto"):
    """a @ b (+ C) as GemmSpec declares: Cast a and b, exact products, accumulate, Cast the result.

    Args:
        a: (..., M, K) NumPy float32/float64 array.
        b: (..., K, N) array; batch dimensions broadcast as in np.matmul (2-D and batched).
        spec: a GemmSpec.
        c: None, or the initial accumulator C: a float32/float64 array that broadcasts to the
            output shape (..., M, N); D = A·B + C with C entering the accumulation as spec.acc
            declares (docs/accumulation.md, "The initial value C"), taken exactly (not cast).
        seed: 0..2^64-1; a's Cast uses seed, b's Cast seed + 1, the accumulation seed.
            spec.transform (docs/transforms.md) first transforms a along its last axis and b
            along its second-to-last (K must be a multiple of its block).
        counts: also return the accumulator's event counts (as in `sum`).
        route: which kernels compute it, one of ROUTES: "auto" (default), "exact" (the exact
            core alone) or "fast" (a ValueError when no fast route applies); the bits are the
            same on every route. On CUDA arrays the routes are refsim.backends.cuda_tile's
            (docs/cuda.md).

    Returns:
        An array of shape (..., M, N); with counts=True the pair (array, counts dict).
    """
    route = _check_route(route)
    if cuda.is_device_array(a) or cuda.is_device_array(b):  # on the GPU: refsim.backends.cuda
        return cuda.matmul(a, b, spec, c, seed=seed, counts=counts, route=route)
    a = check_array(a, "a")
    b = check_array(b, "b")
    if not isinstance(spec, GemmSpec):
        raise TypeError(f"spec must be a GemmSpec; got {type(spec).__name__}")
    seed = check_seed(seed)
    batch = batch_shape(a.shape, b.shape)
    c_bits = None if c is None else initial_values(c, (*batch, a.shape[-2], b.shape[-1]))
    if spec.transform is not None:  # along K on both operands, before their Casts
        a = spec.transform.apply(a, axis=-1)
        b = spec.transform.apply(b, axis=-2)
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
    values, counted = _run(a3, b3, spec.acc, spec.out, seed, counts, c_bits, route)
    dtypes = [a.dtype, b.dtype] + ([] if c is None else [c.dtype])
    dtype = result_dtype(result_format(spec.acc, spec.out), dtypes)
    return _with_counts(values.reshape(*batch, m, n).astype(dtype), counted, counts)



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
    if spec.transform is not None:
        raise ValueError(f"conv2d: GemmSpec.transform ({spec.transform}) is not supported: the "
                         "transform acts on im2col rows, where an input element appears many "
                         "times; call matmul on the im2col matrix (docs/accumulation.md, "
                         "'conv2d') with the transform instead")
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
    for key in ("a", "b"):  # 2-D tiles run over the last two axes, not the channels
        fmt = getattr(spec, key).fmt if getattr(spec, key) is not None else None
        if isinstance(fmt, BlockFormat) and fmt.block_rows > 1:
            raise ValueError(f"conv2d: spec.{key} is {fmt.name}, a format of 2-D tiles "
                             f"({fmt.block_rows}x{fmt.block_size}); conv2d blocks its operands "
                             "along the channels (axis 1): use a 1-D block format there")
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
