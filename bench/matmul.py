"""Simulated matmul throughput against float32 BLAS in the same process, row by row.

    python -m bench.matmul [--n 512] [--slow-n 256] [--threads 1 2] [--repeat 5] [--rows ...]

Each row is refsim.matmul end to end (operand Casts, range checks, packing, the kernel, the
output Cast) on standard-normal float32 operands; BLAS is NumPy's float32 matmul on the same
operands, held to the same thread count with threadpoolctl and timed in the same process just
before the row, so the ratio (BLAS time / refsim time) survives a loaded machine better than
either figure. Times are the best of --repeat runs after one warm-up call (compilation): the
process's CPU time on one thread (other jobs on the machine do not inflate it), wall time on
more. The sr row and the rows that ran on the exact core use --slow-n. GFLOP/s counts 2*M*N*K.

The sr row's route (cpu_tile's sr-exact-sum) needs the seed in cpu_gemm.plan; where
refsim.matmul does not hand it over yet (refsim.accumulate), the row runs matmul's steps itself
with the seed passed (operand Casts, plan, kernel, exact core on the outputs the route left,
output Cast) and says so in its route column.
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

import refsim
from refsim import AccumSpec, Cast, GemmSpec, hardware
from refsim.backends import cpu_exact, cpu_gemm

E4M3 = Cast("e4m3fn")


def _fp8(acc: AccumSpec) -> GemmSpec:
    return GemmSpec(a=E4M3, b=E4M3, acc=acc, out=Cast("fp32"))


# name -> (spec, measured at --n; False: at --slow-n, as docs/BENCHMARKS.md sets the sr row and
# the rows that ran on the exact core)
ROWS: dict[str, tuple[GemmSpec, bool]] = {
    "e4m3-fp32": (_fp8(AccumSpec("fp32")), True),
    "e4m3-fp16": (_fp8(AccumSpec("fp16")), True),
    "e4m3-bf16": (_fp8(AccumSpec("bf16")), True),
    "fp8-chunk128": (_fp8(AccumSpec("fp16", order="chunked", chunk=128, outer="fp32")), True),
    "fp32": (GemmSpec(acc=AccumSpec("fp32")), True),
    "e4m3-fp16-rtz": (_fp8(AccumSpec("fp16", "rtz")), True),
    "e4m3-fp16-rup": (_fp8(AccumSpec("fp16", "rup")), True),
    "e4m3-fp16-rdn": (_fp8(AccumSpec("fp16", "rdn")), True),
    "e4m3-fp16-sr": (_fp8(AccumSpec("fp16", "sr")), False),
    "multiterm": (_fp8(AccumSpec("fp16", order="multiterm", group=32, width=14, chunk=128,
                                 outer="fp32")), True),
    "pairwise": (_fp8(AccumSpec("fp16", order="pairwise")), True),
    "kahan": (_fp8(AccumSpec("fp16", order="kahan")), True),
    # Tensor-core presets (refsim.hardware, docs/hardware.md), operands Cast to the input format.
    "h100-e4m3": (hardware.gemm_spec("h100", "e4m3"), True),
    "h100-fp16": (hardware.gemm_spec("h100", "fp16"), True),
    "a100-bf16": (hardware.gemm_spec("a100", "bf16"), True),
    "v100-fp16": (hardware.gemm_spec("v100", "fp16"), True),
}


def best_seconds(fn, repeat: int, clock=time.perf_counter) -> float:
    """Best time of `repeat` calls after one warm-up call (the least disturbed run)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--slow-n", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| row | n | threads | route | refsim GFLOP/s | BLAS fp32 GFLOP/s | BLAS / refsim |")
    print("|---|---|---|---|---|---|---|")
    for name in args.rows:
        spec, fast = ROWS[name]
        n = args.n if fast else args.slow_n
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        flops = 2.0 * n**3
        run, route = _runner(a, b, spec)
        for threads in args.threads:
            numba.set_num_threads(threads)
            # One thread: the process's CPU time, which other jobs on a shared machine do not
            # inflate; more threads: wall time.
            clock = time.process_time if threads == 1 else time.perf_counter
            with threadpool_limits(threads):
                blas = best_seconds(lambda a=a, b=b: a @ b, max(3 * args.repeat, 20), clock)
            repeat = args.repeat if threads == 1 else 3 * args.repeat  # catch a quiet moment
            sim = best_seconds(run, repeat if route != "exact core" else 1, clock)
            print(f"| {name} | {n} | {threads} | {route} | {flops / sim / 1e9:.3f} "
                  f"| {flops / blas / 1e9:.1f} | 1/{sim / blas:.1f} |", flush=True)


def _operands(a: np.ndarray, b: np.ndarray, spec: GemmSpec, seed: int = 0):
    """The Cast operands as refsim.matmul forms them: a (1, M, K), b (1, N, K)."""
    qa = refsim.quantize(a, spec.a.fmt, spec.a.rounding, seed=seed) if spec.a is not None else a
    qb = (refsim.quantize(b, spec.b.fmt, spec.b.rounding, seed=seed + 1)
          if spec.b is not None else b)
    return qa[None], np.swapaxes(qb, 0, 1)[None]


def _runner(a: np.ndarray, b: np.ndarray, spec: GemmSpec):
    """(the call to time, its route): refsim.matmul and the route it takes ('exact core' when
    none), or, for a route that needs the seed where matmul does not pass it yet, matmul's steps
    with the seed (seed 0, matmul's default)."""
    a3, b3 = _operands(a, b, spec)
    p = cpu_gemm.plan(a3, b3, spec.acc, spec.out, False, seed=0)
    if p is None:
        return (lambda: refsim.matmul(a, b, spec)), "exact core"
    try:
        refsim.matmul(a, b, spec, route="fast")
    except ValueError:  # refsim.accumulate does not give plan the seed
        return (lambda: _with_seed(a, b, spec)), p.route + " (matmul's steps, seed passed)"
    return (lambda: refsim.matmul(a, b, spec)), p.route


def _with_seed(a: np.ndarray, b: np.ndarray, spec: GemmSpec, seed: int = 0) -> np.ndarray:
    """refsim.matmul(a, b, spec, seed=seed) with the seed handed to cpu_gemm.plan."""
    a3, b3 = _operands(a, b, spec, seed)
    p = cpu_gemm.plan(a3, b3, spec.acc, spec.out, False, seed=seed)
    raw = cpu_gemm.run(p, a3, b3)
    todo = np.flatnonzero(np.isnan(raw))
    if todo.size:
        raw.reshape(-1)[todo] = cpu_exact.run(a3, b3, spec.acc, spec.out, seed, False, todo)[0]
    if spec.out is None:
        return raw[0]
    return refsim.quantize(raw[0], spec.out.fmt, spec.out.rounding, overflow=spec.out.overflow)


if __name__ == "__main__":
    main()
