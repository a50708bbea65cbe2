"""refsim.scaled_matmul: block scales at promotion (DeepSeek-V3 FP8), tensor scales in the epilogue
(NVFP4), against an independent composition of the exact twins (formats.exact_block,
formats.exact_sum, formats.exact) and against refsim.matmul where the two must agree."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from refsim import hardware, matmul, scaled_matmul
from refsim.formats import NAMED_BLOCKS
from refsim.formats.exact import round_value
from refsim.formats.exact_block import quantize_blocks_exact
from refsim.formats.exact_sum import dot_exact, matmul_exact
from refsim.specs import AccumSpec, Cast, GemmSpec
from refsim.transforms import RandomHadamard

H100 = hardware.gemm_spec("h100", "e4m3").acc.to_dict()
PROMOTED = AccumSpec.from_dict({**H100, "chunk": 128, "outer": {"fmt": "fp32"}})
INNER = AccumSpec.from_dict(H100)


def _operands(m: int, k: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((m, k)) * np.exp2(rng.integers(-4, 5, (m, 1)))).astype(np.float32)
    b = (rng.standard_normal((k, n)) * np.exp2(rng.integers(-4, 5, (1, n)))).astype(np.float32)
    return a, b


def _twin_operand(x: np.ndarray, fmt, axis: int, seed: int, along: int, across: int):
    """Element values and per-element scale (Fractions, x's shape) from the exact block twin."""
    values, scales, ts = quantize_blocks_exact(np.asarray(x, np.float64), fmt, "rne", axis=axis,
                                               seed=seed)
    scales = np.asarray(scales, dtype=object)
    elements = np.empty(x.shape, dtype=object)
    per = np.empty(x.shape, dtype=object)
    for i, j in np.ndindex(*x.shape):
        idx = (i, j // along) if axis == 1 else (i // along, j // across)
        s = Fraction(float(scales[idx])) * Fraction(ts)
        per[i, j] = s
        elements[i, j] = Fraction(float(values[i, j])) / s
        assert float(elements[i, j]) == elements[i, j], "an element is a value of its format"
    return elements, per, Fraction(ts)


def test_fp32_scales_join_at_promotion_as_the_twins_compose_it():
    a, b = _operands(2, 256, 3)
    spec = GemmSpec(a=Cast(NAMED_BLOCKS["deepseek_1x128"]),
                    b=Cast(NAMED_BLOCKS["deepseek_128x128"]), acc=PROMOTED)
    got = scaled_matmul(a, b, spec, seed=9)
    ea, sa, _ = _twin_operand(a, NAMED_BLOCKS["deepseek_1x128"], 1, 9, 128, 1)
    eb, sb, _ = _twin_operand(b, NAMED_BLOCKS["deepseek_128x128"], 0, 10, 128, 128)
    fa = np.vectorize(float)(ea)
    fb = np.vectorize(float)(eb)
    partials = [matmul_exact(fa[:, c:c + 128], fb[c:c + 128], GemmSpec(acc=INNER))
                for c in (0, 128)]
    for i in range(2):
        for j in range(3):
            s = [round_value(sa[i, c] * sb[c, j], "fp32") for c in (0, 128)]
            p = [float(part[i, j]) for part in partials]
            want = float(dot_exact(np.array(s), np.array(p), AccumSpec("fp32")))
            assert got[i, j] == want, (i, j)
    # The products of elements and the promotion differ from multiplying the dequantized
    # values: refsim.matmul folds the scales into the operands.
    assert not np.array_equal(got, matmul(a.astype(np.float64), b.astype(np.float64), spec))


def test_power_of_two_scales_at_promotion_equal_folding_them():
    # With an alignment that does not read the operands' format (normalized exponents), a
    # power-of-two scale commutes with everything. (The H100 model aligns subnormal e4m3
    # elements at e4m3's emin: a folded, scaled element is no longer subnormal, so there the
    # two differ, and scaled_matmul's element-wise products are the kernel's.)
    a, b = _operands(2, 256, 3, seed=1)
    acc = AccumSpec("fp32", "rtz", order="multiterm", group=32, width=14, chunk=128,
                    outer="fp32")
    spec = GemmSpec(a=Cast(NAMED_BLOCKS["deepseek_1x128_ue8m0"]),
                    b=Cast(NAMED_BLOCKS["deepseek_128x128_ue8m0"]), acc=acc)
    folded = matmul(a, b, spec, seed=4)
    np.testing.assert_array_equal(scaled_matmul(a, b, spec, seed=4), folded)
    c = np.float32(0.375) * np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(scaled_matmul(a, b, spec, c, seed=4),
                                  matmul(a, b, spec, c, seed=4))


def test_tensor_scales_enter_in_the_epilogue():
    a, b = _operands(4, 32, 3, seed=2)
    nv = Cast(NAMED_BLOCKS["nvfp4"])
    spec = GemmSpec(a=nv, b=nv, acc=AccumSpec("fp32"))
    got = scaled_matmul(a, b, spec, seed=3)
    ea, sa, ta = _twin_operand(a, NAMED_BLOCKS["nvfp4"], 1, 3, 16, 1)
    eb, sb, tb = _twin_operand(b, NAMED_BLOCKS["nvfp4"], 0, 4, 16, 1)
    fa = np.vectorize(float)(ea * sa / ta)  # element x block scale: exact (2 + 4 bits)
    fb = np.vectorize(float)(eb * sb / tb)
    d = matmul_exact(fa, fb, GemmSpec(acc=AccumSpec("fp32")))
    alpha = Fraction(round_value(ta * tb, "fp32"))
    want = np.vectorize(lambda v: round_value(Fraction(float(v)) * alpha, "fp32"))(d)
    np.testing.assert_array_equal(got, want.astype(np.float64))


def test_transform_runs_first():
    a, b = _operands(2, 32, 4, seed=3)
    rht = RandomHadamard(16, seed=7)
    nv = Cast(NAMED_BLOCKS["nvfp4"])
    with_t = GemmSpec(a=nv, b=nv, acc=AccumSpec("fp32"), transform=rht)
    without = GemmSpec(a=nv, b=nv, acc=AccumSpec("fp32"))
    np.testing.assert_array_equal(
        scaled_matmul(a, b, with_t, seed=1),
        scaled_matmul(rht.apply(a, axis=-1), rht.apply(b, axis=-2), without, seed=1))


def test_refusals_name_the_problem():
    a, b = _operands(2, 32, 3)
    with pytest.raises(ValueError, match="must not round with 'sr'"):
        scaled_matmul(a, b, GemmSpec(acc=AccumSpec("fp16", "sr")))
    with pytest.raises(ValueError, match="second-to-last"):
        scaled_matmul(a, b[:16], GemmSpec(acc=AccumSpec("fp32")))
    with pytest.raises(TypeError, match="GemmSpec"):
        scaled_matmul(a, b, AccumSpec("fp32"))


# ---- where C enters, the output Cast's words, one entry check ---------------------------------
NV = NAMED_BLOCKS["nvfp4"]


def _twin_sum(a, b, fmt, seed: int, acc: AccumSpec, chunk: int | None):
    """The exact A·B of scaled_matmul without its epilogue: per output a Fraction-valued result
    of acc (the fold path: element x block scale, acc as given; chunk: the promotion path)."""
    ea, sa, ta = _twin_operand(a, fmt, 1, seed, fmt.block_size, 1)
    eb, sb, tb = _twin_operand(b, fmt, 0, seed + 1, fmt.block_size, 1)
    if chunk is None:
        fa = np.vectorize(float)(ea * sa / ta)
        fb = np.vectorize(float)(eb * sb / tb)
        return matmul_exact(fa, fb, GemmSpec(acc=acc)), ta * tb
    fa, fb = np.vectorize(float)(ea), np.vectorize(float)(eb)
    inner = AccumSpec(acc.fmt, acc.rounding)
    k = a.shape[1]
    starts = range(0, k, chunk)
    parts = [matmul_exact(fa[:, j:j + chunk], fb[j:j + chunk], GemmSpec(acc=inner))
             for j in starts]
    out = np.empty((a.shape[0], b.shape[1]), np.float64)
    for i, j in np.ndindex(*out.shape):
        s = [round_value(sa[i, c] / ta * sb[c, j] / tb, acc.outer_spec.fmt) for c in starts]
        p = [float(part[i, j]) for part in parts]
        out[i, j] = float(dot_exact(np.array(s), np.array(p), acc.outer_spec))
    return out, ta * tb


@pytest.mark.parametrize("chunk", [None, 16], ids=["fold", "promotion"])
def test_c_joins_after_the_tensor_scale(chunk):
    # nvfp4's tensor scale: D = round(alpha * (A·B) + C) once, C unscaled (it used to be
    # alpha * (A·B + C): C nearly vanished, 4.98 where matmul gave 104.98).
    a, b = _operands(2, 32, 3, seed=5)
    acc = AccumSpec("fp32") if chunk is None else AccumSpec("fp32", order="chunked", chunk=16,
                                                             outer="fp32")
    spec = GemmSpec(a=Cast(NV), b=Cast(NV), acc=acc)
    c = np.array([[100.0, -3.25, 1e-3], [0.5, 7.0, -100.0]], np.float32)
    got = scaled_matmul(a, b, spec, c, seed=3)
    p, ts = _twin_sum(a, b, NV, 3, acc, chunk)
    alpha = Fraction(round_value(ts, "fp32"))
    want = np.vectorize(lambda v, cv: round_value(Fraction(float(v)) * alpha + Fraction(float(cv)),
                                                  "fp32"))(p, c)
    np.testing.assert_array_equal(got, want.astype(np.float64))
    # and it is matmul's D = A·B + C up to the epilogue's last bits
    np.testing.assert_allclose(got, matmul(a, b, spec, c, seed=3), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", ["fold", "promotion", "tensor"])
def test_sr_output_cast_reads_matmuls_words(path):
    # spec.out with sr used refsim.quantize's words under seed: those of a's Cast (22 of 64
    # outputs differed from matmul). Now the output Cast is matmul's (family OUT, step 0).
    a, b = _operands(4, 256, 4, seed=6)
    out = Cast("e4m3fn", "sr")
    if path == "fold":
        spec = GemmSpec(a=Cast("e4m3fn"), b=Cast("e4m3fn"), acc=AccumSpec("fp32"), out=out)
    elif path == "promotion":  # power-of-two scales with an alignment blind to the format
        acc = AccumSpec("fp32", "rtz", order="multiterm", group=32, width=14, chunk=128,
                        outer="fp32")
        spec = GemmSpec(a=Cast(NAMED_BLOCKS["deepseek_1x128_ue8m0"]),
                        b=Cast(NAMED_BLOCKS["deepseek_128x128_ue8m0"]), acc=acc, out=out)
    else:
        spec = GemmSpec(a=Cast(NV), b=Cast(NV), acc=AccumSpec("fp32"), out=out)
    got = scaled_matmul(a, b, spec, seed=11)
    unrounded = scaled_matmul(a, b, GemmSpec(a=spec.a, b=spec.b, acc=spec.acc), seed=11)
    twin = matmul_exact(unrounded.reshape(-1, 1), np.ones((1, 1)),
                        GemmSpec(acc=AccumSpec("fp64"), out=out), seed=11)
    np.testing.assert_array_equal(got, np.asarray(twin, np.float64).reshape(got.shape))
    if path != "tensor":  # the same accumulated values as matmul: the same output bits
        np.testing.assert_array_equal(got, matmul(a, b, spec, seed=11))


def test_one_entry_check_for_every_path():
    a, b = _operands(2, 256, 3)
    deepseek = GemmSpec(a=Cast(NAMED_BLOCKS["deepseek_1x128"]),
                        b=Cast(NAMED_BLOCKS["deepseek_128x128"]), acc=PROMOTED)
    fold = GemmSpec(a=Cast(NV), b=Cast(NV), acc=AccumSpec("fp32"))
    for spec in (deepseek, fold):
        for bad in (1.0, [[1.0] * 3] * 2, np.float32(1.0), np.ones((2, 3), np.int32)):
            with pytest.raises(TypeError, match="c must"):
                scaled_matmul(a, b, spec, bad)
        with pytest.raises(ValueError, match=r"c of shape \(3, 2\) does not broadcast"):
            scaled_matmul(a, b, spec, np.ones((3, 2), np.float32))
        with pytest.raises(ValueError, match="batch dimensions do not broadcast"):
            scaled_matmul(np.stack([a, a]), np.stack([b, b, b]), spec)
    # K = 0: round(C) as matmul gives it, on the promotion path too
    c = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32) / 3
    empty_a, empty_b = np.zeros((2, 0), np.float32), np.zeros((0, 3), np.float32)
    np.testing.assert_array_equal(scaled_matmul(empty_a, empty_b, deepseek, c),
                                  matmul(empty_a, empty_b, deepseek, c))
