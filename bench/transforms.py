"""RandomHadamard (refsim.transforms) throughput, and its share of a GEMM that uses it.

    python -m bench.transforms [--rows 1024] [--k 1024] [--repeat 5]

Rows: apply() on a (rows, k) float32 operand (standard normal) along its last axis for every
block size; the same for an operand whose blocks mix values up to 2^60 apart (the integer path,
per block); refsim.matmul of (256, k) x (k, 256) e4m3fn operands with an fp32 accumulator, with
and without a 16-block transform. Times are medians.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.timing import median_seconds
from refsim import GemmSpec, RandomHadamard, matmul
from refsim.transforms import BLOCKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.k)).astype(np.float32)
    for block in BLOCKS:
        t = RandomHadamard(block, 1, "bf16")
        sec = median_seconds(lambda t=t: t.apply(x), args.repeat)
        print(f"apply ({args.rows}, {args.k}) float32, block {block:3d}: {sec * 1e3:8.1f} ms "
              f"{sec / x.size * 1e9:6.1f} ns/elem")
    wide = (rng.standard_normal((16, 256)) * 2.0 ** rng.integers(-60, 60, (16, 256)))
    t = RandomHadamard(256, 1, "bf16")
    sec = median_seconds(lambda: t.apply(wide.astype(np.float32)), args.repeat)
    print(f"integer path, block 256: {sec / 16 * 1e3:8.2f} ms/block")
    a = rng.standard_normal((256, args.k)).astype(np.float32)
    b = rng.standard_normal((args.k, 256)).astype(np.float32)
    for transform in (None, RandomHadamard(16, 1, "bf16")):
        spec = GemmSpec(a="e4m3fn", b="e4m3fn", acc="fp32", transform=transform)
        sec = median_seconds(lambda spec=spec: matmul(a, b, spec), args.repeat)
        print(f"matmul (256, {args.k}) x ({args.k}, 256), transform={transform}: "
              f"{sec * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
