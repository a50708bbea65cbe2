"""refsim.transforms.RandomHadamard against its Fraction twin (formats/exact_transform.py), bit for
bit; the GemmSpec field through refsim.matmul, torch_ops.matmul, dict/TOML; the errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from refsim import GemmSpec, RandomHadamard, conv2d, matmul, torch_ops
from refsim.formats import FloatFormat
from refsim.formats.exact_transform import (
    SIGN_KEY,
    hadamard_exact,
    hadamard_matrix,
    scale_exact,
    sign_vector,
)
from refsim.transforms import BLOCKS, scale

ROUNDINGS = ("rne", "rna", "rtz", "rup", "rdn", "rto")
FORMATS = ("fp32", "bf16", "fp16", "e4m3fn", "e5m2", "e2m1fn")


def same(x: np.ndarray, y: np.ndarray) -> bool:
    """Bit equality of float arrays as values (NaN equals NaN, zeros compared by sign)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    return bool(np.array_equal(x, y, equal_nan=True)
                and np.array_equal(np.signbit(x) & ~np.isnan(x), np.signbit(y) & ~np.isnan(y)))


def special_rows(block: int, dtype) -> np.ndarray:
    """Rows of `block` values covering every path: ordinary values, signed zeros, subnormals,
    overflow of narrow formats, NaN/Inf, and spans too wide for the float64 butterfly."""
    rng = np.random.default_rng(block)
    tiny = np.finfo(dtype).smallest_subnormal
    rows = [rng.standard_normal(block),
            np.full(block, -0.0),  # zero sums are +0 whatever the zeros' signs
            np.where(np.arange(block) % 2 == 0, 0.0, -0.0),
            tiny * rng.integers(-3, 4, block),  # subnormal inputs and sums
            np.full(block, 30000.0),  # sums beyond fp16's, e4m3's and e2m1's range
            rng.standard_normal(block) * 2.0 ** rng.integers(-60, 60, block),  # wide span
            (rng.standard_normal(block) * 2.0 ** rng.integers(-18, 18, block)  # two-level
             ).astype(np.float32),
            np.concatenate([[3.0, -2.0**-40 - 2.0**-60], np.zeros(block - 2)]),
            np.concatenate([[np.nan], rng.standard_normal(block - 1)]),
            np.concatenate([[np.inf], rng.standard_normal(block - 1)]),
            np.concatenate([[np.inf, -np.inf], np.zeros(block - 2)]),
            rng.integers(-8, 9, block) * 0.125]
    if dtype == np.float64:
        rows += [rng.standard_normal(block) * 2.0 ** 52 + 0.5,  # 54-bit sums: integer path
                 rng.standard_normal(block) * 1e300,  # near float64's overflow
                 rng.standard_normal(block) * 1e-310]  # float64 subnormals
    return np.array(rows, dtype=dtype)


# ---- the pieces: constants, sign stream, matrix --------------------------------------------------
@pytest.mark.parametrize("block", BLOCKS)
def test_scale_matches_the_integer_square_root_derivation(block):
    assert scale(block) == scale_exact(block)
    if block in (16, 64, 256):
        assert scale(block) ** 2 * block == 1  # exact: the product is unchanged


@pytest.mark.parametrize("block", BLOCKS)
def test_hadamard_matrix_is_orthogonal(block):
    h = np.array(hadamard_matrix(block), dtype=np.int64)
    assert np.array_equal(h @ h.T, block * np.eye(block, dtype=np.int64))
    assert np.array_equal(h, h.T)


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**64 - 1])
@pytest.mark.parametrize("block", [16, 256])
def test_signs_are_the_top_bits_of_numpys_philox(seed, block):
    words = np.random.Philox(key=seed + (SIGN_KEY << 64)).random_raw(block)
    expected = np.where(words >> np.uint64(63), -1.0, 1.0)
    signs = RandomHadamard(block, seed).signs()
    assert np.array_equal(signs, expected)
    assert np.array_equal(signs, sign_vector(seed, block))
    # Not the quantize stream of the same seed (key word k1 = 0).
    plain = np.random.Philox(key=seed).random_raw(block) >> np.uint64(63)
    assert not np.array_equal(signs < 0, plain.astype(bool))


