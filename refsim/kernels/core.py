"""The scalar rounding core: integer operations on bit patterns, written once.

Every function here is a plain `numba.njit` function of integer scalars, so the same code is
compiled for the CPU (called from the njit(parallel) loops of refsim.backends.cpu) and for CUDA
(called from numba.cuda kernels). No NumPy calls, no allocation, no floating-point arithmetic:
a value is read from its carrier's bit pattern as (sign, integer significand, exponent), rounded
once on the integer significand, and written back as a bit pattern of the same carrier.

Semantics: docs/rounding.md. The executable specification it is tested against:
refsim.formats.exact.

Integer types: significands and exponents are int64 (significands are below 2^54 for floats);
random words and carrier bit patterns are uint64. Numba turns a mixed int64/uint64 expression into
float64, so every mixed operation below has an explicit cast.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from refsim.kernels.rng import family_word

# Rounding modes: the index of each name in refsim.formats.policy.ROUNDINGS.
RNE, RNA, RTZ, RUP, RDN, RTO, SR = 0, 1, 2, 3, 4, 5, 6
ROUNDING_NAMES = ("rne", "rna", "rtz", "rup", "rdn", "rto", "sr")  # == policy.ROUNDINGS
# Overflow policies: the index in refsim.formats.policy.OVERFLOWS.
OVF_DEFAULT, OVF_SATURATE, OVF_WRAP, OVF_SATFINITE = 0, 1, 2, 3
# Format kinds and FloatFormat.specials codes (refsim.params.format_params). The P3109 codes are
# the formats with p3109=True, converted by P3109's rules: finite domain (fnuz or unsigned fn),
# extended domain signed and unsigned (ext).
KIND_FLOAT, KIND_FIXED = 0, 1
SPECIALS_IEEE, SPECIALS_FN, SPECIALS_FNUZ, SPECIALS_NONE, SPECIALS_EXT = 0, 1, 2, 3, 4
SPECIALS_P3109_FINITE, SPECIALS_P3109_EXT, SPECIALS_P3109_EXT_U = 5, 6, 7

# SR variants (refsim.formats.policy.SR_VARIANTS): the quantize kernels take sr_bits = N |
# variant << SR_VARIANT_SHIFT (refsim.params.kernel_sr_bits); sr_round_up alone reads the variant.
SR_FLOOR, SR_HALF_UP, SR_HALF_EVEN, SR_HALF_ODD = 0, 1, 2, 3
SR_VARIANT_SHIFT = 8
SR_BITS_MASK = (1 << SR_VARIANT_SHIFT) - 1

# Layout of the int64 parameter tuple of a format (refsim.params builds it).
P_KIND, P_MAN, P_EMIN, P_EMAX, P_SUBNORMALS, P_ZERO, P_SIGNED, P_SPECIALS, P_MAX_N = range(9)
# For fixed point: P_MAN holds frac_bits, P_EMIN the code width in bits.
N_PARAMS = 9

_U64_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)


@njit(cache=True)
def bit_length(n):
    """Bit length (int64) of a non-negative int64 or any uint64 (0 for 0), by binary search (no
    clz needed)."""
    x = np.uint64(n)
    length = np.int64(0)
    for step in (32, 16, 8, 4, 2, 1):
        if x >= (_U1 << np.uint64(step)):
            x >>= np.uint64(step)
            length += step
    return length + (1 if x != np.uint64(0) else 0)


@njit(cache=True)
def low_mask(width):
    """uint64 with the low `width` bits set, 0 <= width <= 64."""
    if width >= 64:
        return _U64_ONES
    return (_U1 << np.uint64(width)) - _U1


@njit(cache=True)
def sr_round_up(rem, shift, sr_bits, word0, seed, index, tag):
    """Stochastic decision: does the magnitude round up?

    rem / 2^shift is the discarded fraction f (rem < 2^shift, rem > 0, shift >= 1). The hardware
    form: add random bits R below the kept bits, keep the carry: up iff R + F >= 2^width, with
    width = sr_bits (F = floor(f * 2^sr_bits)) or width = shift (F = rem, every discarded bit).
    In complement form, up iff C < F with C = (2^width - 1) - R = the complement of R's bits,
    compared 32 bits at a time, most significant first.

    The random bits u = 0.H_0 H_1 ... (docs/rounding.md) arrive from the top of word0: the
    stream's H_0 << 32 (index >= 0), and H_j for j >= 1 is drawn here only while the chunks tie
    (probability 2^-32 each), from family (0, tag) of the stream (kernels.rng.family_word: 0 for
    refsim.quantize, an accumulation tag for an output cast). Caller-given bits: index < 0 and
    word0 = R << (64 - sr_bits) holds all sr_bits <= 64 of them; nothing is drawn.
    """
    if sr_bits > 0:
        width = sr_bits & SR_BITS_MASK
        variant = sr_bits >> SR_VARIANT_SHIFT
        if shift >= width:
            drop = shift - width
            big_f = np.uint64(rem >> drop) if drop < 63 else np.uint64(0)
            if variant != SR_FLOOR and drop > 0 and sr_fraction_up(rem, drop, big_f, variant):
                if big_f == low_mask(width):
                    return True  # F = 2^width: F + R >= 2^width whatever R
                big_f += _U1
        else:
            big_f = np.uint64(rem) << np.uint64(width - shift)
    else:
        width = shift
        big_f = np.uint64(rem)
    return sr_compare(big_f, width, word0, seed, index, _U0, tag)


@njit(cache=True)
def sr_fraction_up(rem, drop, big_f, variant):
    """Does F = floor(rem / 2^drop) (drop >= 1; rem < 2^63) round up in the SR variant (half up,
    half to even, half to odd: refsim.formats.policy.SR_VARIANTS)?"""
    if drop >= 64:
        return False  # rem < 2^63 <= 2^(drop - 1): below one half
    half = _U1 << np.uint64(drop - 1)
    dropped = np.uint64(rem) & ((half << _U1) - _U1)
    if dropped != half:
        return dropped > half
    if variant == SR_HALF_UP:
        return True
    odd = (big_f & _U1) == _U1
    return odd if variant == SR_HALF_EVEN else not odd


@njit(cache=True)
def sr_compare(big_f, width, word0, seed, index, step, tag):
    """C < F over `width` bits, 32 at a time from the top: F = big_f (uint64; its bits above 64
    are zero when width > 64), C the complement of u's first `width` bits. u's bits arrive from
    the top of word0 (sr_round_up); H_j for j >= 1 is drawn only while the chunks tie, from the
    stream's family (step, tag) (kernels.rng.family_word), or, with index < 0 (caller-given bits,
    width <= 64), taken from word0's low half."""
    j = np.int64(0)
    word = word0
    while True:
        low = width - 32 * (j + 1)  # lowest bit position of this chunk within the width
        c_chunk = (~word) >> _U32  # the complement of the chunk's 32 random bits
        if low >= 0:
            f_chunk = (big_f >> np.uint64(low)) & _LOW32 if low < 64 else np.uint64(0)
        else:
            take = np.uint64(width - 32 * j)  # 1..31 bits left
            c_chunk = c_chunk >> (_U32 - take)
            f_chunk = big_f & ((_U1 << take) - _U1)
        if c_chunk < f_chunk:
            return True
        if c_chunk > f_chunk or low <= 0:
            return False
        j += 1
        if index < 0:
            word = np.uint64(word0) << _U32  # caller-given: R's bits 32..63 from the top
        else:
            word = family_word(seed, index, j, step, tag) << _U32


