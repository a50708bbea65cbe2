"""refsim.quantize: shapes, layouts, out=, scalars, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest

from refsim import quantize
from refsim.formats import FloatFormat
from refsim.formats.exact import quantize_exact
from refsim.validation.bits import assert_same_bits


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(5).standard_normal((6, 7, 8)) * 50


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shape_and_dtype_kept(data, dtype):
    x = data.astype(dtype)
    y = quantize(x, "e4m3fn")
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_same_bits(y, quantize_exact(x, "e4m3fn"), x)


@pytest.mark.parametrize("rounding", ["rne", "sr"])
def test_non_contiguous_equals_contiguous_copy(data, rounding):
    """Strided and transposed views give the bits of their C-order copy (SR included: the
    random word follows the element's flat C-order index in the view, not its address)."""
    for view in (data[:, ::2, 1:], data.transpose(2, 0, 1), data[::-1]):
        got = quantize(view, "bf16", rounding, seed=9)
        assert_same_bits(got, quantize(np.ascontiguousarray(view), "bf16", rounding, seed=9))


def test_out_argument_and_in_place(data):
    x = data.astype(np.float32)
    expected = quantize(x, "e5m2")
    out = np.empty_like(x)
    assert quantize(x, "e5m2", out=out) is out
    assert_same_bits(out, expected)
    strided_out = np.empty((6, 7, 16), np.float32)[:, :, ::2]
    quantize(x, "e5m2", out=strided_out)
    assert_same_bits(strided_out, expected)
    y = x.copy()
    assert quantize(y, "e5m2", out=y) is y
    assert_same_bits(y, expected)


def test_scalars_and_empty():
    assert quantize(464.0, "e4m3fn") == 448.0
    assert isinstance(quantize(464.0, "e4m3fn"), float)
    value = quantize(np.float32(1.0625), "e4m3fn", "rna")
    assert isinstance(value, np.float32) and value == np.float32(1.125)
    empty = quantize(np.empty((0, 3), np.float32), "fp16")
    assert empty.shape == (0, 3) and empty.dtype == np.float32
    assert quantize(np.array(2.5), "int8").shape == ()


def test_format_object_and_custom_name():
    x = np.linspace(-3, 3, 101)
    assert_same_bits(quantize(x, FloatFormat(5, 10)), quantize(x, "fp16"))
    assert_same_bits(quantize(x, "e5m10"), quantize(x, "float16"))


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"x": np.arange(4)}, TypeError, ["x", "float32"]),
        ({"x": np.array([1.0], dtype=object)}, TypeError, ["x", "float32"]),
        ({"x": np.ones(2, np.float16)}, TypeError, ["float16"]),
        ({"x": [1.0, 2.0]}, TypeError, ["x", "list"]),
        ({"fmt": "e4m4q"}, ValueError, ["unknown format", "e4m4q"]),
        ({"fmt": 3}, TypeError, ["fmt"]),
        ({"rounding": "nearest"}, ValueError, ["rounding", "rne", "sr"]),
        ({"overflow": "clip"}, ValueError, ["overflow", "saturate"]),
        ({"overflow": "wrap"}, ValueError, ["wrap", "fixed-point"]),
        ({"rounding": "sr", "sr_bits": 0}, ValueError, ["sr_bits", "1..64"]),
        ({"rounding": "sr", "sr_bits": 65}, ValueError, ["sr_bits"]),
        ({"rounding": "sr", "sr_bits": 2.0}, TypeError, ["sr_bits"]),
        ({"rounding": "rne", "sr_bits": 8}, ValueError, ["sr_bits", "sr"]),
        ({"seed": -1}, ValueError, ["seed", "2^64"]),
        ({"seed": 2**64}, ValueError, ["seed"]),
        ({"seed": 1.5}, TypeError, ["seed"]),
        ({"x": np.ones(3, np.float32), "fmt": "fp64"}, ValueError, ["fp64", "float32"]),
        ({"x": np.ones(3, np.float32), "fmt": "int32"}, ValueError, ["int32", "float32"]),
        ({"out": np.empty(4)}, ValueError, ["out", "shape"]),
        ({"out": np.empty(3, np.float32)}, ValueError, ["out", "dtype"]),
    ],
)
def test_bad_input_names_the_parameter(kwargs, error, words):
    args = {"x": np.ones(3), "fmt": "e4m3fn", **kwargs}
    x = args.pop("x")
    fmt = args.pop("fmt")
    with pytest.raises(error) as info:
        quantize(x, fmt, **args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_nothing_is_cast_silently():
    x = np.ones(3, np.float32)
    before = x.copy()
    with pytest.raises(ValueError):
        quantize(x, "fp64")
    assert_same_bits(x, before)


# ---- out with scalars, read-only out, masked arrays, NumPy integers (refsim.quantize's doc) ---
def test_scalar_input_writes_into_a_0d_out_and_refuses_any_other():
    out = np.zeros(())
    assert quantize(3.3, "e4m3fn", out=out) is out and out[()] == 3.25
    out32 = np.zeros((), np.float32)
    assert quantize(np.float32(3.3), "e4m3fn", out=out32) is out32 and out32[()] == 3.25
    for wrong in (np.zeros(3), np.zeros((1,)), np.zeros((), np.float32), [0.0]):
        before = np.array(wrong, copy=True)
        with pytest.raises(ValueError, match="out must be a NumPy array of x's dtype float64 "
                                             r"and shape \(\)"):
            quantize(3.3, "e4m3fn", out=wrong)
        assert np.array_equal(np.asarray(wrong), before)  # nothing written


@pytest.mark.parametrize("rounding", ["rne", "sr"])
def test_read_only_out_is_refused_before_any_kernel_runs(rounding):
    x = np.linspace(-3, 3, 9)
    out = np.zeros_like(x)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable; got a read-only array"):
        quantize(x, "e4m3fn", rounding, out=out)
    assert not out.any()
    scalar_out = np.zeros(())
    scalar_out.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        quantize(2.5, "e4m3fn", rounding, out=scalar_out)


def test_masked_arrays_and_matrices_are_refused_naming_the_parameter():
    import refsim
    from refsim import AccumSpec, GemmSpec

    masked = np.ma.array([1.0, 1e6, 2.0], mask=[0, 1, 0])
    spec = GemmSpec(acc=AccumSpec("fp32"))
    calls = {
        "x": [lambda: quantize(masked, "e4m3fn"),
              lambda: refsim.sum(masked, "fp32"),
              lambda: refsim.dot(masked, np.ones(3), "fp32"),
              lambda: refsim.quantize_blocks(masked, "mxfp8_e4m3"),
              lambda: refsim.quantize_scaled(masked, "e4m3fn")],
        "y": [lambda: refsim.dot(np.ones(3), masked, "fp32")],
        "a": [lambda: refsim.matmul(np.ma.array(np.ones((2, 3))), np.ones((3, 2)), spec)],
        "b": [lambda: refsim.matmul(np.ones((2, 3)), np.ma.array(np.ones((3, 2))), spec)],
    }
    for name, fns in calls.items():
        for fn in fns:
            with pytest.raises(TypeError, match=f"{name} must be a plain NumPy array; got a "
                                                "masked array, whose mask would be ignored"):
                fn()
    with pytest.warns(PendingDeprecationWarning, match="matrix subclass"):
        matrix = np.matrix([[1.0, 2.0]])
    for fn in (lambda: quantize(matrix, "e4m3fn"), lambda: refsim.sum(matrix, "fp32")):
        with pytest.raises(TypeError, match=r"x must be a plain NumPy array; got np\.matrix"):
            fn()
    with pytest.raises(ValueError, match="out must be a NumPy array"):
        quantize(np.ones(3), "e4m3fn", out=np.ma.array(np.zeros(3)))


def test_numpy_integers_are_accepted_for_sr_bits_and_seed_and_bools_refused():
    x = np.linspace(-3, 3, 101)
    want = quantize(x, "e4m3fn", "sr", sr_bits=5, seed=9)
    for bits in (np.int64(5), np.int8(5), np.uint64(5)):
        for seed in (9, np.int32(9), np.uint64(9)):
            assert_same_bits(quantize(x, "e4m3fn", "sr", sr_bits=bits, seed=seed), want)
    for kwargs, name in (({"sr_bits": True}, "sr_bits"), ({"sr_bits": np.True_}, "sr_bits"),
                         ({"seed": True}, "seed"), ({"sr_bits": 5.0}, "sr_bits"),
                         ({"seed": np.float64(9)}, "seed")):
        with pytest.raises(TypeError, match=f"{name} must be"):
            quantize(x, "e4m3fn", "sr", **kwargs)


# ---- overflow="satfinite" and caller-given random bits (rbits) ----------------------------------
def test_satfinite_sends_infinities_to_max():
    x = np.array([np.inf, -np.inf, np.nan, 1e6, -1e6, 3.0])
    for dtype in (np.float32, np.float64):
        got = quantize(x.astype(dtype), "e5m2", overflow="satfinite")
        assert_same_bits(got, np.array([57344, -57344, np.nan, 57344, -57344, 3], dtype))
        kept = quantize(x.astype(dtype), "e5m2", overflow="saturate")  # Inf stays Inf there
        assert_same_bits(kept, np.array([np.inf, -np.inf, np.nan, 57344, -57344, 3], dtype))
    assert quantize(np.inf, "int8", overflow="satfinite") == 127.0
    assert quantize(-np.inf, "e4m3fn", overflow="satfinite") == -448.0


def test_rbits_scalar_and_empty():
    # 1.0625 lies half way between e4m3fn's 1 and 1.125: with one random bit, R=1 rounds up
    assert quantize(1.0625, "e4m3fn", "sr", sr_bits=1, rbits=np.uint8(1)) == 1.125
    assert quantize(1.0625, "e4m3fn", "sr", sr_bits=1, rbits=np.uint8(0)) == 1.0
    assert quantize(1.0625, "e4m3fn", "sr", sr_bits=1, rbits=np.array(3, np.uint32)) == 1.125
    empty = quantize(np.empty((0, 2)), "bf16", "sr", sr_bits=4, rbits=np.empty((0, 2), np.uint8))
    assert empty.shape == (0, 2)
    x = np.full(3, 1.0625)
    out = np.empty(3)
    assert quantize(x, "e4m3fn", "sr", sr_bits=1, rbits=np.array([0, 1, 2], np.uint8),
                    out=out) is out
    np.testing.assert_array_equal(out, [1.0, 1.125, 1.0])


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"rounding": "rne"}, ValueError, ["rbits", "rounding='sr'"]),
        ({"sr_bits": None}, ValueError, ["rbits", "sr_bits"]),
        ({"seed": 3}, ValueError, ["rbits", "seed"]),
        ({"seed": 0}, ValueError, ["rbits", "seed"]),
        ({"sr_bits": 0}, ValueError, ["sr_bits", "1..64"]),
        ({"sr_bits": 2.0}, TypeError, ["sr_bits"]),
        ({"rbits": np.zeros(3, np.int32)}, TypeError, ["rbits", "unsigned", "int32"]),
        ({"rbits": np.zeros(3)}, TypeError, ["rbits", "unsigned", "float64"]),
        ({"rbits": np.zeros(3, bool)}, TypeError, ["rbits", "unsigned"]),
        ({"rbits": [1, 2, 3]}, TypeError, ["rbits", "NumPy", "list"]),
        ({"rbits": np.zeros(4, np.uint8)}, ValueError, ["rbits", "shape", "(3,)", "(4,)"]),
        ({"rbits": np.zeros((3, 1), np.uint8)}, ValueError, ["rbits", "shape"]),
        ({"rbits": np.zeros(1, np.uint8)}, ValueError, ["rbits", "shape"]),
        ({"rbits": np.zeros(3, np.uint8), "sr_bits": 9}, ValueError,
         ["rbits", "uint8", "8 bits", "sr_bits=9"]),
        ({"rbits": np.zeros(3, np.uint32), "sr_bits": 33}, ValueError, ["uint32", "sr_bits=33"]),
    ],
)
def test_bad_rbits_names_the_parameter(kwargs, error, words):
    args = {"rounding": "sr", "sr_bits": 4, "rbits": np.zeros(3, np.uint8), **kwargs}
    rounding = args.pop("rounding")
    with pytest.raises(error) as info:
        quantize(np.ones(3), "e4m3fn", rounding, **args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_route_applies_to_tensors_only():
    import torch

    x = np.array([1.1, -2.3, 3e-3], np.float32)
    t = torch.from_numpy(x)
    for route in ("auto", "numba", "torch", "torch-general"):
        assert np.array_equal(quantize(t, "e4m3fn", route=route).numpy(), quantize(x, "e4m3fn"))
    with pytest.raises(ValueError, match="route applies to torch tensors only"):
        quantize(x, "e4m3fn", route="torch")
