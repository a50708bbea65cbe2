"""The fast path of sequential and chunked accumulation on the CPU, with an exact fix-up.

refsim.accumulate sends a product here when `plan` accepts it; every output it computes is
bit-identical to kernels.accum_core's (tests/refsim/test_accumulate_fast.py holds it to that).
`plan` first asks refsim.backends.cpu_tile for a register-tiled route (the common cases, 3-30x
faster than the rows below); the round-to-odd rows described here take what those decline
(route "odd-rows": other accumulator formats, rna and rto, product Casts, outer formats other
than the lane's).

How one step s = round(acc + t) is computed in a float lane F (float32 or float64):
1. t = a[m, k] * b[k, n] in F: exact, because `plan` checked that the operands' significands
   total at most F's precision and that every product lies in F's range (no rounding, no
   overflow, no underflow below F's smallest subnormal). With a product Cast, t is then rounded
   to it by round_lane, once, from that exact value.
2. s = acc + t in F, and its rounding error err by TwoSum (Knuth; six additions, exact in binary
   floating point, subnormals included, unless s overflows).
3. Round to odd: if err != 0 and s's last bit is 0, s moves one unit toward err. The result is
   the exact sum rounded to odd at F's precision. Rounding that once more to a format with at
   least two bits fewer, in any deterministic mode, gives the exact sum's correct rounding
   (Boldo & Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using
   rounding to odd", IEEE TC 2008): the odd last bit keeps the ties and the sticky bit.
   `plan` therefore asks man_bits <= F's man_bits - 2 of the accumulator and F-subnormal steps
   at least four times finer than the accumulator's smallest quantum.
4. round_lane(mode) rounds s's bits to the accumulator (refsim.kernels.lane, shared with
   quantize's fast pass: overflow policy, subnormals, signed zeros included). F adds an exact zero
   as +0 (x + -x, +0 + -0); under rdn the contract wants -0, so the sign is set there.
Chunked order: each chunk's result is promoted into the outer accumulator in float64 lanes by the
same three steps (outer formats of at most 51 significand bits).

Rare lanes: a step whose s is Inf or NaN (an overflow of F, an Inf accumulator, a product Cast
that overflowed) stores NaN; NaN propagates to the end of the row, and refsim.accumulate redoes
every NaN output with the exact core (kernels.accum_core). Non-finite operands, SR anywhere, event
counts and the other orders never come here.

Kernels are compiled per (accumulator mode, product mode, outer mode, lane type) on first use,
so a plain sequential fp16 GEMM compiles one kernel, not forty; their operands arrive read-only
(kernel_args.readonly), so a read-only caller (torch's tensors) does not compile a second copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from refsim.backends import cpu_multiterm, cpu_tile
from refsim.backends.operands import OperandRange, lane_limits, products_exact
from refsim.backends.threads import NS_PER_FAST_MAC, threads_for
from refsim.formats import FloatFormat, Format
from refsim.formats.block_format import BlockFormat
from refsim.formats.policy import OVERFLOWS, ROUNDINGS
from refsim.kernels import core
from refsim.kernels.lane import bits_float, fast_constants, float_bits, round_lane, select
from refsim.params import CARRIERS, format_params, readonly
from refsim.specs import AccumSpec, Cast

NONE = -1  # "no product Cast" / "no outer accumulator" in a kernel key
_LANES = (np.dtype(np.float32), np.dtype(np.float64))  # tried in this order: narrower is faster


# ---- eligibility (host side) ---------------------------------------------------------------------
def _rounds_via_odd(fmt: Format, lane: np.dtype) -> bool:
    """Can a lane-precision round-to-odd value be rounded to fmt correctly (two guard bits
    everywhere, fmt inside the lane's range)?"""
    if not isinstance(fmt, FloatFormat) or not fmt.signed or not fmt.zero:
        return False
    c_man, c_emax, c_min_exp = lane_limits(lane)
    smallest = fmt.emin - (fmt.man_bits if fmt.subnormals else 0)
    return fmt.man_bits <= c_man - 2 and fmt.emax <= c_emax and smallest >= c_min_exp + 2


@dataclass(frozen=True)
class Plan:
    """A fast-path GEMM: lane type, kernel key and the round_lane constants."""

    lane: np.dtype
    key: tuple[int, int, int, str]
    chunk: int
    fast: tuple
    pfast: tuple
    ofast: tuple
    route = "odd-rows"  # as cpu_tile.TilePlan.route: which fast path ran


def _deterministic(rounding: str) -> bool:
    return rounding != "sr"


def _p3109(fmt: object) -> bool:
    """IEEE P3109 formats (and the ext encoding) take the exact core: the routes here were
    written for refsim's own rules (precision 1's code-parity ties, unsigned negatives to 0 and
    the extended domain's zero are the exact core's, kernels.core)."""
    return isinstance(fmt, FloatFormat) and (fmt.p3109 or fmt.specials == "ext")


def _constants(fmt: Format, rounding: str, overflow: str, lane: np.dtype) -> tuple:
    c_man, c_bias, _ = CARRIERS[lane]
    return fast_constants(format_params(fmt), c_man, c_bias, ROUNDINGS.index(rounding),
                          OVERFLOWS.index(overflow))


def plan(a3: np.ndarray, b3: np.ndarray | None, acc: AccumSpec, cast: Cast | None,
         count_on: bool, c: np.ndarray | None = None, seed: int | None = None
         ) -> Plan | cpu_tile.TilePlan | cpu_multiterm.MultitermPlan | None:
    """The fast path for a (P, M, K) @ b (P, N, K)^T under acc, with initial values c (flat
    float64 bits) or None: the multiterm order's lanes (refsim.backends.cpu_multiterm), a
    register-tiled route (refsim.backends.cpu_tile) where one applies, else this module's
    round-to-odd rows, else None (then refsim.accumulate runs the exact core on every output).
    seed: the accumulation's seed; without it an sr accumulator gets None."""
    if b3 is None or count_on or a3.shape[2] == 0:
        return None
    if acc.chunk_order not in (None, "sequential"):
        return None  # a pairwise sum inside each chunk (MI250X fp16): the exact core's
    outer = acc.outer_spec if acc.order == "chunked" else None
    if any(_p3109(s.fmt) for s in (acc, acc.product, acc.outer_spec, cast) if s is not None):
        return None
    specs = [c.rounding for c in (acc.product, outer, cast) if c is not None]
    # An sr accumulator (seed given, not multiterm) may take cpu_tile's sr-exact-sum, nothing else.
    sr = not _deterministic(acc.rounding)
    if not all(_deterministic(r) for r in specs) or (sr and (seed is None
                                                             or acc.order == "multiterm")):
        return None
    if cast is not None and not _cast_fits_float64(cast):
        return None
    ra, rb = OperandRange.of(a3), OperandRange.of(b3)
    if not (ra.finite and rb.finite):
        return None
    if acc.order == "multiterm":
        if not cpu_multiterm.suits(a3.shape[0], a3.shape[1], b3.shape[1], a3.shape[2],
                                   acc.align == "product"):
            return None  # thinner than a tile both ways: the exact core is faster or lighter
        return cpu_multiterm.plan(acc, ra, rb, c)
    if c is not None:  # only the multiterm lanes take C so far
        return None
    exact_lanes = tuple(lane for lane in _LANES if products_exact(ra, rb, lane))
    tiled = cpu_tile.plan(acc, ra, rb, exact_lanes, a3.shape[2], seed)
    if tiled is not None or sr:
        return tiled
    if acc.order not in ("sequential", "chunked"):
        return None
    if outer is not None and not _rounds_via_odd(outer.fmt, np.dtype(np.float64)):
        return None
    for lane in _LANES:
        if not (_rounds_via_odd(acc.fmt, lane) and products_exact(ra, rb, lane)):
            continue
        if acc.product is not None:
            assert isinstance(acc.product.fmt, FloatFormat)  # AccumSpec: float products only
            if not _rounds_via_odd(acc.product.fmt, lane):
                continue
        fast = _constants(acc.fmt, acc.rounding, acc.overflow, lane)
        pfast, pmode = fast, NONE
        if acc.product is not None:
            assert isinstance(acc.product.fmt, FloatFormat)
            pfast = _constants(acc.product.fmt, acc.product.rounding, acc.product.overflow, lane)
            pmode = ROUNDINGS.index(acc.product.rounding)
        ofast = _constants(acc.fmt, "rne", "default", np.dtype(np.float64))
        omode, chunk = NONE, a3.shape[2]
        if outer is not None:
            assert acc.chunk is not None  # order chunked (outer is set) needs chunk
            ofast = _constants(outer.fmt, outer.rounding, outer.overflow, np.dtype(np.float64))
            omode, chunk = ROUNDINGS.index(outer.rounding), int(acc.chunk)
        key = (ROUNDINGS.index(acc.rounding), pmode, omode, lane.name)
        return Plan(lane, key, chunk, fast, pfast, ofast)
    return None


def _cast_fits_float64(cast: Cast) -> bool:
    """The output Cast is applied by refsim.quantize to the float64 results."""
    from refsim.params import carrier_holds
    assert not isinstance(cast.fmt, BlockFormat)  # GemmSpec.out: element formats only
    return carrier_holds(cast.fmt, np.dtype(np.float64))


# ---- kernels -------------------------------------------------------------------------------------
_KERNELS: dict[tuple[int, int, int, str], Callable[..., None]] = {}


def run(p: Plan | cpu_tile.TilePlan | cpu_multiterm.MultitermPlan, a3: np.ndarray,
        b3: np.ndarray, c: np.ndarray | None = None) -> np.ndarray:
    """The raw results (P, M, N) as float64: accumulator (sequential) or outer (chunked,
    multiterm) values, NaN where the exact core must redo the output. c: the initial values the
    plan was made with."""
    if isinstance(p, cpu_multiterm.MultitermPlan):
        return cpu_multiterm.run(p, a3, b3, c)
    if isinstance(p, cpu_tile.TilePlan):
        return cpu_tile.run(p, a3, b3)
    a = np.ascontiguousarray(a3, dtype=p.lane)
    b = np.ascontiguousarray(np.swapaxes(b3, 1, 2), dtype=p.lane)  # (P, K, N): rows along n
    raw = np.empty((a.shape[0], a.shape[1], b.shape[2]), np.float64)
    kernel = _KERNELS.get(p.key)
    if kernel is None:
        kernel = _KERNELS[p.key] = _make_kernel(*p.key)
    with threads_for(a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2] * NS_PER_FAST_MAC):
        kernel(readonly(a), readonly(b), raw, np.int64(p.chunk), p.fast, p.pfast, p.ofast)
    return raw