@njit(cache=True)
def rounds_up(mode, half_cmp, odd, negative):
    """Does a nonzero discarded fraction round the magnitude up, in rne, rna, rtz, rup or rdn?
    half_cmp: -1, 0 or 1 as the fraction is below, at or above one half; odd: the kept
    integer's last bit. rto and sr are decided by the callers (round_magnitude,
    refsim.kernels.accum_core.round_window_ev)."""
    if mode == RNE:
        return half_cmp > 0 or (half_cmp == 0 and odd)
    if mode == RNA:
        return half_cmp >= 0
    if mode == RUP:
        return not negative
    if mode == RDN:
        return negative
    return False


@njit(cache=True)
def round_magnitude(sig, shift, negative, mode, sr_bits, word0, seed, index, tag):
    """Round sig * 2^-shift to an integer n in `mode`; returns (n, inexact). SR: sr_round_up."""
    if shift <= 0:
        return sig << (-shift) if -shift < 63 else np.int64(0), False
    if shift < 63:
        n = sig >> shift
        rem = sig & ((np.int64(1) << shift) - 1)
        half = np.int64(1) << (shift - 1)
    else:
        n = np.int64(0)
        rem = sig
        half = np.int64(-1)  # stands for 2^(shift-1), larger than any sig: never reached
    if rem == 0:
        return n, False
    up = False
    if mode == RTO:
        n |= 1
    elif mode == SR:
        up = sr_round_up(rem, shift, sr_bits, word0, seed, index, tag)
    else:
        half_cmp = -1 if half < 0 or rem < half else (0 if rem == half else 1)
        up = rounds_up(mode, half_cmp, (n & 1) == 1, negative)
    return n + (1 if up else 0), True


