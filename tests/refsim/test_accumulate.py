"""refsim.sum/dot/matmul against refsim.formats.exact_sum (bit for bit), and the known facts of
docs/references.md ("Numbers to reproduce")."""

from __future__ import annotations

import itertools

import numba
import numpy as np
import pytest

from refsim import quantize
from refsim.accumulate import conv2d, dot, matmul
from refsim.accumulate import sum as rsum
from refsim.backends import threads
from refsim.formats.exact_sum import dot_exact, matmul_exact, sum_exact
from refsim.formats.policy import ROUNDINGS
from refsim.kernels import accum_core
from refsim.specs import ORDERS, AccumSpec, Cast, GemmSpec
from refsim.validation.bits import assert_same_bits

# Every order; multiterm in both variants (with promotion every 6 terms, and without).
KERNEL_ORDERS = [*ORDERS, "multiterm-aligned"]


def _acc(fmt, rounding, order, **kwargs):
    if order == "chunked":
        kwargs.setdefault("chunk", 3)
    if order.startswith("multiterm"):
        kwargs.setdefault("group", 3)
        kwargs.setdefault("width", 6)
        if order == "multiterm-aligned":
            kwargs.setdefault("variant", "acc-aligned")
        else:
            kwargs.setdefault("chunk", 6)
        order = "multiterm"
    return AccumSpec(fmt, rounding, order, **kwargs)


def _terms(rng, shape, spread=40):
    """Random float64 values over 2^-spread .. 2^spread with signed zeros mixed in."""
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-spread, spread, shape))
    pick = rng.random(shape)
    x[pick < 0.05] = 0.0
    x[(pick >= 0.05) & (pick < 0.1)] = -0.0
    return x


def _check(actual, expected, context):
    assert_same_bits(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                     context=context)


# ---- against the Fraction twin -------------------------------------------------------------------
@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("order", KERNEL_ORDERS)
def test_sum_matches_exact_twin(order, rounding):
    rng = np.random.default_rng(KERNEL_ORDERS.index(order) * 10 + ROUNDINGS.index(rounding))
    x = _terms(rng, (5, 9))
    x[0, 4] = 2.0 ** 60  # overflows the small formats
    for fmt in ("fp16", "bf16", "e4m3fn", "e5m2fnuz", "fp32"):
        for overflow in ("default", "saturate"):
            acc = _acc(fmt, rounding, order, overflow=overflow)
            _check(rsum(x, acc, seed=9), sum_exact(x, acc, seed=9), str(acc))


@pytest.mark.parametrize("order", KERNEL_ORDERS)
def test_sum_sr_bits_and_axis(order):
    rng = np.random.default_rng(40 + KERNEL_ORDERS.index(order))
    x = _terms(rng, (3, 6, 4), spread=12)
    for sr_bits in (1, 5, 64):
        acc = _acc("bf16", "sr", order, sr_bits=sr_bits)
        _check(rsum(x, acc, axis=1, seed=3), sum_exact(x, acc, axis=1, seed=3), str(acc))


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_gaps_beyond_the_window(rounding):
    """Exponent gaps of 60..200 bits: the tail below the 128-bit window, added and borrowed."""
    rng = np.random.default_rng(7)
    rows = []
    for _ in range(12):
        big = rng.choice([1.0, -1.0]) * (1 + rng.integers(0, 2**52) * 2.0**-52)
        small = rng.standard_normal(4) * np.exp2(-rng.integers(60, 200, 4))
        rows.append([big, *small])
        rows.append([*small, big])
        rows.append([big, -big, *small[:3]])
    x = np.array(rows)
    for fmt in ("fp64", "fp32", "e4m3"):
        acc = AccumSpec(fmt, rounding)
        _check(rsum(x, acc, seed=1), sum_exact(x, acc, seed=1), str(acc))


