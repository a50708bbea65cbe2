#!/usr/bin/env bash
# CUDA vs CPU bit-exactness and CUDA throughput on a machine with an NVIDIA GPU.
#
# Needs: an NVIDIA GPU with its driver, Python with numpy, numba (with numba-cuda or Numba's
# built-in CUDA target and a CUDA toolkit) and pytest. No installation: run from the repository
# root as `bash scripts/gpu_check.sh` (PYTHON=... picks the interpreter). About 4-8 minutes;
# every step is bounded (150 + 300 + 30 + 120 + 120 s; GPU_CHECK_CHARACTERIZE=0 leaves the last
# out, keeping the bound under 10 minutes). The CPU
# reference runs on all cores (NUMBA_NUM_THREADS); it takes most of the time at 1024^3 (one spec
# only there).
#
# Output: the pytest summary of the real-GPU tests, then one line per large check:
#   quantize  float32 e4m3fn  sr  n=67108864  bits OK  cuda 1.23 ms  218.2 GB/s
#   matmul    1024^3  fp32/rne/sequential     bits OK  route lane-native  cuda 85 ms  25 GFLOP/s ...
#   route     fp16/rne e4m3 (double-rounding)  1024^3 bits OK  route double-rounding  8192^3 cuda
#             ... ms  ... G multiply-adds/s  ... GFLOP/s   (one line each; goal >= 200: docs/cuda.md)
# and "ALL BIT-EXACT" (exit 0), or the first mismatch report (exit 1); then, where torch sees
# the GPU, the torch path on CUDA tensors: bits against the CPU and its share of copy bandwidth;
# then torch's own matmul on the GPU against the GPU's refsim.hardware preset (docs/hardware.md);
# last, refsim.hardware.characterize on torch's GPU products, with dumps in the upstream layout.
#
# GPU_CHECK_DRY_RUN=1: the same script on tiny shapes in the Numba CUDA simulator, without the
# pytest step (checks the script itself on a machine without a GPU; proves nothing about GPUs).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# formats/ and validation/ install as refsim.formats and refsim.validation (pyproject.toml), so
# the checkout must be installed (editable, without dependencies: the machine has them).
if ! "$PYTHON" -c "import refsim.formats" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e . \
        || "$PYTHON" -m pip install --quiet --no-deps -e .
fi
export PYTHONUNBUFFERED=1
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
export GPU_CHECK_DRY_RUN=$DRY_RUN
if [ "$DRY_RUN" = 1 ]; then
    export NUMBA_ENABLE_CUDASIM=1
else
    unset NUMBA_ENABLE_CUDASIM
fi

echo "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
"$PYTHON" - <<'EOF'
import platform, numba, numpy
from numba import cuda
import os
if os.environ.get("GPU_CHECK_DRY_RUN") == "1":
    print("DRY RUN: the Numba CUDA simulator on tiny shapes")
print(f"python {platform.python_version()}, numpy {numpy.__version__}, numba {numba.__version__},"
      f" numba.cuda {getattr(cuda, 'implementation', '?')}")
if not cuda.is_available():
    raise SystemExit("numba.cuda.is_available() is False: no usable GPU; nothing to check")
if os.environ.get("GPU_CHECK_DRY_RUN") != "1":
    dev = cuda.get_current_device()
    print(f"device {dev.name.decode() if isinstance(dev.name, bytes) else dev.name}, "
          f"cc {dev.compute_capability}, {dev.MULTIPROCESSOR_COUNT} SMs")
EOF

if [ "$DRY_RUN" != 1 ]; then
    echo "== pytest -m cuda tests/refsim/test_cuda.py (small shapes, every order and mode)"
    timeout 150 "$PYTHON" -m pytest -m cuda -q -p no:cacheprovider tests/refsim/test_cuda.py
fi

echo "== large shapes: CUDA vs CPU bits, CUDA throughput"
timeout 300 "$PYTHON" - <<'EOF'
import os
import time

import numpy as np
from numba import cuda

import refsim
from refsim import hardware
from refsim.backends.cuda import last_route
from refsim.specs import AccumSpec, Cast, GemmSpec
from refsim.validation.bits import mismatch_report

