"""The torch path of refsim.quantize against the Numba reference, bit for bit.

Fast tier: every named format of at most 8 bits (boundary values), every mode, overflow policy,
a few sr_bits, both carriers; the 16-bit formats on a sample; bfloat16 input; the Philox stream;
hypothesis over custom formats. The slow tier runs the 16-bit formats' full boundary suites.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refsim import quantize
from refsim.backends import torch_backend
from refsim.formats import NAMED, FixedFormat, FloatFormat, get_format
from refsim.formats.exact import quantize_exact
from refsim.formats.testing import boundary_values
from refsim.kernels import core
from refsim.kernels.rng import random_words
from refsim.validation.bits import assert_same_bits

torch = pytest.importorskip("torch", reason="the torch path needs torch (the test extra)")

ROUNDINGS = ("rne", "rna", "rtz", "rup", "rdn", "rto", "sr")
SMALL = [name for name, fmt in NAMED.items() if fmt.bits <= 8]
SIXTEEN = [name for name, fmt in NAMED.items() if 8 < fmt.bits <= 16]


QUANTIZE = torch_backend.quantize


def _route(monkeypatch, route: str) -> None:
    """refsim.quantize sends tensors to torch_backend.quantize on `route` (ROUTES)."""
    monkeypatch.setattr(torch_backend, "quantize", functools.partial(QUANTIZE, route=route))


@pytest.fixture(autouse=True)
def _torch_ops_on_cpu(monkeypatch):
    """Every test here checks the torch-op implementation (what CUDA runs): on CPU, tensors
    would otherwise go to the Numba kernels they are compared with."""
    _route(monkeypatch, "torch")


def test_cpu_tensors_take_the_numba_kernels(monkeypatch):
    """The default CPU route: same bits, dtype, shape; bfloat16, strided input, out= and
    requires_grad tensors included."""
    _route(monkeypatch, "auto")
    x = torch.randn(64, 33, generator=torch.Generator().manual_seed(4)) * 300
    for tx in (x, x.t(), x.to(torch.bfloat16), x.double(), x.clone().requires_grad_()):
        expected = quantize(tx.detach().float().numpy() if tx.dtype == torch.bfloat16
                            else tx.detach().numpy(), "e4m3fn", "sr", seed=5)
        got = quantize(tx, "e4m3fn", "sr", seed=5)
        assert got.dtype == tx.dtype and got.shape == tx.shape and not got.requires_grad
        assert_same_bits(got.float().numpy() if tx.dtype == torch.bfloat16 else got.numpy(),
                         expected.astype(got.float().numpy().dtype)
                         if tx.dtype == torch.bfloat16 else expected)
    out = torch.empty_like(x)
    assert quantize(x, "bf16", "rtz", out=out) is out
    assert_same_bits(out.numpy(), quantize(x.numpy(), "bf16", "rtz"))


def _policies(fmt):
    return ("default", "saturate", "wrap") if isinstance(fmt, FixedFormat) else (
        "default", "saturate")


def _check_all_modes(x: np.ndarray, fmt, sr_bits=(None, 3, 64)) -> None:
    tx = torch.from_numpy(x)
    for rounding in ROUNDINGS:
        for overflow in _policies(fmt):
            for bits in sr_bits if rounding == "sr" else (None,):
                kwargs = {"overflow": overflow, "sr_bits": bits, "seed": 11}
                expected = quantize(x, fmt, rounding, **kwargs)
                got = quantize(tx, fmt, rounding, **kwargs)
                assert got.dtype == tx.dtype and got.shape == tx.shape
                assert_same_bits(got.numpy(), expected, x,
                                 context=f"{fmt.name} {rounding} {overflow} sr_bits={bits}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", SMALL)
def test_small_formats_every_mode(name, dtype):
    fmt = get_format(name)
    _check_all_modes(boundary_values(fmt, dtype), fmt)


@pytest.mark.parametrize("name", SIXTEEN)
def test_sixteen_bit_formats_sample(name):
    fmt = get_format(name)
    x = boundary_values(fmt, np.float64)
    x = x[np.random.default_rng(3).choice(x.size, 4000, replace=False)]
    _check_all_modes(x, fmt, sr_bits=(None, 9))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", SIXTEEN)
def test_sixteen_bit_formats_every_mode(name, dtype):
    fmt = get_format(name)
    _check_all_modes(boundary_values(fmt, dtype), fmt)


def test_random_bit_patterns_and_deep_underflow():
    rng = np.random.default_rng(4)
    x64 = rng.integers(0, 2**63, 6000, dtype=np.int64).view(np.float64)
    x64 = np.concatenate((x64, -x64, 2.0 ** rng.uniform(-1074, -20, 2000)))
    x32 = rng.integers(0, 2**32, 6000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    for x in (x64, x32):
        for name in ("e4m3fn", "bf16", "e8m0fnu", "int8"):
            _check_all_modes(x, get_format(name), sr_bits=(None, 64))


def test_bfloat16_input_matches_float32_reference():
    fmt = get_format("e4m3fn")
    x32 = boundary_values(get_format("bf16"), np.float32)
    x32 = x32[np.random.default_rng(6).choice(x32.size, 6000, replace=False)]
    x32 = np.concatenate((x32, boundary_values(fmt, np.float32)))
    xb = torch.from_numpy(x32).to(torch.bfloat16)
    x32 = xb.float().numpy()
    for rounding in ROUNDINGS:
        got = quantize(xb, fmt, rounding, seed=5)
        assert got.dtype == torch.bfloat16
        assert_same_bits(got.float().numpy(), quantize(x32, fmt, rounding, seed=5), x32)


def test_bfloat16_input_refuses_formats_it_cannot_hold():
    with pytest.raises(ValueError, match="does not fit in bfloat16"):
        quantize(torch.zeros(3, dtype=torch.bfloat16), "fp16")


def _numpy_halves(seed: int, n: int, counter: int = 0) -> np.ndarray:
    """H_j of elements 0 .. n-1 from NumPy's Philox (counter words 1..3 preset by `counter`):
    the 64-bit words split into 32-bit halves, low half first."""
    raw = np.random.Philox(key=seed, counter=counter).random_raw((n + 1) // 2)
    return raw.astype("<u8").view("<u4")[:n]


@pytest.mark.parametrize("torch_ops", [True, False])
def test_philox_stream_equals_numpy(torch_ops, monkeypatch):
    """The torch integer-op Philox (used on every device; on CPU when forced) and the CPU
    shortcut through refsim.kernels.rng give the stream's 32-bit words H_j (NumPy's 64-bit
    words split low half first) as int64 values, accumulation families included."""
    monkeypatch.setattr(torch_backend, "TORCH_PHILOX_ON_CPU", torch_ops)
    got = torch_backend.random_words(5, 11, j=2, step=3, tag=7)
    assert got.dtype == torch.int64
    counter = (2 << 64) + (3 << 128) + (7 << 192)
    assert np.array_equal(got.numpy(), _numpy_halves(5, 11, counter))
    for seed in (0, 1, 2**64 - 1, 0x243F6A8885A308D3):
        for n in (0, 1, 8, 37):
            got = torch_backend.random_words(seed, n).numpy()
            assert np.array_equal(got, _numpy_halves(seed, n))
        got1 = torch_backend.random_words(seed, 9, j=1).numpy()
        assert np.array_equal(got1, random_words(seed, 9, 1))
        index = torch.tensor([0, 1, 7, 8, 9, 36, 1001])
        for j, step, tag in ((0, 0, 0), (1, 0, 0), (3, 2, 7)):
            words = torch_backend.random_words(seed, 1002, j, step=step, tag=tag)
            assert torch.equal(torch_backend._words_at(index, seed, j, step, tag), words[index])


def test_layout_out_and_errors():
    x = torch.randn(5, 6, 7, dtype=torch.float64) * 40
    view = x.transpose(0, 2)[:, ::2]
    got = quantize(view, "e5m2", "sr", seed=3)
    assert_same_bits(got.numpy(), quantize(np.ascontiguousarray(view.numpy()), "e5m2", "sr",
                                           seed=3))
    out = torch.empty_like(x)
    assert quantize(x, "e5m2", out=out) is out
    assert_same_bits(out.numpy(), quantize(x.numpy(), "e5m2"))
    with pytest.raises(TypeError, match=r"torch\.float32, torch\.float64 or torch\.bfloat16"):
        quantize(torch.zeros(2, dtype=torch.float16), "e4m3fn")
    with pytest.raises(ValueError, match="out must be a tensor"):
        quantize(x, "e5m2", out=torch.empty(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="route must be one of auto, numba, torch, "
                                         "torch-general; got 'cuda'"):
        QUANTIZE(x, "e5m2", route="cuda")
    with pytest.raises(ValueError, match="does not fit in float32"):
        quantize(torch.zeros(2), "fp64")


@st.composite
def _float_formats(draw):
    exp_bits = draw(st.integers(2, 8))
    man_bits = draw(st.integers(0 if exp_bits > 2 else 1, 10))
    specials = draw(st.sampled_from(["ieee", "fn", "fnuz", "none"]))
    if specials == "ieee" and exp_bits < 2:
        specials = "fn"
    return FloatFormat(exp_bits, man_bits, specials=specials,
                       subnormals=draw(st.booleans()))


@settings(max_examples=40, deadline=None)
@given(fmt=_float_formats(), data=st.lists(st.floats(width=64), min_size=1, max_size=40),
       rounding=st.sampled_from(ROUNDINGS), seed=st.integers(0, 2**64 - 1))
def test_hypothesis_custom_formats(fmt, data, rounding, seed):
    x = np.array(data, np.float64)
    expected = quantize(x, fmt, rounding, seed=seed)
    assert_same_bits(quantize(torch.from_numpy(x), fmt, rounding, seed=seed).numpy(), expected, x)


def test_sr_with_torch_philox_on_cpu(monkeypatch):
    monkeypatch.setattr(torch_backend, "TORCH_PHILOX_ON_CPU", True)
    fmt = get_format("e4m3fn")
    x = boundary_values(fmt, np.float64)
    _check_all_modes(x, fmt, sr_bits=(None, 4))


@pytest.mark.parametrize("name", ["e4m3fn", "bf16", "e8m0fnu"])
def test_general_path_alone_on_every_lane(name, monkeypatch):
    """The fast path covers carrier normals in the format's normal range; with it off, the
    general path must give the same bits on those lanes too."""
    _route(monkeypatch, "torch-general")
    fmt = get_format(name)
    x = boundary_values(fmt, np.float32)
    x = x[np.random.default_rng(8).choice(x.size, min(x.size, 3000), replace=False)]
    _check_all_modes(x, fmt, sr_bits=(None,))


def test_round_to_odd_without_mantissa_bits():
    """man_bits = 0: every significand is 1 (odd), so rto truncates (found by hypothesis)."""
    fmt = FloatFormat(5, 0, subnormals=False)
    x = np.array([129.0, 3.0, -5.0, 0.75])
    assert_same_bits(quantize(torch.from_numpy(x), fmt, "rto").numpy(), quantize(x, fmt, "rto"))


# ---- overflow="satfinite" and caller-given random bits (rbits) ----------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", [*SMALL, "fp16", "bf16"])
def test_satfinite_equals_numpy(name, dtype):
    fmt = get_format(name)
    x = boundary_values(fmt, dtype)
    top = float(fmt.max) if isinstance(fmt, FloatFormat) else float(fmt.k_max * fmt.quantum)
    x = x[~(np.abs(x) < top / 2)]  # the overflow region and the specials
    for rounding in ("rne", "rtz", "rup", "sr"):
        expected = quantize(x, fmt, rounding, overflow="satfinite", seed=4)
        got = quantize(torch.from_numpy(x), fmt, rounding, overflow="satfinite", seed=4)
        assert_same_bits(got.numpy(), expected, x, context=f"{name} {rounding} satfinite")


def _rbits_inputs(dtype):
    rng = np.random.default_rng(21)
    x = np.concatenate((rng.standard_normal(2000) * 100, rng.standard_normal(300) * 1e-3,
                        [0.0, -0.0, np.inf, -np.inf, np.nan, 1e30]))
    if dtype == np.float64:
        x = np.concatenate((x, 2.0 ** rng.uniform(-1074, -1000, 200)))
    return x.astype(dtype)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rdtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_rbits_equal_numpy(rdtype, dtype, fast, monkeypatch):
    """Every rbits width, sr_bits up to the width, fast path and general path, torch ops."""
    _route(monkeypatch, "torch" if fast else "torch-general")
    x = _rbits_inputs(dtype)
    width = 8 * np.dtype(rdtype).itemsize
    rbits = np.random.default_rng(width).integers(0, 2**width, x.size, dtype=rdtype)
    for name in ("e4m3fn", "bf16", "int8"):
        for sr_bits in sorted({1, 5, width}):
            expected = quantize(x, name, "sr", sr_bits=sr_bits, rbits=rbits)
            got = quantize(torch.from_numpy(x), name, "sr", sr_bits=sr_bits,
                           rbits=torch.from_numpy(rbits))
            assert_same_bits(got.numpy(), expected, x,
                             context=f"{name} {np.dtype(rdtype).name} sr_bits={sr_bits}")


def test_rbits_numba_route_layouts_and_bfloat16(monkeypatch):
    """The CPU default route (Numba kernels) and the torch ops agree on strided tensors and on
    bfloat16 input; element i takes rbits' element i in flat C order."""
    rng = np.random.default_rng(22)
    x = torch.from_numpy(rng.standard_normal((7, 9)) * 30)
    rbits = torch.from_numpy(rng.integers(0, 2**16, (7, 9), dtype=np.uint16))
    expected = quantize(np.ascontiguousarray(x.numpy().T), "e5m2", "sr", sr_bits=10,
                        rbits=np.ascontiguousarray(rbits.numpy().T))
    for route in ("numba", "torch"):
        _route(monkeypatch, route)
        got = quantize(x.t(), "e5m2", "sr", sr_bits=10, rbits=rbits.t())
        assert_same_bits(got.numpy(), expected)
        xb = x.to(torch.bfloat16)
        got_b = quantize(xb, "e4m3fn", "sr", sr_bits=7, rbits=rbits)
        assert got_b.dtype == torch.bfloat16
        assert_same_bits(got_b.float().numpy(), quantize(xb.float().numpy(), "e4m3fn", "sr",
                                                         sr_bits=7, rbits=rbits.numpy()))


