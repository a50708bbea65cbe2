"""Philox4x64-10 stream throughput (refsim.kernels.rng) against NumPy's Philox, in one process.

    python -m bench.rng [--log2n 24] [--threads 1 2] [--repeat 7] [--cpu]

The unit is the stochastic-rounding stream's word: 32 bits, one per rounding (docs/rng.md).
Rows: ``rng.random_words`` (allocates its output, like NumPy), the fill kernel behind it on a
preallocated uint32 array, the same fill of 64-bit words (``raw_words``'s; per 32 bits),
``np.random.Philox.random_raw`` (single-threaded whatever the setting; per 32 bits of its output),
and for scale a parallel float32 copy of the same element count: stochastic rounding of float32
needs one stream word per element, so "ns/word" against the copy's "ns/elem" bounds what a
rounding kernel can reach. Times are medians of wall time; with --cpu, the best of --repeat of
the process's CPU time (all threads together), the figure to compare on a loaded machine.
"""

from __future__ import annotations

import argparse

import numba
import numpy as np

from bench.quantize import cpu_seconds
from bench.timing import median_seconds
from refsim.kernels import rng


@numba.njit(parallel=True, cache=True)
def _copy(src, dst):
    for i in numba.prange(src.size):
        dst[i] = src[i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2n", type=int, default=24)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    timer = cpu_seconds if args.cpu else median_seconds

    n = 1 << args.log2n
    seed = 0x5EED
    out = np.empty(n, dtype=np.uint32)
    out64 = np.empty(n // 2, dtype=np.uint64)
    src = np.ones(n, dtype=np.float32)
    dst = np.empty_like(src)

    # Same bits first: the benchmark is only meaningful for the stream it claims to time.
    check = min(n, 1 << 16) + 3
    expected = np.random.Philox(key=seed).random_raw((check + 1) // 2).astype("<u8").view("<u4")
    assert np.array_equal(rng.random_words(seed, check), expected[:check])

    rows = []
    numpy_s = timer(lambda: np.random.Philox(key=seed).random_raw(n // 2), args.repeat)
    rows.append(("numpy Philox.random_raw", 1, numpy_s))
    previous = numba.get_num_threads()
    try:
        for threads in args.threads:
            numba.set_num_threads(threads)
            rows.append(
                (
                    "rng.random_words",
                    threads,
                    timer(lambda: rng.random_words(seed, n), args.repeat),
                )
            )
            rows.append(
                (
                    "rng fill kernel (prealloc)",
                    threads,
                    timer(
                        lambda: rng._fill_words(np.uint64(seed), np.uint64(0), out), args.repeat
                    ),
                )
            )
            rows.append(
                (
                    "fill, 64-bit words (prealloc)",
                    threads,
                    timer(
                        lambda: rng._fill_words(np.uint64(seed), np.uint64(0), out64), args.repeat
                    ),
                )
            )
            rows.append(
                (
                    "float32 copy (numba prange)",
                    threads,
                    timer(lambda: _copy(src, dst), args.repeat),
                )
            )
    finally:
        numba.set_num_threads(previous)

    how = f"best CPU time of {args.repeat}" if args.cpu else f"median of {args.repeat}"
    print(f"# Philox4x64-10 stream, 2^{args.log2n} 32-bit words, {how}")
    header = ("what", "threads", "ms", "ns/word", "Mword/s", "x numpy")
    print("{:30s} {:>7s} {:>9s} {:>8s} {:>9s} {:>8s}".format(*header))
    for name, threads, seconds in rows:
        print(
            f"{name:30s} {threads:7d} {seconds * 1e3:9.2f} {seconds / n * 1e9:8.3f}"
            f" {n / seconds / 1e6:9.1f} {numpy_s / seconds:8.2f}"
        )


if __name__ == "__main__":
    main()