SEED = 20250101
DRY = os.environ.get("GPU_CHECK_DRY_RUN") == "1"
BIG, SMALL = (16, 8) if DRY else (1024, 256)
ROUNDINGS = ("rne", "rna", "rtz", "rup", "rdn", "rto", "sr")
failures = []


def timed(fn, repeat=3):
    """Best wall time of fn() after one warm-up call (which also compiles)."""
    result = fn()
    cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return result, best


def check(label, actual, expected, inputs=None):
    report = mismatch_report(actual, expected, inputs, context=label)
    if report:
        failures.append(report)
        print(report)
    return "bits OK" if not report else "MISMATCH"


rng = np.random.default_rng(SEED)
n = 1 << (8 if DRY else 26)
x64 = rng.standard_normal(n) * np.exp2(rng.integers(-40, 40, n))
x64[:8] = [0.0, -0.0, np.inf, -np.inf, np.nan, 2.0**-1074, 2.0**-149, 6.1e-5]
for dtype in (np.float32, np.float64):
    x = x64.astype(dtype)
    d_x = cuda.to_device(x)
    d_out = cuda.device_array_like(d_x)
    for fmt in ("e4m3fn", "bf16"):
        for rounding in ROUNDINGS:
            got, seconds = timed(lambda: refsim.quantize(d_x, fmt, rounding, seed=SEED,
                                                         out=d_out))
            start = time.perf_counter()
            expected = refsim.quantize(x, fmt, rounding, seed=SEED)
            cpu = time.perf_counter() - start
            label = f"quantize  {np.dtype(dtype).name} {fmt:6s} {rounding}  n={n}"
            status = check(label, got.copy_to_host(), expected, x)
            gbs = 2 * x.nbytes / seconds / 1e9
            print(f"{label}  {status}  cuda {seconds * 1e3:.2f} ms  {gbs:.1f} GB/s"
                  f"  (cpu {cpu:.2f} s)")
    del d_x, d_out

specs = [
    (BIG, "fp32/rne/sequential", GemmSpec(a=Cast("bf16"), b=Cast("bf16"),
                                           acc=AccumSpec("fp32", "rne", "sequential"))),
    (SMALL, "fp16/rne/sequential", GemmSpec(a=Cast("e4m3fn"), b=Cast("e4m3fn"),
                                          acc=AccumSpec("fp16", "rne", "sequential"))),
    (SMALL, "bf16/sr/sequential", GemmSpec(a=Cast("e4m3fn", "sr"), b=Cast("e5m2", "sr"),
                                         acc=AccumSpec("bf16", "sr", "sequential"))),
    (SMALL, "fp16/rne/pairwise", GemmSpec(acc=AccumSpec("fp16", "rne", "pairwise"))),
    (SMALL, "fp16/rne/chunked32+fp32", GemmSpec(acc=AccumSpec("fp16", "rne", "chunked",
                                                               chunk=32,
                                                               outer=AccumSpec("fp32")))),
    (SMALL, "bf16/rne/kahan", GemmSpec(acc=AccumSpec("bf16", "rne", "kahan"))),
    (SMALL, "fp16/rtz/multiterm", GemmSpec(acc=AccumSpec("fp16", "rtz", "multiterm", group=4,
                                                       width=14, chunk=128))),
]
for size, name, spec in specs:
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    d_a, d_b = cuda.to_device(a), cuda.to_device(b)
    try:
        got, seconds = timed(lambda: refsim.matmul(d_a, d_b, spec, seed=SEED), repeat=1)
    except NotImplementedError as exc:
        print(f"matmul    {size}^3  {name}: skipped ({exc})")
        continue
    route = last_route()
    start = time.perf_counter()
    expected = refsim.matmul(a, b, spec, seed=SEED)
    cpu = time.perf_counter() - start
    label = f"matmul    {size}^3  {name}"
    status = check(label, got.copy_to_host(), expected)
    gflops = 2 * size**3 / seconds / 1e9
    print(f"{label}  {status}  route {route}  cuda {seconds * 1e3:.0f} ms  {gflops:.2f} GFLOP/s"
          f"  (cpu {cpu:.1f} s, {2 * size**3 / cpu / 1e9:.2f} GFLOP/s)")

