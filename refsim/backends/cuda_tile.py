"""Fast routes of the CUDA matmul (refsim.backends.cuda): the CPU's route structure on the GPU.

refsim.backends.cuda.matmul asks `plan` for a route; where none applies, or for the outputs a
route leaves (NaN), the exact core runs (one thread per output, kernels.accum_core), so every
result is bit-identical to the CPU's. tests/refsim/test_cuda.py holds each route to the CPU
exact core under the Numba CUDA simulator and asserts which route ran.

Eligibility is the CPU's, not a copy of it: `plan` measures the operands' ranges on the device
(range_kernel: refsim.backends.operands.OperandRange's quantities) and asks the CPU planners,
refsim.backends.cpu_tile.plan and refsim.backends.cpu_multiterm.plan, with them; it takes a
CPU route only where a kernel below computes the same steps, so each CUDA route rests on the
proof in that CPU module's docstring:

The tile routes take cpu_tile's sequential and chunked orders (Kahan and pairwise tiles run
on the CPU only so far). A step is acc = R(A(acc + t)), t = a_k*b_k exact in the lane F, acc
starting at -0 (+0 under rdn), as cpu_tile's docstring defines it; A and R are computed here as
follows.
  A, rne (lane-native rne, double-rounding): the lane's addition. The GPU computes it as a
    multiply and an add (NVVM may contract them into an FMA: the product is exact, so both
    give the same bits).
  A, directed mode o (lane-native rtz/rup/rdn, directed-nested) or round-to-odd (tile-odd):
    `_add_rounded`: s = rne_F(acc + t) and its exact error by TwoSum, then s moved one unit
    toward the error where the mode asks it (its docstring says why that is o_F(acc + t), or
    the sum rounded to odd, with IEEE's signed zeros). No rounding-mode instructions (libdevice
    __fadd_rz etc.), so the simulator runs the same code; NVVM contracting the product into
    these additions changes nothing, the product being exact.
  R (double-rounding, tile-odd: rne; directed-nested: the mode): `_round_to`, integer
    operations on the lane's bit pattern (no conversion instruction, so no dependence on the
    GPU's fp16 support). With E the pattern's exponent field (raised to 1 for a lane
    subnormal, whose quantum is that of E = 1), G's quantum at the value is 2^d lane units with
    d = D + max(E_sub - E, 0), D = lane man_bits - G man_bits and E_sub the field of 2^emin(G).
    The magnitude plus an increment, its d low bits then cleared, is the rounding to a multiple
    of 2^d units: rne adds 2^(d-1) - 1 plus the kept last bit; rtz adds nothing; rup adds
    2^d - 1 to a positive value, rdn to a negative one (and nothing to the other sign: that
    rounds toward zero). A carry runs into the exponent field and gives the next power of two,
    which is that rounding's value (d <= the lane's man_bits: the cleared bits lie in the
    significand field). Rare lanes become NaN and go to the exact core: d above the lane's
    man_bits (a nonzero value below G's smallest quantum) and a rounded magnitude above G's
    largest value (overflow, whatever the policy). Zeros keep their sign; a non-finite lane
    value stays non-finite.
  Chunked order: each chunk's result is promoted into the outer value by the lane's own
    addition in the outer mode (A with that mode: cpu_tile's "Chunked order", o = o_F(o + s_c)
    by definition).
Which (A, R) pair is proven for which accumulator and operands is cpu_tile's docstring:
lane-native (G = F), double-rounding (Figueroa, p >= 2q + 2, products values of G), tile-odd
(Boldo & Melquiond), directed-nested (o_G(o_F(s)) = o_G(s)). cpu_tile offers the directed
routes only where the CPU has AVX-512 (its embedded roundings); the CUDA route follows its
decision, so on other hosts those specs take the exact core on the GPU too.
multiterm-lanes (cpu_multiterm.plan's route): the steps 1-7 of cpu_multiterm's docstring, one
  thread per output instead of a 4 x 64 tile: products and truncations exact in float64,
  alignment exponents read from the exponent field, truncation (trunc, floor) by clearing
  the pattern's fraction bits (NVVM has no llvm.trunc.f64; the same exact values as
  cpu_multiterm's llvm.trunc/llvm.floor), the group sum an exact float64 sum of
  integers, its rounding and the promotion by kernels.lane.round_lane (round-to-odd additions
  by TwoSum as there). The initial value C enters as that docstring's step 7 says.

Every route here returns the raw float64 results with NaN where the exact core must redo the
output (any output that ended non-finite, as on the CPU); refsim.backends.cuda then runs the
exact-core kernel over all outputs, which takes a finite raw value as the accumulator's result
(applying the output Cast as the exact core does) and recomputes the NaN ones.

The tile kernel: a block of TY x TX threads computes BM x BN outputs (BM = TY*TM, BN = TX*TN),
each thread a TM x TN register tile (rows ty + TY*i, columns tx + TX*j: the shared-memory reads
of B are consecutive across a warp, those of A one broadcast); A's and B's BK-deep slices are
staged in shared memory; k runs in order inside each output and K is never split. Like every
kernel here it assumes the default floating-point environment: round to nearest even,
subnormals kept (numba.cuda compiles without flush-to-zero unless fastmath is asked).

Device functions are Numba @njit functions (numba.cuda compiles them for the GPU; the
simulator calls them on the CPU), so the kernels themselves hold only array traffic and
float arithmetic that the simulator runs as NumPy scalars of the lane's type.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from refsim.backends import cpu_multiterm, cpu_tile
from refsim.backends.operands import OperandRange, products_exact
from refsim.formats import FloatFormat
from refsim.kernels import core
from refsim.kernels import tile as t
from refsim.kernels.lane import bits_float, float_bits, round_lane
from refsim.params import CARRIERS
from refsim.specs import AccumSpec, Cast

__all__ = ["ROUTES", "TILE", "CudaPlan", "operand_function", "plan", "range_kernel", "run"]

ROUTES = ("lane-native", "double-rounding", "directed-nested", "tile-odd", "multiterm-lanes")
TILE = (16, 16, 4, 4, 16)  # (TY, TX, TM, TN, BK): 256 threads, 64 x 64 outputs per block
MT_THREADS = 128  # threads per block of the multiterm kernel
_LANES = (np.dtype(np.float32), np.dtype(np.float64))  # narrower first, as cpu_gemm tries them
_WIDE = 1 << 20  # OperandRange's empty low/high
ADD_ODD = -2  # a tile step's addition rounded to odd (else: the rounding mode's index)


@dataclass(frozen=True)
class CudaPlan:
    """A CUDA fast route: its name and lane; for the tile routes the rounding constants of
    `round_to` (d_normal 0: none) and the chunk; for multiterm-lanes the CPU plan."""

    route: str
    lane: np.dtype
    chunk: int = 0
    chunked: bool = False
    rounder: tuple[int, int, int] = (0, 0, 0)  # (D, E_sub, largest magnitude pattern)
    mode: int = core.RNE  # the accumulator's rounding (round_to's, and the addition's)
    add: int = core.RNE  # the step's addition: a rounding mode, or ADD_ODD
    omode: int = core.RNE  # the chunked order's outer addition
    mt: cpu_multiterm.MultitermPlan | None = None


# ---- lazy set-up -------------------------------------------------------------------------------
# numba.cuda once imported, as a module global: the simulator swaps the module globals that are
# numba.cuda for its fake module while a kernel runs (as in refsim.backends.cuda). The CUDA
# target's overloads (integer min/max) are registered by refsim.backends.cuda, which calls
# this module only after it set itself up.
cuda: Any = None


def _numba_cuda():
    global cuda
    from numba import cuda as numba_cuda

    cuda = numba_cuda
    return numba_cuda


@functools.cache
def operand_function():
    """An array argument as the @njit device functions (cuda_tile's, accum_core's) take it:
    itself on the GPU; the NumPy array inside the simulator's wrapper, because the simulator
    wraps a kernel's arrays and the CPU-compiled functions need the NumPy array."""
    from numba.core import config

    _numba_cuda()
    if config.ENABLE_CUDASIM:
        return lambda x: x._item._ary

    @cuda.jit(device=True)
    def operand(x):
        return x

    return operand


