"""Cold start: a new user's first call, in a fresh process with an empty Numba cache.

    python -m bench.cold_start [--cases quantize-f64 quantize-f32 matmul-h100-e4m3 ...] [--repeat 1]

Each case runs in its own subprocess whose NUMBA_CACHE_DIR is a new empty folder, so every
kernel it needs is compiled then and there (nothing is warmed at install time): it times
`import refsim` and then the first call, wall time and the process's CPU time (compiling is one
thread: on a loaded machine the CPU time is the steadier figure), and reports which Numba
dispatchers compiled and how many signatures each. A second call in the same process is timed
too (the warm cost, for scale). Timings on a shared machine are noisy: repeat, and read the best.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CASES = {
    "quantize-f64": ("import numpy as np\nx = np.linspace(-3, 3, 1000)",
                     "refsim.quantize(x, 'e4m3fn')"),
    "quantize-f32": ("import numpy as np\nx = np.linspace(-3, 3, 1000).astype(np.float32)",
                     "refsim.quantize(x, 'bf16')"),
    "quantize-sr": ("import numpy as np\nx = np.linspace(-3, 3, 1000).astype(np.float32)",
                    "refsim.quantize(x, 'e4m3fn', 'sr', seed=1)"),
    "matmul-h100-e4m3": (
        "import numpy as np\nrng = np.random.default_rng(0)\n"
        "a = rng.standard_normal((64, 64)).astype(np.float32)\n"
        "b = rng.standard_normal((64, 64)).astype(np.float32)\n"
        "spec = refsim.hardware.gemm_spec('h100', 'e4m3')",
        "refsim.matmul(a, b, spec)"),
    "matmul-fp32": (
        "import numpy as np\nrng = np.random.default_rng(0)\n"
        "a = rng.standard_normal((64, 64)).astype(np.float32)\n"
        "spec = refsim.GemmSpec(a=refsim.Cast('e4m3fn'), b=refsim.Cast('e4m3fn'), acc='fp32')",
        "refsim.matmul(a, a, spec)"),
}

_CHILD = """
import time
t0 = time.perf_counter()
import refsim
t1 = time.perf_counter()
{setup}
t2, c2 = time.perf_counter(), time.process_time()
{call}
t3, c3 = time.perf_counter(), time.process_time()
{call}
t4 = time.perf_counter()
from numba.core.registry import CPUDispatcher
import gc, json
compiled = {{}}
for obj in gc.get_objects():
    if isinstance(obj, CPUDispatcher) and obj.signatures:
        name = obj.py_func.__module__ + "." + obj.py_func.__qualname__
        compiled[name] = compiled.get(name, 0) + len(obj.signatures)
print(json.dumps({{"import": t1 - t0, "first": t3 - t2, "first_cpu": c3 - c2,
                  "second": t4 - t3, "compiled": compiled}}))
"""


def run_case(name: str) -> dict:
    setup, call = CASES[name]
    with tempfile.TemporaryDirectory(prefix="refsim-cold-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        code = _CHILD.format(setup=setup, call=call)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=1800, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["quantize-f64", "matmul-h100-e4m3"],
                        choices=list(CASES))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--verbose", action="store_true", help="list the compiled dispatchers")
    args = parser.parse_args()
    print(f"{'case':>18} {'import s':>9} {'first call s':>13} {'its CPU s':>10} {'second s':>9} "
          f"{'kernels':>8}")
    for name in args.cases:
        for _ in range(args.repeat):
            r = run_case(name)
            print(f"{name:>18} {r['import']:>9.2f} {r['first']:>13.2f} {r['first_cpu']:>10.2f} "
                  f"{r['second']:>9.4f} {sum(r['compiled'].values()):>8}", flush=True)
            if args.verbose:
                for fn, n in sorted(r["compiled"].items()):
                    print(f"{'':>20}{fn} x{n}")


if __name__ == "__main__":
    main()
