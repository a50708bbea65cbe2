"""2-D block tiles, fp32 scales, every E8M0 scale rule and four-over-six: refsim.quantize_blocks
against the Fraction twin (refsim.formats.exact_block), bit for bit, and the facts the docs state
(docs/blocks.md).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refsim import AccumSpec, Cast, GemmSpec, conv2d, matmul, quantize_blocks
from refsim.formats import NAMED_BLOCKS, BlockFormat, get_format
from refsim.formats.exact_block import quantize_blocks_exact
from refsim.formats.policy import ROUNDINGS

E8M0 = get_format("e8m0fnu")
E2M1 = get_format("e2m1fn")

# One format of each scale kind, with 3x4 tiles (block_size 4 along the axis, 3 across it).
KINDS = {
    "e8m0-floor": ("e4m3fn", E8M0, "floor", False),
    "e8m0-ceil": ("e2m1fn", E8M0, "ceil", False),
    "e8m0-even": ("e4m3fn", E8M0, "even", False),
    "e8m0-rceil": ("e2m1fn", E8M0, "rceil", False),
    "e4m3-nearest-tensor": ("e2m1fn", "e4m3fn", "nearest", True),
    "e4m3-rceil": ("e2m1fn", "e4m3fn", "rceil", False),
    "fp32-nearest": ("e4m3fn", "fp32", "nearest", False),
    "fp32-rceil": ("e5m2", "fp32", "rceil", False),
    "4over6-tensor": ("e2m1fn", "e4m3fn", "4over6", True),
    "4over6": ("e2m1fn", "e4m3fn", "4over6", False),
}


def kind_format(kind: str, block_size: int = 4, rows: int = 3, axis: int = -1) -> BlockFormat:
    element, scale, rule, tensor = KINDS[kind]
    return BlockFormat(element, block_size, scale, rule, axis, tensor, rows)


def same(a, b) -> bool:
    """Bitwise equality up to NaN payloads (NaN as NaN, zeros by sign)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    nan = np.isnan(a)
    return bool(np.array_equal(nan, np.isnan(b))
                and np.array_equal(np.where(nan, 0, a), np.where(nan, 0, b))
                and np.array_equal(np.signbit(a[~nan]), np.signbit(b[~nan])))


