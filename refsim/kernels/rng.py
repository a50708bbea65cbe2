"""Counter-based random stream for stochastic rounding: Philox4x64-10, bit-identical to NumPy.

Stream definition
-----------------
The element at flat (C-order) index ``i >= 0`` under seed ``s`` (an unsigned 64-bit integer)
takes the 32-bit words ``H_0, H_1, ...`` where

    B_j = philox4x64_10(counter=(i // 8 + 1, j, 0, 0), key=(s, 0))      (four 64-bit words)
    H_j = bits 32*(i % 2) .. 32*(i % 2) + 31 of B_j[(i // 2) % 4]

i.e. one Philox4x64-10 block, read as eight little-endian 32-bit words, serves eight consecutive
elements.  This is exactly

    np.random.Philox(key=s, counter=(i // 8) + (j << 64)).random_raw(4)[(i // 2) % 4]
        >> (32 * (i % 2)) & 0xFFFFFFFF

because ``numpy.random.Philox`` increments its 256-bit counter *before* it computes each block
(the first block of ``Philox(key=k, counter=c)`` is the raw function at counter ``c + 1``), and
it splits integer keys/counters into little-endian 64-bit words.  In particular ``H_0`` of
elements ``0..n-1`` is ``np.random.Philox(key=s).random_raw((n + 1) // 2)`` split into 32-bit
halves, low half first (``.astype("<u8").view("<u4")[:n]``).

Why 32-bit words: a rounding reads ``H_0`` and, only while the random bits tie the discarded
fraction's bits (probability ``2^-32`` per word), further words; 32 bits cover every hardware
form (PTX ``cvt.rs`` takes 32-bit ``rbits``).  Half a 64-bit word per element halves the cost of
the generator, which bounds stochastic rounding (docs/rng.md).

Why counter-based
-----------------
Each element's bits are a pure function of ``(seed, flat index, j)``, so the result is the same
whatever the number of threads, the chunking of a parallel loop, the order of evaluation, the
memory layout of the input or the device (CPU or GPU).  A sequential generator would tie the
bits to the traversal order.

Implementation notes
--------------------
All functions are ``@numba.njit`` functions on ``uint64`` scalars only: no NumPy calls, only
homogeneous ``UniTuple(uint64, n)`` returns, explicit ``np.uint64`` casts of every argument and
``np.uint64`` constants (Numba types ``uint64 <op> int64`` as ``float64`` and ``uint64 <op>
literal`` as ``int64``, which would silently lose bits).  The same source is compiled for the
``numba.cuda`` kernels of refsim.backends.cuda as well.

The 64x64 -> 128-bit multiply is :func:`mulhilo64`, a function with two Numba implementations
chosen by compilation target:

* ``cpu``: one LLVM ``i128`` multiply, which x86-64 lowers to a single ``mul``/``mulx`` giving
  both halves.  The generator is then about 1.7x faster than with the portable form below
  (1.8 vs 3.1 ns per word on one Xeon core), which LLVM turns into one ``mulx`` for the high
  half plus a separate ``imul`` for the low half.
* every other target (``generic``): :func:`mulhilo64_portable`, schoolbook multiplication from
  32-bit halves.  On a real GPU, refsim.backends.cuda registers a CUDA-specific overload
  (``@overload(mulhilo64, target="cuda")``) that uses ``umul64hi`` (``__umul64hi``) for the
  high word instead.

Both are tested against Python integers.

Block fills (CPU only): :func:`fill_blocks` writes consecutive blocks into an array, two
interleaved per loop step with the round keys precomputed (:func:`round_keys`);
:func:`fill_blocks_x8` computes sixteen blocks per call (:func:`philox_x16`: two groups of
eight lanes interleaved round by round, so that one group's chain of dependent multiplies
overlaps the other's) in 8-lane integer vectors (LLVM IR), the 64x64-bit high products from
four 32x32->64 multiplies each (x86 ``vpmuludq``).  With AVX-512 that is one register per state
word, and the vector form beats the scalar ``mulx`` chain: 1.45 against 3.0-3.7 ns per 64-bit
word (0.73 ns per 32-bit word) on one core of an AMD EPYC (znver4) VM, where it is bound by
vector throughput (about 300 instructions per eight blocks).  :data:`fill_blocks_fast` is the
vector form where the target has AVX-512, else the scalar one; the words are the same.
"""

