"""One register tile of a GEMM, written in LLVM vector IR: TM rows by NV vectors of outputs,
summed over k in order, each step rounded as its route says (refsim.backends.cpu_tile).

Why IR and not a Numba loop: the accumulators must stay in registers across the whole k loop,
and a Numba array cannot live in registers (it is heap memory that LLVM will not promote); LLVM's
vectorizer then keeps a load and a store per multiply-add and adds run-time alias checks. Here
every accumulator is an SSA value (a phi of the k loop), the vector width is the tile's own
(16 float32 or 8 float64 lanes: one AVX-512 register), and the instructions that round are named
explicitly, so nothing depends on what the vectorizer decides.

`tile(add, rnd, drop, mode, omode, tm, nv, a, a_off, a_stride, b, b_off, out, o_off, o_stride,
nk, first)`, callable from Numba code only; every argument before `a` is a compile-time int:
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
Why each of these equals the exact core's rounding, and under which conditions, is
refsim.backends.cpu_tile's docstring; this module only says what the instructions compute.

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

from refsim import core

ADD_FMA, ADD_ODD = 0, 1
RND_NONE, RND_HALF, RND_DROP, RND_SINGLE = 0, 1, 2, 3
NO_OUTER = -1  # omode of a sequential order: the result is always stored

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
        """acc + x*y rounded to odd at the lane's precision (x*y exact). With AVX-512: the sum
        rounded down and up (two FMAs); they are equal when it is exact, else neighbours whose
        bit patterns differ by one, so exactly one is odd: take the one whose last bit is 1.
        Without: TwoSum's error (six additions) moves s one unit toward it when s is even."""
        b = self.b
        if self.avx512:
            down = self.bits(self.fma(x, y, acc, core.RDN))
            up = self.bits(self.fma(x, y, acc, core.RUP))
            # All ones where down is odd, by arithmetic (a compare and a masked blend measured
            # 4x slower on Zen 4); then up ^ ((down ^ up) & that): one vpternlog.
            odd = b.sub(self.iconst(0), b.and_(down, self.iconst(1)))
            return self.value(b.xor(up, b.and_(b.xor(down, up), odd)))
        t = b.fmul(x, y)
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
            negative = b.ashr(u, self.iconst(self.width - 1))  # all ones on negative values
            if mode == core.RUP:
                negative = b.xor(negative, self.iconst(-1))
            u = b.add(u, b.and_(negative, mask))
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


def _step(lane: _Lane, acc, x, y, add: int, rnd: int, drop: int, mode: int):
    s = lane.fma(x, y, acc, mode) if add == ADD_FMA else lane.odd(acc, x, y)
    if rnd == RND_HALF:
        return lane.to_half(s, mode)
    if rnd == RND_DROP:
        return lane.drop_bits(s, drop, mode)
    if rnd == RND_SINGLE:
        return lane.to_single(s, mode)
    return s


def _literal(t) -> int:
    if not isinstance(t, types.IntegerLiteral):
        raise TypeError("refsim.backends.tile.tile: the first seven arguments must be constants")
    return int(t.literal_value)


def target_features() -> frozenset[str]:
    """The CPU features Numba compiles for (NUMBA_CPU_FEATURES, else the host's)."""
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features
    spec = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return frozenset(f[1:] for f in spec.split(",") if f.startswith("+"))


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
def tile(typingctx, add, rnd, drop, mode, omode, tm, nv, a, a_off, a_stride, b, b_off, out, o_off,
         o_stride, nk, first):
    """The register tile (module doc); Numba code only."""
    consts = [_literal(t) for t in (add, rnd, drop, mode, omode, tm, nv)]
    sig = types.void(add, rnd, drop, mode, omode, tm, nv, a, a_off, a_stride, b, b_off, out,
                     o_off, o_stride, nk, first)

    def codegen(context, builder, signature, args):
        _emit(context, builder, signature, args, consts)
        return context.get_dummy_value()

    return sig, codegen


def _emit(context, builder, signature, args, consts):
    add, rnd, drop, mode, omode, tm, nv = consts
    a_v, a_off, a_stride, b_v, b_off, o_v, o_off, o_stride, nk, first = args[7:]
    lane = _Lane(builder, np.dtype(signature.args[7].dtype.name), AVX512, FMA)
    vl = lane.n
    data = [context.make_array(signature.args[i])(context, builder, v).data
            for i, v in ((7, a_v), (10, b_v), (12, o_v))]
    a_data, b_data, o_data = data
    intp = a_off.type

    def c(v):
        return ir.Constant(intp, v)

    a_rows = [builder.gep(a_data, [builder.add(a_off, builder.mul(a_stride, c(i)))])
              for i in range(tm)]
    panel = builder.gep(b_data, [b_off])
    init = lane.const(0.0 if mode == core.RDN else -0.0)
    entry = builder.block
    loop = builder.append_basic_block("tile.k")
    done = builder.append_basic_block("tile.done")
    builder.branch(loop)
    builder.position_at_end(loop)
    k = builder.phi(intp)
    k.add_incoming(c(0), entry)
    accs = [[builder.phi(lane.vf) for _ in range(nv)] for _ in range(tm)]
    for row in accs:
        for phi in row:
            phi.add_incoming(init, entry)
    base = builder.mul(k, c(nv * vl))
    bvec = [builder.load(builder.bitcast(builder.gep(panel, [builder.add(base, c(j * vl))]),
                                         lane.vf.as_pointer()), align=lane.width // 8)
            for j in range(nv)]
    new = []
    for i in range(tm):
        av = lane.splat(builder.load(builder.gep(a_rows[i], [k])))
        new.append([_step(lane, accs[i][j], av, bvec[j], add, rnd, drop, mode)
                    for j in range(nv)])
    k_next = builder.add(k, c(1))
    body_end = builder.block
    k.add_incoming(k_next, body_end)
    for i in range(tm):
        for j in range(nv):
            accs[i][j].add_incoming(new[i][j], body_end)
    builder.cbranch(builder.icmp_signed("<", k_next, nk), loop, done)
    builder.position_at_end(done)
    ptrs = [[builder.bitcast(
        builder.gep(o_data, [builder.add(o_off, builder.add(builder.mul(o_stride, c(i)),
                                                            c(j * vl)))]),
        lane.vf.as_pointer()) for j in range(nv)] for i in range(tm)]
    align = lane.width // 8
    if omode == NO_OUTER:
        for i in range(tm):
            for j in range(nv):
                builder.store(new[i][j], ptrs[i][j], align=align)
        return
    with builder.if_else(first) as (store, promote):
        with store:
            for i in range(tm):
                for j in range(nv):
                    builder.store(new[i][j], ptrs[i][j], align=align)
        with promote:
            for i in range(tm):
                for j in range(nv):
                    old = builder.load(ptrs[i][j], align=align)
                    builder.store(lane.add(old, new[i][j], omode), ptrs[i][j], align=align)
