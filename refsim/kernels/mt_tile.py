"""One group of a multiterm register tile in LLVM vector IR: the alignment maxima, the scales,
the truncated products' exact sum and G (refsim.backends.cpu_multiterm's steps 2-4 and 2'-4';
that module says why each is exact).

Why IR and not a Numba loop (as refsim.kernels.tile): a tile's maxima and sums must stay in
registers for the whole group; a Numba array lives in memory, and LLVM's vectorizer keeps a load
and a store per multiply-add and adds run-time alias checks. Here each is an SSA value (a phi of
the k loop), one AVX-512 register of 8 float64 or 16 float32 lanes (16 int32 for int32 sums),
the lane type of each pass being its operand arrays' dtype.

`group_tile(tm, nv, absolute, floor, rdn, product, parts, round32, pa, pb, a, bt, a_off, a_stride,
b_off, b_stride, nk, s, g, t_off, t_stride, with_s, width, acc_emin, sc_lo, sc_hi, round_here,
have_s)`, callable from Numba code only; the first eight arguments are compile-time ints, the
last seven run-time ints.
Arrays are C-contiguous and addressed flat: row i of the tile reads a[a_off + i*a_stride + k]
(pa likewise), step k reads the 8*nv values bt[b_off + k*b_stride + j] (pb likewise), k = 0 ..
nk-1; the float64 tiles s (read) and g (written) hold output (i, j) at [t_off + i*t_stride + j].
For each output of the tm x 8nv tile:
  - mx = max over k of pa_ik * pb_kj (|.| when `absolute`), from +0, in pa's lanes;
  - M = 2^E: the largest of 2^floor(log2 mx) and, when with_s != 0 and s != 0,
    2^floor(log2|s|) (at least 2^acc_emin when `product`); M clamped to [2^-480, 2^960];
    q = E - width + 1;
  - T(s) = trunc(s * 2^-q) (floor when `floor`) in float64 when with_s, else -0.0;
  - S = T(s) + sum over k of T_k, T_k = trunc((a_ik * b_kj) * sc) (llvm.floor when `floor`),
    sc = 2^-q clamped to [2^sc_lo, 2^sc_hi], in a's lanes: parts = 0, summed in the lane type
    from T(s) (narrowed exactly: the caller's condition); parts = 1 or 2, float32 products
    converted to int32 (fptosi: toward zero) and summed in int32, in two k halves (0 ..
    nk//2-1 with T(s), nk//2 .. nk-1) when parts = 2;
  - G = S * 2^q, written to g; its zero's sign: IEEE's from the float sums, except under
    `rdn` (-0 when any T's sign bit is set, T(s) included) and for int32 sums (IEEE's rule
    kept aside: -0 when every term's sign bit is set, the -0.0 start included);
  - round32 >= 0 (a mode: rne, or rtz/rup/rdn with AVX-512) and round_here != 0: s = G
    converted to float32 in that mode (vcvtpd2ps, the rounding embedded) and back, or NaN
    where G is not finite or (have_s != 0) the s read was not.

`groups_tile(tm, nv, parts, pa, pb, a, bt, a_off, a_stride, b_off, b_stride, nk, group, s,
t_off, t_stride, width)` (cpu_multiterm's step 8; the first three arguments compile-time ints)
runs the groups of a chunk after its first over a tm x 16nv tile in one loop, s in registers:
k = 0 .. nk-1 in groups of `group` (the last may be shorter), all four arrays float32, s read
once (fp32 values in float64) and written once. Per group and output: mx as above (product
exponents), M = 2^E from the patterns of mx and |s| (at least 2^-126), sc = 2^-q clamped to
2^127, T(s) = trunc((s * 2^a) * sc) with 2^a = 2^-q / sc, the int32 sums (parts = 1, or 2 k
halves) from T(s), and s = G rounded toward zero to fp32 ({rz-sae} conversion and scalings),
-0 for S = 0 when every term's sign bit is set. Acc-aligned, align product, fp32 rtz only.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from refsim.kernels.core import RDN, RNE, RTZ, RUP

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

    def operands(self, a_rows, panel, b_stride, k, nv):
        """(a_ik splat per row, the nv vectors of b at step k)."""
        b = self.b
        base = b.mul(k, b_stride)
        bvec = [b.load(self.vec_ptr(panel, b.add(base, self.c(j * self.n)), self.vf),
                       align=self.width // 8) for j in range(nv)]
        avec = [self.splat(b.load(b.gep(row, [k]))) for row in a_rows]
        return avec, bvec

    def loop(self, nk, states, body, k0=None):
        """for k in k0 .. nk-1 (k0 = 0 when None): states = body(k, states) (a flat list of
        values); skipped when nk <= k0. Returns the final states."""
        b = self.b
        k0 = self.c(0) if k0 is None else k0
        entry = b.block
        head = b.append_basic_block("mt.k")
        done = b.append_basic_block("mt.k.done")
        b.cbranch(b.icmp_signed(">", nk, k0), head, done)
        b.position_at_end(head)
        k = b.phi(self.intp)
        k.add_incoming(k0, entry)
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


# ---- one group of a tile, fused -----------------------------------------------------------------
# AVX-512 rounding-control immediates (_MM_FROUND_*) of the modes a float32 conversion embeds.
_RC = {RNE: 0, RDN: 1, RUP: 2, RTZ: 3}
_EXP_LOW = -480  # E's clamp (cpu_multiterm.RANGE_BITS): a group with no nonzero value
_E_S_HIGH = 960  # s's exponent cap (NaN marks read as 1024)


@intrinsic(prefer_literal=True)
def group_tile(typingctx, tm, nv, absolute, floor, rdn, product, parts, round32, pa, pb, a, bt,
               a_off, a_stride, b_off, b_stride, nk, s, g, t_off, t_stride, with_s, width,
               acc_emin, sc_lo, sc_hi, round_here, have_s):
    """One group of a tm x (8 nv) register tile (module doc); Numba code only."""
    consts = [_literal(t) for t in (tm, nv, absolute, floor, rdn, product, parts, round32)]
    if pa.dtype != pb.dtype or a.dtype != bt.dtype or s.dtype != types.float64 \
            or g.dtype != types.float64:
        raise TypeError("refsim.kernels.mt_tile.group_tile: pa and pb of one dtype, a and bt of "
                        "one dtype, s and g float64")
    sig = types.void(tm, nv, absolute, floor, rdn, product, parts, round32, pa, pb, a, bt,
                     a_off, a_stride, b_off, b_stride, nk, s, g, t_off, t_stride, with_s, width,
                     acc_emin, sc_lo, sc_hi, round_here, have_s)

    def codegen(context, builder, signature, args):
        _Fused(context, builder, signature.args, args, consts).emit()
        return context.get_dummy_value()

    return sig, codegen



class _Fused:
    """group_tile's IR."""

    def __init__(self, context, builder, sig_args, args, consts):
        (self.tm, self.nv, self.absolute, self.floor, self.rdn, self.product, self.parts,
         self.round32) = consts
        self.b = b = builder
        self.ctx = context
        self.p1 = _Emit(context, builder, sig_args, args, 8)  # pass-1 lanes: pa's dtype
        self.p2 = _Emit(context, builder, sig_args, args, 10)  # pass-2 lanes: a's dtype
        self.p1.intp = self.p2.intp = args[12].type
        (pa, pb, a, bt, self.a_off, self.a_stride, self.b_off, self.b_stride, self.nk, s, g,
         self.t_off, self.t_stride, with_s, width, acc_emin, sc_lo, sc_hi, round_here,
         have_s) = args[8:]
        data = self.p1.data
        self.pa, self.pb = data(sig_args[8], pa), data(sig_args[9], pb)
        self.a, self.bt = data(sig_args[10], a), data(sig_args[11], bt)
        self.s, self.g = data(sig_args[17], s), data(sig_args[18], g)
        self.round_here, self.have_s = (b.icmp_signed("!=", v, ir.Constant(v.type, 0))
                                        for v in (round_here, have_s))
        if self.parts and not self.p2.f32:
            raise TypeError("refsim.kernels.mt_tile.group_tile: int32 sums need float32 lanes")
        self.vd = ir.VectorType(_F64, 8)
        self.vl = ir.VectorType(_I64, 8)
        b = builder
        self.with_s = self.splat_i(b.zext(b.icmp_signed("!=", with_s, ir.Constant(with_s.type,
                                                                                  0)), _I64))
        self.width = self.splat_i(width)
        self.acc_emin, self.sc_lo, self.sc_hi = (self.pow2(self.splat_i(v))
                                                 for v in (acc_emin, sc_lo, sc_hi))

    def splat_i(self, x):
        b = self.b
        x = b.sext(x, _I64) if x.type.width < 64 else x
        v = b.insert_element(ir.Constant(self.vl, ir.Undefined), x, ir.Constant(_I32, 0))
        return b.shuffle_vector(v, ir.Constant(self.vl, ir.Undefined),
                                ir.Constant(ir.VectorType(_I32, 8), [0] * 8))

    def ic(self, v):
        return ir.Constant(self.vl, [v & ((1 << 64) - 1)] * 8)

    def fconst(self, v):
        return ir.Constant(self.vd, [v] * 8)

    def fmax(self, x, y):
        return self.b.select(self.b.fcmp_ordered(">", x, y), x, y)

    def fmin(self, x, y):
        return self.b.select(self.b.fcmp_ordered("<", x, y), x, y)

    def pow2(self, e):
        """2^e as float64 lanes (e a normal exponent)."""
        b = self.b
        return b.bitcast(b.shl(b.add(e, self.ic(1023)), self.ic(52)), self.vd)

    def to_f64(self, e: _Emit, vecs):
        """Lane vectors of one tile row as float64 x 8 vectors (exact widening)."""
        if not e.f32:
            return list(vecs)
        out = []
        for v in vecs:
            out.extend(self.halves(self.b.fpext(v, ir.VectorType(_F64, 16))))
        return out

    def halves(self, w):
        """The two 8-lane halves of a 16-lane vector."""
        return [self.b.shuffle_vector(w, ir.Constant(w.type, ir.Undefined),
                                      ir.Constant(ir.VectorType(_I32, 8),
                                                  list(range(8 * h, 8 * h + 8))))
                for h in range(2)]

    def from_f64(self, e: _Emit, vecs):
        """float64 x 8 vectors of one tile row as lane vectors (exact: the caller's
        condition)."""
        if not e.f32:
            return list(vecs)
        b = self.b
        out = []
        for h in range(0, len(vecs), 2):
            w = b.shuffle_vector(vecs[h], vecs[h + 1],
                                 ir.Constant(ir.VectorType(_I32, 16), list(range(16))))
            out.append(b.fptrunc(w, e.vf))
        return out

    def concat(self, x, y):
        """Two float64 x 8 vectors as one float64 x 16."""
        return self.b.shuffle_vector(x, y, ir.Constant(ir.VectorType(_I32, 16), list(range(16))))

    def bool_to_f64(self, e: _Emit, flags):
        """<n x i1> flags of one tile row as <8 x i1> per float64 vector."""
        if not e.f32:
            return list(flags)
        out = []
        for f in flags:
            out.extend(self.halves(f))
        return out

    def tile_ptr(self, base, i, j):
        b, c = self.b, self.p2.c
        off = b.add(self.t_off, b.add(b.mul(self.t_stride, c(i)), c(8 * j)))
        return b.bitcast(b.gep(base, [off]), self.vd.as_pointer())

    def run_pass(self, e: _Emit, rows_base, panel_base, states, step, k0=None, nk=None):
        """The k loop (k0 .. nk-1; 0 .. self.nk-1 by default) over a lane type: states per
        (row, vector), step(avec_i, bvec_j, st)."""
        b = self.b
        n_vec = 8 * self.nv // e.n
        a_rows = _rows(e, rows_base, self.a_off, self.a_stride, self.tm)
        panel = b.gep(panel_base, [self.b_off])

        def body(k, flat):
            avec, bvec = e.operands(a_rows, panel, self.b_stride, k, n_vec)
            width = len(flat) // (self.tm * n_vec)
            new = []
            for i in range(self.tm):
                for j in range(n_vec):
                    at = (i * n_vec + j) * width
                    new.extend(step(avec[i], bvec[j], flat[at:at + width]))
            return new

        return e.loop(self.nk if nk is None else nk, states, body, k0), n_vec

    def emit(self):
        b, tm, nv = self.b, self.tm, self.nv
        p1 = self.p1
        # Pass 1: the maxima.
        fabs = cgutils.get_or_insert_function(b.module, ir.FunctionType(p1.vf, [p1.vf]),
                                              f"llvm.fabs.v{p1.n}f{p1.width}")

        def max_step(x, y, st):
            v = b.fmul(x, y)
            if self.absolute:
                v = b.call(fabs, [v])
            return [b.select(b.fcmp_ordered(">", v, st[0]), v, st[0])]  # vmaxpd

        n1 = 8 * nv // p1.n
        zero1 = ir.Constant(p1.vf, [0.0] * p1.n)
        mx, _ = self.run_pass(p1, self.pa, self.pb, [zero1] * (tm * n1), max_step)
        mx = [self.to_f64(p1, mx[i * n1:(i + 1) * n1]) for i in range(tm)]
        # The scales, in float64 lanes with powers of two as floats: P(x) = 2^floor(log2|x|)
        # is x's exponent field alone (one AND; 0 for a zero). M = 2^E = the largest of P(mx),
        # and (with_s and s != 0) P(s), raised to 2^acc_emin when `product`; M at least
        # 2^-480 (E's clamp) and at most 2^960 (caps a NaN mark's exponent). Then 2^q = M *
        # 2^(1 - width) (exact: powers of two, E - width + 1 >= -532), and 2^-q has the bit
        # pattern ((2046 + width - 1) << 52) - bits(M) (exponent fields subtract; -q = width - 1
        # - E lies in [-960, 532], a float64 normal).
        rnd64 = cgutils.get_or_insert_function(
            b.module, ir.FunctionType(self.vd, [self.vd]),
            f"llvm.{'floor' if self.floor else 'trunc'}.v8f64")
        use_s = b.icmp_signed("!=", self.with_s, self.ic(0))
        field = self.ic(0x7FF << 52)
        zero = ir.Constant(self.vd, [0.0] * 8)
        low, high = self.fconst(2.0 ** _EXP_LOW), self.fconst(2.0 ** _E_S_HIGH)
        inv_base = b.shl(b.add(self.width, self.ic(2046 - 1)), self.ic(52))
        unit = b.bitcast(b.shl(b.sub(self.ic(1024), self.width), self.ic(52)), self.vd)
        sc, p2q, start, s_sign, s_old = [], [], [], [], []
        for i in range(tm):
            for j in range(nv):
                m = b.bitcast(b.and_(b.bitcast(mx[i][j], self.vl), field), self.vd)
                sv = b.load(self.tile_ptr(self.s, i, j), align=8)
                s_old.append(sv)
                ps = b.bitcast(b.and_(b.bitcast(sv, self.vl), field), self.vd)
                if self.product:
                    ps = self.fmax(ps, self.acc_emin)
                joins = b.and_(use_s, b.fcmp_unordered("!=", sv, zero))
                m = self.fmax(m, b.select(joins, ps, zero))
                m = self.fmin(self.fmax(m, low), high)
                p2q.append(b.fmul(m, unit))
                inv = b.bitcast(b.sub(inv_base, b.bitcast(m, self.vl)), self.vd)  # 2^-q
                sc.append(self.fmin(self.fmax(inv, self.sc_lo), self.sc_hi))
                ts = b.call(rnd64, [b.fmul(sv, inv)])
                start.append(b.select(use_s, ts, ir.Constant(self.vd, [-0.0] * 8)))
                s_sign.append(b.select(use_s, ts, zero))  # T(s)'s sign, +0 without s
        # Pass 2: the truncated products (lanes of a's dtype).
        if self.parts:
            totals, negs = self.int_sums(sc, start, s_sign)
        else:
            totals, negs = self.float_sums(sc, start, s_sign)
        for i in range(tm):
            for j in range(nv):
                gv = b.fmul(totals[i][j], p2q[i * nv + j])
                if negs is not None:
                    signed = b.select(negs[i][j], ir.Constant(self.vd, [-0.0] * 8), zero)
                    gv = b.select(b.fcmp_ordered("==", gv, zero), signed, gv)
                b.store(gv, self.tile_ptr(self.g, i, j), align=8)
                if self.round32 >= 0:
                    self.store_rounded(gv, s_old[i * nv + j], i, j)

    def store_rounded(self, gv, sv, i, j):
        """When round_here: s = G rounded to float32 in mode round32 (one conversion, the
        rounding embedded), NaN where G is not finite or a given s was not (module doc)."""
        b = self.b
        v32 = ir.VectorType(ir.FloatType(), 8)
        if self.round32 == RNE:
            r = b.fptrunc(gv, v32)
        else:
            f = cgutils.get_or_insert_function(
                b.module, ir.FunctionType(v32, [self.vd, v32, ir.IntType(8), _I32]),
                "llvm.x86.avx512.mask.cvtpd2ps.512")
            r = b.call(f, [gv, ir.Constant(v32, None), ir.Constant(ir.IntType(8), -1),
                           ir.Constant(_I32, _RC[self.round32] | 8)])  # 8: suppress exceptions
        fabs = cgutils.get_or_insert_function(b.module, ir.FunctionType(self.vd, [self.vd]),
                                              "llvm.fabs.v8f64")
        inf = self.fconst(float("inf"))
        finite_g = b.fcmp_ordered("<", b.call(fabs, [gv]), inf)
        finite_s = b.fcmp_ordered("<", b.call(fabs, [sv]), inf)
        ok = b.select(self.have_s, b.and_(finite_g, finite_s), finite_g)
        new = b.select(ok, b.fpext(r, self.vd), self.fconst(float("nan")))
        b.store(b.select(self.round_here, new, sv), self.tile_ptr(self.s, i, j), align=8)

    def lanes(self, e: _Emit, grid):
        """A tm x nv grid of float64 x 8 vectors as a flat list of lane vectors (row major)."""
        nv = self.nv
        return [v for i in range(self.tm) for v in self.from_f64(e, grid[i * nv:(i + 1) * nv])]

    def float_sums(self, sc, start, s_sign):
        """S per output as float64 x 8 (tm x nv grid): the sum of the truncated products in the
        lane type, from T(s) or -0.0 (IEEE's identity); and, under rdn, the zero sign to give
        an S = 0 (the OR of the T's signs, T(s) included), else None (IEEE's rule is the
        contract's)."""
        b, p2, tm, nv = self.b, self.p2, self.tm, self.nv
        n2 = 8 * nv // p2.n
        sc2, st2 = self.lanes(p2, sc), self.lanes(p2, start)
        or2 = self.lanes(p2, s_sign)
        rnd = cgutils.get_or_insert_function(
            b.module, ir.FunctionType(p2.vf, [p2.vf]),
            f"llvm.{'floor' if self.floor else 'trunc'}.v{p2.n}f{p2.width}")
        states = []
        for idx in range(tm * n2):
            states += [st2[idx], sc2[idx]]  # the scale: loop-invariant, carried beside
            if self.rdn:
                states.append(b.bitcast(or2[idx], p2.vi))

        def sum_step(x, y, st):
            t = b.call(rnd, [b.fmul(b.fmul(x, y), st[1])])  # (a*b) * 2^-q
            new = [b.fadd(st[0], t), st[1]]
            if self.rdn:
                new.append(b.or_(st[2], b.bitcast(t, p2.vi)))
            return new

        res, _ = self.run_pass(p2, self.a, self.bt, states, sum_step)
        width = 3 if self.rdn else 2
        totals, negs = [], [] if self.rdn else None
        for i in range(tm):
            totals.append(self.to_f64(p2, [res[(i * n2 + j) * width] for j in range(n2)]))
            if negs is not None:
                flags = [b.icmp_signed("<", res[(i * n2 + j) * width + 2],
                                       ir.Constant(p2.vi, [0] * p2.n)) for j in range(n2)]
                negs.append(self.bool_to_f64(p2, flags))
        return totals, negs

    def int_sums(self, sc, start, s_sign):
        """float_sums with float32 products and int32 sums (parts: 1, or 2 for the k halves
        0 .. nk//2-1 and nk//2 .. nk-1 summed apart, each within int32), added in float64.
        T = fptosi(x) truncates toward zero; the zero sign of S = 0 is kept aside: the OR of
        the x's signs under rdn, else their AND (IEEE: -0 only when every term is -0; a sum of
        terms that are all negative or -0 is 0 only when all are -0), T(s) (or the identity
        -0.0) included."""
        b, p2, tm, nv = self.b, self.p2, self.tm, self.nv
        n2 = 8 * nv // p2.n
        vi = p2.vi
        sc2 = self.lanes(p2, sc)
        ones, sign = ir.Constant(vi, [-1] * p2.n), ir.Constant(vi, [-(1 << 31)] * p2.n)
        rest = ir.Constant(vi, [(1 << 31) - 1] * p2.n)
        izero = ir.Constant(vi, [0] * p2.n)
        states = []
        for i in range(tm):
            for j in range(n2):
                # T(s) from float64 (up to 2^width: not a float32 value for width > 24).
                st, sg = (self.concat(v[i * nv + 2 * j], v[i * nv + 2 * j + 1])
                          for v in (start, s_sign))
                wide_i = ir.VectorType(_I64, 16)
                negative = b.icmp_signed("<", b.bitcast(st, wide_i), ir.Constant(wide_i, None))
                states += [b.fptosi(st, vi), sc2[i * n2 + j], b.select(negative, ones, rest)]
                if self.rdn:
                    s_neg = b.icmp_signed("<", b.bitcast(sg, wide_i), ir.Constant(wide_i, None))
                    states.append(b.select(s_neg, sign, izero))

        def sum_step(x, y, st):
            v = b.fmul(b.fmul(x, y), st[1])  # (a*b) * 2^-q
            bits = b.bitcast(v, vi)
            new = [b.add(st[0], b.fptosi(v, vi)), st[1], b.and_(st[2], bits)]
            if self.rdn:
                new.append(b.or_(st[3], bits))
            return new

        if self.parts == 1:
            res, _ = self.run_pass(p2, self.a, self.bt, states, sum_step)
            halves = [res]
        else:
            half = b.ashr(self.nk, ir.Constant(self.nk.type, 1))
            first, _ = self.run_pass(p2, self.a, self.bt, states, sum_step, nk=half)
            width = len(states) // (tm * n2)
            second = list(first)
            for idx in range(tm * n2):
                second[idx * width] = izero  # the second half's sum starts at 0
            res, _ = self.run_pass(p2, self.a, self.bt, second, sum_step, k0=half)
            halves = [first, res]
        width = len(states) // (tm * n2)
        wide = ir.VectorType(_F64, 16)
        totals, negs = [], []
        for i in range(tm):
            row_t, row_n = [], []
            for j in range(n2):
                at = (i * n2 + j) * width
                total = None
                for h in halves:
                    part = b.sitofp(h[at], wide)  # exact: |part| < 2^31
                    total = part if total is None else b.fadd(total, part)  # exact: < 2^53
                row_t.extend(self.halves(total))
                flags = res[at + 3] if self.rdn else res[at + 2]
                row_n.extend(self.halves(b.icmp_signed("<", flags, izero)))
            totals.append(row_t)
            negs.append(row_n)
        return totals, negs