from __future__ import annotations

from typing import TypedDict

import numba
import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import types
from numba.extending import intrinsic, overload

__all__ = [
    "VECTOR_BLOCKS",
    "block_word",
    "family_word",
    "fill_blocks",
    "fill_blocks_fast",
    "fill_blocks_x8",
    "mulhilo64",
    "mulhilo64_portable",
    "philox4x64_10",
    "philox_x8",
    "philox_x8_wrap",
    "philox_x16",
    "philox_x16_wrap",
    "random_words",
    "raw_words",
    "round_keys",
    "stream_block",
    "stream_word",
    "target_features",
]

# Philox4x64 constants (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
PHILOX_M0 = np.uint64(0xD2E7470EE14C6C93)  # round multipliers
PHILOX_M1 = np.uint64(0xCA5A826395121157)
PHILOX_W0 = np.uint64(0x9E3779B97F4A7C15)  # key schedule (Weyl) increments
PHILOX_W1 = np.uint64(0xBB67AE8584CAA73B)

_ZERO = np.uint64(0)
_ONE = np.uint64(1)
_TWO = np.uint64(2)
_THREE = np.uint64(3)
_SHIFT32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
_MASK64 = (1 << 64) - 1


class _JitOptions(TypedDict):  # so that njit(**_JIT) type-checks against njit's options
    cache: bool


# No ``inline="always"`` (Numba IR inlining): measured on a Xeon with LLVM 22, LLVM inlines these
# small functions into their callers anyway and the generator runs at the same speed, while IR
# inlining doubles the compile time and, for ``mulhilo64_portable``, reshapes the code so that
# LLVM no longer recognises the 32-bit-halves ladder as one multiply (3x slower).
_JIT: _JitOptions = {"cache": True}


# --------------------------------------------------------------------------------------------
# 64 x 64 -> 128-bit multiply
# --------------------------------------------------------------------------------------------


def _mulhilo64_halves(a, b):
    # Schoolbook high word from 32-bit halves: every partial product fits in 64 bits and ``mid``
    # in 34 bits, so nothing overflows.  The low word is the plain wrapping product: a native
    # instruction on CUDA (mul.lo.u64), and on x86 LLVM then folds the high-word ladder into
    # one ``mulx`` (deriving ``lo`` from ``mid`` instead blocks that fold: 4 ``imul`` per call).
    a = np.uint64(a)
    b = np.uint64(b)
    a_lo = a & _LOW32
    a_hi = a >> _SHIFT32
    b_lo = b & _LOW32
    b_hi = b >> _SHIFT32
    p_ll = a_lo * b_lo
    p_lh = a_lo * b_hi
    p_hl = a_hi * b_lo
    p_hh = a_hi * b_hi
    mid = (p_ll >> _SHIFT32) + (p_lh & _LOW32) + (p_hl & _LOW32)
    hi = p_hh + (p_lh >> _SHIFT32) + (p_hl >> _SHIFT32) + (mid >> _SHIFT32)
    return hi, a * b


mulhilo64_portable = numba.njit(**_JIT)(_mulhilo64_halves)
mulhilo64_portable.__doc__ = """(high, low) 64-bit words of ``a * b`` from 32-bit halves.

Target-independent (no 128-bit type needed); the implementation of :func:`mulhilo64` on every
target except ``cpu`` and ``cuda`` (where refsim.backends.cuda uses ``umul64hi``
(``__umul64hi``) plus a plain ``a * b``).
"""


