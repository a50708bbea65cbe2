"""The register-tiled GEMM routes (refsim.backends.cpu_tile) against the exact core, bit for bit.

Every case names the route it expects and asserts that route ran (cpu_gemm.plan's route), so a
silent fall-back cannot make a test pass. The operands are built from a significand budget and
an exponent range (what the routes' conditions read), and rows of a against columns of b run
the hard sequences of the accumulator format: ties at its midpoints, sticky bits far below,
cancellation to zeros of either sign, its subnormal range, its overflow. M, N, K and the batch
are not multiples of the tile.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from route_pairs import routes

from refsim.accumulate import matmul
from refsim.backends import cpu_gemm, cpu_tile
from refsim.formats import FloatFormat, get_format
from refsim.kernels import tile
from refsim.kernels.accum_core import TAG_ADD, accum_word
from refsim.kernels.rng import philox_x8_wrap, philox_x16_wrap, round_keys
from refsim.specs import AccumSpec, Cast, GemmSpec
from refsim.validation.bits import assert_same_bits

DIRECTED = ["rtz", "rup", "rdn"]
OVERFLOWS = ["default", "saturate"]
avx512 = pytest.mark.skipif(not tile.AVX512, reason="the directed routes round with AVX-512's "
                            "embedded rounding; test_directed_needs_avx512 covers the fall-back")


def _split(exp: int, slen: int, lo: int, hi: int) -> tuple[int, int]:
    """Exponents (ea, eb) with ea + eb = exp, an slen-bit significand at ea inside [lo, hi] and
    eb inside [lo, hi]."""
    for eb in range(hi, lo - 1, -1):
        ea = exp - eb
        if lo <= ea and ea + slen - 1 <= hi:
            return ea, eb
    raise AssertionError(f"term 2^{exp} is not a product of operands in [2^{lo}, 2^{hi}]")


def _sequences(fmt: FloatFormat, bits: int, lo: int, hi: int, below_qmin: bool):
    """Hard term sequences for an accumulator fmt, as lists of (signed odd significand, exponent of
    its lowest bit), every term a product of two operands of at most `bits` bits in [lo, hi]."""
    q = fmt.man_bits + 1
    qmin = fmt.emin - fmt.man_bits
    low, high = 2 * lo, 2 * hi  # product exponents a single-bit term can have
    e = min(max(low + q + 10, fmt.emin + q), high - 2, fmt.emax - 1)  # a binade with room below
    h = e - q  # half a unit of 2^e
    seqs = [
        [(1, e), (1, h), (1, h), (1, h), (-1, h + 1), (3, h - 1), (1, h)],  # ties to even
        [(1, e), (1, h), (1, max(h - 30, low)), (-1, e), (1, h)],  # a sticky bit far below
        [(1, e), (-1, e), (1, e - 3), (-1, e - 3)],  # exact zero sums
        [(0, -1), (0, -1)],  # -0 + -0
        [(0, 1), (0, -1), (0, 1)],  # +0 and -0
        [(-1, e), (1, e), (0, -1)],
    ]
    if low <= qmin + 3:
        sub = [(1, qmin + 3), (1, qmin + 1), (-1, qmin + 2), (1, qmin)]
        if below_qmin and low <= qmin - 2:
            sub += [(1, qmin - 1), (1, qmin - 2), (-1, qmin - 1), (3, qmin - 2)]
        seqs.append([t for t in sub if t[1] >= low])
    top = min(high, fmt.emax)
    reps = (1 << (fmt.emax + 1 - top)) + 2  # terms of 2^top that pass the largest value
    if reps <= 20:
        seqs.append([(1, top)] * reps + [(-1, top)] * (reps + 4))  # and back (saturate differs)
        w = min(bits, 3)
        seqs.append([((1 << w) - 1, top - w + 1)] * reps)
    # Only what the operands can make (a narrow exponent range has no room for some).
    return [seq for seq in seqs if all(sig == 0 or (exp >= low and exp + abs(sig).bit_length()
                                                    <= high + 1) for sig, exp in seq)]


def _operands(rng, fmt, bits, lo, hi, *, below_qmin=True, batch=1, m=14, n=70, k=48):
    """(P, M, K) and (P, N, K) float32/float64 operands: significands of at most `bits` bits,
    every set bit's exponent in [lo, hi], signed zeros; the hard sequences of fmt in rows i of
    a against columns i of b."""
    dtype = np.float32 if bits <= 24 and lo >= -149 and hi <= 127 else np.float64

    def draw(shape):
        sig = rng.integers(1, 1 << bits, shape) | 1
        top = np.frexp(sig.astype(np.float64))[1] - 1
        exp = rng.integers(lo, np.maximum(hi - top, lo) + 1, shape)
        x = np.ldexp(sig.astype(np.float64), exp) * rng.choice([-1.0, 1.0], shape)
        x[rng.random(shape) < 0.05] = 0.0
        x[rng.random(shape) < 0.05] = -0.0
        return x

    a, b = draw((batch, m, k)), draw((batch, n, k))
    for i, seq in enumerate(_sequences(fmt, bits, lo, hi, below_qmin)[:min(m, n)]):
        if len(seq) > k:
            continue
        for j, (sig, exp) in enumerate(seq):
            if sig == 0:
                a[0, i, j], b[0, i, j] = exp * 0.0, 1.0  # a signed zero term
                continue
            ea, eb = _split(exp, abs(sig).bit_length(), lo, hi)
            a[0, i, j], b[0, i, j] = np.ldexp(float(sig), ea), np.ldexp(1.0, eb)
        a[0, i, len(seq):] = 0.0  # the sequence alone (plus zero terms)
    return a.astype(dtype), b.astype(dtype)


def _check(a, b, acc, route, lane, cast=None, max_left=0.2):
    """`route` runs in `lane`, leaves at most max_left of the outputs to the exact core, and
    refsim's result equals the exact core's everywhere."""
    plan = cpu_gemm.plan(a, b, acc, cast, False)
    assert plan is not None and (plan.route, plan.lane) == (route, np.dtype(lane)), (acc, plan)
    raw = cpu_gemm.run(plan, a, b)
    assert np.isnan(raw).mean() <= max_left, (acc, np.isnan(raw).mean())
    fast, exact = routes(a, b, acc, cast)
    assert_same_bits(fast, exact, context=f"{acc} cast={cast} route={route}")


# (accumulator, operand bits, exponent range) -> route in float32 / float64 lanes.
NATIVE = [("fp32", 4, -74, 62, np.float32), ("fp32", 12, -74, 50, np.float32),
          ("fp64", 24, -149, 100, np.float64)]


@pytest.mark.parametrize("overflow", OVERFLOWS)
@pytest.mark.parametrize("rounding", ["rne", *DIRECTED])
@pytest.mark.parametrize(("acc_fmt", "bits", "lo", "hi", "lane"), NATIVE)
def test_lane_native(acc_fmt, bits, lo, hi, lane, rounding, overflow):
    if rounding != "rne" and not tile.AVX512:
        pytest.skip("directed lane-native rounding needs AVX-512 (test_directed_needs_avx512)")
    rng = np.random.default_rng(bits - lo)
    fmt = get_format(acc_fmt)
    a, b = _operands(rng, fmt, bits, lo, hi, batch=2)
    _check(a, b, AccumSpec(acc_fmt, rounding, overflow=overflow), "lane-native", lane)


DOUBLE = [("fp16", 4, -12, 7), ("fp16", 5, -12, 7), ("bf16", 4, -66, 62), ("tf32", 5, -68, 62),
          ("e8m3", 2, -64, 62)]


@pytest.mark.parametrize("overflow", OVERFLOWS)
@pytest.mark.parametrize(("acc_fmt", "bits", "lo", "hi"), DOUBLE)
def test_double_rounding(acc_fmt, bits, lo, hi, overflow):
    """Products of at most q bits on G's grid: one float32 FMA, one rounding to G."""
    rng = np.random.default_rng(bits - lo)
    fmt = get_format(acc_fmt)
    a, b = _operands(rng, fmt, bits, lo, hi, below_qmin=False)
    _check(a, b, AccumSpec(acc_fmt, overflow=overflow), "double-rounding", np.float32)


