"""The multiterm lanes (refsim.backends.cpu_multiterm) against the exact core, bit for bit.

Every case asserts that the route ran (cpu_gemm.plan's route), so a silent fall-back to the
exact core cannot make a test pass; the cases the route declines assert that it declined. Rows
of a against column 0 of b (all ones) run the hard sequences of the model: ties and near-ties at
the truncation boundary, products far apart in exponent, cancellation to zeros of either sign,
signed zeros, operands subnormal in the operand format, accumulator overflow; the other outputs
are random operand-format values with a wide exponent spread. M, N, K and the batch are not
multiples of the route's tile (4 x 64) or of the group.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from route_pairs import routes

from refsim import hardware, matmul, quantize
from refsim.backends import cpu_gemm, cpu_multiterm
from refsim.blocks import cast_operand
from refsim.formats import FloatFormat, get_format
from refsim.specs import AccumSpec, GemmSpec
from refsim.validation.bits import assert_same_bits

ROUTE = cpu_multiterm.MultitermPlan.route
OPERAND_MAN = {"e4m3fn": 3, "fp16": 10, "bf16": 7, "tf32": 10, "e5m2": 2}


def _values(rng, fmt: str, shape, spread: int = 14) -> np.ndarray:
    """Values of an operand format: normals over `spread` binades from just below emin,
    subnormals, zeros of both signs, both signs."""
    f = get_format(fmt)
    man = f.man_bits
    exponent = rng.integers(f.emin - 3, min(f.emin + spread, f.emax) + 1, shape)
    x = (1 + rng.integers(0, 2**man, shape) / 2.0**man) * np.exp2(exponent)
    sub = exponent < f.emin
    x[sub] = rng.integers(1, 2**man, int(sub.sum())) * 2.0 ** (f.emin - man)
    x *= rng.choice([-1.0, 1.0], shape)
    pick = rng.random(shape)
    x[pick < 0.06] = 0.0
    x[(pick >= 0.06) & (pick < 0.1)] = -0.0
    return x.astype(np.float32)


def _sequences(width: int, fmt: FloatFormat, operand: str) -> list[list[float]]:
    """Terms t_k (values of the operand format) whose sums hit the model's hard cases when the
    group's largest term is 1 (E = 0, units of 2^(1 - width))."""
    u = 2.0 ** (1 - width)
    f = get_format(operand)
    tiny = 2.0 ** (f.emin - f.man_bits)  # the operand format's smallest subnormal
    big = float(f.max)
    seqs = [
        [1.0, u, u / 2, -u / 2, 1.5 * u, -1.5 * u, u * 0.75, -u * 0.25],  # ties, near-ties
        [1.0, -1.0, u / 2, -u / 2, 0.0, -0.0, u, -u],  # cancellation, zeros after it
        [-0.0, -0.0, -0.0, -0.0, -0.0, -0.0, -0.0, -0.0],  # every value -0
        [0.0, -0.0, 0.0, -0.0, -0.0, 0.0, -0.0, -0.0],  # mixed zeros
        [1.0, -1.0, -u / 4, -u / 4, 1.0, -1.0, -u / 8, 0.0],  # -0 after truncation, floor -1s
        [2.0**8, 2.0**-8, -(2.0**-8), 2.0**8, -(2.0**8), 3 * 2.0**-9, 2.0**-9, -(2.0**8)],
        [tiny, -tiny, 3 * tiny, tiny, tiny * 2, -tiny, tiny, tiny],  # subnormal operands
        [big] * 8,  # accumulator overflow (fp16) or large sums
        [-big, big, -big, -big, big / 2, -big / 4, big, -big],
    ]
    # Only what the operand format holds (e4m3 has no 2^-9 * 3 and so on).
    return [[v for v in seq if float(np.float32(v)) == v and _holds(v, operand)] for seq in seqs]


def _holds(v: float, operand: str) -> bool:
    return float(quantize(np.array([v]), operand)[0]) == v


def _operands(rng, operand: str, width: int, fmt: FloatFormat, batch=2, m=9, n=70, k=37):
    """(P, M, K) a and (P, N, K) b: random values, the hard sequences in rows of a against
    column 0 of b (all ones), repeated along k."""
    a = _values(rng, operand, (batch, m, k))
    b = _values(rng, operand, (batch, n, k))
    b[:, 0, :] = 1.0
    for i, seq in enumerate(_sequences(width, fmt, operand)[:m]):
        if seq:
            row = np.resize(np.array(seq, np.float32), k)
            a[0, i] = row
            if a.shape[0] > 1:  # the last batch: negated and reversed
                a[-1, i] = -row[::-1]
    return a, b