@njit(cache=True)
def has_inf(specials):
    """Does a format of this specials code hold +-Inf?"""
    return (specials == SPECIALS_IEEE or specials == SPECIALS_EXT or specials == SPECIALS_P3109_EXT
            or specials == SPECIALS_P3109_EXT_U)


@njit(cache=True)
def keeps_negative_zero(specials):
    """Does a signed float format of this specials code have -0?"""
    return specials == SPECIALS_IEEE or specials == SPECIALS_FN or specials == SPECIALS_NONE


@njit(cache=True)
def overflow_to_max(mode, negative, overflow, specials):
    """True when an overflow gives +-max, False when it gives +-Inf (ieee, ext) or NaN (fn/fnuz).

    P3109 (Saturate, docs/rounding.md): the finite domain always saturates; the extended domain
    keeps +-max for rtz, rup/rdn toward zero, and rto only when unsigned.
    """
    if (overflow == OVF_SATURATE or overflow == OVF_SATFINITE or specials == SPECIALS_NONE
            or specials == SPECIALS_P3109_FINITE):
        return True
    if mode == RTO:
        return specials != SPECIALS_P3109_EXT
    if mode == RTZ:
        return True
    if mode == RUP:
        return negative
    if mode == RDN:
        return not negative
    return False


@njit(cache=True)
def encode_carrier(negative, n, q, c_man, c_bias):
    """Bit pattern (uint64) of (-1)^negative * n * 2^q in a binary carrier (float32/float64).

    The caller guarantees that the value is exact in the carrier. c_man: carrier mantissa bits;
    c_bias: carrier exponent bias.
    """
    sign = np.uint64(1) << np.uint64(c_man + bit_length(c_bias) + 1) if negative else np.uint64(0)
    if n == 0:
        return sign
    length = bit_length(n)
    top = q + length - 1
    if top >= 1 - c_bias:
        mant = np.uint64(n) << np.uint64(c_man - length + 1) if length <= c_man + 1 else (
            np.uint64(n) >> np.uint64(length - c_man - 1))
        mant &= low_mask(c_man)
        return sign | (np.uint64(top + c_bias) << np.uint64(c_man)) | mant
    return sign | (np.uint64(n) << np.uint64(q - (1 - c_bias - c_man)))


@njit(cache=True)
def carrier_nan(c_man, c_bias):
    """The positive quiet NaN of a carrier."""
    exp_all_ones = np.uint64(2 * c_bias + 1)
    return (exp_all_ones << np.uint64(c_man)) | (np.uint64(1) << np.uint64(c_man - 1))


@njit(cache=True)
def carrier_inf(negative, c_man, c_bias):
    exp_all_ones = np.uint64(2 * c_bias + 1)
    inf = exp_all_ones << np.uint64(c_man)
    if negative:
        inf |= np.uint64(1) << np.uint64(c_man + bit_length(c_bias) + 1)
    return inf