# ---- the later groups of a chunk, s in registers ------------------------------------------------
_RZ = _RC[RTZ] | 8  # {rz-sae}: round toward zero, exceptions suppressed
_F32_ONE = 0x3F800000  # 1.0's pattern: a power of two 2^e is (127 + e) << 23
_F32_MIN_NORMAL = 0x00800000  # 2^-126 (fp32's emin: s's exponent floor under align product)
_F32_TOP = 0x7F000000  # 2^127
_F32_FIELD = 0x7F800000
_F32_ABS = 0x7FFFFFFF


@intrinsic(prefer_literal=True)
def groups_tile(typingctx, tm, nv, parts, pa, pb, a, bt, a_off, a_stride, b_off, b_stride, nk,
                group, s, t_off, t_stride, width):
    """The groups of a tm x (16 nv) tile after a chunk's first, the running sum s in registers
    (module doc); Numba code only."""
    consts = [_literal(t) for t in (tm, nv, parts)]
    if not all(x.dtype == types.float32 for x in (pa, pb, a, bt)) or s.dtype != types.float64:
        raise TypeError("refsim.kernels.mt_tile.groups_tile: pa, pb, a and bt float32, s "
                        "float64")
    if consts[2] not in (1, 2):
        raise TypeError("refsim.kernels.mt_tile.groups_tile: int32 sums in 1 or 2 parts")
    sig = types.void(tm, nv, parts, pa, pb, a, bt, a_off, a_stride, b_off, b_stride, nk, group,
                     s, t_off, t_stride, width)

    def codegen(context, builder, signature, args):
        _Run(context, builder, signature.args, args, consts).emit()
        return context.get_dummy_value()

    return sig, codegen


