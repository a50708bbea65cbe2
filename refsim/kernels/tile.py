"""One register tile of a GEMM, written in LLVM vector IR: TM rows by NV vectors of outputs,
summed over k in order, each step rounded as its route says (refsim.backends.cpu_tile).

Why IR and not a Numba loop: the accumulators must stay in registers across the whole k loop,
and a Numba array cannot live in registers (it is heap memory that LLVM will not promote); LLVM's
vectorizer then keeps a load and a store per multiply-add and adds run-time alias checks. Here
every accumulator is an SSA value (a phi of the k loop), the vector width is the tile's own
(16 float32 or 8 float64 lanes: one AVX-512 register), and the instructions that round are named
explicitly, so nothing depends on what the vectorizer decides.

`tile(order, add, rnd, drop, mode, omode, tm, nv, a, a_off, a_stride, b, b_off, out, o_off,
o_stride, nk, first)`, callable from Numba code only; every argument before `a` is a
compile-time int:
  - a: flat lane-type array; row i of the tile reads a[a_off + i*a_stride + k], k = 0 .. nk-1.
  - b: flat packed panel; step k reads the TN = nv * VL values b[b_off + k*TN ...].
  - out: flat lane-type array; output (i, j) is out[o_off + i*o_stride + j], j < TN.
  - first: the tile's result is stored (the first chunk) or, when False, added into out with
    the outer rounding `omode` (a chunked order's promotion).
Step k, for each output: acc = R(A(acc, a_k, b_k)) with acc = -0.0 before step 0 (+0.0 under
rdn), where A is
  - ADD_FMA: the lane's fused multiply-add a_k*b_k + acc rounded in `mode` (rne: llvm.fma;
    rtz/rup/rdn: the AVX-512 form with an embedded rounding mode, {rz-sae} etc.);
  - ADD_ODD (rne only): a_k*b_k + acc rounded to odd at the lane's precision: with AVX-512 the
    one of its roundings down and up (two FMAs) whose last bit is 1 (they are equal when the sum
    is exact, else adjacent, so exactly one is odd); without, s = acc + t and its error by
    TwoSum (six additions), s moved one unit toward the error when that is nonzero and s's last
    bit is 0;
and R rounds the lane value to the accumulator format in `mode`:
  - RND_NONE: nothing (the accumulator is the lane's format);
  - RND_HALF: to fp16 and back (float32 lanes; AVX-512 vcvtps2ph with the rounding in its
    immediate, or, without AVX-512, LLVM's fptrunc, which rounds to nearest even);
  - RND_DROP: clears the `drop` low significand bits of the float32 pattern after adding the
    increment of `mode`: rne 2^(drop-1) - 1 plus the kept last bit, rup/rdn 2^drop - 1 on
    positive/negative values, rtz nothing. A carry runs into the exponent, so this is the
    rounding to a format with float32's exponent field (bf16, tf32) for every float32 value:
    subnormals, the carry from the largest finite value to Inf, Inf itself and zeros of
    either sign;
  - RND_SINGLE: to float32 and back (float64 lanes; vcvtpd2ps, rounding embedded for rtz,
    rup, rdn).
The outer addition (omode >= 0) is the lane's own addition, rounding embedded as above.
`order` KAHAN and PAIRWISE follow kernels.accum_core.reduce_kahan and reduce_pairwise with the
same roundings: every rounding there of a sum x + y of two lane values (a product, or an earlier
rounded value, or its negation) is R(A(x + y)), A being the lane's addition (rounding embedded)
or its round-to-odd; the pairwise stack lives in memory (one slot per level and output).
Why each of these equals the exact core's rounding, and under which conditions, is
refsim.backends.cpu_tile's docstring; this module only says what the instructions compute.

`tile_sr(tm, nv, a, a_off, a_stride, b, b_off, out, o_off, o_stride, nk, first, words, w_off,
w_row, w_step, e_normal, d_normal, d_base, max_bits, keep)`: the sequential order in float64
lanes with stochastic rounding (route sr-exact-sum; tm and nv are compile-time ints, the last
five run-time uint64 values, so one kernel serves every accumulator format and sr_bits).
acc starts at -0.0 when `first`, else from `out` (the words come in blocks of steps: a call
continues the previous one). Step k: s = fma(a_k, b_k, acc) (rne; the route makes it exact),
then s rounded to G from its bit pattern u with the 32-bit random word w (the top 32 bits of
the uniform variate) of output (i, j) at words[w_off + k*w_step + i*w_row + j] (uint32):
d = d_normal where u's exponent field e >= e_normal, else d_base - e; F = the d discarded bits
at the top of 64 (F = f 2^64), W = w at the top of 64, keep = the top r bits (r = sr_bits,
or 64), K = the top 32 of keep and L = its low 32; up iff (F & K) > (~W & K); the magnitude
plus 2^d if up, its low d bits cleared. NaN where d > 52, where the magnitude exceeds max_bits
(G's largest value's float64 pattern), and where F & K = ~W & K but F & L != 0 (the next
word decides: the exact core draws it); a zero s stays.
The x86 forms with an embedded rounding mode need AVX-512F (`cpu_tile` checks the target
features before it picks a route that uses them).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from refsim.kernels import core
from refsim.kernels.rng import target_features

SEQUENTIAL, KAHAN, PAIRWISE = 0, 1, 2  # orders (chunked is SEQUENTIAL with an outer mode)
ADD_FMA, ADD_ODD = 0, 1
RND_NONE, RND_HALF, RND_DROP, RND_SINGLE = 0, 1, 2, 3
NO_OUTER = -1  # omode of a sequential order: the result is always stored
PAIRWISE_STACK = 64  # levels: enough for 2^63 terms (refsim.kernels.accum_core.PAIRWISE_STACK)

LANES = {np.dtype(np.float32): 16, np.dtype(np.float64): 8}  # VL: lanes of one 512-bit register

# AVX-512 rounding-control immediates (_MM_FROUND_*): nearest, down, up, toward zero.
_RC = {core.RNE: 0, core.RDN: 1, core.RUP: 2, core.RTZ: 3}
_SAE = 8  # suppress exceptions: required with an embedded rounding mode

_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)


def _declare(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


class _Lane:
    """The vector types and instructions of one lane type (float32 x 16 or float64 x 8)."""

    def __init__(self, builder, dtype: np.dtype, avx512: bool, fma: bool):
        self.b = builder
        self.f32 = dtype == np.dtype(np.float32)
        self.n = LANES[dtype]
        scalar = ir.FloatType() if self.f32 else ir.DoubleType()
        self.width = 32 if self.f32 else 64
        self.vf = ir.VectorType(scalar, self.n)
        self.vi = ir.VectorType(ir.IntType(self.width), self.n)
        self.avx512 = avx512
        self.fma_ok = fma
        self.suffix = "ps" if self.f32 else "pd"

    def const(self, value):
        return ir.Constant(self.vf, [value] * self.n)

    def iconst(self, value):
        value &= (1 << self.width) - 1
        return ir.Constant(self.vi, [value] * self.n)

    def splat(self, x):
        b = self.b
        v = b.insert_element(ir.Constant(self.vf, ir.Undefined), x, ir.Constant(_I32, 0))
        mask = ir.Constant(ir.VectorType(_I32, self.n), [0] * self.n)
        return b.shuffle_vector(v, ir.Constant(self.vf, ir.Undefined), mask)

    def bits(self, v):
        return self.b.bitcast(v, self.vi)

    def value(self, u):
        return self.b.bitcast(u, self.vf)

    def fma(self, x, y, z, mode):
        """x*y + z rounded in mode (x*y exact, so without FMA hardware a multiply and an add
        give the same bits)."""
        b = self.b
        if mode != core.RNE:
            f = _declare(b, f"llvm.x86.avx512.vfmadd.{self.suffix}.512", self.vf,
                         [self.vf] * 3 + [_I32])
            return b.call(f, [x, y, z, ir.Constant(_I32, _RC[mode] | _SAE)])
        if not self.fma_ok:
            return b.fadd(b.fmul(x, y), z)
        f = _declare(b, f"llvm.fma.v{self.n}f{self.width}", self.vf, [self.vf] * 3)
        return b.call(f, [x, y, z])

    def add(self, x, y, mode):
        b = self.b
        if mode == core.RNE:
            return b.fadd(x, y)
        f = _declare(b, f"llvm.x86.avx512.add.{self.suffix}.512", self.vf,
                     [self.vf, self.vf, _I32])
        return b.call(f, [x, y, ir.Constant(_I32, _RC[mode] | _SAE)])

    def odd(self, acc, x, y):
        """acc + x*y (x*y exact), or acc + x when y is None, rounded to odd at the lane's
        precision. With AVX-512: the sum rounded down and up (two FMAs or additions); they are
        equal when it is exact, else neighbours whose bit patterns differ by one, so exactly one
        is odd: take the one whose last bit is 1. Without: TwoSum's error (six additions) moves
        s one unit toward it when s is even."""
        b = self.b
        if self.avx512:
            if y is None:
                down, up = self.bits(self.add(acc, x, core.RDN)), self.bits(self.add(acc, x,
                                                                                     core.RUP))
            else:
                down = self.bits(self.fma(x, y, acc, core.RDN))
                up = self.bits(self.fma(x, y, acc, core.RUP))
            odd = b.icmp_unsigned("!=", b.and_(down, self.iconst(1)), self.iconst(0))
            return self.value(b.select(odd, down, up))  # vptestnm and a masked move
        t = x if y is None else b.fmul(x, y)
        s = b.fadd(acc, t)
        bb = b.fsub(s, acc)
        err = b.fadd(b.fsub(acc, b.fsub(s, bb)), b.fsub(t, bb))
        sb, eb = self.bits(s), self.bits(err)
        sign = self.iconst(1 << (self.width - 1))
        zero, one = self.iconst(0), self.iconst(1)
        inexact = b.icmp_unsigned("!=", b.and_(eb, self.iconst(~(1 << (self.width - 1)))), zero)
        even = b.icmp_unsigned("==", b.and_(sb, one), zero)
        same_sign = b.icmp_unsigned("==", b.and_(b.xor(eb, sb), sign), zero)
        toward = b.select(same_sign, one, self.iconst(-1))
        step = b.select(b.and_(inexact, even), toward, zero)
        return self.value(b.add(sb, step))

    def to_half(self, s, mode):
        """s (float32 lanes) rounded to fp16 in mode, as float32."""
        b = self.b
        v16 = ir.VectorType(_I16, self.n)
        if self.avx512:
            f = _declare(b, "llvm.x86.avx512.mask.vcvtps2ph.512", v16,
                         [self.vf, _I32, v16, _I16])
            h = b.call(f, [s, ir.Constant(_I32, _RC[mode]), ir.Constant(v16, None),
                           ir.Constant(_I16, -1)])
            return b.fpext(b.bitcast(h, ir.VectorType(ir.HalfType(), self.n)), self.vf)
        assert mode == core.RNE
        return b.fpext(b.fptrunc(s, ir.VectorType(ir.HalfType(), self.n)), self.vf)

    def drop_bits(self, s, drop, mode):
        """s (float32 lanes) rounded in mode to `drop` fewer significand bits (module doc)."""
        b = self.b
        u = self.bits(s)
        mask = self.iconst((1 << drop) - 1)
        if mode == core.RNE:
            kept_last = b.and_(b.lshr(u, self.iconst(drop)), self.iconst(1))
            u = b.add(u, b.add(self.iconst((1 << (drop - 1)) - 1), kept_last))
        elif mode in (core.RUP, core.RDN):
            # Away from zero on negative values (rdn) or on positive ones (rup): the sign bit
            # spread over the word selects the increment mask.
            away = b.ashr(u, self.iconst(self.width - 1))
            if mode == core.RUP:
                away = b.xor(away, self.iconst(-1))
            u = b.add(u, b.and_(away, mask))
        return self.value(b.and_(u, self.iconst(~((1 << drop) - 1))))

    def to_single(self, s, mode):
        """s (float64 lanes) rounded to float32 in mode, as float64."""
        b = self.b
        v32 = ir.VectorType(ir.FloatType(), self.n)
        if mode == core.RNE:
            return b.fpext(b.fptrunc(s, v32), self.vf)
        f = _declare(b, "llvm.x86.avx512.mask.cvtpd2ps.512", v32, [self.vf, v32, _I8, _I32])
        r = b.call(f, [s, ir.Constant(v32, None), ir.Constant(_I8, -1),
                       ir.Constant(_I32, _RC[mode] | _SAE)])
        return b.fpext(r, self.vf)


def _round(lane: _Lane, s, rnd: int, drop: int, mode: int):
    """R: a lane value rounded to the accumulator format (module doc)."""
    if rnd == RND_HALF:
        return lane.to_half(s, mode)
    if rnd == RND_DROP:
        return lane.drop_bits(s, drop, mode)
    if rnd == RND_SINGLE:
        return lane.to_single(s, mode)
    return s


def _step(lane: _Lane, acc, x, y, add: int, rnd: int, drop: int, mode: int):
    """R(A(acc + x*y)), x*y exact."""
    s = lane.fma(x, y, acc, mode) if add == ADD_FMA else lane.odd(acc, x, y)
    return _round(lane, s, rnd, drop, mode)


def _sum(lane: _Lane, x, y, add: int, rnd: int, drop: int, mode: int):
    """R(A(x + y)) for two lane values."""
    s = lane.add(x, y, mode) if add == ADD_FMA else lane.odd(x, y, None)
    return _round(lane, s, rnd, drop, mode)


def _literal(t) -> int:
    if not isinstance(t, types.IntegerLiteral):
        raise TypeError("refsim.kernels.tile.tile: the first seven arguments must be constants")
    return int(t.literal_value)


# Numba's on-disk cache keys a kernel by its own source file and closure cells, not by what an
# intrinsic it calls emits: cpu_tile puts this hash of the emitter in every kernel's closure, so a
# change here compiles afresh instead of loading stale machine code.
SOURCE_HASH = zlib.crc32(Path(__file__).read_bytes())
FEATURES = target_features()
AVX512 = "avx512f" in FEATURES  # the embedded-rounding forms (rtz/rup/rdn routes)
HALF = AVX512 or "f16c" in FEATURES  # vector conversions to and from fp16
# x86 without FMA would call fma() from libm; a multiply and an add give the same bits here.
FMA = "fma" in FEATURES or not any(f.startswith("sse") for f in FEATURES)


@intrinsic(prefer_literal=True)
def tile(typingctx, order, add, rnd, drop, mode, omode, tm, nv, a, a_off, a_stride, b, b_off, out,
         o_off, o_stride, nk, first):
    """The register tile (module doc); Numba code only."""
    consts = [_literal(t) for t in (order, add, rnd, drop, mode, omode, tm, nv)]
    sig = types.void(order, add, rnd, drop, mode, omode, tm, nv, a, a_off, a_stride, b, b_off,
                     out, o_off, o_stride, nk, first)

    def codegen(context, builder, signature, args):
        _Tile(context, builder, signature, args, consts).emit()
        return context.get_dummy_value()

    return sig, codegen


class _Tile:
    """The IR of one tile call: operand access, the k loop of each order, the epilogue."""

    def __init__(self, context, builder, signature, args, consts, at=8):
        """at: the position of `a` in args (the constants come before it)."""
        self.order, self.add, self.rnd, self.drop, self.mode, self.omode, self.tm, self.nv = consts
        a_v, a_off, a_stride, b_v, b_off, o_v, o_off, o_stride, nk, first = args[at:at + 10]
        self.b = builder
        self.lane = _Lane(builder, np.dtype(signature.args[at].dtype.name), AVX512, FMA)
        self.intp = a_off.type
        a_data, b_data, self.o_data = (context.make_array(signature.args[i])(context, builder,
                                                                             v).data
                                       for i, v in ((at, a_v), (at + 3, b_v), (at + 5, o_v)))
        self.a_rows = [builder.gep(a_data, [builder.add(a_off, builder.mul(a_stride,
                                                                           self.c(i)))])
                       for i in range(self.tm)]
        self.panel = builder.gep(b_data, [b_off])
        self.o_off, self.o_stride, self.nk, self.first = o_off, o_stride, nk, first
        self.init = self.lane.const(0.0 if self.mode == core.RDN else -0.0)

    def c(self, v):
        return ir.Constant(self.intp, v)

    def grid(self, fn):
        return [[fn(i, j) for j in range(self.nv)] for i in range(self.tm)]

    def operands(self, k):
        """(a values splat per row, b vectors) of step k."""
        b, lane = self.b, self.lane
        base = b.mul(k, self.c(self.nv * lane.n))
        bvec = [b.load(b.bitcast(b.gep(self.panel, [b.add(base, self.c(j * lane.n))]),
                                 lane.vf.as_pointer()), align=lane.width // 8)
                for j in range(self.nv)]
        avec = [lane.splat(b.load(b.gep(row, [k]))) for row in self.a_rows]
        return avec, bvec

    def step(self, acc, x, y):
        return _step(self.lane, acc, x, y, self.add, self.rnd, self.drop, self.mode)

    def sum(self, x, y):
        return _sum(self.lane, x, y, self.add, self.rnd, self.drop, self.mode)

    def loop(self, start, states, body):
        """for k in start .. nk-1: states = body(k, states), states a list of vector grids;
        returns the final states (the loop runs at least once: the caller checks)."""
        b = self.b
        entry = b.block
        head = b.append_basic_block("tile.k")
        done = b.append_basic_block("tile.k.done")
        b.branch(head)
        b.position_at_end(head)
        k = b.phi(self.intp)
        k.add_incoming(start, entry)
        phis = [self.grid(lambda i, j: b.phi(self.lane.vf)) for _ in states]
        for phi, state in zip(phis, states, strict=True):
            for i in range(self.tm):
                for j in range(self.nv):
                    phi[i][j].add_incoming(state[i][j], entry)
        new = body(k, phis)
        k_next = b.add(k, self.c(1))
        end = b.block
        k.add_incoming(k_next, end)
        for phi, state in zip(phis, new, strict=True):
            for i in range(self.tm):
                for j in range(self.nv):
                    phi[i][j].add_incoming(state[i][j], end)
        b.cbranch(b.icmp_signed("<", k_next, self.nk), head, done)
        b.position_at_end(done)
        return new

    def merge(self, before, after, cond):
        """Vector grids `before` (from the block before a conditional loop) and `after` (its
        result), joined where the loop was skipped or ran: (skip_block, loop_block) wiring is
        done by the caller; here, phis in the current block."""
        b = self.b
        skip_block, loop_block = cond
        out = self.grid(lambda i, j: b.phi(self.lane.vf))
        for i in range(self.tm):
            for j in range(self.nv):
                out[i][j].add_incoming(before[i][j], skip_block)
                out[i][j].add_incoming(after[i][j], loop_block)
        return out

    def emit(self):
        if self.order == KAHAN:
            results = self.kahan()
        elif self.order == PAIRWISE:
            results = self.pairwise()
        else:
            results = self.sequential()
        self.store(results)

    def sequential(self):
        """acc = R(A(acc + a_k*b_k)) for k = 0 .. nk-1, from -0.0 (+0.0 under rdn)."""
        def body(k, states):
            avec, bvec = self.operands(k)
            (acc,) = states
            return [self.grid(lambda i, j: self.step(acc[i][j], avec[i], bvec[j]))]

        start = self.grid(lambda i, j: self.init)
        return self.loop(self.c(0), [start], body)[0]

    def kahan(self):
        """refsim.kernels.accum_core.reduce_kahan: s = round(t_0), c = +0; then y = round(t_k - c),
        t = round(s + y), c = round(round(t - s) - y), s = t; each rounding R(A(.))."""
        b = self.b
        avec, bvec = self.operands(self.c(0))
        s0 = self.grid(lambda i, j: self.step(self.init, avec[i], bvec[j]))
        c0 = self.grid(lambda i, j: self.lane.const(0.0))

        def body(k, states):
            s, c = states
            avec, bvec = self.operands(k)
            y = self.grid(lambda i, j: self.step(b.fneg(c[i][j]), avec[i], bvec[j]))
            t = self.grid(lambda i, j: self.sum(s[i][j], y[i][j]))
            d = self.grid(lambda i, j: self.sum(t[i][j], b.fneg(s[i][j])))
            c = self.grid(lambda i, j: self.sum(d[i][j], b.fneg(y[i][j])))
            return [t, c]

        return self._after_first(s0, lambda: self.loop(self.c(1), [s0, c0], body)[0])

    def _after_first(self, first, rest):
        """`first` when nk == 1, else rest() (a loop over k >= 1)."""
        b = self.b
        skip = b.block
        more = b.append_basic_block("tile.more")
        join = b.append_basic_block("tile.join")
        b.cbranch(b.icmp_signed(">", self.nk, self.c(1)), more, join)
        b.position_at_end(more)
        after = rest()
        end = b.block
        b.branch(join)
        b.position_at_end(join)
        return self.merge(first, after, (skip, end))

    def pairwise(self):
        """kernels.accum_core.reduce_pairwise: each product pushed unrounded on a stack; after
        term k the top two entries merge (R(A(x + y))) ctz(k + 1) times, after the last term
        until one is left; one term alone is R(t_0)."""
        b, lane = self.b, self.lane
        width = self.tm * self.nv
        stack = cgutils.alloca_once(b, ir.ArrayType(lane.vf, PAIRWISE_STACK * width))
        align = lane.width // 8

        def slot(level, i, j):
            index = b.add(b.mul(level, self.c(width)), self.c(i * self.nv + j))
            return b.gep(stack, [self.c(0), index])

        top_ptr = cgutils.alloca_once(b, self.intp)
        b.store(self.c(0), top_ptr)
        cttz = _declare(b, "llvm.cttz.i64", ir.IntType(64), [ir.IntType(64), ir.IntType(1)])
        last = b.sub(self.nk, self.c(1))

        def body(k, states):
            avec, bvec = self.operands(k)
            top = b.load(top_ptr)
            for i in range(self.tm):
                for j in range(self.nv):
                    b.store(b.fmul(avec[i], bvec[j]), slot(top, i, j), align=align)
            top = b.add(top, self.c(1))
            merges = b.select(b.icmp_signed("==", k, last), b.sub(top, self.c(1)),
                              b.call(cttz, [b.add(k, self.c(1)), ir.Constant(ir.IntType(1), 0)]))
            with cgutils.for_range(b, merges) as m:
                level = b.sub(b.sub(top, m.index), self.c(2))
                for i in range(self.tm):
                    for j in range(self.nv):
                        lower, upper = slot(level, i, j), slot(b.add(level, self.c(1)), i, j)
                        x, y = b.load(lower, align=align), b.load(upper, align=align)
                        b.store(self.sum(x, y), lower, align=align)
            b.store(b.sub(top, merges), top_ptr)
            return states

        self.loop(self.c(0), [], body)
        result = self.grid(lambda i, j: b.load(slot(self.c(0), i, j), align=align))
        single = b.icmp_signed("==", self.nk, self.c(1))
        return self.grid(lambda i, j: b.select(single, self.sum(self.init, result[i][j]),
                                               result[i][j]))

    def store(self, results):
        """out = results (sequential, the first chunk), or out = o(out + results) (a later
        chunk of a chunked order)."""
        b, lane = self.b, self.lane
        align = lane.width // 8
        ptrs = self.grid(lambda i, j: b.bitcast(
            b.gep(self.o_data, [b.add(self.o_off, b.add(b.mul(self.o_stride, self.c(i)),
                                                         self.c(j * lane.n)))]),
            lane.vf.as_pointer()))
        if self.omode == NO_OUTER:
            for i in range(self.tm):
                for j in range(self.nv):
                    b.store(results[i][j], ptrs[i][j], align=align)
            return
        with b.if_else(self.first) as (first, later):
            with first:
                for i in range(self.tm):
                    for j in range(self.nv):
                        b.store(results[i][j], ptrs[i][j], align=align)
            with later:
                for i in range(self.tm):
                    for j in range(self.nv):
                        old = b.load(ptrs[i][j], align=align)
                        b.store(lane.add(old, results[i][j], self.omode), ptrs[i][j],
                                align=align)


# ---- stochastic rounding -------------------------------------------------------------------------
_NAN64 = 0x7FF8 << 48  # a quiet NaN: marks a lane for the exact core


@intrinsic(prefer_literal=True)
def tile_sr(typingctx, tm, nv, a, a_off, a_stride, b, b_off, out, o_off, o_stride, nk, first,
            words, w_off, w_row, w_step, e_normal, d_normal, d_base, max_bits, keep):
    """The stochastic-rounding tile (module doc); Numba code only, float64 lanes."""
    consts = [_literal(t) for t in (tm, nv)]
    u64 = types.uint64
    sig = types.void(tm, nv, a, a_off, a_stride, b, b_off, out, o_off, o_stride, nk, first,
                     words, w_off, w_row, w_step, u64, u64, u64, u64, u64)

    def codegen(context, builder, signature, args):
        _SrTile(context, builder, signature, args, consts).emit()
        return context.get_dummy_value()

    return sig, codegen


_LOW32, _HIGH32 = (1 << 32) - 1, ((1 << 32) - 1) << 32


class _SrTile(_Tile):
    """tile_sr's IR: the sequential loop with the SR step, continued from `out` unless first."""

    def __init__(self, context, builder, signature, args, consts):
        tm, nv = consts
        super().__init__(context, builder, signature, args,
                         (SEQUENTIAL, ADD_FMA, RND_NONE, 0, core.RNE, NO_OUTER, tm, nv), at=2)
        if self.lane.width != 64 or signature.args[12].dtype != types.uint32:
            raise TypeError("refsim.kernels.tile.tile_sr: float64 lanes and uint32 words only")
        w_v, self.w_off, self.w_row, self.w_step = args[12:16]
        self.w_data = context.make_array(signature.args[12])(context, builder, w_v).data
        # Run-time constants (one kernel for every format and sr_bits), splat once.
        self.e_normal, self.d_normal, self.d_base, self.max_bits, keep = (
            self.splat_int(v) for v in args[16:21])
        self.keep_hi = builder.and_(keep, self.lane.iconst(_HIGH32))  # compared against w
        self.keep_lo = builder.and_(keep, self.lane.iconst(_LOW32))  # left to the next word

    def splat_int(self, x):
        b, lane = self.b, self.lane
        v = b.insert_element(ir.Constant(lane.vi, ir.Undefined), x, ir.Constant(_I32, 0))
        return b.shuffle_vector(v, ir.Constant(lane.vi, ir.Undefined),
                                ir.Constant(ir.VectorType(_I32, lane.n), [0] * lane.n))

    def umin(self, x, y):
        return self.b.select(self.b.icmp_unsigned("<", x, y), x, y)

    def round_sr(self, s, w):
        """The exact lane value s rounded to G with the random words w (32 bits, zero-extended;
        module doc), as a lane value; NaN where the exact core must decide.

        Why one word suffices: the exact core (kernels.accum_core.sr_up) rounds up iff C < F
        over r' = min(r, d) bits (C: the complement of the variate's bits), comparing 32 bits
        at a time from the top. F has no bits below its top d, so the top min(r, 32) bits of F
        and of ~W decide unless they are equal; then C >= F when F's remaining compared bits
        (F & L) are zero (down, as here), and the next word decides when they are not (NaN).
        """
        b, lane = self.b, self.lane
        ic = lane.iconst
        u = lane.bits(s)
        a = b.and_(u, ic((1 << 63) - 1))
        sign = b.xor(u, a)
        e = b.lshr(a, ic(52))
        # d: float64 significand bits below G's quantum at s (refsim.kernels.lane's F_D_*);
        # e < e_normal <= d_base in the second arm.
        d = b.select(b.icmp_unsigned(">=", e, self.e_normal), self.d_normal,
                     b.sub(self.d_base, e))
        dd = self.umin(d, ic(52))  # keeps the shifts defined; d > 52 is a NaN lane below
        unit = b.shl(ic(1), dd)
        mask = b.sub(unit, ic(1))
        # The discarded fraction f as its first 64 bits (all of them: 1 <= d <= 52, as `plan`
        # asks man_bits <= 51): a's low dd bits shifted to the top.
        f64 = b.shl(a, b.sub(ic(64), dd))
        f_hi = b.and_(f64, self.keep_hi)
        c_hi = b.and_(b.xor(b.shl(w, ic(32)), ic(-1)), self.keep_hi)
        up = b.icmp_unsigned(">", f_hi, c_hi)
        tie = b.and_(b.icmp_unsigned("==", f_hi, c_hi),
                     b.icmp_unsigned("!=", b.and_(f64, self.keep_lo), ic(0)))
        mag = b.and_(b.add(a, b.select(up, unit, ic(0))), b.xor(mask, ic(-1)))
        bad = b.or_(b.or_(b.icmp_unsigned(">", d, ic(52)), b.icmp_unsigned(">", mag,
                                                                           self.max_bits)), tie)
        res = b.select(bad, ic(_NAN64), b.or_(mag, sign))
        return lane.value(b.select(b.icmp_unsigned("==", a, ic(0)), u, res))

    def out_ptrs(self):
        b, lane = self.b, self.lane
        return self.grid(lambda i, j: b.bitcast(
            b.gep(self.o_data, [b.add(self.o_off, b.add(b.mul(self.o_stride, self.c(i)),
                                                         self.c(j * lane.n)))]),
            lane.vf.as_pointer()))

    def emit(self):
        b, lane = self.b, self.lane
        ptrs = self.out_ptrs()
        start = self.grid(lambda i, j: b.select(self.first, self.init,
                                                b.load(ptrs[i][j], align=8)))

        def body(k, states):
            avec, bvec = self.operands(k)
            (acc,) = states
            base = b.add(self.w_off, b.mul(k, self.w_step))
            rows = [b.add(base, b.mul(self.w_row, self.c(i))) for i in range(self.tm)]

            def one(i, j):
                ptr = b.gep(self.w_data, [b.add(rows[i], self.c(j * lane.n))])
                w = b.zext(b.load(b.bitcast(ptr, ir.VectorType(_I32, lane.n).as_pointer()),
                                  align=4), lane.vi)
                return self.round_sr(lane.fma(avec[i], bvec[j], acc[i][j], core.RNE), w)

            return [self.grid(one)]

        self.store(self.loop(self.c(0), [start], body)[0])