@njit(cache=True)
def quantize_bits_family(bits, c_man, c_bias, params, mode, overflow, sr_bits, word0, seed, index,
                         tag):
    """Round the carrier value with bit pattern `bits` (uint64) to the format `params`.

    Returns the result's bit pattern in the same carrier. c_man/c_bias describe the carrier
    (23/127 for float32, 52/1023 for float64). word0 holds the element's first random bits from
    the top (used by 'sr' only): H_0 << 32 for the stream, whose seed and index let a tie draw
    more (sr_round_up). Caller-given random bits R (sr_bits = r) arrive as word0 = R << (64 - r)
    with index < 0: only the top r bits of word0 are read and no further word is drawn. Further
    words come from the stream's family (0, tag) (kernels.rng.family_word): quantize_bits is tag 0.
    """
    c_exp_bits = bit_length(c_bias) + 1
    sign_shift = np.uint64(c_man + c_exp_bits)
    negative = (bits >> sign_shift) != 0
    efield = np.int64((bits >> np.uint64(c_man)) & low_mask(c_exp_bits))
    mfield = np.int64(bits & low_mask(c_man))
    c_efield_max = 2 * c_bias + 1
    kind = params[P_KIND]
    if efield == c_efield_max:
        if mfield != 0:
            return bits  # NaN in, NaN out (payload and sign kept)
        return infinity_result(negative, c_man, c_bias, params, mode, overflow)
    if efield == 0:
        if mfield == 0:
            return zero_result(negative, c_man, c_bias, params)
        sig = mfield
        lsb = 1 - c_bias - c_man
        top = lsb + bit_length(mfield) - 1
    else:
        sig = mfield | (np.int64(1) << c_man)
        lsb = efield - c_bias - c_man
        top = efield - c_bias
    if kind == KIND_FIXED:
        return _round_fixed(negative, sig, lsb, top, c_man, c_bias, params, mode, overflow,
                            sr_bits, word0, seed, index, tag)
    if negative and params[P_SIGNED] == 0:
        return unsigned_negative(c_man, c_bias, params)
    man = params[P_MAN]
    emin = params[P_EMIN]
    if top >= emin:
        q = top - man
    elif params[P_SUBNORMALS] != 0:
        q = emin - man
    else:
        q = emin
    # P3109 precision 1: rne's ties and rto go by the parity of the code of 2^q, its exponent
    # field q - emin + 1, not by n = 1. Where that code is even, round sig + 2^shift instead
    # (n + 1 = 2 is even, so the rule is the same) and take the 1 back.
    bump = (man == 0 and top >= emin and params[P_SPECIALS] >= SPECIALS_P3109_FINITE
            and (mode == RNE or mode == RTO) and (q - emin) % 2 == 1)
    if bump:
        sig += np.int64(1) << (q - lsb)
    n, _ = round_magnitude(sig, q - lsb, negative, mode, sr_bits, word0, seed, index, tag)
    if bump:
        n -= 1
    if n == 0:
        if params[P_ZERO] == 0:
            n = np.int64(1)  # no zero: underflow is raised to the smallest value 2^emin
            q = emin
        else:
            return zero_result(negative, c_man, c_bias, params)
    # Normalize a carry out of the top (n = 2^(man+1)) into the next binade.
    if n >> (man + 1) != 0:
        n >>= 1
        q += 1
    if exceeds_max(n, q, params):
        return overflow_result(negative, c_man, c_bias, params, mode, overflow)
    return encode_carrier(negative, n, q, c_man, c_bias)


@njit(cache=True)
def quantize_bits(bits, c_man, c_bias, params, mode, overflow, sr_bits, word0, seed, index):
    """quantize_bits_family in refsim.quantize's family of the stream (tag 0)."""
    return quantize_bits_family(bits, c_man, c_bias, params, mode, overflow, sr_bits, word0, seed,
                                index, _U0)


@njit(cache=True)
def exceeds_max(n, q, params):
    """Is n * 2^q (n >= 1, at most man+1 bits) larger than the format's max?"""
    man = params[P_MAN]
    emax = params[P_EMAX]
    length = bit_length(n)
    top = q + length - 1
    if top != emax:
        return top > emax
    # Same binade as max = max_n * 2^(emax - man): compare significands at that quantum.
    return (n << (man + 1 - length)) > params[P_MAX_N]


@njit(cache=True)
def zero_result(negative, c_man, c_bias, params):
    """The carrier bits of a result that is zero: the format's zero of that sign (+0 where it
    has no -0), NaN where the format has no zero."""
    if params[P_KIND] == KIND_FLOAT and params[P_ZERO] == 0:
        return carrier_nan(c_man, c_bias)
    keeps_sign = (params[P_KIND] == KIND_FLOAT and params[P_SIGNED] != 0
                  and keeps_negative_zero(params[P_SPECIALS]))
    return encode_carrier(negative and keeps_sign, np.int64(0), np.int64(0), c_man, c_bias)


@njit(cache=True)
def code_is_odd(n, q, top, params):
    """Is the code of the candidate n * 2^q odd (rne's ties, rto)? n's last bit, but in a P3109
    format of precision 1 (n = 1 from the smallest normal binade up, top >= emin) the exponent
    field q - emin + 1 of 2^q: P3109's CodeIsEven. quantize_bits_family's bump is the same rule
    for round_magnitude."""
    if (params[P_MAN] == 0 and params[P_SPECIALS] >= SPECIALS_P3109_FINITE
            and top >= params[P_EMIN]):
        return (q - params[P_EMIN]) % 2 == 0
    return (n & 1) == 1