@pytest.mark.parametrize("order", KERNEL_ORDERS)
def test_specials_propagate(order):
    x = np.array([[1.0, np.inf, 2.0, 3.0], [np.inf, -np.inf, 1.0, 1.0],
                  [1.0, np.nan, 1.0, 1.0], [-0.0, -0.0, -0.0, -0.0],
                  [0.0, -0.0, 1.0, -1.0], [2.0, -2.0, 0.0, 0.0]])
    for rounding in ("rne", "rdn", "sr"):
        for fmt in ("fp16", "e4m3fn"):
            acc = _acc(fmt, rounding, order)
            got = rsum(x, acc)
            _check(got, sum_exact(x, acc), str(acc))
    got = rsum(x, _acc("fp16", "rne", order))
    # Kahan's compensation c = (t - s) - y becomes Inf - Inf = NaN once the sum is infinite.
    assert (np.isnan(got[0]) if order == "kahan" else got[0] == np.inf)
    assert np.isnan(got[1]) and np.isnan(got[2])
    assert np.signbit(got[3]) and got[4] == 0 and not np.signbit(got[5])


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("order", KERNEL_ORDERS)
def test_dot_matches_exact_twin(order, rounding):
    rng = np.random.default_rng(100 + KERNEL_ORDERS.index(order) * 10 + ROUNDINGS.index(rounding))
    x = rng.standard_normal(17).astype(np.float32)
    y = (rng.standard_normal(17) * np.exp2(rng.integers(-20, 20, 17))).astype(np.float32)
    for acc in (_acc("fp16", rounding, order), _acc("e5m6", rounding, order, product="e5m2"),
                _acc("bf16", rounding, order, product=Cast("e4m7", rounding))):
        _check(dot(x, y, acc, seed=2), dot_exact(x, y, acc, seed=2), str(acc))


@pytest.mark.parametrize("order", KERNEL_ORDERS)
def test_matmul_matches_exact_twin(order):
    rng = np.random.default_rng(200 + KERNEL_ORDERS.index(order))
    a = rng.standard_normal((2, 3, 11)).astype(np.float32)
    b = rng.standard_normal((11, 4)).astype(np.float32)
    spec = GemmSpec(a=Cast("e4m3fn"), b=Cast("e5m2"),
                    acc=_acc("fp16", "sr", order, product=Cast("e5m7", "rtz")),
                    out=Cast("bf16", "sr", sr_bits=6))
    _check(matmul(a, b, spec, seed=5), matmul_exact(a, b, spec, seed=5), str(spec))


def test_matmul_sr_casts_and_fixed_output():
    rng = np.random.default_rng(300)
    a = rng.standard_normal((4, 6)).astype(np.float64)
    b = rng.standard_normal((2, 6, 3)).astype(np.float64)
    spec = GemmSpec(a=Cast("e4m3fn", "sr"), b=Cast("bf16", "sr", sr_bits=3),
                    acc=AccumSpec("e6m9", "rna", "chunked", chunk=2, outer=AccumSpec("fp32", "sr")),
                    out=Cast("fx8.3", "sr"))
    _check(matmul(a, b, spec, seed=8), matmul_exact(a, b, spec, seed=8), str(spec))


def test_matmul_plain_fp32_equals_exact_products_rounded_once_per_step():
    rng = np.random.default_rng(301)
    a = rng.standard_normal((5, 7)).astype(np.float32)
    b = rng.standard_normal((7, 6)).astype(np.float32)
    spec = GemmSpec(acc="fp64")
    got = matmul(a, b, spec)
    assert got.dtype == np.float64  # fp64 does not fit float32
    assert np.allclose(got, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-15)
    out32 = matmul(a, b, GemmSpec(acc="fp32"))
    assert out32.dtype == np.float32


# ---- the primitive's pieces ----------------------------------------------------------------------
@pytest.mark.parametrize("tail", [accum_core.TAIL_ADD, accum_core.TAIL_SUB])
def test_tail_bits_match_python_integers(tail):
    rng = np.random.default_rng(11)
    for _ in range(200):
        tl = int(rng.integers(1, 300))
        tt = int(rng.integers(1, 2**63)) | (1 << 63) if tl >= 64 else int(rng.integers(1, 2**tl))
        integer = tt if tail == accum_core.TAIL_ADD else (1 << tl) - tt
        for s in (-tl - 70, -tl - 5, -tl, -80, -64, -40, -1, 3):
            k0 = s + tl
            expected = 0
            for i in range(64):
                if 0 <= k0 + i < tl:
                    expected |= ((integer >> (k0 + i)) & 1) << i
            got = int(accum_core.tail_bits64(tail, np.uint64(tt), np.int64(tl), np.int64(s)))
            assert got == expected, (tail, tl, tt, s)


# ---- known facts ---------------------------------------------------------------------------------
def _prefix_sums(terms, acc):
    """Every running sum s_1 .. s_n at once: row i holds terms 0..i, then exact zeros."""
    n = len(terms)
    return rsum(np.tril(np.broadcast_to(terms, (n, n))), acc)


