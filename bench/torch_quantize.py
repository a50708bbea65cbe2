"""The torch path of refsim.quantize on CPU against torch's own casts, in one process.

    python -m bench.torch_quantize [--log2n 22] [--repeat 5] [--modes rne sr] [--compiled]

For e4m3fn (and the modes given): refsim.quantize on a float32 torch tensor of 2^log2n normal
values (N(0, 8^2)), as a ratio to torch's `.to(torch.float8_e4m3fn)` (and its round trip back to
float32, which writes as many bytes as refsim does). Two routes: "numba", the default for CPU
tensors (a zero-copy NumPy view into refsim's Numba kernels), and "torch ops", the torch-op
implementation every other device runs (timed here on CPU). --compiled also times the torch-op
fast path under torch.compile (refsim.backends.torch_backend.use_compiled). Times are medians,
after one warm-up call (which also compiles).
"""

from __future__ import annotations

import argparse

import torch

from bench.timing import median_seconds
from refsim.backends import torch_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2n", type=int, default=22)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=["rne", "rtz", "sr"])
    parser.add_argument("--compiled", action="store_true")
    args = parser.parse_args()
    n = 1 << args.log2n
    x = torch.randn(n, generator=torch.Generator().manual_seed(0)) * 8
    cast = median_seconds(lambda: x.to(torch.float8_e4m3fn), args.repeat)
    round_trip = median_seconds(lambda: x.to(torch.float8_e4m3fn).float(), args.repeat)
    print(f"# torch quantize, 2^{args.log2n} float32 elements, {torch.get_num_threads()} torch "
          f"threads, median of {args.repeat}")
    print(f"torch .to(float8_e4m3fn): {cast * 1e9 / n:.2f} ns/element; round trip "
          f"{round_trip * 1e9 / n:.2f} ns/element")
    print("| path | mode | ns/element | / torch cast | / torch round trip |")
    print("|---|---|---|---|---|")
    variants = [("numba (CPU default)", "numba", False), ("torch ops, eager", "torch", False)]
    if args.compiled:
        variants.append(("torch ops, compiled", "torch", True))
    for label, route, compiled in variants:
        torch_backend.use_compiled(compiled)
        for mode in args.modes:
            t = median_seconds(lambda mode=mode, route=route: torch_backend.quantize(
                x, "e4m3fn", mode, seed=1, route=route), args.repeat)
            print(f"| {label} | {mode} | {t * 1e9 / n:.1f} | {t / cast:.1f} | "
                  f"{t / round_trip:.1f} |")
    torch_backend.use_compiled(False)


if __name__ == "__main__":
    main()