# The CUDA fast routes (refsim.backends.cuda_tile, docs/cuda.md): e4m3fn operands, bits checked
# against the CPU at CHECK^3, then timed at TIME^3 (whole refsim.matmul calls: operand Casts,
# range scans, the route's kernel and the exact-core pass over its results; best of 2 after a
# warm-up). The goal (docs/cuda.md): >= 200 G multiply-adds/s on an H200 for the fp16 accumulator.
CHECK, TIME, TIME_MT = (16, 40, 24) if DRY else (1024, 4096, 2048)
E4M3 = Cast("e4m3fn")
route_specs = [
    (TIME, "fp32/rne e4m3 (lane-native)", GemmSpec(a=E4M3, b=E4M3, acc=AccumSpec("fp32")),
     "lane-native"),
    (TIME, "fp16/rne e4m3 (double-rounding)", GemmSpec(a=E4M3, b=E4M3, acc=AccumSpec("fp16")),
     "double-rounding"),
    (TIME, "bf16/rne e4m3 (double-rounding)", GemmSpec(a=E4M3, b=E4M3, acc=AccumSpec("bf16")),
     "double-rounding"),
    (TIME, "fp16 chunk128 + fp32 outer, e4m3", GemmSpec(
        a=E4M3, b=E4M3, acc=AccumSpec("fp16", "rne", "chunked", chunk=128,
                                      outer=AccumSpec("fp32"))), "double-rounding"),
    (TIME_MT, "h200 e4m3 preset (multiterm)", hardware.gemm_spec("h200", "e4m3"),
     "multiterm-lanes"),
    (TIME_MT, "h200 fp16 preset (multiterm)", hardware.gemm_spec("h200", "fp16"),
     "multiterm-lanes"),
]
for size, name, spec, want in route_specs:
    a = rng.standard_normal((CHECK, CHECK)).astype(np.float32) * 8
    b = rng.standard_normal((CHECK, CHECK)).astype(np.float32) * 8
    got = refsim.matmul(cuda.to_device(a), cuda.to_device(b), spec, seed=SEED)
    route = last_route()
    label = f"route     {name}"
    status = check(f"{label} {CHECK}^3", got.copy_to_host(), refsim.matmul(a, b, spec, seed=SEED))
    if route != want:
        failures.append(f"{label}: route {route}, expected {want}")
    del got
    d_a = cuda.to_device(rng.standard_normal((size, size)).astype(np.float32) * 8)
    d_b = cuda.to_device(rng.standard_normal((size, size)).astype(np.float32) * 8)
    _, seconds = timed(lambda: refsim.matmul(d_a, d_b, spec, seed=SEED), repeat=2)
    macs = float(size) ** 3 / seconds / 1e9
    print(f"{label}  {CHECK}^3 {status}  route {route}  {size}^3 cuda {seconds * 1e3:.1f} ms  "
          f"{macs:.1f} G multiply-adds/s  {2 * macs:.1f} GFLOP/s")
    del d_a, d_b

if failures:
    raise SystemExit(f"{len(failures)} check(s) differ between CUDA and CPU")
print("ALL BIT-EXACT")
EOF

echo "== torch path on CUDA tensors: bits against the CPU reference, share of copy bandwidth"
timeout 30 "$PYTHON" - <<'EOF'
import os
import time

try:
    import torch
except ImportError:
    print("torch is not installed: torch path not checked")
    raise SystemExit(0) from None
if os.environ.get("GPU_CHECK_DRY_RUN") == "1" or not torch.cuda.is_available():
    print("no torch CUDA device (or dry run): torch path not checked")
    raise SystemExit(0)

import refsim
from refsim.validation.bits import mismatch_report

SEED = 20250101
n = 1 << 26
x = torch.randn(n, generator=torch.Generator().manual_seed(SEED)) * 8
d = x.cuda()


def best(fn, repeat=5):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


copy = best(lambda: d.clone())
print(f"torch clone (read+write) {2 * d.nbytes / copy / 1e9:.1f} GB/s; torch .to(float8_e4m3fn) "
      f"{best(lambda: d.to(torch.float8_e4m3fn)) * 1e3:.2f} ms")
