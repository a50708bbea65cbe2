"""One lane of the branch-free rounding fast path, shared by quantize and the GEMM fast path.

`round_lane(mode, x, fast, rand, r_cap)` rounds one carrier bit pattern x (uint32 for float32,
uint64 for float64) to the format described by the constant tuple `fast` (fast_constants), in
rounding mode `mode` (a compile-time constant: the function is compiled per (mode, carrier)).
It is exact for the lanes the callers send it: x finite, zero or a carrier normal. For SR the
lane reads the element's first W random bits (W: the carrier's width); where the discarded
fraction is wider than that and those bits tie it (probability 2^-W), more bits decide, which
the lane does not have: it returns UNDECIDED (a signalling-NaN pattern no rounding returns) and
the caller rounds that element with the scalar core (refsim.backends.cpu explains the lanes).
Written for LLVM's vectorizer: selects instead of branches, arithmetic in the carrier's width,
shift amounts bounded by constants (refsim.backends.cpu's docstring says why each matters).

Also the two bit casts the GEMM fast path needs (float_bits, bits_float): one LLVM bitcast each.
"""

from __future__ import annotations

import numpy as np
from numba.core import types
from numba.extending import intrinsic, overload
from numba.np.numpy_support import as_dtype

from refsim.kernels import core

# Layout of the fast-path constant tuple; every entry has the carrier's unsigned type.
(F_ENABLED, F_E_NORMAL, F_D_NORMAL, F_D_BASE, F_MAX_POS, F_MAX_NEG, F_OVF_POS, F_OVF_NEG,
 F_ZERO_POS, F_ZERO_NEG, F_UNDER_POS, F_UNDER_NEG, F_QMIN) = range(13)
N_FAST = 13

# The two carriers as numbers (IEEE 754 binary32 and binary64): the kernels take c_man, c_bias
# and the unsigned type, never a dtype table (refsim.params.CARRIERS maps dtypes onto the same
# numbers; tests/test_layers.py holds the two to each other).
UTYPE_OF = {23: np.uint32, 52: np.uint64}  # carrier unsigned type by c_man
CARRIER_OF = {np.uint32: (23, 127), np.uint64: (52, 1023)}  # (c_man, c_bias) by unsigned type


def fast_constants(params, c_man, c_bias, mode, overflow):
    """Host-side constants of the fast path (F_* layout); disabled for wrap-around.

    d, the number of carrier significand bits below the format's quantum, is F_D_NORMAL where the
    carrier exponent field e >= F_E_NORMAL, and F_D_BASE - e below (subnormal grid, the smallest
    quantum of a format without subnormals, fixed point). Results by sign: a rounded magnitude
    above F_MAX_* gives F_OVF_*, a zero one F_UNDER_*, a zero input F_ZERO_*.
    """
    utype = UTYPE_OF[c_man]
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
        if core.has_inf(params[core.P_SPECIALS]):
            return core.carrier_inf(negative, c_man, c_bias)
        return nan

    if (man == 0 and params[core.P_SPECIALS] >= core.SPECIALS_P3109_FINITE
            and mode in (core.RNE, core.RTO)):
        # P3109 precision 1 breaks rne's ties and rto by the code's parity (kernels.core's
        # bump): the lanes' n-parity tricks do not apply, the general path rounds every lane.
        return tuple(utype(0) for _ in range(N_FAST))
    has_zero = params[core.P_ZERO] != 0
    signed = params[core.P_SIGNED] != 0
    keeps_sign = signed and core.keeps_negative_zero(params[core.P_SPECIALS])
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
        unsigned_neg = core.unsigned_negative(c_man, c_bias, params)  # NaN, P3109: +0
        max_neg, ovf_neg, under_neg = 0, unsigned_neg, unsigned_neg
    # Clamped at 0: a format whose emin lies below the carrier's normal range (no subnormals)
    # has its normal quantum at every carrier-normal input.
    values = (1, max(emin + c_bias, 0), c_man - man, max(c_man - m_sub + emin + c_bias, 0),
              max_pos, max_neg, overflow_bits(False), ovf_neg, zero_pos, zero_neg, under_pos,
              under_neg, qmin)
    return tuple(utype(int(v)) for v in values)


@intrinsic
def select(typingctx, cond, if_true, if_false):
    """`if_true if cond else if_false` as one LLVM select instruction, without a branch."""
    if cond != types.boolean or if_true != if_false:
        return None

    def codegen(context, builder, signature, args):
        return builder.select(args[0], args[1], args[2])

    return if_true(cond, if_true, if_false), codegen


def _bitcast(pairs: dict, doc: str):
    """An intrinsic reinterpreting a value's bits as the type `pairs` maps its type to (one LLVM
    bitcast, free in vector code)."""

    def cast(typingctx, value):
        target = pairs.get(value)
        if target is None:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(target))

        return target(value), codegen

    cast.__doc__ = doc
    return intrinsic(cast)


float_bits = _bitcast({types.float32: types.uint32, types.float64: types.uint64},
                      "The bit pattern of a float32 (as uint32) or float64 (as uint64).")
bits_float = _bitcast({types.uint32: types.float32, types.uint64: types.float64},
                      "The float32 (uint32 input) or float64 (uint64 input) with bit pattern u.")


def undecided(utype):
    """The carrier bits round_lane returns for an SR lane its W random bits cannot decide: the
    positive signalling NaN with payload 1 (no rounding returns it; a NaN input is not a lane)."""
    c_man, c_bias = CARRIER_OF[utype]
    return utype(((2 * c_bias + 1) << c_man) | 1)