@pytest.mark.parametrize("block", BLOCKS)
def test_butterfly_is_the_sylvester_matrix(block):
    t = RandomHadamard(block, seed=5)
    # Row i of the identity becomes c * s_i * H[:, i] (exact in fp32: c is a float32 value).
    got = t.apply(np.eye(block))
    h = np.array(hadamard_matrix(block), dtype=np.float64)
    assert np.array_equal(got, scale(block) * (np.array(sign_vector(5, block))[:, None] * h.T))


# ---- the transform bit for bit against the twin --------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("block", BLOCKS)
def test_every_block_size_against_the_twin(block, dtype):
    x = special_rows(block, dtype)
    for fmt, rounding in [("fp32", "rne"), ("bf16", "rtz"), ("e4m3fn", "rup")]:
        got = RandomHadamard(block, 9, fmt, rounding).apply(x)
        assert same(got, hadamard_exact(x, block, 9, fmt, rounding)), (fmt, rounding)


@pytest.mark.parametrize("overflow", ["default", "saturate", "satfinite"])
@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_precision_rounding_and_overflow_against_the_twin(fmt, rounding, overflow):
    x = special_rows(16, np.float64)
    got = RandomHadamard(16, 2, fmt, rounding, overflow).apply(x)
    assert same(got, hadamard_exact(x, 16, 2, fmt, rounding, overflow))


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_rounded_constant_blocks_against_the_twin(rounding):
    # block 32: c has 24 bits, so c * S is rounded through Dekker's product and round-to-odd.
    rng = np.random.default_rng(3)
    x = np.concatenate([special_rows(32, np.float64),
                        rng.integers(-2**20, 2**20, (20, 32)) * 2.0 ** rng.integers(-30, 30,
                                                                                   (20, 1))])
    for fmt in ("bf16", "e5m2", "fp32"):
        got = RandomHadamard(32, 4, fmt, rounding).apply(x)
        assert same(got, hadamard_exact(x, 32, 4, fmt, rounding)), fmt


def test_axis_and_dtype():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 32, 5)).astype(np.float32)
    t = RandomHadamard(16, 1, "bf16")
    got = t.apply(x, axis=1)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert same(got, hadamard_exact(x, 16, 1, "bf16", axis=1))
    wide = RandomHadamard(16, 1, FloatFormat(8, 30)).apply(x, axis=1)
    assert wide.dtype == np.float64  # the format does not fit float32


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([16, 32, 64]), st.integers(0, 2**64 - 1), st.sampled_from(FORMATS),
       st.sampled_from(ROUNDINGS),
       st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=16,
                max_size=16))
def test_hypothesis_values_against_the_twin(block, seed, fmt, rounding, values):
    x = np.resize(np.array(values, np.float32), block)
    got = RandomHadamard(block, seed, fmt, rounding).apply(x)
    assert same(got, hadamard_exact(x, block, seed, fmt, rounding))


# ---- GemmSpec.transform through matmul ----------------------------------------------------------
def _twin_then_matmul(a, b, spec: GemmSpec, seed: int) -> np.ndarray:
    t = spec.transform
    assert t is not None
    dtype = np.float32 if t.fmt.man_bits <= 23 and a.dtype == np.float32 else np.float64
    ta = hadamard_exact(a, t.block, t.seed, t.fmt, t.rounding, t.overflow, axis=-1)
    tb = hadamard_exact(b, t.block, t.seed, t.fmt, t.rounding, t.overflow, axis=-2)
    plain = GemmSpec(a=spec.a, b=spec.b, acc=spec.acc, out=spec.out)
    return matmul(ta.astype(dtype), tb.astype(dtype), plain, seed=seed)


@settings(max_examples=6, deadline=None)
@given(st.sampled_from([16, 32]), st.integers(1, 3), st.integers(1, 2), st.integers(1, 4),
       st.integers(1, 4), st.sampled_from([None, "e4m3fn", "e2m1fn"]),
       st.sampled_from(["rne", "sr"]), st.integers(0, 2**32))
