"""refsim.quantize_blocks against the OCP MX v1.0 facts and the Fraction twin
(refsim.formats.exact_block).

The twin walks blocks one by one with exact arithmetic; refsim scales whole arrays with bit
patterns and refsim.quantize. They must agree bit for bit (NaN as NaN, zeros by sign), in every
rounding mode, along every axis, for float32 and float64 inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refsim import AccumSpec, Cast, GemmSpec, conv2d, matmul, quantize_blocks
from refsim.formats import NAMED_BLOCKS, BlockFormat, FixedFormat, get_format
from refsim.formats.exact_block import quantize_blocks_exact
from refsim.formats.policy import ROUNDINGS

E8M0 = get_format("e8m0fnu")
E4M3 = get_format("e4m3fn")
MX = [k for k, f in NAMED_BLOCKS.items() if f.pow2_scale]


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality up to NaN payloads (NaN as NaN, zeros by sign)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    nan = np.isnan(a)
    if not np.array_equal(nan, np.isnan(b)):
        return False
    return bool(np.array_equal(np.where(nan, 0, a), np.where(nan, 0, b))
                and np.array_equal(np.signbit(a[~nan]), np.signbit(b[~nan])))


def data(seed: int, shape: tuple[int, ...], dtype, kind: str) -> np.ndarray:
    """Test inputs: 'normal' (N(0, 8)), 'wide' (magnitudes over the whole range, zeros, -0,
    ties of the element grids), 'special' (wide, with NaN and -Inf among the first 32)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    if kind == "normal":
        x = rng.standard_normal(n) * 8
    else:
        lo, hi = (-150, 127) if dtype == np.float32 else (-1074, 1023)
        x = np.ldexp(rng.integers(1, 1 << 12, n).astype(np.float64), rng.integers(lo, hi - 12, n))
        x *= rng.choice([-1.0, 1.0], n)
        x[rng.random(n) < 0.1] = 0.0
        x[rng.random(n) < 0.05] = -0.0
        # dyadic values of few bits: ties of every element grid
        small = rng.random(n) < 0.3
        x[small] = rng.integers(-64, 64, small.sum()) / 8.0
        if kind == "special":  # in the first block (of 32) only: later blocks stay finite
            x[rng.integers(0, min(n, 32), 2)] = np.nan
            x[rng.integers(0, min(n, 32), 1)] = -np.inf
    with np.errstate(over="ignore"):
        return x.astype(dtype).reshape(shape)


# ---- OCP MX v1.0 facts -------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "element", "emax", "elem_max"), [
    ("mxfp8_e4m3", "e4m3fn", 8, 448.0), ("mxfp8_e5m2", "e5m2", 15, 57344.0),
    ("mxfp6_e3m2", "e3m2fn", 4, 28.0), ("mxfp6_e2m3", "e2m3fn", 2, 7.5),
    ("mxfp4_e2m1", "e2m1fn", 2, 6.0), ("mxint8", FixedFormat(8, 6), 0, 127 / 64)])
def test_ocp_mx_definitions(name, element, emax, elem_max):
    """OCP MX v1.0 table 1: blocks of 32, an E8M0 scale, emax_elem and the element's max."""
    fmt = NAMED_BLOCKS[name]
    assert fmt.block_size == 32 and fmt.scale == E8M0 and fmt.scale_rule == "floor"
    assert fmt.element == get_format(element)
    assert fmt.elem_emax == emax and fmt.elem_max == elem_max


def test_nvfp4_and_bfp8_definitions():
    fmt = NAMED_BLOCKS["nvfp4"]
    assert (fmt.element, fmt.block_size, fmt.scale, fmt.tensor_scale) == (
        get_format("e2m1fn"), 16, E4M3, True)
    bfp = NAMED_BLOCKS["bfp8"]
    assert bfp.element == FixedFormat(8, 0) and bfp.scale == E8M0 and bfp.elem_emax == 6