def test_rbits_errors_name_the_parameter():
    x = torch.ones(3)
    good = torch.zeros(3, dtype=torch.uint8)
    with pytest.raises(TypeError, match="rbits must be a torch tensor"):
        quantize(x, "e4m3fn", "sr", sr_bits=2, rbits=np.zeros(3, np.uint8))
    with pytest.raises(TypeError, match=r"rbits.*unsigned.*int64"):
        quantize(x, "e4m3fn", "sr", sr_bits=2, rbits=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="rbits must have x's shape"):
        quantize(x, "e4m3fn", "sr", sr_bits=2, rbits=torch.zeros(2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="sr_bits=9"):
        quantize(x, "e4m3fn", "sr", sr_bits=9, rbits=good)
    with pytest.raises(ValueError, match="seed"):
        quantize(x, "e4m3fn", "sr", sr_bits=2, seed=1, rbits=good)
    with pytest.raises(ValueError, match="needs sr_bits"):
        quantize(x, "e4m3fn", "sr", rbits=good)
    with pytest.raises(ValueError, match="rounding='sr'"):
        quantize(x, "e4m3fn", "rne", rbits=good)


# ---- ties of the first 32-bit word: H_1 decides -------------------------------------------------
_M32 = 0xFFFFFFFF


def _tied_inputs(seed: int, n: int = 400) -> np.ndarray:
    """float64 values in e4m3fn's normal range whose 49 discarded bits start with the complement
    of the element's H_0 under `seed`: for every sr_bits >= 33 (and None) the first 32-bit chunk
    ties, and H_1 against the next bits decides (up for about half of them)."""
    rng = np.random.default_rng(seed)
    h0 = random_words(seed, n).astype(np.uint64)
    kept = rng.integers(0, 8, n, dtype=np.uint64) << np.uint64(49)
    low = rng.integers(0, 1 << 17, n, dtype=np.uint64)
    mantissa = kept | ((np.uint64(_M32) ^ h0) << np.uint64(17)) | low
    exponent = rng.integers(1023 - 6, 1023 + 8, n, dtype=np.uint64)  # 2^-6 .. 2^7
    sign = rng.integers(0, 2, n, dtype=np.uint64) << np.uint64(63)
    return (sign | (exponent << np.uint64(52)) | mantissa).view(np.float64)


@pytest.mark.parametrize("torch_ops", [True, False])
@pytest.mark.parametrize("route", ["torch", "torch-general"])
def test_ties_of_the_first_word_draw_the_second(route, torch_ops, monkeypatch):
    """sr_bits=None and 33..52 with H_0 tied: the fast path leaves those lanes to the general
    path, which draws H_1 (torch Philox or kernels.rng), as kernels.core and the exact twin do."""
    _route(monkeypatch, route)
    monkeypatch.setattr(torch_backend, "TORCH_PHILOX_ON_CPU", torch_ops)
    seed = 0x9E3779B97F4A7C15
    x = _tied_inputs(seed)
    for sr_bits in (None, 33, 40, 64):
        expected = quantize(x, "e4m3fn", "sr", sr_bits=sr_bits, seed=seed)
        assert_same_bits(expected, quantize_exact(x, "e4m3fn", "sr", sr_bits=sr_bits, seed=seed))
        up = np.abs(expected) > np.abs(x)
        assert 0.2 < up.mean() < 0.8  # H_1 decided both ways: H_0 alone would round all down
        got = quantize(torch.from_numpy(x), "e4m3fn", "sr", sr_bits=sr_bits, seed=seed)
        assert_same_bits(got.numpy(), expected, x, context=f"{route} sr_bits={sr_bits}")


@pytest.mark.parametrize("route", ["torch", "torch-general"])
def test_given_64_bit_words_with_tied_top_halves(route, monkeypatch):
    """Caller-given uint64 rbits at sr_bits=64 whose top 32 bits tie: their low 32 bits decide
    (kernels.core reads them from word0 << 32; nothing is drawn)."""
    _route(monkeypatch, route)
    x = _tied_inputs(7)
    mantissa = x.view(np.uint64) & np.uint64((1 << 52) - 1)
    f0 = (mantissa >> np.uint64(17)) & np.uint64(_M32)
    low = np.random.default_rng(8).integers(0, 1 << 32, x.size, dtype=np.uint64)
    rbits = ((np.uint64(_M32) ^ f0) << np.uint64(32)) | low
    expected = quantize(x, "e4m3fn", "sr", sr_bits=64, rbits=rbits)
    up = np.abs(expected) > np.abs(x)
    assert 0.2 < up.mean() < 0.8
    got = quantize(torch.from_numpy(x), "e4m3fn", "sr", sr_bits=64, rbits=torch.from_numpy(rbits))
    assert_same_bits(got.numpy(), expected, x)


def test_sr_up_crafted_words_against_the_core():
    """torch_backend._sr_up lane by lane against kernels.core.sr_round_up, with word0 crafted so
    that the first 32-bit chunk ties, over every sr_bits from 33 to 64 and None, shifts up to
    1100: the stream's H_1 (H_2, ...) at index >= 0, or a caller-given word's next 32 bits
    (index -1), decide."""
    rng = np.random.default_rng(31)
    seed = 12345
    lanes = []
    for _ in range(600):
        sr_bits = int(rng.choice([0, *range(33, 65)]))
        shift = int(rng.integers(34, 1100)) if rng.random() < 0.5 else int(rng.integers(34, 64))
        rem = int(rng.integers(1, 1 << min(shift, 53)))
        width = sr_bits or shift
        if sr_bits:
            big_f = rem >> (shift - sr_bits) if shift >= sr_bits else rem << (sr_bits - shift)
        else:
            big_f = rem
        f0 = (big_f >> (width - 32)) & _M32
        index = int(rng.integers(-1, 3)) if sr_bits else int(rng.integers(0, 3))
        if index < 0:  # caller-given R << (64 - sr_bits), top 32 bits tied
            given = ((_M32 ^ f0) << (sr_bits - 32)) | int(rng.integers(0, 1 << (sr_bits - 32)))
            word0 = given << (64 - sr_bits)
        else:  # the stream's H_0 << 32, tied; H_1, H_2, ... drawn at index
            word0 = (_M32 ^ f0) << 32
        lanes.append((rem, shift, sr_bits, word0, index))
    ups = 0
    for sr_bits in sorted({lane[2] for lane in lanes}):
        group = [lane for lane in lanes if lane[2] == sr_bits]
        rem, shift, _, word0, index = zip(*group, strict=True)
        word0_int64 = [w - (1 << 64) if w >> 63 else w for w in word0]  # the same 64 bits
        got = torch_backend._sr_up(torch.tensor(rem), torch.tensor(shift), sr_bits,
                                   torch.tensor(word0_int64), seed, torch.tensor(index))
        want = [bool(core.sr_round_up(np.uint64(r), np.int64(s), np.int64(sr_bits),
                                      np.uint64(w), np.uint64(seed), np.int64(i), np.uint64(0)))
                for r, s, _, w, i in group]
        assert got.tolist() == want, f"sr_bits={sr_bits}"
        ups += sum(want)
    assert 0.1 < ups / len(lanes) < 0.9  # the later words decided both ways
