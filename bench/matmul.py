"""Simulated matmul throughput against float32 BLAS in the same process.

    python -m bench.matmul [--sizes 128 256] [--threads 1 2] [--repeat 3]

Sequential-order matmul, e4m3fn operands, fp16 and bf16 accumulators (RNE), fp32 output, against
NumPy float32 matmul (BLAS, limited to the same thread count with threadpoolctl) on the same
operands; for sizes up to --exact-max also the exact core alone (the fast path switched off), to
show what the fast path gains. GFLOP/s counts 2*M*N*K.
"""

from __future__ import annotations

import argparse

import numba
import numpy as np
from threadpoolctl import threadpool_limits

import refsim
from bench.timing import median_seconds
from refsim import AccumSpec, Cast, GemmSpec
from refsim.backends import cpu_gemm


def _exact_core_seconds(a, b, spec, repeat: int) -> float:
    """refsim.matmul with the fast path switched off."""
    plan = cpu_gemm.plan
    cpu_gemm.plan = lambda *args: None
    try:
        return median_seconds(lambda: refsim.matmul(a, b, spec), repeat)
    finally:
        cpu_gemm.plan = plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--exact-max", type=int, default=128)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| n | threads | accumulator | refsim GFLOP/s | exact core GFLOP/s | BLAS fp32 GFLOP/s "
          "| refsim / BLAS |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        flops = 2.0 * n**3
        for threads in args.threads:
            numba.set_num_threads(threads)
            with threadpool_limits(threads):
                blas = median_seconds(lambda a=a, b=b: a @ b, max(args.repeat, 20))
            for acc in ("fp16", "bf16"):
                spec = GemmSpec(a=Cast("e4m3fn"), b=Cast("e4m3fn"), acc=AccumSpec(acc),
                                out=Cast("fp32"))
                sim = median_seconds(lambda a=a, b=b, spec=spec: refsim.matmul(a, b, spec),
                                     args.repeat)
                exact = "-"
                if n <= args.exact_max:
                    exact = f"{flops / _exact_core_seconds(a, b, spec, 1) / 1e9:.3f}"
                print(f"| {n} | {threads} | {acc} | {flops / sim / 1e9:.3f} | {exact} | "
                      f"{flops / blas / 1e9:.1f} | {blas / sim:.4f} |")


if __name__ == "__main__":
    main()
