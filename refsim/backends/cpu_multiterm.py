"""The multiterm (tensor-core) order on the CPU in float64 or float32 lanes, bit-identical to the
exact core.

refsim.backends.cpu_gemm.plan asks `plan` here for AccumSpec(order="multiterm"); where it
declines (module conditions below), refsim.accumulate runs kernels.accum_core.reduce_multiterm on
every output. tests/refsim/test_multiterm_route.py and test_multiterm_lanes.py hold this route to
the exact core bit for bit.

The model (kernels.accum_core, "multiterm"): chunks of `chunk` terms, each a run of groups of
`group` products; a group's values (its products, and the running sum s under acc-aligned) are
aligned to E, the largest alignment exponent of its nonzero values, each is truncated to a
multiple of 2^q, q = E - width + 1 (toward zero, or toward -inf under floor), and the truncated
values are summed exactly: G = S * 2^q. Then s = round(G) (first group of a chunk, and every
group under acc-aligned, where s is one of the values) or s = round(s + G) (acc-excluded); each
chunk's s is promoted into the outer accumulator: o = round_o(s), then o = round_o(o + s).

How the lanes compute it, and why each step is exact (the conditions are those `plan` checks;
"in range" below means every product, operand, C and accumulator value is zero or has all its
set bits between 2^-480 and 2^480, and so does every alignment power 2^E: so E lies in
[-480, 482], q = E - width + 1 in [-531, 482], and every power of two used is a float64
normal):
1. t = a*b in float64 is exact: the operands' significands total at most 53 bits and the
   product is in range (refsim.backends.operands.products_exact).
2. E: the group's largest alignment exponent. normalized: e(t) = floor(log2|t|), and
   max_k e(t_k) = floor(log2(max_k |t_k|)) (log2 is monotone), so one float max per product of
   the precomputed |a| and |b| and one exponent-field read per group. product: e(t) = ea + eb
   with ea = max(floor(log2|a|), emin of `operands`) per operand, precomputed as the float 2^ea
   (0 for a zero operand): 2^ea * 2^eb = 2^(ea + eb) is exact (in range), and again one float
   max per product. A zero product (either factor zero, flushed operands included) gives 0 and
   does not raise the max, as the exact core skips zeros. Under acc-aligned, s's exponent
   (floor(log2|s|), raised to the accumulator format's emin under product) joins the max when
   s is nonzero. With no nonzero value E is clamped to -480: every value is a zero, which
   scaling and truncation leave a zero of its sign.
3. T = trunc(t * 2^-q) (floor under floor truncation) is the exact core's truncate_units with
   the sign attached: t * 2^-q is exact, a power of two times an in-range value, between
   2^(-480 - 482) and 2^(width + 1) (the width proof of kernels.accum_core), inside float64's
   normal range, so it never underflows (a negative value that underflowed to -0 would floor
   to -0, not -1); llvm.trunc and llvm.floor are exact on float64. A value with |t| < 2^q
   truncates to a zero of t's sign (toward zero) or to -1 when negative under floor, as
   truncate_units does.
4. S = sum of the T in float64 is exact: every partial sum is an integer of magnitude at most
   (group + 1) * 2^(width + 1) < 2^53 (`plan` checks bitlen(group + 1) + width + 1 <= 53).
   The sign of a zero S: IEEE addition from -0.0 gives -0 when every T is -0, +0 when every T
   is +0, and +0 otherwise (mixed zeros, or an exact cancellation), which is multiterm_group's
   rule in every mode but rdn; under rdn the rule asks -0 unless every T is +0, so the kernel
   ORs the T's sign bits and signs a zero S with that.
5. G = S * 2^q is exact (in range). round(G) is round_lane (refsim.kernels.lane) of G's float64
   pattern: the contract's rounding of an exact float64 value to the accumulator format,
   overflow policy, subnormals and signed zeros included. round(s + G) (acc-excluded): s + G
   rounded to odd at 53 bits by TwoSum (exact: nothing overflows in range) and one unit toward
   its error when that is nonzero and the sum's last bit is 0, then round_lane: rounding to odd
   with at least two more bits than the target, then to the target in any deterministic mode,
   gives the exact sum's correct rounding (Boldo & Melquiond, "Emulation of FMA and correctly
   rounded sums: proved algorithms using rounding to odd", IEEE TC 2008), so `plan` asks
   man_bits <= 50 and a smallest quantum at least 4 times float64's smallest subnormal of the
   accumulator (cpu_gemm's _rounds_via_odd). An exact zero sum is signed as the exact core's
   add_round does: IEEE's rule, and under rdn -0 unless both addends are +0.
6. Promotion into the outer accumulator: o = round_o(s) by round_lane, o = round_o(o + s) by
   step 5's round-to-odd addition, with the outer spec's constants.
7. The initial value C (matmul's c=) enters as the exact core's reduce_multiterm says: as the
   first chunk's running s (c_entry inner: acc-excluded adds it in the first group's
   round(C + G), acc-aligned aligns and truncates it with the first group: C joins step 2 with
   floor(log2|C|), raised to the accumulator's emin under product, and step 3 like s), or as the
   outer accumulator's start (c_entry outer: o = round_o(C + s_0)). C must be in range (any
   53-bit float64 there: the steps above ask nothing more of s).
Steps 2-4 run in registers (refsim.kernels.mt_tile.group_tile, one group of a 4 x 16 or 4 x 32
tile at a time); E is kept as the float M = 2^E: 2^floor(log2|x|) is x's exponent field alone,
2^q = M * 2^(1 - width) and 2^-q has the pattern ((2046 + width - 1) << 52) - bits(M), all exact
(powers of two in float64's normal range). Where `plan` proves it (_narrow), a pass runs in
float32 lanes instead, twice the lanes per vector:
2'. The maxima in float32: product: every 2^ea, 2^eb and 2^(ea + eb) lies between 2^-149 and
   2^127 (the operand ranges' exponent bounds, raised to emin), so they and the products are
   float32 values; normalized: every operand and |a b| is a float32 value (products_exact at
   float32: significands total at most 24 bits, exponents in range), so max |a b| is exact.
3'. The products and T in float32 (truncation toward zero only): with every a b a float32 value
   (as 2'), x = (a b) * sc, sc = 2^-q clamped to [2^-126, 2^127]. When |x| >= 1 it is a normal
   float32 with the bits of a b, exact, and fptosi/trunc give T; when |x| < 1 it rounds to a
   magnitude below 1 (rounding is monotone and 1 is a float32: an inexact x is a subnormal),
   so T = 0 with x's sign (IEEE keeps a product's sign through underflow), as truncate_units
   gives. The clamps change nothing: e_lo, e_hi bound every nonzero product's alignment
   exponent (from the operand ranges), and `plan` asks e_lo - width + 1 >= -127 and e_hi + 2
   <= 126. q < -127 means E < e_lo, so every product of the group is a zero (T a zero of its
   sign for any finite sc); q > 126 means every |a b| < 2^(e_hi + 2) <= 2^126 < 2^q (the true
   T a signed zero), and with sc = 2^-126, |x| < 1 (a signed zero too). T(s) stays in
   float64 (C has 53 bits).
4'. The sum: parts 0, in float32 from T(s) (an integer below 2^(width + 1), a float32 value):
   every partial sum is an integer below (group + 1) * 2^(width + 1) <= 2^24 (`plan` asks
   bitlen(group + 1) + width + 1 <= 24), IEEE's zero signs as in step 4. parts 1: T = fptosi(x)
   (toward zero) summed in int32: partial sums below 2^(bitlen(group + 1) + width + 1) <=
   2^31; parts 2: the group's first nk//2 terms (with T(s)) and the rest summed apart in
   int32, each at most (group + 1)//2 + 1 values (bitlen of that + width + 1 <= 31), then
   added in float64 (exact: below 2^32). Integers have no -0, so the zero's sign is kept
   aside from the x's sign bits (the sign of T = trunc(x)): their AND (IEEE: a sum is -0 only
   when every term is -0; terms all negative or -0 sum to 0 only when all are -0) from the
   start value's sign (-0.0, IEEE's identity, or T(s)), and their OR under rdn (step 4).
5'. s = round(G) to a float32 accumulator (fp32, default overflow; rne, or rtz/rup/rdn where
   AVX-512 embeds the rounding in the conversion) is one vcvtpd2ps of the exact float64 G in
   the tile: IEEE's conversion is the correctly rounded value in that mode, subnormals and
   signed zeros included, and its overflow (+-Inf, or +-max where the mode rounds toward zero
   for that sign) is the contract's default; NaN marks as in step 5.
8. A chunk's later groups in one run, s in registers (refsim.kernels.mt_tile.groups_tile: one
   IR loop over the groups after a chunk's first, in 16 float32 / int32 lanes, nothing in
   memory between groups), where `plan` proves it (_runs): acc-aligned, align product, float32
   maxima and products with int32 sums (2', 3', 4' parts 1 or 2), and an fp32 accumulator
   rounded toward zero in the tile (5'). Then after the first group s is an fp32 value and
   finite (a rounding toward zero overflows to +-max; G is finite), and `plan` asks every
   nonzero 2^ea 2^eb to be at least 2^-126, so every nonzero value's alignment power is a
   float32 normal: E = max(ea + eb, floor(log2|s|) raised to -126) lies in [-126, 127], M =
   2^E is the exponent field of the larger of the patterns of max 2^ea 2^eb and |s|
   (floor(log2) is monotone; nonnegative floats order as their patterns), raised to 2^-126,
   which also stands for -480's clamp when every value is a zero (their T are signed zeros
   for any finite scale). 2^-q = 2^(width - 1 - E) has the pattern ((253 + width) << 23) - M
   (width <= 28: below 2^32); sc = 2^-q clamped to 2^127 (E <= 127, so it is at least 2^-126)
   scales the products as in 3'. T(s) = trunc((s * 2^a) * sc), 2^a = 2^-q / sc: when sc is
   clamped (E < width - 128), |s| < 2^(E + 1) is tiny and s * 2^a is exact; the product is
   |s| 2^-q < 2^width, exact when at least 2^-126 and below 1 (T a zero of s's sign)
   otherwise, as 3'. round(G) toward zero: S (int32, or the two parts added in int64) is
   converted to float32 toward zero, scaled by 2^d, d = max(q, -126) (exact: a normal
   result, or an overflow that the true G makes too), then by 2^(q - d) toward zero (both
   {rz-sae}): truncating to a grid and then to a coarser grid that is a subset of it (the
   float32 grid of the same binade, or the subnormal grid) is truncating to the coarser grid,
   so this is rtz(G), with +-max on overflow; an S = 0 is signed by the AND of the terms'
   sign bits (T(s)'s from s * 2^-q) as in 4'.
The jobs (4 x 64 outputs each) run as one nogil kernel over a range of jobs, split into
numba.get_num_threads() ranges on Python threads (refsim.backends.threads.run_jobs; a parallel
kernel's parfor lowering was most of a cold first call's compile time); a job's arithmetic does
not depend on the split, so the bits do not depend on the thread count.
Rare lanes: a non-finite s or o (an overflow to Inf of a rounding) makes every later value of
that output NaN, and `run` returns NaN for every output that ends non-finite: refsim.accumulate
redoes exactly those outputs with the exact core (with their C). Operands must be finite.

Eligibility is a whitelist: orders other than multiterm, SR, product Casts, counts, a fixed or
narrow-exponent accumulator (the round-to-odd condition), operands or C out of range, and any
AccumSpec field this module does not know (unless it holds its default) go to the exact core.
Shapes: outputs run in tiles of TM x TN (4 x 64), so `run` swaps the operands of a product
thinner in N than in M (D^T = B^T A^T, term for term: a matrix-vector product pads one row to 4,
not one column to 64), and cpu_gemm.plan leaves to the exact core a product that `suits` finds
too thin both ways (more than MAX_PADDING padded outputs per output, or padded copies beyond
MAX_COPIES times the exact core's; bench/thin_shapes.py).

Like every Numba kernel here, the route assumes the default floating-point environment (round
to nearest even, no FTZ/DAZ).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

from refsim.backends.operands import OperandRange, products_exact
from refsim.backends.threads import run_jobs, threads_for
from refsim.formats import FloatFormat, Format
from refsim.formats.policy import OVERFLOWS, ROUNDINGS
from refsim.kernels import mt_tile
from refsim.kernels.core import RDN, RNE, RTZ, RUP
from refsim.kernels.lane import bits_float, fast_constants, float_bits, round_lane, select
from refsim.kernels.tile import AVX512
from refsim.params import CARRIERS, format_params
from refsim.specs import AccumSpec

__all__ = ["COPY_FLOOR", "KNOWN_FIELDS", "MAX_COPIES", "MAX_PADDING", "RANGE_BITS",
           "MultitermPlan", "plan", "run", "suits", "tiling"]

RANGE_BITS = 480
"""In range: every set bit of every product, operand, C and accumulator value, and every
alignment power, between 2^-RANGE_BITS and 2^RANGE_BITS (module doc)."""
MAX_PADDING = 16
"""suits: at most this many padded outputs computed per output (a padded multiply-add here costs
about 1/40 of one in the exact core, bench/thin_shapes.py)."""
MAX_COPIES = 4
COPY_FLOOR = 1 << 26
"""suits: the padded copies (bytes) at most MAX_COPIES times the exact core's float64 copies of a
and b, or under COPY_FLOOR bytes."""
NS_PER_MT_MAC = 0.5  # one-thread nanoseconds per multiply-add (refsim.backends.threads)
TM, TN = 4, 64  # a job: TM rows by TN columns of outputs (the B panel of a group stays in L1)

# The AccumSpec fields whose every value this route handles or declines knowingly; a field not
# named here (a newer feature) must hold its default, or the spec goes to the exact core.
KNOWN_FIELDS = frozenset(("fmt", "rounding", "order", "chunk", "outer", "product", "sr_bits",
                           "overflow", "group", "width", "variant", "align", "truncation",
                           "operands", "subnormals", "c_entry"))
_F64 = np.dtype(np.float64)
F32_TINY, F32_EMAX = -149, 127  # float32: exponents of the smallest subnormal, of the largest bit


@dataclass(frozen=True)
class MultitermPlan:
    """The multiterm route: kernel key and the runtime constants."""

    key: tuple[int, int, int, int, int]  # (mode, outer mode, acc-aligned, floor, product align)
    # (run-time switches of the one CPU kernel; cuda_tile compiles one kernel per key)
    group: int
    width: int
    chunk: int
    acc_emin: int  # the accumulator format's emin (s's exponent floor under align product)
    operand_emin: int | None  # operands' emin (align product; flush), None: no format given
    flush: bool
    c_outer: bool
    fast: tuple
    ofast: tuple
    narrow1: bool = False  # pass 1 (the maxima) in float32 lanes (step 2')
    narrow2: bool = False  # pass 2 (the truncated sums) in float32 lanes (step 3')
    parts: int = 0  # under narrow2: the sums in float32 (0) or in 1 or 2 int32 parts (step 4')
    round32: int = -1  # the accumulator's rounding in the tile (fp32; step 5'), else -1
    run: bool = False  # a chunk's later groups with s in registers, float32 lanes (step 8)
    route = "multiterm-lanes"  # as cpu_tile.TilePlan.route: which fast path ran


def _defaults_elsewhere(acc: AccumSpec) -> bool:
    """Does every AccumSpec field this module does not know hold its default?"""
    for field in dataclasses.fields(acc):
        if field.name in KNOWN_FIELDS:
            continue
        if field.default is dataclasses.MISSING or getattr(acc, field.name) != field.default:
            return False
    return True


def _rounds_via_odd(fmt: Format) -> bool:
    """Step 5's condition on a format rounded from float64 round-to-odd values, and in range."""
    if not isinstance(fmt, FloatFormat) or not fmt.signed or not fmt.zero:
        return False
    smallest = fmt.emin - (fmt.man_bits if fmt.subnormals else 0)
    return fmt.man_bits <= 50 and fmt.emax < RANGE_BITS and smallest >= -RANGE_BITS