class _Run:
    """groups_tile's IR: 16 float32 / int32 lanes per vector throughout."""

    def __init__(self, context, builder, sig_args, args, consts):
        self.tm, self.nv, self.parts = consts
        self.b = builder
        self.e = e = _Emit(context, builder, sig_args, args, 3)  # pa's float32 lanes
        e.intp = args[7].type
        (pa, pb, a, bt, self.a_off, self.a_stride, self.b_off, self.b_stride, self.nk,
         self.group, s, self.t_off, self.t_stride, width) = args[3:]
        self.pa, self.pb = e.data(sig_args[3], pa), e.data(sig_args[4], pb)
        self.a, self.bt = e.data(sig_args[5], a), e.data(sig_args[6], bt)
        self.s = e.data(sig_args[13], s)
        w = builder.trunc(width, _I32) if width.type.width > 32 else width
        self.width = self.splat(w)
        self.vd16 = ir.VectorType(_F64, 16)

    def ci(self, v):
        """A constant <16 x i32> (v as an unsigned 32-bit pattern)."""
        v &= (1 << 32) - 1
        return ir.Constant(self.e.vi, [v - (1 << 32) if v >= 1 << 31 else v] * 16)

    def splat(self, x):
        b, vi = self.b, self.e.vi
        v = b.insert_element(ir.Constant(vi, ir.Undefined), x, ir.Constant(_I32, 0))
        return b.shuffle_vector(v, ir.Constant(vi, ir.Undefined),
                                ir.Constant(ir.VectorType(_I32, 16), [0] * 16))

    def umax(self, x, y):
        return self.b.select(self.b.icmp_unsigned(">", x, y), x, y)

    def umin(self, x, y):
        return self.b.select(self.b.icmp_unsigned("<", x, y), x, y)

    def as_f(self, x):
        return self.b.bitcast(x, self.e.vf)

    def as_i(self, x):
        return self.b.bitcast(x, self.e.vi)

    def s_ptr(self, i, j):
        b, c = self.b, self.e.c
        off = b.add(self.t_off, b.add(b.mul(self.t_stride, c(i)), c(16 * j)))
        return b.bitcast(b.gep(self.s, [off]), self.vd16.as_pointer())

    def k_loop(self, rows_base, panel_base, k0, k1, states, step):
        """for k in k0 .. k1-1 over the tile: states per (row, vector), step(a_ik, b_kj, st)."""
        e, b, tm, nv = self.e, self.b, self.tm, self.nv
        a_rows = _rows(e, rows_base, self.a_off, self.a_stride, tm)
        panel = b.gep(panel_base, [self.b_off])
        width = len(states) // (tm * nv)

        def body(k, flat):
            avec, bvec = e.operands(a_rows, panel, self.b_stride, k, nv)
            new = []
            for i in range(tm):
                for j in range(nv):
                    at = (i * nv + j) * width
                    new.extend(step(avec[i], bvec[j], flat[at:at + width]))
            return new

        return e.loop(k1, states, body, k0)

    def emit(self):
        b, e, tm, nv = self.b, self.e, self.tm, self.nv
        s0 = [b.fptrunc(b.load(self.s_ptr(i, j), align=8), e.vf)  # exact: fp32 values
              for i in range(tm) for j in range(nv)]
        group = self.group
        one = e.c(1)
        n_groups = b.sdiv(b.sub(b.add(self.nk, group), one), group)
        s1 = e.loop(n_groups, s0, self.one_group)
        for i in range(tm):
            for j in range(nv):
                b.store(b.fpext(s1[i * nv + j], self.vd16), self.s_ptr(i, j), align=8)

    def one_group(self, gi, s_old):
        """One group (k from gi * group, at most group terms): s_old -> the new s."""
        b, e, tm, nv = self.b, self.e, self.tm, self.nv
        k0 = b.mul(gi, self.group)
        k1 = b.add(k0, self.group)
        k1 = b.select(b.icmp_signed("<", k1, self.nk), k1, self.nk)

        def max_step(x, y, st):
            v = b.fmul(x, y)  # 2^ea * 2^eb, exact (a float32 normal or 0)
            return [b.select(b.fcmp_ordered(">", v, st[0]), v, st[0])]

        zero = ir.Constant(e.vf, [0.0] * 16)
        mx = self.k_loop(self.pa, self.pb, k0, k1, [zero] * (tm * nv), max_step)
        # The scales from patterns: M = 2^E, E = max(floor(log2 mx), floor(log2|s|), -126)
        # (floor(log2) is monotone: the exponent field of the larger pattern); 2^-q = 2^(width
        # - 1 - E) is the pattern ((253 + width) << 23) - M, which stays below 2^32; sc is it
        # clamped to 2^127 (the lower clamp 2^-126 never acts: E <= 127); 2^a = 2^-q / sc.
        c_inv = b.shl(b.add(self.width, self.ci(253)), self.ci(23))
        states, scales = [], []
        for idx in range(tm * nv):
            sv = s_old[idx]
            m = self.umax(b.and_(self.umax(self.as_i(mx[idx]), b.and_(self.as_i(sv),
                                                                       self.ci(_F32_ABS))),
                                 self.ci(_F32_FIELD)), self.ci(_F32_MIN_NORMAL))
            raw = b.sub(c_inv, m)
            sc = self.umin(raw, self.ci(_F32_TOP))
            up = b.add(b.sub(raw, sc), self.ci(_F32_ONE))
            xs = b.fmul(b.fmul(sv, self.as_f(up)), self.as_f(sc))  # s * 2^-q (module doc)
            scales.append(m)
            states += [b.fptosi(xs, e.vi), self.as_f(sc), self.as_i(xs)]

        def sum_step(x, y, st):
            v = b.fmul(b.fmul(x, y), st[1])  # (a*b) * 2^-q
            return [b.add(st[0], b.fptosi(v, e.vi)), st[1], b.and_(st[2], self.as_i(v))]

        if self.parts == 1:
            res = self.k_loop(self.a, self.bt, k0, k1, states, sum_step)
            halves = [res]
        else:
            half = b.add(k0, b.ashr(b.sub(k1, k0), e.c(1)))
            first = self.k_loop(self.a, self.bt, k0, half, states, sum_step)
            second = list(first)
            for idx in range(tm * nv):
                second[3 * idx] = self.ci(0)  # the second half's sum starts at 0
            res = self.k_loop(self.a, self.bt, half, k1, second, sum_step)
            halves = [first, res]
        return [self.round_g([h[3 * idx] for h in halves], res[3 * idx + 2], scales[idx])
                for idx in range(tm * nv)]

    def round_g(self, parts, signs, m):
        """s = G = S * 2^q rounded toward zero to fp32: S (the sum of the int32 parts) converted
        toward zero, then scaled by 2^d, d = max(q, -126) (exact: a normal result), and by 2^(q
        - d) toward zero; S = 0 gives -0 when every term's sign bit is set (signs < 0)."""
        b, e = self.b, self.e
        vf = e.vf
        if len(parts) == 1:
            cvt = cgutils.get_or_insert_function(
                b.module, ir.FunctionType(vf, [e.vi, _I32]),
                "llvm.x86.avx512.sitofp.round.v16f32.v16i32")
            total = parts[0]
            f = b.call(cvt, [total, ir.Constant(_I32, _RZ)])
        else:
            wide = ir.VectorType(_I64, 16)
            half8 = ir.VectorType(_I64, 8)
            v8 = ir.VectorType(ir.FloatType(), 8)
            cvt = cgutils.get_or_insert_function(
                b.module, ir.FunctionType(v8, [half8, _I32]),
                "llvm.x86.avx512.sitofp.round.v8f32.v8i64")
            s64 = b.add(b.sext(parts[0], wide), b.sext(parts[1], wide))  # exact: < 2^32
            lo, hi = (b.call(cvt, [b.shuffle_vector(s64, ir.Constant(wide, ir.Undefined),
                                                    ir.Constant(ir.VectorType(_I32, 8),
                                                                list(range(8 * h, 8 * h + 8)))),
                                   ir.Constant(_I32, _RZ)]) for h in range(2))
            f = b.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(_I32, 16), list(range(16))))
            total = b.add(parts[0], parts[1])  # zero exactly when S is: |S| < 2^32
        mul = cgutils.get_or_insert_function(b.module, ir.FunctionType(vf, [vf, vf, _I32]),
                                             "llvm.x86.avx512.mul.ps.512")
        q = b.sub(m, b.shl(b.sub(self.width, self.ci(1)), self.ci(23)))  # (127 + q) << 23
        d = b.select(b.icmp_signed(">", q, self.ci(_F32_MIN_NORMAL)), q,
                     self.ci(_F32_MIN_NORMAL))
        c = b.add(b.sub(q, d), self.ci(_F32_ONE))
        rz = ir.Constant(_I32, _RZ)
        g = b.call(mul, [b.call(mul, [f, self.as_f(d), rz]), self.as_f(c), rz])
        neg_zero = b.and_(b.icmp_signed("==", total, self.ci(0)),
                          b.icmp_signed("<", signs, self.ci(0)))
        return b.select(neg_zero, ir.Constant(vf, [-0.0] * 16), g)