ODD = [("fp16", 8, -20, 7, np.float32), ("fp16", 4, -16, 7, np.float32),  # below fp16's grid
       ("bf16", 8, -70, 60, np.float32), ("fp32", 24, -110, 60, np.float64)]


@pytest.mark.parametrize("overflow", OVERFLOWS)
@pytest.mark.parametrize(("acc_fmt", "bits", "lo", "hi", "lane"), ODD)
def test_tile_odd(acc_fmt, bits, lo, hi, lane, overflow):
    """Products that do not fit G (too many bits, or below its smallest quantum): the sum
    rounded to odd in the lane, then to nearest in G."""
    rng = np.random.default_rng(bits * 7 - lo)
    fmt = get_format(acc_fmt)
    a, b = _operands(rng, fmt, bits, lo, hi)
    _check(a, b, AccumSpec(acc_fmt, overflow=overflow), "tile-odd", lane)


NESTED = [("fp16", 8, -20, 7, np.float32), ("bf16", 4, -70, 62, np.float32),
          ("tf32", 8, -72, 60, np.float32), ("fp32", 24, -110, 62, np.float64)]


@avx512
@pytest.mark.parametrize("overflow", OVERFLOWS)
@pytest.mark.parametrize("rounding", DIRECTED)
@pytest.mark.parametrize(("acc_fmt", "bits", "lo", "hi", "lane"), NESTED)
def test_directed_nested(acc_fmt, bits, lo, hi, lane, rounding, overflow):
    """rtz/rup/rdn: the lane's sum rounded in the same direction, then G's rounding."""
    rng = np.random.default_rng(bits * 3 - lo)
    fmt = get_format(acc_fmt)
    a, b = _operands(rng, fmt, bits, lo, hi)
    _check(a, b, AccumSpec(acc_fmt, rounding, overflow=overflow), "directed-nested", lane)


