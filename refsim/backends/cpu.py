"""CPU kernels: Numba njit(parallel=True) loops around the scalar core.

quantize runs in two passes over chunks of CHUNK elements:
1. a branch-free fast path that LLVM vectorizes, for the common lanes: a finite normal input of a
   format whose grid spacing at that input lies inside the carrier's mantissa (then rounding is
   "add an increment below the kept bits, clear them", and the carry runs into the exponent by
   itself), inputs below the smallest quantum (candidates 0 and that quantum), zeros and
   overflows, which are selects of constants;
2. every other lane (NaN, Inf, carrier subnormals, wrap-around fixed point, and the SR lanes
   whose first W random bits tie the discarded fraction's first W bits, which round_lane marks
   kernels.lane.undecided: probability 2^-W, only where more than W bits are discarded) goes
   through kernels.core.quantize_bits, the scalar core shared with CUDA. Pass 1 flags the chunks
   that have such lanes; pass 2 visits only those, 64 lanes at a time: a vectorized test of the
   64 first, the scalar core only for the lanes that need it. The passes are two kernels
   (PASSES[mode]), so a call that leaves nothing to pass 2 never compiles it (the scalar core is
   half of a cold first call's compile time).
Random words: element i always takes the 32-bit words H_j of kernels.rng (half i % 2 of word
(i // 2) % 4 of Philox block i // 8), so the bits never depend on the thread count or on the
chunking; or, when the caller gives the random bits (`given`, non-empty), the word
given_word(given, i, ...): rbits[i]'s low sr_bits bits R as R << (64 - sr_bits), read from the
caller's array in the kernel (a byte view and the element width, so one compiled kernel serves
every rbits dtype; building the words in NumPy first cost two 8-byte temporaries per element).

What keeps pass 1 vectorized, in the widest lanes and with few instructions per lane (check
with PASSES[mode][0].inspect_asm() under a fresh NUMBA_CACHE_DIR: cached code cannot be
inspected):
- Unsigned array indices. Numba wraps negative signed indices around, after which LLVM cannot
  prove the addresses consecutive: every load and store becomes a gather or a scatter (3x slower).
- Arithmetic in the carrier's own width: uint32 lanes for float32, twice as many per vector as
  uint64. Numba widens every integer operation to 64 bits, so each result is cast back to the
  carrier type U, and every shift amount is bounded by a compile-time constant (min(d, C_MAN)),
  which lets LLVM narrow the operations back. Hence pass 1 is compiled per (mode, carrier), with
  the carrier's constants as closure constants (_fast_pass, an overload on the array type).
- Selects, not conditional expressions (_select): Numba lowers `a if c else b` to branches, which
  LLVM if-converts into tangled predicate masks (1.4x the instructions).
- One rounding formula for every mode, magnitude = (a + increment) & ~mask, instead of
  comparisons of the discarded bits against half.
- Per-call constants are unpacked into scalars before the loop, and the loop makes no calls:
  SR's Philox words fill a per-chunk buffer first (kernels.rng.fill_blocks_fast).
- SR lanes that need more than W random bits (|x| far below the format's quantum: int8's and
  e2m1fn's small values) stay in pass 1: their first W bits decide, except on a tie, which
  round_lane reports (UNDECIDED in dst, and the chunk flagged). Sending every such lane to pass 2
  instead made one lane in most chunks of normal data cost a scalar scan of the chunk (int8 and
  e2m1fn 1.2-1.5x slower than fp32).

Caching: a cached kernel's closure must hold plain values only. Numba keys its cache on the
pickled closure, and a pickled dispatcher carries a fresh UUID in every process, so a dispatcher
in the closure meant a recompilation (about a minute for all kernels) in every new process.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.core import types
from numba.extending import overload
from numba.np.numpy_support import as_dtype

from refsim.kernels import core
from refsim.kernels.lane import CARRIER_OF, F_ENABLED, round_lane, select, undecided
from refsim.kernels.rng import block_word, fill_blocks_fast, round_keys, stream_block

# Elements per parallel work item: a multiple of 128 (sixteen Philox blocks per generator call).
# SR's per-chunk word buffer (8 KiB for float32) then stays in L1 beside the streamed data:
# 1.33 against 1.41 ns per element with 4096 (one thread; deterministic modes unchanged).
CHUNK = 2048

@njit(cache=True)
def _fill_random(rand, seed, base, stop):
    """rand[i - base] = the first random bits of element i, for i in [base, stop), base % 8 == 0:
    H_0 (uint32 rand: float32 carriers), or H_0 H_1 as one 64-bit word (uint64 rand: float64
    carriers, whose lanes may need up to 64 bits; the same generator cost per element as H_0 for
    float32, two words of eight per block).

    The generator bounds SR (docs/BENCHMARKS.md): kernels.rng.fill_blocks_fast, eight Philox
    blocks per call in AVX-512 lanes where the CPU has them. A separate Numba function: written
    into the pass-1 function, Numba's reference counting of the local buffer put an atomic
    increment and decrement around every Philox call (2x slower).
    """
    blocks = (stop - base + 7) // 8
    first = np.uint64(base // 8) + np.uint64(1)
    keys = round_keys(seed, 0)
    if rand.itemsize == 4:
        fill_blocks_fast(rand, 0, first, blocks, 0, 0, 0, keys)
        return
    h0 = np.empty(8 * blocks, np.uint32)
    h1 = np.empty(8 * blocks, np.uint32)
    fill_blocks_fast(h0, 0, first, blocks, 0, 0, 0, keys)
    fill_blocks_fast(h1, 0, first, blocks, 1, 0, 0, keys)
    for k in range(stop - base):
        rand[k] = (np.uint64(h0[k]) << np.uint64(32)) | np.uint64(h1[k])


@njit(cache=True)
def given_word(given, i, width, mask, shift):
    """Element i's 64-bit random word from caller-given bits: (rbits[i] & mask) << shift, with
    mask = 2^sr_bits - 1 and shift = 64 - sr_bits, so R = rbits[i]'s low sr_bits bits is the
    word's top sr_bits bits (the core reads a word's top bits: kernels.core.quantize_bits).
    given: rbits' bytes (uint8, C order), width: bytes per rbits element (1, 2, 4 or 8)."""
    if width == 1:
        value = np.uint64(given[i])
    elif width == 2:
        value = np.uint64(given.view(np.uint16)[i])
    elif width == 4:
        value = np.uint64(given.view(np.uint32)[i])
    else:
        value = np.uint64(given.view(np.uint64)[i])
    return (value & mask) << shift