def test_known_e4m3_block():
    """{485, 475, 400, -485, -475, -450, 2^-6, -2^-6}: scale 1; 448, 448, 384 under RNE."""
    x = np.array([485, 475, 400, -485, -475, -450, 2.0**-6, -(2.0**-6)], np.float32)
    r = quantize_blocks(x, "mxfp8_e4m3", return_codes=True)
    assert r.scales.tolist() == [1.0] and r.scale_codes.tolist() == [127]
    assert r.values[:3].tolist() == [448, 448, 384]
    assert r.values.tolist() == [448, 448, 384, -448, -448, -448, 2.0**-6, -(2.0**-6)]


def test_known_amax_960_block():
    """amax 960: floor(log2 960) = 9, scale 2^(9 - 8) = 2; 957 / 2 = 478.5 saturates to 448."""
    x = np.array([960, 957, 1.5, -3] + [0] * 28, np.float32)
    r = quantize_blocks(x, "mxfp8_e4m3", return_codes=True)
    assert r.scales.tolist() == [2.0]
    assert r.values[:4].tolist() == [896, 896, 1.5, -3]


def test_scale_rules_on_one_block():
    """amax 480 = 1.875 * 2^8 in E4M3: floor 2^0 (480 saturates to 448), ceil 2^1, even 2^0
    (1.875 has 3 fraction bits: no rounding), rceil 2^1 (480 > 448); amax 496 = 1.9375 * 2^8
    rounds to 512 at E4M3 precision: even 2^1; amax 448: all 2^0 but ceil."""
    for amax, want in ((480.0, {"floor": 1, "ceil": 2, "even": 1, "rceil": 2}),
                       (496.0, {"floor": 1, "ceil": 2, "even": 2, "rceil": 2}),
                       (448.0, {"floor": 1, "ceil": 2, "even": 1, "rceil": 1}),
                       (256.0, {"floor": 1, "ceil": 1, "even": 1, "rceil": 1})):
        for rule, scale in want.items():
            fmt = BlockFormat(E4M3, 32, E8M0, rule)
            r = quantize_blocks(np.array([amax, 1.0], np.float32), fmt, return_codes=True)
            assert r.scales.tolist() == [scale], (amax, rule)


def test_nan_and_inf_make_the_block_nan():
    x = np.arange(64, dtype=np.float32)
    x[3] = np.nan
    x[40] = np.inf
    r = quantize_blocks(x.reshape(2, 32), "mxfp8_e4m3", return_codes=True)
    assert np.isnan(r.values).all() and np.isnan(r.scales).all()
    assert r.scale_codes.tolist() == [[255], [255]] and (r.codes == 0).all()
    y = np.arange(64, dtype=np.float32)
    y[3] = np.nan
    v = quantize_blocks(y, "mxfp8_e4m3")
    assert np.isnan(v[:32]).all() and np.isfinite(v[32:]).all()


def test_short_last_block_is_scaled_alone():
    x = np.concatenate([np.full(32, 1000.0), np.full(8, 0.01)]).astype(np.float32)
    r = quantize_blocks(x, "mxfp8_e4m3", return_codes=True)
    assert r.scales.shape == (2,) and r.scales[1] == 2.0 ** (-7 - 8)
    assert np.array_equal(r.values[32:], quantize_blocks(x[32:], "mxfp8_e4m3"))


def test_zero_block_takes_the_smallest_scale():
    r = quantize_blocks(np.array([0.0, -0.0], np.float64), "mxfp8_e4m3", return_codes=True)
    assert r.scale_codes.tolist() == [0] and same(r.values, np.array([0.0, -0.0]))


def test_float32_overflow_past_fp32_is_inf():
    """ceil puts amax = fp32 max in 2^120 blocks: 255.99.. rounds to 256 and 256 * 2^120 = 2^128
    is beyond float32: the value is Inf (float64 input holds it)."""
    fmt = BlockFormat(E4M3, 32, E8M0, "ceil")
    big = np.finfo(np.float32).max
    assert np.isinf(quantize_blocks(np.array([big], np.float32), fmt))[0]
    assert quantize_blocks(np.array([big], np.float64), fmt)[0] == 2.0**128


