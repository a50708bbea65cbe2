"""Stochastic rounding: neighbours only, exact probabilities, unbiasedness, reproducibility; the
block fills that feed it (kernels.rng.fill_blocks*) against NumPy's Philox."""

from __future__ import annotations

from fractions import Fraction

import numba
import numpy as np
import pytest

from refsim import quantize
from refsim.formats import get_format
from refsim.formats.exact import candidates, quantize_exact, sr_probability
from refsim.kernels import rng
from refsim.kernels.rng import random_words
from refsim.validation.bits import assert_same_bits


@pytest.mark.parametrize("name", ["e4m3fn", "e5m2", "bf16", "e2m1fn", "int8", "fx8.3"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_output_is_a_neighbour(name, dtype):
    fmt = get_format(name)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(5000) * 3).astype(dtype)
    y = quantize(x, fmt, "sr", overflow="saturate", seed=4)
    for xi, yi in zip(x.tolist(), y.tolist(), strict=True):
        lo, hi, _ = candidates(xi, fmt)
        clipped = [min(max(v, Fraction(getattr(fmt, "min", -fmt.max))), Fraction(fmt.max))
                   for v in (lo, hi)]
        assert Fraction(abs(yi)) in {lo, hi, *map(abs, clipped)}, (xi, yi)


@pytest.mark.parametrize("sr_bits", [1, 2, 3, 4])
def test_sr_bits_probability_is_exact_by_enumeration(sr_bits):
    """Enumerate every value of the top sr_bits random bits: the number of round-ups over the
    2^r equally likely values is floor(f * 2^r) exactly. The stream's top bits are uniform, so we
    pick, from the real stream, elements whose words cover all 2^r top-bit values."""
    r = sr_bits
    words = random_words(123, 4096)
    tops = (words >> np.uint32(32 - r)).astype(np.int64)
    pick = [int(np.flatnonzero(tops == t)[0]) for t in range(2**r)]
    fmt = get_format("e4m3fn")
    for f_num in range(0, 64):
        f = Fraction(f_num, 64)
        x = 1.0 + float(f) / 8  # quantum of e4m3 at 1.0 is 1/8
        arr = np.zeros(4096)
        arr[pick] = x
        y = quantize(arr, fmt, "sr", sr_bits=r, seed=123)[pick]
        ups = int(np.sum(y > 1.0))
        expected = sr_probability(x, fmt, sr_bits=r) * 2**r
        assert ups == expected == int(f * 2**r), (f, ups, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unbiased_with_fixed_seed(dtype):
    """Mean of SR(x) over many elements equals x within 5 standard errors (fixed seed)."""
    fmt = get_format("e4m3fn")
    n = 1 << 18
    for x in (1.03, -2.7, 300.5, 0.0031, 0.0007):
        arr = np.full(n, x, dtype)
        y = quantize(arr, fmt, "sr", seed=2024).astype(np.float64)
        lo, hi, f = candidates(float(arr[0]), fmt)
        p = float(f)
        sigma = float(hi - lo) * np.sqrt(p * (1 - p) / n)
        assert abs(y.mean() - float(arr[0])) <= 5 * sigma + 1e-300, (x, y.mean())


def test_same_seed_same_bits_other_seed_differs():
    x = np.random.default_rng(3).standard_normal(10000)
    a = quantize(x, "bf16", "sr", seed=1)
    assert_same_bits(a, quantize(x, "bf16", "sr", seed=1))
    assert not np.array_equal(a, quantize(x, "bf16", "sr", seed=2))


@pytest.mark.parametrize("rounding", ["rne", "rto", "sr"])
def test_one_and_two_threads_identical(rounding):
    x = np.random.default_rng(6).standard_normal(300_001).astype(np.float32) * 100
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = quantize(x, "e4m3fn", rounding, seed=8)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = quantize(x, "e4m3fn", rounding, seed=8)
    finally:
        numba.set_num_threads(before)
    assert_same_bits(one, two)


def test_deep_underflow_float64_uses_more_words():
    """A float64 input far below the quantum needs more than 64 random bits; the result is
    still 0 or the smallest subnormal, with probability ~ f (here tiny): all zeros."""
    x = np.full(1000, 2.0**-1000)
    y = quantize(x, "e4m3fn", "sr", seed=1)
    assert np.all(y == 0.0)


# ---- float32 lanes with more than 32 discarded bits: the first word decides unless it ties ------
_SMALLEST_QUANTUM = {"e4m3fn": -9, "int8": 0, "e2m1fn": -1}  # log2 of each format's finest step


def _tie_float32(quantum: int, first32: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float32 values below 2^quantum whose discarded fraction (d = 33..55 bits) starts with the
    32 bits `first32` (each below 2^24, nonzero); the fraction's bits after those are random."""
    top = np.floor(np.log2(first32.astype(np.float64))).astype(np.int64)  # first32's top bit
    k = 23 - top  # the significand's bits below the first 32 fraction bits; d = 32 + k
    low = rng.integers(0, 1 << 23, first32.size) & ((1 << k) - 1)
    sig = (first32.astype(np.int64) << k) | low
    return np.ldexp(sig.astype(np.float64), quantum - 32 - k).astype(np.float32)


@pytest.mark.parametrize("name", ["e4m3fn", "int8"])
def test_float32_lanes_whose_first_word_ties_draw_the_second(name):
    """Values far below the format's finest step (more than 32 discarded bits, region B of
    kernels.lane): the fast lanes decide them from H_0 alone, except where H_0 ties the
    fraction's first 32 bits; those come back UNDECIDED and the scalar core draws H_1. Crafted at
    the elements whose H_0 has 8 leading ones (so the tying fraction fits a float32), spread over
    many chunks; against the exact twin, and H_1 must have decided both ways."""
    seed, n = 0xC0FFEE, 1 << 14
    rng_ = np.random.default_rng(5)
    x = (rng_.standard_normal(n) * 4).astype(np.float32)
    h0 = random_words(seed, n).astype(np.int64)
    at = np.flatnonzero(h0 > 0xFF000000)
    x[at] = _tie_float32(_SMALLEST_QUANTUM[name], 0xFFFFFFFF - h0[at], rng_)
    x[at[::2]] *= -1
    got = quantize(x, name, "sr", seed=seed)
    assert_same_bits(got, quantize_exact(x, name, "sr", seed=seed), x)
    up = got[at] != 0
    assert at.size > 40 and 0.1 < up.mean() < 0.9  # H_0 alone would round every one down
    # caller-given bits: sr_bits=64 (and 40) words whose top 32 bits tie, the next ones decide
    for sr_bits in (64, 40):
        frac32 = np.uint64(0xFFFFFFFF) ^ (h0[at].astype(np.uint64))
        rbits = rng_.integers(0, 1 << 62, n, dtype=np.uint64) >> np.uint64(64 - sr_bits)
        rbits[at] = ((np.uint64(0xFFFFFFFF) ^ frac32) << np.uint64(sr_bits - 32)) | (
            rbits[at] & np.uint64((1 << (sr_bits - 32)) - 1))
        got = quantize(x, name, "sr", sr_bits=sr_bits, rbits=rbits)
        assert_same_bits(got, quantize_exact(x, name, "sr", sr_bits=sr_bits, rbits=rbits), x)
        assert 0.1 < (got[at] != 0).mean() < 0.9


# ---- caller-given random bits (rbits) -----------------------------------------------------------
def _mixed_inputs(dtype):
    """Normal values, the format's subnormal range, float64 deep underflow (pass 2 of the CPU
    kernel), specials."""
    rng = np.random.default_rng(12)
    x = np.concatenate((rng.standard_normal(3000) * 50, rng.standard_normal(500) * 1e-3,
                        [0.0, -0.0, np.inf, -np.inf, np.nan, 500.0, -460.0]))
    if dtype == np.float64:
        x = np.concatenate((x, 2.0 ** rng.uniform(-1074, -1000, 300)))
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sr_bits", [1, 7, 23, 32, 40, 64])
@pytest.mark.parametrize("name", ["e4m3fn", "bf16", "int8"])
def test_rbits_equal_to_the_streams_top_bits_give_the_stream_result(name, sr_bits, dtype):
    """By construction: with sr_bits=r the stream's decision reads the top r bits of
    u = 0.H_0 H_1 ..., so rbits = those bits gives the seeded result bit for bit (r > 32 takes
    H_1's top bits too)."""
    x = _mixed_inputs(dtype)
    top64 = (random_words(77, x.size).astype(np.uint64) << np.uint64(32)) | random_words(
        77, x.size, 1)
    rbits = top64 >> np.uint64(64 - sr_bits)
    got = quantize(x, name, "sr", sr_bits=sr_bits, rbits=rbits)
    assert_same_bits(got, quantize(x, name, "sr", sr_bits=sr_bits, seed=77), x)


@pytest.mark.parametrize("sr_bits", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rbits_probability_is_exact_by_enumeration(sr_bits, dtype):
    """Each of the 2^r values of R exactly once per input: floor(f * 2^r) round-ups."""
    r = sr_bits
    fmt = get_format("e4m3fn")
    f = np.arange(64) / 64
    x = np.repeat(1.0 + f / 8, 2**r).astype(dtype)  # quantum 1/8 at 1.0: fraction f
    rbits = np.tile(np.arange(2**r, dtype=np.uint8), f.size)
    ups = (quantize(x, fmt, "sr", sr_bits=r, rbits=rbits) > 1.0).reshape(f.size, 2**r)
    np.testing.assert_array_equal(ups.sum(axis=1), np.floor(f * 2**r))
    # the round-ups are the largest R: R + floor(f * 2^r) >= 2^r
    np.testing.assert_array_equal(ups, np.arange(2**r) + np.floor(f * 2**r)[:, None] >= 2**r)


def test_rbits_follow_the_flat_c_order_of_x_and_rbits():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((6, 40)) * 10
    rbits = rng.integers(0, 2**16, (6, 40), dtype=np.uint16)
    base = quantize(x, "e5m2", "sr", sr_bits=11, rbits=rbits)
    assert_same_bits(quantize(x.T, "e5m2", "sr", sr_bits=11, rbits=rbits.T), base.T)
    assert_same_bits(quantize(x[:, ::2], "e5m2", "sr", sr_bits=11, rbits=rbits[:, ::2]),
                     base[:, ::2])
    # element i is rounded with rbits element i, independently of every other element
    one = quantize(x[2:3, 5:6].copy(), "e5m2", "sr", sr_bits=11, rbits=rbits[2:3, 5:6].copy())
    assert_same_bits(one, base[2:3, 5:6])


def _numpy_blocks(seed, c0, c1, c2, c3, count):
    """Blocks at raw counters (c0 + b, c1, c2, c3), b < count, from numpy.random.Philox (which
    increments its 256-bit counter before each block; c0 >= 1 keeps the carry out of word 0)."""
    counter = (c0 - 1) + (c1 << 64) + (c2 << 128) + (c3 << 192)
    return np.random.Philox(key=seed, counter=counter).random_raw(4 * count)


@pytest.mark.parametrize("fill", [rng.fill_blocks, rng.fill_blocks_x8, rng.fill_blocks_fast])
@pytest.mark.parametrize("dtype", [np.uint64, np.uint32])
def test_fill_blocks_match_numpy(fill, dtype):
    """Every count around the 8- and 16-block vector widths (24, 25: sixteen, eight, one), odd
    start offsets, all four counter words set, uint32 outputs holding each word's two halves
    (low first: the stream's 32-bit words); nothing outside the range written."""
    seed = 0xFEEDFACECAFEBEEF
    keys = rng.round_keys(np.uint64(seed), np.uint64(0))
    per = 4 * (8 // np.dtype(dtype).itemsize)  # values per block
    for count in [*range(20), 24, 25, 33]:
        for start, c0 in ((0, 1), (3, 5 + count), (5, (1 << 63) + 7)):
            out = np.zeros(per * count + 9, dtype)
            fill(out, start, np.uint64(c0), count, 11, 1 << 40, 7, keys)
            raw = _numpy_blocks(seed, c0, 11, 1 << 40, 7, count)
            expected = raw if dtype == np.uint64 else raw.astype("<u8").view("<u4")
            np.testing.assert_array_equal(out[start:start + per * count], expected)
            assert not out[:start].any() and not out[start + per * count:].any()
    # Raw counters wrap in word 0 (no carry into word 1), as philox4x64_10's do.
    out = np.zeros(40, np.uint64)
    fill(out, 0, np.uint64((1 << 64) - 3), 10, 0, 2, 1, keys)
    words = [rng.philox4x64_10(np.uint64(((1 << 64) - 3 + b) % (1 << 64)), 0, 2, 1, seed, 0)
             for b in range(10)]
    np.testing.assert_array_equal(out, np.array(words, np.uint64).reshape(-1))