def round_lane(mode, x, fast, rand, r_cap):
    """x (carrier bits) rounded to the format of `fast` in `mode` (a literal int); rand and r_cap
    are read by SR only (rand: the element's first W random bits, H_0 for float32, H_0 H_1 for
    float64; r_cap: min(sr_bits, W), or W for sr_bits=None or > W), which may return
    undecided(U) (module docstring). Callable from Numba code only."""
    raise NotImplementedError("refsim.kernels.lane.round_lane runs inside Numba code only")


@overload(round_lane, prefer_literal=True)
def _round_lane_overload(mode, x, fast, rand, r_cap):
    if not isinstance(mode, types.IntegerLiteral):
        return None
    utype = as_dtype(x).type
    return _make_round_lane(mode.literal_value, utype, *CARRIER_OF[utype])


def _make_round_lane(rounding, utype, c_man, c_bias):
    """The implementation of round_lane for one rounding mode and one carrier."""
    U = utype
    W = 8 * np.dtype(utype).itemsize  # carrier width in bits
    ZERO, ONE, ALL_ONES = U(0), U(1), U(np.iinfo(utype).max)
    C_MAN = U(c_man)
    SIGN = U(1 << (W - 1))
    ABS = U(SIGN - ONE)
    MANT = U((1 << c_man) - 1)
    IMPLICIT = U(1 << c_man)
    W_U = U(W)
    MAX_SHIFT = U(W - 1)
    SIG_SHIFT = U(W - 1 - c_man)  # the significand (implicit bit included) to the top W bits
    C_MAN_1 = U(c_man + 1)
    UNDECIDED = undecided(utype)

    def round_one(mode, x, fast, rand, r_cap):
        sign = U(x & SIGN)
        negative = sign != ZERO
        a = U(x & ABS)
        e = U(a >> C_MAN)
        d_base = fast[F_D_BASE]
        d = select(e >= fast[F_E_NORMAL], fast[F_D_NORMAL], U(d_base - min(e, d_base)))
        dd = min(d, C_MAN)
        # Region A, d <= C_MAN: add an increment below the kept bits, then clear them; a carry
        # out of the significand runs into the exponent by itself.
        unit = U(ONE << dd)
        mask = U(unit - ONE)
        # Region B, d > C_MAN: |x| < 2^q, so n = 0 and the candidates are 0 and qmin = 2^q.
        region_b = d > C_MAN
        b_half = d == U(C_MAN + ONE)  # x in [2^(q-1), 2^q)
        if rounding == core.RNE:
            # half - 1 + (n odd): only a tie with n odd reaches the next multiple. n's last bit
            # is bit dd of a, or the implicit 1 at dd == C_MAN; `& mask` zeroes it at dd == 0
            # (exact).
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
            inc = select(negative, ZERO, mask)
            up_b = ~negative
        elif rounding == core.RDN:
            inc = select(negative, mask, ZERO)
            up_b = negative
        elif rounding == core.RTO:
            inc = ZERO  # truncate, then set n's last bit below
            up_b = True
        else:  # SR: random bits added below the kept bits, carry kept (docs/rounding.md)
            # r: the random bits used (r_cap of them, top-aligned; the rest cleared).
            r = U(rand & ~U(U(ALL_ONES >> ONE) >> U(r_cap - ONE)))
            # Region A: r's top d bits added below the kept bits carry into them exactly when
            # frac + r_d >= 2^d: probability frac / 2^d, or floor(frac / 2^(d - r_cap)) / 2^r_cap
            # with fewer bits (r's low bits are zero). Two shifts, so that d = 0 adds nothing.
            inc = U(U(r >> ONE) >> U(MAX_SHIFT - dd))
            # Region B: frac is the whole significand, d bits wide; top-aligned in W bits (its
            # first W of d bits when d > W), up iff r + frac_top carries out of W bits.
            down = U(d - C_MAN_1)  # region B: d - (C_MAN + 1) >= 0 (wraps elsewhere: unused)
            sig_top = U(U(U(a & MANT) | IMPLICIT) << SIG_SHIFT)
            frac_top = select(down >= W_U, ZERO, U(sig_top >> min(down, MAX_SHIFT)))
            room = U(~frac_top)
            up_b = r > room
            # d > W with every random bit available: r == room ties frac's first W bits, and
            # the bits below them decide (H_1, H_2, ...): the caller's scalar core.
            tie = region_b & (r == room) & (d > W_U) & (r_cap == W_U)
        magnitude = U(U(a + inc) & ~mask)
        if rounding == core.RTO:
            # Round to odd: set n's last bit when inexact (at dd == C_MAN, n = 1 already).
            inexact = (U(a & mask) != ZERO) & (dd != C_MAN)
            magnitude = U(magnitude | select(inexact, unit, ZERO))
        magnitude = select(region_b, select(up_b, fast[F_QMIN], ZERO), magnitude)
        # Each special case overrides those above it: one compare and one select each.
        result = U(magnitude | sign)
        result = select(magnitude == ZERO,
                        select(negative, fast[F_UNDER_NEG], fast[F_UNDER_POS]), result)
        limit = select(negative, fast[F_MAX_NEG], fast[F_MAX_POS])
        result = select(magnitude > limit, select(negative, fast[F_OVF_NEG], fast[F_OVF_POS]),
                        result)
        if rounding == core.SR:
            result = select(tie, UNDECIDED, result)
        return select(a == ZERO, select(negative, fast[F_ZERO_NEG], fast[F_ZERO_POS]), result)

    return round_one
