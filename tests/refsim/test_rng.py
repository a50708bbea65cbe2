"""Philox4x64-10 stream (refsim.kernels.rng) against numpy.random.Philox and a pure-Python twin."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refsim.kernels import rng

MASK64 = (1 << 64) - 1
MASK256 = (1 << 256) - 1
U64_MAX = MASK64

# --------------------------------------------------------------------------------------------
# Independent twins: pure Python integers, and NumPy's generator
# --------------------------------------------------------------------------------------------


def py_philox4x64_10(ctr: tuple[int, int, int, int], key: tuple[int, int]) -> list[int]:
    """Philox4x64-10 on Python integers, written from the SC'11 description."""
    mult = (0xD2E7470EE14C6C93, 0xCA5A826395121157)
    weyl = (0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B)
    x = list(ctr)
    k = list(key)
    for rnd in range(10):
        if rnd:
            k = [(k[0] + weyl[0]) & MASK64, (k[1] + weyl[1]) & MASK64]
        p0 = mult[0] * x[0]
        p1 = mult[1] * x[2]
        x = [(p1 >> 64) ^ x[1] ^ k[0], p1 & MASK64, (p0 >> 64) ^ x[3] ^ k[1], p0 & MASK64]
    return x


def words_to_int(words) -> int:
    return sum(int(w) << (64 * i) for i, w in enumerate(words))


def int_to_words(value: int, count: int) -> list[int]:
    return [(value >> (64 * i)) & MASK64 for i in range(count)]


def numpy_block(ctr, key) -> list[int]:
    """Raw block at counter ``ctr`` from numpy: it increments the counter before each block."""
    counter = (words_to_int(ctr) - 1) & MASK256
    bitgen = np.random.Philox(key=words_to_int(key), counter=counter)
    return [int(w) for w in bitgen.random_raw(4)]


def numpy_block_via_state(ctr, key) -> list[int]:
    """Same, with the counter and key written through numpy's ``state`` dict."""
    bitgen = np.random.Philox(key=0)
    state = bitgen.state
    previous = (words_to_int(ctr) - 1) & MASK256
    state["state"]["counter"] = np.array(int_to_words(previous, 4), dtype=np.uint64)
    state["state"]["key"] = np.array(list(key), dtype=np.uint64)
    state["buffer_pos"] = 4  # buffer exhausted: the next draw computes a fresh block
    bitgen.state = state
    return [int(w) for w in bitgen.random_raw(4)]


def raw_block(ctr, key) -> list[int]:
    out = rng.philox4x64_10(*(np.uint64(c) for c in ctr), *(np.uint64(k) for k in key))
    return [int(w) for w in out]