CHUNKED = [  # (inner, inner mode, outer, outer mode, operand bits, lo, hi, route, lane)
    ("fp16", "rne", "fp32", "rne", 4, -12, 7, "double-rounding", np.float32),
    ("fp16", "rne", "fp32", "rdn", 4, -12, 7, "double-rounding", np.float32),
    ("fp16", "rtz", "fp32", "rup", 8, -20, 7, "directed-nested", np.float32),
    ("bf16", "rne", "fp32", "rtz", 8, -70, 60, "tile-odd", np.float32),
    ("fp32", "rne", "fp32", "rne", 4, -74, 62, "lane-native", np.float32),
    ("fp32", "rne", "fp64", "rne", 24, -110, 60, "tile-odd", np.float64),
]


@pytest.mark.parametrize(("inner", "mode", "outer", "omode", "bits", "lo", "hi", "route", "lane"),
                         CHUNKED)
def test_chunked(inner, mode, outer, omode, bits, lo, hi, route, lane):
    """Chunk results promoted into an outer accumulator of the lane's format."""
    if (mode, omode) != ("rne", "rne") and not tile.AVX512:
        pytest.skip("directed modes need AVX-512 (test_directed_needs_avx512)")
    rng = np.random.default_rng(bits + 100)
    fmt = get_format(inner)
    a, b = _operands(rng, fmt, bits, lo, hi, below_qmin=route != "double-rounding", k=61)
    for chunk in (1, 5, 16, 61, 200):
        acc = AccumSpec(inner, mode, "chunked", chunk=chunk, outer=AccumSpec(outer, omode))
        _check(a, b, acc, route, lane)


ORDERED = [("fp32", 4, -74, 62, "lane-native", np.float32),
           ("fp16", 4, -12, 7, "double-rounding", np.float32),
           ("fp16", 8, -20, 7, "tile-odd", np.float32),
           ("bf16", 4, -66, 62, "double-rounding", np.float32),
           ("fp32", 24, -110, 60, "tile-odd", np.float64)]