@njit(cache=True)
def _copy_typed(rand, words, base, stop, mask, shift, top):
    first = np.uint64(base)
    for k in range(np.uint64(stop - base)):
        rand[k] = ((np.uint64(words[first + k]) & mask) << shift) >> top


@njit(cache=True)
def _copy_given(rand, given, base, stop, width, mask, shift, top):
    """rand[i - base] = given_word(given, i, width, mask, shift) >> top for i in [base, stop):
    the first W random bits of caller-given words (top = 64 - W)."""
    if width == 1:
        _copy_typed(rand, given, base, stop, mask, shift, top)
    elif width == 2:
        _copy_typed(rand, given.view(np.uint16), base, stop, mask, shift, top)
    elif width == 4:
        _copy_typed(rand, given.view(np.uint32), base, stop, mask, shift, top)
    else:
        _copy_typed(rand, given.view(np.uint64), base, stop, mask, shift, top)


def _fast_pass(mode, src, dst, base, stop, fast, a_lo, r_cap, seed, given, gspec):
    """Pass 1 over src[base:stop] into dst; returns whether any lane is left to pass 2.

    Callable from Numba code only, with `mode` a compile-time constant: compiled per (mode,
    carrier) from _make_fast_pass.
    """
    raise NotImplementedError("refsim.backends.cpu._fast_pass runs inside Numba kernels only")


@overload(_fast_pass, prefer_literal=True)
def _fast_pass_overload(mode, src, dst, base, stop, fast, a_lo, r_cap, seed, given, gspec):
    if not isinstance(mode, types.IntegerLiteral):
        return None
    utype = as_dtype(src.dtype).type
    return _make_fast_pass(mode.literal_value, utype, *CARRIER_OF[utype])


