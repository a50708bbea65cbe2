"""An fp16 accumulator against NumPy's own float16 arithmetic, and bad input to the accumulation
API."""

from __future__ import annotations

import numpy as np
import pytest

from refsim.accumulate import dot, matmul
from refsim.accumulate import sum as rsum
from refsim.specs import AccumSpec, Cast, GemmSpec
from refsim.validation.bits import assert_same_bits


def test_fp16_matmul_256_matches_numpy_float16_sequential():
    """A 256^3 matmul with fp16 products (product=fp16, rne) summed sequentially in fp16 (rne)
    equals, bit for bit, NumPy's float16 loop s = float16(s + float16(a[:, k] * b[k, :])) started
    from the first product.

    NumPy computes float16 arithmetic in float32 and rounds the result to float16, i.e. it rounds
    twice. That is innocuous here: a product of two fp16 values has at most 22 significant bits
    and is exact in float32, and for a sum of two fp16 values, double rounding through a format
    with p' >= 2p + 2 significand bits equals one rounding (Figueroa, "When is double rounding
    innocuous?", SIGNUM Newsl. 30(3), 1995): 24 >= 2 * 11 + 2. So NumPy is an independent
    reference for round(round(a*b) + s) in fp16.
    """
    rng = np.random.default_rng(256)
    a16 = rng.standard_normal((256, 256)).astype(np.float16)
    b16 = (rng.standard_normal((256, 256)) * 0.5).astype(np.float16)
    s = a16[:, 0:1] * b16[0:1, :]
    for k in range(1, 256):
        s = s + a16[:, k:k + 1] * b16[k:k + 1, :]
    assert s.dtype == np.float16
    spec = GemmSpec(acc=AccumSpec("fp16", product=Cast("fp16")))
    got = matmul(a16.astype(np.float32), b16.astype(np.float32), spec)
    assert_same_bits(got.astype(np.float64), s.astype(np.float64), context="fp16 256^3")
    assert got.dtype == np.float32


def test_bad_input_is_refused_with_clear_messages():
    with pytest.raises(ValueError, match=r"AccumSpec.chunk must be a positive int; got 0"):
        AccumSpec("fp16", order="chunked", chunk=0)
    with pytest.raises(ValueError, match=r"AccumSpec.chunk must be a positive int; got -4"):
        AccumSpec("fp16", order="multiterm", group=4, width=8, chunk=-4)
    with pytest.raises(ValueError, match=r"AccumSpec.order must be one of sequential, pairwise"):
        AccumSpec("fp16", order="reverse")
    with pytest.raises(ValueError, match=r"a of shape \(3, 4\) and b of shape \(5, 2\)"):
        matmul(np.ones((3, 4)), np.ones((5, 2)), GemmSpec(acc="fp32"))
    with pytest.raises(ValueError, match=r"x of shape \(3,\) and y of shape \(2,\)"):
        dot(np.ones(3), np.ones(2), "fp32")
    with pytest.raises(ValueError, match=r"product \(fp32\) is wider than the accumulator fmt "
                                         r"\(fp16\)"):
        AccumSpec("fp16", product="fp32")
    with pytest.raises(ValueError, match=r"product \(e5m2\) is wider than the accumulator fmt "
                                         r"\(e4m3fn\)"):  # range, not precision
        AccumSpec("e4m3fn", product="e5m2")
    with pytest.raises(ValueError, match=r"variant must be one of acc-excluded, acc-aligned"):
        AccumSpec("fp32", order="multiterm", group=4, width=8, variant="joint")
    with pytest.raises(ValueError, match=r"width \(60\) plus the bit length of group"):
        AccumSpec("fp32", order="multiterm", group=32, width=60)
    with pytest.raises(ValueError, match=r"x must have at least one dimension"):
        rsum(np.array(1.0), "fp16")