def tile_data(seed: int, shape: tuple[int, ...], dtype, special: bool) -> np.ndarray:
    """Magnitudes over a wide range (scaled per row, so tiles differ), zeros, -0, dyadic ties,
    an all-zero tile at [..., :3, :4]; with `special` a NaN and an Inf in the tile at
    [..., 3:6, 4:8] (the rest stays finite)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-20, 20, shape[:-1]))[..., None]
    small = rng.random(shape) < 0.25
    x[small] = rng.integers(-64, 64, int(small.sum())) / 8.0
    x[rng.random(shape) < 0.05] = -0.0
    x[..., :3, :4] = 0.0
    if special:
        r, c = shape[-2], shape[-1]  # positions wrap in arrays smaller than 6 x 7
        x[..., 4 % r, 5 % c] = np.nan
        x[..., 5 % r, 6 % c] = -np.inf
    return x.astype(dtype)


def check(x: np.ndarray, fmt: BlockFormat, rounding: str, axis: int, seed: int = 3) -> None:
    sr_bits = 8 if rounding == "sr" and not fmt.pow2_scale else None
    got = quantize_blocks(x, fmt, rounding, axis=axis, sr_bits=sr_bits, seed=seed,
                          return_codes=True)
    want, scales, tensor_scale = quantize_blocks_exact(x, fmt, rounding, axis, sr_bits, seed)
    bad = ~((got.values == want) | (np.isnan(got.values) & np.isnan(want)))
    assert same(got.values, want), (x[bad], got.values[bad], want[bad])
    assert same(got.scales, scales) and got.tensor_scale == tensor_scale
    assert same(quantize_blocks(x, fmt, rounding, axis=axis, sr_bits=sr_bits, seed=seed), want)


# ---- tiles against the twin --------------------------------------------------------------------
def _kind_rounding_pairs() -> list:
    """Every (kind, rounding) pair; the fast tier takes every kind under rne and sr and every
    rounding under two kinds (one power-of-two, one value scale), the rest is slow."""
    fast_kinds = ("e8m0-floor", "e4m3-nearest-tensor")
    return [pytest.param(k, r, marks=() if r in ("rne", "sr") or k in fast_kinds
                         else pytest.mark.slow) for r in ROUNDINGS for k in KINDS]


@pytest.mark.parametrize(("kind", "rounding"), _kind_rounding_pairs())
def test_tiles_against_twin(kind, rounding):
    """Every scale kind x every rounding, tiles along both of the last two axes, with edge
    tiles in both directions (8 x 11 in 3 x 4 tiles), a zero tile, a NaN/Inf tile."""
    for axis in (-1, -2):
        for special in (False, True):
            x = tile_data(len(kind) + special, (8, 11), np.float32, special)
            check(x, kind_format(kind), rounding, axis)


@pytest.mark.parametrize("kind", ["e8m0-even", "e4m3-nearest-tensor", "fp32-rceil", "4over6"])
def test_tiles_float64_against_twin(kind):
    x = tile_data(9, (7, 10), np.float64, True)
    for rounding in ("rne", "rdn", "sr"):
        check(x, kind_format(kind, 3, 2), rounding, -1)
        check(x, kind_format(kind, 3, 2), rounding, -2)


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=2, max_size=3), block_size=st.integers(1, 6),
       rows=st.integers(1, 6), kind=st.sampled_from(list(KINDS)), axis=st.sampled_from([-1, -2]),
       rounding=st.sampled_from(["rne", "rtz", "rup", "sr"]), seed=st.integers(0, 2**16))
def test_hypothesis_tiles(shape, block_size, rows, kind, axis, rounding, seed):
    x = tile_data(seed, tuple(shape), np.float32, False) if shape[-2] >= 3 and shape[-1] >= 4 \
        else np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    check(x, kind_format(kind, block_size, rows), rounding, axis, seed)


def test_one_row_tiles_are_1d_blocks_and_a_tile_is_its_rows_together():
    """block_rows 1 is the 1-D format; a tile of r rows equals quantizing the r rows as one
    1-D block (the tile laid out along the axis) in deterministic modes."""
    x = tile_data(1, (6, 8), np.float32, False)
    flat = BlockFormat("e4m3fn", 4, E8M0, "rceil")
    assert same(quantize_blocks(x, BlockFormat("e4m3fn", 4, E8M0, "rceil", block_rows=1)),
                quantize_blocks(x, flat))
    tiled = quantize_blocks(x, BlockFormat("e4m3fn", 4, E8M0, "rceil", block_rows=2))
    # rows 2i, 2i+1 and columns 4j..4j+3 form a tile: lay each tile out as one block of 8
    laid = x.reshape(3, 2, 2, 4).transpose(0, 2, 1, 3).reshape(3, 2, 8)
    want = quantize_blocks(laid, BlockFormat("e4m3fn", 8, E8M0, "rceil"))
    assert same(tiled, want.reshape(3, 2, 2, 4).transpose(0, 2, 1, 3).reshape(6, 8))


def test_edge_tiles_are_scaled_from_their_own_elements():
    """5 x 5 in 4 x 4 tiles: the edge tiles (1 row, 1 column, 1 element) take their own amax."""
    x = np.full((5, 5), 1.0, np.float32)
    x[4, :] = 100.0  # the bottom edge tiles' max
    x[:, 4] = 0.01  # the right edge tiles' max (but the corner)
    x[4, 4] = -3.0
    r = quantize_blocks(x, BlockFormat("e4m3fn", 4, E8M0, "floor", block_rows=4),
                        return_codes=True)
    assert r.scales.tolist() == [[2.0**-8, 2.0**-15], [2.0**-2, 2.0**-7]]
    assert same(r.values, quantize_blocks_exact(x, r_fmt := BlockFormat(
        "e4m3fn", 4, E8M0, "floor", block_rows=4))[0]) and r_fmt.tile == (4, 4)


def test_zero_and_nonfinite_tiles():
    """A zero tile takes the smallest scale (E8M0 2^-127; E4M3 and fp32: 0, elements 0); a tile
    holding NaN or Inf has a NaN scale and only NaN elements; the other tiles are unaffected."""
    x = np.full((4, 4), 6.0, np.float32)
    x[:2, :2] = 0.0
    x[2, 3] = np.inf
    for scale, rule, zero in ((E8M0, "floor", 2.0**-127), ("e4m3fn", "nearest", 0.0),
                              ("fp32", "nearest", 0.0)):
        r = quantize_blocks(x, BlockFormat("e2m1fn", 2, scale, rule, block_rows=2),
                            return_codes=True)
        assert r.scales[0, 0] == zero and np.isnan(r.scales[1, 1])
        assert np.all(np.isnan(r.values[2:, 2:])) and np.all(r.values[:2, :2] == 0)
        assert np.all(r.values[:2, 2:] == 6) and np.all(r.values[2:, :2] == 6)


def test_2d_tiles_refuse_other_axes():
    fmt = NAMED_BLOCKS["nvfp4_16x16"]
    with pytest.raises(ValueError, match=r"axis must be -1 or -2 \(of 3\); got axis=0"):
        quantize_blocks(np.ones((2, 3, 4), np.float32), fmt, axis=0)
    with pytest.raises(ValueError, match="x must have at least 2 dimensions, got 1"):
        quantize_blocks(np.ones(4, np.float32), fmt)


# ---- GemmSpec operands --------------------------------------------------------------------------
def test_matmul_tiles_over_mk_and_kn():
    """a's tiles are (M, K) block_rows x block_size, b's (K, N) block_size x block_rows: the
    block_size side runs along K in both. The product is that of the cast operands."""
    rng = np.random.default_rng(2)
    a = (rng.standard_normal((2, 9, 20)) * np.exp2(rng.integers(-6, 6, (2, 9, 1)))).astype(
        np.float32)
    b = (rng.standard_normal((20, 7)) * np.exp2(rng.integers(-6, 6, (1, 7)))).astype(np.float32)
    for name in ("nvfp4_16x16", "deepseek_128x128", "deepseek_128x128_ue8m0"):
        fmt = NAMED_BLOCKS[name]
        fmt = BlockFormat(fmt.element, 8, fmt.scale, fmt.scale_rule, -1, fmt.tensor_scale, 4)
        spec = GemmSpec(a=Cast(fmt), b=Cast(fmt, "sr", sr_bits=None if fmt.pow2_scale else 8),
                        acc=AccumSpec("fp32"))
        qa = quantize_blocks_exact(a, fmt, "rne", -1)[0]
        qb = quantize_blocks_exact(b, fmt, "sr", -2, None if fmt.pow2_scale else 8, seed=1)[0]
        plain = GemmSpec(acc=AccumSpec("fp32"))
        assert same(matmul(a, b, spec), matmul(qa, qb, plain)), name
        scales_b = quantize_blocks(b, fmt, axis=-2, return_codes=True).scales
        assert scales_b.shape == (3, 2)  # K = 20 in 3 blocks of 8, N = 7 in 2 tiles of 4


def test_spec_round_trip_and_conv_refuses_tiles():
    fmt = BlockFormat("e4m3fn", 32, "fp32", "nearest", block_rows=8)
    spec = GemmSpec(a=Cast(fmt), b=Cast("nvfp4_4over6_16x16"), acc=AccumSpec("fp32"))
    assert GemmSpec.from_toml(spec.to_toml()) == spec
    assert GemmSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match=r"conv2d: spec.b is nvfp4_16x16, a format of 2-D tiles"):
        conv2d(np.ones((1, 2, 3, 3), np.float32), np.ones((1, 2, 1, 1), np.float32),
               GemmSpec(b=Cast("nvfp4_16x16"), acc=AccumSpec("fp32")))


# ---- E8M0 rules: every one reachable ------------------------------------------------------------
@pytest.mark.parametrize("element", ["e4m3fn", "e2m1fn"])
@pytest.mark.parametrize("rows", [1, 2])
def test_every_pow2_rule_reaches_its_own_scale(element, rows):
    """A block (or tile) max of significand m in 2^5's binade gets 2^(5 - emax + k): floor k = 0;
    ceil k = 1 unless m = 1; even k = 1 when m rounded to the element's precision is 2; rceil
    k = 1 when m exceeds the element's top significand (1.75 for e4m3fn, 1.5 for e2m1fn). The
    significands hit each rule's boundary from both sides, so every rule gives a scale no other
    rule gives on some block."""
    emax, top, precision = (8, 1.75, 4) if element == "e4m3fn" else (2, 1.5, 2)
    sigs = [1.0, 1.5, 1.625, 1.8, 1.9375, 1.96875]
    expect = {"floor": [0] * 6, "ceil": [0, 1, 1, 1, 1, 1],
              "even": [int(round(m * 2 ** (precision - 1)) == 2**precision) for m in sigs],
              "rceil": [int(m > top) for m in sigs]}
    # the rules disagree pairwise somewhere (each reachable on its own)
    rules = list(expect)
    assert all(expect[p] != expect[q] for p in rules for q in rules if p < q)
    x = np.full((rows, 4 * len(sigs)), 0.25, np.float32)
    x[0, ::4] = np.array(sigs) * 2.0**5
    for rule, ks in expect.items():
        fmt = BlockFormat(element, 4, E8M0, rule, block_rows=rows)
        r = quantize_blocks(x, fmt, return_codes=True)
        assert r.scales[0].tolist() == [2.0 ** (5 - emax + k) for k in ks], rule
        assert same(r.values, quantize_blocks_exact(x, fmt)[0])


# ---- fp32 scales ---------------------------------------------------------------------------------
def test_fp32_scale_is_amax_over_elem_max_in_float32():
    """DeepSeek-V3's scale: amax / 448 divided in float32 (IEEE division: the exact quotient
    rounded to nearest); rceil rounds it up instead."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((64, 128)) * np.exp2(rng.integers(-30, 30, (64, 1)))).astype(
        np.float32)
    amax = np.abs(x).max(axis=1, keepdims=True)
    r = quantize_blocks(x, "deepseek_1x128", return_codes=True)
    assert np.array_equal(r.scales, (amax / np.float32(448)).astype(np.float64))
    up = quantize_blocks(x, BlockFormat("e4m3fn", 128, "fp32", "rceil"), return_codes=True)
    exact = [Fraction(float(a)) / 448 for a in amax.ravel()]
    assert all(Fraction(s) >= q for s, q in zip(up.scales.ravel(), exact, strict=True))
    assert all(np.nextafter(np.float32(s), np.float32(0)) < q
               for s, q in zip(up.scales.ravel(), exact, strict=True))