def test_fp16_running_sum_of_ones_stops_at_2048():
    assert rsum(np.ones(4096), "fp16") == 2048.0
    assert rsum(np.ones(4096), AccumSpec("fp16", order="pairwise")) == 4096.0
    assert rsum(np.ones(4096), AccumSpec("fp16", order="chunked", chunk=256, outer="fp32")) == 4096


@pytest.mark.parametrize(("fmt", "n", "stop", "value"), [
    ("fp16", 600, 513, 7.0859375),
    ("bf16", 80, 65, 5.0625),
])
def test_harmonic_sum_stagnates(fmt, n, stop, value):
    terms = quantize(1.0 / np.arange(1, n + 1), fmt)
    sums = _prefix_sums(terms, fmt)
    assert sums[stop - 2] == value  # s_(stop-1), after stop - 1 terms
    assert sums[stop - 3] < value
    assert np.all(sums[stop - 2:] == value)


def test_sr_and_chunking_and_kahan_do_not_stagnate():
    terms = quantize(1.0 / np.arange(1, 4097), "fp16")
    exact = float(np.sum(terms))  # float64: ample for the comparison
    plain = float(rsum(terms, "fp16"))
    assert plain == 7.0859375
    for seed in range(3):
        # about sqrt(n) u relative error; stagnation would leave it 1.8 below
        assert abs(float(rsum(terms, AccumSpec("fp16", "sr"), seed=seed)) - exact) < 0.3
    chunked = float(rsum(terms, AccumSpec("fp16", order="chunked", chunk=64, outer="fp32")))
    assert abs(chunked - exact) < 0.01
    kahan = float(rsum(terms, AccumSpec("fp16", order="kahan")))
    assert abs(kahan - exact) < abs(plain - exact) / 100


def test_e4m3_ties_to_even_keep_one():
    terms = np.array([1.0] + [0.0625] * 16)
    assert rsum(terms, "e4m3") == 1.0
    assert rsum(terms[::-1].copy(), "e4m3") == 2.0
    assert rsum(terms, "fp32") == 2.0


def test_thread_count_does_not_change_bits(monkeypatch):
    # Small products run on one thread (refsim.backends.threads): make every call parallel.
    monkeypatch.setattr(threads, "SERIAL_BELOW_NS", 0)
    rng = np.random.default_rng(12)
    a = rng.standard_normal((2, 9, 33)).astype(np.float32)
    b = rng.standard_normal((33, 7)).astype(np.float32)
    previous = numba.get_num_threads()
    results = []
    try:
        for order, rounding, threads_ in itertools.product(KERNEL_ORDERS, ("sr", "rne"), (1, 2)):
            numba.set_num_threads(min(threads_, numba.config.NUMBA_NUM_THREADS))
            spec = GemmSpec(a=Cast("e4m3fn"), b=Cast("e4m3fn"), acc=_acc("bf16", rounding, order))
            results.append((f"{order} {rounding}", matmul(a, b, spec, seed=4)))
            assert numba.get_num_threads() == min(threads_, numba.config.NUMBA_NUM_THREADS)
    finally:
        numba.set_num_threads(previous)
    for (order, one), (_, two) in zip(results[::2], results[1::2], strict=True):
        _check(two, one, f"{order}: 2 threads vs 1")


# ---- bad input -----------------------------------------------------------------------------------
def test_bad_input_names_shapes_and_types():
    x = np.ones(4)
    with pytest.raises(ValueError, match=r"x of shape \(4,\) and y of shape \(5,\)"):
        dot(x, np.ones(5), "fp32")
    with pytest.raises(ValueError, match=r"a of shape \(2, 3\) and b of shape \(4, 2\)"):
        matmul(np.ones((2, 3)), np.ones((4, 2)), GemmSpec(acc="fp32"))
    with pytest.raises(ValueError, match=r"batch dimensions do not broadcast"):
        matmul(np.ones((2, 2, 3)), np.ones((3, 3, 2)), GemmSpec(acc="fp32"))
    with pytest.raises(TypeError, match=r"dtype float32 or float64"):
        rsum(np.ones(3, np.int32), "fp16")
    with pytest.raises(TypeError, match=r"spec must be a GemmSpec"):
        matmul(np.ones((2, 2)), np.ones((2, 2)), "fp32")
    with pytest.raises(ValueError, match=r"axis 3 is out of range"):
        rsum(np.ones((2, 2)), "fp16", axis=3)
    with pytest.raises(ValueError, match=r"53 \+ 53 significant bits"):
        dot(np.full(3, 1 / 3), np.full(3, 1 / 3), "fp32")


