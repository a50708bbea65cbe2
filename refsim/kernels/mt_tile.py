"""The two passes of a multiterm group over a register tile, in LLVM vector IR
(refsim.backends.cpu_multiterm's steps 2-4; that module says why each is exact).

Why IR and not a Numba loop (as refsim.kernels.tile): a tile's maxima and sums must stay in
registers for the whole group; a Numba array lives in memory, and LLVM's vectorizer keeps a load
and a store per multiply-add and adds run-time alias checks. Here each is an SSA value (a phi of
the k loop), one AVX-512 register of 8 float64 or 16 float32 lanes, the lane type being the
operand arrays' dtype.

Both are callable from Numba code only; every argument before the first array is a compile-time
int. Arrays are C-contiguous and addressed flat:
  - row i of the tile's a reads a[a_off + i*a_stride + k], k = 0 .. nk-1;
  - step k reads the nv * VL values b[b_off + k*b_stride + j], j = 0 .. nv*VL-1;
  - the float64 tiles mx, scale, total (and the uint64 negs) hold output (i, j) at
    [t_off + i*t_stride + j].

`group_max(tm, nv, absolute, pa, a_off, a_stride, pb, b_off, b_stride, nk, mx, t_off, t_stride)`:
mx = max over k of pa_ik * pb_kj (|pa_ik * pb_kj| when `absolute`), from +0; the lanes' maxima
widened exactly to float64 when the lanes are float32.

`group_sum(tm, nv, floor, rdn, a, a_off, a_stride, b, b_off, b_stride, nk, scale, total, negs,
t_off, t_stride)`: total += the sum over k of T_k, T_k = trunc((a_ik * b_kj) * scale_ij)
(llvm.floor when `floor`), added in k order in the lane type; total and scale are read as
float64 and narrowed to float32 lanes when the arrays are float32 (the caller makes that exact);
under `rdn`, negs |= the OR of the T_k's sign bits (at bit 63).
"""

from __future__ import annotations

import zlib
from pathlib import Path

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

_I32, _I64 = ir.IntType(32), ir.IntType(64)
_F64 = ir.DoubleType()

# Numba's on-disk cache keys a kernel by its own file and closure cells, not by what an
# intrinsic it calls emits: cpu_multiterm puts this hash in every kernel's closure.
SOURCE_HASH = zlib.crc32(Path(__file__).read_bytes())


def _literal(t) -> int:
    if not isinstance(t, (types.IntegerLiteral, types.BooleanLiteral)):
        raise TypeError("refsim.kernels.mt_tile: the leading arguments must be constants")
    return int(t.literal_value)