# ---- the twin -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(NAMED_BLOCKS))
@pytest.mark.parametrize(("rounding", "dtype"), [(mode, np.float32) for mode in ROUNDINGS]
                         + [(mode, np.float64) for mode in ("rne", "rup", "sr")])
def test_named_formats_against_twin(name, rounding, dtype):
    """Every named format in every mode (float64 in three): N(0, 8) data, and data over the
    whole exponent range with zeros, -0, ties, NaN and Inf, 40 long (a short last block)."""
    fmt = NAMED_BLOCKS[name]
    sr_bits = 8 if (rounding == "sr" and not fmt.pow2_scale) else None
    for seed, kind in enumerate(("normal", "special")):
        x = data(seed, (1, 40), dtype, kind)
        if not fmt.pow2_scale:  # the per-tensor scale is an fp32 value: amax / 2688 must fit
            x = np.where(np.abs(x) > 1e30, np.copysign(1e30, x), x).astype(dtype)
        got = quantize_blocks(x, fmt, rounding, sr_bits=sr_bits, seed=seed, return_codes=True)
        want, scales, tensor_scale = quantize_blocks_exact(x, fmt, rounding, sr_bits=sr_bits,
                                                           seed=seed)
        assert same(got.values, want), (kind, x[~same_mask(got.values, want)],
                                         got.values[~same_mask(got.values, want)],
                                         want[~same_mask(got.values, want)])
        assert same(got.scales, scales) and got.tensor_scale == tensor_scale
        # without codes, deterministic modes along the last axis take the one-pass kernel
        assert same(quantize_blocks(x, fmt, rounding, sr_bits=sr_bits, seed=seed), want)


def same_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a == b) & (np.signbit(a) == np.signbit(b)) | (np.isnan(a) & np.isnan(b))


@pytest.mark.parametrize("rule", ["floor", "ceil", "even", "rceil"])
@pytest.mark.parametrize("element", ["e4m3fn", "e5m2", "e2m1fn", "int8", "e3m2fn", "e4m3fnuz"])
def test_scale_rules_against_twin(rule, element):
    fmt = BlockFormat(element, 8, E8M0, rule)
    for dtype, modes in ((np.float32, ("rne", "rto", "sr")), (np.float64, ("rna",))):
        x = data(7, (3, 16), dtype, "wide")
        for rounding in modes:
            got = quantize_blocks(x, fmt, rounding, seed=3, return_codes=True)
            want, scales, _ = quantize_blocks_exact(x, fmt, rounding, seed=3)
            assert same(got.values, want) and same(got.scales, scales)
            assert same(quantize_blocks(x, fmt, rounding, seed=3), want)


def test_nvfp4_rceil_against_twin():
    fmt = BlockFormat("e2m1fn", 16, E4M3, "rceil", tensor_scale=True)
    x = data(11, (4, 33), np.float32, "normal")
    assert same(quantize_blocks(x, fmt, "rna"), quantize_blocks_exact(x, fmt, "rna")[0])


def test_tiny_lanes_beside_huge_ones():
    """A lane that x * 2^-e would push below the carrier's normal range is rounded from x:
    rup takes it to the element's smallest value times the scale."""
    x = np.array([2.0**100, 2.0**-140, -(2.0**-149), 0.0], np.float32)
    v = quantize_blocks(x, "mxfp8_e4m3", "rup")
    assert v.tolist() == [2.0**100, 2.0**83, -0.0, 0.0]
    for rounding in ROUNDINGS:
        assert same(quantize_blocks(x, "mxfp8_e4m3", rounding, seed=9),
                    quantize_blocks_exact(x, "mxfp8_e4m3", rounding, seed=9)[0])