@intrinsic
def _mulhilo64_i128(typingctx, a, b):
    if a != types.uint64 or b != types.uint64:
        return None
    sig = types.UniTuple(types.uint64, 2)(types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        i128 = ir.IntType(128)
        prod = builder.mul(builder.zext(args[0], i128), builder.zext(args[1], i128))
        hi = builder.trunc(builder.lshr(prod, ir.Constant(i128, 64)), i64)
        lo = builder.trunc(prod, i64)
        return context.make_tuple(builder, signature.return_type, (hi, lo))

    return sig, codegen


def mulhilo64(a, b):
    """(high, low) 64-bit words of the 128-bit product ``a * b`` of two uint64 values.

    In Python this is evaluated with Python integers; in Numba code it resolves per target (see
    the module docstring).
    """
    prod = (int(a) & _MASK64) * (int(b) & _MASK64)
    return np.uint64(prod >> 64), np.uint64(prod & _MASK64)


@overload(mulhilo64)
def _mulhilo64_generic(a, b):
    return _mulhilo64_halves


@overload(mulhilo64, target="cpu")
def _mulhilo64_cpu(a, b):
    def impl(a, b):
        return _mulhilo64_i128(np.uint64(a), np.uint64(b))

    return impl


# --------------------------------------------------------------------------------------------
# Philox4x64-10
# --------------------------------------------------------------------------------------------


@numba.njit(**_JIT)
def _philox_round(c0, c1, c2, c3, k0, k1):
    hi0, lo0 = mulhilo64(PHILOX_M0, c0)
    hi1, lo1 = mulhilo64(PHILOX_M1, c2)
    return hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0


@numba.njit(**_JIT)
def philox4x64_10(c0, c1, c2, c3, k0, k1):
    """Raw Philox4x64-10 block of counter ``(c0, c1, c2, c3)`` under key ``(k0, k1)``.

    Returns the four output words as a ``UniTuple(uint64, 4)``.  No counter increment here:
    NumPy's first block for ``Philox(counter=c)`` is ``philox4x64_10(c + 1)``.
    """
    c0 = np.uint64(c0)
    c1 = np.uint64(c1)
    c2 = np.uint64(c2)
    c3 = np.uint64(c3)
    k0 = np.uint64(k0)
    k1 = np.uint64(k1)
    # Ten rounds, unrolled by hand (portable to targets that do not unroll); the key is bumped
    # by the Weyl constants between rounds.
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, k0, k1)
    k0 += PHILOX_W0
    k1 += PHILOX_W1
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, k0, k1)
    k0 += PHILOX_W0
    k1 += PHILOX_W1
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, k0, k1)
    k0 += PHILOX_W0
    k1 += PHILOX_W1
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, k0, k1)
    k0 += PHILOX_W0
    k1 += PHILOX_W1
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, k0, k1)
    k0 += PHILOX_W0
    k1 += PHILOX_W1
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, k0, k1)
    k0 += PHILOX_W0
    k1 += PHILOX_W1
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, k0, k1)
    k0 += PHILOX_W0
    k1 += PHILOX_W1
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, k0, k1)
    k0 += PHILOX_W0
    k1 += PHILOX_W1
    c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, k0, k1)
    k0 += PHILOX_W0
    k1 += PHILOX_W1
    return _philox_round(c0, c1, c2, c3, k0, k1)


@numba.njit(**_JIT)
def round_keys(k0, k1):
    """The ten round keys of key ``(k0, k1)``: a uint64 array ``[k0_0, k1_0, ..., k0_9, k1_9]``.

    For :func:`fill_blocks`, which reads them instead of recomputing the key schedule per block.
    """
    keys = np.empty(20, np.uint64)
    k0 = np.uint64(k0)
    k1 = np.uint64(k1)
    for r in range(10):
        keys[2 * r] = k0
        keys[2 * r + 1] = k1
        k0 += PHILOX_W0
        k1 += PHILOX_W1
    return keys


@numba.njit(**_JIT)
def _philox_pair(a0, b0, c1, c2, c3, keys):
    """Blocks ``(a0, c1, c2, c3)`` and ``(b0, c1, c2, c3)`` under the round keys ``keys``.

    Two independent blocks in one body: their multiply chains interleave (the out-of-order
    window does not reach far enough into the next block on its own). Measured 10-25% faster per
    word than one block per call on an AMD EPYC (znver4) VM.
    """
    a1, a2, a3 = c1, c2, c3
    b1, b2, b3 = c1, c2, c3
    for r in range(10):
        k0 = keys[2 * r]
        k1 = keys[2 * r + 1]
        ha, la = mulhilo64(PHILOX_M0, a0)
        hb, lb = mulhilo64(PHILOX_M0, b0)
        ga, ma = mulhilo64(PHILOX_M1, a2)
        gb, mb = mulhilo64(PHILOX_M1, b2)
        a0, a1, a2, a3 = ga ^ a1 ^ k0, ma, ha ^ a3 ^ k1, la
        b0, b1, b2, b3 = gb ^ b1 ^ k0, mb, hb ^ b3 ^ k1, lb
    return a0, a1, a2, a3, b0, b1, b2, b3