@pytest.mark.parametrize("order", ["kahan", "pairwise"])
@pytest.mark.parametrize(("acc_fmt", "bits", "lo", "hi", "route", "lane"), ORDERED)
def test_kahan_and_pairwise(order, acc_fmt, bits, lo, hi, route, lane):
    """The other two orders on the same routes; K around the pairwise tree's powers of two."""
    rng = np.random.default_rng(bits * 11 - lo)
    fmt = get_format(acc_fmt)
    for k, overflow in ((1, "default"), (3, "saturate"), (8, "default"), (13, "saturate"),
                        (48, "default"), (48, "saturate")):
        a, b = _operands(rng, fmt, bits, lo, hi, below_qmin=route != "double-rounding", k=k)
        _check(a, b, AccumSpec(acc_fmt, order=order, overflow=overflow), route, lane,
               max_left=1.0)


@avx512
@pytest.mark.parametrize("order", ["kahan", "pairwise"])
@pytest.mark.parametrize("rounding", DIRECTED)
def test_kahan_and_pairwise_directed(order, rounding):
    rng = np.random.default_rng(12)
    fmt = get_format("fp16")
    for k in (1, 5, 48):
        a, b = _operands(rng, fmt, 8, -20, 7, k=k)
        _check(a, b, AccumSpec("fp16", rounding, order=order), "directed-nested", np.float32,
               max_left=1.0)


def test_output_cast_and_small_shapes():
    """An output Cast after a tile route; K = 1, N below one panel, M below one tile row."""
    rng = np.random.default_rng(7)
    fmt = get_format("fp16")
    a, b = _operands(rng, fmt, 4, -12, 7)
    _check(a, b, AccumSpec("fp16"), "double-rounding", np.float32, Cast("e4m3fn", "rna"))
    for m, n, k in [(1, 1, 1), (3, 5, 1), (5, 65, 2), (4, 64, 3), (13, 129, 4)]:
        a, b = _operands(rng, fmt, 4, -12, 7, m=m, n=n, k=k)
        _check(a, b, AccumSpec("fp16"), "double-rounding", np.float32, max_left=1.0)


def test_double_rounding_needs_products_on_the_grid():
    """One product bit too many, or one product below G's smallest quantum, is tile-odd; the
    routes' other refusals go to the row kernel or the exact core."""
    rng = np.random.default_rng(8)
    fp16 = get_format("fp16")
    a, b = _operands(rng, fp16, 6, -12, 7)  # 6 + 6 bits > 11
    assert cpu_gemm.plan(a, b, AccumSpec("fp16"), None, False).route == "tile-odd"
    a, b = _operands(rng, fp16, 5, -12, 7)
    assert cpu_gemm.plan(a, b, AccumSpec("fp16"), None, False).route == "double-rounding"
    a[0, 0, 0] = b[0, 5, 0] = 2.0 ** -13  # one product 2^-26 < 2^-24 (another output)
    assert cpu_gemm.plan(a, b, AccumSpec("fp16"), None, False).route == "tile-odd"
    a, b = _operands(rng, fp16, 4, -12, 7)
    rows = [AccumSpec("fp16", "rna"), AccumSpec("fp16", "rto"), AccumSpec("e5m2"),
            AccumSpec("fp16", product=Cast("fp16")),
            AccumSpec("fp16", order="chunked", chunk=4, outer="e5m13")]
    for acc in rows:
        plan = cpu_gemm.plan(a, b, acc, None, False)
        assert plan is not None and plan.route == "odd-rows", (acc, plan)
    for acc in (AccumSpec("fp16", "sr"), AccumSpec("fp16", "rna", order="pairwise"),
                AccumSpec("e5m2", order="kahan")):
        assert cpu_gemm.plan(a, b, acc, None, False) is None
    # multiterm has its own route (tests/refsim/test_multiterm_route.py)
    assert cpu_gemm.plan(a, b, AccumSpec("fp16", order="multiterm", group=4, width=12), None,
                         False).route == "multiterm-lanes"


def test_directed_needs_avx512():
    """Where the CPU lacks AVX-512 the directed modes take the row kernel instead."""
    rng = np.random.default_rng(9)
    a, b = _operands(rng, get_format("fp16"), 4, -12, 7)
    plan = cpu_gemm.plan(a, b, AccumSpec("fp16", "rtz"), None, False)
    assert plan.route == ("directed-nested" if tile.AVX512 else "odd-rows")