def _c(rng, shape) -> np.ndarray:
    """Initial values, float32 or float64: ordinary, far above and below the products, fp32
    subnormals, +-0, and (float64) values at the edges of the route's range."""
    c = rng.standard_normal(shape) * np.exp2(rng.integers(-6, 10, shape))
    wide = rng.random() < 0.5
    flat = c.reshape(-1)
    special = [2.0**100, -(2.0**-140), -0.0, 0.0, -1.25 * 2.0**40, 3 * 2.0**-149]
    if wide:
        special = [2.0**470, -(2.0**-470), -(2.0**-300) * 3, *special]
    flat[:len(special)] = special[:flat.size]
    return c if wide else c.astype(np.float32)


def _check(a, b, acc, c=None, context=""):
    """The route ran, and its bits equal the exact core's (with C when given)."""
    cbits = None if c is None else np.ascontiguousarray(c, np.float64).reshape(-1).view(np.uint64)
    p = cpu_gemm.plan(a, b, acc, None, False, cbits)
    assert p is not None and p.route == ROUTE, f"{context}: route {p and p.route}"
    if c is None:
        fast, exact = routes(a, b, acc)
    else:
        spec, bt = GemmSpec(acc=acc), np.swapaxes(b, 1, 2)
        fast = matmul(a, bt, spec, c=c, route="fast").reshape(-1)
        exact = matmul(a, bt, spec, c=c, route="exact").reshape(-1)
    assert_same_bits(np.asarray(fast, np.float64), np.asarray(exact, np.float64),
                     context=context or str(acc))


# The kernels the fast tests compile: (accumulator, outer) rounding, variant, alignment, truncation.
FAST_CASES = [
    dict(fmt="fp16", rounding="rne", outer="fp32", variant="acc-excluded", align="normalized",
         truncation="toward-zero", operands="e4m3fn", chunk=8, group=4, width=5),  # bench row's
    dict(fmt="fp32", rounding="rtz", variant="acc-aligned", align="product",
         truncation="toward-zero", operands="fp16", group=8, width=6),  # NVIDIA fp32 output
    dict(fmt="fp16", rounding="rne", variant="acc-aligned", align="product",
         truncation="toward-zero", operands="fp16", subnormals="flush", group=4, width=5),
    dict(fmt="bf16", rounding="rdn", outer=AccumSpec("fp32", "rdn"), variant="acc-aligned",
         align="normalized", truncation="floor", operands="bf16", chunk=8, group=4, width=5),
]


@pytest.mark.parametrize("case", FAST_CASES, ids=lambda d: f"{d['fmt']}-{d['rounding']}-"
                         f"{d['variant']}-{d['align']}-{d['truncation']}")
@pytest.mark.parametrize("c_entry", ["inner", "outer"])
def test_hard_sequences_match_the_exact_core(case, c_entry):
    rng = np.random.default_rng(14 + FAST_CASES.index(case))
    case = dict(case)
    operand = case.pop("operands")
    acc = AccumSpec(order="multiterm", operands=operand, c_entry=c_entry, **case)
    a, b = _operands(rng, operand, acc.width, acc.fmt)
    for c in (None, _c(rng, (a.shape[0], a.shape[1], b.shape[1]))):
        if c is None and c_entry == "outer":
            continue
        _check(a, b, acc, c, context=f"{acc} c={'none' if c is None else 'given'}")


def test_widths_groups_and_chunks():
    """Group 1 and a group longer than K, a chunk of one group, the widest width the route
    takes, a width of 1 bit."""
    rng = np.random.default_rng(3)
    a, b = _operands(rng, "fp16", 5, FloatFormat(8, 23), k=45)
    base = dict(fmt="fp32", rounding="rtz", variant="acc-aligned", align="product",
                operands="fp16")
    for group, width, chunk in ((1, 1, None), (64, 5, None), (4, 8, 4), (16, 53 - 6, 32),
                                (3, 2, 9)):
        _check(a, b, AccumSpec(order="multiterm", group=group, width=width, chunk=chunk, **base))