def _in_range(r: OperandRange) -> bool:
    return r.bits == 0 or (r.low >= -RANGE_BITS and r.high < RANGE_BITS)


def _constants(spec: AccumSpec) -> tuple:
    c_man, c_bias, _ = CARRIERS[_F64]
    return fast_constants(format_params(spec.fmt), c_man, c_bias, ROUNDINGS.index(spec.rounding),
                          OVERFLOWS.index(spec.overflow))


def plan(acc: AccumSpec, ra: OperandRange, rb: OperandRange, c: np.ndarray | None
         ) -> MultitermPlan | None:
    """The route for a multiterm GEMM whose operands have ranges ra and rb (finite: the caller,
    cpu_gemm.plan, checked that, no counts, no SR in the output Cast, K >= 1), with initial
    values c (flat float64 bits) or None; None when the module's conditions do not hold."""
    if acc.order != "multiterm" or not _defaults_elsewhere(acc):
        return None
    assert acc.group is not None and acc.width is not None  # order multiterm needs both
    outer = acc.outer_spec
    if acc.product is not None or "sr" in (acc.rounding, outer.rounding):
        return None
    if not (_defaults_elsewhere(outer) and outer.order == "sequential" and outer.product is None
            and _rounds_via_odd(acc.fmt) and _rounds_via_odd(outer.fmt)):
        return None
    if (acc.group + 1).bit_length() + acc.width + 1 > 53:  # step 4
        return None
    if not (products_exact(ra, rb, _F64) and _in_range(ra) and _in_range(rb)):
        return None
    if ra.bits and rb.bits and not (ra.low + rb.low >= -RANGE_BITS
                                    and ra.high + rb.high + 2 < RANGE_BITS):
        return None
    if c is not None:
        rc = OperandRange.of(c.view(np.float64))
        if not (rc.finite and _in_range(rc)):
            return None
    operands = acc.operands
    emin = -RANGE_BITS if operands is None else operands.emin
    if not -RANGE_BITS <= emin <= 0:
        return None
    if acc.align == "product" and ra.bits and rb.bits \
            and max(ra.high, emin) + max(rb.high, emin) >= RANGE_BITS:  # 2^(ea + eb) in range
        return None
    product_align = acc.align == "product"
    key = (ROUNDINGS.index(acc.rounding), ROUNDINGS.index(outer.rounding),
           int(acc.variant == "acc-aligned"), int(acc.truncation == "floor"), int(product_align))
    narrow1, narrow2, parts = _narrow(acc, ra, rb, emin)
    round32 = _round32(acc)
    return MultitermPlan(key, acc.group, acc.width, acc.chunk or 0, acc.fmt.emin,
                         None if operands is None else operands.emin,
                         acc.subnormals == "flush", acc.c_entry == "outer", _constants(acc),
                         _constants(outer), narrow1, narrow2, parts, round32,
                         _runs(acc, ra, rb, emin, narrow1 and narrow2 and parts > 0, round32))