def _make_fast_pass(rounding, utype, c_man, c_bias):
    """The implementation of _fast_pass for one rounding mode and one carrier (the `mode`
    argument only selects it)."""
    U = utype
    W = 8 * np.dtype(utype).itemsize  # carrier width in bits
    ZERO = U(0)
    ABS = U((1 << (W - 1)) - 1)
    INF = U((2 * c_bias + 1) << c_man)  # the smallest magnitude pattern that is not finite
    TOP_BITS = np.uint64(64 - W)  # SR uses at most W random bits: a word's top W bits
    # A plain bool closure constant: Numba prunes `if IS_SR:` before typing, so a deterministic
    # mode compiles none of the generator (`rounding == core.SR` is an attribute lookup that
    # the pruner cannot resolve: 8 s of a cold first call went to compiling _fill_random).
    IS_SR = rounding == core.SR
    UNDECIDED = undecided(utype)
    ALL_ONES = U(np.iinfo(utype).max)

    def fast_pass(mode, src, dst, base, stop, fast, a_lo, r_cap, seed, given, gspec):
        """a_lo: pass 1 takes the lanes whose |x| has the bit pattern a == 0 or a_lo <= a < INF
        (carrier normals and zeros). r_cap (SR only): min(sr_bits, W), or W for sr_bits=None or
        sr_bits > W; a lane round_lane leaves UNDECIDED goes to pass 2 as well. gspec: given's
        (width, mask, shift) (given_word).
        """
        if IS_SR:
            rand = np.empty(CHUNK, U)  # the element's first W random bits (or given word)
            if given.size:
                _copy_given(rand, given, base, stop, gspec[0], gspec[1], gspec[2], TOP_BITS)
            else:
                _fill_random(rand, seed, base, stop)
        # max over the chunk of (0 if a == 0 else a - a_lo), a reduction LLVM vectorizes: some
        # lane is left to pass 2 iff it reaches INF - a_lo (one unsigned compare per lane).
        key_max = ZERO
        first = np.uint64(base)
        for i in range(first, np.uint64(stop)):
            x = src[i]
            if IS_SR:
                word = rand[i - first]
            else:
                word = ZERO
            r = round_lane(mode, x, fast, word, r_cap)
            dst[i] = r
            a = U(x & ABS)
            key = select(a == ZERO, ZERO, U(a - a_lo))
            if IS_SR:
                key = select(r == UNDECIDED, ALL_ONES, key)
            key_max = max(key_max, key)
        return key_max >= U(INF - a_lo)

    return fast_pass


_GROUP = 64  # lanes pass 2 tests at once (vectorized) before it visits any of them


@njit(cache=True)
def _group_left(src, dst, start, stop, abs_mask, a_lo, span, mark):
    """Whether a lane of [start, stop) needs the scalar core: a nonzero |x| outside pass 1's
    range, or a lane pass 1 left UNDECIDED (an or-reduction LLVM vectorizes)."""
    U = src.dtype.type
    need = U(0)
    for i in range(np.uint64(start), np.uint64(stop)):
        a = U(src[i] & abs_mask)
        outside = (a != U(0)) & (U(a - a_lo) >= span)
        need |= select(outside | (dst[i] == mark), U(1), U(0))
    return need != U(0)