failed = 0
for fmt, rounding in (("e4m3fn", "rne"), ("e4m3fn", "sr"), ("bf16", "rtz")):
    seconds = best(lambda: refsim.quantize(d, fmt, rounding, seed=SEED))
    got = refsim.quantize(d, fmt, rounding, seed=SEED).cpu().numpy()
    report = mismatch_report(got, refsim.quantize(x.numpy(), fmt, rounding, seed=SEED),
                             x.numpy(), context=f"torch cuda {fmt} {rounding}")
    failed += bool(report)
    print(report or f"torch cuda  {fmt:6s} {rounding}  bits OK  {seconds * 1e3:.2f} ms  "
          f"{copy / seconds:.2f} of copy bandwidth (issue target 0.5)")
if failed:
    raise SystemExit(f"{failed} torch CUDA check(s) differ from the CPU reference")
EOF

echo "== tensor cores: torch's own matmul on this GPU against its refsim.hardware preset"
# Random operands of each input format, C = 0; K = one MMA block (the preset's group) and 8
# blocks. fp16/bf16 through torch.mm (fp32 output where torch has out_dtype, else its fp16/bf16
# output, compared after rounding the preset's fp32 result to nearest); e4m3 through
# torch._scaled_mm (scales 1, fp32 output, use_fast_accum=True: the tensor core's own chain).
# Prints "N/M outputs match" per format and K (docs/hardware.md records the result).
timeout 120 "$PYTHON" - <<'EOF'
import os

import numpy as np

try:
    import torch
except ImportError:
    print("torch is not installed: tensor-core presets not checked")
    raise SystemExit(0) from None
DRY = os.environ.get("GPU_CHECK_DRY_RUN") == "1"
if not DRY and not torch.cuda.is_available():
    print("no torch CUDA device: tensor-core presets not checked")
    raise SystemExit(0)

import refsim
from refsim import hardware

SEED = 20250101
if DRY:
    name, device, where = "DRY RUN: torch on the CPU (matches mean nothing)", "h100", "cpu"
else:
    name, where = torch.cuda.get_device_name(), "cuda"
    names = (("H200", "h200"), ("H100", "h100"), ("B200", "b200"), ("A100", "a100"),
             ("V100", "v100"), ("L40S", "l40s"))
    device = next((key for pattern, key in names if pattern in name.upper()), None)
    if device is None:
        print(f"{name}: no refsim.hardware preset for this GPU; nothing compared")
        raise SystemExit(0)
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
print(f"{name} -> preset {device}")
rng = np.random.default_rng(SEED)
M = N = 8 if DRY else 128
TORCH = {"fp16": torch.float16, "bf16": torch.bfloat16, "e4m3": torch.float8_e4m3fn}
REFSIM = {"fp16": "fp16", "bf16": "bf16", "e4m3": "e4m3fn"}


def operands(fmt, shape):
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-3, 4, shape))
    return refsim.quantize(x.astype(np.float32), REFSIM[fmt], "rne", overflow="saturate")


def torch_matmul(fmt, a, b):
    """(fp32 result or None, the format torch's output was rounded to, or a skip reason)."""
    ta = torch.from_numpy(a).to(where)
    tb = torch.from_numpy(b).to(where)
    if fmt == "e4m3":
        if not hasattr(torch, "_scaled_mm"):
            return None, "torch._scaled_mm is missing"
        one = torch.tensor(1.0, device=where)
        try:
            d = torch._scaled_mm(ta.to(TORCH[fmt]), tb.t().contiguous().to(TORCH[fmt]).t(),
                                 scale_a=one, scale_b=one, out_dtype=torch.float32,
                                 use_fast_accum=True)
        except Exception as exc:
            return None, f"torch._scaled_mm failed: {type(exc).__name__}: {str(exc)[:120]}"
        return d, "fp32"
    ta, tb = ta.to(TORCH[fmt]), tb.to(TORCH[fmt])
    try:
        return torch.mm(ta, tb, out_dtype=torch.float32), "fp32"
    except (TypeError, RuntimeError):
        return torch.mm(ta, tb).float(), REFSIM[fmt]