def test_fp32_scale_elements_round_once_from_the_exact_quotient():
    """x / s is rounded once to e4m3 from its exact value; DeepSeek's kernel rounds x / s to
    float32 first. On an x whose quotient lies just above an e4m3 tie (17, between 16 and 18),
    within half a float32 ulp of it, the float32 quotient is the tie itself, which rounds to even
    (16); the exact quotient rounds up (18). refsim and the twin take 18."""
    fmt = NAMED_BLOCKS["deepseek_1x128"]
    amax = np.float32(448 + 26 * 2.0**-15)
    s = amax / np.float32(448)  # 1 + 15 * 2^-23
    found = None
    for k in range(-64, 64):
        x = np.float32(17 + k * 2.0**-19)
        exact = Fraction(float(x)) / Fraction(float(s))
        if np.float32(x) / s == 17 and exact > 17:
            found = x
            break
    assert found is not None
    block = np.array([amax, found], np.float32)
    r = quantize_blocks(block, fmt, return_codes=True)
    assert r.scales[0] == float(s)
    assert same(r.values, quantize_blocks_exact(block, fmt)[0])
    assert fmt.element.decode(r.codes)[1] == 18.0  # DeepSeek's double rounding gives 16


# ---- four over six -------------------------------------------------------------------------------
FOUR_SIX = BlockFormat("e2m1fn", 4, "e4m3fn", "4over6")