def test_ties_at_the_smallest_quantum():
    """x = 1.5 * 2^E around the scaled grid's smallest quantum 2^-9 (scale 1): at E = -9 the
    kept bit is x's leading bit (odd), so rne rounds the tie up to 2^-8."""
    for exp in range(-12, -5):
        x = np.array([300.0, 1.5 * 2.0**exp, -1.5 * 2.0**exp, 2.5 * 2.0**exp], np.float32)
        for rounding in ("rne", "rna", "rto", "rup", "rdn", "rtz"):
            assert same(quantize_blocks(x, "mxfp8_e4m3", rounding),
                        quantize_blocks_exact(x, "mxfp8_e4m3", rounding)[0]), (exp, rounding)
    assert quantize_blocks(np.array([300, 1.5 * 2.0**-9], np.float32), "mxfp8_e4m3")[1] == 2**-8


def test_codes_decode_to_values():
    x = data(5, (2, 64), np.float64, "normal")
    for name in NAMED_BLOCKS:
        fmt = NAMED_BLOCKS[name]
        r = quantize_blocks(x, fmt, return_codes=True)
        elems = fmt.element.decode(r.codes)
        assert np.array_equal(fmt.scale.decode(r.scale_codes), r.scales)
        scale = np.repeat(r.scales, fmt.block_size, axis=-1)[:, :64] * r.tensor_scale
        assert np.array_equal(elems * scale, r.values), name


# ---- axes, shapes, block sizes -----------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=3), data_=st.data(),
       block_size=st.integers(1, 9),
       element=st.sampled_from(["e4m3fn", "e2m1fn", "int8", "e5m2"]),
       rounding=st.sampled_from(["rne", "rtz", "rdn", "sr"]),
       dtype=st.sampled_from(["f4", "f8"]))
def test_hypothesis_shapes_axes_blocks(shape, data_, block_size, element, rounding, dtype):
    axis = data_.draw(st.integers(-len(shape), len(shape) - 1))
    fmt = BlockFormat(element, block_size, E8M0, "floor", axis=axis)
    x = data(len(shape) * 100 + block_size, tuple(shape), np.dtype(dtype), "wide")
    got = quantize_blocks(x, fmt, rounding, seed=1, return_codes=True)
    want, scales, _ = quantize_blocks_exact(x, fmt, rounding, seed=1)
    assert same(got.values, want) and same(got.scales, scales)
    assert same(quantize_blocks(x, fmt, rounding, seed=1), want)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_axis_is_a_transpose_for_deterministic_modes(axis):
    x = data(3, (6, 20, 5), np.float32, "normal")
    fmt = NAMED_BLOCKS["mxfp6_e2m3"]
    moved = np.ascontiguousarray(np.moveaxis(x, axis, -1))
    want = np.moveaxis(quantize_blocks(moved, fmt, "rna"), -1, axis)
    assert same(quantize_blocks(x, fmt, "rna", axis=axis), want)
    assert same(quantize_blocks(x, fmt.with_axis(axis), "rna"), want)


def test_sr_uses_the_flat_index_and_out():
    x = data(4, (8, 64), np.float32, "normal")
    a = quantize_blocks(x, "mxfp4_e2m1", "sr", seed=7)
    assert same(a, quantize_blocks(x.copy(order="F"), "mxfp4_e2m1", "sr", seed=7))
    assert not same(a, quantize_blocks(x, "mxfp4_e2m1", "sr", seed=8))
    out = np.empty_like(x)
    assert quantize_blocks(x, "mxfp4_e2m1", "sr", seed=7, out=out) is out and same(out, a)
    y = x.copy()
    quantize_blocks(y, "mxfp4_e2m1", "sr", seed=7, out=y)
    assert same(y, a)