def test_hypothesis_matmul_is_twin_transform_then_matmul(block, blocks, batch, m, n, cast,
                                                         rounding, seed):
    rng = np.random.default_rng(seed)
    k = block * blocks
    a = rng.standard_normal((batch, m, k)).astype(np.float32)
    b = rng.standard_normal((batch, k, n)).astype(np.float32)
    operand = None if cast is None else {"fmt": cast, "rounding": rounding}
    spec = GemmSpec(a=operand, b=operand, acc="fp32",
                    transform=RandomHadamard(block, seed, "bf16"))
    got = matmul(a, b, spec, seed=seed)
    assert same(got, _twin_then_matmul(a, b, spec, seed))
    assert same(got, matmul(a, b, spec, seed=seed, route="exact"))


@pytest.mark.parametrize("block", [16, 64])
def test_product_unchanged_in_exact_arithmetic(block):
    # Power-of-4 blocks: c^2 * b = 1; with values exact in fp32 and an exact accumulator,
    # A' B' = A Q Q^T B = A B exactly.
    rng = np.random.default_rng(block)
    a = rng.integers(-4, 5, (3, 2 * block)).astype(np.float32)
    b = rng.integers(-4, 5, (2 * block, 4)).astype(np.float32)
    spec = GemmSpec(acc="fp64", transform=RandomHadamard(block, 11, "fp32"))
    assert np.array_equal(matmul(a, b, spec), a.astype(np.float64) @ b)


def test_torch_exact_and_fast_modes_take_the_same_transform():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((2, 3, 32)).astype(np.float32)
    b = rng.standard_normal((2, 32, 4)).astype(np.float32)
    spec = GemmSpec(a="e4m3fn", b={"fmt": "e4m3fn", "rounding": "sr"}, acc="fp16",
                    transform=RandomHadamard(32, 8, "bf16", "rtz"))
    expected = matmul(a, b, spec, seed=3)
    got = torch_ops.matmul(torch.from_numpy(a), torch.from_numpy(b), spec, seed=3)
    assert same(got.numpy(), expected)
    fast = torch_ops.matmul(torch.from_numpy(a), torch.from_numpy(b), spec, seed=3, mode="fast")
    plain = GemmSpec(a=spec.a, b=spec.b, acc="fp32")  # fp32 accumulation as mode="fast" does
    ta = hadamard_exact(a, 32, 8, "bf16", "rtz").astype(np.float32)
    tb = hadamard_exact(b, 32, 8, "bf16", "rtz", axis=-2).astype(np.float32)
    assert np.allclose(fast.numpy(), matmul(ta, tb, plain, seed=3), rtol=1e-5, atol=1e-5)


def test_k_not_a_multiple_of_the_block_names_k_and_b():
    spec = GemmSpec(acc="fp32", transform=RandomHadamard(32))
    with pytest.raises(ValueError, match=r"K = 48 .*b = 32"):
        matmul(np.ones((2, 48), np.float32), np.ones((48, 2), np.float32), spec)


def test_conv2d_refuses_a_transform():
    spec = GemmSpec(acc="fp32", transform=RandomHadamard(16))
    with pytest.raises(ValueError, match=r"conv2d: GemmSpec\.transform"):
        conv2d(np.ones((1, 16, 3, 3), np.float32), np.ones((2, 16, 1, 1), np.float32), spec)


def test_no_transform_is_today_exactly():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((3, 20)).astype(np.float32)
    b = rng.standard_normal((20, 2)).astype(np.float32)
    plain = GemmSpec(a="e4m3fn", b="e4m3fn", acc="fp16")
    assert plain.transform is None and "transform" not in plain.to_dict()
    assert str(plain) == "GemmSpec(a=e4m3fn/rne, b=e4m3fn/rne, acc=AccumSpec(fp16, rne, "\
        "sequential), out=exact)"
    assert same(matmul(a, b, plain), matmul(a, b, GemmSpec.from_dict(plain.to_dict())))


