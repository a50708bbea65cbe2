"""Torch matmul: mode="exact" bit-identical to refsim.matmul; mode="fast" close to it."""

from __future__ import annotations

import numpy as np
import pytest

from refsim import AccumSpec, Cast, GemmSpec
from refsim import matmul as ref_matmul
from validation.bits import assert_same_bits

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
    with pytest.raises(NotImplementedError, match="multiterm"):
        matmul(t, u, GemmSpec(acc=AccumSpec("fp16", order="multiterm", group=4, width=20)))
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