def test_hardware_presets_take_the_route_with_c():
    """Every NVIDIA preset runs on the route, with C, and gives the exact core's bits; the
    presets the route does not prove (AMD's wide groups, chunked orders) the exact core."""
    rng = np.random.default_rng(15)
    for row in hardware.devices():
        spec = row.spec
        a = rng.standard_normal((3, 5, 70)).astype(np.float32) * 4
        b = rng.standard_normal((3, 70, 66)).astype(np.float32)
        a[0, 0, :8] = [1.5, -1.5, 1.0, 2.0**-9, 0.0, -0.0, 2.0**-20, 3.0]
        c = _c(rng, (3, 5, 66))
        # The operands as the preset's kernels see them (matmul's Casts, same seeds).
        qa = cast_operand(a, spec.a, 0, axis=-1) if spec.a is not None else a
        qb = cast_operand(b, spec.b, 1, axis=-2) if spec.b is not None else b
        cbits = np.ascontiguousarray(c, np.float64).reshape(-1).view(np.uint64)
        # (interleaved groups, group_run, are dealt by refsim.accumulate before the plan)
        acc = dataclasses.replace(spec.acc, group_run=None)
        p = cpu_gemm.plan(qa, np.swapaxes(qb, 1, 2), acc, spec.out, False, cbits)
        name = f"{row.device} {row.input}/{row.out}"
        if row.device in ("v100", "a100", "h100", "h200", "b200", "l40s"):
            assert p is not None and p.route == ROUTE, name
        got = matmul(a, b, spec, c=c)
        want = matmul(a, b, spec, c=c, route="exact")
        assert_same_bits(np.asarray(got, np.float64), np.asarray(want, np.float64),
                         context=name)


def test_real_gpu_rows_take_the_route(monkeypatch):
    """The real-GPU rows of tests/data/tensor_cores (one MMA per row, batched as in
    tests/refsim/test_hardware.py) run on the route and give the GPU's bits. (Batched 1 x 1
    outputs are thinner than the route suits, so its padding limit is lifted here.)"""
    monkeypatch.setattr(cpu_multiterm, "MAX_PADDING", float("inf"))
    monkeypatch.setattr(cpu_multiterm, "COPY_FLOOR", float("inf"))
    from pathlib import Path
    data_dir = Path(__file__).resolve().parents[1] / "data" / "tensor_cores"
    for name, (device, fmt) in {"v100_fp16": ("v100", "fp16"), "a100_fp16": ("a100", "fp16"),
                                "h100_fp16": ("h100", "fp16"),
                                "h100_e4m3": ("h100", "e4m3")}.items():
        with np.load(data_dir / f"{name}.npz") as data:
            a, b, c, d = data["a"], data["b"], data["c"], data["d"]
        spec = hardware.gemm_spec(device, fmt)
        qa = np.asarray(a, np.float64)[:, None, :]
        qb = np.asarray(b, np.float64)[:, None, :]
        cbits = np.asarray(c, np.float64).reshape(-1).view(np.uint64)
        p = cpu_gemm.plan(qa, qb, spec.acc, spec.out, False, cbits)
        assert p is not None and p.route == ROUTE, name
        got = matmul(a[:, None, :], b[:, :, None], spec, c=c[:, None, None], route="fast")
        assert np.array_equal(got.reshape(-1).view(np.uint32), d), name


def test_declined_cases_go_to_the_exact_core():
    """What the route does not prove: SR, a product Cast, a group sum wider than 53 bits, a
    wide accumulator, non-finite operands or C, C out of range, a field it does not know."""
    rng = np.random.default_rng(5)
    a, b = _operands(rng, "fp16", 5, FloatFormat(8, 23), batch=1, m=4, n=5, k=9)
    base = dict(order="multiterm", group=4, width=5)
    ok = AccumSpec("fp32", **base)
    assert cpu_gemm.plan(a, b, ok, None, False).route == ROUTE

    def declined(acc, a=a, b=b, c=None):
        cbits = None if c is None else np.asarray(c, np.float64).reshape(-1).view(np.uint64)
        assert cpu_gemm.plan(a, b, acc, None, False, cbits) is None, str(acc)
        if c is None:
            fast, exact = routes(a, b, acc, route="auto")
            assert_same_bits(fast, exact, context=str(acc))

    declined(AccumSpec("fp32", "sr", **base))
    declined(AccumSpec("fp32", outer=AccumSpec("fp32", "sr"), chunk=4, **base))
    declined(AccumSpec("fp32", product="bf16", **base))
    declined(AccumSpec("fp32", order="multiterm", group=4, width=52))  # 3 + 52 + 1 > 53
    declined(AccumSpec("fp64", **base))  # no two guard bits in float64
    for bad in (np.inf, -np.inf, np.nan):
        a2 = a.copy()
        a2[0, 1, 2] = bad
        declined(ok, a=a2)
    for bad in (np.inf, np.nan, 2.0**481, 2.0**-481):
        c = np.zeros((1, 4, 5))
        c[0, 1, 1] = bad
        declined(ok, c=c)