@numba.njit(**_JIT)
def fill_blocks(out, start, first, count, c1, c2, c3, keys):
    """The blocks at counters ``(first + b, c1, c2, c3)``, ``b`` in ``0 .. count - 1``, under the
    round keys ``keys`` (:func:`round_keys`), written consecutively into ``out`` from ``start``.

    Raw counters, as :func:`philox4x64_10`: the stream's element block ``i`` is counter word 0
    ``i + 1``. ``out``: uint64 (four 64-bit words per block: ``out[start + 4*b + l]`` is word
    ``l``) or uint32 (the stream's eight 32-bit words per block, each 64-bit word's low half
    first: ``out[start + 8*b + 2*l + h]``), with room for ``count`` blocks from ``start``.
    """
    halves = out.itemsize == 4
    per = 8 if halves else 4
    first = np.uint64(first)
    c1 = np.uint64(c1)
    c2 = np.uint64(c2)
    c3 = np.uint64(c3)
    pos = np.int64(start)
    b = np.uint64(0)
    count = np.uint64(count)
    while b < count:
        c0 = first + b
        w = _philox_pair(c0, c0 + (_ONE if b + _ONE < count else _ZERO), c1, c2, c3, keys)
        blocks = 2 if b + _ONE < count else 1
        for t in range(4 * blocks):
            if halves:
                out[pos + 2 * t] = w[t] & _LOW32
                out[pos + 2 * t + 1] = w[t] >> _SHIFT32
            else:
                out[pos + t] = w[t]
        pos += per * blocks
        b += np.uint64(blocks)


def _mulhi_lanes(builder, x, m):
    """High words of x * m for a vector x of i64 lanes and a constant m, from 32-bit halves:
    four 32x32->64 multiplies per lane (x86: vpmuludq). With x = xh 2^32 + xl, m likewise:
    t = xl*mh + (xl*ml >> 32) and u = xh*ml + (t mod 2^32) stay below 2^64, and the high word is
    xh*mh + (t >> 32) + (u >> 32)."""
    vt = x.type
    n = vt.count

    def const(v):
        return ir.Constant(vt, [v] * n)

    low, shift = const(0xFFFFFFFF), const(32)
    xl, xh = builder.and_(x, low), builder.lshr(x, shift)
    ml, mh = const(int(m) & 0xFFFFFFFF), const(int(m) >> 32)
    t = builder.add(builder.mul(xl, mh), builder.lshr(builder.mul(xl, ml), shift))
    u = builder.add(builder.mul(xh, ml), builder.and_(t, low))
    return builder.add(builder.add(builder.mul(xh, mh), builder.lshr(t, shift)),
                       builder.lshr(u, shift))


def _mulhilo_scalar(builder, x, m):
    """(high, low) i64 words of the i64 scalar x times the constant m (one 128-bit multiply)."""
    i64, i128 = ir.IntType(64), ir.IntType(128)
    prod = builder.mul(builder.zext(x, i128), ir.Constant(i128, int(m)))
    return (builder.trunc(builder.lshr(prod, ir.Constant(i128, 64)), i64),
            builder.trunc(prod, i64))