def test_threads_do_not_change_bits():
    """Jobs split over threads (the kernel's prange) give the same bits as one thread."""
    import numba
    rng = np.random.default_rng(10)
    a, b = _operands(rng, get_format("fp16"), 4, -12, 7, m=64, n=256, k=300)  # not serial
    plan = cpu_gemm.plan(a, b, AccumSpec("fp16"), None, False)
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = cpu_tile.run(plan, a, b)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        assert_same_bits(cpu_tile.run(plan, a, b), one)
    finally:
        numba.set_num_threads(previous)


@pytest.mark.slow
def test_double_rounding_lemma_fp16_e4m3():
    """rne_fp16(rne_float32(x + t)) == rne_fp16(x + t) for every finite fp16 x and every product
    t of two e4m3fn values: the claim double-rounding rests on, checked over all pairs (float64
    holds every such sum exactly)."""
    e4m3 = _values(get_format("e4m3fn"))
    e4m3 = e4m3[np.isfinite(e4m3)]
    products = np.unique(np.abs(np.multiply.outer(e4m3, e4m3)).ravel())
    products = np.concatenate([products, -products])
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    x = x[np.isfinite(x)].astype(np.float64)
    for chunk in np.array_split(products, 64):
        s = np.add.outer(x, chunk)
        with np.errstate(over="ignore"):
            once = s.astype(np.float16)
            twice = s.astype(np.float32).astype(np.float16)
        same = (once == twice) | (np.isnan(once) & np.isnan(twice))
        assert same.all(), s[~same][:5]


def _values(fmt) -> np.ndarray:
    return fmt.decode(np.arange(fmt.n_codes, dtype=np.uint64))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(60))
def test_random_route_specs(seed):
    """Random accumulators, modes, overflow policies, chunking, operand budgets and scales:
    whatever route plan picks equals the exact core."""
    rng = np.random.default_rng(5000 + seed)
    acc_fmt = rng.choice(["fp16", "bf16", "tf32", "fp32", "fp64", "e8m5"])
    fmt = get_format(acc_fmt)
    modes = ["rne", *DIRECTED] if tile.AVX512 else ["rne"]
    kwargs = {"overflow": rng.choice(OVERFLOWS), "order": rng.choice(["sequential", "kahan",
                                                                       "pairwise"])}
    bits = int(rng.integers(1, 13))
    lo = int(rng.integers(-74, 0))
    hi = int(rng.integers(max(lo + bits, -20), 63))
    if rng.random() < 0.4:
        outer = "fp32" if acc_fmt not in ("fp64",) else "fp64"
        kwargs.update(order="chunked", chunk=int(rng.integers(1, 40)),
                      outer=AccumSpec(outer, rng.choice(modes)))
    acc = AccumSpec(acc_fmt, rng.choice(modes), **kwargs)
    a, b = _operands(rng, fmt, bits, lo, hi, m=int(rng.integers(1, 12)),
                     n=int(rng.integers(1, 140)), k=int(rng.integers(1, 90)),
                     batch=int(rng.integers(1, 3)))
    plan = cpu_gemm.plan(a, b, acc, None, False)
    fast, exact = routes(a, b, acc, route="auto")
    assert_same_bits(fast, exact, context=f"{acc} plan={plan}")


# ---- sr-exact-sum: stochastic rounding of the exact lane sum ------------------------------------
def _check_sr(a, b, acc, seed, max_left=0.2):
    """sr-exact-sum runs (float64 lanes), leaves at most max_left of the outputs to the exact
    core (NaN), and every output it computes equals the exact core's under the same seed."""
    plan = cpu_gemm.plan(a, b, acc, None, False, seed=seed)
    assert plan is not None and (plan.route, plan.lane) == ("sr-exact-sum",
                                                            np.dtype(np.float64)), (acc, plan)
    raw = cpu_gemm.run(plan, a, b).reshape(-1)
    left = np.isnan(raw)
    assert left.mean() <= max_left, (acc, left.mean())
    spec = GemmSpec(acc=acc)
    exact = matmul(a, np.swapaxes(b, 1, 2), spec, route="exact", seed=seed).reshape(-1)
    assert_same_bits(raw[~left].astype(exact.dtype), exact[~left],
                     context=f"{acc} seed={seed} route=sr-exact-sum")
    return left.mean()


