"""CPU kernels: Numba njit(parallel=True) loops around the scalar core.

quantize runs in two passes over chunks of CHUNK elements:
1. a branch-free fast path that LLVM vectorizes, for the common lanes: a finite normal input of a
   float format whose grid spacing at that input lies inside the carrier's mantissa (then rounding
   is "clear the low d bits of the pattern, add one quantum if rounding up", and the carry runs
   into the exponent by itself), plus zeros and overflows, which are selects of constants;
2. every other lane (NaN, Inf, carrier subnormals, deep underflow, fixed point, formats without
   zero) goes through refsim.core.quantize_bits, the scalar core shared with CUDA. Pass 1 counts
   such lanes per chunk, so pass 2 skips the chunks without any.
Random words: element i always takes word i % 4 of Philox block i // 4 (refsim.rng), so the bits
never depend on the thread count or on the chunking.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from refsim import core
from refsim.rng import stream_block

CHUNK = 4096  # elements per parallel work item (a multiple of 4: whole Philox blocks)

# Layout of the fast-path constant tuple (int64; carrier bit patterns stored two's complement).
(F_ENABLED, F_FIXED, F_MAN, F_MSUB, F_EMIN, F_MAX_POS, F_MAX_NEG, F_OVF_POS, F_OVF_NEG,
 F_ZERO_POS, F_ZERO_NEG, F_UNDER_POS, F_UNDER_NEG, F_QMIN, F_NEG_NAN, F_NAN) = range(16)
N_FAST = 16


def _i64(pattern) -> int:
    value = int(pattern)
    return value - (1 << 64) if value >= 1 << 63 else value


def fast_constants(params, c_man, c_bias, mode, overflow):
    """Host-side constants of the fast path (F_* layout); disabled for wrap-around."""
    if overflow == core.OVF_WRAP:
        return (0,) * N_FAST
    enc = core.encode_carrier
    nan = core.carrier_nan(c_man, c_bias)
    is_fixed = params[core.P_KIND] == core.KIND_FIXED
    man = params[core.P_MAN]
    if is_fixed:
        width, signed = params[core.P_EMIN], params[core.P_SIGNED] != 0
        quantum = -man
        max_pos = enc(False, np.int64(params[core.P_MAX_N]), np.int64(quantum), c_man, c_bias)
        k_neg = (1 << (width - 1)) if signed else 0
        max_neg = enc(False, np.int64(k_neg), np.int64(quantum), c_man, c_bias)
        ovf_pos = max_pos
        ovf_neg = enc(k_neg != 0, np.int64(k_neg), np.int64(quantum), c_man, c_bias)
        zero_pos = zero_neg = under_pos = under_neg = np.uint64(0)
        qmin = enc(False, np.int64(1), np.int64(quantum), c_man, c_bias)
        return (1, 1, 0, 0, quantum, _i64(max_pos), _i64(max_neg), _i64(ovf_pos), _i64(ovf_neg),
                0, 0, 0, 0, _i64(qmin), 0, _i64(nan))
    emin, emax, max_n = params[core.P_EMIN], params[core.P_EMAX], params[core.P_MAX_N]
    max_pos = enc(False, np.int64(max_n), np.int64(emax - man), c_man, c_bias)

    def overflow_bits(negative):
        if core.overflow_to_max(mode, negative, overflow, params[core.P_SPECIALS]):
            return enc(negative, np.int64(max_n), np.int64(emax - man), c_man, c_bias)
        if params[core.P_SPECIALS] == core.SPECIALS_IEEE:
            return core.carrier_inf(negative, c_man, c_bias)
        return nan

    has_zero = params[core.P_ZERO] != 0
    keeps_sign = params[core.P_SIGNED] != 0 and params[core.P_SPECIALS] != core.SPECIALS_FNUZ
    m_sub = man if params[core.P_SUBNORMALS] != 0 else 0
    qmin = enc(False, np.int64(1), np.int64(emin - m_sub), c_man, c_bias)
    if has_zero:
        zero_pos, zero_neg = enc(False, 0, 0, c_man, c_bias), enc(keeps_sign, 0, 0, c_man, c_bias)
        under_pos, under_neg = zero_pos, zero_neg
    else:  # no zero: zero input is NaN, underflow is raised to the smallest value
        zero_pos = zero_neg = nan
        under_pos, under_neg = qmin, enc(True, np.int64(1), np.int64(emin - m_sub), c_man, c_bias)
    return (1, 0, man, m_sub, emin, _i64(max_pos), _i64(max_pos), _i64(overflow_bits(False)),
            _i64(overflow_bits(True)), _i64(zero_pos), _i64(zero_neg), _i64(under_pos),
            _i64(under_neg), _i64(qmin), int(params[core.P_SIGNED] == 0), _i64(nan))


def _make_fast_round(mode):
    """The branch-free fast path specialized for one rounding mode (a compile-time constant)."""

    @njit(cache=True, inline="always")
    def fast_round(bits, c_man, c_bias, fast, sr_bits, word):
        """Round one carrier pattern; returns (result pattern, handled). When handled is False
        the result is meaningless and the scalar core must be used."""
        one = np.uint64(1)
        zero = np.uint64(0)
        c_man_u = np.uint64(c_man)
        sign = bits & (one << (c_man_u + np.uint64(core.bit_length(c_bias) + 1)))
        negative = sign != zero
        a = bits ^ sign
        efield = np.int64(a >> c_man_u)
        top = efield - c_bias
        emin = fast[F_EMIN]
        # d: how many bits of the carrier significand lie below the format's quantum.
        if fast[F_FIXED] != 0:
            d = c_man + emin - top
        elif top >= emin:
            d = c_man - fast[F_MAN]
        else:
            d = c_man - fast[F_MSUB] + emin - top
        normal = (efield >= 1) & (efield <= 2 * c_bias)
        is_zero = a == zero
        if mode == core.SR:
            handled = normal & ((d <= c_man) | (d <= 64))
        else:
            handled = normal
        handled |= is_zero
        # Region A, d <= c_man: clear the low d bits; adding one quantum carries into the
        # exponent by itself. n = sig >> d is odd at d == c_man (the implicit bit).
        dd = np.uint64(min(max(d, np.int64(0)), np.int64(c_man)))
        unit = one << dd
        mask = unit - one
        rem = a & mask
        trunc = a & ~mask
        half = unit >> one
        inexact = rem != zero
        odd = (((a >> dd) & one) != zero) | (dd == c_man_u)
        # Region B, d > c_man: |x| < 2^q, so n = 0 and the candidates are 0 and 2^q_min.
        region_b = d > c_man
        mant_nonzero = (a & ((one << c_man_u) - one)) != zero
        b_half = d == c_man + 1  # x in [2^(q-1), 2^q)
        if mode == core.RNE:
            up_a = (rem > half) | ((rem == half) & inexact & odd)
            up_b = b_half & mant_nonzero
        elif mode == core.RNA:
            up_a = inexact & (rem >= half)
            up_b = b_half
        elif mode == core.RTZ:
            up_a = False
            up_b = False
        elif mode == core.RUP:
            up_a = inexact & ~negative
            up_b = ~negative
        elif mode == core.RDN:
            up_a = inexact & negative
            up_b = negative
        elif mode == core.RTO:
            up_a = False
            up_b = True
            trunc |= np.uint64(inexact & (dd != c_man_u)) << dd
        else:  # SR: random bits added below the kept bits, carry kept (docs/rounding.md)
            sig = (a & ((one << c_man_u) - one)) | (one << c_man_u)
            width = np.uint64(min(max(d, np.int64(1)), np.int64(64)))
            frac = sig if region_b else rem
            if sr_bits > 0:
                r = np.uint64(sr_bits)
                frac = (frac >> (width - r)) if width >= r else (frac << (r - width))
                width = r
            random = word >> (np.uint64(64) - width)
            limit = (one << width) - one if width < np.uint64(64) else ~zero
            up_a = inexact & (random > (limit - frac))
            up_b = random > (limit - frac)
        rounded_a = trunc + (np.uint64(up_a) << dd)
        under = np.uint64(fast[F_UNDER_NEG]) if negative else np.uint64(fast[F_UNDER_POS])
        magnitude = (np.uint64(fast[F_QMIN]) if up_b else zero) if region_b else rounded_a
        limit_bits = np.uint64(fast[F_MAX_NEG]) if negative else np.uint64(fast[F_MAX_POS])
        ovf = np.uint64(fast[F_OVF_NEG]) if negative else np.uint64(fast[F_OVF_POS])
        result = magnitude | sign
        result = under if magnitude == zero else result
        result = ovf if magnitude > limit_bits else result
        zero_result = np.uint64(fast[F_ZERO_NEG]) if negative else np.uint64(fast[F_ZERO_POS])
        result = zero_result if is_zero else result
        if fast[F_NEG_NAN] != 0 and negative and not is_zero:
            result = np.uint64(fast[F_NAN])
        return result, handled

    return fast_round


def _make_kernel(mode):
    fast_round = _make_fast_round(mode)

    @njit(parallel=True, cache=True)
    def quantize_flat(src, dst, c_man, c_bias, params, fast, overflow, sr_bits, seed):
        """dst[i] = round(src[i]) for 1-D carrier bit arrays (uint32 or uint64), C order."""
        size = src.size
        n_chunks = (size + CHUNK - 1) // CHUNK
        use_fast = fast[F_ENABLED] != 0
        for chunk in prange(n_chunks):
            base = chunk * CHUNK
            stop = min(base + CHUNK, size)
            # Only SR reads random words; the other modes get one dummy word.
            words = np.zeros(CHUNK if mode == core.SR else 1, np.uint64)
            lane_mask = CHUNK - 1 if mode == core.SR else 0
            if mode == core.SR:
                for block in range(base // 4, (stop + 3) // 4):
                    w0, w1, w2, w3 = stream_block(seed, block, 0)
                    k = block * 4 - base
                    words[k] = w0
                    words[k + 1] = w1
                    words[k + 2] = w2
                    words[k + 3] = w3
            count = 0
            if use_fast:
                for i in range(base, stop):
                    result, handled = fast_round(np.uint64(src[i]), c_man, c_bias, fast, sr_bits,
                                                 words[(i - base) & lane_mask])
                    dst[i] = result
                    count += 0 if handled else 1
            else:
                count = stop - base
            if count > 0:
                for i in range(base, stop):
                    bits = np.uint64(src[i])
                    if use_fast:
                        _, handled = fast_round(bits, c_man, c_bias, fast, sr_bits,
                                                words[(i - base) & lane_mask])
                        if handled:
                            continue
                    dst[i] = core.quantize_bits(bits, c_man, c_bias, params, mode, overflow,
                                                sr_bits, words[(i - base) & lane_mask], seed,
                                                np.int64(i))

    return quantize_flat


KERNELS = tuple(_make_kernel(mode) for mode in range(len(core.ROUNDING_NAMES)))
"""KERNELS[mode]: the quantize kernel specialized for one rounding mode."""