@pytest.mark.parametrize("order", ["sequential", "pairwise", "chunked", "kahan"])
def test_sum_axis_none_sums_every_element_in_c_order(order):
    """axis=None as in np.sum (docs/accumulation.md, "Terms"): every element, C order, one
    output (index 0), a 0-d result; the twin (refsim.formats.exact_sum) takes axis=None the
    same way. (It raised a raw TypeError before.)"""
    rng = np.random.default_rng(11)
    x = _terms(rng, (3, 4, 5))
    for rounding in ("rne", "rdn", "sr"):
        acc = _acc("bf16", rounding, order)
        got = rsum(x, acc, axis=None, seed=5)
        assert got.shape == ()
        _check(got, rsum(x.reshape(-1), acc, seed=5), str(acc))
        _check(got, sum_exact(x, acc, axis=None, seed=5), str(acc))
    assert rsum(np.array(2.5), "fp16", axis=None) == 2.5
    assert_same_bits(rsum(x[:, :0], "fp16", axis=None), np.array(0.0))


def test_sum_axis_must_be_an_integer_and_x_a_plain_array():
    """axis=1.0 and an np.matrix get errors naming the parameter and what it accepts
    (refsim.params.check_array), not a raw TypeError / IndexError from inside."""
    x = np.ones((2, 3))
    assert_same_bits(rsum(x, "fp16", axis=np.int64(1)), rsum(x, "fp16", axis=1))
    for axis in (1.0, "1", True, (0, 1)):
        with pytest.raises(TypeError, match="axis must be an int or None"):
            rsum(x, "fp16", axis=axis)
    with pytest.warns(PendingDeprecationWarning, match="matrix subclass"):
        matrix = np.matrix(x)
    with pytest.raises(TypeError, match=r"x must be a plain NumPy array; got np\.matrix"):
        rsum(matrix, "fp16")
    with pytest.raises(TypeError, match=r"a must be a plain NumPy array; got np\.matrix"):
        matmul(matrix, x.T, GemmSpec(acc="fp16"))
    with pytest.raises(TypeError, match="x must be a plain NumPy array; got a masked array"):
        rsum(np.ma.array([1.0, 1e6, 2.0], mask=[0, 1, 0]), "fp32")


def test_non_array_errors_name_the_type():
    # c=np.float32(1) said "must be a NumPy float32/float64 array; got float32".
    a = np.ones((2, 3), np.float32)
    spec = GemmSpec(acc="fp32")
    for c, got in ((np.float32(1), r"got the NumPy scalar numpy\.float32 \(wrap a scalar: "
                                   r"np\.asarray\(c\)\)"),
                   (1.0, r"got float \(wrap"), ([[1.0]], "got list$")):
        with pytest.raises(TypeError, match=f"c must be a NumPy float32/float64 array; {got}"):
            matmul(a, a.T, spec, c=c)


def test_numpy_integer_chunk_and_sr_bits_give_the_same_bits():
    """Any integer type for chunk and sr_bits, as for seed (formats.policy.check_int)."""
    x = _terms(np.random.default_rng(3), (4, 50))
    plain = AccumSpec("fp16", "sr", "chunked", chunk=8, sr_bits=6)
    numpy_ints = AccumSpec("fp16", "sr", "chunked", chunk=np.int64(8), sr_bits=np.int64(6))
    assert_same_bits(rsum(x, numpy_ints, seed=np.uint64(4)), rsum(x, plain, seed=4))