SR_CASES = [  # (accumulator, operand bits, exponent range, below G's smallest quantum)
    ("fp16", 4, -12, 7, False), ("fp16", 6, -14, 7, True), ("e5m2", 3, -8, 7, True),
    ("e4m3fn", 3, -6, 2, True), ("e5m10", 8, -12, 7, False)]


@pytest.mark.parametrize("overflow", OVERFLOWS)
@pytest.mark.parametrize("sr_bits", [None, 1, 5, 13, 32, 33, 40, 64])
@pytest.mark.parametrize(("acc_fmt", "bits", "lo", "hi", "below"), SR_CASES)
def test_sr_exact_sum(acc_fmt, bits, lo, hi, below, sr_bits, overflow):
    """Every sr_bits (one 32-bit word and more), overflow policy and a few seeds over the hard
    sequences (fractions of exactly one half, sticky bits far below, exact zeros of either sign,
    G's subnormals and overflow); N not a multiple of 8 (Philox blocks straddle rows), K past
    one block of words."""
    rng = np.random.default_rng(bits * 5 - lo)
    fmt = get_format(acc_fmt)
    a, b = _operands(rng, fmt, bits, lo, hi, below_qmin=below, batch=2, k=40)
    for seed in (0, 1, (1 << 64) - 1):
        _check_sr(a, b, AccumSpec(acc_fmt, "sr", sr_bits=sr_bits, overflow=overflow), seed)


def test_sr_words_follow_the_output_index():
    """One Philox block per 8 consecutive outputs of a step: N = 4, 5, 8, 9, 33, 40 and 64 (rows
    aligned or not with the blocks: 4 or 5 blocks per tile row and step, eight-lane calls across
    steps), M and K around the tile and the 16-step word buffer, batches; results do not depend
    on the thread count."""
    rng = np.random.default_rng(21)
    fmt = get_format("fp16")
    for m, n, k, batch in [(1, 1, 1, 1), (3, 4, 2, 1), (5, 5, 17, 1), (3, 8, 3, 2),
                           (4, 9, 31, 2), (4, 33, 16, 1), (3, 40, 35, 2), (9, 64, 33, 1)]:
        a, b = _operands(rng, fmt, 4, -12, 7, m=m, n=n, k=k, batch=batch)
        _check_sr(a, b, AccumSpec("fp16", "sr"), 7, max_left=1.0)
    a, b = _operands(rng, fmt, 4, -12, 7, m=64, n=200, k=70)
    plan = cpu_gemm.plan(a, b, AccumSpec("fp16", "sr", sr_bits=8), None, False, seed=3)
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = cpu_tile.run(plan, a, b)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        assert_same_bits(cpu_tile.run(plan, a, b), one)
    finally:
        numba.set_num_threads(previous)


@numba.njit
def _wrap_blocks(out, first, r0, group, c2, keys):
    philox_x8_wrap(out, np.int64(8), np.uint64(first), np.uint64(r0), np.uint64(group),
                   np.uint64(0), np.uint64(c2), np.uint64(TAG_ADD), keys)


@numba.njit
def _wrap_blocks_x16(out, first, r0, c2, r1, c2_1, group, keys):
    philox_x16_wrap(out, np.int64(8), np.uint64(first), np.uint64(r0), np.uint64(c2),
                    np.uint64(r1), np.uint64(c2_1), np.uint64(group), np.uint64(0),
                    np.uint64(TAG_ADD), keys)