def _runs(acc: AccumSpec, ra: OperandRange, rb: OperandRange, emin: int, int32_sums: bool,
          round32: int) -> bool:
    """Step 8's conditions: acc-aligned with product exponents, float32 lanes with int32 sums,
    an fp32 accumulator rounded toward zero in the tile (so s stays an fp32 value, finite), and
    every nonzero 2^(ea + eb) a float32 normal."""
    if not (int32_sums and round32 == RTZ and acc.variant == "acc-aligned"
            and acc.align == "product"):
        return False
    return ra.bits == 0 or rb.bits == 0 or max(ra.low, emin) + max(rb.low, emin) >= -126


def _round32(acc: AccumSpec) -> int:
    """Step 5': the mode in which the tile rounds G to a float32 accumulator itself (one
    conversion), or -1."""
    fmt = acc.fmt
    if not (isinstance(fmt, FloatFormat) and fmt == FloatFormat(8, 23)
            and acc.overflow == "default"):
        return -1
    mode = ROUNDINGS.index(acc.rounding)
    if mode == RNE or (AVX512 and mode in (RTZ, RUP, RDN)):
        return mode
    return -1


def _f32_exact(r: OperandRange) -> bool:
    """Is every value of the range a float32 (normal or subnormal)?"""
    return r.bits == 0 or (r.bits <= 24 and r.low >= F32_TINY and r.high <= F32_EMAX)


