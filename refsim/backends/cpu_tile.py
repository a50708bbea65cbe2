"""Register-tiled GEMM routes on the CPU: the sequential, chunked, Kahan and pairwise sums of
every output in their declared order, each rounding done by a few lane instructions that provably
give the exact core's bits (kernels.accum_core; tests/refsim/test_gemm_routes.py holds every route
to that).

refsim.backends.cpu_gemm.plan asks `plan` first; where no route here applies it takes its own
round-to-odd rows, and where that does not apply either, the exact core runs. The tile itself
(TM rows by TN outputs in registers, k outermost, K never split: each output is summed in its
declared order) is refsim.kernels.tile; this module chooses the route, packs the operands and
runs it.

Notation: F is the lane's format (float32, or float64), p its precision (24, 53); G is the
accumulator format, q its precision (man_bits + 1), Qmin the exponent of its smallest quantum
(2^(emin - man_bits)). For a real s, o_X(s) is s rounded to X in mode o, overflow included, as
IEEE 754 rounds (and the contract, docs/rounding.md, agrees for these formats: the default
overflow policy gives +-Inf in the modes that round away from zero for that sign and +-max in
the others). Products t = a*b are exact in F (cpu_gemm checks the operands' significand
lengths and exponent range, refsim.backends.operands), so the lane's fused multiply-add
o_F(t + acc) equals a multiply and an add. Step 0 adds t_0 to -0.0 (+0.0 under rdn), which
gives t_0 itself with its sign in every mode (-0 + +0 = +0 except under rdn, where
+0 + -0 = -0): the first step is round(t_0), as refsim.kernels.accum_core.reduce_sequential defines
it.

Routes (the name is TilePlan.route; the conditions are those `plan` checks):

lane-native: G = F (fp32 in float32 lanes, fp64 in float64), mode rne, rtz, rup or rdn. Step:
  acc = o_F(t + acc), one fused multiply-add (the directed modes use AVX-512's embedded
  rounding, {rz-sae} etc.). That is the definition of the step, with IEEE's signed-zero rule
  for an exact zero sum (+0, or -0 under rdn; zeros of one sign keep it), which is the
  contract's.

double-rounding (rne; G = fp16, bf16, tf32 or another e8mX with q <= 11 in float32 lanes, or fp32
  in float64 lanes): every product is a value of G extended upward (at most q significant bits,
  a multiple of 2^Qmin), and p >= 2q + 2. Step: acc = rne_G(rne_F(t + acc)). Claim:
  rne_G(rne_F(s)) = rne_G(s) for s = x + y with x, y values of G (extended upward: a product
  may exceed G's largest value; its rounding then overflows in both).
  Proof (Figueroa, "When is double rounding innocuous?", SIGNUM Newsletter 30(3), 1995, proves
  this for p >= 2q + 1; here is the case we use, with G's subnormal range). Let |x| >= |y|,
  x != 0, e = floor(log2|x|), y != 0 with f = floor(log2|y|) (y = 0: s = x, exact). x and y
  are multiples of 2^(e-q+1) and 2^(f-q+1), and of 2^Qmin.
  (a) f >= e - (p - q - 1): s is a multiple of 2^(f-q+1) and |s| < 2^(e+2), so it has at most
      p significant bits; it is a multiple of 2^Qmin >= F's smallest subnormal: s is in F and
      rne_F(s) = s.
  (b) f <= e - p + q: |y| <= 2^(f+1) - 2^(f-q+1) <= 2^(e-p+q+1) - 2^(e-p+1)
      <= u/4 - 2^(e-p+1) with u = 2^(e-q+1) (p >= 2q + 2). If G's quantum at x is 2^Qmin > u
      (x below G's normal range), y is a multiple of 2^Qmin smaller than 2^Qmin: y = 0.
      Otherwise G's quantum at x is u, x's neighbours in G are at distance u, or u/2 toward
      zero when |x| is a power of two, so every midpoint m of G lies at least u/4 from x and
      |m - s| >= 2^(e-p+1), which is at least F's spacing at s (s lies in x's binade or the one
      below). So rne_F(s) != m: rne_F is monotone and fixes x and every midpoint (q + 1 <= p
      bits), so rne_F(s) lies strictly on s's side of every midpoint, and rounding it to
      nearest in G gives rne_G(s). s itself a midpoint has q + 1 bits: case (a).
  In both cases rne_G(rne_F(s)) = rne_G(s), including the overflow test (both round with an
  unbounded exponent, then compare with G's largest value). An exact zero sum is +0 in rne_F,
  and a nonzero s is at least 2^Qmin in magnitude: nothing rounds to zero. q <= 11 keeps
  2q + 2 <= 24; products of two e4m3 operands (4 + 4 bits) fit fp16, bf16 and tf32.
  rne_G: fp16 by vcvtps2ph (IEEE conversion, round to nearest even, subnormals, overflow to
  Inf), e8mX by integer rounding of the float32 pattern (refsim.kernels.tile, RND_DROP).

directed-nested (rtz, rup, rdn; AVX-512; G = fp16 or e8mX in float32 lanes, fp32 in float64
  lanes): every value of G is a value of F. Step: acc = o_G(o_F(t + acc)) with o in the FMA's
  embedded rounding and in the conversion's. Claim: o_G(o_F(s)) = o_G(s) for every real s.
  Proof for rdn (rup is symmetric; rtz is rdn on s >= 0 and rup on s <= 0, and o_F(s) has s's
  sign): with overflow, rdn_X(s) = max{v in X u {-Inf} : v <= s}. g = rdn_G(s) is in
  F u {-Inf} and g <= s, so g <= rdn_F(s) <= s, and rdn_G is monotone:
  g = rdn_G(g) <= rdn_G(rdn_F(s)) <= rdn_G(s) = g. An exact zero sum is signed by the FMA as
  the contract signs it; a nonzero s keeps its sign through both roundings. No condition on
  the products beyond exactness in F.

tile-odd (rne; G = fp16 or e8mX with q <= 22 in float32 lanes, fp32 in float64 lanes; when the
  products do not fit G for double-rounding): acc + t rounded to odd at F's precision, then
  rne_G as above. With AVX-512 the odd rounding is whichever of rdn_F(acc + t) and
  rup_F(acc + t) (two FMAs) has last bit 1: they are equal when the sum is exact, else adjacent
  values of one sign, whose patterns differ by one. Without it, TwoSum's error (exact, F's
  subnormals included) moves s = rne_F(acc + t) one unit toward the error when that is nonzero
  and s's last bit is 0. Rounding to odd at p >= q + 2 bits,
  then to nearest in G, is rne_G of the exact sum (Boldo & Melquiond, "Emulation of FMA and
  correctly rounded sums: proved algorithms using rounding to odd", IEEE TC 2008), given G's
  smallest quantum at least 4 times F's smallest subnormal (true for every G here).

sr-exact-sum (sr, any sr_bits; sequential order, or chunked into an fp32 or fp64 outer sum in
  rne; no product Cast; float64 lanes; G a signed float format with zeros, not fnuz, inside
  float64's range; the caller's seed): every step's
  exact sum s = acc + t is a float64 value, so the FMA computes s itself, and s is rounded to G
  stochastically with integer operations on its bits. Span condition (what `plan` checks, from
  the operand ranges): acc is a multiple of 2^Qmin with |acc| < 2^(emax+1) (a finite value of
  G; one that is not has already sent its output to the exact core, below), t a multiple of
  2^(la+lb) with |t| < 2^(ha+hb+2) (la, ha: the exponents of a's lowest and highest set bits;
  OperandRange). So s = n 2^L with L = min(Qmin, la+lb) and |n| < 2^(H+1-L), H = max(emax+1,
  ha+hb+2): H + 1 - L <= 53 makes s exact in float64 (L >= -1074: G and the products lie in
  float64's range). fp16 with e4m3fn operands: H = 18, L = -24, 43 bits.
  The rounding of s (s != 0; d = the float64 significand bits of s below G's quantum at s, from
  s's exponent field as kernels.lane.fast_constants gives it): the discarded fraction f is the
  low d bits of s's significand over 2^d, and F = f 2^64 is an integer (d <= 52). The exact core
  (kernels.accum_core.sr_up) rounds up iff C < floor(f 2^r), C the top r bits of the complement
  of the variate u = 0.H_0 H_1 ... (r = sr_bits, or r = 64 for sr_bits None: f's at most 52
  bits end inside H_0 H_1), compared 32 bits at a time from the top. With T the top r of 64
  bits, K = T's top 32 bits, L = its low 32 and W = H_0 2^32: (F & K) > (~W & K) is up and <
  is down; on equality the rest of the compared bits decides, F & L against H_1's: F & L = 0
  is down (C >= floor(f 2^r)), and a lane with F & L != 0 (r > 32 and d > 32; probability
  2^-32 per step) is left to the exact core, which draws H_1. Rounding up adds one quantum 2^d
  to the pattern (the carry runs into the exponent field), then the d low bits are cleared.
  H_0 is the word of (seed, output index, step k, TAG_ADD), docs/accumulation.md: one Philox
  block per 8 consecutive output indices, TN/8 blocks per tile row and step (one more where rows
  start inside a block: a row whose first index is not a multiple of 8 starts its blocks up to 7
  words early). A row's steps lie one after another, so with AVX-512 the eight-lane generator
  (rng.philox_x8_wrap) runs across steps: 8 blocks are two steps of a 32-output row (one call
  per row and step filled only half its lanes). SR_STEPS steps of words at a time, in an L1
  buffer. Rare lanes become NaN, which the exact core redoes: those ties, s below G's smallest
  quantum (d > 52: 0 and 2^Qmin are the candidates) and a rounded magnitude above G's largest
  value (overflow, whatever the policy). s = 0: the FMA's zero (IEEE: +0 for an exact cancellation,
  zeros of one sign keep it, and step 0 adds t_0 to -0.0), the contract's under sr
  (kernels.accum_core.add_round_ev); a nonzero s never rounds to zero (it is a multiple of 2^L,
  and below 2^Qmin it is a NaN lane).
  Chunked: each chunk is the sequential sum above (steps keep their index k, so chunk c's
  first step is round(t_k) with k = c * chunk, as reduce_chunked calls reduce_sequential);
  o = s_0, then o = rne_O(o + s_c). o and s_c are multiples of 2^Qmin (G lies inside O, and
  O's quantum at any o is at least 2^Qmin or o is exact), |s_c| < 2^(emax+1) and
  |o| < 2 C 2^(emax+1) for C chunks, so with bitlen(C) + emax + 3 - Qmin <= 53 (`plan`) the
  float64 sum o + s_c is exact and one rounding to nearest (fptrunc for fp32) is rne_O of the
  exact value; an overflow leaves the output non-finite, for the exact core.

Chunked order (any route above as the inner sum; outer = F itself, rne, rtz, rup or rdn): the
first chunk's result s_0 is stored (o = o_F(s_0) = s_0, as s_0 is in G, a subset of F); each
later one is added into it by the lane's addition in the outer mode, which is the outer step
o = o_F(o + s_c) by definition.

Kahan and pairwise orders (any route above): refsim.kernels.accum_core.reduce_kahan and
reduce_pairwise with the same roundings, each a rounding of x + y for two lane values (a
product, a value already rounded to G, or the negation of one); tile.py computes it as
R(A(x + y)) with the route's A and R (Kahan's y = round(t_k - c) as the FMA a_k*b_k + (-c)).
The proofs above hold for every such sum: they ask of the two addends only what they ask of acc
and t (values of G, or of G extended upward for double-rounding, whose condition covers the
products; values of F for the others). Kahan's first step and pairwise's single term are
round(t_0) as in the sequential order.

Overflow and specials: operands are finite (cpu_gemm checks), so a step can only become
non-finite by overflow, and a non-finite accumulator stays non-finite (Inf plus a finite
value; the round-to-odd fix turns Inf into NaN or into F's largest value, which every G here
rounds back to Inf). Where IEEE and the accumulator's overflow policy agree (the default
policy, and every mode that saturates anyway) the lane's result is the contract's; where they
differ (saturate in a mode that gives Inf) the lane holds Inf. So `run` leaves every output
that ends non-finite (and only those) to the exact core, as NaN; every finite output is final.

Like every Numba kernel here, the routes assume the default floating-point environment: round to
nearest even where no rounding is embedded, subnormals neither flushed nor treated as zero (a
library that sets FTZ/DAZ in the calling thread would change lane results in the subnormal
range).

Kernels are compiled per (route constants, lane type) on first use, and cached on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from refsim.backends.operands import OperandRange
from refsim.backends.threads import NS_PER_TILE_MAC, threads_for
from refsim.formats import FloatFormat, Format
from refsim.formats.policy import ROUNDINGS
from refsim.kernels import core
from refsim.kernels import tile as t
from refsim.kernels.accum_core import TAG_ADD
from refsim.kernels.lane import F_D_BASE, F_D_NORMAL, F_E_NORMAL, F_MAX_POS, fast_constants
from refsim.kernels.rng import (
    VECTOR_BLOCKS,
    fill_blocks,
    philox_x8_wrap,
    philox_x16_wrap,
    round_keys,
)
from refsim.kernels.tile import tile, tile_sr
from refsim.params import format_params, readonly
from refsim.specs import AccumSpec

F32, F64, FP16 = FloatFormat(8, 23), FloatFormat(11, 52), FloatFormat(5, 10)
_PRECISION = {np.dtype(np.float32): 24, np.dtype(np.float64): 53}
_LANE_FORMAT = {np.dtype(np.float32): F32, np.dtype(np.float64): F64}
_DIRECTED = (core.RTZ, core.RUP, core.RDN)
# Tile shape (rows, vectors per row): 16 accumulators of 16 float32 / 8 float64 lanes with
# AVX-512 (32 registers); a quarter of that in the 16 registers of AVX2. Kahan keeps two values
# per output, pairwise a stack in memory: half the tile.
TILE = (4, 4) if t.AVX512 else (2, 2)
TILE_HALF = (2, 4) if t.AVX512 else (1, 2)
SR_TILE = TILE_HALF  # 8 accumulators: with the SR constants, 16 spilled (measured 7% slower)
_ORDERS = {"sequential": t.SEQUENTIAL, "chunked": t.SEQUENTIAL, "kahan": t.KAHAN,
           "pairwise": t.PAIRWISE}


@dataclass(frozen=True)
class TilePlan:
    """A register-tiled route: its name, lane type, tile constants and chunk length; for
    sr-exact-sum also the seed and the rounding constants (e_normal, d_normal, d_base, max_bits,
    random bits) of kernels.tile.tile_sr."""

    route: str
    lane: np.dtype
    key: tuple[int, int, int, int, int, int, int, int, str]
    chunk: int
    seed: int = 0
    sr: tuple[int, ...] = ()

    @property
    def tm(self) -> int:
        return self.key[6]

    @property
    def tn(self) -> int:
        return self.key[7] * t.LANES[self.lane]


def _rounder(fmt: Format, lane: np.dtype) -> tuple[int, int] | None:
    """(RND_*, dropped bits) rounding a lane value to fmt, or None."""
    if fmt == _LANE_FORMAT[lane]:
        return t.RND_NONE, 0
    if lane == np.dtype(np.float64):
        return (t.RND_SINGLE, 0) if fmt == F32 else None
    if fmt == FP16 and t.HALF:
        return t.RND_HALF, 0
    if isinstance(fmt, FloatFormat) and fmt.exp_bits == 8 and fmt.man_bits <= 21 \
            and fmt == FloatFormat(8, fmt.man_bits):
        return t.RND_DROP, 23 - fmt.man_bits
    return None


def _fits(fmt: FloatFormat, ra: OperandRange, rb: OperandRange, lane: np.dtype) -> bool:
    """double-rounding's condition: every product is a value of fmt extended upward, and the
    lane has 2q + 2 bits."""
    q = fmt.man_bits + 1
    if 2 * q + 2 > _PRECISION[lane]:
        return False
    if ra.bits == 0 or rb.bits == 0:  # every product is a zero
        return True
    return ra.bits + rb.bits <= q and ra.low + rb.low >= fmt.emin - fmt.man_bits


def _mode(rounding: str) -> int | None:
    """The rounding's index when a route can do it: rne, and the directed modes with
    AVX-512."""
    mode = ROUNDINGS.index(rounding)
    if mode == core.RNE or (mode in _DIRECTED and t.AVX512):
        return mode
    return None


def _outer_mode(acc: AccumSpec, lane: np.dtype) -> int | None:
    """omode of the chunked order's outer accumulator when it is the lane's format."""
    outer = acc.outer_spec
    if outer.fmt != _LANE_FORMAT[lane] or outer.order != "sequential" \
            or outer.product is not None:
        return None
    return _mode(outer.rounding)


def plan(acc: AccumSpec, ra: OperandRange, rb: OperandRange, exact_lanes: tuple[np.dtype, ...],
         n_k: int, seed: int | None = None) -> TilePlan | None:
    """The route for a GEMM under acc whose products are exact in exact_lanes (narrowest first),
    or None. seed: the accumulation's seed (sr-exact-sum needs it; None: no SR route). The
    caller (cpu_gemm.plan) has checked the rest: no SR but the accumulator's, no counts, no
    initial value C, finite operands, K >= 1."""
    if acc.product is not None or acc.order not in _ORDERS:
        return None
    if acc.chunk_order not in (None, "sequential"):
        return None  # a pairwise sum inside each chunk (MI250X fp16): not a route here
    if acc.rounding == "sr":
        return _plan_sr(acc, ra, rb, exact_lanes, seed, n_k)
    mode = _mode(acc.rounding)
    if mode is None:
        return None
    for lane in exact_lanes:
        rounder = _rounder(acc.fmt, lane)
        if rounder is None:
            continue
        rnd, drop = rounder
        omode, chunk = t.NO_OUTER, n_k
        if acc.order == "chunked":
            outer = _outer_mode(acc, lane)
            if outer is None:
                continue
            assert acc.chunk is not None  # order chunked needs chunk
            omode, chunk = outer, int(acc.chunk)
        add = t.ADD_FMA
        if rnd == t.RND_NONE:
            route = "lane-native"
        elif mode != core.RNE:
            route = "directed-nested"
        elif _fits(acc.fmt, ra, rb, lane):
            route = "double-rounding"
        else:
            route, add = "tile-odd", t.ADD_ODD
        order = _ORDERS[acc.order]
        shape = TILE if order == t.SEQUENTIAL else TILE_HALF
        key = (order, add, rnd, drop, mode, omode, *shape, lane.name)
        return TilePlan(route, lane, key, chunk)
    return None


_OUTER_F32 = 1  # sr-exact-sum key's omode slot: chunks promoted into fp32 (else fp64, or none)


def _plan_sr(acc: AccumSpec, ra: OperandRange, rb: OperandRange,
             exact_lanes: tuple[np.dtype, ...], seed: int | None, n_k: int) -> TilePlan | None:
    """sr-exact-sum (module doc) where its conditions hold, else None."""
    f64 = np.dtype(np.float64)
    fmt = acc.fmt
    if seed is None or acc.order not in ("sequential", "chunked") or f64 not in exact_lanes \
            or not isinstance(fmt, FloatFormat) or not fmt.signed or not fmt.zero \
            or fmt.specials == "fnuz" or fmt.man_bits > 51:
        return None
    qmin = fmt.emin - fmt.man_bits
    if qmin < -1074 or fmt.emax > 1023:  # G inside float64's range
        return None
    low, high = qmin, fmt.emax + 1  # acc: a multiple of 2^low, |acc| < 2^high
    if ra.bits and rb.bits:
        low = min(low, ra.low + rb.low)
        high = max(high, ra.high + rb.high + 2)
    if high + 1 - low > _PRECISION[f64]:  # |s| < 2^(high + 1): s / 2^low needs <= 53 bits
        return None
    omode, chunk = t.NO_OUTER, n_k
    if acc.order == "chunked":
        outer = acc.outer_spec
        if outer.fmt not in (F32, F64) or outer.rounding != "rne" or outer.order != "sequential" \
                or outer.product is not None:
            return None
        assert acc.chunk is not None  # order chunked needs chunk
        chunk = min(int(acc.chunk), n_k)
        # o + s_c exact in float64: both multiples of 2^qmin (G is inside O's range, and O's
        # quantum at o is at least 2^qmin), |s_c| < 2^(emax+1), |o| < 2 * chunks * 2^(emax+1).
        chunks = -(-n_k // chunk)
        if chunks.bit_length() + fmt.emax + 3 - qmin > _PRECISION[f64]:
            return None
        omode = _OUTER_F32 if outer.fmt == F32 else 0
    fast = fast_constants(format_params(fmt), 52, 1023, core.SR, core.OVF_DEFAULT)
    sr = (int(fast[F_E_NORMAL]), int(fast[F_D_NORMAL]), int(fast[F_D_BASE]),
          int(fast[F_MAX_POS]), 64 if acc.sr_bits is None else int(acc.sr_bits))
    key = (t.SEQUENTIAL, t.ADD_FMA, t.RND_NONE, 0, core.SR, omode, *SR_TILE, f64.name)
    return TilePlan("sr-exact-sum", f64, key, chunk, int(seed), sr)


# ---- running -------------------------------------------------------------------------------------
_KERNELS: dict[tuple, Callable[..., None]] = {}


def run(p: TilePlan, a3: np.ndarray, b3: np.ndarray) -> np.ndarray:
    """The raw results (P, M, N) as float64 for a (P, M, K) and b (P, N, K): NaN where the exact
    core must redo the output (it ended non-finite)."""
    n_batch, n_rows, n_k = a3.shape
    n_cols = b3.shape[1]
    tm, tn = p.tm, p.tn
    rows = -(-n_rows // tm) * tm
    panels = -(-n_cols // tn)
    if rows == n_rows:
        a = np.ascontiguousarray(a3, dtype=p.lane)
    else:
        a = np.zeros((n_batch, rows, n_k), p.lane)
        a[:, :n_rows] = a3
    bp = _pack(b3, p.lane, tn, panels)
    out = np.empty((n_batch, rows, panels * tn), p.lane)
    if p.sr:
        kernel = _KERNELS.get(p.key)
        if kernel is None:
            kernel = _KERNELS[p.key] = _make_sr_kernel(p.tm, p.key[7], p.key[5] == _OUTER_F32)
        *fmt_consts, r = p.sr
        keep = ((1 << 64) - 1) ^ ((1 << (64 - r)) - 1)  # the top r bits of a word
        consts = np.array([*fmt_consts, keep], np.uint64)
        with threads_for(float(n_batch) * rows * panels * tn * n_k * NS_PER_SR_MAC):
            kernel(readonly(a), readonly(bp), out, np.int64(n_rows), np.int64(n_cols),
                   round_keys(np.uint64(p.seed), np.uint64(0)), consts, np.int64(p.chunk))
        return _finish(out, n_rows, n_cols)
    kernel = _KERNELS.get(p.key)
    if kernel is None:
        kernel = _KERNELS[p.key] = _make_kernel(*p.key[:8])
    with threads_for(float(n_batch) * rows * panels * tn * n_k * NS_PER_TILE_MAC):
        kernel(readonly(a), readonly(bp), out, np.int64(p.chunk))  # one signature (readonly)
    return _finish(out, n_rows, n_cols)


@njit(cache=True)
def _finish(out, n_rows, n_cols):
    """out[:, :n_rows, :n_cols] as float64, NaN where non-finite (one pass)."""
    raw = np.empty((out.shape[0], n_rows, n_cols), np.float64)
    for p in range(out.shape[0]):
        for i in range(n_rows):
            for j in range(n_cols):
                v = np.float64(out[p, i, j])
                raw[p, i, j] = v if np.isfinite(v) else np.nan
    return raw


def _pack(b3: np.ndarray, lane: np.dtype, tn: int, panels: int) -> np.ndarray:
    """b (P, N, K) as panels (P, N/TN, K, TN): step k of a tile reads TN contiguous values;
    columns past N are zeros."""
    n_batch, n_cols, n_k = b3.shape
    bp = np.empty((n_batch, panels, n_k, tn), lane)
    bt = np.swapaxes(b3, 1, 2)  # (P, K, N): matmul's b as given, rows along n
    full = n_cols // tn
    bp[:, :full] = bt[:, :, :full * tn].reshape(n_batch, n_k, full, tn).transpose(0, 2, 1, 3)
    if full < panels:
        bp[:, full, :, n_cols - full * tn:] = 0
        bp[:, full, :, :n_cols - full * tn] = bt[:, :, full * tn:]
    return bp


def _make_kernel(order: int, add: int, rnd: int, drop: int, mode: int, omode: int, tm: int,
                 nv: int):
    """The kernel of one key; closure cells are plain ints, so Numba's on-disk cache finds it
    again in a new process (tile.SOURCE_HASH among them: a new emitter is a new key). prange
    over the jobs, in Numba's own thread pool: a separate pool of Python threads measured 3-9x
    slower on two cores, its threads competing with Numba's OpenMP workers, which spin for a
    while after every parallel region (the operand Casts just before)."""
    emitter = t.SOURCE_HASH

    @njit(parallel=True, cache=True)
    def gemm(a, bp, out, chunk):
        """out[p, i, j] = the declared reduction of a[p, i, :] . bp[p, j // TN, :, j % TN], one
        register tile (TM rows, one panel) per job."""
        _ = emitter  # referenced, so a closure cell: Numba's cache key includes it
        n_batch, n_rows, n_k = a.shape
        n_panels, tn = bp.shape[1], bp.shape[3]
        n_cols = out.shape[2]
        row_blocks = n_rows // tm
        per_batch = n_panels * row_blocks
        af, bf, of = a.reshape(-1), bp.reshape(-1), out.reshape(-1)
        for job in prange(n_batch * per_batch):  # row blocks fastest: they share a B panel
            p = job // per_batch
            rest = job - p * per_batch
            jb = rest // row_blocks
            i0 = (rest - jb * row_blocks) * tm
            a_base = (p * n_rows + i0) * n_k
            b_base = (p * n_panels + jb) * n_k * tn
            o_base = (p * n_rows + i0) * n_cols + jb * tn
            for k0 in range(0, n_k, chunk):
                tile(order, add, rnd, drop, mode, omode, tm, nv, af, a_base + k0, n_k, bf,
                     b_base + k0 * tn, of, o_base, n_cols, min(chunk, n_k - k0), k0 == 0)

    return gemm


SR_STEPS = 16  # steps per block of random words: 16 * 2 rows * 40 words * 4 bytes = 5 KiB (L1)
NS_PER_SR_MAC = 1.8  # threads_for's estimate: measured 1.8-1.9 ns on one AMD EPYC (znver4) core
_W_LEAD = 8  # words before a row's first step: where a row's first block starts (index % 8)


@njit(cache=True)
def _tile_words(words, keys, p, i0, n0, n_rows, n_cols, tm, group, w_row, k0, nk):
    """The random words H_0 of steps k0 .. k0+nk-1 for the outputs (p, i0 + i, n0 + j), i < tm,
    j < 8 * group - 7 (or 8 * group when n_cols and n0 are multiples of 8): word (step k0 + kk,
    i, j) at words[_W_LEAD + i * w_row + kk * 8 * group + j]. Each row-step takes `group`
    consecutive Philox blocks (counter (index // 8 + 1 + b, 0, step, TAG_ADD), index the row's
    first output index), from the one that covers that index: a row whose first index is not a
    multiple of 8 starts its blocks up to 7 words early. A row's steps are contiguous, so with
    AVX-512 eight-lane calls run straight across them (rng.philox_x8_wrap; group >= 4), the last
    one up to seven blocks past the row's last step: w_row >= nk * 8 * group + 64."""
    step_words = 8 * group
    for i in range(tm):
        index = ((p * n_rows) + i0 + i) * n_cols + n0
        base = _W_LEAD + i * w_row - (index & 7)
        first = np.uint64((index >> 3) + 1)
        if VECTOR_BLOCKS and group >= 4:
            total = nk * group
            r, q = 0, 0
            b = 0
            while b + 16 <= total:  # two groups of eight lanes per call: rng._x8_rounds
                r1, q1 = r + 8, q
                while r1 >= group:
                    r1 -= group
                    q1 += 1
                philox_x16_wrap(words, np.int64(base + 8 * b), first, np.uint64(r),
                                np.uint64(k0 + q), np.uint64(r1), np.uint64(k0 + q1),
                                np.uint64(group), np.uint64(0), np.uint64(TAG_ADD), keys)
                r, q = r1 + 8, q1
                while r >= group:
                    r -= group
                    q += 1
                b += 16
            while b < total:
                philox_x8_wrap(words, np.int64(base + 8 * b), first, np.uint64(r),
                               np.uint64(group), np.uint64(0), np.uint64(k0 + q),
                               np.uint64(TAG_ADD), keys)
                r += 8
                while r >= group:
                    r -= group
                    q += 1
                b += 8
        else:
            for kk in range(nk):
                fill_blocks(words, base + kk * step_words, first, group, 0, k0 + kk, TAG_ADD,
                            keys)


def _make_sr_kernel(tm: int, nv: int, to_single: bool):
    """The sr-exact-sum kernel of one tile shape (closure cells plain ints, as _make_kernel's);
    the accumulator format and sr_bits arrive as run-time constants (kernels.tile.tile_sr)."""
    emitter = t.SOURCE_HASH
    steps = SR_STEPS

    @njit(parallel=True, cache=True)
    def gemm_sr(a, bp, out, n_rows_used, n_cols_used, keys, consts, chunk):
        """out[p, i, j] = the sequential SR sum of a[p, i, :] . bp[p, j // TN, :, j % TN] (step k
        reads the word of output index (p * n_rows_used + i) * n_cols_used + j), one tile per
        job, its words generated SR_STEPS steps at a time. consts: (e_normal, d_normal, d_base,
        max_bits, keep) as uint64. chunk < K: the chunked order, each chunk's result promoted
        into an outer sum in fp32 (to_single) or fp64 lanes, rne."""
        _ = emitter
        e_normal, d_normal, d_base = consts[0], consts[1], consts[2]
        max_bits, keep = consts[3], consts[4]
        n_batch, n_rows, n_k = a.shape
        n_panels, tn = bp.shape[1], bp.shape[3]
        n_cols = out.shape[2]
        row_blocks = n_rows // tm
        per_batch = n_panels * row_blocks
        # Blocks per row-step: tn / 8, one more where rows start inside a block (n0 = jb * tn is
        # a multiple of 8).
        group = (tn >> 3) + (0 if n_cols_used % 8 == 0 else 1)
        w_row = steps * 8 * group + 64
        af, bf, of = a.reshape(-1), bp.reshape(-1), out.reshape(-1)
        for job in prange(n_batch * per_batch):
            words = np.empty(tm * w_row, np.uint32)
            p = job // per_batch
            rest = job - p * per_batch
            jb = rest // row_blocks
            i0 = (rest - jb * row_blocks) * tm
            a_base = (p * n_rows + i0) * n_k
            b_base = (p * n_panels + jb) * n_k * tn
            o_base = (p * n_rows + i0) * n_cols + jb * tn
            outer = np.empty(tm * tn if chunk < n_k else 0, np.float64)
            for c0 in range(0, n_k, chunk):
                c1 = min(c0 + chunk, n_k)
                for k0 in range(c0, c1, steps):
                    nk = min(steps, c1 - k0)
                    _tile_words(words, keys, p, i0, jb * tn, n_rows_used, n_cols_used, tm,
                                group, w_row, k0, nk)
                    tile_sr(tm, nv, af, a_base + k0, n_k, bf, b_base + k0 * tn, of, o_base,
                            n_cols, nk, k0 == c0, words, _W_LEAD, w_row, 8 * group, e_normal,
                            d_normal, d_base, max_bits, keep)
                if chunk < n_k:
                    _promote(outer, of, o_base, n_cols, tm, tn, c0 == 0, to_single)
            if chunk < n_k:
                for i in range(tm):
                    for j in range(tn):
                        of[o_base + i * n_cols + j] = outer[i * tn + j]

    return gemm_sr


@njit(cache=True)
def _promote(outer, of, o_base, n_cols, tm, tn, first, to_single):
    """The chunked order's promotion of a tile's chunk results s (in `of`) into `outer`:
    o = s for the first chunk, else o = rne_O(o + s), O = fp32 (to_single) or fp64; o + s is
    exact in float64 (sr-exact-sum's chunk condition), so one rounding, to nearest even."""
    for i in range(tm):
        for j in range(tn):
            s = of[o_base + i * n_cols + j]
            if first:
                outer[i * tn + j] = s
            elif to_single:
                outer[i * tn + j] = np.float64(np.float32(outer[i * tn + j] + s))
            else:
                outer[i * tn + j] = outer[i * tn + j] + s