def test_thin_shapes_cost_no_more_than_the_exact_core():
    """A matrix-vector product (N = 1) runs on the route with the operands swapped (D^T = B^T
    A^T: one row padded to a tile's 4, not one column to its 64), with C, bit for bit; a product
    thin both ways (1 x 1, 2 x 3) goes to the exact core; the route's copies for N = 1 stay
    within a small factor (3) of the exact core's (once 64x: 2.8 GiB at K = 2^20)."""
    import tracemalloc
    rng = np.random.default_rng(21)
    spec = hardware.gemm_spec("h100", "e4m3")
    for m, n in ((70, 1), (1, 70)):
        a = _values(rng, "e4m3fn", (2, m, 37))
        b = _values(rng, "e4m3fn", (2, n, 37))
        assert cpu_multiterm.tiling(m, n)[0] == (n < m)
        _check(a, b, spec.acc, _c(rng, (2, m, n)), context=f"{m} x {n}")
    for m, n in ((1, 1), (2, 3)):
        a, b = _values(rng, "e4m3fn", (3, m, 40)), _values(rng, "e4m3fn", (3, n, 40))
        assert cpu_gemm.plan(a, b, spec.acc, None, False) is None, (m, n)
        assert_same_bits(*routes(a, b, spec.acc, route="auto"), context=f"{m} x {n}")
    k = 1 << 14
    a = _values(rng, "e4m3fn", (64, k))
    v = _values(rng, "e4m3fn", (k, 1))
    peaks = {}
    for route in ("exact", "fast"):
        tracemalloc.start()
        matmul(a, v, GemmSpec(acc=spec.acc), route=route)
        peaks[route] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks["fast"] <= 3 * peaks["exact"], peaks  # a padded copy and the powers


def test_unknown_fields_must_hold_their_defaults(monkeypatch):
    """A field the route does not know (a newer feature) sends the spec to the exact core
    unless it holds its default: here 'chunk' plays the unknown field."""
    a = np.ones((1, 8, 8))
    spec = dict(order="multiterm", group=4, width=5)
    monkeypatch.setattr(cpu_multiterm, "KNOWN_FIELDS", cpu_multiterm.KNOWN_FIELDS - {"chunk"})
    assert cpu_gemm.plan(a, a, AccumSpec("fp32", **spec), None, False).route == ROUTE
    assert cpu_gemm.plan(a, a, AccumSpec("fp32", chunk=4, **spec), None, False) is None


@pytest.mark.slow
@pytest.mark.parametrize("rounding,orounding", [("rne", "rne"), ("rna", "rtz"), ("rtz", "rup"),
                                                ("rup", "rdn"), ("rdn", "rne"), ("rto", "rna")])
def test_random_sweep(rounding, orounding, monkeypatch):
    """Every variant, alignment, truncation, flushing and C entry in every deterministic mode of
    the accumulator and the outer accumulator, on random operand-format values. Shapes are
    thin and random (swapped or not, cpu_multiterm.tiling): the limits of cpu_multiterm.suits
    are lifted so that every one runs on the route."""
    monkeypatch.setattr(cpu_multiterm, "MAX_PADDING", float("inf"))
    monkeypatch.setattr(cpu_multiterm, "COPY_FLOOR", float("inf"))
    rng = np.random.default_rng(ROUNDING_SEEDS[rounding])
    for variant, align, truncation, subnormals, c_entry in itertools.product(
            ("acc-excluded", "acc-aligned"), ("normalized", "product"), ("toward-zero", "floor"),
            ("keep", "flush"), ("inner", "outer")):
        operand = ("e4m3fn", "fp16", "bf16", "e5m2")[rng.integers(4)]
        fmt = ("fp32", FloatFormat(8, 13), "bf16", "fp16")[rng.integers(4)]
        group = int(rng.choice([1, 2, 4, 8, 16, 32]))
        width = int(rng.integers(1, 53 - (group + 1).bit_length()))
        chunk = None if rng.random() < 0.3 else group * int(rng.integers(1, 4))
        acc = AccumSpec(fmt, rounding, "multiterm", group=group, width=width, chunk=chunk,
                        outer=AccumSpec("fp32", orounding), variant=variant, align=align,
                        truncation=truncation, operands=operand, subnormals=subnormals,
                        c_entry=c_entry)
        a, b = _operands(rng, operand, width, acc.fmt, m=int(rng.integers(1, 10)),
                         n=int(rng.integers(1, 80)), k=int(rng.integers(1, 100)))
        _check(a, b, acc, _c(rng, (a.shape[0], a.shape[1], b.shape[1])))
        if c_entry == "inner":
            _check(a, b, acc)


ROUNDING_SEEDS = {"rne": 1, "rna": 2, "rtz": 3, "rup": 4, "rdn": 5, "rto": 6}