class _Emit:
    """Shared IR helpers of one call: lane type, pointers, the k loop."""

    def __init__(self, context, builder, sig_args, args, lane_array: int):
        self.b = builder
        self.context = context
        self.f32 = sig_args[lane_array].dtype == types.float32
        self.n = 16 if self.f32 else 8
        self.scalar = ir.FloatType() if self.f32 else _F64
        self.width = 32 if self.f32 else 64
        self.vf = ir.VectorType(self.scalar, self.n)
        self.vi = ir.VectorType(ir.IntType(self.width), self.n)
        self.intp = args[lane_array + 1].type

    def data(self, ty, value):
        return self.context.make_array(ty)(self.context, self.b, value).data

    def c(self, v):
        return ir.Constant(self.intp, v)

    def splat(self, x):
        b = self.b
        v = b.insert_element(ir.Constant(self.vf, ir.Undefined), x, ir.Constant(_I32, 0))
        return b.shuffle_vector(v, ir.Constant(self.vf, ir.Undefined),
                                ir.Constant(ir.VectorType(_I32, self.n), [0] * self.n))

    def vec_ptr(self, base, offset, vtype):
        return self.b.bitcast(self.b.gep(base, [offset]), vtype.as_pointer())

    def load_tile(self, base, t_off, t_stride, tm, nv):
        """The float64 tile values of (tm, nv vectors), in the lane type (exact narrowing: the
        caller's condition)."""
        b = self.b
        wide = ir.VectorType(_F64, self.n)
        out = []
        for i in range(tm):
            row = []
            for j in range(nv):
                off = b.add(t_off, b.add(b.mul(t_stride, self.c(i)), self.c(j * self.n)))
                v = b.load(self.vec_ptr(base, off, wide), align=8)
                row.append(b.fptrunc(v, self.vf) if self.f32 else v)
            out.append(row)
        return out

    def store_tile(self, base, t_off, t_stride, values):
        b = self.b
        wide = ir.VectorType(_F64, self.n)
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                off = b.add(t_off, b.add(b.mul(t_stride, self.c(i)), self.c(j * self.n)))
                b.store(b.fpext(v, wide) if self.f32 else v, self.vec_ptr(base, off, wide),
                        align=8)

    def operands(self, a_rows, panel, b_stride, k, nv):
        """(a_ik splat per row, the nv vectors of b at step k)."""
        b = self.b
        base = b.mul(k, b_stride)
        bvec = [b.load(self.vec_ptr(panel, b.add(base, self.c(j * self.n)), self.vf),
                       align=self.width // 8) for j in range(nv)]
        avec = [self.splat(b.load(b.gep(row, [k]))) for row in a_rows]
        return avec, bvec

    def loop(self, nk, states, body):
        """for k in 0 .. nk-1: states = body(k, states) (a flat list of values); skipped when
        nk <= 0. Returns the final states."""
        b = self.b
        entry = b.block
        head = b.append_basic_block("mt.k")
        done = b.append_basic_block("mt.k.done")
        b.cbranch(b.icmp_signed(">", nk, self.c(0)), head, done)
        b.position_at_end(head)
        k = b.phi(self.intp)
        k.add_incoming(self.c(0), entry)
        phis = [b.phi(s.type) for s in states]
        for phi, s in zip(phis, states, strict=True):
            phi.add_incoming(s, entry)
        new = body(k, phis)
        end = b.block
        k_next = b.add(k, self.c(1))
        k.add_incoming(k_next, end)
        for phi, s in zip(phis, new, strict=True):
            phi.add_incoming(s, end)
        b.cbranch(b.icmp_signed("<", k_next, nk), head, done)
        b.position_at_end(done)
        out = []
        for s, n in zip(states, new, strict=True):
            phi = b.phi(s.type)
            phi.add_incoming(s, entry)
            phi.add_incoming(n, end)
            out.append(phi)
        return out


def _rows(e: _Emit, base, a_off, a_stride, tm):
    b = e.b
    return [b.gep(base, [b.add(a_off, b.mul(a_stride, e.c(i)))]) for i in range(tm)]


@intrinsic(prefer_literal=True)
def group_max(typingctx, tm, nv, absolute, pa, a_off, a_stride, pb, b_off, b_stride, nk, mx,
              t_off, t_stride):
    """The tile's largest |product| per output (module doc); Numba code only."""
    consts = [_literal(t) for t in (tm, nv, absolute)]
    if pa.dtype != pb.dtype or mx.dtype != types.float64:
        raise TypeError("refsim.kernels.mt_tile.group_max: pa and pb of one dtype, mx float64")
    sig = types.void(tm, nv, absolute, pa, a_off, a_stride, pb, b_off, b_stride, nk, mx, t_off,
                     t_stride)

    def codegen(context, builder, signature, args):
        n_tm, n_nv, absolute = consts
        e = _Emit(context, builder, signature.args, args, 3)
        b = builder
        pa_v, a_off, a_stride, pb_v, b_off, b_stride, nk, mx_v, t_off, t_stride = args[3:]
        a_rows = _rows(e, e.data(signature.args[3], pa_v), a_off, a_stride, n_tm)
        panel = b.gep(e.data(signature.args[6], pb_v), [b_off])
        fabs = cgutils.get_or_insert_function(b.module, ir.FunctionType(e.vf, [e.vf]),
                                              f"llvm.fabs.v{e.n}f{e.width}")
        zero = ir.Constant(e.vf, [0.0] * e.n)

        def body(k, states):
            avec, bvec = e.operands(a_rows, panel, b_stride, k, n_nv)
            new = []
            for i in range(n_tm):
                for j in range(n_nv):
                    x = b.fmul(avec[i], bvec[j])
                    if absolute:
                        x = b.call(fabs, [x])
                    m = states[i * n_nv + j]
                    new.append(b.select(b.fcmp_ordered(">", x, m), x, m))  # vmaxpd
            return new

        res = e.loop(nk, [zero] * (n_tm * n_nv), body)
        e.store_tile(e.data(signature.args[10], mx_v), t_off, t_stride,
                     [res[i * n_nv:(i + 1) * n_nv] for i in range(n_tm)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic(prefer_literal=True)
def group_sum(typingctx, tm, nv, floor, rdn, a, a_off, a_stride, bt, b_off, b_stride, nk, scale,
              total, negs, t_off, t_stride):
    """The tile's truncated products added to total (module doc); Numba code only."""
    consts = [_literal(t) for t in (tm, nv, floor, rdn)]
    if a.dtype != bt.dtype or scale.dtype != types.float64 or total.dtype != types.float64 \
            or negs.dtype != types.uint64:
        raise TypeError("refsim.kernels.mt_tile.group_sum: a and bt of one dtype, scale and "
                        "total float64, negs uint64")
    sig = types.void(tm, nv, floor, rdn, a, a_off, a_stride, bt, b_off, b_stride, nk, scale,
                     total, negs, t_off, t_stride)

    def codegen(context, builder, signature, args):
        n_tm, n_nv, floor, rdn = consts
        e = _Emit(context, builder, signature.args, args, 4)
        b = builder
        (a_v, a_off, a_stride, b_v, b_off, b_stride, nk, sc_v, tot_v, neg_v, t_off,
         t_stride) = args[4:]
        a_rows = _rows(e, e.data(signature.args[4], a_v), a_off, a_stride, n_tm)
        panel = b.gep(e.data(signature.args[7], b_v), [b_off])
        rnd = cgutils.get_or_insert_function(
            b.module, ir.FunctionType(e.vf, [e.vf]),
            f"llvm.{'floor' if floor else 'trunc'}.v{e.n}f{e.width}")
        tot_base = e.data(signature.args[12], tot_v)
        scales = e.load_tile(e.data(signature.args[11], sc_v), t_off, t_stride, n_tm, n_nv)
        start = e.load_tile(tot_base, t_off, t_stride, n_tm, n_nv)
        cells = n_tm * n_nv
        states = [start[i][j] for i in range(n_tm) for j in range(n_nv)]
        if rdn:
            states += [ir.Constant(e.vi, [0] * e.n)] * cells

        def body(k, states):
            avec, bvec = e.operands(a_rows, panel, b_stride, k, n_nv)
            sums, ors = [], []
            for i in range(n_tm):
                for j in range(n_nv):
                    x = b.fmul(b.fmul(avec[i], bvec[j]), scales[i][j])  # (a*b) * 2^-q
                    t = b.call(rnd, [x])
                    sums.append(b.fadd(states[i * n_nv + j], t))
                    if rdn:
                        ors.append(b.or_(states[cells + i * n_nv + j], b.bitcast(t, e.vi)))
            return sums + ors

        res = e.loop(nk, states, body)
        e.store_tile(tot_base, t_off, t_stride,
                     [res[i * n_nv:(i + 1) * n_nv] for i in range(n_tm)])
        if rdn:
            neg_base = e.data(signature.args[13], neg_v)
            wide = ir.VectorType(_I64, e.n)
            for i in range(n_tm):
                for j in range(n_nv):
                    bits = res[cells + i * n_nv + j]
                    if e.f32:  # the float32 sign bit moved to bit 63
                        bits = b.shl(b.zext(bits, wide), ir.Constant(wide, [32] * e.n))
                    off = b.add(t_off, b.add(b.mul(t_stride, e.c(i)), e.c(j * e.n)))
                    ptr = e.vec_ptr(neg_base, off, wide)
                    b.store(b.or_(b.load(ptr, align=8), bits), ptr, align=8)
        return context.get_dummy_value()

    return sig, codegen