total = 0
for fmt in ("fp16", "bf16", "e4m3"):
    try:
        spec = hardware.gemm_spec(device, fmt)
    except (ValueError, NotImplementedError) as exc:
        print(f"{fmt:5s}: no preset ({exc})")
        continue
    group = next(row.group for row in hardware.devices()
                 if (row.device, row.input, row.out) == (device, fmt, "fp32"))
    for k in (group, 8 * group):
        a, b = operands(fmt, (M, k)), operands(fmt, (k, N))
        d, rounded_to = torch_matmul(fmt, a, b)
        if d is None:
            print(f"{fmt:5s} K={k:4d}: skipped ({rounded_to})")
            continue
        expected = refsim.matmul(a, b, spec)
        if rounded_to != "fp32":
            expected = refsim.quantize(expected, rounded_to, "rne")
        got = d.cpu().numpy().astype(np.float32)
        same = int((got.view(np.uint32) == expected.astype(np.float32).view(np.uint32)).sum())
        total += same != got.size
        print(f"{fmt:5s} K={k:4d}: {same}/{got.size} outputs match the {device} preset bit for "
              f"bit (torch output {rounded_to})")
print("TENSOR-CORE PRESETS: ALL MATCH" if total == 0 else
      f"TENSOR-CORE PRESETS: {total} (format, K) case(s) with mismatches (see above)")
EOF

echo "== characterize: torch.matmul and torch._scaled_mm on this GPU (docs/hardware.md)"
# refsim.hardware.characterize on torch's GPU matrix products: fp16, bf16 (torch.addmm with an
# fp32 output where torch has out_dtype, else torch.mm then + C in fp32), tf32 (fp32 tensors with
# allow_tf32), e4m3 and e5m2 (torch._scaled_mm, scales 1, fp32 output, use_fast_accum=True, then
# + C in fp32), and the block-scaled MXFP8 where the GPU and torch have it (e4m3 with e8m0
# scales of 1 per 32; NVFP4 is named, not run: see the end). Prints each report (or why
# no model fits) and writes every vector the GPU ran in the upstream layout of
# MATLAB-tensor-core's model_validation/: $OUT/characterize/<GPU>/<kind>_K<k>/a_<GPU>_<kind>.txt
# (K float32 words in hex per row), b_..., c_<GPU>_fp32.txt and d_<GPU>_fp32.txt (32-bit binary
# strings). OUT defaults to ./gpu_check_out.
if [ "${GPU_CHECK_CHARACTERIZE:-1}" != 0 ]; then
timeout 120 "$PYTHON" - <<'EOF'
import os
from pathlib import Path

import numpy as np

try:
    import torch
except ImportError:
    print("torch is not installed: characterize not run")
    raise SystemExit(0) from None
DRY = os.environ.get("GPU_CHECK_DRY_RUN") == "1"
if not DRY and not torch.cuda.is_available():
    print("no torch CUDA device: characterize not run")
    raise SystemExit(0)

from refsim import hardware

where = "cpu" if DRY else "cuda"
if DRY:
    gpu = "DRY"
else:  # the upstream's folder names (H100, B200, ...), else the device name without spaces
    full = torch.cuda.get_device_name()
    gpu = next((tag for tag in ("H200", "H100", "B200", "B300", "A100", "V100", "L40S")
                if tag in full.upper()), "".join(ch for ch in full if ch.isalnum()))
root = Path(os.environ.get("OUT", "gpu_check_out")) / "characterize" / gpu
K, ROWS = (16, 400) if DRY else (64, 2500)
print(f"{'DRY RUN: torch on the CPU' if DRY else torch.cuda.get_device_name()}: dumps in {root}")
if not DRY:
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False


def tensor(x, dtype):
    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(where).to(dtype)


def plain(dtype, tf32=False):
    def mma(a, b, c):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        ta, tb, tc = tensor(a, dtype), tensor(b, dtype), tensor(c, torch.float32)
        try:
            d = torch.addmm(tc, ta, tb, out_dtype=torch.float32)
        except (TypeError, RuntimeError):
            d = (ta @ tb).float() + tc
        return d.double().cpu().numpy()
    return mma


