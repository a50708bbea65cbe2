"""Torch matmul: mode="exact" bit-identical to refsim.matmul; mode="fast" close to it."""

from __future__ import annotations

import numpy as np
import pytest

from refsim import AccumSpec, Cast, GemmSpec
from refsim import matmul as ref_matmul
from refsim.formats import FloatFormat
from refsim.formats.exact_sum import matmul_exact
from refsim.kernels.accum_core import TAG_OUT, accum_word
from refsim.validation.bits import assert_same_bits

torch = pytest.importorskip("torch", reason="the torch path needs torch (the test extra)")
from refsim.torch_ops import matmul  # noqa: E402

DETERMINISTIC = ("rne", "rna", "rtz", "rup", "rdn", "rto")


def _operands(seed, shape_a=(2, 5, 40), shape_b=(40, 3), scale=4.0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape_a) * scale
    b = rng.standard_normal(shape_b) * scale
    # a few exact cancellations, zeros of both signs, and large values (overflow paths)
    n = min(4, a.shape[-1])
    a[..., 0, :n] = [0.0, -0.0, 1e5, -3.0][:n]
    b[:n, 0] = [-0.0, 2.0, 1e5, 3.0][:n]
    return a, b


def _check(spec, seed=0, **kw):
    a, b = _operands(seed, **kw)
    expected = ref_matmul(a, b, spec, seed=seed)
    got = matmul(torch.from_numpy(a), torch.from_numpy(b), spec, mode="exact", seed=seed)
    assert_same_bits(got.numpy().astype(expected.dtype), expected, context=str(spec))


@pytest.mark.parametrize("rounding", DETERMINISTIC)
@pytest.mark.parametrize("acc_fmt", ["fp16", "bf16", "e5m2", "fp32"])
def test_exact_sequential(rounding, acc_fmt):
    spec = GemmSpec(a=Cast("e4m3fn"), b=Cast("e5m2"), acc=AccumSpec(acc_fmt, rounding))
    _check(spec, seed=1)


@pytest.mark.parametrize("rounding", DETERMINISTIC)
def test_exact_chunked_with_outer_and_output_casts(rounding):
    acc = AccumSpec("e5m2", rounding, "chunked", chunk=7, outer=AccumSpec("fp16", rounding),
                    overflow="saturate")
    for out in (Cast("e4m3fn", rounding), Cast("bf16", "sr"), Cast("int8", "sr", sr_bits=5),
                None):
        _check(GemmSpec(a=Cast("bf16", "sr"), b=Cast("e4m3fn"), acc=acc, out=out), seed=3)


@pytest.mark.parametrize("rounding", ["rne", "rtz", "rdn", "rto"])
@pytest.mark.parametrize("order", ["pairwise", "kahan"])
def test_exact_pairwise_and_kahan(order, rounding):
    for k in (1, 2, 7, 40):
        spec = GemmSpec(a=Cast("e4m3fn"), b=Cast("e5m2"), acc=AccumSpec("bf16", rounding, order),
                        out=Cast("e4m3fn", "sr"))
        _check(spec, seed=7, shape_a=(3, k), shape_b=(k, 4))


def test_exact_product_cast_and_fp32_operands():
    acc = AccumSpec("fp32", "rtz", product=Cast("bf16", "rna"))
    _check(GemmSpec(a=Cast("bf16"), b=Cast("bf16"), acc=acc), seed=4)
    a, b = _operands(5)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    spec = GemmSpec(acc=AccumSpec("fp32", "rne"))
    expected = ref_matmul(a32, b32, spec)
    got = matmul(torch.from_numpy(a32), torch.from_numpy(b32), spec)
    assert got.dtype == torch.float32
    assert_same_bits(got.numpy(), expected)


def test_exact_refuses_what_it_cannot_do_exactly():
    t = torch.ones(2, 3, dtype=torch.float64)
    u = torch.ones(3, 2, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="'sr'"):
        matmul(t, u, GemmSpec(acc=AccumSpec("fp16", "sr")))
    with pytest.raises(NotImplementedError, match="multiterm acc-excluded"):  # wider than 53
        matmul(t, u, GemmSpec(acc=AccumSpec("fp16", order="multiterm", group=4, width=52)))
    with pytest.raises(ValueError, match="53"):
        matmul(t / 3, u / 3, GemmSpec(acc=AccumSpec("fp16")))
    with pytest.raises(ValueError, match="mode must be"):
        matmul(t, u, GemmSpec(acc=AccumSpec("fp16")), mode="fastest")


def test_fast_mode_is_fp32_accumulation_of_cast_operands():
    a, b = _operands(6, shape_a=(16, 64), shape_b=(64, 8), scale=1.0)
    spec = GemmSpec(a=Cast("e4m3fn"), b=Cast("e4m3fn"), acc=AccumSpec("fp32"), out=Cast("bf16"))
    fast = matmul(torch.from_numpy(a.astype(np.float32)), torch.from_numpy(b.astype(np.float32)),
                  spec, mode="fast")
    exact = ref_matmul(a.astype(np.float32), b.astype(np.float32), spec)
    assert fast.dtype == torch.float32
    # fp32 accumulation of 64 products of e4m3 values: exact in any order (24 bits hold them
    # unless cancellation spreads the exponents), so the bf16 outputs agree here.
    assert_same_bits(fast.numpy(), exact)