# ---- operand ranges on the device ----------------------------------------------------------------
@functools.cache
def range_kernel():
    """A kernel (bits, out): over float64 bit patterns, out[0] += non-finite count, out[1] =
    max significant bits, out[2] = min exponent of the lowest set bit, out[3] = max exponent of
    the leading bit (finite nonzero values; refsim.backends.operands.OperandRange)."""
    _numba_cuda()

    @cuda.jit
    def scan(bits, out):
        nonfinite = np.int64(0)
        best, low, high = np.int64(0), np.int64(_WIDE), np.int64(-_WIDE)
        for i in range(cuda.grid(1), bits.size, cuda.gridsize(1)):
            x = np.uint64(bits[i])
            efield = np.int64((x >> np.uint64(52)) & np.uint64(0x7FF))
            sig = x & np.uint64((1 << 52) - 1)
            if efield == 0x7FF:
                nonfinite += 1
            elif efield != 0 or sig != np.uint64(0):
                if efield != 0:
                    sig |= np.uint64(1 << 52)
                exp0 = (efield if efield != 0 else np.int64(1)) - 1075  # exponent of sig's bit 0
                lowest = sig & (~sig + np.uint64(1))
                top = np.int64(core.bit_length(sig)) - 1
                tz = np.int64(core.bit_length(lowest)) - 1
                best = max(best, top - tz + 1)
                low = min(low, exp0 + tz)
                high = max(high, exp0 + top)
        cuda.atomic.add(out, 0, nonfinite)
        cuda.atomic.max(out, 1, best)
        cuda.atomic.min(out, 2, low)
        cuda.atomic.max(out, 3, high)

    return scan


