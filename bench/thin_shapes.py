"""Thin matmul shapes under a hardware preset: the default route against the exact core alone,
time and peak traced memory, in the same process.

    python -m bench.thin_shapes [--k 16384] [--repeat 3]

Each row multiplies (M, K) by (K, N) float32 operands already in e4m3 with the h100 e4m3
preset's accumulator (hardware.gemm_spec("h100", "e4m3").acc, no Casts), on route "auto" and on
route "exact"; which route auto took is printed (refsim.backends.cpu_gemm.plan). Times are medians
after one warm-up call; memory is tracemalloc's peak for one call (NumPy's allocations are
traced). The multiterm lanes (refsim.backends.cpu_multiterm) tile outputs 4 x 64: a shape thin
both ways is padded, and cpu_multiterm.suits sends it to the exact core.
"""

from __future__ import annotations

import argparse
import tracemalloc

import numpy as np

from bench.timing import median_seconds
from refsim import GemmSpec, hardware, matmul, quantize
from refsim.backends import cpu_gemm

SHAPES = [(1, 1), (2, 2), (4, 4), (4, 16), (8, 8), (16, 16), (64, 1), (1, 64), (1024, 1)]


def _peak(fn) -> int:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=1 << 14)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    spec = GemmSpec(acc=hardware.gemm_spec("h100", "e4m3").acc)
    rng = np.random.default_rng(0)
    print(f"{'M':>5} {'N':>4} {'route':>16} {'auto ms':>9} {'exact ms':>9} {'speed-up':>8} "
          f"{'auto MiB':>9} {'exact MiB':>9}")
    for m, n in SHAPES:
        a = quantize(rng.standard_normal((m, args.k)).astype(np.float32), "e4m3fn")
        b = quantize(rng.standard_normal((args.k, n)).astype(np.float32), "e4m3fn")
        plan = cpu_gemm.plan(a[None], np.ascontiguousarray(b.T)[None], spec.acc, None, False)
        route = "exact" if plan is None else plan.route
        times, peaks = {}, {}
        for r in ("auto", "exact"):
            def call(r=r, a=a, b=b):
                return matmul(a, b, spec, route=r)
            times[r] = median_seconds(call, args.repeat)
            peaks[r] = _peak(call)
        print(f"{m:>5} {n:>4} {route:>16} {times['auto'] * 1e3:>9.1f} "
              f"{times['exact'] * 1e3:>9.1f} {times['exact'] / times['auto']:>8.2f} "
              f"{peaks['auto'] / 2**20:>9.1f} {peaks['exact'] / 2**20:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
