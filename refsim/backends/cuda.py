"""CUDA kernels (numba.cuda) for quantize and matmul, around the scalar cores shared with the CPU.

Usage rules:
  - Reached through refsim.quantize / refsim.matmul when an argument is a CUDA device array (a
    numba DeviceNDArray, or any object with __cuda_array_interface__ that is not a NumPy array);
    the result is a numba device array. numba.cuda is imported on first use only, so importing
    refsim never needs CUDA. Device arrays must be C-contiguous.
  - Bits: every element is rounded by the same functions as on the CPU (kernels.core.quantize_bits,
    kernels.accum_core), and element i's random words are the same stream words (kernels.rng), so
    CUDA results equal CPU results bit for bit, whatever the grid.
  - Tested in CI under the Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1); the real kernels are
    compiled to PTX where a CUDA toolkit is present. Bit-exactness on a GPU is claimed only from
    a run of scripts/gpu_check.sh (docs/cuda.md).

Kernels:
  - quantize: one thread per element (per Philox block of 4 elements for sr), grid-stride loop.
  - matmul: one kernel per order, one thread per output element, grid-stride loop; each output
    calls accum_core.order_<order> and accum_core.cast_output, as the CPU kernel does.

Real-target workarounds (registered for the "cuda" target only, never for the CPU or the
simulator; see _register_cuda_overloads):
  - min(int, int), max(int, int): the built-in numba.cuda target of Numba 0.68 cannot compile
    the *args implementations of the builtin min/max overloads (accum_core's chunked and
    multiterm orders call them).
  - kernels.rng.mulhilo64: the generic overload (32-bit halves) compiles for CUDA and is correct;
    the CUDA overload here uses umul64hi (mul.hi.u64) for the high word instead.
  - accum_core.reduce_pairwise allocates its stack with np.empty, which numba.cuda cannot compile
    (no heap): the pairwise kernel calls _order_pairwise, the same steps with thread-local
    arrays, and the chunked kernel _order_chunked (chunk_order='pairwise' needs the stack). They
    go away once accum_core allocates that stack in a target-neutral way (docs/cuda.md). Every
    other order calls accum_core.order_<order> itself.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from numba.core import config

from refsim.backends import cuda_tile
from refsim.backends.kernel_args import (
    batch_shape,
    check_products,
    events,
    exact_args,
    initial_values,
    result_dtype,
    result_format,
)
from refsim.formats.block_format import BlockFormat
from refsim.formats.policy import (
    check_rbits_array,
    check_rbits_request,
    check_seed,
    check_sr_variant,
)
from refsim.kernels import accum_core as ac
from refsim.kernels import core
from refsim.kernels.rng import block_word, stream_block
from refsim.params import CARRIERS, check_out, kernel_sr_bits, resolve
from refsim.specs import GemmSpec

__all__ = ["is_device_array", "last_route", "matmul", "quantize"]

THREADS = 256  # threads per block
MAX_BLOCKS = 4096  # grid-stride loops cover the rest


def is_device_array(x: object) -> bool:
    """Is x a CUDA device array (numba's, simulator's, or any __cuda_array_interface__ object)?"""
    if isinstance(x, np.ndarray):
        return False
    return bool(getattr(x, "__cuda_ndarray__", False)) or hasattr(x, "__cuda_array_interface__")


# ---- lazy set-up -------------------------------------------------------------------------------
# numba.cuda once imported. The kernels read it as this module global: the simulator swaps the
# module globals that are numba.cuda for its fake module while a kernel runs.
cuda: Any = None  # Any: numba.cuda (or the simulator's module) once _cuda() ran


@functools.cache
def _cuda():
    """numba.cuda, imported on first use (with the real target's overloads registered)."""
    global cuda
    from numba import cuda as numba_cuda

    if not config.ENABLE_CUDASIM:
        _register_cuda_overloads(numba_cuda)
    cuda = numba_cuda
    return numba_cuda


def _register_cuda_overloads(numba_cuda) -> None:
    from numba.core import types
    from numba.extending import overload

    from refsim.kernels import rng

    # The builtin min/max overloads have *args implementations, which the built-in numba.cuda
    # target of Numba 0.68 cannot compile (TypeError "Signature mismatch"); integers only here.
    @overload(min, target="cuda")
    def _min_int(a, b):
        if isinstance(a, types.Integer) and isinstance(b, types.Integer):
            def impl(a, b):
                return a if a < b else b
            return impl
        return None

    @overload(max, target="cuda")
    def _max_int(a, b):
        if isinstance(a, types.Integer) and isinstance(b, types.Integer):
            def impl(a, b):
                return a if a > b else b
            return impl
        return None

    @overload(rng.mulhilo64, target="cuda")
    def _mulhilo64_cuda(a, b):
        def impl(a, b):
            a = np.uint64(a)
            b = np.uint64(b)
            return np.uint64(numba_cuda.libdevice.umul64hi(a, b)), a * b
        return impl


def _grid(work: int) -> tuple[int, int]:
    """(blocks, threads) for `work` items of a grid-stride loop (small grids for small work)."""
    threads = THREADS if work >= THREADS else 32 * ((work + 31) // 32)
    return min((work + threads - 1) // threads, MAX_BLOCKS), threads


# ---- kernels -----------------------------------------------------------------------------------
@functools.cache
def _quantize_kernels(c_man: int, c_bias: int):
    """(per-element kernel, per-Philox-block SR kernel, SR kernel with caller-given random bits)
    for one carrier (constants folded)."""
    _cuda()
    zero = np.uint64(0)

    @cuda.jit
    def quantize_elements(src, dst, params, mode, overflow, sr_bits, seed):
        """dst[i] = round(src[i]) in a mode that draws no random word."""
        for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
            dst[i] = core.quantize_bits(np.uint64(src[i]), c_man, c_bias, params, mode, overflow,
                                        sr_bits, zero, seed, np.int64(i))

    @cuda.jit
    def quantize_sr(src, dst, params, mode, overflow, sr_bits, seed):
        """sr: thread t rounds elements 8t .. 8t+7 with the words of Philox block t (rng)."""
        size = src.size
        for block in range(cuda.grid(1), (size + 7) // 8, cuda.gridsize(1)):
            w0, w1, w2, w3 = stream_block(seed, block, 0)
            base = 8 * block
            for lane in range(8):
                i = base + lane
                if i < size:
                    # np.uint64: the simulator returns the words as Python ints.
                    word = block_word(np.uint64(w0), np.uint64(w1), np.uint64(w2),
                                      np.uint64(w3), np.uint64(i)) << np.uint64(32)
                    dst[i] = core.quantize_bits(np.uint64(src[i]), c_man, c_bias, params, mode,
                                                overflow, sr_bits, word, seed, np.int64(i))

    @cuda.jit
    def quantize_given(src, dst, params, mode, overflow, sr_bits, seed, rbits, mask, shift):
        """sr with caller-given bits: element i's word is (rbits[i] & mask) << shift, R in the
        top sr_bits bits (refsim.backends.cpu.given_word); index -1: nothing drawn."""
        for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
            word = (np.uint64(rbits[i]) & mask) << shift
            dst[i] = core.quantize_bits(np.uint64(src[i]), c_man, c_bias, params, mode, overflow,
                                        sr_bits, word, seed, np.int64(-1))

    return quantize_elements, quantize_sr, quantize_given


def _order_function(order: str):
    """The per-output function of `order` (accum_core.order_*, the CPU kernel's), except
    pairwise: accum_core.reduce_pairwise allocates its stack with np.empty, which numba.cuda cannot
    compile; _order_pairwise gives accum_core.pairwise_tree thread-local arrays instead."""
    if order == "pairwise":
        return _pairwise_function()
    if order == "chunked":  # chunk_order='pairwise' needs the stack too
        return _chunked_function()
    return getattr(ac, "order_" + order)


@functools.cache
def _chunked_function():
    _cuda()
    stack = ac.PAIRWISE_STACK

    @cuda.jit(device=True)
    def _order_chunked(a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec, prod_on, pspec,
                       mt, seed, index):
        """accum_core.order_chunked with the pairwise chunks' stack in thread-local arrays."""
        if mt[ac.MT_CHUNK_PAIRWISE] != 0:
            return ac.chunked_pairwise(cuda.local.array(stack, np.int64),
                                       cuda.local.array(stack, np.bool_),
                                       cuda.local.array(stack, np.uint64),
                                       cuda.local.array(stack, np.int64),
                                       cuda.local.array(stack, np.int64), a, b, has_b, p, m, n,
                                       a.shape[2], chunk, has_c, cbits, mt[ac.MT_C_OUTER] != 0,
                                       spec, ospec, prod_on, pspec, seed, index)
        return ac.reduce_chunked(a, b, has_b, p, m, n, a.shape[2], chunk, has_c, cbits,
                                 mt[ac.MT_C_OUTER] != 0, spec, ospec, prod_on, pspec, seed, index)

    return _order_chunked


@functools.cache
def _pairwise_function():
    _cuda()
    stack = ac.PAIRWISE_STACK

    @cuda.jit(device=True)
    def _order_pairwise(a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec, prod_on, pspec,
                        mt, seed, index):
        """accum_core.order_pairwise (reduce_pairwise) with its stack in thread-local arrays."""
        return ac.pairwise_with_c(cuda.local.array(stack, np.int64),
                                  cuda.local.array(stack, np.bool_),
                                  cuda.local.array(stack, np.uint64),
                                  cuda.local.array(stack, np.int64),
                                  cuda.local.array(stack, np.int64), a, b, has_b, p, m, n,
                                  a.shape[2], has_c, cbits, spec, prod_on, pspec, seed, index)

    return _order_pairwise


@functools.cache
def _matmul_kernel(order: str):
    """The kernel of one order: refsim.backends.cpu_exact's, one thread per output."""
    _cuda()
    order_fn = _order_function(order)
    operand = cuda_tile.operand_function()

    @cuda.jit
    def kernel(a, b, has_b, c, has_c, raw, has_raw, out, counts, count_on, chunk, spec, ospec,
               prod_on, pspec, cast_on, cspec, mt, seed):
        """out[flat] = the reduced, cast value of output (p, m, n), from the initial value c[flat]
        (float64 bits) when has_c; counts[flat] its events when count_on. has_raw: raw[flat]
        (float64 bits) is a fast route's reduced value, final unless it is a NaN (redone here)."""
        a = operand(a)
        b = operand(b)
        c = operand(c)
        n_cols = b.shape[1] if has_b else 1
        per_batch = a.shape[1] * n_cols
        for flat in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            p = flat // per_batch
            rest = flat - p * per_batch
            m = rest // n_cols
            n = rest - m * n_cols
            index = np.int64(flat)
            if has_raw:
                bits = np.uint64(raw[flat])
                # A route's value is finite or a NaN it left to the exact core (cuda_tile).
                if bits & np.uint64(0x7FF0000000000000) != np.uint64(0x7FF0000000000000):
                    out[flat] = ac.cast_output(bits, cast_on, cspec, seed, index)
                    continue
            cbits = np.uint64(c[flat]) if has_c else np.uint64(0)
            bits, cnt = order_fn(a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec, prod_on,
                                 pspec, mt, seed, index)
            # np.uint64: a no-op on the GPU; the simulator returns the bits as a Python int.
            out[flat] = ac.cast_output(np.uint64(bits), cast_on, cspec, seed, index)
            if count_on:
                counts[flat, 0] = cnt[0]
                counts[flat, 1] = cnt[1]
                counts[flat, 2] = cnt[2]

    return kernel


@functools.cache
def _helper_kernels():
    """(widen, narrow): layout and dtype conversions on the device."""
    _cuda()

    @cuda.jit
    def widen(src, dst, rows, cols, transpose):
        """dst = float64(src) (exact), each (rows, cols) matrix transposed when asked."""
        per = rows * cols
        for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
            j = i
            if transpose:
                p = i // per
                rest = i - p * per
                r = rest // cols
                c = rest - r * cols
                j = p * per + c * rows + r
            dst[j] = np.float64(src[i])

    @cuda.jit
    def narrow(src, dst):
        """dst = float32(src); every value is exact in float32 (the result format fits)."""
        for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
            dst[i] = np.float32(src[i])

    return widen, narrow


# ---- host side ---------------------------------------------------------------------------------
def _as_device(x, name: str, numba_cuda):
    """x as a numba device array: device arrays as they are, NumPy arrays copied over."""
    if isinstance(x, np.ndarray):
        return numba_cuda.to_device(np.ascontiguousarray(x))
    if not getattr(x, "__cuda_ndarray__", False):
        if not hasattr(x, "__cuda_array_interface__"):
            raise TypeError(f"{name} must be a CUDA device array or a NumPy array; got "
                            f"{type(x).__name__}")
        x = numba_cuda.as_cuda_array(x)
    if np.dtype(x.dtype) not in CARRIERS:
        raise TypeError(f"{name} must have dtype float32 or float64; got {x.dtype} (nothing is "
                        "cast implicitly)")
    if x.size and not x.is_c_contiguous():
        raise ValueError(f"{name} must be a C-contiguous device array (copy it first)")
    return x


def _rbits_device(rbits, x, sr_bits: int, numba_cuda):
    """rbits (a NumPy array, copied over, or a C-contiguous device array) checked against x
    (refsim.formats.policy.check_rbits_array), as a flat device array."""
    if isinstance(rbits, np.ndarray):
        check_rbits_array(rbits.dtype, rbits.shape, tuple(x.shape), sr_bits)
        rbits = numba_cuda.to_device(np.ascontiguousarray(rbits))
    elif is_device_array(rbits):
        if not getattr(rbits, "__cuda_ndarray__", False):
            rbits = numba_cuda.as_cuda_array(rbits)
        check_rbits_array(np.dtype(rbits.dtype), tuple(rbits.shape), tuple(x.shape), sr_bits,
                          kind="CUDA device")
        if rbits.size and not rbits.is_c_contiguous():
            raise ValueError("rbits must be a C-contiguous device array (copy it first)")
    else:
        raise TypeError(f"rbits must be a CUDA device array or a NumPy array for a device x; "
                        f"got {type(rbits).__name__}")
    return rbits.reshape(rbits.size)


def quantize(x, fmt, rounding: str = "rne", *, overflow: str = "default",
             sr_bits: int | None = None, seed: int | None = None, rbits=None, out=None,
             sr_variant: str = "floor"):
    """refsim.quantize for a CUDA device array x: the same arguments and bits; returns a device
    array (out, if given: a C-contiguous device array of x's shape and dtype, may be x).
    rbits: a device array or a NumPy array (copied over), as refsim.quantize's."""
    cuda = _cuda()
    x = _as_device(x, "x", cuda)
    dtype = np.dtype(x.dtype)
    if rbits is not None:
        sr_bits = check_rbits_request(rounding, sr_bits, seed)
        rbits = _rbits_device(rbits, x, sr_bits, cuda)
    _, params, mode, ovf, bits, seed_value = resolve(fmt, dtype, rounding, overflow, sr_bits,
                                                     0 if seed is None else seed)
    variant = check_sr_variant(sr_variant, rounding, sr_bits)
    if out is None:
        out = cuda.device_array(x.shape, dtype)
    else:
        out = check_out(_as_device(out, "out", cuda), x, kind="device array")
    if x.size == 0:
        return out
    c_man, c_bias, utype = CARRIERS[dtype]
    src = x.reshape(x.size).view(utype)
    dst = out.reshape(x.size).view(utype)
    elements, sr, given = _quantize_kernels(c_man, c_bias)
    args = (src, dst, params, mode, ovf, kernel_sr_bits(bits, variant), np.uint64(seed_value))
    if rbits is not None:
        blocks, threads = _grid(x.size)
        given[blocks, threads](*args, rbits, np.uint64((1 << bits) - 1),
                               np.uint64(64 - bits))
    elif mode == core.SR:
        blocks, threads = _grid((x.size + 7) // 8)
        sr[blocks, threads](*args)
    else:
        blocks, threads = _grid(x.size)
        elements[blocks, threads](*args)
    return out


def last_route() -> str:
    """The route of the latest CUDA matmul in this process: one of cuda_tile.ROUTES, or "exact"
    (the exact core computed every output); "" before the first."""
    return _LAST_ROUTE[0]


_LAST_ROUTE = [""]


def matmul(a, b, spec, c=None, *, seed: int = 0, counts: bool = False, route: str = "auto"):
    """refsim.matmul with a CUDA device array among a and b: the same arguments, bits and counts
    (a NumPy operand is copied to the device); returns a device array (and the counts dict with
    counts=True). Batch dimensions must be equal (no broadcasting on CUDA yet). c, the initial
    accumulator, may be a NumPy or a device array; it is broadcast on the host. route: "auto"
    (a fast route of refsim.backends.cuda_tile where one applies, the exact core for the rest),
    "exact" (the exact core alone) or "fast" (a ValueError when no fast route applies)."""
    if route not in ("auto", "exact", "fast"):
        raise ValueError(f"route must be one of auto, exact, fast; got {route!r}")
    cuda = _cuda()
    a = _as_device(a, "a", cuda)
    b = _as_device(b, "b", cuda)
    if not isinstance(spec, GemmSpec):
        raise TypeError(f"spec must be a GemmSpec; got {type(spec).__name__}")
    seed = check_seed(seed)
    a_shape, b_shape = tuple(a.shape), tuple(b.shape)
    batch_shape(a_shape, b_shape)
    if a_shape[:-2] != b_shape[:-2]:
        raise NotImplementedError(f"matmul on CUDA needs equal batch dimensions (no broadcasting"
                                  f" yet); got a of shape {a_shape} and b of shape {b_shape}")
    if spec.acc.group_run is not None:
        raise NotImplementedError(
            f"matmul on CUDA: spec.acc.group_run ({spec.acc.group_run}, interleaved groups) runs "
            "on the CPU only (refsim.accumulate.dealt_positions): copy the arrays to the host")
    if spec.transform is not None:
        raise NotImplementedError(
            f"matmul on CUDA: spec.transform ({spec.transform}) runs on the CPU only "
            "(refsim.transforms): copy the arrays to the host")
    for name, cast in (("a", spec.a), ("b", spec.b)):
        if cast is not None and isinstance(cast.fmt, BlockFormat):
            raise NotImplementedError(
                f"matmul on CUDA: spec.{name} is the block format {cast.fmt.name}; block casts "
                "run on the CPU only (refsim.quantize_blocks): copy the arrays to the host")
    c_host = None
    if c is not None:
        c_host = c if isinstance(c, np.ndarray) else _as_device(c, "c", cuda).copy_to_host()
        c_host = initial_values(c_host, (*a_shape[:-2], a_shape[-2], b_shape[-1]))
    acc = spec.acc
    kernel = _matmul_kernel(acc.order)
    if spec.a is not None:
        a = quantize(a, spec.a.fmt, spec.a.rounding, overflow=spec.a.overflow,
                     sr_bits=spec.a.sr_bits, seed=seed)
    if spec.b is not None:
        b = quantize(b, spec.b.fmt, spec.b.rounding, overflow=spec.b.overflow,
                     sr_bits=spec.b.sr_bits, seed=(seed + 1) & ((1 << 64) - 1))
    batch = a_shape[:-2]
    m, k = a_shape[-2:]
    n = b_shape[-1]
    count = int(np.prod(batch))
    widen, narrow = _helper_kernels()
    # Operands as float64 bit patterns, a as (P, M, K) and b transposed to (P, N, K): the CPU
    # kernel's layout.
    a_bits = cuda.device_array((count, m, k), np.float64)
    b_bits = cuda.device_array((count, n, k), np.float64)
    for src, dst, rows, cols, transpose in ((a, a_bits, m, k, False), (b, b_bits, k, n, True)):
        if src.size:
            blocks, threads = _grid(src.size)
            widen[blocks, threads](src.reshape(src.size), dst.reshape(src.size), rows, cols,
                                   transpose)
    a_bits = a_bits.view(np.uint64)
    b_bits = b_bits.view(np.uint64)
    ranges = []  # refsim.backends.operands.OperandRange, on the device
    for x, x_bits in ((a, a_bits), (b, b_bits)):
        result = cuda.to_device(np.array([0, 0, 1 << 20, -(1 << 20)], np.int64))
        if x.size:
            blocks, threads = _grid(x.size)
            cuda_tile.range_kernel()[blocks, threads](x_bits.reshape(x.size), result)
        ranges.append(cuda_tile.operand_range(result.copy_to_host()))
    # kernel_args.max_significant_bits: a float32 operand counts as 24 bits
    widths = [(24 if np.dtype(x.dtype) == np.float32 else r.bits) if x.size else 0
              for x, r in zip((a, b), ranges, strict=True)]
    check_products(widths[0], widths[1])
    size = count * m * n
    c_bits = cuda.to_device(c_host if c_host is not None else np.zeros(1, np.uint64))
    fast = None
    if route != "exact":
        fast = cuda_tile.plan(acc, spec.out, counts, ranges[0], ranges[1], k, c_host)
    if fast is None and route == "fast":
        raise ValueError(f"route='fast': no CUDA fast route applies to {acc} with output Cast "
                         f"{spec.out}{' and counts' if counts else ''}"
                         f"{' and an initial value c' if c is not None else ''} on these "
                         "operands (docs/cuda.md lists the routes)")
    _LAST_ROUTE[0] = "exact" if fast is None else fast.route
    raw = c_bits  # a placeholder argument when no route ran
    if fast is not None:
        raw = cuda_tile.run(fast, a.reshape(count, m, k), b.reshape(count, k, n),
                            a_bits.view(np.float64), b_bits.view(np.float64),
                            c_bits.view(np.float64), c_host is not None, cuda).view(np.uint64)
    out_bits = cuda.device_array(size, np.uint64)
    event_counts = cuda.device_array((size if counts else 0, 3), np.int64)
    if size:
        blocks, threads = _grid(size)
        kernel[blocks, threads](a_bits, b_bits, True, c_bits, c_host is not None, raw,
                                fast is not None, out_bits, event_counts, counts,
                                *exact_args(acc, spec.out), np.uint64(seed))
    dtypes = [np.dtype(a.dtype), np.dtype(b.dtype)]
    if c is not None:
        dtypes.append(np.dtype(c.dtype))
    dtype = result_dtype(result_format(acc, spec.out), dtypes)
    values = out_bits.view(np.float64)
    if dtype == np.float32:
        narrowed = cuda.device_array(size, np.float32)
        if size:
            blocks, threads = _grid(size)
            narrow[blocks, threads](values, narrowed)
        values = narrowed
    values = values.reshape(*batch, m, n)
    if not counts:
        return values
    return values, events(event_counts.copy_to_host().sum(axis=0) if size else None)