def operand_range(values: np.ndarray) -> OperandRange:
    """The OperandRange of range_kernel's output (OperandRange.of's conventions when empty)."""
    nonfinite, bits, low, high = (int(v) for v in values)
    if bits == 0:
        return OperandRange(nonfinite == 0, 0, _WIDE, -_WIDE)
    return OperandRange(nonfinite == 0, bits, low, high)


# ---- the route chooser ---------------------------------------------------------------------------
def plan(acc: AccumSpec, cast: Cast | None, count_on: bool, ra: OperandRange,
         rb: OperandRange, n_k: int, c: np.ndarray | None) -> CudaPlan | None:
    """The CUDA route for a GEMM under acc with output Cast `cast` on operands of ranges ra and
    rb (as cast by the spec), K = n_k, initial values c (flat float64 bits) or None; None: the
    exact core computes every output. The gate is refsim.backends.cpu_gemm.plan's (no counts,
    no SR anywhere, finite operands, C only for multiterm), then the CPU route's own planner."""
    if count_on or n_k == 0 or acc.chunk_order not in (None, "sequential"):
        return None  # (a pairwise sum inside each chunk, MI250X fp16: the exact core's)
    outer = acc.outer_spec if acc.order == "chunked" else None
    if any(x is not None and x.rounding == "sr" for x in (acc, acc.product, outer, cast)):
        return None
    if not (ra.finite and rb.finite):
        return None
    if acc.order == "multiterm":
        mt = cpu_multiterm.plan(acc, ra, rb, c)
        return None if mt is None else CudaPlan(mt.route, np.dtype(np.float64), mt=mt)
    if c is not None:
        return None
    exact_lanes = tuple(lane for lane in _LANES if products_exact(ra, rb, lane))
    tp = cpu_tile.plan(acc, ra, rb, exact_lanes, n_k, None)
    if tp is None or tp.route not in ROUTES:
        return None
    order, add, rnd, _, mode, omode = tp.key[:6]
    if order != t.SEQUENTIAL:
        return None  # the Kahan and pairwise tiles run on the CPU only so far
    rounder = (0, 0, 0)
    if rnd != t.RND_NONE:
        assert isinstance(acc.fmt, FloatFormat)  # cpu_tile rounds to float formats only
        rounder = _rounder(acc.fmt, tp.lane)
    step_add = ADD_ODD if add == t.ADD_ODD else mode
    chunked = omode != t.NO_OUTER
    return CudaPlan(tp.route, tp.lane, tp.chunk, chunked, rounder, mode, step_add,
                    omode if chunked else core.RNE)