# ---- multiterm -----------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["acc-excluded", "acc-aligned"])
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_multiterm_matches_exact_twin(variant, rounding):
    """Groups of several sizes (a short last group, chunk None and chunk = group), widths from 1
    to the limit, a product Cast; sums and dots bit for bit."""
    rng = np.random.default_rng(500 + ROUNDINGS.index(rounding))
    x = _terms(rng, (4, 13), spread=6)
    y = (rng.standard_normal(13) * np.exp2(rng.integers(-8, 8, 13))).astype(np.float32)
    z = rng.standard_normal(13).astype(np.float32)
    for group, width, chunk, outer in ((4, 1, None, None), (4, 5, 8, "fp32"), (1, 3, 1, None),
                                       (5, 11, 10, AccumSpec("fp32", "rtz")), (13, 57, None, None)):
        for fmt in ("fp16", "e4m3fn"):
            acc = AccumSpec(fmt, rounding, "multiterm", group=group, width=width, chunk=chunk,
                            outer=outer, variant=variant)
            _check(rsum(x, acc, seed=6), sum_exact(x, acc, seed=6), str(acc))
        acc = AccumSpec("bf16", rounding, "multiterm", group=4, width=7, variant=variant,
                        product=Cast("e5m6", rounding))
        _check(dot(y, z, acc, seed=3), dot_exact(y, z, acc, seed=3), str(acc))


def test_multiterm_truncates_toward_zero_relative_to_the_group_max():
    # Group max 1.0 (E = 0), width 4: quantum 2^-3; 0.2 -> 0.125, -0.2 -> -0.125, 0.1 -> 0.
    acc = AccumSpec("fp32", "rne", "multiterm", group=4, width=4)
    assert rsum(np.array([1.0, 0.2, 0.1, 0.1]), acc) == 1.125
    assert rsum(np.array([1.0, -0.2, -0.1, -0.1]), acc) == 0.875  # not 0.75: toward zero
    # acc-excluded: the accumulator (1.0) is added after the group [2^-4, 2^-4] is aligned alone;
    # acc-aligned: it joins the alignment, so with width 2 the group's terms fall below it.
    terms = np.array([1.0, 0.0, 2.0**-4, 2.0**-4])
    excluded = AccumSpec("fp32", "rne", "multiterm", group=2, width=2)
    aligned = AccumSpec("fp32", "rne", "multiterm", group=2, width=2, variant="acc-aligned")
    assert rsum(terms, excluded) == 1.125
    assert rsum(terms, aligned) == 1.0


def test_multiterm_group_one_wide_is_sequential():
    rng = np.random.default_rng(501)
    x = _terms(rng, (6, 20), spread=30)
    for rounding in ("rne", "sr"):
        seq = rsum(x, AccumSpec("bf16", rounding), seed=2)
        multi = rsum(x, AccumSpec("bf16", rounding, "multiterm", group=1, width=60), seed=2)
        _check(multi, seq, rounding)


def test_hopper_fp8_preset_runs():
    """The DeepSeek-V3 Hopper FP8 example of docs/accumulation.md: fp32 inner sum with products
    truncated to 14 bits per group of 32, promoted into fp32 every 128 products."""
    hopper = AccumSpec("fp32", "rtz", "multiterm", group=32, width=14, chunk=128,
                       outer=AccumSpec("fp32", "rne"), variant="acc-aligned")
    rng = np.random.default_rng(502)
    a = rng.standard_normal((4, 256)).astype(np.float32)
    b = rng.standard_normal((256, 3)).astype(np.float32)
    spec = GemmSpec(a=Cast("e4m3fn"), b=Cast("e4m3fn"), acc=hopper)
    got = matmul(a, b, spec)
    _check(got, matmul_exact(a, b, spec), str(spec))
    exact = quantize(a, "e4m3fn").astype(np.float64) @ quantize(b, "e4m3fn").astype(np.float64)
    assert np.abs(got - exact).max() < 0.5  # |result| ~ 16; truncation costs ~2^-13 per product
    assert not np.array_equal(got, exact.astype(np.float32))  # truncation shows