def numpy_word(seed: int, index: int, j: int) -> int:
    """The documented stream definition, literally: half index % 2 (low half first) of 64-bit
    word (index // 2) % 4 of the block at counter index // 8 + 1 (NumPy counts from c + 1)."""
    bitgen = np.random.Philox(key=seed, counter=(index // 8) + (j << 64))
    raw = int(bitgen.random_raw(4)[(index // 2) % 4])
    return (raw >> (32 * (index % 2))) & 0xFFFFFFFF


def numpy_halves(seed: int, n: int, j: int = 0) -> np.ndarray:
    """H_j of elements 0 .. n-1: NumPy's first (n + 1) // 2 words split into 32-bit halves."""
    raw = np.random.Philox(key=seed, counter=j << 64).random_raw((n + 1) // 2)
    return raw.astype("<u8").view("<u4")[:n]


@numba.njit
def _mulhilo64_cpu(a, b):
    return rng.mulhilo64(a, b)


RANDOM = np.random.default_rng(20240601)
RANDOM_KEY = int(RANDOM.integers(0, 2**64, dtype=np.uint64))

KEYS = [
    (0, 0),
    (1, 0),
    (U64_MAX, 0),
    (RANDOM_KEY, 0),
    (0x0123456789ABCDEF, 0xFEDCBA9876543210),  # both key words (not used by the stream)
]
COUNTERS = [
    (0, 0, 0, 0),
    (1, 0, 0, 0),
    (2, 0, 0, 0),
    (U64_MAX - 1, 0, 0, 0),
    (U64_MAX, 0, 0, 0),  # numpy gets here from c0 = 2^64 - 2 without a carry ...
    (0, 1, 0, 0),  # ... and here from c0 = 2^64 - 1 with one
    (U64_MAX, 3, 0, 0),
    (5, U64_MAX, 0, 0),
    (7, 1, 2**63, 1),
    (U64_MAX, U64_MAX, U64_MAX, U64_MAX),
    tuple(int(w) for w in RANDOM.integers(0, 2**64, size=4, dtype=np.uint64)),
]

# Published Random123 known-answer vectors for philox4x64_10: (counter, key, output).
KAT = [
    ((0, 0, 0, 0), (0, 0),
     (0x16554D9ECA36314C, 0xDB20FE9D672D0FDC, 0xD7E772CEE186176B, 0x7E68B68AEC7BA23B)),
    ((U64_MAX,) * 4, (U64_MAX, U64_MAX),
     (0x87B092C3013FE90B, 0x438C3C67BE8D0224, 0x9CC7D7C69CD777B6, 0xA09CAEBF594F0BA0)),
    ((0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89),
     (0x452821E638D01377, 0xBE5466CF34E90C6C),
     (0xA528F45403E61D95, 0x38C72DBD566E9788, 0xA5A1610E72FD18B5, 0x57BD43B5E52B7FE6)),
]  # fmt: skip


# --------------------------------------------------------------------------------------------
# The raw block function
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("ctr", COUNTERS)
def test_raw_block_matches_numpy(ctr, key):
    assert raw_block(ctr, key) == numpy_block(ctr, key)


@pytest.mark.parametrize("ctr, key, expected", KAT)
def test_known_answers(ctr, key, expected):
    assert raw_block(ctr, key) == list(expected)
    assert numpy_block_via_state(ctr, key) == list(expected)
    assert py_philox4x64_10(ctr, key) == list(expected)


@pytest.mark.parametrize("key", KEYS[:3])
@pytest.mark.parametrize("ctr", [(1, 0, 0, 0), (U64_MAX, 0, 0, 0), (0, 1, 0, 0), COUNTERS[-1]])
def test_raw_block_matches_numpy_state_dict(ctr, key):
    assert raw_block(ctr, key) == numpy_block_via_state(ctr, key)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("ctr", COUNTERS[::3])
def test_python_twin(ctr, key):
    assert py_philox4x64_10(ctr, key) == raw_block(ctr, key)


def test_argument_types_are_cast():
    # Plain Python / int64 arguments must give the same bits as uint64 ones.
    ctr, key = (3, 1, 0, 0), (12345, 0)
    assert [int(w) for w in rng.philox4x64_10(*ctr, *key)] == py_philox4x64_10(ctr, key)
    assert rng.stream_word(12345, 13, 1) == rng.stream_word(np.uint64(12345), 13, np.uint64(1))


@settings(max_examples=200, deadline=None)
@given(
    ctr=st.tuples(*[st.integers(0, U64_MAX)] * 4),
    key=st.tuples(st.integers(0, U64_MAX), st.integers(0, U64_MAX)),
)
def test_raw_block_property(ctr, key):
    expected = numpy_block(ctr, key)
    assert raw_block(ctr, key) == expected
    assert py_philox4x64_10(ctr, key) == expected


# --------------------------------------------------------------------------------------------
# 64 x 64 -> 128 multiply
# --------------------------------------------------------------------------------------------

MUL_EDGES = [
    0,
    1,
    2,
    0xFFFFFFFF,
    0x100000000,
    0xFFFFFFFFFFFF,
    2**63 - 1,
    2**63,
    U64_MAX - 1,
    U64_MAX,
]


@pytest.mark.parametrize("impl", ["portable", "cpu", "python"])
def test_mulhilo64(impl):
    fn = {
        "portable": rng.mulhilo64_portable,
        "cpu": _mulhilo64_cpu,
        "python": rng.mulhilo64,
    }[impl]
    others = [int(v) for v in RANDOM.integers(0, 2**64, size=40, dtype=np.uint64)]
    values = MUL_EDGES + others + [0xD2E7470EE14C6C93, 0xCA5A826395121157]
    for a in values:
        for b in values[::3]:
            hi, lo = fn(np.uint64(a), np.uint64(b))
            assert (int(hi) << 64) | int(lo) == a * b, (a, b)


# --------------------------------------------------------------------------------------------
# The stochastic-rounding stream
# --------------------------------------------------------------------------------------------

SEEDS = [0, 1, U64_MAX, RANDOM_KEY]
INDICES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 1001, 2**32 + 2, 8 * (2**40) + 7, 2**63 - 1]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("j", [0, 1, 2, U64_MAX])
def test_stream_word_matches_definition(seed, j):
    for index in INDICES:
        assert int(rng.stream_word(np.uint64(seed), index, np.uint64(j))) == numpy_word(
            seed, index, j
        ), (seed, index, j)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("j", [0, 5])
def test_stream_block_holds_eight_words(seed, j):
    for block in [0, 1, 250, 2**60 - 1]:
        words = [int(w) for w in rng.stream_block(np.uint64(seed), block, np.uint64(j))]
        assert words == py_philox4x64_10((block + 1, j, 0, 0), (seed, 0))
        halves = [int(rng.block_word(*(np.uint64(w) for w in words), 8 * block + lane))
                  for lane in range(8)]
        assert halves == [numpy_word(seed, 8 * block + lane, j) for lane in range(8)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 17, 1001, 8195])
def test_random_words_matches_numpy(seed, n):
    got = rng.random_words(seed, n)
    assert got.dtype == np.uint32
    assert got.shape == (n,)
    np.testing.assert_array_equal(got, numpy_halves(seed, n))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 1001, 4099])
def test_raw_words_are_numpys(seed, n):
    got = rng.raw_words(seed, n)
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got, np.random.Philox(key=seed).random_raw(n))


@pytest.mark.parametrize("j", [1, 2, U64_MAX])
def test_random_words_higher_words(j):
    n = 1027
    got = rng.random_words(RANDOM_KEY, n, j)
    np.testing.assert_array_equal(got, numpy_halves(RANDOM_KEY, n, j))
    np.testing.assert_array_equal(
        got[[0, 5, 1026]], [numpy_word(RANDOM_KEY, i, j) for i in (0, 5, 1026)]
    )


def test_random_words_agrees_with_stream_word():
    seed, n = 987654321, 203
    words = rng.random_words(seed, n, 3)
    assert [int(w) for w in words] == [
        int(rng.stream_word(np.uint64(seed), i, 3)) for i in range(n)
    ]


@pytest.mark.parametrize(
    "kwargs", [{"seed": -1, "n": 4}, {"seed": 2**64, "n": 4}, {"seed": 0, "n": -1},
               {"seed": 0, "n": 4, "j": -1}, {"seed": 0, "n": 4, "j": 2**64}]
)  # fmt: skip
def test_random_words_rejects_out_of_range(kwargs):
    with pytest.raises(ValueError):
        rng.random_words(**kwargs)


def test_determinism_across_calls_and_threads():
    n = (1 << 16) + 3
    first = rng.random_words(42, n)
    np.testing.assert_array_equal(first, rng.random_words(42, n))
    previous = numba.get_num_threads()
    try:
        results = []
        for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            numba.set_num_threads(threads)
            results.append(rng.random_words(42, n))
    finally:
        numba.set_num_threads(previous)
    for got in results:
        np.testing.assert_array_equal(got, first)
    # A prefix is the prefix: the stream does not depend on how much is drawn.
    np.testing.assert_array_equal(rng.random_words(42, 1000), first[:1000])


# --------------------------------------------------------------------------------------------
# Statistical sanity (fixed seeds, loose bounds: catches broken wiring, not subtle bias)
# --------------------------------------------------------------------------------------------


def _bits(words: np.ndarray) -> np.ndarray:
    """(n, w) array of the bits of unsigned words (w = their width), least significant first."""
    width = 8 * words.dtype.itemsize
    wide = words.astype(np.uint64)
    return ((wide[:, None] >> np.arange(width, dtype=np.uint64)) & np.uint64(1)).astype(np.int64)


def _assert_balanced(bits: np.ndarray, label: str = "", sigmas: float = 5.0):
    n = bits.shape[0]
    ones = bits.sum(axis=0)
    bound = sigmas * np.sqrt(n / 4)
    assert np.all(np.abs(ones - n / 2) < bound), (label, ones)


@pytest.mark.parametrize("seed", [0, 1, 0xDEADBEEF])
def test_bit_balance_per_position(seed):
    words = rng.random_words(seed, 1 << 16)
    bits = _bits(words)
    _assert_balanced(bits)
    # Each output lane (element index mod 8: a 64-bit word's half of a block) on its own.
    for lane in range(8):
        _assert_balanced(bits[lane::8], f"lane {lane}")


def test_streams_are_unrelated():
    n = 1 << 15
    base = rng.random_words(7, n)
    neighbours = {
        "seed+1": rng.random_words(8, n),
        "j=1": rng.random_words(7, n, 1),
        "next element": np.roll(base, -1),
        "next block": np.roll(base, -8),
    }
    for name, other in neighbours.items():
        _assert_balanced(_bits(base ^ other), name)


def test_top_byte_uniform():
    words = rng.random_words(2024, 1 << 18)
    counts = np.bincount((words >> np.uint32(24)).astype(np.int64), minlength=256)
    expected = words.size / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # 255 degrees of freedom: mean 255, sd ~22.6; the bound is ~6.5 sd out.
    assert 100 < chi2 < 400, chi2