@pytest.mark.parametrize(("block", "wins", "values"), [
    # max 4: scale 4/6 rounds to 0.6875 and 4 lands on 6 * 0.6875 = 4.125; scale 1 holds it.
    ([4.0, 3.0, 2.0, 1.0], 4, [4.0, 3.0, 2.0, 1.0]),
    # 0.5 is exact with scale 1 (6 wins); with scale 1.5 it becomes 0.75.
    ([6.0, 0.5, 0.0, 0.0], 6, [6.0, 0.5, 0.0, 0.0]),
    # 0.75 is a tie of scale 1's grid (to 1.0, error 0.25) and exact with 1.5 (0.5 * 1.5).
    ([6.0, 0.75, 0.0, 0.0], 4, [6.0, 0.75, 0.0, 0.0]),
    # a tie with different blocks: 1.25 goes to 1.0 (scale 1) or 1.5 (scale 1.5), error
    # 0.25 either way; a tie keeps 6.
    ([6.0, 1.25, 0.0, 0.0], 6, [6.0, 1.0, 0.0, 0.0]),
    # the same block either way (a trivial tie): 6.
    ([6.0, 0.0, 0.0, 0.0], 6, [6.0, 0.0, 0.0, 0.0]),
])
def test_four_over_six_choices(block, wins, values):
    x = np.array(block, np.float32)
    r = quantize_blocks(x, FOUR_SIX, return_codes=True)
    scale = Fraction(float(r.scales[0]))
    assert scale == Fraction(max(block)) / wins
    assert r.values.tolist() == values
    assert same(r.values, quantize_blocks_exact(x, FOUR_SIX)[0])
    six = BlockFormat("e2m1fn", 4, "e4m3fn", "nearest")
    errors = {k: sum((Fraction(float(v)) - Fraction(float(b))) ** 2
                     for v, b in zip(q, x, strict=True))
              for k, q in ((6, quantize_blocks(x, six)), (4, r.values))}
    assert errors[4] <= errors[6]


