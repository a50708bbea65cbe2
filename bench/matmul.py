"""Simulated matmul throughput against float32 BLAS in the same process.

    python -m bench.matmul [--sizes 128 256] [--threads 1 2] [--repeat 3]

Sequential-order matmul, e4m3fn operands, fp16 and bf16 accumulators (RNE), fp32 output, against
NumPy float32 matmul (BLAS) on the same operands. GFLOP/s counts 2*M*N*K.
"""

from __future__ import annotations

import argparse

import numba
import numpy as np

import refsim
from bench.timing import median_seconds
from refsim import AccumSpec, Cast, GemmSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| n | threads | accumulator | refsim GFLOP/s | BLAS fp32 GFLOP/s | ratio |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        flops = 2.0 * n**3
        for threads in args.threads:
            numba.set_num_threads(threads)
            blas = median_seconds(lambda a=a, b=b: a @ b, max(args.repeat, 20))
            for acc in ("fp16", "bf16"):
                spec = GemmSpec(a=Cast("e4m3fn"), b=Cast("e4m3fn"), acc=AccumSpec(acc),
                                out=Cast("fp32"))
                sim = median_seconds(lambda a=a, b=b, spec=spec: refsim.matmul(a, b, spec),
                                     args.repeat)
                print(f"| {n} | {threads} | {acc} | {flops / sim / 1e9:.3f} | "
                      f"{flops / blas / 1e9:.1f} | {blas / sim:.4f} |")


if __name__ == "__main__":
    main()