def _rounder(fmt: FloatFormat, lane: np.dtype) -> tuple[int, int, int]:
    """round_to's constants for G = fmt in `lane` (module doc): (D, E_sub, the lane pattern
    of G's largest finite value)."""
    c_man, c_bias, _ = CARRIERS[lane]
    largest = float(fmt.max)
    pattern = np.array([largest], lane).view(CARRIERS[lane][2])[0]
    assert float(np.array([largest], lane)[0]) == largest  # G's values are lane values
    return c_man - fmt.man_bits, fmt.emin + c_bias, int(pattern)


# ---- device functions ----------------------------------------------------------------------------
@functools.cache
def _round_to(lane_name: str, mode: int, d_normal: int, e_sub: int, max_mag: int):
    """o_G of a lane value in mode rne, rtz, rup or rdn (module doc); NaN for the rare
    lanes."""
    lane = np.dtype(lane_name)
    c_man, _, utype = CARRIERS[lane]
    U = utype
    W = 8 * lane.itemsize
    SIGN, ABS = (1 << (W - 1)), (1 << (W - 1)) - 1
    INF = (2 * CARRIERS[lane][1] + 1) << c_man
    NAN = U(INF | (1 << (c_man - 1)))
    ONE = np.uint64(1)
    RNE, RUP, RDN = core.RNE, core.RUP, core.RDN

    # Lazily typed (numba.cuda compiles a CPU dispatcher for the GPU only when it may compile
    # new signatures). The simulator returns a float32 result to Python as a float, which
    # would type the next call float64: the tile kernel wraps every call in the lane type.
    @njit(cache=True)
    def round_to(x):
        u = np.uint64(float_bits(x))
        mag = u & np.uint64(ABS)
        if mag >= np.uint64(INF) or mag == np.uint64(0):
            return x  # non-finite stays so (redone); a zero keeps its sign
        e = np.int64(mag >> np.uint64(c_man))
        e = max(e, np.int64(1))  # a lane subnormal has the quantum of E = 1
        d = d_normal + max(np.int64(e_sub) - e, np.int64(0))
        if d > c_man:
            return bits_float(NAN)  # below G's smallest quantum: the exact core decides
        dd = np.uint64(d)
        negative = (u >> np.uint64(W - 1)) != np.uint64(0)
        if mode == RNE:
            inc = (ONE << (dd - ONE)) - ONE + ((mag >> dd) & ONE)
        elif (mode == RUP and not negative) or (mode == RDN and negative):
            inc = (ONE << dd) - ONE  # away from zero: any discarded bit carries
        else:
            inc = np.uint64(0)  # rtz, and rup/rdn toward zero: truncate the magnitude
        r = (mag + inc) & ~((ONE << dd) - ONE)
        if r > np.uint64(max_mag):
            return bits_float(NAN)  # overflow: the exact core applies the policy
        return bits_float(U(r | (u & np.uint64(SIGN))))

    return round_to


@functools.cache
def _add_rounded(lane_name: str, add: int):
    """x + t (t an exact product, x the accumulator) rounded in mode `add` (rtz, rup, rdn) or
    to odd (ADD_ODD) at the lane's precision, from the lane's rne sum s and its exact error
    by TwoSum (Knuth: exact in binary floating point, subnormals included, unless s
    overflows): an inexact s (err != 0) moves one unit toward err where the mode asks it (rtz:
    err of the other sign than s; rup: err > 0; rdn: err < 0; odd: s's last bit 0), which
    gives the neighbour of s on err's side, the exact sum's other candidate. One unit on the
    pattern: +1 raises the magnitude, -1 lowers it; s != 0 when inexact (a sum that rounds
    to zero is exact). A non-finite s is returned as it is (the output goes to the exact
    core); so is a step of one unit past the largest finite value (to Inf). An exact zero sum
    is IEEE's, the contract's: +0 (rne's) except under rdn, where it is -0 unless both
    addends are +0 (their sign bits ORed)."""
    lane = np.dtype(lane_name)
    c_man, c_bias, _ = CARRIERS[lane]
    U = CARRIERS[lane][2]
    W = 8 * lane.itemsize
    SIGN, ABS = np.uint64(1 << (W - 1)), np.uint64((1 << (W - 1)) - 1)
    INF = np.uint64((2 * c_bias + 1) << c_man)
    U0, U1 = np.uint64(0), np.uint64(1)
    RTZ, RUP, RDN = core.RTZ, core.RUP, core.RDN
    ODD = add == ADD_ODD

    @njit(cache=True)  # arguments of the lane type (round_to's note)
    def add_rounded(x, t):
        s = x + t
        sb = np.uint64(float_bits(s))
        if sb & ABS >= INF:
            return s
        bb = s - x
        err = (x - (s - bb)) + (t - bb)
        eb = np.uint64(float_bits(err))
        if eb & ABS == U0:  # exact
            if add == RDN and sb & ABS == U0:
                return bits_float(U((np.uint64(float_bits(x)) | np.uint64(float_bits(t)))
                                    & SIGN))
            return s
        same = (eb ^ sb) & SIGN == U0  # err has s's sign: the exact sum is farther from 0
        if ODD:
            move = sb & U1 == U0
        elif add == RTZ:
            move = not same
        elif add == RUP:
            move = err > 0.0
        else:
            move = err < 0.0
        if move:
            sb = sb + U1 if same else sb - U1
        return bits_float(U(sb))

    return add_rounded