def test_four_over_six_tensor_scale_uses_256():
    x = np.array([[1536.0, 1.0], [3.0, -700.0]], np.float32)
    r = quantize_blocks(x, "nvfp4_4over6", return_codes=True)
    assert r.tensor_scale == 1.0  # 1536 / (6 * 256)
    assert quantize_blocks(x, "nvfp4", return_codes=True).tensor_scale == float(
        np.float32(1536) / np.float32(6 * 448))


def test_four_over_six_exact_fallback_on_near_ties():
    """Blocks built as ties of the two sums: the float filter cannot decide them, the exact
    sums do, and the twin agrees (tie: 6)."""
    base = np.array([6.0, 1.25, 0.0, 0.0], np.float32)
    x = np.stack([base * np.float32(2.0**k) for k in range(-20, 20, 3)])
    check(x, FOUR_SIX, "rne", -1)
    check(x.astype(np.float64), FOUR_SIX, "rtz", -1)


# ---- sweeps (slow) -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("rounding", ["rne", "rtz", "rna"])
def test_four_over_six_every_pair(rounding):
    """Every block of two values k/4, |k| <= 28 (the e2m1 grid, its midpoints and quarter points
    under scales near 1): the choice, its ties and the elements, against the twin."""
    grid = np.arange(-28, 29) / 4.0
    x = np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 2).astype(np.float32)
    check(x, BlockFormat("e2m1fn", 2, "e4m3fn", "4over6"), rounding, -1)
    check(x.T.copy(), BlockFormat("e2m1fn", 2, "e4m3fn", "4over6", block_rows=3), rounding, -1)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(shape=st.lists(st.integers(1, 12), min_size=2, max_size=3), block_size=st.integers(1, 8),
       rows=st.integers(1, 8), kind=st.sampled_from(list(KINDS)), axis=st.sampled_from([-1, -2]),
       rounding=st.sampled_from(ROUNDINGS), dtype=st.sampled_from(["f4", "f8"]),
       seed=st.integers(0, 2**16))
def test_hypothesis_tiles_sweep(shape, block_size, rows, kind, axis, rounding, dtype, seed):
    big = shape[-2] >= 3 and shape[-1] >= 4
    x = tile_data(seed, tuple(shape), np.dtype(dtype), seed % 2 == 1) if big \
        else np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    check(x, kind_format(kind, block_size, rows), rounding, axis, seed)
