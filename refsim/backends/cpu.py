"""CPU kernels: Numba njit(parallel=True) loops around the scalar core.

quantize runs in two passes over chunks of CHUNK elements:
1. a branch-free fast path that LLVM vectorizes, for the common lanes: a finite normal input of a
   format whose grid spacing at that input lies inside the carrier's mantissa (then rounding is
   "add an increment below the kept bits, clear them", and the carry runs into the exponent by
   itself), inputs below the smallest quantum (candidates 0 and that quantum), zeros and
   overflows, which are selects of constants;
2. every other lane (NaN, Inf, carrier subnormals, wrap-around fixed point, SR lanes that need
   more random bits than the carrier is wide) goes through refsim.core.quantize_bits, the scalar
   core shared with CUDA. Pass 1 flags the chunks that have such lanes; pass 2 visits only those.
Random words: element i always takes word i % 4 of Philox block i // 4 (refsim.rng), so the bits
never depend on the thread count or on the chunking.

What keeps pass 1 vectorized, in the widest lanes and with few instructions per lane (check
with KERNELS[mode].inspect_asm() under a fresh NUMBA_CACHE_DIR: cached code cannot be inspected):
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
  SR's Philox words come from a scalar loop that fills a per-chunk buffer first.

Caching: a cached kernel's closure must hold plain values only. Numba keys its cache on the
pickled closure, and a pickled dispatcher carries a fresh UUID in every process, so a dispatcher
in the closure meant a recompilation (about a minute for all kernels) in every new process.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic, overload
from numba.np.numpy_support import as_dtype

from refsim import core
from refsim.params import CARRIERS
from refsim.rng import stream_block

CHUNK = 4096  # elements per parallel work item (a multiple of 4: whole Philox blocks)

# Layout of the fast-path constant tuple; every entry has the carrier's unsigned type.
(F_ENABLED, F_E_NORMAL, F_D_NORMAL, F_D_BASE, F_MAX_POS, F_MAX_NEG, F_OVF_POS, F_OVF_NEG,
 F_ZERO_POS, F_ZERO_NEG, F_UNDER_POS, F_UNDER_NEG, F_QMIN) = range(13)
N_FAST = 13

_UTYPE = {c_man: utype for c_man, _, utype in CARRIERS.values()}  # carrier type by c_man
_CARRIER = {utype: (c_man, c_bias) for c_man, c_bias, utype in CARRIERS.values()}


def fast_constants(params, c_man, c_bias, mode, overflow):
    """Host-side constants of the fast path (F_* layout); disabled for wrap-around.

    d, the number of carrier significand bits below the format's quantum, is F_D_NORMAL where the
    carrier exponent field e >= F_E_NORMAL, and F_D_BASE - e below (subnormal grid, the smallest
    quantum of a format without subnormals, fixed point). Results by sign: a rounded magnitude
    above F_MAX_* gives F_OVF_*, a zero one F_UNDER_*, a zero input F_ZERO_*.
    """
    utype = _UTYPE[c_man]
    if overflow == core.OVF_WRAP:
        return tuple(utype(0) for _ in range(N_FAST))
    enc = core.encode_carrier
    nan = core.carrier_nan(c_man, c_bias)
    man = params[core.P_MAN]
    if params[core.P_KIND] == core.KIND_FIXED:
        width, signed = params[core.P_EMIN], params[core.P_SIGNED] != 0
        quantum = -man
        max_pos = enc(False, np.int64(params[core.P_MAX_N]), np.int64(quantum), c_man, c_bias)
        k_neg = (1 << (width - 1)) if signed else 0
        max_neg = enc(False, np.int64(k_neg), np.int64(quantum), c_man, c_bias)
        ovf_neg = enc(k_neg != 0, np.int64(k_neg), np.int64(quantum), c_man, c_bias)
        qmin = enc(False, np.int64(1), np.int64(quantum), c_man, c_bias)
        e_normal = 2 * c_bias + 2  # above every exponent field: the quantum is always 2^quantum
        values = (1, e_normal, 0, c_man + quantum + c_bias, max_pos, max_neg, max_pos, ovf_neg,
                  0, 0, 0, 0, qmin)
        return tuple(utype(int(v)) for v in values)
    emin, emax, max_n = params[core.P_EMIN], params[core.P_EMAX], params[core.P_MAX_N]
    max_pos = enc(False, np.int64(max_n), np.int64(emax - man), c_man, c_bias)

    def overflow_bits(negative):
        if core.overflow_to_max(mode, negative, overflow, params[core.P_SPECIALS]):
            return enc(negative, np.int64(max_n), np.int64(emax - man), c_man, c_bias)
        if params[core.P_SPECIALS] == core.SPECIALS_IEEE:
            return core.carrier_inf(negative, c_man, c_bias)
        return nan

    has_zero = params[core.P_ZERO] != 0
    signed = params[core.P_SIGNED] != 0
    keeps_sign = signed and params[core.P_SPECIALS] != core.SPECIALS_FNUZ
    m_sub = man if params[core.P_SUBNORMALS] != 0 else 0
    qmin = enc(False, np.int64(1), np.int64(emin - m_sub), c_man, c_bias)
    if has_zero:
        zero_pos, zero_neg = enc(False, 0, 0, c_man, c_bias), enc(keeps_sign, 0, 0, c_man, c_bias)
        under_pos, under_neg = zero_pos, zero_neg
    else:  # no zero: zero input is NaN, underflow is raised to the smallest value
        zero_pos = zero_neg = nan
        under_pos, under_neg = qmin, enc(True, np.int64(1), np.int64(emin - m_sub), c_man, c_bias)
    max_neg, ovf_neg = max_pos, overflow_bits(True)
    if not signed:  # a negative nonzero input gives NaN: every negative magnitude "overflows"
        max_neg, ovf_neg, under_neg = 0, nan, nan
    # Clamped at 0: a format whose emin lies below the carrier's normal range (no subnormals)
    # has its normal quantum at every carrier-normal input.
    values = (1, max(emin + c_bias, 0), c_man - man, max(c_man - m_sub + emin + c_bias, 0),
              max_pos, max_neg, overflow_bits(False), ovf_neg, zero_pos, zero_neg, under_pos,
              under_neg, qmin)
    return tuple(utype(int(v)) for v in values)


@intrinsic
def _select(typingctx, cond, if_true, if_false):
    """`if_true if cond else if_false` as one LLVM select instruction, without a branch."""
    if cond != types.boolean or if_true != if_false:
        return None

    def codegen(context, builder, signature, args):
        return builder.select(args[0], args[1], args[2])

    return if_true(cond, if_true, if_false), codegen


@njit(cache=True)
def _fill_random(rand, seed, base, stop, shift):
    """rand[i - base] = (word W_0 of element i) >> shift for i in [base, stop), base % 4 == 0.

    Scalar: the 64x64->128-bit multiplies of Philox have no vector form. This loop bounds SR:
    20 dependent-chain mulx per block of 4 words, 2 to 3 ns per element on one core, against
    about 1 ns for the rest of SR. A separate Numba function: written into the pass-1 function,
    Numba's reference counting of the local buffer put an atomic increment and decrement around
    every Philox call (2x slower).
    """
    first = np.uint64(base // 4)
    for j in range(np.uint64((stop - base + 3) // 4)):
        w0, w1, w2, w3 = stream_block(seed, first + j, 0)
        k = j * np.uint64(4)
        rand[k] = w0 >> shift
        rand[k + np.uint64(1)] = w1 >> shift
        rand[k + np.uint64(2)] = w2 >> shift
        rand[k + np.uint64(3)] = w3 >> shift


def _fast_pass(mode, src, dst, base, stop, fast, a_lo, r_cap, seed):
    """Pass 1 over src[base:stop] into dst; returns whether any lane is left to pass 2.

    Callable from Numba code only, with `mode` a compile-time constant: compiled per (mode,
    carrier) from _make_fast_pass.
    """
    raise NotImplementedError("refsim.backends.cpu._fast_pass runs inside Numba kernels only")


@overload(_fast_pass, prefer_literal=True)
def _fast_pass_overload(mode, src, dst, base, stop, fast, a_lo, r_cap, seed):
    if not isinstance(mode, types.IntegerLiteral):
        return None
    utype = as_dtype(src.dtype).type
    return _make_fast_pass(mode.literal_value, utype, *_CARRIER[utype])


def _make_fast_pass(rounding, utype, c_man, c_bias):
    """The implementation of _fast_pass for one rounding mode and one carrier (the `mode`
    argument only selects it)."""
    U = utype
    W = 8 * np.dtype(utype).itemsize  # carrier width in bits
    ZERO, ONE, ALL_ONES = U(0), U(1), U(np.iinfo(utype).max)
    C_MAN = U(c_man)
    SIGN = U(1 << (W - 1))
    ABS = U(SIGN - ONE)
    MANT = U((1 << c_man) - 1)
    IMPLICIT = U(1 << c_man)
    INF = U((2 * c_bias + 1) << c_man)  # the smallest magnitude pattern that is not finite
    TOP_BITS = np.uint64(64 - W)  # SR uses at most W random bits: a word's top W bits
    W_U = U(W)
    MAX_SHIFT = U(W - 1)

    def fast_pass(mode, src, dst, base, stop, fast, a_lo, r_cap, seed):
        """a_lo: pass 1 takes the lanes whose |x| has the bit pattern a == 0 or a_lo <= a < INF.
        r_cap (SR only): min(sr_bits, W), or W for sr_bits=None. A quantum d >= 1 bits below x's
        last bit takes min(d, sr_bits) random bits: with sr_bits >= d the fraction is exact in
        sr_bits bits, which is the same as sr_bits=None. The kernel's a_lo leaves the lanes
        needing more than W bits to pass 2.
        """
        e_normal = fast[F_E_NORMAL]
        d_normal = fast[F_D_NORMAL]
        d_base = fast[F_D_BASE]
        max_pos = fast[F_MAX_POS]
        max_neg = fast[F_MAX_NEG]
        ovf_pos = fast[F_OVF_POS]
        ovf_neg = fast[F_OVF_NEG]
        zero_pos = fast[F_ZERO_POS]
        zero_neg = fast[F_ZERO_NEG]
        under_pos = fast[F_UNDER_POS]
        under_neg = fast[F_UNDER_NEG]
        qmin = fast[F_QMIN]
        if rounding == core.SR:
            rand = np.empty(CHUNK, U)  # the top W bits of each element's W_0
            _fill_random(rand, seed, base, stop, TOP_BITS)
        # max over the chunk of (0 if a == 0 else a - a_lo), a reduction LLVM vectorizes: some
        # lane is left to pass 2 iff it reaches INF - a_lo (one unsigned compare per lane).
        key_max = ZERO
        first = np.uint64(base)
        for i in range(first, np.uint64(stop)):
            x = src[i]
            sign = U(x & SIGN)
            negative = sign != ZERO
            a = U(x & ABS)
            e = U(a >> C_MAN)
            d = _select(e >= e_normal, d_normal, U(d_base - min(e, d_base)))
            dd = min(d, C_MAN)
            # Region A, d <= C_MAN: add an increment below the kept bits, then clear them; a
            # carry out of the significand runs into the exponent by itself.
            unit = U(ONE << dd)
            mask = U(unit - ONE)
            # Region B, d > C_MAN: |x| < 2^q, so n = 0 and the candidates are 0 and qmin = 2^q.
            region_b = d > C_MAN
            b_half = d == U(C_MAN + ONE)  # x in [2^(q-1), 2^q)
            if rounding == core.RNE:
                # half - 1 + (n odd): only a tie with n odd reaches the next multiple. n's last
                # bit is bit dd of a, or the implicit 1 at dd == C_MAN; `& mask` zeroes it at
                # dd == 0 (exact).
                odd = U(U(U(a | IMPLICIT) >> dd) & mask & ONE)
                inc = U(U(mask >> ONE) + odd)
                up_b = b_half & (U(a & MANT) != ZERO)
            elif rounding == core.RNA:
                inc = U(unit >> ONE)
                up_b = b_half
            elif rounding == core.RTZ:
                inc = ZERO
                up_b = False
            elif rounding == core.RUP:
                inc = _select(negative, ZERO, mask)
                up_b = ~negative
            elif rounding == core.RDN:
                inc = _select(negative, mask, ZERO)
                up_b = negative
            elif rounding == core.RTO:
                inc = ZERO  # truncate, then set n's last bit below
                up_b = True
            else:  # SR: random bits added below the kept bits, carry kept (docs/rounding.md)
                frac = _select(region_b, U(U(a & MANT) | IMPLICIT), U(a & mask))
                width = min(d, r_cap)
                frac = U(frac >> min(U(d - width), MAX_SHIFT))
                # width == 0 (exact lane): one random bit against frac == 0 never rounds up.
                drop = min(U(W_U - width), MAX_SHIFT)
                up_b = U(rand[i - first] >> drop) > U(U(ALL_ONES >> drop) - frac)
                inc = _select(up_b, unit, ZERO)
            magnitude = U(U(a + inc) & ~mask)
            if rounding == core.RTO:
                # Round to odd: set n's last bit when inexact (at dd == C_MAN, n = 1 already).
                inexact = (U(a & mask) != ZERO) & (dd != C_MAN)
                magnitude = U(magnitude | _select(inexact, unit, ZERO))
            magnitude = _select(region_b, _select(up_b, qmin, ZERO), magnitude)
            # Each special case overrides those above it: one compare and one select each.
            result = U(magnitude | sign)
            result = _select(magnitude == ZERO, _select(negative, under_neg, under_pos), result)
            limit = _select(negative, max_neg, max_pos)
            result = _select(magnitude > limit, _select(negative, ovf_neg, ovf_pos), result)
            result = _select(a == ZERO, _select(negative, zero_neg, zero_pos), result)
            dst[i] = result
            key_max = max(key_max, _select(a == ZERO, ZERO, U(a - a_lo)))
        return key_max >= U(INF - a_lo)

    return fast_pass


def _make_kernel(mode):
    @njit(parallel=True, cache=True)
    def quantize_flat(src, dst, c_man, c_bias, params, fast, overflow, sr_bits, seed):
        """dst[i] = round(src[i]) for 1-D carrier bit arrays (uint32 or uint64), C order."""
        U = src.dtype.type
        width = src.itemsize * 8
        abs_mask = U(U(U(1) << U(width - 1)) - U(1))
        inf = U(U(2 * c_bias + 1) << U(c_man))
        size = src.size
        n_chunks = (size + CHUNK - 1) // CHUNK
        use_fast = fast[F_ENABLED] != 0
        # Pass 1 takes the lanes with |x|'s pattern a == 0 or a_lo <= a < inf: e >= 1 (carrier
        # normals), and for SR without 1 <= sr_bits <= width also d <= width below the normal
        # range (d = d_base - e), so that `width` random bits are enough.
        e_lo = 1
        r_cap = width
        if mode == core.SR:
            if 1 <= sr_bits <= width:
                r_cap = sr_bits
            else:
                e_lo = max(e_lo, np.int64(fast[F_D_BASE]) - width)
        a_lo = U(U(e_lo) << U(c_man))
        span = U(inf - a_lo)
        for chunk in prange(n_chunks):
            base = chunk * CHUNK
            stop = min(base + CHUNK, size)
            if use_fast:
                left = _fast_pass(mode, src, dst, base, stop, fast, a_lo, U(r_cap), seed)
            else:
                left = True
            if left:
                block = np.int64(-1)  # SR: the Philox block in `words`
                words = (np.uint64(0), np.uint64(0), np.uint64(0), np.uint64(0))
                for i in range(base, stop):
                    bits = src[i]
                    a = U(bits & abs_mask)
                    if use_fast and (a == 0 or U(a - a_lo) < span):
                        continue
                    if mode == core.SR and i // 4 != block:
                        block = i // 4
                        words = stream_block(seed, block, 0)
                    dst[i] = core.quantize_bits(np.uint64(bits), c_man, c_bias, params, mode,
                                                overflow, sr_bits, words[i % 4], seed,
                                                np.int64(i))

    return quantize_flat


KERNELS = tuple(_make_kernel(mode) for mode in range(len(core.ROUNDING_NAMES)))
"""KERNELS[mode]: the quantize kernel specialized for one rounding mode."""