@functools.cache
def _finite_raw(lane_name: str):
    """float64(x), NaN when x is not finite (the output goes to the exact core)."""
    lane = np.dtype(lane_name)
    c_man, c_bias, _ = CARRIERS[lane]
    W = 8 * lane.itemsize
    ABS, INF = (1 << (W - 1)) - 1, (2 * c_bias + 1) << c_man

    @njit(cache=True)  # an argument of the lane type (round_to's note)
    def raw(x):
        if np.uint64(float_bits(x)) & np.uint64(ABS) >= np.uint64(INF):
            return np.nan
        return np.float64(x)

    return raw


# ---- kernels -------------------------------------------------------------------------------------
@functools.cache
def _tile_kernel(lane_name: str, rounder: tuple[int, int, int], mode: int, add: int,
                 chunked: bool, omode: int, shape: tuple[int, int, int, int, int]):
    """The tile kernel of one lane type, rounding (round_to in `mode` unless rounder is
    (0, 0, 0)), step addition (a mode or ADD_ODD) and order (chunked: the outer addition in
    omode), module doc."""
    _numba_cuda()
    lane = np.dtype(lane_name)
    nb_lane = {np.dtype(np.float32): np.float32, np.dtype(np.float64): np.float64}[lane]
    ty_n, tx_n, tm, tn, bk = shape
    bm, bn = ty_n * tm, tx_n * tn
    threads = ty_n * tx_n
    a_loads = -(-bm * bk // threads)
    b_loads = -(-bk * bn // threads)
    rounding = rounder[0] != 0
    round_to = _round_to(lane_name, mode, *rounder) if rounding else None
    plain = add == core.RNE
    add_step = None if plain else _add_rounded(lane_name, add)
    outer_plain = omode == core.RNE
    add_outer = None if outer_plain else _add_rounded(lane_name, omode)
    raw_of = _finite_raw(lane_name)
    # The first step adds t_0 to -0 (+0 under rdn): round(t_0) (cpu_tile's doc).
    NEG_ZERO = nb_lane(0.0 if mode == core.RDN else -0.0)
    ZERO = nb_lane(0.0)

    @cuda.jit
    def gemm(a, b, out, n_rows, n_cols, n_k, chunk):
        """out[p*M*N + i*N + j] = the sequential (chunked) sum of a[p, i, :] . b[p, :, j]
        (a: (P, M, K), b: (P, K, N), lane type), NaN where it ended non-finite."""
        a_s = cuda.shared.array((bk, bm), nb_lane)  # a_s[k, i]: A's slice, transposed
        b_s = cuda.shared.array((bk, bn), nb_lane)
        acc = cuda.local.array((tm, tn), nb_lane)
        outer = cuda.local.array((tm, tn), nb_lane)
        av = cuda.local.array(tm, nb_lane)
        bv = cuda.local.array(tn, nb_lane)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * tx_n + tx
        p = cuda.blockIdx.z
        row0 = cuda.blockIdx.y * bm
        col0 = cuda.blockIdx.x * bn
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = NEG_ZERO
                outer[i, j] = ZERO
        have_outer = False
        for k0 in range(0, n_k, bk):
            for ld in range(a_loads):
                idx = tid + ld * threads
                if idx < bm * bk:
                    ii = idx // bk
                    kk = idx - ii * bk
                    gi = row0 + ii
                    gk = k0 + kk
                    a_s[kk, ii] = a[p, gi, gk] if gi < n_rows and gk < n_k else ZERO
            for ld in range(b_loads):
                idx = tid + ld * threads
                if idx < bk * bn:
                    kk = idx // bn
                    jj = idx - kk * bn
                    gk = k0 + kk
                    gj = col0 + jj
                    b_s[kk, jj] = b[p, gk, gj] if gk < n_k and gj < n_cols else ZERO
            cuda.syncthreads()
            steps = min(bk, n_k - k0)
            for kk in range(steps):
                for i in range(tm):
                    av[i] = a_s[kk, ty + ty_n * i]
                for j in range(tn):
                    bv[j] = b_s[kk, tx + tx_n * j]
                for i in range(tm):
                    for j in range(tn):
                        # The product is exact (the route's condition).
                        if plain:
                            s = acc[i, j] + av[i] * bv[j]
                        else:
                            s = nb_lane(add_step(acc[i, j], av[i] * bv[j]))
                        if rounding:
                            s = nb_lane(round_to(s))
                        acc[i, j] = s
                if chunked:
                    k = k0 + kk + 1
                    if k == n_k or k - (k // chunk) * chunk == 0:  # a chunk ends: promote
                        for i in range(tm):
                            for j in range(tn):
                                if not have_outer:
                                    outer[i, j] = acc[i, j]
                                elif outer_plain:
                                    outer[i, j] = outer[i, j] + acc[i, j]
                                else:
                                    outer[i, j] = nb_lane(add_outer(outer[i, j], acc[i, j]))
                                acc[i, j] = NEG_ZERO
                        have_outer = True
            cuda.syncthreads()
        base = p * n_rows * n_cols
        for i in range(tm):
            gi = row0 + ty + ty_n * i
            for j in range(tn):
                gj = col0 + tx + tx_n * j
                if gi < n_rows and gj < n_cols:
                    out[base + gi * n_cols + gj] = raw_of(outer[i, j] if chunked else acc[i, j])

    return gemm


@functools.cache
def _mt_output(key: tuple[int, int, int, int, int]):
    """One output of the multiterm model (cpu_multiterm's steps 1-7) as a device function."""
    mode, omode, aligned, floor, product_align = key
    RDN = mode == core.RDN
    ORDN = omode == core.RDN
    range_bits = cpu_multiterm.RANGE_BITS
    SIGN, ABS = np.uint64(1 << 63), np.uint64((1 << 63) - 1)
    U0, U1, ALL = np.uint64(0), np.uint64(1), np.uint64((1 << 64) - 1)
    INF = np.uint64(0x7FF << 52)

    @njit(cache=True, inline="always")
    def finite(x):
        return np.uint64(float_bits(x)) & ABS < INF

    @njit(cache=True, inline="always")
    def exponent(v):  # floor(log2 v) of a positive normal v (-1023 for +0)
        return np.int64((np.uint64(float_bits(v)) >> np.uint64(52)) & np.uint64(0x7FF)) - 1023

    @njit(cache=True, inline="always")
    def pow2(e):
        return bits_float(np.uint64(e + 1023) << np.uint64(52))

    @njit(cache=True, inline="always")
    def trunc_f64(v):
        """v rounded toward zero to an integer, sign kept (NVVM has no llvm.trunc.f64): the
        significand bits below 2^0 cleared from the pattern; |v| < 1 gives a zero of v's sign,
        |v| >= 2^52 is an integer already."""
        u = np.uint64(float_bits(v))
        e = np.int64((u >> np.uint64(52)) & np.uint64(0x7FF)) - 1023
        if e < 0:
            return bits_float(u & SIGN)
        if e >= 52:
            return v
        return bits_float(u & ~((U1 << np.uint64(52 - e)) - U1))

    @njit(cache=True, inline="always")
    def floor_f64(v):
        """v rounded toward -inf to an integer: trunc, minus one for a negative non-integer
        (exact: |v| < 2^53 here, module doc; -0 stays -0)."""
        r = trunc_f64(v)
        return r - 1.0 if v < 0.0 and r != v else r

    @njit(cache=True, inline="always")
    def odd_add(x, y, rdn):  # x + y rounded to odd at 53 bits (TwoSum), as bits
        s = x + y
        bb = s - x
        err = (x - (s - bb)) + (y - bb)
        sb = np.uint64(float_bits(s))
        eb = np.uint64(float_bits(err))
        if eb & ABS != U0 and sb & U1 == U0:
            sb = sb + (U1 if (eb ^ sb) & SIGN == U0 else ALL)
        if rdn and sb & ABS == U0:
            sb = (np.uint64(float_bits(x)) | np.uint64(float_bits(y))) & SIGN
        return sb

    @njit(cache=True, inline="always")
    def prepared(x, flush, tiny, emin):
        """(x after flushing, its alignment power: |x|, or 2^max(floor(log2|x|), emin))."""
        if flush and abs(x) < tiny:
            x = -0.0 if np.uint64(float_bits(x)) & SIGN != U0 else 0.0
        if not product_align:
            return x, abs(x)
        if x == 0.0:
            return x, 0.0
        return x, pow2(max(exponent(abs(x)), emin))

    @njit(cache=True)
    def output(a, b, p, i, j, n_k, cval, has_c, c_outer, group, width, chunk, acc_emin, emin,
               flush, fast, ofast):
        """The multiterm reduction of a[p, i, :] . b[p, j, :] (float64 values) from C = cval
        when has_c; NaN where it ends non-finite."""
        tiny = pow2(emin)
        o = cval if has_c and c_outer else 0.0
        first_outer = not (has_c and c_outer)
        s = 0.0
        for c0 in range(0, n_k, chunk):
            c1 = min(c0 + chunk, n_k)
            have_s = has_c and not c_outer and c0 == 0
            if have_s:
                s = cval
            for g0 in range(c0, c1, group):
                g1 = min(g0 + group, c1)
                with_s = aligned != 0 and have_s
                mx = 0.0
                for k in range(g0, g1):  # step 2: the largest alignment exponent
                    _, pa = prepared(a[p, i, k], flush, tiny, emin)
                    _, pb = prepared(b[p, j, k], flush, tiny, emin)
                    v = pa * pb
                    mx = v if v > mx else mx  # no float max: numba.cuda's builtin fails
                e = exponent(mx)
                if with_s and s != 0.0:
                    es = exponent(abs(s))
                    if product_align:
                        es = max(es, acc_emin)
                    e = max(e, min(es, 2 * range_bits))
                q = max(e, -range_bits) - width + 1
                scale = pow2(min(-q, 1023))
                quantum = pow2(max(q, -1022))
                total = -0.0
                negs = U0
                if with_s:
                    v = s * scale
                    total = floor_f64(v) if floor else trunc_f64(v)
                    negs = np.uint64(float_bits(total)) & SIGN
                for k in range(g0, g1):  # steps 3 and 4
                    x, _ = prepared(a[p, i, k], flush, tiny, emin)
                    y, _ = prepared(b[p, j, k], flush, tiny, emin)
                    v = x * y * scale
                    tv = floor_f64(v) if floor else trunc_f64(v)
                    total += tv
                    negs |= np.uint64(float_bits(tv))
                g = total * quantum
                if RDN and np.uint64(float_bits(g)) & ABS == U0:
                    g = bits_float(negs & SIGN)
                if have_s and aligned == 0:  # step 5
                    r = round_lane(mode, odd_add(s, g, RDN), fast, U0, U0)
                    s = bits_float(r) if finite(s) and finite(g) else np.nan
                else:
                    r = round_lane(mode, np.uint64(float_bits(g)), fast, U0, U0)
                    ok = finite(g) and (finite(s) or not have_s)
                    s = bits_float(r) if ok else np.nan
                have_s = True
            if first_outer:  # step 6
                r = round_lane(omode, np.uint64(float_bits(s)), ofast, U0, U0)
                o = bits_float(r) if finite(s) else np.nan
            else:
                r = round_lane(omode, odd_add(o, s, ORDN), ofast, U0, U0)
                o = bits_float(r) if finite(s) and finite(o) else np.nan
            first_outer = False
        return o if finite(o) else np.nan

    return output


@functools.cache
def _mt_kernel(key: tuple[int, int, int, int, int]):
    """One thread per output of the multiterm route, grid-stride."""
    _numba_cuda()
    output = _mt_output(key)
    operand = operand_function()

    @cuda.jit
    def gemm(a, b, c, has_c, c_outer, out, n_rows, n_cols, n_k, group, width, chunk, acc_emin,
             emin, flush, fast, ofast):
        """out[flat] = the multiterm result of output flat = (p*M + i)*N + j (a: (P, M, K),
        b: (P, N, K), c: flat float64 initial values), NaN where the exact core must redo it."""
        a = operand(a)
        b = operand(b)
        c = operand(c)
        per_batch = n_rows * n_cols
        for flat in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            p = flat // per_batch
            rest = flat - p * per_batch
            i = rest // n_cols
            j = rest - i * n_cols
            cval = c[flat] if has_c else 0.0
            out[flat] = output(a, b, p, i, j, n_k, cval, has_c, c_outer, group, width, chunk,
                               acc_emin, emin, flush, fast, ofast)

    return gemm


# ---- running -------------------------------------------------------------------------------------
def run(p: CudaPlan, a, b_t, a_f64, b_f64, c_dev, has_c: bool, numba_cuda: Any):
    """The raw results (flat float64 device array, one per output) of route p. a: the cast
    operand a (P, M, K) on the device, b_t: b as (P, K, N) (its layout as given), both C-
    contiguous of float32 or float64; a_f64, b_f64: the same values as float64 in the exact
    core's layout, (P, M, K) and (P, N, K); c_dev: flat float64 initial values."""
    n_batch, n_rows, n_k = a_f64.shape
    n_cols = b_f64.shape[1]
    size = n_batch * n_rows * n_cols
    out = numba_cuda.device_array(size, np.float64)
    if size == 0:
        return out
    if p.mt is not None:
        mt = p.mt
        kernel = _mt_kernel(mt.key)
        blocks = min(-(-size // MT_THREADS), 65535)
        emin = -cpu_multiterm.RANGE_BITS if mt.operand_emin is None else mt.operand_emin
        kernel[blocks, MT_THREADS](a_f64, b_f64, c_dev, has_c, mt.c_outer, out,
                                   np.int64(n_rows), np.int64(n_cols), np.int64(n_k),
                                   np.int64(mt.group), np.int64(mt.width),
                                   np.int64(mt.chunk if mt.chunk > 0 else n_k),
                                   np.int64(mt.acc_emin), np.int64(emin), mt.flush, mt.fast,
                                   mt.ofast)
        return out
    a_l, b_l = _lane_operands(a, b_t, p.lane, numba_cuda)
    ty_n, tx_n, tm, tn, _ = TILE
    kernel = _tile_kernel(p.lane.name, p.rounder, p.mode, p.add, p.chunked, p.omode, TILE)
    grid = (-(-n_cols // (tx_n * tn)), -(-n_rows // (ty_n * tm)), n_batch)
    kernel[grid, (tx_n, ty_n)](a_l, b_l, out, np.int64(n_rows), np.int64(n_cols),
                               np.int64(n_k), np.int64(p.chunk if p.chunked else n_k))
    return out


def _lane_operands(a, b_t, lane: np.dtype, numba_cuda: Any):
    """a and b in the lane's type (exact: the route checked every operand is a lane value)."""
    result = []
    for x in (a, b_t):
        if np.dtype(x.dtype) != lane:
            y = numba_cuda.device_array(x.shape, lane)
            if x.size:
                threads = 256
                _convert_kernel()[min(-(-x.size // threads), 4096), threads](
                    x.reshape(x.size), y.reshape(x.size))
            x = y
        result.append(x)
    return result[0], result[1]


@functools.cache
def _convert_kernel():
    """dst[i] = src[i] in dst's type (exact where the caller uses it)."""
    _numba_cuda()

    @cuda.jit
    def convert(src, dst):
        for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
            dst[i] = src[i]

    return convert
