"""refsim.hardware.characterize on refsim's own presets as black boxes: seconds per preset.

    python -m bench.characterize [--presets h100/e4m3/fp32 a100/fp16/fp32 ...] [--all]

One thread (NUMBA_NUM_THREADS=1 is set before Numba loads; pin the process to one core with
taskset for the "one core" figure). Each preset is characterized once after a warm-up run of the
first (which pays the Numba cache loads); prints seconds, mma calls and crafted vectors.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

DEFAULT = ["a100/fp16/fp32", "h100/e4m3/fp32", "h100/e4m3/fp16", "b200/e4m3/fp32",
           "l40s/e5m2/fp32", "mi300x/bf16/fp32", "mi250x/fp16/fp32"]


def main() -> None:
    from refsim import hardware, matmul

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=DEFAULT)
    parser.add_argument("--all", action="store_true", help="every preset in devices()")
    args = parser.parse_args()
    rows = {(r.device, r.input, r.out): r for r in hardware.devices()
            if r.device not in hardware.ALIASES}
    keys = list(rows) if args.all else [tuple(key.split("/")) for key in args.presets]

    def run(key):
        row = rows[key]
        spec = row.spec
        fmt = spec.a.fmt.name if row.device == "mi300x" else row.input
        start = time.perf_counter()
        found = hardware.characterize(lambda a, b, c: matmul(a, b, spec, c=c), fmt, row.out)
        return time.perf_counter() - start, found

    run(keys[0])  # warm-up: Numba's cache loads
    for key in keys:
        seconds, found = run(key)
        print(f"{'/'.join(key):18s} {seconds:6.1f} s  {found.calls:4d} mma calls  "
              f"{len(found.probes):4d} crafted vectors  {found.random_rows} random rows")


if __name__ == "__main__":
    main()