# ---- event counters ------------------------------------------------------------------------------
def test_counts_on_crafted_inputs():
    big = np.array([[60000.0, 60000.0], [-60000.0, -60000.0], [1.0, 2.0]])
    _, counts = rsum(big, "fp16", counts=True)
    assert counts == {"overflow": 2, "underflow": 0, "saturation": 0}  # +-Inf
    _, counts = rsum(big, AccumSpec("fp16", overflow="saturate"), counts=True)
    assert counts == {"overflow": 2, "underflow": 0, "saturation": 2}
    values, counts = rsum(big, AccumSpec("fp16", "rtz"), counts=True)
    assert counts["saturation"] == 2 and values[0] == 65504.0
    values, counts = rsum(np.array([448.0, 448.0]), "e4m3fn", counts=True)
    assert np.isnan(values) and counts == {"overflow": 1, "underflow": 0, "saturation": 0}
    # Underflow to zero: a nonzero value (first term, a sum, a cancellation's tiny remainder).
    tiny = np.array([[2.0**-30, 0.0], [2.0**-20, -2.0**-20 + 2.0**-40], [1.0, -1.0]])
    values, counts = rsum(tiny, "fp16", counts=True)
    assert counts == {"overflow": 0, "underflow": 2, "saturation": 0}  # exact 1 - 1 is no event
    # Infinite inputs and NaN are not events; plain sums count nothing.
    _, counts = rsum(np.array([np.inf, 1.0, np.nan]), "fp16", counts=True)
    assert counts == {"overflow": 0, "underflow": 0, "saturation": 0}
    # dot and matmul: products 300 * 300 = 90000 exceed fp16's max; saturated, every rounding
    # overflows; unsaturated, only the first (Inf + 90000 is Inf: no event).
    _, counts = dot(np.full(4, 300.0), np.full(4, 300.0), AccumSpec("fp16", overflow="saturate"),
                    counts=True)
    assert counts == {"overflow": 4, "underflow": 0, "saturation": 4}
    out, counts = matmul(np.full((2, 3), 300.0), np.full((3, 2), 300.0), GemmSpec(acc="fp16"),
                         counts=True)
    assert out.shape == (2, 2) and np.all(out == np.inf)
    assert counts == {"overflow": 4, "underflow": 0, "saturation": 0}  # once per output


@pytest.mark.parametrize("order", KERNEL_ORDERS)
def test_counts_match_exact_twin(order):
    rng = np.random.default_rng(600 + KERNEL_ORDERS.index(order))
    x = _terms(rng, (8, 12), spread=24)
    for fmt, overflow, rounding in (("fp16", "default", "rne"), ("e4m3fn", "saturate", "sr"),
                                    ("e5m2", "default", "rtz"), ("bf16", "default", "rup")):
        acc = _acc(fmt, rounding, order, overflow=overflow)
        values, counts = rsum(x, acc, seed=4, counts=True)
        twin_values, twin_counts = sum_exact(x, acc, seed=4, counts=True)
        _check(values, twin_values, str(acc))
        assert counts == twin_counts, str(acc)
    spec = GemmSpec(acc=_acc("e5m2", "rne", order, outer=None if order != "chunked" else "e5m2"))
    a = _terms(rng, (3, 7), spread=10).astype(np.float32)
    b = _terms(rng, (7, 2), spread=10).astype(np.float32)
    got = matmul(a, b, spec, counts=True)
    expected = matmul_exact(a, b, spec, counts=True)
    _check(got[0], expected[0], str(spec))
    assert got[1] == expected[1]


# ---- conv2d --------------------------------------------------------------------------------------
def _im2col(xp, kh, kw, stride):
    """The (N, C*KH*KW, HO*WO) matrix of padded x, rows in C order of (c, kh, kw)."""
    n_img, chans, hp, wp = xp.shape
    ho = (hp - kh) // stride[0] + 1
    wo = (wp - kw) // stride[1] + 1
    cols = np.zeros((n_img, chans * kh * kw, ho * wo), xp.dtype)
    for n, c, i, j, di, dj in itertools.product(range(n_img), range(chans), range(ho), range(wo),
                                                range(kh), range(kw)):
        cols[n, (c * kh + di) * kw + dj, i * wo + j] = xp[n, c, i * stride[0] + di,
                                                          j * stride[1] + dj]
    return cols, ho, wo