# ---- float64's range: computed exactly or refused, never different bits (refsim.torch_ops) ----
def _same_or_refused(a, b, spec):
    """refsim.matmul's result, and whether the torch path refused (else it gave the same bits)."""
    expected = ref_matmul(a, b, spec)
    try:
        got = matmul(torch.from_numpy(a), torch.from_numpy(b), spec, mode="exact")
    except ValueError as exc:
        assert "outside float64's range are not supported" in str(exc)
        return expected, True
    assert_same_bits(got.numpy().astype(expected.dtype), expected, context=str(spec))
    return expected, False


OVERFLOW_ORDERS = ("sequential", "pairwise", "kahan", "chunked")


@pytest.mark.parametrize("order", OVERFLOW_ORDERS)
@pytest.mark.parametrize("overflow", ["default", "saturate"])
@pytest.mark.parametrize("rounding", DETERMINISTIC)
def test_exact_matches_refsim_when_a_float64_partial_sum_overflows(rounding, overflow, order):
    """x + y beyond float64's max (both finite): the exact sum overflows the accumulator in
    every mode, whatever float64 made of it. The issue's case: [[1e308, 1e308]] @ ones, e11m50
    rtz (refsim max, the torch path gave Inf)."""
    chunk = {"chunk": 2} if order == "chunked" else {}
    for fmt in ("e11m50", "e11m40", "fp32"):
        acc = AccumSpec(fmt, rounding, order, overflow=overflow, **chunk)
        spec = GemmSpec(acc=acc)
        a = np.array([[1e308, 1e308], [-1e308, -1e308]])
        expected, refused = _same_or_refused(a, np.ones((2, 1)), spec)
        assert not refused
        if fmt == "e11m50" and rounding == "rtz":
            assert expected[0, 0] == float.fromhex("0x1.ffffffffffffcp+1023")  # e11m50's max
        # overflow, then cancellation, mixed signs, and products up to 2^1023
        a = np.array([[1e308, 1.7e308, -1e308, 1.5e308, 3.0],
                      [-2.0**1023, -2.0**1023, 2.0**1022, 1.0, -1.7e308]])
        b = np.array([[1.0], [1.0], [1.0], [-1.0], [0.5]])
        assert not _same_or_refused(a, b, spec)[1]


def test_exact_matches_refsim_or_refuses_products_beyond_float64():
    """The issue's three examples and their neighbours: a product below 2^-1074 or at 2^1024
    and beyond cannot be taken exactly in float64 and is refused; products just inside float64's
    range are computed, bit-identical to refsim.matmul."""
    tiny, huge = 2.0 ** -600, 2.0 ** 700
    # 2^-600 * 2^-600 underflows: refsim 1 + 2^-23 under rup (the torch path gave 1.0)
    for rounding in ("rup", "rdn", "rne", "rtz"):
        for sign in (1.0, -1.0):
            spec = GemmSpec(acc=AccumSpec("fp32", rounding))
            a, b = np.array([[sign * tiny, 1.0]]), np.array([[tiny], [1.0]])
            expected, refused = _same_or_refused(a, b, spec)
            assert refused
            if rounding == "rup" and sign > 0:
                assert expected[0, 0] == 1.0 + 2.0 ** -23
    # 2^700 * 2^700 overflows float64: refsim rounds 2^1400 exactly (fp32 rtz: max)
    for rounding in DETERMINISTIC:
        for overflow in ("default", "saturate"):
            for sign in (1.0, -1.0):
                spec = GemmSpec(acc=AccumSpec("fp32", rounding, overflow=overflow))
                expected, refused = _same_or_refused(np.array([[sign * huge]]),
                                                     np.array([[huge]]), spec)
                assert refused
    expected, _ = _same_or_refused(np.array([[huge]]), np.array([[huge]]),
                                   GemmSpec(acc=AccumSpec("fp32", "rtz")))
    assert expected[0, 0] == np.finfo(np.float32).max
    with pytest.raises(ValueError, match=r"2\^1024 or more"):
        matmul(torch.tensor([[1e308]], dtype=torch.float64),
               torch.tensor([[2.0]], dtype=torch.float64), GemmSpec(acc=AccumSpec("e11m50")))
    with pytest.raises(ValueError, match=r"a bit at 2\^-1075"):
        matmul(torch.tensor([[2.0 ** -538, 1.0]], dtype=torch.float64),
               torch.tensor([[2.0 ** -537], [1.0]], dtype=torch.float64),
               GemmSpec(acc=AccumSpec("fp32")))
    # just inside: 2^-537 * 2^-537 = 2^-1074 and 1.5*2^511 squared = 1.125*2^1023 are exact,
    # and a tiny and a huge operand that never meet (different k) are fine
    for rounding in DETERMINISTIC:
        for fmt in ("fp32", "e11m50"):
            spec = GemmSpec(acc=AccumSpec(fmt, rounding))
            for a, b in ((np.array([[2.0 ** -537, -1.0]]), np.array([[2.0 ** -537], [1.0]])),
                         (np.array([[1.5 * 2.0 ** 511, 1.0]]), np.array([[-1.5 * 2.0 ** 511],
                                                                         [1.0]])),
                         (np.array([[tiny, huge]]), np.array([[huge], [tiny]]))):
                assert not _same_or_refused(a, b, spec)[1]


