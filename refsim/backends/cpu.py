"""CPU kernels: Numba njit(parallel=True) loops around the scalar core.

quantize runs in two passes over chunks of CHUNK elements:
1. a branch-free fast path that LLVM vectorizes, for the common lanes: a finite normal input of a
   format whose grid spacing at that input lies inside the carrier's mantissa (then rounding is
   "add an increment below the kept bits, clear them", and the carry runs into the exponent by
   itself), inputs below the smallest quantum (candidates 0 and that quantum), zeros and
   overflows, which are selects of constants;
2. every other lane (NaN, Inf, carrier subnormals, wrap-around fixed point, SR lanes that need
   more random bits than the carrier is wide) goes through refsim.core.quantize_bits, the scalar
   core shared with CUDA. Pass 1 counts such lanes per chunk, so pass 2 skips the chunks without
   any.
Random words: element i always takes word i % 4 of Philox block i // 4 (refsim.rng), so the bits
never depend on the thread count or on the chunking.

What keeps pass 1 vectorized, and in the widest lanes (each point measured: losing one costs
1.5x to 10x):
- Unsigned array indices. Numba wraps negative signed indices around, after which LLVM cannot
  prove the addresses consecutive: every load and store becomes a gather or a scatter.
- Arithmetic in the carrier's own width: uint32 lanes for float32, twice as many per vector as
  uint64. Numba widens every integer operation to 64 bits, so each result is cast back to the
  carrier type U, and every shift amount is bounded by a compile-time constant (min(d, C_MAN)),
  which lets LLVM narrow the operations back. Hence one pass-1 function per (mode, carrier), with
  the carrier's constants as closure constants.
- Selects, not conditional expressions (_select): Numba lowers `a if c else b` to branches, which
  LLVM if-converts into tangled predicate masks (1.4x the instructions).
- Per-call constants are unpacked into scalars before the loop, and the loop makes no calls:
  SR's Philox words come from a scalar loop that fills a per-chunk buffer first.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

from refsim import core
from refsim.params import CARRIERS
from refsim.rng import stream_block

CHUNK = 4096  # elements per parallel work item (a multiple of 4: whole Philox blocks)

# Layout of the fast-path constant tuple; every entry has the carrier's unsigned type.
(F_ENABLED, F_E_NORMAL, F_D_NORMAL, F_D_BASE, F_MAX_POS, F_MAX_NEG, F_OVF_POS, F_OVF_NEG,
 F_ZERO_POS, F_ZERO_NEG, F_UNDER_POS, F_UNDER_NEG, F_QMIN, F_NAN_ABOVE, F_NAN) = range(15)
N_FAST = 15

_UTYPE = {c_man: utype for c_man, _, utype in CARRIERS.values()}  # carrier type by c_man


def fast_constants(params, c_man, c_bias, mode, overflow):
    """Host-side constants of the fast path (F_* layout); disabled for wrap-around.

    d, the number of carrier significand bits below the format's quantum, is F_D_NORMAL where the
    carrier exponent field e >= F_E_NORMAL, and F_D_BASE - e below (subnormal grid, the smallest
    quantum of a format without subnormals, fixed point). A pattern x > F_NAN_ABOVE (negative
    nonzero into an unsigned format) gives NaN.
    """
    utype = _UTYPE[c_man]
    if overflow == core.OVF_WRAP:
        return tuple(utype(0) for _ in range(N_FAST))
    enc = core.encode_carrier
    nan = core.carrier_nan(c_man, c_bias)
    never = int(np.iinfo(utype).max)
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
                  0, 0, 0, 0, qmin, never, nan)
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
    sign_bit = 1 << (8 * np.dtype(utype).itemsize - 1)
    # Clamped at 0: a format whose emin lies below the carrier's normal range (no subnormals)
    # has its normal quantum at every carrier-normal input.
    values = (1, max(emin + c_bias, 0), c_man - man, max(c_man - m_sub + emin + c_bias, 0),
              max_pos, max_pos, overflow_bits(False), overflow_bits(True), zero_pos, zero_neg,
              under_pos, under_neg, qmin, never if signed else sign_bit, nan)
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

    Scalar: the 64x64->128-bit multiplies of Philox have no vector form. A separate function,
    because inlined into the vectorized loop's function, the stores into a local array around
    the Philox call got an atomic reference count increment and decrement per block.
    """
    first = np.uint64(base // 4)
    for j in range(np.uint64((stop - base + 3) // 4)):
        w0, w1, w2, w3 = stream_block(seed, first + j, 0)
        k = j * np.uint64(4)
        rand[k] = w0 >> shift
        rand[k + np.uint64(1)] = w1 >> shift
        rand[k + np.uint64(2)] = w2 >> shift
        rand[k + np.uint64(3)] = w3 >> shift


def _make_fast_pass(mode, utype, c_man, c_bias):
    """Pass 1 for one rounding mode and one carrier, both compile-time constants.

    Returns (fast_pass, in_fast_path); see their docstrings.
    """
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

    @njit(cache=True, inline="always")
    def in_fast_path(a, a_lo):
        """Does pass 1 round the lane whose |x| has the pattern a? Zeros and a_lo <= a < INF."""
        return (a == ZERO) | (U(a - a_lo) < U(INF - a_lo))

    @njit(cache=True)
    def fast_pass(src, dst, base, stop, fast, a_lo, r_cap, seed):
        """Round src[base:stop] into dst; returns the number of lanes left to pass 2.

        a_lo: see in_fast_path. r_cap (SR only): min(sr_bits, W), or W for sr_bits=None. A quantum
        d >= 1 bits below x's last bit takes min(d, sr_bits) random bits: with sr_bits >= d the
        fraction is exact in sr_bits bits, which is the same as sr_bits=None. The kernel's a_lo
        leaves the lanes needing more than W bits to pass 2.
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
        nan_above = fast[F_NAN_ABOVE]
        nan = fast[F_NAN]
        if mode == core.SR:
            rand = np.empty(CHUNK, U)  # the top W bits of each element's W_0
            _fill_random(rand, seed, base, stop, TOP_BITS)
        unhandled = ZERO
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
            if mode == core.RNE:
                # half - 1 + (n odd): only a tie with n odd reaches the next multiple. n's last
                # bit is bit dd of a, or the implicit 1 at dd == C_MAN; `& mask` zeroes it at
                # dd == 0 (exact).
                odd = U(U(U(a | IMPLICIT) >> dd) & mask & ONE)
                inc = U(U(mask >> ONE) + odd)
                up_b = b_half & (U(a & MANT) != ZERO)
            elif mode == core.RNA:
                inc = U(unit >> ONE)
                up_b = b_half
            elif mode == core.RTZ:
                inc = ZERO
                up_b = False
            elif mode == core.RUP:
                inc = _select(negative, ZERO, mask)
                up_b = ~negative
            elif mode == core.RDN:
                inc = _select(negative, mask, ZERO)
                up_b = negative
            elif mode == core.RTO:
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
            if mode == core.RTO:
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
            result = _select(x > nan_above, nan, result)
            dst[i] = result
            unhandled = U(unhandled + U(~in_fast_path(a, a_lo)))
        return unhandled

    return fast_pass, in_fast_path


def _make_carrier_kernel(mode, utype, c_man, c_bias):
    """The quantize kernel for one rounding mode and one carrier (uint32: float32 bits)."""
    U = utype
    W = 8 * np.dtype(utype).itemsize
    ABS = U((1 << (W - 1)) - 1)
    fast_pass, in_fast_path = _make_fast_pass(mode, utype, c_man, c_bias)
    NO_WORDS = (np.uint64(0),) * 4

    @njit(parallel=True, cache=True)
    def quantize_flat(src, dst, c_man, c_bias, params, fast, overflow, sr_bits, seed):
        """dst[i] = round(src[i]) for 1-D carrier bit arrays of type U, C order."""
        size = src.size
        n_chunks = (size + CHUNK - 1) // CHUNK
        use_fast = fast[F_ENABLED] != 0
        # Pass 1 takes the lanes with |x|'s pattern a == 0 or a_lo <= a < Inf: e >= 1 (carrier
        # normals), and for SR without 1 <= sr_bits <= W also d <= W below the normal range
        # (d = d_base - e), so that W random bits are enough.
        e_lo = 1
        r_cap = W
        if mode == core.SR:
            if 1 <= sr_bits <= W:
                r_cap = sr_bits
            else:
                e_lo = max(e_lo, np.int64(fast[F_D_BASE]) - W)
        a_lo = U(U(e_lo) << U(c_man))
        for chunk in prange(n_chunks):
            base = chunk * CHUNK
            stop = min(base + CHUNK, size)
            if use_fast:
                unhandled = fast_pass(src, dst, base, stop, fast, a_lo, U(r_cap), seed)
            else:
                unhandled = U(stop - base)
            if unhandled > 0:
                block = np.int64(-1)
                words = NO_WORDS
                for i in range(base, stop):
                    bits = src[i]
                    if use_fast and in_fast_path(U(bits & ABS), a_lo):
                        continue
                    if mode == core.SR and i // 4 != block:
                        block = i // 4
                        words = stream_block(seed, block, 0)
                    dst[i] = core.quantize_bits(np.uint64(bits), c_man, c_bias, params, mode,
                                                overflow, sr_bits, words[i % 4], seed,
                                                np.int64(i))

    quantize_flat.fast_pass = fast_pass  # the dispatcher whose loop is vectorized, to inspect
    return quantize_flat


def _make_kernel(mode):
    kernels = {np.dtype(utype).itemsize: _make_carrier_kernel(mode, utype, c_man, c_bias)
               for c_man, c_bias, utype in CARRIERS.values()}

    def quantize_flat(src, dst, c_man, c_bias, params, fast, overflow, sr_bits, seed):
        """dst[i] = round(src[i]) for 1-D carrier bit arrays (uint32 or uint64), C order."""
        kernels[src.itemsize](src, dst, c_man, c_bias, params, fast, overflow, sr_bits, seed)

    quantize_flat.by_itemsize = kernels  # the Numba dispatchers, e.g. for inspect_asm()
    return quantize_flat


KERNELS = tuple(_make_kernel(mode) for mode in range(len(core.ROUNDING_NAMES)))
"""KERNELS[mode](src, dst, ...): quantize specialized for one rounding mode; it picks the
kernel compiled for the carrier width of src (uint32 or uint64 bit patterns)."""