def _x8_rounds(context, builder, groups, keys_type, keys_v, shared12=None):
    """Philox4x64-10 on groups of four 8-lane state vectors (x0, x1, x2, x3) under the round keys
    `keys_v`; returns the groups' final states.

    Several groups run interleaved round by round: one group's ten rounds are a chain of
    dependent multiplies whose latency the out-of-order window does not hide across calls, and
    two groups per body measured 17% faster per word than one (0.72 against 0.87 ns per 32-bit
    word on one AMD EPYC znver4 core; three or four groups: 0.71).

    shared12: (c1, c2) as i64 scalars when every lane has the same counter words 1 and 2 (the
    groups' x1 and x2 are then ignored). Round 1 then multiplies c2 once, not per lane, and
    round 2's first multiply, of hi(M1 c2) ^ c1 ^ k0, is lane-independent too: 18 vector
    multiplies per group instead of 20 (LLVM folds a constant c2's product but does not
    scalarize the second one itself; 3.5% per word).
    """
    i64 = ir.IntType(64)
    kdata = context.make_array(keys_type)(context, builder, keys_v).data
    vt = groups[0][0].type
    m0 = ir.Constant(vt, [int(PHILOX_M0)] * 8)
    m1 = ir.Constant(vt, [int(PHILOX_M1)] * 8)

    def key(r, w):
        return builder.load(builder.gep(kdata, [ir.Constant(i64, 2 * r + w)]))

    states = [list(g) for g in groups]
    first = 0
    if shared12 is not None:
        c1, c2 = shared12
        # Round 1: lanes differ in x0 only; the new x0, s0, is the same in every lane.
        hi1, lo1 = _mulhilo_scalar(builder, c2, PHILOX_M1)
        s0 = builder.xor(builder.xor(hi1, c1), key(0, 0))
        # Round 2: the M0 multiply is of s0.
        hi0, lo0 = _mulhilo_scalar(builder, s0, PHILOX_M0)
        x0_k, x2_k = _splat8(builder, builder.xor(lo1, key(1, 0))), _splat8(builder, key(0, 1))
        x2_h = _splat8(builder, builder.xor(hi0, key(1, 1)))
        for st in states:
            x0, _, _, x3 = st
            x2 = builder.xor(builder.xor(_mulhi_lanes(builder, x0, PHILOX_M0), x3), x2_k)
            x3 = builder.mul(x0, m0)
            st[:] = (builder.xor(_mulhi_lanes(builder, x2, PHILOX_M1), x0_k),
                     builder.mul(x2, m1), builder.xor(x2_h, x3), _splat8(builder, lo0))
        first = 2
    for r in range(first, 10):
        k0 = _splat8(builder, key(r, 0))
        k1 = _splat8(builder, key(r, 1))
        for st in states:
            x0, x1, x2, x3 = st
            hi0, lo0 = _mulhi_lanes(builder, x0, PHILOX_M0), builder.mul(x0, m0)
            hi1, lo1 = _mulhi_lanes(builder, x2, PHILOX_M1), builder.mul(x2, m1)
            st[:] = (builder.xor(builder.xor(hi1, x1), k0), lo1,
                     builder.xor(builder.xor(hi0, x3), k1), lo0)
    return states


def _splat8(builder, x):
    """An 8-lane vector of the i64 scalar x."""
    i32 = ir.IntType(32)
    vt = ir.VectorType(x.type, 8)
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(i32, 0))
    return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined),
                                  ir.Constant(ir.VectorType(i32, 8), [0] * 8))