def _narrow(acc: AccumSpec, ra: OperandRange, rb: OperandRange, emin: int
            ) -> tuple[bool, bool, int]:
    """Which passes run in float32 lanes, and how pass 2 sums (0: in float32; 1, 2: in that
    many int32 parts): the conditions of steps 2' and 3' (module doc)."""
    assert acc.group is not None and acc.width is not None
    group, width = acc.group, acc.width
    if not (_f32_exact(ra) and _f32_exact(rb)):
        return False, False, 0
    if ra.bits == 0 or rb.bits == 0:  # every product a zero
        return True, (group + 1).bit_length() + width + 1 <= 24, 0
    exact = products_exact(ra, rb, np.dtype(np.float32))
    if acc.align == "product":
        lo_a, lo_b = max(ra.low, emin), max(rb.low, emin)  # the operand exponents' bounds
        hi_a, hi_b = max(ra.high, emin), max(rb.high, emin)
        narrow1 = (min(lo_a, lo_b, lo_a + lo_b) >= F32_TINY
                   and max(hi_a, hi_b, hi_a + hi_b) <= F32_EMAX)
        e_lo, e_hi = lo_a + lo_b, hi_a + hi_b
    else:
        narrow1 = exact
        e_lo, e_hi = ra.low + rb.low, ra.high + rb.high + 1
    if not (exact and acc.truncation == "toward-zero" and e_lo - width + 1 >= -127
            and e_hi + 2 <= 126):
        return narrow1, False, 0
    for parts, terms, bits in ((0, group + 1, 24), (1, group + 1, 31),
                               (2, (group + 1) // 2 + 1, 31)):
        if terms.bit_length() + width + 1 <= bits:
            return narrow1, True, parts
    return narrow1, False, 0


# ---- running -------------------------------------------------------------------------------------
def run(p: MultitermPlan, a3: np.ndarray, b3: np.ndarray, c: np.ndarray | None = None
        ) -> np.ndarray:
    """The raw results (P, M, N) as float64 for a (P, M, K) and b (P, N, K), with initial values
    c (flat float64 bits, one per output) or None: NaN where the exact core must redo the
    output. Jobs run on numba.get_num_threads() threads (one below threads_for's size); the
    results do not depend on the count."""
    n_batch, n_rows, n_k = a3.shape
    n_cols = b3.shape[1]
    swap, rows, cols = tiling(n_rows, n_cols)
    if swap:  # D^T = B^T A^T: a thin D runs its long side along TN
        c_t = None if c is None else np.ascontiguousarray(
            c.reshape(n_batch, n_rows, n_cols).transpose(0, 2, 1)).reshape(-1)
        return np.ascontiguousarray(np.swapaxes(run(p, b3, a3, c_t), 1, 2))
    # whole tiles (rows x cols): zeros around
    a = np.zeros((n_batch, rows, n_k))
    a[:, :n_rows] = a3
    bt = np.zeros((n_batch, n_k, cols))
    bt[:, :, :n_cols] = np.swapaxes(b3, 1, 2)  # (P, K, N): a step reads TN contiguous values
    if p.flush:  # kernels.accum_core.flush_operand: the zero of x's sign below 2^emin
        assert p.operand_emin is not None  # subnormals='flush' needs operands
        tiny = 2.0 ** p.operand_emin
        a = np.where(np.abs(a) < tiny, np.copysign(0.0, a), a)
        bt = np.where(np.abs(bt) < tiny, np.copysign(0.0, bt), bt)
    product_align = bool(p.key[4])
    if product_align:  # 2^max(floor(log2|x|), emin), 0 for a zero operand
        pa, pb = _exponent_powers(a, p.operand_emin), _exponent_powers(bt, p.operand_emin)
        if p.narrow1:
            pa, pb = pa.astype(np.float32), pb.astype(np.float32)
    if p.narrow2:  # exact (plan: _f32_exact)
        a, bt = a.astype(np.float32), bt.astype(np.float32)
    if not product_align:  # the kernel takes |pa * pb|: the operands themselves when it can
        lane = np.float32 if p.narrow1 else np.float64
        pa = a if a.dtype == lane else a.astype(lane)
        pb = bt if bt.dtype == lane else bt.astype(lane)
    has_c = c is not None
    cv = np.zeros((n_batch, rows, cols) if has_c else (1, 1, 1))
    if c is not None:
        cv[:, :n_rows, :n_cols] = c.view(np.float64).reshape(n_batch, n_rows, n_cols)
    out = np.empty((n_batch, rows, cols))
    chunk = p.chunk if p.chunk > 0 else n_k
    mode, omode, _, floor, _ = p.key
    switches = np.array([has_c, p.c_outer], np.int64)
    dims = np.array([n_batch, rows, n_k, cols], np.int64)
    outer_add = (has_c and p.c_outer) or chunk < n_k  # o = round_o(o + s) happens
    kernel = _gemm_kernel(mode, omode, bool(floor), product_align, p.narrow1, p.narrow2,
                          p.parts, p.round32, bool(p.key[2]), outer_add, p.run)
    n_jobs = n_batch * (rows // TM) * (cols // TN)

    def jobs(j0: int, j1: int) -> None:
        kernel(np.int64(j0), np.int64(j1), dims, a.reshape(-1), pa.reshape(-1), bt.reshape(-1),
               pb.reshape(-1), cv, out, switches, np.int64(p.group), np.int64(p.width),
               np.int64(chunk), np.int64(p.acc_emin), p.fast, p.ofast)

    with threads_for(float(n_batch) * rows * cols * n_k * NS_PER_MT_MAC):
        run_jobs(jobs, n_jobs, numba.get_num_threads())
    return np.ascontiguousarray(out[:, :n_rows, :n_cols])  # the caller writes into it flat


def tiling(n_rows: int, n_cols: int) -> tuple[bool, int, int]:
    """How run lays out a (P, n_rows, K) x (P, n_cols, K) product in TM x TN tiles: whether it
    swaps the operands (the reduction is symmetric in a and b: D^T = B^T A^T term by term),
    then the padded rows and columns. A matrix-vector shape (N = 1) swapped pads 1 row to TM,
    not 1 column to TN (64x the memory and the work)."""
    def padded(r: int, c: int) -> tuple[int, int]:
        return -(-r // TM) * TM, -(-c // TN) * TN
    plain, swapped = padded(n_rows, n_cols), padded(n_cols, n_rows)
    swap = swapped[0] * swapped[1] < plain[0] * plain[1]
    return (swap, *(swapped if swap else plain))


def suits(n_batch: int, n_rows: int, n_cols: int, n_k: int, product_align: bool) -> bool:
    """Does run suit this shape better than the exact core: at most MAX_PADDING padded outputs
    per output (the work), and padded float64 copies at most MAX_COPIES times the exact core's
    float64 copies of a and b, or under COPY_FLOOR bytes (the memory)?"""
    _, rows, cols = tiling(n_rows, n_cols)
    if rows * cols > MAX_PADDING * n_rows * n_cols:
        return False
    copies = 8 * n_batch * n_k * (rows + cols) * (2 if product_align else 1)  # + the powers
    return copies <= max(COPY_FLOOR, MAX_COPIES * 8 * n_batch * n_k * (n_rows + n_cols))


def _exponent_powers(x: np.ndarray, emin: int | None) -> np.ndarray:
    """2^max(floor(log2|x|), emin) per element (exact: in range), 0 where x is a zero. x's values
    are float64 normals or zeros (in range), so 2^floor(log2|x|) is x's pattern with the sign and
    the significand cleared; one array and a mask, no temporaries of x's size in float64."""
    p = np.empty(x.shape, np.float64)
    np.bitwise_and(x.view(np.uint64), np.uint64(0x7FF << 52), out=p.view(np.uint64))
    if emin is not None:
        np.maximum(p, 2.0 ** emin, out=p, where=p != 0.0)
    return p



def _llvm_round(name: str, doc: str):
    """An intrinsic calling llvm.<name>.f64 (vectorizable: vroundpd)."""

    def fn(typingctx, x):
        if x != types.float64:
            return None

        def codegen(context, builder, signature, args):
            f = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.DoubleType(), [ir.DoubleType()]),
                f"llvm.{name}.f64")
            return builder.call(f, args)

        return types.float64(x), codegen

    fn.__doc__ = doc
    return intrinsic(fn)


trunc_f64 = _llvm_round("trunc", "x rounded toward zero to an integer (exact), sign kept.")
floor_f64 = _llvm_round("floor", "x rounded toward -inf to an integer (exact), sign kept.")

_SIGN = np.uint64(1 << 63)
_ABS = np.uint64((1 << 63) - 1)
_ONE = np.uint64(1)
_ZERO = np.uint64(0)
_ALL = np.uint64((1 << 64) - 1)
_INF = np.uint64(0x7FF << 52)
_NAN = np.float64(np.nan)


@njit(cache=True, inline="always")
def _odd_add(x, t, rdn):
    """x + t rounded to odd at float64's precision (TwoSum), as bits; an exact zero sum signed
    -0 unless both are +0 when rdn (module doc, step 5)."""
    s = x + t
    bb = s - x
    err = (x - (s - bb)) + (t - bb)
    sb = float_bits(s)
    eb = float_bits(err)
    toward = select(np.uint64(np.uint64(eb ^ sb) & _SIGN) == _ZERO, _ONE, _ALL)
    fix = (np.uint64(eb & _ABS) != _ZERO) & (np.uint64(sb & _ONE) == _ZERO)
    sb = np.uint64(sb + select(fix, toward, _ZERO))
    if rdn:
        sign = np.uint64(np.uint64(float_bits(x) | float_bits(t)) & _SIGN)
        sb = select(np.uint64(sb & _ABS) == _ZERO, sign, sb)
    return sb


@njit(cache=True, inline="always")
def _finite(x):
    """Is the float64 x finite (one integer compare)?"""
    return np.uint64(float_bits(x) & _ABS) < _INF


# One kernel per key (_gemm_kernel: modes, truncation, alignment, variant, lanes, whether an outer
# sum o + s happens), compiled on its first use: a call compiles the roundings and lane types it
# reaches and nothing else (a merged kernel with every mode as a run-time switch compiled 12
# round_lane arms and 6 group roundings into one function, 20 s of a cold first matmul). C and
# its entry stay run-time switches: they cost little code. What must be a constant is a literal
# argument of a small helper: round_lane's mode (it picks the rounding at compile time), and the
# register tile's shapes and flags (refsim.kernels.mt_tile). The kernel is not parallel: Numba's
# parfor lowering of it cost about 10 s of a cold first call; `run` splits the jobs over threads
# of its own instead (the kernel releases the GIL).


@njit(cache=True)
def _round_alone(mode, g, s, fast, have_s):
    """Step 5 for a tile in the literal `mode`: s = round(G); a non-finite s (when have_s)
    stays NaN (module doc). g, s: flat tiles."""
    for j in range(TM * TN):
        gv = g[j]
        r = round_lane(mode, float_bits(gv), fast, _ZERO, _ZERO)
        ok = _finite(gv) & (_finite(s[j]) | (not have_s))
        s[j] = select(ok, bits_float(r), _NAN)


@njit(cache=True)
def _round_add(mode, g, s, fast):
    """Step 5 (acc-excluded) for a tile in the literal `mode`: s = round(s + G)."""
    rdn = mode == RDN
    for j in range(TM * TN):
        gv, sv = g[j], s[j]
        r = round_lane(mode, _odd_add(sv, gv, rdn), fast, _ZERO, _ZERO)
        s[j] = select(_finite(sv) & _finite(gv), bits_float(r), _NAN)


@njit(cache=True)
def _promote_first(mode, s, o, ofast):
    """Step 6 for a tile in the literal `mode`: o = round_o(s). s, o: flat tiles."""
    for j in range(TM * TN):
        sv = s[j]
        r = round_lane(mode, float_bits(sv), ofast, _ZERO, _ZERO)
        o[j] = select(_finite(sv), bits_float(r), _NAN)


@njit(cache=True)
def _promote_add(mode, s, o, ofast):
    """Step 6 for a tile in the literal `mode`: o = round_o(o + s)."""
    for j in range(TM * TN):
        sv, ov = s[j], o[j]
        r = round_lane(mode, _odd_add(ov, sv, mode == RDN), ofast, _ZERO, _ZERO)
        o[j] = select(_finite(sv) & _finite(ov), bits_float(r), _NAN)


_GEMMS: dict[tuple, Callable[..., None]] = {}


def _gemm_kernel(mode: int, omode: int, floor: bool, product: bool, narrow1: bool,
                 narrow2: bool, parts: int, round32: int, aligned: bool, outer_add: bool,
                 runs: bool) -> Callable[..., None]:
    """The kernel of one (accumulator mode, outer mode, floor truncation, align product, float32
    lanes in pass 1, in pass 2, int32 parts, rounding in the tile, acc-aligned, an outer sum
    o + s, later groups in one run), made on first use."""
    key = (mode, omode, floor, product, narrow1, narrow2, parts, round32, aligned, outer_add,
           runs)
    if key not in _GEMMS:
        _GEMMS[key] = _make_gemm(*key)
    return _GEMMS[key]


NV = 2  # float64 vectors per tile row in a call of mt_tile.group_tile (16 columns)
NV_NARROW = 4  # 32 columns when pass 2 runs in float32 lanes (16 per vector)
NV_RUN = 2  # float32 vectors per tile row in a call of mt_tile.groups_tile (32 columns)


def _make_gemm(MODE: int, OMODE: int, FLOOR: bool, PRODUCT: bool, NARROW1: bool, NARROW2: bool,
               PARTS: int, ROUND32: int, ALIGNED: bool, OUTER_ADD: bool, RUNS: bool):
    """out[p, i, j] = the multiterm reduction of a[p, i, :] . bt[p, :, j] (module doc) for the
    jobs job0 .. job1-1. Closure cells are plain ints and bools (and mt_tile's source hash), so
    Numba's on-disk cache finds the kernel again in a new process."""
    RDN_MODE = MODE == RDN  # a plain bool: Numba prunes the branches on it
    ABSOLUTE = not PRODUCT  # normalized: the maxima of |a b| (pass 1 reads a and b themselves)
    NVT = NV_NARROW if NARROW2 and PARTS == 0 else NV
    SUB = 8 * NVT  # columns of one group_tile call
    NVR = NV_RUN  # a closure cell (Numba's cache key), not a global
    SUB_RUN = 16 * NVR  # columns of one groups_tile call
    # 2^-q in pass 2: clamped to float32's normals in float32 lanes (step 3': exact)
    SC_LO, SC_HI = (-126, 127) if NARROW2 else (-1022, 1023)
    emitter = mt_tile.SOURCE_HASH

    @njit(nogil=True, cache=True)
    def gemm(job0, job1, dims, a, pa, bt, pb, cv, out, switches, group, width, chunk, acc_emin,
             fast, ofast):
        """Jobs job0 .. job1-1 (a job: TM rows by TN columns of outputs, row blocks fastest);
        NaN where an output ends non-finite. a, pa: (P, rows, K) flat; bt, pb: (P, K, cols)
        flat; dims: (P, rows, K, cols), rows and columns whole tiles. switches (int64):
        has C, C outer."""
        _ = emitter  # referenced, so a closure cell: Numba's cache key includes it
        has_c, c_outer = switches[0] != 0, switches[1] != 0
        n_rows, n_k, n_cols = dims[1], dims[2], dims[3]
        row_blocks = n_rows // TM
        per_batch = row_blocks * (n_cols // TN)
        g = np.empty(TM * TN)
        s = np.empty(TM * TN)
        o = np.empty(TM * TN)
        for job in range(job0, job1):  # row blocks fastest: they share a B panel
            p = job // per_batch
            rest = job - p * per_batch
            jb = rest // row_blocks
            i0 = (rest - jb * row_blocks) * TM
            j0 = jb * TN
            a_base = (p * n_rows + i0) * n_k
            b_base = p * n_k * n_cols + j0
            if has_c and c_outer:
                for ii in range(TM):
                    for j in range(TN):
                        o[ii * TN + j] = cv[p, i0 + ii, j0 + j]
            first_outer = not (has_c and c_outer)
            for c0 in range(0, n_k, chunk):
                c1 = min(c0 + chunk, n_k)
                have_s = has_c and not c_outer and c0 == 0
                if have_s:
                    for ii in range(TM):
                        for j in range(TN):
                            s[ii * TN + j] = cv[p, i0 + ii, j0 + j]
                if RUNS:  # step 8: the first group as below, the rest in one run
                    g1 = min(c0 + group, c1)
                    for jc in range(0, TN, SUB):
                        mt_tile.group_tile(TM, NVT, ABSOLUTE, FLOOR, RDN_MODE, PRODUCT, PARTS,
                                           ROUND32, pa, pb,
                                           a, bt, a_base + c0, n_k, b_base + c0 * n_cols + jc,
                                           n_cols, g1 - c0, s, g, jc, TN,
                                           np.int64(have_s), width, acc_emin,
                                           np.int64(SC_LO), np.int64(SC_HI),
                                           np.int64(1), np.int64(have_s))
                    if g1 < c1:
                        for jc in range(0, TN, SUB_RUN):
                            mt_tile.groups_tile(TM, NVR, PARTS, pa, pb, a, bt, a_base + g1,
                                                n_k, b_base + g1 * n_cols + jc, n_cols, c1 - g1,
                                                group, s, jc, TN, width)
                    have_s = True
                else:
                    for g0 in range(c0, c1, group):
                        g1 = min(g0 + group, c1)
                        round_here = ALIGNED or not have_s  # s = round(G), not round(s + G)
                        # Steps 2-4: the group's exact sum G per output, in registers.
                        for jc in range(0, TN, SUB):
                            mt_tile.group_tile(TM, NVT, ABSOLUTE, FLOOR, RDN_MODE, PRODUCT,
                                               PARTS, ROUND32, pa, pb, a, bt, a_base + g0, n_k,
                                               b_base + g0 * n_cols + jc, n_cols, g1 - g0, s,
                                               g, jc, TN,
                                               np.int64(ALIGNED and have_s), width, acc_emin,
                                               np.int64(SC_LO), np.int64(SC_HI),
                                               np.int64(round_here), np.int64(have_s))
                        # Step 5: the group's rounding (done in the tile when ROUND32 >= 0).
                        # The branches on closure constants are pruned: a kernel compiles only
                        # the roundings its spec can reach.
                        if ALIGNED:
                            if ROUND32 < 0:
                                _round_alone(MODE, g, s, fast, have_s)
                        elif have_s:
                            _round_add(MODE, g, s, fast)
                        elif ROUND32 < 0:
                            _round_alone(MODE, g, s, fast, False)
                        have_s = True
                # Step 6: promotion into the outer accumulator.
                if OUTER_ADD:
                    if first_outer:
                        _promote_first(OMODE, s, o, ofast)
                    else:
                        _promote_add(OMODE, s, o, ofast)
                else:
                    _promote_first(OMODE, s, o, ofast)
                first_outer = False
            for ii in range(TM):
                for j in range(TN):
                    v = o[ii * TN + j]
                    out[p, i0 + ii, j0 + j] = select(_finite(v), v, _NAN)

    return gemm