def scaled(dtype, block=None):
    """torch._scaled_mm with unit scales: per tensor, or per block (MXFP8 32, NVFP4 16)."""
    def mma(a, b, c):
        m, k = a.shape
        n = b.shape[1]
        if block is None:
            one = torch.tensor(1.0, device=where)
            sa = sb = one
            ta, tb = tensor(a, dtype), tensor(b.T, dtype).t()
        else:
            def ones(rows):  # unit scales, padded to the (128, 4) tiles of the swizzled layout
                shape = (-(-rows // 128) * 128, -(-(k // block) // 4) * 4)
                kind = torch.float8_e8m0fnu if block == 32 else torch.float8_e4m3fn
                return torch.ones(shape, device=where).to(kind)
            sa, sb = ones(m), ones(n)
            ta, tb = tensor(a, dtype), tensor(b.T, dtype).t()
        d = torch._scaled_mm(ta, tb, scale_a=sa, scale_b=sb, out_dtype=torch.float32,
                             use_fast_accum=True)
        return (d + tensor(c, torch.float32)).double().cpu().numpy()
    return mma


def recorded(mma, calls):
    def wrapper(a, b, c):
        d = np.asarray(mma(a, b, c), np.float64)
        calls.append((a, b[:, 0], c[:, 0], d[:, 0]))
        return d
    return wrapper


def dump(kind, calls):
    rows = {}
    for a, b, c, d in calls:
        for i in range(a.shape[0]):
            rows.setdefault(a.shape[1], []).append((a[i], b, c[i], d[i]))
    for k, got in rows.items():
        folder = root / f"{kind}_K{k}"
        folder.mkdir(parents=True, exist_ok=True)
        def words(x):
            return " ".join(f"{w:08x}" for w in np.asarray(x, np.float32).view(np.uint32))
        def bits(x):
            return f"{int(np.float32(x).view(np.uint32)):032b}"
        (folder / f"a_{gpu}_{kind}.txt").write_text("".join(words(r[0]) + "\n" for r in got))
        (folder / f"b_{gpu}_{kind}.txt").write_text("".join(words(r[1]) + "\n" for r in got))
        (folder / f"c_{gpu}_fp32.txt").write_text("".join(bits(r[2]) + "\n" for r in got))
        (folder / f"d_{gpu}_fp32.txt").write_text("".join(bits(r[3]) + "\n" for r in got))


KINDS = [("fp16", "fp16", plain(torch.float16)), ("bf16", "bf16", plain(torch.bfloat16)),
         ("tf32", "tf32", plain(torch.float32, tf32=True))]
if hasattr(torch, "_scaled_mm"):
    KINDS += [("E4M3", "e4m3", scaled(torch.float8_e4m3fn)),
              ("E5M2", "e5m2", scaled(torch.float8_e5m2))]
    if hasattr(torch, "float8_e8m0fnu"):
        KINDS += [("MXFP8", "e4m3", scaled(torch.float8_e4m3fn, block=32))]
for kind, fmt, mma in KINDS:
    calls = []
    try:
        found = hardware.characterize(recorded(mma, calls), fmt, "fp32", k=K, random_rows=ROWS)
        print(f"--- {kind}\n{found.report()}")
    except hardware.NoModelError as exc:
        print(f"--- {kind}: no model refsim can express: {exc}")
    except Exception as exc:  # the GPU or torch lacks this kind: say so and go on
        print(f"--- {kind}: skipped ({type(exc).__name__}: {str(exc)[:160]})")
    if calls:
        dump(kind, calls)
# NVFP4 (e2m1 operands packed two per byte, e4m3 scales per 16): characterize's structure
# probes need a cancelling pair 62 binades above a tiny term, beyond e2m1's range (its values
# span 2^-1 .. 6) even with scales of 1, so it is named and not run.
if hasattr(torch, "float4_e2m1fn_x2"):
    print("--- NVFP4: not characterized (e2m1 spans 2^-1 .. 6: the structure probes need more)")
EOF
fi