def test_exact_refuses_batch_dimensions_that_do_not_broadcast_like_numpy():
    a, b = np.ones((2, 3, 4)), np.ones((3, 4, 5))
    spec = GemmSpec(acc=AccumSpec("fp32"))
    with pytest.raises(ValueError, match="batch dimensions do not broadcast") as numpy_error:
        ref_matmul(a, b, spec)
    for mode in ("exact", "fast"):
        with pytest.raises(ValueError, match="batch dimensions do not broadcast") as torch_error:
            matmul(torch.from_numpy(a), torch.from_numpy(b), spec, mode=mode)
        assert str(torch_error.value) == str(numpy_error.value)


def test_operands_of_another_type_are_named_in_the_error():
    """A NumPy array, a scalar or an integer tensor where a float tensor belongs: the message
    names what was given (refsim.params.type_name, as refsim.matmul's errors do), not only a
    dtype that reads like the right one."""
    spec = GemmSpec(acc=AccumSpec("fp32"))
    t = torch.ones(2, 2)
    for bad, words in ((np.ones((2, 2), np.float32), r"numpy\.ndarray of dtype float32"),
                       (np.float32(1), r"the NumPy scalar numpy\.float32"),
                       (torch.ones(2, 2, dtype=torch.int32),
                        r"torch\.Tensor of dtype torch\.int32"),
                       (1.0, r"float$")):
        for args in ((bad, t), (t, bad)):
            name = "a" if args[0] is bad else "b"
            with pytest.raises(TypeError, match=rf"^{name} must be a float32 or float64 torch "
                               rf"tensor; got {words}"):
                matmul(*args, spec)
        with pytest.raises(TypeError, match=rf"^c must be a float32 or float64 torch tensor; "
                           rf"got {words}"):
            matmul(t, t, spec, c=bad)


def test_seed_takes_any_integer_and_refuses_bool():
    """seed as in refsim.matmul (formats.policy.check_seed): any integer type, bool refused."""
    a, b = _operands(8, shape_a=(3, 6), shape_b=(6, 2), scale=1.0)
    spec = GemmSpec(a=Cast("e4m3fn", "sr"), b=Cast("e5m2", "sr"), acc=AccumSpec("fp32"),
                    out=Cast("bf16", "sr"))
    ta, tb_ = torch.from_numpy(a), torch.from_numpy(b)
    for plain, numpy_int in (((1 << 64) - 1, np.uint64((1 << 64) - 1)), (7, np.int8(7))):
        want = ref_matmul(a, b, spec, seed=plain)
        assert_same_bits(matmul(ta, tb_, spec, seed=numpy_int).numpy(), want)
        assert_same_bits(matmul(ta, tb_, spec, seed=plain).numpy(), want)
    with pytest.raises(TypeError, match=r"seed must be an int in 0\.\.2\^64-1; got the bool"):
        matmul(ta, tb_, spec, seed=True)


def test_output_cast_ties_of_the_first_word():
    """The output cast (family TAG_OUT, step 0) with H_0 tied against the top 32 of 49 discarded
    bits, for sr_bits=None and 40: H_1 of the same family decides, as in the exact twin and
    refsim.matmul's Numba kernel (a fixed-point output included: core.quantize_bits_family)."""
    seed, n, m32 = 77, 64, 0xFFFFFFFF
    rng = np.random.default_rng(1)
    h0 = [int(accum_word(np.uint64(seed), np.int64(i), 0, TAG_OUT, 0)) for i in range(n)]
    # 3 + g, g = 49 fractional bits: two bits kept (int8, or two significant bits), 49 discarded
    g = [((m32 ^ h) << 17) | int(rng.integers(0, 1 << 17)) for h in h0]
    a = (3.0 + np.array(g, dtype=np.float64) / 2.0**49).reshape(n, 1)
    b = np.ones((1, 1))
    acc = AccumSpec(FloatFormat(11, 50), "rne")  # holds a * b exactly
    for fmt in ("int8", FloatFormat(5, 1)):
        for sr_bits in (None, 40):
            spec = GemmSpec(acc=acc, out=Cast(fmt, "sr", sr_bits=sr_bits))
            got = matmul(torch.from_numpy(a), torch.from_numpy(b), spec, seed=seed).numpy()
            want = np.asarray(matmul_exact(a, b, spec, seed=seed))
            assert 0.2 < np.mean(want > a) < 0.8  # H_1 decided both ways
            assert_same_bits(got, want, a, context=str(spec))
            assert_same_bits(got, ref_matmul(a, b, spec, seed=seed), a, context=str(spec))
