"""Quantize throughput against the memory-bandwidth limit and peer casts, in one process.

    python -m bench.quantize [--log2n 24] [--threads 1 2] [--repeat 7] [--formats ...]
                             [--modes ...] [--ns]
    python -m bench.quantize --rbits [--log2n 18] [--threads 1] [--repeat 7]

For every named float format (and int8) and every rounding mode: refsim.quantize on 2^log2n
float32 elements, as a ratio to np.copyto of the same array (the bandwidth limit), next to
ml_dtypes' astype round trip and torch's .to(float8_e4m3fn) round trip. Times are medians.
--ns: cells are instead nanoseconds per element of process CPU time (best of --repeat; CPU
time over all threads, so on one thread it is what the kernel costs whatever else the machine
runs), the figure to compare across runs on a loaded machine.

--rbits: sr with caller-given random bits as a user calls it (no out; uint16 rbits, sr_bits=8,
e4m3fn and p3109_k8p4se), first in a process that has run no other quantize, then again after
one deterministic quantize call: ns per element (wall, median), both in one process. Run it as
its own process: the first row depends on what ran before.
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from bench.timing import median_seconds
from refsim import quantize
from refsim.formats import NAMED, FloatFormat
from refsim.formats.policy import ROUNDINGS
from refsim.params import carrier_holds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2n", type=int, default=24)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--formats", nargs="+", default=None)
    parser.add_argument("--modes", nargs="+", default=list(ROUNDINGS))
    parser.add_argument("--ns", action="store_true")
    parser.add_argument("--rbits", action="store_true")
    args = parser.parse_args()
    if args.rbits:
        rbits_before_and_after(args.log2n, args.threads[0], args.repeat)
        return

    n = 1 << args.log2n
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(n) * 8).astype(np.float32)
    out = np.empty_like(x)
    names = args.formats or [k for k, f in NAMED.items()
                             if (isinstance(f, FloatFormat) and carrier_holds(f, x.dtype))
                             or k == "int8"]
    print(f"# quantize throughput, 2^{args.log2n} float32 elements, median of {args.repeat}")
    for threads in args.threads:
        numba.set_num_threads(threads)
        copy_s = median_seconds(lambda: np.copyto(out, x), args.repeat)
        gbs = 2 * x.nbytes / copy_s / 1e9
        print(f"\n## {threads} thread(s): np.copyto {copy_s * 1e3:.2f} ms ({gbs:.1f} GB/s r+w)")
        peers = {}
        try:
            import ml_dtypes

            peers["ml_dtypes e4m3fn astype round trip"] = lambda: x.astype(
                ml_dtypes.float8_e4m3fn).astype(np.float32)
        except ImportError:
            pass
        try:
            import torch

            torch.set_num_threads(threads)
            t = torch.from_numpy(x)
            peers["torch .to(float8_e4m3fn) round trip"] = lambda t=t: t.to(
                torch.float8_e4m3fn).to(torch.float32)
        except ImportError:
            pass
        for label, fn in peers.items():
            s = median_seconds(fn, args.repeat)
            print(f"{label}: {s * 1e3:.2f} ms = {copy_s / s:.3f} x copyto")
        print()
        print("| format | " + " | ".join(args.modes) + " |")
        print("|---|" + "---|" * len(args.modes))
        for name in names:
            cells = []
            for mode in args.modes:
                def run(name=name, mode=mode):
                    quantize(x, name, mode, out=out)

                if args.ns:
                    cells.append(f"{cpu_seconds(run, args.repeat) / n * 1e9:.2f}")
                    continue
                cells.append(f"{copy_s / median_seconds(run, args.repeat):.2f}")
            print(f"| {name} | " + " | ".join(cells) + " |")
    if args.ns:
        print("\n(cells: ns per element, process CPU time, best of --repeat)")
    else:
        print("\n(cells: throughput as a fraction of np.copyto; 1.0 = memory-bandwidth bound)")


def rbits_before_and_after(log2n: int, threads: int, repeat: int) -> None:
    """quantize(x, fmt, "sr", sr_bits=8, rbits=r) before and after one quantize(x, "fp16",
    "rtz") in the same process (the --rbits case of the module docstring)."""
    numba.set_num_threads(threads)
    n = 1 << log2n
    x = (np.random.default_rng(0).standard_normal(n) * 8).astype(np.float32)
    r = np.random.default_rng(1).integers(0, 256, n).astype(np.uint16)
    formats = ("e4m3fn", "p3109_k8p4se")

    def timed() -> list[float]:
        return [median_seconds(lambda fmt=fmt: quantize(x, fmt, "sr", sr_bits=8, rbits=r),
                               repeat) / n * 1e9 for fmt in formats]

    first = timed()
    quantize(x, "fp16", "rtz")
    after = timed()
    print(f"# sr with rbits (uint16, sr_bits=8), 2^{log2n} float32, {threads} thread(s), "
          f"median of {repeat}, ns per element")
    print("| format | first in the process | after a quantize(x, 'fp16', 'rtz') |")
    print("|---|---|---|")
    for fmt, a, b in zip(formats, first, after, strict=True):
        print(f"| {fmt} | {a:.2f} | {b:.2f} |")


def cpu_seconds(fn, repeat: int) -> float:
    """Best process CPU time of `repeat` calls of fn(), after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


if __name__ == "__main__":
    main()
