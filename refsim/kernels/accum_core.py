"""The scalar accumulation core: exact add-and-round, and the orders built on it, written once.

Plain `numba.njit` functions of integer scalars (and, for the order loops, the operand arrays),
like kernels.core, so the same code is called from the CPU kernels of refsim.backends.cpu_exact
and from the numba.cuda kernels of refsim.backends.cuda. No NumPy calls except the small stack of
the pairwise order (which the CUDA kernels pass in as thread-local arrays: pairwise_with_c).

Values
------
An exact value is *unpacked* as (kind, negative, sig, exp): kind K_FIN, K_INF or K_NAN; for K_FIN
the value is (-1)^negative * sig * 2^exp with sig a uint64 (0 for a signed zero). Rounded values
travel as float64 bit patterns (uint64): every accumulator format is a subset of float64.

The primitive
-------------
`add_round_ev(x, y, spec, ...)` returns round(x + y), and its event, for two unpacked values
whose significands have at most 64 bits (an accumulator value, an exact product of two operands
whose significands total at most 64 bits, or a rounded product). Both are normalized to 64-bit
significands; the larger one A is placed in bits 63..126 of a two-word window W = (hi, lo), so
the sum never carries out of 128 bits; the smaller one B is shifted right into the window by the
exponent difference. Bits of B that fall below the window form the *tail* t (0 < t < 1 window
units), kept exactly as an integer T with t = T / 2^tl:
  - same signs: W = A + floor(B), the exact sum is W + t (tail kind ADD);
  - opposite signs: the exact difference is A - floor(B) - t = (W - 1) + (1 - t) with W = A -
    floor(B): the borrow is taken from W and the tail becomes 1 - t (kind SUB), whose bits are
    the two's complement of T.
A tail exists only when B lies more than 63 bits below A; then W has at least 127 bits and the
format keeps at most 53, so at least 73 bits of W are discarded: every mode but sr decides from
W's discarded bits plus "the tail is nonzero" (a sticky bit). sr with sr_bits=None compares the
random bits with the discarded fraction 64 bits at a time and reads the tail's exact bits only
when all of the window's discarded bits tie (probability 2^-73 or less). So every mode is
correctly rounded from the exact sum, with the rules of docs/rounding.md.

Random words
------------
The rounding that step `step` of family `tag` performs for output element `index` (flat C-order
index of the output) under `seed` reads the 32-bit words
    H_j = bits 32*(index % 2) .. +31 of
          philox4x64_10(counter=(index // 8 + 1, j, step, tag), key=(seed, 0))[(index // 2) % 4],
that is of np.random.Philox(key=seed, counter=index // 8 + (j << 64) + (step << 128) +
(tag << 192)).random_raw(4)[(index // 2) % 4], low half first (refsim.kernels.rng's layout).
tag >= 1, so these never coincide with refsim.quantize's words (counter words 2 and 3 zero). The
tags are the TAG_* constants; the steps are given by each order (docs/accumulation.md).

Integer types: uint64 for significands, window words and random words; int64 for exponents,
shifts and counts; every mixed operation is cast explicitly (Numba turns uint64-with-int64 into
float64).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from refsim.kernels import core
from refsim.kernels.rng import family_word

# Kinds of unpacked values.
K_FIN, K_INF, K_NAN = 0, 1, 2
# Kinds of tail below the window.
TAIL_NONE, TAIL_ADD, TAIL_SUB = 0, 1, 2
# A rounding spec is the format's params (refsim.kernels.core.P_* layout) followed by these three.
S_MODE, S_OVF, S_SRB = core.N_PARAMS, core.N_PARAMS + 1, core.N_PARAMS + 2
N_SPEC = core.N_PARAMS + 3
# Families of rounding operations (counter word 3 of the random stream).
TAG_ADD, TAG_PRODUCT, TAG_OUTER, TAG_KAHAN_Y, TAG_KAHAN_D, TAG_KAHAN_C, TAG_OUT = range(1, 8)
# The int64 tuple `mt` of order parameters every order function takes (MT_* layout): multiterm's
# group, width, variant (the index in refsim.specs.MULTITERM_VARIANTS), alignment, truncation,
# input flushing and operand emin, (chunked and multiterm) where the initial value C enters, the
# late accumulator's late_bits (0: none), late_norm_bits, late truncation, c_cutoff (-1: none)
# and interleave (1: none), and chunked's pairwise chunks.
MT_EXCLUDED, MT_ALIGNED = 0, 1
MT_GROUP, MT_WIDTH, MT_VARIANT, MT_ALIGN, MT_TRUNC, MT_FLUSH, MT_EMIN, MT_C_OUTER = range(8)
(MT_LATE_BITS, MT_LATE_NORM, MT_LATE_TRUNC, MT_CUTOFF, MT_INTERLEAVE,
 MT_CHUNK_PAIRWISE) = range(8, 14)
N_MT = 14
# Alignment exponents (refsim.specs.MULTITERM_ALIGNS) and truncations (MULTITERM_TRUNCATIONS).
ALIGN_NORMALIZED, ALIGN_PRODUCT = 0, 1
TRUNC_ZERO, TRUNC_FLOOR = 0, 1
NO_EMIN = -(1 << 40)  # mt[MT_EMIN] when no operand format is given: no exponent is clamped
# Events of one rounding (the *_ev functions) and the counts triple (overflow, underflow,
# saturation) every order function returns with its bits.
EV_NONE, EV_OVERFLOW, EV_SATURATE, EV_UNDERFLOW = 0, 1, 2, 3
CNT_OVERFLOW, CNT_UNDERFLOW, CNT_SATURATION = 0, 1, 2

C_MAN, C_BIAS = 52, 1023  # results are float64 bit patterns
PAIRWISE_STACK = 64  # levels of the pairwise stack: enough for 2^63 terms

_U0 = np.uint64(0)
_U1 = np.uint64(1)
_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_LOW32 = np.uint64(0xFFFFFFFF)
_MANT = np.uint64(0xFFFFFFFFFFFFF)
_I0 = np.int64(0)


# ---- unsigned helpers ---------------------------------------------------------------------------
@njit(cache=True)
def bitlen128(hi, lo):
    if hi != _U0:
        return 64 + core.bit_length(hi)
    return core.bit_length(lo)


@njit(cache=True)
def bits64(hi, lo, s):
    """Bits s .. s+63 of the 128-bit integer (hi, lo) as a uint64; bits outside 0..127 are 0."""
    if s >= 128 or s <= -64:
        return _U0
    if s >= 64:
        return hi >> np.uint64(s - 64)
    if s > 0:
        return (lo >> np.uint64(s)) | (hi << np.uint64(64 - s))
    if s == 0:
        return lo
    return lo << np.uint64(-s)


@njit(cache=True)
def low_bits128(hi, lo, s):
    """(hi, lo) mod 2^s, s >= 0."""
    if s >= 128:
        return hi, lo
    if s >= 64:
        return hi & core.low_mask(s - 64), lo
    return _U0, lo & core.low_mask(s)


@njit(cache=True)
def compare128(ahi, alo, bhi, blo):
    """-1, 0 or 1 as (ahi, alo) <, == or > (bhi, blo)."""
    if ahi != bhi:
        return -1 if ahi < bhi else 1
    if alo != blo:
        return -1 if alo < blo else 1
    return 0


# ---- random words -------------------------------------------------------------------------------
@njit(cache=True)
def accum_word(seed, index, step, tag, j):
    """Word H_j (32 bits, as a uint64 below 2^32) of rounding `step` of family `tag` for output
    element `index` (module doc)."""
    return family_word(seed, index, j, step, tag)


# ---- unpacking and exact products ---------------------------------------------------------------
@njit(cache=True)
def unpack_f64(bits):
    """(kind, negative, sig, exp) of a float64 bit pattern."""
    bits = np.uint64(bits)
    negative = (bits >> np.uint64(63)) != _U0
    efield = np.int64((bits >> np.uint64(52)) & np.uint64(0x7FF))
    mant = bits & _MANT
    if efield == 2047:
        return (K_NAN if mant != _U0 else K_INF), negative, _U0, _I0
    if efield == 0:
        return K_FIN, negative, mant, np.int64(-1074)
    return K_FIN, negative, mant | (_U1 << np.uint64(52)), efield - 1075


@njit(cache=True)
def mul_exact(xbits, ybits):
    """The exact product of two float64 bit patterns, unpacked (IEEE specials and zero signs).

    Precondition: the two significands, with trailing zeros removed, total at most 64 bits
    (refsim.backends.kernel_args.check_products).
    """
    xk, xn, xs, xe = unpack_f64(xbits)
    yk, yn, ys, ye = unpack_f64(ybits)
    negative = xn != yn
    if xk == K_NAN or yk == K_NAN:
        return K_NAN, False, _U0, _I0
    if xk == K_INF or yk == K_INF:
        if (xk == K_FIN and xs == _U0) or (yk == K_FIN and ys == _U0):
            return K_NAN, False, _U0, _I0  # 0 * Inf
        return K_INF, negative, _U0, _I0
    if xs == _U0 or ys == _U0:
        return K_FIN, negative, _U0, _I0
    tx = core.bit_length(xs & (~xs + _U1)) - 1  # trailing zeros
    ty = core.bit_length(ys & (~ys + _U1)) - 1
    return K_FIN, negative, (xs >> np.uint64(tx)) * (ys >> np.uint64(ty)), xe + tx + ye + ty


# ---- rounding a window ---------------------------------------------------------------------------
@njit(cache=True)
def tail_bits64(tail, tt, tl, s):
    """Bits of the tail at window positions s .. s+63 (all negative positions hold the tail).

    The tail integer TI has tl bits: T (ADD) or 2^tl - T (SUB: ones above bit 63, the two's
    complement of T below); window position b holds TI's bit b + tl.
    """
    if tail == TAIL_NONE:
        return _U0
    k0 = s + tl
    if tail == TAIL_ADD:
        word = bits64(_U0, tt, k0)
    elif k0 >= 64:
        word = _ONES
    else:
        word = bits64(_ONES, ~tt + _U1, k0)
    keep = tl - k0  # bits of this word below position tl (below the window)
    if keep <= 0:
        return _U0
    if keep >= 64:
        return word
    return word & core.low_mask(keep)


@njit(cache=True)
def sr_up(rhi, rlo, shift, tail, tt, tl, sr_bits, seed, index, step, tag):
    """Stochastic decision for the discarded fraction f = (rem + tail) / 2^shift.

    rem = (rhi, rlo) < 2^shift. sr_bits = r > 0: up iff floor(u 2^r) + floor(f 2^r) >= 2^r (a
    tail exists only when shift >= 73 > r, so floor(f 2^r) comes from rem alone). sr_bits = 0:
    up iff u + f >= 1. Either way up iff C < F with C the complement of u's bits over F's width,
    compared 32 bits at a time from the top, one word H_j per chunk, drawn only while the chunks
    tie: for sr_bits > 0 by refsim.kernels.core.sr_compare (quantize's comparison, with this
    rounding's family), for sr_bits = 0 below, where F runs on into the window and the tail.
    """
    if sr_bits > 0:
        if shift >= sr_bits:
            big_f = bits64(rhi, rlo, shift - sr_bits)
        else:
            big_f = rlo << np.uint64(sr_bits - shift)
        return core.sr_compare(big_f, np.int64(sr_bits),
                               accum_word(seed, index, step, tag, 0) << np.uint64(32), seed,
                               np.int64(index), step, tag)
    end = -tl if tail != TAIL_NONE else _I0
    j = np.int64(0)
    while True:
        s = shift - 32 * (j + 1)  # window position of this chunk's lowest bit
        f_chunk = (bits64(rhi, rlo, s) | tail_bits64(tail, tt, tl, s)) & _LOW32
        c_chunk = accum_word(seed, index, step, tag, j) ^ _LOW32
        if c_chunk < f_chunk:
            return True
        if c_chunk > f_chunk or s <= end:
            return False
        j += 1


@njit(cache=True)
def round_window_ev(negative, hi, lo, e, tail, tt, tl, spec, seed, index, step, tag):
    """Round (-1)^negative * (W + tail) * 2^e to the float format of `spec`: (float64 bits, event).

    W = (hi, lo) > 0; the tail (kind, T, tl) is described in the module doc. `spec`: the format's
    params followed by mode, overflow and sr_bits (S_* layout). The event: EV_OVERFLOW (the
    rounded magnitude exceeds max; result Inf or NaN), EV_SATURATE (the same, result +-max),
    EV_UNDERFLOW (the nonzero value rounded to zero) or EV_NONE.
    """
    mode = spec[S_MODE]
    if negative and spec[core.P_SIGNED] == 0:
        return core.unsigned_negative(C_MAN, C_BIAS, spec), EV_NONE
    man = spec[core.P_MAN]
    emin = spec[core.P_EMIN]
    top = e + bitlen128(hi, lo) - 1
    if top >= emin:
        q = top - man
    elif spec[core.P_SUBNORMALS] != 0:
        q = emin - man
    else:
        q = emin
    shift = q - e
    if shift <= 0:
        n = np.int64(lo) << (-shift)  # exact: W has at most man + 1 + shift bits
    else:
        n = np.int64(bits64(hi, lo, shift))  # floor(W / 2^shift) < 2^(man + 2)
        rhi, rlo = low_bits128(hi, lo, shift)
        if rhi != _U0 or rlo != _U0 or tail != TAIL_NONE:
            if shift - 1 >= 128:
                half_cmp = -1
            elif shift - 1 >= 64:
                half_cmp = compare128(rhi, rlo, _U1 << np.uint64(shift - 65), _U0)
            else:
                half_cmp = compare128(rhi, rlo, _U0, _U1 << np.uint64(shift - 1))
            if half_cmp == 0 and tail != TAIL_NONE:
                half_cmp = 1  # rem = half plus a nonzero tail
            up = False
            odd = core.code_is_odd(n, q, top, spec)  # n's last bit (P3109 precision 1: 2^q's)
            if mode == core.RTO:
                up = not odd
            elif mode == core.SR:
                up = sr_up(rhi, rlo, shift, tail, tt, tl, spec[S_SRB], seed, index, step, tag)
            else:
                up = core.rounds_up(mode, half_cmp, odd, negative)
            if up:
                n += 1
    if n == 0:
        if spec[core.P_ZERO] == 0:
            n = np.int64(1)  # no zero: raised to the smallest value 2^emin
            q = emin
        else:
            return core.zero_result(negative, C_MAN, C_BIAS, spec), EV_UNDERFLOW
    if (n >> (man + 1)) != 0:  # a carry into the next binade
        n >>= 1
        q += 1
    if core.exceeds_max(n, q, spec):
        ev = EV_SATURATE if core.overflow_to_max(mode, negative, spec[S_OVF],
                                                 spec[core.P_SPECIALS]) else EV_OVERFLOW
        return core.overflow_result(negative, C_MAN, C_BIAS, spec, mode, spec[S_OVF]), ev
    return core.encode_carrier(negative, n, q, C_MAN, C_BIAS), EV_NONE


@njit(cache=True)
def round_unpacked_ev(kind, negative, sig, exp, spec, seed, index, step, tag):
    """Round one exact unpacked value (sig < 2^64) to `spec`: (float64 bits, event).

    Events come from finite nonzero values only (an infinite input is not an overflow)."""
    if kind == K_NAN:
        return core.carrier_nan(C_MAN, C_BIAS), EV_NONE
    if kind == K_INF:
        return (core.infinity_result(negative, C_MAN, C_BIAS, spec, spec[S_MODE], spec[S_OVF]),
                EV_NONE)
    if sig == _U0:
        return core.zero_result(negative, C_MAN, C_BIAS, spec), EV_NONE
    return round_window_ev(negative, _U0, sig, exp, TAIL_NONE, _U0, _I0, spec, seed, index, step,
                           tag)


@njit(cache=True)
def round_unpacked(kind, negative, sig, exp, spec, seed, index, step, tag):
    """Round one exact unpacked value (sig < 2^64) to `spec`; float64 bits."""
    return round_unpacked_ev(kind, negative, sig, exp, spec, seed, index, step, tag)[0]


@njit(cache=True)
def add_round_ev(xk, xn, xs, xe, yk, yn, ys, ye, spec, seed, index, step, tag):
    """round(x + y) for two exact unpacked values (sig < 2^64 each): (float64 bits, event).

    IEEE rules for specials: NaN in, NaN out; Inf + -Inf = NaN; Inf + finite = Inf (then the
    format's policy for an infinite value). An exact zero sum of nonzero operands, or of zeros of
    opposite signs, is +0 (-0 under rdn); zeros of one sign sum to that zero. Events come from a
    finite nonzero exact sum only (round_window_ev).
    """
    mode = spec[S_MODE]
    if xk == K_NAN or yk == K_NAN:
        return core.carrier_nan(C_MAN, C_BIAS), EV_NONE
    if xk == K_INF or yk == K_INF:
        if xk == K_INF and yk == K_INF and xn != yn:
            return core.carrier_nan(C_MAN, C_BIAS), EV_NONE
        negative = xn if xk == K_INF else yn
        return core.infinity_result(negative, C_MAN, C_BIAS, spec, mode, spec[S_OVF]), EV_NONE
    if xs == _U0 and ys == _U0:
        negative = xn if xn == yn else mode == core.RDN
        return core.zero_result(negative, C_MAN, C_BIAS, spec), EV_NONE
    if xs == _U0:
        return round_window_ev(yn, _U0, ys, ye, TAIL_NONE, _U0, _I0, spec, seed, index, step,
                               tag)
    if ys == _U0:
        return round_window_ev(xn, _U0, xs, xe, TAIL_NONE, _U0, _I0, spec, seed, index, step,
                               tag)
    # Normalize both significands to 64 bits, then make x the larger magnitude.
    lx = core.bit_length(xs)
    xs <<= np.uint64(64 - lx)
    xe -= 64 - lx
    ly = core.bit_length(ys)
    ys <<= np.uint64(64 - ly)
    ye -= 64 - ly
    if ye > xe or (ye == xe and ys > xs):
        xn, xs, xe, yn, ys, ye = yn, ys, ye, xn, xs, xe
    d = xe - ye
    # A in window bits 63..126; the window's bit 0 has exponent e.
    hi = xs >> np.uint64(1)
    lo = (xs & _U1) << np.uint64(63)
    e = xe - 63
    tail = TAIL_NONE
    tt = _U0
    tl = _I0
    if d <= 63:
        s = 63 - d  # B's left shift into the window
        bhi = (ys >> np.uint64(64 - s)) if s > 0 else _U0
        blo = ys << np.uint64(s)
    else:
        r = d - 63  # B's right shift: its low r bits fall below the window
        bhi = _U0
        if r < 64:
            blo = ys >> np.uint64(r)
            tt = ys & core.low_mask(r)
        else:
            blo = _U0
            tt = ys
        if tt != _U0:
            tail = TAIL_ADD
            tl = r
    if xn == yn:
        new_lo = lo + blo
        carry = _U1 if new_lo < lo else _U0
        hi = hi + bhi + carry
        lo = new_lo
    else:
        new_lo = lo - blo
        borrow = _U1 if lo < blo else _U0
        hi = hi - bhi - borrow
        lo = new_lo
        if tail != TAIL_NONE:  # (W - 1) + (1 - t)
            borrow = _U1 if lo == _U0 else _U0
            lo -= _U1
            hi -= borrow
            tail = TAIL_SUB
        elif hi == _U0 and lo == _U0:
            return core.zero_result(mode == core.RDN, C_MAN, C_BIAS, spec), EV_NONE
    return round_window_ev(xn, hi, lo, e, tail, tt, tl, spec, seed, index, step, tag)


@njit(cache=True)
def tally(cnt, ev):
    """The counts triple (overflow, underflow, saturation) after one more event; a saturation
    is also an overflow."""
    over, under, sat = cnt
    if ev == EV_OVERFLOW:
        over += 1
    elif ev == EV_SATURATE:
        over += 1
        sat += 1
    elif ev == EV_UNDERFLOW:
        under += 1
    return over, under, sat


# ---- terms and orders ----------------------------------------------------------------------------
# Every order function returns (float64 bits, counts) with counts the triple (overflow,
# underflow, saturation) of the events of its accumulator roundings (inner and outer; not the
# product or output roundings). An initial value C (refsim.accumulate's c=) reaches them as
# (has_c, cbits): a flag and C's float64 bits, taken exactly (never rounded on entry).
_CNT0 = (_I0, _I0, _I0)


@njit(cache=True)
def term(a, b, has_b, p, m, n, k, prod_on, pspec, seed, index):
    """Term k of output (p, m, n): a[p, m, k] * b[p, n, k] exactly (or a[p, m, k] alone), then
    rounded to the product spec when prod_on (step k, TAG_PRODUCT). Arrays hold float64 bits."""
    if has_b:
        kind, negative, sig, exp = mul_exact(a[p, m, k], b[p, n, k])
    else:
        kind, negative, sig, exp = unpack_f64(a[p, m, k])
    if prod_on:
        bits = round_unpacked(kind, negative, sig, exp, pspec, seed, index, k, TAG_PRODUCT)
        return unpack_f64(bits)
    return kind, negative, sig, exp


@njit(cache=True)
def round_initial(cbits, spec, seed, index, step, tag, cnt):
    """round(C) alone (an empty reduction that starts from C): (float64 bits, counts)."""
    ck, cn, cs, ce = unpack_f64(np.uint64(cbits))
    bits, ev = round_unpacked_ev(ck, cn, cs, ce, spec, seed, index, step, tag)
    return bits, tally(cnt, ev)


@njit(cache=True)
def reduce_sequential(a, b, has_b, p, m, n, k0, k1, has_init, init, spec, prod_on, pspec, seed,
                      index):
    """s = round(t_k0); s = round(s + t_k) for k = k0+1 .. k1-1 (step k); +0 when empty.
    With has_init, s starts as the exact value `init` (float64 bits): s = round(s + t_k) for
    k = k0 .. k1-1, and round(init) (step k0) when empty."""
    if has_init:
        if k1 <= k0:
            return round_initial(init, spec, seed, index, k0, TAG_ADD, _CNT0)
        acc = np.uint64(init)
        cnt = _CNT0
        start = k0
    else:
        if k1 <= k0:
            return core.zero_result(False, C_MAN, C_BIAS, spec), _CNT0
        tk, tn, ts, te = term(a, b, has_b, p, m, n, k0, prod_on, pspec, seed, index)
        acc, ev = round_unpacked_ev(tk, tn, ts, te, spec, seed, index, k0, TAG_ADD)
        cnt = tally(_CNT0, ev)
        start = k0 + 1
    for k in range(start, k1):
        tk, tn, ts, te = term(a, b, has_b, p, m, n, k, prod_on, pspec, seed, index)
        ak, an, asig, ae = unpack_f64(acc)
        acc, ev = add_round_ev(ak, an, asig, ae, tk, tn, ts, te, spec, seed, index, k, TAG_ADD)
        cnt = tally(cnt, ev)
    return acc, cnt


@njit(cache=True)
def promote(outer, first, c, s, ospec, seed, index, cnt):
    """Chunk c's result s into the outer accumulator: o = round_o(s) when `first` (o holds
    nothing yet), else o = round_o(o + s) (step c, TAG_OUTER). Returns (o, counts)."""
    sk, sn, ss, se = unpack_f64(s)
    if first:
        outer, ev = round_unpacked_ev(sk, sn, ss, se, ospec, seed, index, c, TAG_OUTER)
    else:
        ok, on, osig, oe = unpack_f64(outer)
        outer, ev = add_round_ev(ok, on, osig, oe, sk, sn, ss, se, ospec, seed, index, c,
                                 TAG_OUTER)
    return outer, tally(cnt, ev)


@njit(cache=True)
def reduce_chunked(a, b, has_b, p, m, n, nk, chunk, has_c, cbits, c_outer, spec, ospec, prod_on,
                   pspec, seed, index):
    """Chunk c (terms c*chunk ..) summed sequentially in spec; o = round_o(s_0), then
    o = round_o(o + s_c) (step c, TAG_OUTER); +0 in the outer format when empty. C starts the
    first chunk's sum (c_outer false) or the outer sum (o = round_o(C + s_0)); with no terms,
    round_o(C) (step 0, TAG_OUTER)."""
    if nk <= 0:
        if has_c:
            return round_initial(cbits, ospec, seed, index, 0, TAG_OUTER, _CNT0)
        return core.zero_result(False, C_MAN, C_BIAS, ospec), _CNT0
    into_outer = has_c and c_outer
    outer = np.uint64(cbits) if into_outer else _U0
    first = not into_outer
    cnt = _CNT0
    c = np.int64(0)
    for k0 in range(0, nk, chunk):
        k1 = min(k0 + chunk, nk)
        s, inner = reduce_sequential(a, b, has_b, p, m, n, k0, k1,
                                     has_c and not c_outer and c == 0, cbits, spec, prod_on,
                                     pspec, seed, index)
        cnt = (cnt[0] + inner[0], cnt[1] + inner[1], cnt[2] + inner[2])
        outer, cnt = promote(outer, first, c, s, ospec, seed, index, cnt)
        first = False
        c += 1
    return outer, cnt


@njit(cache=True)
def chunked_pairwise(kinds, negs, sigs, exps, sizes, a, b, has_b, p, m, n, nk, chunk, has_c,
                     cbits, c_outer, spec, ospec, prod_on, pspec, seed, index):
    """reduce_chunked with every chunk summed by the pairwise tree (pairwise_range, steps from
    the chunk's first term), on a caller's stack (chunk_order='pairwise')."""
    if nk <= 0:
        if has_c:
            return round_initial(cbits, ospec, seed, index, 0, TAG_OUTER, _CNT0)
        return core.zero_result(False, C_MAN, C_BIAS, ospec), _CNT0
    into_outer = has_c and c_outer
    outer = np.uint64(cbits) if into_outer else _U0
    first = not into_outer
    cnt = _CNT0
    c = np.int64(0)
    for k0 in range(0, nk, chunk):
        k1 = min(k0 + chunk, nk)
        s, inner = pairwise_range(kinds, negs, sigs, exps, sizes, a, b, has_b, p, m, n, k0,
                                  k1 - k0, has_c and not c_outer and c == 0, cbits, spec,
                                  prod_on, pspec, seed, index)
        cnt = (cnt[0] + inner[0], cnt[1] + inner[1], cnt[2] + inner[2])
        outer, cnt = promote(outer, first, c, s, ospec, seed, index, cnt)
        first = False
        c += 1
    return outer, cnt


@njit(cache=True)
def reduce_pairwise(a, b, has_b, p, m, n, nk, has_c, cbits, spec, prod_on, pspec, seed, index):
    """The fixed tree of docs/accumulation.md: a subtree of n terms is (left) + (right) with the
    left part the largest power of two below n. Computed as a binary counter: each term is pushed
    unrounded; while the two top entries hold equally many terms they are merged; at the end the
    remaining entries are merged from the top (right) down. Merge number i (in this order, which
    is the tree's post-order) is step i; one term alone is round(t_0), step 0. With C: round(C +
    T), T the tree's root (t_0 itself, unrounded, for one term), step K - 1; round(C) alone for
    K = 0."""
    return pairwise_with_c(np.empty(PAIRWISE_STACK, np.int64), np.empty(PAIRWISE_STACK, np.bool_),
                           np.empty(PAIRWISE_STACK, np.uint64), np.empty(PAIRWISE_STACK, np.int64),
                           np.empty(PAIRWISE_STACK, np.int64), a, b, has_b, p, m, n, nk, has_c,
                           cbits, spec, prod_on, pspec, seed, index)


@njit(cache=True)
def pairwise_with_c(kinds, negs, sigs, exps, sizes, a, b, has_b, p, m, n, nk, has_c, cbits, spec,
                    prod_on, pspec, seed, index):
    """reduce_pairwise on a caller's stack of PAIRWISE_STACK entries (NumPy arrays on the CPU,
    thread-local arrays in a CUDA kernel, which cannot allocate)."""
    return pairwise_range(kinds, negs, sigs, exps, sizes, a, b, has_b, p, m, n, 0, nk, has_c,
                          cbits, spec, prod_on, pspec, seed, index)


@njit(cache=True)
def pairwise_range(kinds, negs, sigs, exps, sizes, a, b, has_b, p, m, n, k0, nk, has_c, cbits,
                   spec, prod_on, pspec, seed, index):
    """pairwise_with_c on the nk terms k0 .. k0+nk-1, every step number raised by k0 (chunked
    order with chunk_order='pairwise': chunk c's steps are k0 = c*chunk onward)."""
    if nk <= 0:
        if has_c:
            return round_initial(cbits, spec, seed, index, 0, TAG_ADD, _CNT0)
        return core.zero_result(False, C_MAN, C_BIAS, spec), _CNT0
    ck, cn, cs, ce = unpack_f64(np.uint64(cbits))
    if has_c and nk == 1:
        tk, tn, ts, te = term(a, b, has_b, p, m, n, k0, prod_on, pspec, seed, index)
        bits, ev = add_round_ev(ck, cn, cs, ce, tk, tn, ts, te, spec, seed, index, k0, TAG_ADD)
        return bits, tally(_CNT0, ev)
    root, cnt = pairwise_tree(kinds, negs, sigs, exps, sizes, a, b, has_b, p, m, n, k0, nk, spec,
                              prod_on, pspec, seed, index)
    if not has_c:
        return root, cnt
    rk, rn, rs, re = unpack_f64(root)
    bits, ev = add_round_ev(ck, cn, cs, ce, rk, rn, rs, re, spec, seed, index, k0 + nk - 1,
                            TAG_ADD)
    return bits, tally(cnt, ev)


@njit(cache=True)
def pairwise_tree(kinds, negs, sigs, exps, sizes, a, b, has_b, p, m, n, k0, nk, spec, prod_on,
                  pspec, seed, index):
    """The tree of reduce_pairwise (no C) over terms k0 .. k0+nk-1 (nk >= 1, steps from k0) on
    a caller's stack."""
    top = 0
    merges = np.int64(k0)
    result = _U0
    cnt = _CNT0
    for kk in range(nk):
        k = k0 + kk
        tk, tn, ts, te = term(a, b, has_b, p, m, n, k, prod_on, pspec, seed, index)
        kinds[top] = tk
        negs[top] = tn
        sigs[top] = ts
        exps[top] = te
        sizes[top] = 1
        top += 1
        while top >= 2 and (sizes[top - 1] == sizes[top - 2] or kk == nk - 1):
            i = top - 2
            result, ev = add_round_ev(kinds[i], negs[i], sigs[i], exps[i], kinds[i + 1],
                                      negs[i + 1], sigs[i + 1], exps[i + 1], spec, seed, index,
                                      merges, TAG_ADD)
            cnt = tally(cnt, ev)
            merges += 1
            rk, rn, rs, re = unpack_f64(np.uint64(result))  # np.uint64: the CUDA simulator
            kinds[i] = rk
            negs[i] = rn
            sigs[i] = rs
            exps[i] = re
            sizes[i] += sizes[i + 1]
            top -= 1
    if nk == 1:
        result, ev = round_unpacked_ev(kinds[0], negs[0], sigs[0], exps[0], spec, seed, index, k0,
                                       TAG_ADD)
        cnt = tally(cnt, ev)
    return result, cnt


@njit(cache=True)
def reduce_kahan(a, b, has_b, p, m, n, nk, has_c, cbits, spec, prod_on, pspec, seed, index):
    """s = round(t_0), c = +0; for k >= 1: y = round(t_k - c), t = round(s + y),
    c = round(round(t - s) - y), s = t (steps k; tags KAHAN_Y, ADD, KAHAN_D, KAHAN_C). With C:
    s = C (exact), c = +0, and the same loop for k >= 0; round(C) alone for K = 0."""
    if has_c:
        if nk <= 0:
            return round_initial(cbits, spec, seed, index, 0, TAG_ADD, _CNT0)
        s_bits = np.uint64(cbits)
        cnt = _CNT0
        start = 0
    else:
        if nk <= 0:
            return core.zero_result(False, C_MAN, C_BIAS, spec), _CNT0
        tk, tn, ts, te = term(a, b, has_b, p, m, n, 0, prod_on, pspec, seed, index)
        s_bits, ev = round_unpacked_ev(tk, tn, ts, te, spec, seed, index, 0, TAG_ADD)
        cnt = tally(_CNT0, ev)
        start = 1
    ck, cn, cs, ce = K_FIN, False, _U0, _I0
    for k in range(start, nk):
        tk, tn, ts, te = term(a, b, has_b, p, m, n, k, prod_on, pspec, seed, index)
        y_bits, ev = add_round_ev(tk, tn, ts, te, ck, not cn, cs, ce, spec, seed, index, k,
                                  TAG_KAHAN_Y)
        cnt = tally(cnt, ev)
        yk, yn, ys, ye = unpack_f64(y_bits)
        sk, sn, ss, se = unpack_f64(s_bits)
        t_bits, ev = add_round_ev(sk, sn, ss, se, yk, yn, ys, ye, spec, seed, index, k, TAG_ADD)
        cnt = tally(cnt, ev)
        tk2, tn2, ts2, te2 = unpack_f64(t_bits)
        d_bits, ev = add_round_ev(tk2, tn2, ts2, te2, sk, not sn, ss, se, spec, seed, index, k,
                                  TAG_KAHAN_D)
        cnt = tally(cnt, ev)
        dk, dn, ds, de = unpack_f64(d_bits)
        c_bits, ev = add_round_ev(dk, dn, ds, de, yk, not yn, ys, ye, spec, seed, index, k,
                                  TAG_KAHAN_C)
        cnt = tally(cnt, ev)
        ck, cn, cs, ce = unpack_f64(c_bits)
        s_bits = t_bits
    return s_bits, cnt


# ---- multiterm -----------------------------------------------------------------------------------
# One group (block) of terms, optionally with the accumulator, is one exact fixed-point sum:
#   - each nonzero value v has an alignment exponent e(v): floor(log2|v|) (ALIGN_NORMALIZED), or,
#     for a product (ALIGN_PRODUCT), ea + eb with each operand's exponent in its format,
#     max(floor(log2|x|), emin) (a subnormal operand has exponent emin); so a product's
#     significand |v| / 2^e(v) lies in (0, 4), unnormalized. An accumulator value (C or the
#     running sum) has e = max(floor(log2|v|), emin of the accumulator format) there.
#   - E = max e(v); q = E - width + 1 (width - 1 fraction bits kept below E);
#   - each value is truncated to a multiple of 2^q: toward zero (TRUNC_ZERO, sign-magnitude) or
#     toward -inf (TRUNC_FLOOR, two's complement); the truncated values are summed exactly.
# Widths (int64): a value has |v| < 2^(e(v) + 2) <= 2^(E + 2) (products; accumulator values and
# ALIGN_NORMALIZED terms < 2^(E + 1)), so |T(v)| / 2^q <= 2^(width + 1) (floor may reach the
# bound). A group has at most group + 1 values, so |S| <= (group + 1) * 2^(width + 1) <
# 2^(bitlen(group + 1) + width + 1) <= 2^63 because refsim.specs checks width + bitlen(group) +
# 1 <= 62 (ALIGN_PRODUCT) or width + bitlen(group) <= 62 (ALIGN_NORMALIZED, one bit less per
# term) and bitlen(group + 1) <= bitlen(group) + 1. A value far below 2^q (C spans the whole
# float64 range) truncates to 0 units, or to one unit under floor when negative.
@njit(cache=True)
def top_exponent(sig, exp):
    """floor(log2(sig * 2^exp)) for sig > 0."""
    return exp + core.bit_length(sig) - 1


@njit(cache=True)
def truncate_units(negative, sig, exp, q, floor):
    """|T| / 2^q for T the value (-1)^negative * sig * 2^exp (sig > 0) truncated to a multiple of
    2^q: toward zero, or toward -inf when `floor` (a negative value with nonzero bits below 2^q
    loses one unit more). Precondition: |value| <= 2^(q + 62) (the width proof above)."""
    shift = exp - q
    if shift >= 0:
        return sig << np.uint64(shift)
    if shift <= -64:
        units = _U0
        rest = True
    else:
        units = sig >> np.uint64(-shift)
        rest = (sig & core.low_mask(-shift)) != _U0
    if floor and negative and rest:
        units += _U1
    return units


@njit(cache=True)
def operand_exponent(bits, emin):
    """max(floor(log2|x|), emin) of a finite nonzero float64 operand: its exponent in a format
    whose smallest normal exponent is emin (a subnormal there has exponent emin)."""
    _, _, sig, exp = unpack_f64(np.uint64(bits))
    return max(top_exponent(sig, exp), emin)


@njit(cache=True)
def flush_operand(bits, emin):
    """x, or the zero of x's sign when x is finite, nonzero and below 2^emin (subnormal in the
    operand format)."""
    bits = np.uint64(bits)
    kind, _, sig, exp = unpack_f64(bits)
    if kind == K_FIN and sig != _U0 and top_exponent(sig, exp) < emin:
        return bits & (_U1 << np.uint64(63))
    return bits


@njit(cache=True)
def mt_term(a, b, has_b, p, m, n, k, prod_on, pspec, mt, seed, index):
    """Term k of a multiterm output with its alignment exponent: (kind, negative, sig, exp, e),
    e meaningful for finite nonzero terms only. Operands below 2^emin are flushed first when
    mt[MT_FLUSH]."""
    emin = mt[MT_EMIN]
    x = np.uint64(a[p, m, k])
    y = np.uint64(b[p, n, k]) if has_b else _U0
    if mt[MT_FLUSH] != 0:
        x = flush_operand(x, emin)
        y = flush_operand(y, emin)
    if has_b:
        kind, negative, sig, exp = mul_exact(x, y)
    else:
        kind, negative, sig, exp = unpack_f64(x)
    if prod_on:
        kind, negative, sig, exp = unpack_f64(round_unpacked(kind, negative, sig, exp, pspec,
                                                             seed, index, k, TAG_PRODUCT))
    e = _I0
    if kind == K_FIN and sig != _U0:
        if mt[MT_ALIGN] == ALIGN_PRODUCT:
            e = operand_exponent(x, emin)
            if has_b:
                e += operand_exponent(y, emin)
        else:
            e = top_exponent(sig, exp)
    return kind, negative, sig, exp, e


@njit(cache=True)
def _scan_one(scan, kind, negative, sig, e):
    """multiterm_group's scan (has NaN, has +Inf, has -Inf, largest alignment exponent) after
    one value whose alignment exponent is e."""
    has_nan, pos_inf, neg_inf, e_max = scan
    if kind == K_NAN:
        has_nan = True
    elif kind == K_INF:
        if negative:
            neg_inf = True
        else:
            pos_inf = True
    elif sig != _U0:
        e_max = max(e_max, e)
    return has_nan, pos_inf, neg_inf, e_max


@njit(cache=True)
def _add_truncated(state, negative, sig, exp, q, floor):
    """multiterm_group's sum (S, +0 count, -0 count, nonzero count) after one finite value
    truncated to a multiple of 2^q (truncate_units)."""
    total, n_pos_zero, n_neg_zero, n_nonzero = state
    v = truncate_units(negative, sig, exp, q, floor) if sig != _U0 else _U0
    if v == _U0:
        if negative:
            n_neg_zero += 1
        else:
            n_pos_zero += 1
    else:
        n_nonzero += 1
        total = total - np.int64(v) if negative else total + np.int64(v)
    return total, n_pos_zero, n_neg_zero, n_nonzero


@njit(cache=True)
def multiterm_group(a, b, has_b, p, m, n, g0, g1, with_acc, acc, spec, prod_on, pspec, mt, seed,
                    index):
    """The group of terms g0 .. g1-1, plus the accumulator `acc` (float64 bits) when with_acc,
    as one exact value (kind, negative, sig, exp) (docs/accumulation.md, multiterm; the section
    comment above): specials first (NaN if any NaN or both infinities, else the infinity); else
    S * 2^q, the exact sum of the truncated values. A zero S is -0 when every truncated value is
    a zero of sign -, +0 when every one is +0, else +0 (-0 under rdn)."""
    floor = mt[MT_TRUNC] == TRUNC_FLOOR
    scan = (False, False, False, np.int64(-(1 << 40)))
    if with_acc:
        xk, xn, xs, xe = unpack_f64(acc)
        if xk == K_FIN and xs != _U0:
            e_acc = top_exponent(xs, xe)
            if mt[MT_ALIGN] == ALIGN_PRODUCT:
                e_acc = max(e_acc, spec[core.P_EMIN])
            scan = _scan_one(scan, xk, xn, xs, e_acc)
        else:
            scan = _scan_one(scan, xk, xn, xs, _I0)
    for k in range(g0, g1):
        tk, tn, ts, te, e = mt_term(a, b, has_b, p, m, n, k, prod_on, pspec, mt, seed, index)
        scan = _scan_one(scan, tk, tn, ts, e)
    has_nan, pos_inf, neg_inf, e_max = scan
    if has_nan or (pos_inf and neg_inf):
        return K_NAN, False, _U0, _I0
    if pos_inf or neg_inf:
        return K_INF, neg_inf, _U0, _I0
    q = e_max - mt[MT_WIDTH] + 1
    state = (np.int64(0), 0, 0, 0)
    if with_acc:
        state = _add_truncated(state, xn, xs, xe, q, floor)
    for k in range(g0, g1):
        tk, tn, ts, te, e = mt_term(a, b, has_b, p, m, n, k, prod_on, pspec, mt, seed, index)
        state = _add_truncated(state, tn, ts, te, q, floor)
    total, n_pos_zero, n_neg_zero, n_nonzero = state
    if total == 0:
        if n_nonzero == 0 and n_pos_zero == 0:
            negative = True
        elif n_nonzero == 0 and n_neg_zero == 0:
            negative = False
        else:
            negative = spec[S_MODE] == core.RDN
        return K_FIN, negative, _U0, _I0
    if total < 0:
        return K_FIN, True, np.uint64(-total), q
    return K_FIN, False, np.uint64(total), q


# The late accumulator (mt[MT_LATE_BITS] = L > 0; docs/accumulation.md): a group's products are
# split into I = mt[MT_INTERLEAVE] subsets by position (k - g0) mod I; subset j is truncated to
# F = width - 1 fraction bits below its own largest alignment exponent E_j (S_j units of
# 2^(E_j - F)); the accumulator s has e_c = max(floor(log2|s|), fmt emin) (emin for a zero).
#   E = max E_j >= e_c: P = sum of S_j moved to 2^(E - F) (late truncation), plus s on that grid
#     (or 0 when E - e_c > c_cutoff); the value is exact: (P + sc) * 2^(E - F).
#   else (or no nonzero product): A = sum of S_j moved to 2^G, G = e_c - L, plus s on that grid
#     (exact for s in fmt: L >= fmt's mantissa bits); A is cut to N = mt[MT_LATE_NORM] fraction
#     bits below max(its leading bit, fmt emin) (late truncation).
# Widths (int64): |S_j| < (group / I) * 2^(F + 3) as in multiterm_group, and moving it to a
# coarser grid only shrinks it: |P| < group * 2^(F + 3) <= 2^(width + bitlen(group) + 2) and |sc|
# <= 2^(F + 2), so P + sc fits as in the width proof above. In the second case every S_j * 2^q_j
# is below group * 2^(E + 2) <= group * 2^(e_c + 1), i.e. below group * 2^(L + 1) units of 2^G,
# and |s| < 2^(L + 1) units: |A| < 2^(L + bitlen(group) + 2) <= 2^62 (refsim.specs checks
# late_bits + bitlen(group) + 2 <= 62).
@njit(cache=True)
def move_units(x, shift, floor):
    """x * 2^-shift (x an int64 of units) on the integer grid: toward -inf when `floor`, else
    toward zero; shift <= 0 multiplies exactly (the caller's width proof bounds it)."""
    if shift <= 0:
        return x << np.int64(-shift)
    if shift >= 63:
        return np.int64(-1) if (floor and x < 0) else _I0
    if floor or x >= 0:
        return x >> np.int64(shift)
    return -((-x) >> np.int64(shift))


@njit(cache=True)
def _late_subset(a, b, has_b, p, m, n, k0, g1, stride, prod_on, pspec, mt, seed, index, zeros):
    """One interleaved subset (terms k0, k0 + stride, .. < g1) of a late group: (has a nonzero
    term, its largest alignment exponent E_j, S_j units of 2^(E_j - width + 1), zero counts)."""
    e_max = np.int64(-(1 << 40))
    live = False
    for k in range(k0, g1, stride):
        _, _, ts, _, e = mt_term(a, b, has_b, p, m, n, k, prod_on, pspec, mt, seed, index)
        if ts != _U0:
            e_max = max(e_max, e)
            live = True
    q = e_max - mt[MT_WIDTH] + 1
    state = (np.int64(0), zeros[0], zeros[1], zeros[2])
    for k in range(k0, g1, stride):
        _, tn, ts, te, _ = mt_term(a, b, has_b, p, m, n, k, prod_on, pspec, mt, seed, index)
        state = _add_truncated(state, tn, ts, te, q, mt[MT_TRUNC] == TRUNC_FLOOR)
    return live, e_max, state[0], (state[1], state[2], state[3])


@njit(cache=True)
def late_group(a, b, has_b, p, m, n, g0, g1, acc, spec, prod_on, pspec, mt, seed, index):
    """The group g0 .. g1-1 with the running sum `acc` (float64 bits) joining late (the comment
    above), as one exact value (kind, negative, sig, exp): specials as multiterm_group; a zero is
    signed as there, with the accumulator's contribution counted as one more value."""
    scan = (False, False, False, np.int64(-(1 << 40)))
    xk, xn, xs, xe = unpack_f64(acc)
    scan = _scan_one(scan, xk, xn, xs, _I0)
    for k in range(g0, g1):
        tk, tn, ts, _, e = mt_term(a, b, has_b, p, m, n, k, prod_on, pspec, mt, seed, index)
        scan = _scan_one(scan, tk, tn, ts, e)
    has_nan, pos_inf, neg_inf, _ = scan
    if has_nan or (pos_inf and neg_inf):
        return K_NAN, False, _U0, _I0
    if pos_inf or neg_inf:
        return K_INF, neg_inf, _U0, _I0
    late_floor = mt[MT_LATE_TRUNC] == TRUNC_FLOOR
    frac = mt[MT_WIDTH] - 1
    emin = spec[core.P_EMIN]
    stride = mt[MT_INTERLEAVE]
    # Pass 1: the group's largest exponent over the subsets.
    e_top = np.int64(-(1 << 40))
    any_live = False
    zeros = (0, 0, 0)
    for j in range(stride):
        live, e_j, s_j, zeros = _late_subset(a, b, has_b, p, m, n, g0 + j, g1, stride, prod_on,
                                             pspec, mt, seed, index, zeros)
        if live:
            e_top = max(e_top, e_j)
            any_live = True
    e_c = max(top_exponent(xs, xe), emin) if xs != _U0 else emin
    joins = any_live and e_c <= e_top
    grid = e_top - frac if joins else e_c - mt[MT_LATE_BITS]
    # Pass 2: the subset sums moved to the common grid (zero counts from pass 1).
    total = _I0
    for j in range(stride):
        live, e_j, s_j, _ = _late_subset(a, b, has_b, p, m, n, g0 + j, g1, stride, prod_on,
                                         pspec, mt, seed, index, (0, 0, 0))
        if live:
            total += move_units(s_j, grid - (e_j - frac), late_floor)
    n_pos_zero, n_neg_zero, n_nonzero = zeros
    dropped = joins and mt[MT_CUTOFF] >= 0 and e_top - e_c > mt[MT_CUTOFF]
    sc = _I0
    if xs != _U0 and not dropped:
        units = np.int64(truncate_units(xn, xs, xe, grid, late_floor))
        sc = -units if xn else units
    if sc == 0:
        if xn:
            n_neg_zero += 1
        else:
            n_pos_zero += 1
    else:
        n_nonzero += 1
    total += sc
    exp = grid
    if not joins and total != 0:
        magnitude = np.uint64(-total) if total < 0 else np.uint64(total)
        lead = top_exponent(magnitude, grid)
        cut = max(lead, emin) - mt[MT_LATE_NORM]
        if cut > grid:
            total = move_units(total, cut - grid, late_floor)
            exp = cut
    if total == 0:
        if n_nonzero == 0 and n_pos_zero == 0:
            negative = True
        elif n_nonzero == 0 and n_neg_zero == 0:
            negative = False
        else:
            negative = spec[S_MODE] == core.RDN
        return K_FIN, negative, _U0, _I0
    if total < 0:
        return K_FIN, True, np.uint64(-total), exp
    return K_FIN, False, np.uint64(total), exp


@njit(cache=True)
def reduce_multiterm(a, b, has_b, p, m, n, nk, chunk, has_c, cbits, spec, ospec, prod_on, pspec,
                     mt, seed, index):
    """Chunks of `chunk` terms (chunk <= 0: one chunk of all nk), each a sequence of groups of
    mt[MT_GROUP] terms; group g (terms g*group ..) is step g (TAG_ADD). Within a chunk, with s
    the running sum (none before the chunk's first group, except C in the first chunk when C
    enters inside):
      no s yet:      s = round(G), G the group's aligned, truncated exact sum (multiterm_group);
      acc-excluded:  s = round(s + G);
      acc-aligned:   s = round(G'), G' the same sum with s joining the alignment and truncation;
      late (mt[MT_LATE_BITS] > 0): s = round(late_group(s)), s starting at +0 (or C).
    Each chunk's s is promoted into the outer accumulator (promote), which starts from C when C
    enters outside (mt[MT_C_OUTER]); with no terms the result is round_o(C), or +0 there."""
    if nk <= 0:
        if has_c:
            return round_initial(cbits, ospec, seed, index, 0, TAG_OUTER, _CNT0)
        return core.zero_result(False, C_MAN, C_BIAS, ospec), _CNT0
    if chunk <= 0:
        chunk = nk
    group = mt[MT_GROUP]
    aligned = mt[MT_VARIANT] == MT_ALIGNED
    late = mt[MT_LATE_BITS] > 0
    c_outer = mt[MT_C_OUTER] != 0
    into_outer = has_c and c_outer
    outer = np.uint64(cbits) if into_outer else _U0
    first_outer = not into_outer
    cnt = _CNT0
    c = np.int64(0)
    for c0 in range(0, nk, chunk):
        c1 = min(c0 + chunk, nk)
        have_s = has_c and not c_outer and c == 0
        s = np.uint64(cbits) if have_s else _U0
        for g0 in range(c0, c1, group):
            g1 = min(g0 + group, c1)
            step = g0 // group
            with_acc = aligned and have_s
            if late:
                gk, gn, gs, ge = late_group(a, b, has_b, p, m, n, g0, g1, s, spec, prod_on, pspec,
                                            mt, seed, index)
            else:
                gk, gn, gs, ge = multiterm_group(a, b, has_b, p, m, n, g0, g1, with_acc, s, spec,
                                                 prod_on, pspec, mt, seed, index)
            if late or not have_s or with_acc:
                s, ev = round_unpacked_ev(gk, gn, gs, ge, spec, seed, index, step, TAG_ADD)
            else:
                sk, sn, ss, se = unpack_f64(s)
                s, ev = add_round_ev(sk, sn, ss, se, gk, gn, gs, ge, spec, seed, index, step,
                                     TAG_ADD)
            cnt = tally(cnt, ev)
            have_s = True
        outer, cnt = promote(outer, first_outer, c, s, ospec, seed, index, cnt)
        first_outer = False
        c += 1
    return outer, cnt


# ---- one output element --------------------------------------------------------------------------
# The order_* functions share one signature, so one kernel dispatches to them at run time
# (refsim.backends.cpu_exact). mt: the order parameters (MT_*
# layout); (has_c, cbits): C.
@njit(cache=True)
def order_sequential(a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec, prod_on, pspec, mt,
                     seed, index):
    return reduce_sequential(a, b, has_b, p, m, n, 0, a.shape[2], has_c, cbits, spec, prod_on,
                             pspec, seed, index)


@njit(cache=True)
def order_pairwise(a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec, prod_on, pspec, mt,
                   seed, index):
    return reduce_pairwise(a, b, has_b, p, m, n, a.shape[2], has_c, cbits, spec, prod_on, pspec,
                           seed, index)


@njit(cache=True)
def order_chunked(a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec, prod_on, pspec, mt,
                  seed, index):
    if mt[MT_CHUNK_PAIRWISE] != 0:  # the stack is allocated only for pairwise chunks
        return chunked_pairwise(np.empty(PAIRWISE_STACK, np.int64),
                                np.empty(PAIRWISE_STACK, np.bool_),
                                np.empty(PAIRWISE_STACK, np.uint64),
                                np.empty(PAIRWISE_STACK, np.int64),
                                np.empty(PAIRWISE_STACK, np.int64), a, b, has_b, p, m, n,
                                a.shape[2], chunk, has_c, cbits, mt[MT_C_OUTER] != 0, spec, ospec,
                                prod_on, pspec, seed, index)
    return reduce_chunked(a, b, has_b, p, m, n, a.shape[2], chunk, has_c, cbits,
                          mt[MT_C_OUTER] != 0, spec, ospec, prod_on, pspec, seed, index)


@njit(cache=True)
def order_kahan(a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec, prod_on, pspec, mt, seed,
                index):
    return reduce_kahan(a, b, has_b, p, m, n, a.shape[2], has_c, cbits, spec, prod_on, pspec,
                        seed, index)


@njit(cache=True)
def order_multiterm(a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec, prod_on, pspec, mt,
                    seed, index):
    return reduce_multiterm(a, b, has_b, p, m, n, a.shape[2], chunk, has_c, cbits, spec, ospec,
                            prod_on, pspec, mt, seed, index)


@njit(cache=True)
def cast_output(bits, cast_on, cspec, seed, index):
    """The output cast of one reduced value (step 0, TAG_OUT); bits unchanged when not cast_on."""
    if not cast_on:
        return bits
    if cspec[core.P_KIND] == core.KIND_FIXED:
        word0 = (accum_word(seed, index, 0, TAG_OUT, 0) << np.uint64(32) if cspec[S_MODE] == core.SR
                 else _U0)
        return core.quantize_bits_family(bits, C_MAN, C_BIAS, cspec, cspec[S_MODE], cspec[S_OVF],
                                         cspec[S_SRB], word0, seed, index, TAG_OUT)
    kind, negative, sig, exp = unpack_f64(bits)
    return round_unpacked(kind, negative, sig, exp, cspec, seed, index, 0, TAG_OUT)