def _make_kernel(mode: int, pmode: int, omode: int, lane_name: str):
    """The kernel of one key. Closure cells are plain ints and a NumPy type, so Numba's on-disk
    cache finds it again in a new process."""
    U = CARRIERS[np.dtype(lane_name)][2]
    W = 8 * np.dtype(U).itemsize
    ZERO, ONE, ALL_ONES = U(0), U(1), U(np.iinfo(U).max)
    SIGN = U(1 << (W - 1))
    ABS = U(SIGN - ONE)
    c_man, c_bias, _ = CARRIERS[np.dtype(lane_name)]
    INF = U((2 * c_bias + 1) << c_man)
    NAN = U(INF | (ONE << U(c_man - 1)))
    Z64, ONE64, ALL64 = np.uint64(0), np.uint64(1), np.uint64(np.iinfo(np.uint64).max)
    SIGN64 = np.uint64(1 << 63)
    ABS64 = np.uint64(SIGN64 - ONE64)
    INF64 = np.uint64(0x7FF << 52)
    NAN64 = np.uint64(0x7FF8 << 48)
    RDN = core.RDN

    @njit(parallel=True, cache=True)
    def gemm(a, b, raw, chunk, fast, pfast, ofast):
        """raw[p, m, n] = the declared reduction of a[p, m, :] . b[p, :, n] (see module doc)."""
        n_batch, n_rows, n_k = a.shape
        n_cols = np.uint64(b.shape[2])
        for row in prange(n_batch * n_rows):
            p = row // n_rows
            m = row - p * n_rows
            acc = np.empty(b.shape[2], a.dtype)
            out = raw[p, m]
            for k0 in range(0, n_k, chunk):
                k1 = min(k0 + chunk, n_k)
                # The first term of a chunk: round(t) (refsim.kernels.accum_core.reduce_sequential).
                av = a[p, m, k0]
                brow = b[p, k0]
                for n in range(n_cols):
                    tb = float_bits(av * brow[n])
                    if pmode != NONE:
                        tb = round_lane(pmode, tb, pfast, ZERO, ZERO)
                    r = round_lane(mode, tb, fast, ZERO, ZERO)
                    acc[n] = bits_float(select(U(tb & ABS) >= INF, NAN, r))
                for k in range(k0 + 1, k1):
                    av = a[p, m, k]
                    brow = b[p, k]
                    for n in range(n_cols):
                        t = av * brow[n]
                        if pmode != NONE:
                            t = bits_float(round_lane(pmode, float_bits(t), pfast, ZERO, ZERO))
                        x = acc[n]
                        s = x + t
                        bb = s - x
                        err = (x - (s - bb)) + (t - bb)
                        sb = float_bits(s)
                        eb = float_bits(err)
                        bad = U(sb & ABS) >= INF  # before the fix below can move an Inf
                        # Round to odd: one unit toward err when inexact and s's last bit is 0.
                        toward = select(U(U(eb ^ sb) & SIGN) == ZERO, ONE, ALL_ONES)
                        fix = (U(eb & ABS) != ZERO) & (U(sb & ONE) == ZERO)
                        sb = U(sb + select(fix, toward, ZERO))
                        if mode == RDN:  # an exact zero sum is -0 unless both were +0
                            sign = U(U(float_bits(x) | float_bits(t)) & SIGN)
                            sb = select(U(sb & ABS) == ZERO, sign, sb)
                        r = round_lane(mode, sb, fast, ZERO, ZERO)
                        acc[n] = bits_float(select(bad, NAN, r))
                if omode == NONE:
                    for n in range(n_cols):
                        out[n] = np.float64(acc[n])
                elif k0 == 0:  # o = round_o(s_0) (refsim.kernels.accum_core.promote)
                    for n in range(n_cols):
                        sb = float_bits(np.float64(acc[n]))
                        r = round_lane(omode, sb, ofast, Z64, Z64)
                        out[n] = bits_float(select(np.uint64(sb & ABS64) >= INF64, NAN64, r))
                else:  # o = round_o(o + s_c), the same three steps in float64
                    for n in range(n_cols):
                        x = out[n]
                        t = np.float64(acc[n])
                        s = x + t
                        bb = s - x
                        err = (x - (s - bb)) + (t - bb)
                        sb = float_bits(s)
                        eb = float_bits(err)
                        bad = np.uint64(sb & ABS64) >= INF64
                        toward = select(np.uint64(np.uint64(eb ^ sb) & SIGN64) == Z64, ONE64,
                                        ALL64)
                        fix = (np.uint64(eb & ABS64) != Z64) & (np.uint64(sb & ONE64) == Z64)
                        sb = np.uint64(sb + select(fix, toward, Z64))
                        if omode == RDN:
                            sign = np.uint64(np.uint64(float_bits(x) | float_bits(t)) & SIGN64)
                            sb = select(np.uint64(sb & ABS64) == Z64, sign, sb)
                        r = round_lane(omode, sb, ofast, Z64, Z64)
                        out[n] = bits_float(select(bad, NAN64, r))

    return gemm