@pytest.mark.parametrize(("stride", "padding"), [(1, 0), (2, 1), ((1, 2), (2, 0))])
def test_conv2d_is_matmul_on_im2col(stride, padding):
    rng = np.random.default_rng(700)
    x = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    acc = AccumSpec("bf16", "sr", "chunked", chunk=5, outer="fp32")
    spec = GemmSpec(a=Cast("e4m3fn", "sr"), b=Cast("e5m2"), acc=acc, out=Cast("fp16"))
    got = conv2d(x, w, spec, stride=stride, padding=padding, seed=11)
    sh, sw = stride if isinstance(stride, tuple) else (stride, stride)
    ph, pw = padding if isinstance(padding, tuple) else (padding, padding)
    xq = quantize(x, "e4m3fn", "sr", seed=11)  # cast before im2col, with seed
    wq = quantize(w, "e5m2", seed=12)
    xp = np.pad(xq, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols, ho, wo = _im2col(xp, 3, 2, (sh, sw))
    expected = matmul(wq.reshape(4, -1), cols, GemmSpec(acc=acc, out=Cast("fp16")), seed=11)
    assert got.shape == (2, 4, ho, wo)
    _check(got, expected.reshape(2, 4, ho, wo), f"stride {stride}, padding {padding}")


def test_conv2d_fp64_accumulator_matches_float64_convolution():
    rng = np.random.default_rng(701)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    got, counts = conv2d(x, w, GemmSpec(acc="fp64"), stride=2, padding=1, counts=True)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    expected = np.einsum("ncijab,ocab->noij", windows, w.astype(np.float64))
    assert got.shape == expected.shape == (2, 5, 4, 4) and got.dtype == np.float64
    assert np.allclose(got, expected, rtol=1e-13, atol=1e-13)
    assert counts == {"overflow": 0, "underflow": 0, "saturation": 0}


def test_conv2d_bad_input_names_shapes():
    x = np.ones((1, 3, 5, 5), np.float32)
    spec = GemmSpec(acc="fp32")
    with pytest.raises(ValueError, match=r"x has 3 channels but w expects 2.*\(1, 3, 5, 5\).*"
                                         r"\(4, 2, 3, 3\)"):
        conv2d(x, np.ones((4, 2, 3, 3), np.float32), spec)
    with pytest.raises(ValueError, match=r"x of shape \(3, 5, 5\) and w of shape"):
        conv2d(x[0], np.ones((4, 3, 3, 3), np.float32), spec)
    with pytest.raises(ValueError, match=r"kernel \(7x3\) does not fit the padded input"):
        conv2d(x, np.ones((4, 3, 7, 3), np.float32), spec, padding=(0, 1))
    with pytest.raises(ValueError, match=r"stride must be at least 1"):
        conv2d(x, np.ones((4, 3, 3, 3), np.float32), spec, stride=0)
    with pytest.raises(TypeError, match=r"padding must be an int or a pair"):
        conv2d(x, np.ones((4, 3, 3, 3), np.float32), spec, padding=1.5)


# ---- the initial value C (matmul's and dot's c=) -------------------------------------------------
@pytest.mark.parametrize("order", [*KERNEL_ORDERS, "chunked-outer", "multiterm-outer"])
def test_initial_value_matches_exact_twin(order):
    """D = A·B + C in every order, C entering as docs/accumulation.md says; K = 0 included."""
    kwargs = {}
    if order.endswith("-outer"):
        order = order.removesuffix("-outer")
        kwargs["c_entry"] = "outer"
    rng = np.random.default_rng(900 + len(order))
    empty = np.empty(0, np.float32)
    for rounding in ("rne", "rtz", "sr"):  # K = 0: round(C) alone
        acc = _acc("bf16", rounding, order, **kwargs)
        for c0 in (np.float32(1 + 2.0**-9), np.float64(-(2.0**-140)), np.float32(-0.0)):
            _check(dot(empty, empty, acc, np.array(c0), seed=2),
                   dot_exact(empty, empty, acc, seed=2, c=np.array(c0)), f"{acc} K=0")
    for k in (7, 1):
        a = _terms(rng, (2, k), spread=10).astype(np.float32)
        b = _terms(rng, (k, 3), spread=10).astype(np.float32)
        c = _terms(rng, (2, 3), spread=12)
        c[0, 0] = 2.0**50
        for rounding in ("rne", "rtz", "sr"):
            spec = GemmSpec(acc=_acc("bf16", rounding, order, **kwargs))
            got, counts = matmul(a, b, spec, c, seed=4, counts=True)
            want, want_counts = matmul_exact(a, b, spec, seed=4, counts=True, c=c)
            _check(got, want, f"{spec.acc} K={k}")
            assert counts == want_counts, (str(spec.acc), k)


def test_initial_value_starts_the_running_sum():
    one = np.array([1.0])
    # The first partial sum is round(C + p0), C taken exactly: 2049 is no fp16 value, yet
    # 2049 + 1 = 2050 is; rounding C first would give round(2048 + 1) = 2048.
    assert dot(one, one, "fp16", np.array(2049.0)) == 2050.0
    assert dot(np.ones(2), np.ones(2), "fp16", np.array(2048.0)) == 2048.0  # ties to even
    assert dot(np.empty(0), np.empty(0), "fp16", np.array(2049.0)) == 2048.0  # round(C)
    # chunked: C starts the first chunk's fp16 sum (inner) or the fp32 outer sum (outer).
    inner = AccumSpec("fp16", "rne", "chunked", chunk=2, outer="fp32")
    outer = AccumSpec("fp16", "rne", "chunked", chunk=2, outer="fp32", c_entry="outer")
    x = np.array([1.0, 1.0, 1.0])
    assert dot(x, np.ones(3), inner, np.array(4096.0)) == 4097.0  # 4096 + 1 + 1 -> 4096, + 1
    assert dot(x, np.ones(3), outer, np.array(4096.0)) == 4099.0  # 4096 + 2 + 1 in fp32


def test_initial_value_takes_the_exact_core(monkeypatch):
    """Only the multiterm route (refsim.backends.cpu_multiterm) takes C: for the other orders a
    call with c= is planned with its C, gets no fast route, and the exact core runs."""
    from refsim.backends import cpu_gemm

    planned = []
    real_plan = cpu_gemm.plan

    def spy(*args, **kwargs):
        planned.append(real_plan(*args, **kwargs))
        return planned[-1]

    monkeypatch.setattr(cpu_gemm, "plan", spy)
    a = np.full((3, 4), 0.5, np.float32)
    spec = GemmSpec(acc=AccumSpec("fp16"))
    assert np.all(matmul(a, a.T, spec) == 1.0) and planned[-1] is not None
    got = matmul(a, a.T, spec, np.float32(0.25) * np.ones((3, 3), np.float32))
    assert np.all(got == 1.25) and len(planned) == 2 and planned[-1] is None



def test_routes_give_the_same_bits_and_fast_refuses_a_fall_back():
    """route="exact" runs the exact core alone and route="fast" a fast route (or refuses):
    the bits are those of the default route; a route that cannot run is an error, never a
    silent fall-back."""
    rng = np.random.default_rng(31)
    a = quantize(rng.standard_normal((2, 5, 40)).astype(np.float32), "e4m3fn")
    b = quantize(rng.standard_normal((2, 40, 6)).astype(np.float32), "e4m3fn")
    spec = GemmSpec(acc=AccumSpec("fp16", "rtz"), out=Cast("e5m2"))
    auto = matmul(a, b, spec)
    for route in ("exact", "fast"):
        assert_same_bits(matmul(a, b, spec, route=route), auto, context=route)
    x = rng.standard_normal(30).astype(np.float32)
    assert_same_bits(dot(x, x, "bf16", route="exact"), dot(x, x, "bf16"))
    assert_same_bits(rsum(x, "bf16", route="exact"), rsum(x, "bf16"))
    with pytest.raises(ValueError, match="route='fast': no fast route applies"):
        matmul(a, b, spec, counts=True, route="fast")
    with pytest.raises(ValueError, match="route='fast': no fast route applies"):
        rsum(x, "bf16", route="fast")  # a sum has no products: no fast route
    with pytest.raises(ValueError, match="route must be one of auto, exact, fast; got 'tiled'"):
        matmul(a, b, spec, route="tiled")

# ---- overflow="satfinite" accumulators ----------------------------------------------------------
@pytest.mark.parametrize("order", KERNEL_ORDERS)
def test_satfinite_accumulator_matches_exact_twin(order):
    """satfinite: an overflowing or infinite partial sum becomes +-max of the accumulator (where
    saturate keeps an infinite one infinite); NaN stays NaN."""
    rng = np.random.default_rng(70 + KERNEL_ORDERS.index(order))
    x = _terms(rng, (6, 7))
    x[0, 2], x[1, 0], x[2, 3], x[4, 5] = np.inf, -np.inf, 2.0**60, np.nan
    x[3, 1:3] = 6e4
    for fmt in ("fp16", "e4m3fn", "bf16"):
        for rounding in ("rne", "rtz", "sr"):
            acc = _acc(fmt, rounding, order, overflow="satfinite")
            _check(rsum(x, acc, seed=4), sum_exact(x, acc, seed=4), str(acc))
    got, counts = rsum(np.array([6e4, 6e4, -6e4]), AccumSpec("fp16", overflow="satfinite"),
                       counts=True)
    assert got == 5504.0 and counts["saturation"] == 1