def _wrap_want(seed, first, r0, group, step):
    return [int(accum_word(seed, 8 * (first - 1 + (r0 + lane) % group) + e,
                           step + (r0 + lane) // group, TAG_ADD, 0))
            for lane in range(8) for e in range(8)]


@pytest.mark.parametrize("group", [4, 5, 8, 9])
def test_sr_word_blocks_run_across_steps(group):
    """rng.philox_x8_wrap (sr-exact-sum's generator): lane l = group * w + m - r0 is the block at
    counter (first + m, 0, step + w, TAG_ADD), its eight 32-bit words those accum_word gives the
    eight outputs it covers, written after eight untouched words; rng.philox_x16_wrap, two such
    runs in one call, the second at its own (r1, step), written right after the first."""
    seed, first, step = (1 << 64) - 3, 1000, 77
    keys = round_keys(np.uint64(seed), np.uint64(0))
    for r0 in range(group):
        out = np.zeros(8 + 64 + 8, np.uint32)
        _wrap_blocks(out, first, r0, group, step, keys)
        assert out[8:72].tolist() == _wrap_want(seed, first, r0, group, step), (group, r0)
        assert not out[:8].any() and not out[72:].any()
        r1 = (r0 + 3) % group
        out = np.zeros(8 + 128 + 8, np.uint32)
        _wrap_blocks_x16(out, first, r0, step, r1, step + 5, group, keys)
        assert out[8:72].tolist() == _wrap_want(seed, first, r0, group, step), (group, r0)
        assert out[72:136].tolist() == _wrap_want(seed, first, r1, group, step + 5), (group, r1)
        assert not out[:8].any() and not out[136:].any()


@pytest.mark.parametrize("n", [21, 24])
def test_sr_word_ties_go_to_the_exact_core(n):
    """Sums whose discarded fraction ties the complement of H_0 in its top 32 bits. Output
    (p, i, j) of fp16 sr gets one term, 1024 + F / 2^36 (sign alternating), at step i * n + j,
    every other term zero; F's top 32 bits are ~H_0 of that output index and step, its low four
    0101. Where more random bits count (sr_bits None, 34, 40) the next word decides: the route
    leaves exactly those lanes to the exact core (NaN); with 32 or 33 bits the remaining compared
    bits are zero, so the route rounds down itself. The result equals the exact core's."""
    seed, m, batch = 12345, 2, 2
    k = m * n
    a = np.zeros((batch, m, k))
    b = np.zeros((batch, n, k))
    for p in range(batch):
        for i in range(m):
            for j in range(n):
                step = i * n + j
                h0 = int(accum_word(seed, (p * m + i) * n + j, step, TAG_ADD, 0))
                frac = ((h0 ^ 0xFFFFFFFF) << 4) | 0b0101
                a[p, i, step] = (-1.0) ** j * (1024.0 + frac * 2.0 ** -36)
                b[p, j, step] = 1.0
    for sr_bits, left in ((None, True), (40, True), (34, True), (33, False), (32, False)):
        acc = AccumSpec("fp16", "sr", sr_bits=sr_bits)
        plan = cpu_gemm.plan(a, b, acc, None, False, seed=seed)
        assert plan is not None and plan.route == "sr-exact-sum", (acc, plan)
        raw = cpu_gemm.run(plan, a, b)
        assert np.isnan(raw).all() if left else not np.isnan(raw).any(), (acc, raw)
        if not left:  # the tie with nothing below it rounds toward zero
            np.testing.assert_array_equal(np.abs(raw), 1024.0)
        _check_sr(a, b, acc, seed, max_left=1.0)
        exact = matmul(a, np.swapaxes(b, 1, 2), GemmSpec(acc=acc), route="exact", seed=seed)
        assert_same_bits(matmul(a, np.swapaxes(b, 1, 2), GemmSpec(acc=acc), seed=seed), exact,
                         context=f"{acc} ties")


def test_sr_exact_sum_conditions():
    """sr-exact-sum needs the seed, the sequential order (or chunked into fp32 or fp64, rne), no
    product Cast, a G with signed zeros and an exact sum in float64 (the span condition);
    otherwise the exact core runs."""
    rng = np.random.default_rng(22)
    fp16 = get_format("fp16")
    a, b = _operands(rng, fp16, 4, -12, 7)
    assert cpu_gemm.plan(a, b, AccumSpec("fp16", "sr"), None, False) is None  # no seed
    refused = [AccumSpec("fp16", "sr", order="chunked", chunk=8, outer=AccumSpec("fp32", "rtz")),
               AccumSpec("fp16", "sr", order="chunked", chunk=8, outer="e8m10"),
               AccumSpec("fp16", "sr", order="kahan"), AccumSpec("fp16", "sr", order="pairwise"),
               AccumSpec("fp16", "sr", product=Cast("fp16")), AccumSpec("bf16", "sr"),
               AccumSpec("fp32", "sr"), AccumSpec("e4m3fnuz", "sr"),
               AccumSpec("fp16", "sr", order="multiterm", group=4, width=12)]
    for acc in refused:
        assert cpu_gemm.plan(a, b, acc, None, False, seed=1) is None, acc
    assert cpu_gemm.plan(a, b, AccumSpec("fp16", "rne", product=Cast("fp16", "sr")), None,
                         False, seed=1) is None
    # Span: fp16 values from 2^-24 and products up to 2^(7+7+2) need 41 bits; products down to
    # 2^-38 make it 55 > 53.
    assert cpu_gemm.plan(a, b, AccumSpec("fp16", "sr"), None, False, seed=1).route \
        == "sr-exact-sum"
    a[0, 0, 0] = b[0, 3, 0] = 2.0 ** -19
    assert cpu_gemm.plan(a, b, AccumSpec("fp16", "sr"), None, False, seed=1) is None


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(40))
def test_random_sr_specs(seed):
    """Random accumulators, sr_bits, overflow policies, chunking, operand budgets, shapes and
    seeds: where sr-exact-sum is planned it equals the exact core."""
    rng = np.random.default_rng(7000 + seed)
    acc_fmt = str(rng.choice(["fp16", "e5m2", "e4m3fn", "e5m6", "e4m6", "e3m4"]))
    fmt = get_format(acc_fmt)
    sr_bits = None if rng.random() < 0.4 else int(rng.integers(1, 65))
    kwargs = {}
    if rng.random() < 0.3:
        kwargs = {"order": "chunked", "chunk": int(rng.integers(1, 40)),
                  "outer": str(rng.choice(["fp32", "fp64"]))}
    acc = AccumSpec(acc_fmt, "sr", sr_bits=sr_bits, overflow=str(rng.choice(OVERFLOWS)),
                    **kwargs)
    bits = int(rng.integers(1, 9))
    lo = int(rng.integers(-20, 0))
    hi = int(rng.integers(max(lo + bits, -6), 12))
    a, b = _operands(rng, fmt, bits, lo, hi, m=int(rng.integers(1, 12)),
                     n=int(rng.integers(1, 140)), k=int(rng.integers(1, 90)),
                     batch=int(rng.integers(1, 3)))
    stream = int(rng.integers(0, 1 << 63)) * 2 + 1
    if cpu_gemm.plan(a, b, acc, None, False, seed=stream) is not None:
        _check_sr(a, b, acc, stream, max_left=1.0)


@pytest.mark.parametrize(("outer", "bits", "lo", "hi"), [("fp32", 4, -12, 7), ("fp64", 6, -14, 7)])
def test_sr_exact_sum_chunked(outer, bits, lo, hi):
    """Chunks of the sr sum (steps keep their absolute index k) promoted into an fp32 or fp64
    outer sum, rne; chunk 1, shorter than a block of words, across blocks, longer than K."""
    rng = np.random.default_rng(23)
    fmt = get_format("fp16")
    a, b = _operands(rng, fmt, bits, lo, hi, below_qmin=True, batch=2, k=41)
    for chunk, sr_bits in ((1, None), (5, 3), (16, 64), (17, None), (40, 9), (100, None)):
        acc = AccumSpec("fp16", "sr", "chunked", chunk=chunk, outer=AccumSpec(outer),
                        sr_bits=sr_bits)
        _check_sr(a, b, acc, 99, max_left=0.3)


def test_matmul_takes_the_sr_route_with_its_seed():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((8, 64)).astype(np.float32)
    b = rng.standard_normal((64, 16)).astype(np.float32)
    spec = GemmSpec(a=Cast("e4m3fn"), b=Cast("e4m3fn"), acc=AccumSpec("fp16", "sr"))
    fast = matmul(a, b, spec, seed=11, route="fast")
    np.testing.assert_array_equal(fast, matmul(a, b, spec, seed=11, route="exact"))