def _make_kernels(mode):
    """The two passes of one rounding mode: (fast_flat, rest_flat). Separate kernels, so that a
    call whose lanes all take pass 1 (the common case) never compiles pass 2, the scalar core with
    every format kind and rounding step in it (about half of a cold first call's compile time)."""
    IS_SR = mode == core.SR  # a closure constant Numba prunes on (_make_fast_pass's IS_SR)

    @njit(parallel=True, cache=True)
    def fast_flat(src, dst, fast, a_lo, r_cap, seed, given, gspec, left):
        """Pass 1 over 1-D carrier bit arrays (uint32 or uint64), C order: dst[i] = round(src[i])
        for the lanes it takes; left[c] = whether chunk c has a lane for pass 2 (a_lo, r_cap:
        lane_bounds; given, gspec: given_word)."""
        size = src.size
        n_chunks = (size + CHUNK - 1) // CHUNK
        for chunk in prange(n_chunks):
            base = chunk * CHUNK
            stop = min(base + CHUNK, size)
            left[chunk] = _fast_pass(mode, src, dst, base, stop, fast, a_lo, r_cap, seed, given,
                                     gspec)

    @njit(parallel=True, cache=True)
    def rest_flat(src, dst, c_man, c_bias, params, overflow, sr_bits, seed, given, gspec, a_lo,
                  use_fast, left):
        """Pass 2: dst[i] = round(src[i]) through the scalar core for the chunks c with left[c],
        every lane pass 1 did not take or left UNDECIDED (every lane when not use_fast); SR reads
        given_word(given, i, *gspec) when `given` is not empty, else the stream under seed."""
        U = src.dtype.type
        width = src.itemsize * 8
        abs_mask = U(U(U(1) << U(width - 1)) - U(1))
        inf = U(U(2 * c_bias + 1) << U(c_man))
        span = U(inf - a_lo)
        mark = U(inf | U(1))  # kernels.lane.undecided(U)
        size = src.size
        n_chunks = (size + CHUNK - 1) // CHUNK
        for chunk in prange(n_chunks):
            if not left[chunk]:
                continue
            base = chunk * CHUNK
            stop = min(base + CHUNK, size)
            block = np.int64(-1)  # SR: the Philox block in `words`
            words = (np.uint64(0), np.uint64(0), np.uint64(0), np.uint64(0))
            index = np.int64(0)
            for group in range(base, stop, _GROUP):
                end = min(group + _GROUP, stop)
                if use_fast and not _group_left(src, dst, group, end, abs_mask, a_lo, span,
                                                mark):
                    continue
                for i in range(group, end):
                    bits = src[i]
                    a = U(bits & abs_mask)
                    if use_fast and (a == 0 or U(a - a_lo) < span) and dst[i] != mark:
                        continue
                    word = np.uint64(0)
                    index = np.int64(i)
                    if IS_SR:
                        if given.size:
                            word = given_word(given, i, gspec[0], gspec[1], gspec[2])
                            index = np.int64(-1)  # caller-given bits: nothing to draw
                        else:
                            if i // 8 != block:
                                block = i // 8
                                words = stream_block(seed, block, 0)
                            word = block_word(words[0], words[1], words[2], words[3],
                                              i) << np.uint64(32)
                    dst[i] = core.quantize_bits(np.uint64(bits), c_man, c_bias, params, mode,
                                                overflow, sr_bits, word, seed, index)

    return fast_flat, rest_flat


def lane_bounds(mode: int, sr_bits: int, c_man: int, width: int) -> tuple[int, int]:
    """(a_lo, r_cap) of pass 1: it takes the lanes with |x|'s pattern a == 0 or a_lo <= a < inf
    (e >= 1: carrier normals); r_cap (SR) = sr_bits for 1 <= sr_bits <= width, else width (the
    lanes whose first `width` random bits tie come back UNDECIDED: kernels.lane)."""
    r_cap = sr_bits if mode == core.SR and 1 <= sr_bits <= width else width
    return 1 << c_man, r_cap


PASSES = tuple(_make_kernels(mode) for mode in range(len(core.ROUNDING_NAMES)))
"""PASSES[mode]: (fast_flat, rest_flat), the two quantize kernels of one rounding mode (each
compiled on its first call)."""


def quantize_flat(mode: int, src: np.ndarray, dst: np.ndarray, c_man: int, c_bias: int,
                  params: tuple, fast: tuple, overflow: int, sr_bits: int, seed: np.uint64,
                  given: np.ndarray, given_width: int = 1) -> None:
    """dst[i] = round(src[i]) for 1-D carrier bit arrays: pass 1 where the fast path is enabled,
    then pass 2 on the chunks it left (on none: rest_flat is not even compiled). given: the
    caller's rbits as bytes (uint8, C order; empty: the stream), given_width bytes each."""
    fast_flat, rest_flat = PASSES[mode]
    utype = src.dtype.type
    width = 8 * src.itemsize
    bits = sr_bits & core.SR_BITS_MASK  # N without the variant (kernel_sr_bits)
    a_lo, r_cap = lane_bounds(mode, bits, c_man, width)
    gspec = (np.uint64(given_width), np.uint64((1 << bits) - 1), np.uint64(64 - min(bits, 64)))
    n_chunks = (src.size + CHUNK - 1) // CHUNK
    use_fast = bool(fast[F_ENABLED] != 0)
    if use_fast:
        left = np.zeros(n_chunks, np.bool_)
        fast_flat(src, dst, fast, utype(a_lo), utype(r_cap), seed, given, gspec, left)
        if not left.any():
            return
    else:
        left = np.ones(n_chunks, np.bool_)
    rest_flat(src, dst, c_man, c_bias, params, overflow, sr_bits, seed, given, gspec,
              utype(a_lo), use_fast, left)