def _x8_store(context, builder, out_type, out_v, pos, x0, x1, x2, x3):
    """Lane l's block to out from pos + 4*l (uint64 out) or pos + 8*l (uint32: its eight 32-bit
    words, each 64-bit word's low half first)."""
    i32 = ir.IntType(32)
    data = context.make_array(out_type)(context, builder, out_v).data
    # Lanes to blocks: word w of lane l at 4*l + w (two interleaving shuffles).
    pairs = [j for i in range(8) for j in (i, i + 8)]
    a = builder.shuffle_vector(x0, x1, ir.Constant(ir.VectorType(i32, 16), pairs))
    b = builder.shuffle_vector(x2, x3, ir.Constant(ir.VectorType(i32, 16), pairs))
    quads = [j for i in range(8) for j in (2 * i, 2 * i + 1, 2 * i + 16, 2 * i + 17)]
    words = builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, 32), quads))
    # uint32 out: the same 64-bit stores. Numba's CPU targets are little-endian, so a 64-bit
    # word's low half comes first in memory: the stream's order of halves. Splitting the halves
    # with shuffles first cost 7.8 against 7.2 ns per block (one AMD EPYC znver4 core).
    width = out_type.dtype.bitwidth
    ptr = builder.bitcast(builder.gep(data, [pos]), words.type.as_pointer())
    builder.store(words, ptr, align=width // 8)


def _philox_groups(n_groups):
    """The codegen of philox_x8 (n_groups = 1) and philox_x16 (2): blocks at counters
    (first + l, c1, c2, c3), l = 0 .. 8 n_groups - 1, stored consecutively (_x8_store)."""

    def codegen(context, builder, signature, args):
        out_v, pos, first, c1, c2, c3, keys_v = args
        vt = ir.VectorType(ir.IntType(64), 8)
        base = _splat8(builder, first)
        c3v = _splat8(builder, c3)
        groups = [(builder.add(base, ir.Constant(vt, list(range(8 * g, 8 * g + 8)))), None,
                   None, c3v) for g in range(n_groups)]
        states = _x8_rounds(context, builder, groups, signature.args[6], keys_v,
                            shared12=(c1, c2))
        per_group = 8 * (8 if signature.args[0].dtype.bitwidth == 32 else 4)  # elements
        for g, st in enumerate(states):
            at = builder.add(pos, ir.Constant(ir.IntType(64), g * per_group))
            _x8_store(context, builder, signature.args[0], out_v, at, *st)
        return context.get_dummy_value()

    return codegen


@intrinsic
def philox_x8(typingctx, out, pos, first, c1, c2, c3, keys):
    """Blocks at counters (first + l, c1, c2, c3), l = 0..7, under the round keys `keys`
    (:func:`round_keys`), in 8-lane vectors (Numba code only; no bounds check: out needs room
    for eight blocks from pos); the layout of :func:`fill_blocks`: block l's words at
    out[pos + 4*l ...] (uint64 out) or its eight 32-bit words at out[pos + 8*l ...] (uint32)."""
    u64 = types.uint64
    return types.void(out, types.int64, u64, u64, u64, u64, keys), _philox_groups(1)


@intrinsic
def philox_x16(typingctx, out, pos, first, c1, c2, c3, keys):
    """:func:`philox_x8` for the sixteen blocks first + 0 .. first + 15: two groups of eight
    lanes interleaved round by round (_x8_rounds says why)."""
    u64 = types.uint64
    return types.void(out, types.int64, u64, u64, u64, u64, keys), _philox_groups(2)


def _wrap_group(builder, first, r0, group, c1, c2, c3):
    """The state of eight lanes of a run of groups (philox_x8_wrap): lane l, m = r0 + l,
    w = m // group, at counter (first + m - w * group, c1, c2 + w, c3)."""
    vt = ir.VectorType(ir.IntType(64), 8)
    m = builder.add(_splat8(builder, r0), ir.Constant(vt, list(range(8))))
    g = _splat8(builder, group)
    zero, one = ir.Constant(vt, [0] * 8), ir.Constant(vt, [1] * 8)
    wraps = zero
    for _ in range(2):
        over = builder.icmp_unsigned(">=", m, g)
        m = builder.sub(m, builder.select(over, g, zero))
        wraps = builder.add(wraps, builder.select(over, one, zero))
    return (builder.add(_splat8(builder, first), m), _splat8(builder, c1),
            builder.add(_splat8(builder, c2), wraps), _splat8(builder, c3))


@intrinsic
def philox_x8_wrap(typingctx, out, pos, first, r0, group, c1, c2, c3, keys):
    """Eight blocks of a run of groups of `group` consecutive counters, the group's c2 one
    higher each time: lane l (m = r0 + l, w = m // group) at counter
    (first + m - w * group, c1, c2 + w, c3), for 0 <= r0 < group and group >= 4 (so w <= 2:
    two compares, no division). Layout, room and keys as :func:`philox_x8`, which is
    r0 = 0, group >= 8. For the SR GEMM route (refsim.backends.cpu_tile), where a tile row
    needs `group` blocks per step: eight lanes then span two or more steps."""
    u64 = types.uint64
    sig = types.void(out, types.int64, u64, u64, u64, u64, u64, u64, keys)

    def codegen(context, builder, signature, args):
        out_v, pos, first, r0, group, c1, c2, c3, keys_v = args
        (x,) = _x8_rounds(context, builder, [_wrap_group(builder, first, r0, group, c1, c2, c3)],
                          signature.args[8], keys_v)
        _x8_store(context, builder, signature.args[0], out_v, pos, *x)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def philox_x16_wrap(typingctx, out, pos, first, r0, c2, r1, c2_1, group, c1, c3, keys):
    """Two :func:`philox_x8_wrap` calls in one body, interleaved round by round (_x8_rounds says
    why): eight blocks at (r0, c2) to out from pos, eight at (r1, c2_1) from the next eight
    blocks' place (pos + 64 uint32 words, or 32 uint64)."""
    u64 = types.uint64
    sig = types.void(out, types.int64, u64, u64, u64, u64, u64, u64, u64, u64, keys)

    def codegen(context, builder, signature, args):
        out_v, pos, first, r0, c2, r1, c2_1, group, c1, c3, keys_v = args
        groups = [_wrap_group(builder, first, r0, group, c1, c2, c3),
                  _wrap_group(builder, first, r1, group, c1, c2_1, c3)]
        states = _x8_rounds(context, builder, groups, signature.args[10], keys_v)
        per_group = 8 * (8 if signature.args[0].dtype.bitwidth == 32 else 4)
        for g, st in enumerate(states):
            at = builder.add(pos, ir.Constant(ir.IntType(64), g * per_group))
            _x8_store(context, builder, signature.args[0], out_v, at, *st)
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(**_JIT)
def fill_blocks_x8(out, start, first, count, c1, c2, c3, keys):
    """:func:`fill_blocks` (same arguments, same words) sixteen blocks at a time in 8-lane
    integer vectors (:func:`philox_x16`), then eight, the rest one or two at a time. For x86
    with AVX-512 (one register per state word): there the 64x64-bit high products from four
    32-bit multiplies each, eight lanes wide, beat the scalar ``mulx`` chain (measured 1.3-2x
    per word on an AMD EPYC znver4 VM; 2.5x with two groups interleaved)."""
    first = np.uint64(first)
    pos = np.int64(start)
    b = np.uint64(0)
    count = np.uint64(count)
    eight = np.uint64(8)
    sixteen = np.uint64(16)
    step = np.int64(8 * (8 if out.itemsize == 4 else 4))
    while b + sixteen <= count:
        philox_x16(out, pos, first + b, np.uint64(c1), np.uint64(c2), np.uint64(c3), keys)
        pos += 2 * step
        b += sixteen
    if b + eight <= count:
        philox_x8(out, pos, first + b, np.uint64(c1), np.uint64(c2), np.uint64(c3), keys)
        pos += step
        b += eight
    if b < count:
        fill_blocks(out, pos, first + b, count - b, c1, c2, c3, keys)


def target_features() -> frozenset[str]:
    """The CPU features Numba compiles for (NUMBA_CPU_FEATURES, else the host's)."""
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features
    # numba.core.config sets its settings from the environment at import: no static attributes
    features: str | None = config.CPU_FEATURES  # type: ignore[attr-defined]
    spec = features if features is not None else get_host_cpu_features()
    return frozenset(f[1:] for f in spec.split(",") if f.startswith("+"))


VECTOR_BLOCKS = "avx512f" in target_features()  # fill_blocks_fast is fill_blocks_x8
fill_blocks_fast = fill_blocks_x8 if VECTOR_BLOCKS else fill_blocks
"""fill_blocks_x8 where the target has AVX-512 (eight 64-bit lanes per register), else
fill_blocks: the same words either way."""


# --------------------------------------------------------------------------------------------
# The stochastic-rounding stream
# --------------------------------------------------------------------------------------------


@numba.njit(**_JIT)
def stream_block(seed, block, j):
    """The four 64-bit words of block ``block`` of ``H_j`` under ``seed``: they hold the 32-bit
    words of the eight elements ``8*block .. 8*block + 7`` (:func:`block_word` picks one).

    ``block >= 0``; one call per eight elements is the cheap way to consume the stream.
    """
    return philox4x64_10(
        np.uint64(block) + _ONE, np.uint64(j), _ZERO, _ZERO, np.uint64(seed), _ZERO
    )


@numba.njit(**_JIT)
def block_word(w0, w1, w2, w3, index):
    """Element ``index``'s 32-bit word (as a uint64 below 2^32) in the block ``(w0, w1, w2, w3)``
    that covers it: half ``index % 2`` (low half first) of word ``(index // 2) % 4``."""
    index = np.uint64(index)
    lane = (index >> _ONE) & _THREE
    if lane == _ZERO:
        word = w0
    elif lane == _ONE:
        word = w1
    elif lane == _TWO:
        word = w2
    else:
        word = w3
    return (word >> (_SHIFT32 * (index & _ONE))) & _LOW32


@numba.njit(**_JIT)
def family_word(seed, index, j, step, tag):
    """Word ``H_j`` (32 bits, as a uint64 below 2^32) of the element at flat index ``index >= 0``
    in the family ``(step, tag)``: counter ``(index // 8 + 1, j, step, tag)``. refsim.quantize
    reads family (0, 0); the accumulation roundings read theirs (kernels.accum_core)."""
    index = np.uint64(index)
    w0, w1, w2, w3 = philox4x64_10((index >> _THREE) + _ONE, np.uint64(j), np.uint64(step),
                                   np.uint64(tag), np.uint64(seed), _ZERO)
    return block_word(w0, w1, w2, w3, index)


@numba.njit(**_JIT)
def stream_word(seed, index, j):
    """Word ``H_j`` (32 bits, as a uint64 below 2^32) of the element at flat index ``index >= 0``
    under ``seed``: refsim.quantize's family (0, 0)."""
    return family_word(seed, index, j, _ZERO, _ZERO)


_FILL_ITEM = 1024  # blocks per parallel work item of _fill_words


@numba.njit(cache=True, parallel=True)
def _fill_words(seed, j, out):
    """out[i] = H_j of element i (uint32 out), or the 64-bit words of the blocks (uint64 out)."""
    n = out.size
    per = 8 if out.itemsize == 4 else 4
    nfull = n // per
    keys = round_keys(seed, _ZERO)
    for item in prange((nfull + _FILL_ITEM - 1) // _FILL_ITEM):
        b0 = item * _FILL_ITEM
        fill_blocks_fast(out, per * b0, np.uint64(b0) + _ONE, min(_FILL_ITEM, nfull - b0), j,
                         _ZERO, _ZERO, keys)
    if n > per * nfull:
        tail = np.empty(8, out.dtype)
        fill_blocks(tail, 0, np.uint64(nfull) + _ONE, 1, j, _ZERO, _ZERO, keys)
        for t in range(n - per * nfull):
            out[per * nfull + t] = tail[t]


def _as_u64(value: int, name: str) -> np.uint64:
    value = int(value)
    if not 0 <= value <= _MASK64:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return np.uint64(value)


def _count(n: int) -> int:
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    return n


def random_words(seed: int, n: int, j: int = 0) -> np.ndarray:
    """Words ``H_j`` of elements ``0 .. n-1`` under ``seed`` as a ``uint32`` array.

    ``random_words(s, n)`` equals ``np.random.Philox(key=s).random_raw((n + 1) // 2)`` split
    into 32-bit halves, low half first.  Runs in parallel over blocks on Numba's threads; the
    result does not depend on the thread count.
    """
    out = np.empty(_count(n), dtype=np.uint32)
    _fill_words(_as_u64(seed, "seed"), _as_u64(j, "j"), out)
    return out


def raw_words(seed: int, n: int) -> np.ndarray:
    """The first ``n`` 64-bit words of the Philox stream under ``seed`` (counter words 1..3 zero),
    as a ``uint64`` array: ``np.random.Philox(key=s).random_raw(n)``.  Not the rounding stream:
    for draws that want 64-bit words (refsim.nn's dropout)."""
    out = np.empty(_count(n), dtype=np.uint64)
    _fill_words(_as_u64(seed, "seed"), _ZERO, out)
    return out
