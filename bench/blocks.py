"""MXFP8 block quantize throughput against plain e4m3fn quantize, in one process.

    python -m bench.blocks [--log2n 24] [--threads 1 2] [--repeat 7]

On 2^log2n float32 elements (standard normal x 8, shape (2^(log2n-12), 4096)): refsim.quantize
to e4m3fn, and refsim.quantize_blocks to mxfp8_e4m3 (blocks of 32 along the last axis, and along
axis 0), rne and sr. Times are medians; the ratio is plain time / block time (the target is 0.5).
"""

from __future__ import annotations

import argparse

import numba
import numpy as np

from bench.timing import median_seconds
from refsim import quantize
from refsim.blocks import quantize_blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2n", type=int, default=24)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    n = 1 << args.log2n
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(n) * 8).astype(np.float32).reshape(-1, 4096)
    out = np.empty_like(x)
    print(f"# mxfp8_e4m3 vs e4m3fn quantize, 2^{args.log2n} float32 elements, shape {x.shape}, "
          f"median of {args.repeat}")
    print("\n| threads | mode | e4m3fn ms | mxfp8 axis -1 ms | ratio | mxfp8 axis 0 ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for threads in args.threads:
        numba.set_num_threads(threads)
        for mode in ("rne", "sr"):
            plain = median_seconds(lambda mode=mode: quantize(x, "e4m3fn", mode, out=out),
                                   args.repeat)
            last = median_seconds(lambda mode=mode: quantize_blocks(x, "mxfp8_e4m3", mode, out=out),
                                  args.repeat)
            first = median_seconds(
                lambda mode=mode: quantize_blocks(x, "mxfp8_e4m3", mode, axis=0, out=out),
                args.repeat)
            print(f"| {threads} | {mode} | {plain * 1e3:.1f} | {last * 1e3:.1f} | "
                  f"{plain / last:.2f} | {first * 1e3:.1f} | {plain / first:.2f} |")


if __name__ == "__main__":
    main()