@njit(cache=True)
def unsigned_negative(c_man, c_bias, params):
    """A negative nonzero input (-Inf included) of an unsigned float format: NaN, or +0 in a
    P3109 format (Saturate clamps to M_lo = 0)."""
    if params[P_SPECIALS] >= SPECIALS_P3109_FINITE:
        return encode_carrier(False, np.int64(0), np.int64(0), c_man, c_bias)
    return carrier_nan(c_man, c_bias)


@njit(cache=True)
def _max_bits(negative, c_man, c_bias, params):
    """+-max of a float format, in the carrier."""
    man = params[P_MAN]
    return encode_carrier(negative, params[P_MAX_N], params[P_EMAX] - man, c_man, c_bias)


@njit(cache=True)
def overflow_result(negative, c_man, c_bias, params, mode, overflow):
    """The carrier bits of a finite overflow: +-max (overflow_to_max), else +-Inf in ieee
    formats and NaN in the others."""
    if overflow_to_max(mode, negative, overflow, params[P_SPECIALS]):
        return _max_bits(negative, c_man, c_bias, params)
    if has_inf(params[P_SPECIALS]):
        return carrier_inf(negative, c_man, c_bias)
    return carrier_nan(c_man, c_bias)


@njit(cache=True)
def infinity_result(negative, c_man, c_bias, params, mode, overflow):
    """An infinite input: exact in ieee and ext formats (+-max under satfinite), an overflow
    elsewhere (P3109's finite domain: +-max whatever the mode)."""
    if params[P_KIND] == KIND_FIXED:
        if overflow == OVF_WRAP:
            return carrier_nan(c_man, c_bias)
        return _fixed_limit(negative, c_man, c_bias, params)
    if negative and params[P_SIGNED] == 0:
        return unsigned_negative(c_man, c_bias, params)
    if has_inf(params[P_SPECIALS]):
        if overflow == OVF_SATFINITE:
            return _max_bits(negative, c_man, c_bias, params)
        return carrier_inf(negative, c_man, c_bias)
    return overflow_result(negative, c_man, c_bias, params, mode, overflow)


@njit(cache=True)
def _fixed_limit(negative, c_man, c_bias, params):
    """The saturation value of a fixed-point format on the side of `negative`."""
    width = params[P_EMIN]
    signed = params[P_SIGNED] != 0
    if negative:
        k = (np.int64(1) << (width - 1)) if signed else np.int64(0)
    else:
        k = params[P_MAX_N]
    return encode_carrier(negative and k != 0, k, -params[P_MAN], c_man, c_bias)


@njit(cache=True)
def _round_fixed(negative, sig, lsb, top, c_man, c_bias, params, mode, overflow, sr_bits,
                 word0, seed, index, tag):
    """Fixed point: round to a multiple of 2^-frac_bits, then saturate or wrap."""
    frac = params[P_MAN]
    width = params[P_EMIN]
    signed = params[P_SIGNED] != 0
    q = -frac
    shift = q - lsb
    # |x| >= 2^(width + 1) * 2^q overflows whatever the rounding; the magnitude may not fit int64.
    huge = top - q >= width + 1
    if overflow != OVF_WRAP:
        if huge:
            return _fixed_limit(negative, c_man, c_bias, params)
        n, _ = round_magnitude(sig, shift, negative, mode, sr_bits, word0, seed, index, tag)
        limit = (np.int64(1) << (width - 1)) if (signed and negative) else params[P_MAX_N]
        if negative and not signed:
            limit = np.int64(0)
        if n > limit:
            return _fixed_limit(negative, c_man, c_bias, params)
        return encode_carrier(negative and n != 0, n, q, c_man, c_bias)
    # wrap: the rounded integer k = +-n reduced modulo 2^width (uint64 arithmetic wraps mod 2^64).
    if huge and shift <= 0:
        n_mod = np.uint64(sig) << np.uint64(-shift) if -shift < 64 else np.uint64(0)
    else:
        n, _ = round_magnitude(sig, shift, negative, mode, sr_bits, word0, seed, index, tag)
        n_mod = np.uint64(n)
    k_mod = (np.uint64(0) - n_mod) if negative else n_mod
    k_mod &= low_mask(width)
    if signed and (k_mod >> np.uint64(width - 1)) != 0:
        magnitude = np.int64((low_mask(width) - k_mod) + np.uint64(1))
        return encode_carrier(True, magnitude, q, c_man, c_bias)
    return encode_carrier(False, np.int64(k_mod), q, c_man, c_bias)