# ---- spec: round trips, str, errors --------------------------------------------------------------
TRANSFORMS = [RandomHadamard(), RandomHadamard(128, 2**64 - 1, "bf16", "rto", "satfinite"),
              RandomHadamard(32, 7, FloatFormat(6, 9, subnormals=False))]


@pytest.mark.parametrize("transform", TRANSFORMS, ids=str)
def test_round_trips(transform):
    assert RandomHadamard.from_dict(transform.to_dict()) == transform
    spec = GemmSpec(a="e2m1fn", acc="fp32", transform=transform)
    assert GemmSpec.from_dict(spec.to_dict()) == spec
    assert GemmSpec.from_toml(spec.to_toml()) == spec
    assert GemmSpec(acc="fp32", transform=transform.to_dict()).transform == transform


def test_str():
    assert str(RandomHadamard(128, 2, "bf16", "rto", "saturate")) == \
        "RandomHadamard(128, seed=2, bf16/rto/saturate)"
    spec = GemmSpec(acc="fp32", transform=RandomHadamard())
    assert str(spec).endswith("transform=RandomHadamard(16, seed=0, fp32/rne))")


@pytest.mark.parametrize("kwargs, message", [
    ({"block": 24}, r"block must be one of 16, 32, 64, 128, 256 .*got 24"),
    ({"block": True}, "block"),
    ({"seed": -1}, "RandomHadamard.seed"),
    ({"fmt": "fp64"}, r"fmt \(fp64\) must have at most 50 mantissa bits"),
    ({"fmt": "int8"}, "fmt must be a floating-point format"),
    ({"fmt": "nope"}, "RandomHadamard.fmt"),
    # unsigned formats were accepted and half the outputs came out NaN
    ({"fmt": "e8m0fnu"}, r"fmt must be a signed format with a zero .*e8m0fnu, which has no sign"),
    ({"fmt": FloatFormat(5, 2, signed=False)}, "must be a signed format with a zero"),
    ({"rounding": "sr"}, "sr is not supported"),
    ({"rounding": "up"}, "RandomHadamard.rounding must be one of"),
    ({"overflow": "wrap"}, "overflow must be default, saturate or satfinite"),
])
def test_errors_name_the_parameter(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        RandomHadamard(**kwargs)


def test_dict_errors():
    with pytest.raises(ValueError, match="unknown keys size"):
        RandomHadamard.from_dict({"size": 16})
    with pytest.raises(ValueError, match="kind must be 'hadamard'"):
        RandomHadamard.from_dict({"kind": "fourier"})
    with pytest.raises(TypeError, match=r"GemmSpec\.transform must be"):
        GemmSpec(acc="fp32", transform="hadamard")  # type: ignore[arg-type]


# ---- slow: every block, precision, rounding and overflow on more values --------------------------
@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS)
def test_sweep_against_the_twin(block):
    rng = np.random.default_rng(block + 1)
    x = np.concatenate([special_rows(block, np.float64),
                        rng.standard_normal((4, block)) * 2.0 ** rng.integers(-30, 30,
                                                                               (4, block))])
    for fmt in FORMATS:
        for rounding in ROUNDINGS:
            for overflow in ("default", "saturate", "satfinite"):
                got = RandomHadamard(block, block, fmt, rounding, overflow).apply(x)
                expected = hadamard_exact(x, block, block, fmt, rounding, overflow)
                assert same(got, expected), (fmt, rounding, overflow)


@pytest.mark.slow  # a subprocess: the CUDA simulator must be chosen before numba.cuda is imported
def test_cuda_matmul_refuses_a_transform():
    code = ("import numpy as np, refsim\n"
            "from numba import cuda\n"
            "a = cuda.to_device(np.ones((2, 16), np.float32))\n"
            "b = cuda.to_device(np.ones((16, 2), np.float32))\n"
            "spec = refsim.GemmSpec(acc='fp32', transform=refsim.RandomHadamard(16))\n"
            "try:\n"
            "    refsim.matmul(a, b, spec)\n"
            "except NotImplementedError as exc:\n"
            "    print('refused:', exc)\n")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=600, check=True)
    assert "refused: matmul on CUDA: spec.transform (RandomHadamard(16" in done.stdout, done