# ---- GemmSpec operands --------------------------------------------------------------------------
def test_matmul_with_block_casts():
    """Blocks along K: a's last axis, b's second-to-last; b's Cast takes seed + 1."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((2, 5, 70)).astype(np.float32)
    b = rng.standard_normal((70, 3)).astype(np.float32)
    acc = AccumSpec("fp32")
    spec = GemmSpec(a=Cast("mxfp8_e4m3"), b=Cast(NAMED_BLOCKS["mxfp4_e2m1"], "sr"), acc=acc)
    qa = quantize_blocks(a, "mxfp8_e4m3", axis=-1)
    qb = quantize_blocks(b, "mxfp4_e2m1", "sr", axis=-2, seed=6)
    assert same(matmul(a, b, spec, seed=5), matmul(qa, qb, GemmSpec(acc=acc), seed=5))


def test_conv2d_with_block_casts():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 40, 4, 4)).astype(np.float32)
    w = rng.standard_normal((2, 40, 3, 3)).astype(np.float32)
    spec = GemmSpec(a=Cast("mxfp8_e5m2"), b=Cast("mxint8"), acc=AccumSpec("fp32"))
    qx = quantize_blocks(x, "mxfp8_e5m2", axis=1)
    qw = quantize_blocks(w, "mxint8", axis=1)
    assert same(conv2d(x, w, spec), conv2d(qx, qw, GemmSpec(acc=AccumSpec("fp32"))))


def test_spec_round_trip_and_refusals():
    custom = BlockFormat("e3m2fn", 8, E8M0, "even")
    for fmt in ("nvfp4", custom):
        spec = GemmSpec(a=Cast(fmt, "sr", sr_bits=8), b=Cast("mxint8"), acc="fp32")
        assert GemmSpec.from_dict(spec.to_dict()) == spec
        assert GemmSpec.from_toml(spec.to_toml()) == spec
    assert str(Cast("mxfp8_e4m3")) == "mxfp8_e4m3/rne"
    with pytest.raises(ValueError, match="out must be an element format"):
        GemmSpec(a="e4m3fn", out=Cast("mxfp8_e4m3"), acc="fp32")
    with pytest.raises(ValueError, match="product must be an element format"):
        AccumSpec("fp32", product=Cast("mxfp8_e4m3"))
    with pytest.raises(ValueError, match="wrap"):
        Cast("mxint8", overflow="wrap")


# ---- bad input ----------------------------------------------------------------------------------
def test_bad_input_names_the_parameter():
    x = np.ones((4, 8), np.float32)
    with pytest.raises(ValueError, match=r"axis 2 is out of range .*allowed: -2\.\.1"):
        quantize_blocks(x, "mxfp8_e4m3", axis=2)
    with pytest.raises(ValueError, match=r"sr_bits must be in 1\.\.16"):
        quantize_blocks(x, "nvfp4", "sr")
    with pytest.raises(TypeError, match="dtype float32 or float64"):
        quantize_blocks(x.astype(np.float16), "mxfp8_e4m3")
    with pytest.raises(ValueError, match="unknown block format"):
        quantize_blocks(x, "mxfp9")
    with pytest.raises(ValueError, match="use float64 input"):
        quantize_blocks(x, BlockFormat("bf16", 32))
    with pytest.raises(ValueError, match="at least one dimension"):
        quantize_blocks(np.array(1.0), "mxfp8_e4m3")
    with pytest.raises(ValueError, match=r"per-tensor scale .* beyond float32"):
        quantize_blocks(np.array([1e300]), "nvfp4")
    with pytest.raises(ValueError, match="out must be"):
        quantize_blocks(x, "mxfp8_e4m3", out=np.empty((8, 4), np.float32))


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp4_e2m1", "mxint8", "nvfp4", "bfp8"])
@pytest.mark.parametrize("rounding", ["rne", "rtz", "sr"])
def test_empty_input_gives_empty_values_codes_and_scales(name, rounding):
    """Empty input, with sr and with return_codes (it raised "range() arg 3 must not be zero"
    before). No element means no block along an empty block axis, and one block per
    position (with no element) when another axis is empty."""
    sr_bits = 8 if rounding == "sr" else None
    fmt = NAMED_BLOCKS[name]
    for shape, axis in (((3, 0), -1), ((0,), -1), ((0, 40), -1), ((0, 3), 0), ((2, 0, 5), 1)):
        for dtype in (np.float32, np.float64):
            x = np.zeros(shape, dtype)
            values = quantize_blocks(x, name, rounding, axis=axis, sr_bits=sr_bits)
            assert values.shape == shape and values.dtype == dtype
            r = quantize_blocks(x, name, rounding, axis=axis, sr_bits=sr_bits, return_codes=True)
            blocks = -(-shape[axis] // fmt.block_size)
            scale_shape = list(shape)
            scale_shape[axis] = blocks
            assert r.values.shape == shape and r.values.dtype == dtype
            assert r.codes.shape == shape and r.codes.dtype == np.uint64
            assert r.scales.shape == tuple(scale_shape) and r.scales.dtype == np.float64
            assert r.scale_codes.shape == tuple(scale_shape)
            assert r.scale_codes.dtype == np.uint64 and r.tensor_scale == 1.0
            out = np.empty(shape, dtype)
            assert quantize_blocks(x, name, rounding, axis=axis, sr_bits=sr_bits, out=out) is out
    # matmul with an empty K and MX operands: the empty sum
    spec = GemmSpec(a=Cast("mxfp8_e4m3"), b=Cast("mxfp8_e4m3"), acc=AccumSpec("fp32"))
    assert matmul(np.zeros((2, 0)), np.zeros((0, 3)), spec).tolist() == [[0.0] * 3] * 2


@pytest.mark.parametrize("rounding", ["rne", "rtz", "sr"])
@pytest.mark.parametrize("name", ["mxfp8_e4m3", "nvfp4"])
def test_read_only_out_is_refused(name, rounding):
    """A read-only out is refused by name (refsim.params.check_out), not by a multi-page Numba
    TypingError."""
    x = np.linspace(-3, 3, 64, dtype=np.float32).reshape(2, 32)
    out = np.zeros_like(x)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable; got a read-only array"):
        quantize_blocks(x, name, rounding, sr_bits=8 if rounding == "sr" else None, out=out)
    assert not out.any()


# ---- torchao ------------------------------------------------------------------------------------
def _torchao():
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch
            from torchao.prototype.mx_formats.config import ScaleCalculationMode
            from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
        return torch, ScaleCalculationMode, to_mx, to_dtype
    except Exception as exc:  # ImportError, or a torchao that does not load with this torch
        pytest.skip(f"torchao's MX code is not usable here ({type(exc).__name__}: {exc})")


@pytest.mark.parametrize("mode", ["floor", "ceil", "even", "rceil"])
@pytest.mark.parametrize(("name", "dtype_name"), [
    ("mxfp8_e4m3", "float8_e4m3fn"), ("mxfp8_e5m2", "float8_e5m2"),
    ("mxfp4_e2m1", "float4_e2m1fn_x2")])
def test_against_torchao(mode, name, dtype_name):
    """torchao.prototype.mx_formats to_mx / to_dtype on float32 data whose blocks have normal
    scales (torchao raises a 2^-127 scale to 2^-126, and divides in float32)."""
    import warnings

    torch, scale_mode, to_mx, to_dtype = _torchao()
    x = data(21, (8, 128), np.float32, "normal")
    x[0, :32] *= 1e4  # large blocks: saturation and the rules' differences show there
    fmt = BlockFormat(NAMED_BLOCKS[name].element, 32, E8M0, mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        elem = getattr(torch, dtype_name)
        scale, data_lp = to_mx(torch.from_numpy(x), elem, 32, scale_mode(mode))
        theirs = to_dtype(data_lp, scale, elem, 32, torch.float32).numpy()
    assert same(quantize_blocks(x, fmt), theirs)
