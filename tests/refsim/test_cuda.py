"""refsim.backends.cuda: CUDA == CPU bit for bit (Numba CUDA simulator), PTX compilation of the
real kernels, and the same checks on a real GPU (marked cuda; scripts/gpu_check.sh runs them).

The simulator must be chosen before numba.cuda is imported, so the simulator runs happen in one
subprocess (this file run as a script with NUMBA_ENABLE_CUDASIM=1): the parent draws the inputs
and computes the CPU results, the child computes the CUDA results, the parent compares. The
PTX compilation runs in a subprocess too, so that this process never imports the real target.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
ROUNDINGS = ("rne", "rna", "rtz", "rup", "rdn", "rto", "sr")
QUANT_FORMATS = ("e4m3fn", "bf16", "int8")
SEED = 12345


# ---- cases (shared by the parent, the simulator child and the real-GPU tests) -------------------
def quantize_cases() -> list[tuple[str, str, str, dict]]:
    """(key, format, rounding, kwargs) for float32 and float64 inputs."""
    cases = []
    for dtype in ("float32", "float64"):
        # The CUDA kernels differ between carriers only in two constants; each CPU kernel costs
        # seconds to compile: every mode on float64, three on float32.
        roundings = ROUNDINGS if dtype == "float64" else ("rne", "rtz", "sr")
        cases.extend((f"q-{dtype}-{fmt}-{rounding}", fmt, rounding, {})
                     for fmt in QUANT_FORMATS for rounding in roundings)
        cases.append((f"q-{dtype}-e5m2-sr4", "e5m2", "sr", {"sr_bits": 4}))
        cases.append((f"q-{dtype}-e4m3fn-sat", "e4m3fn", "rne", {"overflow": "saturate"}))
        cases.extend((f"q-{dtype}-{fmt}-satfinite", fmt, "rne", {"overflow": "satfinite"})
                     for fmt in ("e4m3fn", "bf16"))
    return cases


def rbits_cases() -> list[tuple[str, str, str, int]]:
    """(key, format, rbits input key, sr_bits) for caller-given random bits: every rbits width,
    sr_bits below and at the word's width."""
    return [("qr-float64-e4m3fn-u8", "e4m3fn", "r8", 3),
            ("qr-float64-bf16-u16", "bf16", "r16", 16),
            ("qr-float32-e5m2-u32", "e5m2", "r32", 9),
            ("qr-float64-int8-u64", "int8", "r64", 64)]


def rbits_inputs() -> dict[str, np.ndarray]:
    """64 random words of each unsigned width (r8 ... r64), from a generator of their own."""
    bits = np.random.default_rng(SEED + 1)
    return {f"r{w}": bits.integers(0, 2**w, 64, dtype=f"uint{w}") for w in (8, 16, 32, 64)}


def matmul_specs() -> dict:
    """key -> GemmSpec, one per order (with sr), plus casts, a product format and fixed point."""
    from refsim.specs import AccumSpec, Cast, GemmSpec

    mt = {"group": 2, "width": 12, "chunk": 4}
    return {
        "m-sequential": GemmSpec(acc=AccumSpec("fp16", "rne", "sequential")),
        "m-sequential-sr": GemmSpec(a=Cast("e4m3fn", "sr"), b=Cast("e5m2", "sr"),
                                    acc=AccumSpec("bf16", "sr", "sequential")),
        "m-pairwise": GemmSpec(acc=AccumSpec("bf16", "rtz", "pairwise")),
        "m-pairwise-sr": GemmSpec(acc=AccumSpec("fp16", "sr", "pairwise", sr_bits=6)),
        "m-chunked": GemmSpec(acc=AccumSpec("fp16", "rne", "chunked", chunk=2)),
        "m-chunked-sr": GemmSpec(acc=AccumSpec("bf16", "sr", "chunked", chunk=2,
                                               product=Cast("e5m2", "sr")),
                                 out=Cast("e4m3fn", "sr")),
        "m-kahan": GemmSpec(acc=AccumSpec("bf16", "rne", "kahan")),
        "m-kahan-sr": GemmSpec(acc=AccumSpec("fp16", "sr", "kahan"), out=Cast("int8", "sr")),
        "m-multiterm": GemmSpec(acc=AccumSpec("fp16", "rne", "multiterm", **mt)),
        "m-multiterm-sr": GemmSpec(acc=AccumSpec("bf16", "sr", "multiterm",
                                                 variant="acc-aligned", **mt)),
    }


def make_inputs() -> dict[str, np.ndarray]:
    """Deterministic inputs: 64 values over a wide range with zeros, Inf and NaN mixed in; the
    matmul operands (4x5 @ 5x3, float64 holding float32 values, and a float32 pair)."""
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal(64) * np.exp2(rng.integers(-30, 30, 64))
    x[:6] = [0.0, -0.0, np.inf, -np.inf, np.nan, 2.0**-140]
    a = rng.standard_normal((4, 5)) * np.exp2(rng.integers(-8, 8, (4, 5)))
    b = rng.standard_normal((5, 3)) * np.exp2(rng.integers(-8, 8, (5, 3)))
    a[0, 0] = 0.0
    # float64 operands whose products are exact in 64 bits (24 significant bits each)
    a = a.astype(np.float32).astype(np.float64)
    b = b.astype(np.float32).astype(np.float64)
    c = (rng.standard_normal((4, 3)) * np.exp2(rng.integers(-12, 12, (4, 3)))).astype(np.float32)
    routes = {f"r-{key}": value for key, value in route_inputs().items()}
    return {"x64": x, "x32": x.astype(np.float32), "a": a, "b": b,
            "a32": a.astype(np.float32), "b32": b.astype(np.float32), "c32": c, **routes}


def initial_value_cases() -> dict:
    """key -> GemmSpec for the cases with an initial accumulator C (matmul's c=): tensor-core
    presets (C joining the block's alignment; B200 fp8: C added after) and a chunked sr sum."""
    from refsim import hardware
    from refsim.specs import AccumSpec, GemmSpec

    return {"m-c-h100-e4m3": hardware.gemm_spec("h100", "e4m3"),
            "m-c-b200-e4m3": hardware.gemm_spec("b200", "e4m3"),
            "m-c-a100-fp16": hardware.gemm_spec("a100", "fp16", "fp16"),
            "m-c-chunked-sr": GemmSpec(acc=AccumSpec("bf16", "sr", "chunked", chunk=2,
                                                     c_entry="outer"))}


def route_inputs() -> dict[str, np.ndarray]:
    """Operands for the fast routes (float32, K = 19: two BK slices of the tile kernel).
    e4m3 pair: row 0 of a with columns 0 and 1 of b are fp16 ties (1 + 2^-10 + 2^-11 rounds up
    to even, 1 + 2^-11 down), row 1 times column 3 overflows fp16, row 2 is in fp16's subnormal
    range, row 3 is -0 (column 4 of b is positive: a -0 sum), row 4 cancels to +0 with column
    2. wide pair (bf16 values, exponents -66..62): row 0 with column 0 overflows fp32, row 1
    with column 1 lies in fp32's subnormal range, row 2 is -0. mid pair (bf16 values,
    exponents -8..8; products too wide for fp16's double rounding): the same rows for fp16,
    and a double-rounding trap (row 3, column 2)."""
    import refsim

    rng = np.random.default_rng(SEED + 2)
    m, k, n = 6, 19, 5
    a = refsim.quantize(rng.standard_normal((m, k)).astype(np.float32) * 4, "e4m3fn")
    b = refsim.quantize(rng.standard_normal((k, n)).astype(np.float32) * 4, "e4m3fn")
    a[0] = 0.0
    a[0, :3] = [1.0, 2.0**-5, 2.0**-6]
    b[:3, 0] = [1.0, 2.0**-5, 2.0**-5]
    b[:3, 1] = [1.0, 0.0, 2.0**-5]
    b[:3, 2] = [1.0, -1.0, 0.0]
    a[1] = 448.0
    b[3:, 3] = 448.0
    a[2] = refsim.quantize(a[2] * 2.0**-9, "e4m3fn")
    a[3] = -0.0
    b[:, 4] = np.abs(b[:, 4])
    a[4] = 0.0
    a[4, :2] = 1.0

    def wide(shape, lo, hi):
        sig = refsim.quantize(rng.uniform(1, 2, shape).astype(np.float32), "bf16")
        signs = rng.choice(np.array([-1.0, 1.0], np.float32), shape)
        return (signs * sig * np.exp2(rng.integers(lo, hi + 1, shape))).astype(np.float32)

    wa, wb = wide((m, k), -66, 62), wide((k, n), -66, 62)
    wa[0], wb[:, 0] = np.abs(wide((k,), 62, 62)), np.abs(wide((k,), 62, 62))
    wa[1], wb[:, 1] = wide((k,), -66, -64), wide((k,), -66, -64)
    wa[2] = -0.0
    ma, mb = wide((m, k), -8, 8), wide((k, n), -8, 8)  # mid: bf16 values, fp16's range
    ma[0], mb[:, 0] = np.abs(wide((k,), 7, 8)), np.abs(wide((k,), 7, 8))  # fp16 overflow
    ma[1], mb[:, 1] = wide((k,), -10, -8), wide((k,), -10, -8)  # fp16 subnormals
    ma[2] = -0.0
    # Row 3 with column 2: 16 + (145/128)(113 * 2^-14) = 16 + 2^-7 + 2^-21, just above an fp16
    # midpoint; rne in float32 would land on it (a double-rounding error without round-to-odd).
    ma[3] = 0.0
    ma[3, :2] = [16.0, 145 / 128]
    mb[:2, 2] = [1.0, 113 * 2.0**-14]
    c = (rng.standard_normal((m, n)) * np.exp2(rng.integers(-6, 6, (m, n)))).astype(np.float32)
    c[0, 0], c[1, 1] = -0.0, 0.0
    return {"e4m3-a": a, "e4m3-b": b, "wide-a": wa, "wide-b": wb, "mid-a": ma, "mid-b": mb,
            "c": c}


def route_cases() -> dict[str, tuple]:
    """key -> (GemmSpec, a key, b key, with C, the CUDA route it must take)."""
    from refsim import hardware
    from refsim.kernels import tile
    from refsim.specs import AccumSpec, GemmSpec

    h100 = hardware.gemm_spec("h100", "e4m3")
    # cpu_tile offers the directed routes where the CPU has AVX-512 (its embedded roundings);
    # the CUDA route follows that decision.
    directed = tile.AVX512
    return {
        "r-fp32-e4m3": (GemmSpec(acc=AccumSpec("fp32")), "e4m3", False, "lane-native"),
        "r-fp32-wide": (GemmSpec(acc=AccumSpec("fp32")), "wide", False, "lane-native"),
        "r-fp64-f32": (GemmSpec(acc=AccumSpec("fp64")), "f32", False, "lane-native"),
        "r-fp16": (GemmSpec(acc=AccumSpec("fp16")), "e4m3", False, "double-rounding"),
        "r-bf16": (GemmSpec(acc=AccumSpec("bf16")), "e4m3", False, "double-rounding"),
        "r-fp16-chunk": (GemmSpec(acc=AccumSpec("fp16", "rne", "chunked", chunk=4,
                                                outer=AccumSpec("fp32"))),
                         "e4m3", False, "double-rounding"),
        "r-fp16-odd": (GemmSpec(acc=AccumSpec("fp16")), "mid", False, "tile-odd"),
        "r-fp32-rtz": (GemmSpec(acc=AccumSpec("fp32", "rtz")), "e4m3", False,
                       "lane-native" if directed else "exact"),
        "r-fp32-rdn": (GemmSpec(acc=AccumSpec("fp32", "rdn")), "e4m3", False,
                       "lane-native" if directed else "exact"),
        "r-fp32-rup-wide": (GemmSpec(acc=AccumSpec("fp32", "rup")), "wide", False,
                            "lane-native" if directed else "exact"),
        "r-fp16-rtz": (GemmSpec(acc=AccumSpec("fp16", "rtz")), "e4m3", False,
                       "directed-nested" if directed else "exact"),
        "r-bf16-rdn": (GemmSpec(acc=AccumSpec("bf16", "rdn")), "e4m3", False,
                       "directed-nested" if directed else "exact"),
        "r-fp16-rup-chunk": (GemmSpec(acc=AccumSpec("fp16", "rup", "chunked", chunk=4,
                                                    outer=AccumSpec("fp32", "rdn"))),
                             "mid", False, "directed-nested" if directed else "exact"),
        "r-mi250x-fp16": (hardware.gemm_spec("mi250x", "fp16"), "e4m3", False, "exact"),
        "r-h100-e4m3": (hardware.gemm_spec("h100", "e4m3"), "e4m3", True, "multiterm-lanes"),
        "r-b200-e4m3": (hardware.gemm_spec("b200", "e4m3"), "e4m3", True, "multiterm-lanes"),
        "r-a100-fp16": (hardware.gemm_spec("a100", "fp16", "fp16"), "e4m3", True,
                        "multiterm-lanes"),
        "r-v100-fp16": (hardware.gemm_spec("v100", "fp16"), "e4m3", False, "multiterm-lanes"),
        # the two's-complement variant (floor) with rdn (the signed-zero rule) and acc-excluded
        "r-mt-floor-rdn": (dataclasses.replace(h100, acc=dataclasses.replace(
            h100.acc, truncation="floor", rounding="rdn", variant="acc-excluded")), "e4m3",
            True, "multiterm-lanes"),
    }


def _route_operands(inputs: dict[str, np.ndarray], which: str) -> tuple[np.ndarray, np.ndarray]:
    if which == "f32":
        return inputs["a32"], inputs["b32"]
    return inputs[f"r-{which}-a"], inputs[f"r-{which}-b"]


def run_cases(inputs: dict[str, np.ndarray], cuda) -> dict[str, np.ndarray]:
    """The CUDA results of every case (device arrays in, device arrays out, checked here)."""
    import refsim
    from refsim.backends.cuda import is_device_array

    results = {}
    for key, fmt, rounding, kwargs in quantize_cases():
        x = inputs["x32" if "float32" in key else "x64"]
        got = refsim.quantize(cuda.to_device(x), fmt, rounding, seed=SEED, **kwargs)
        assert is_device_array(got), type(got)
        results[key] = got.copy_to_host()
    words = rbits_inputs()
    for n, (key, fmt, r_key, sr_bits) in enumerate(rbits_cases()):
        x = inputs["x32" if "float32" in key else "x64"]
        rbits = words[r_key] if n % 2 else cuda.to_device(words[r_key])  # NumPy or device
        got = refsim.quantize(cuda.to_device(x), fmt, "sr", sr_bits=sr_bits, rbits=rbits)
        results[key] = got.copy_to_host()
    for key, spec in matmul_specs().items():
        got, counts = refsim.matmul(cuda.to_device(inputs["a"]), cuda.to_device(inputs["b"]),
                                    spec, seed=SEED, counts=True)
        results[key] = got.copy_to_host()
        results[key + "-counts"] = np.array(list(counts.values()), np.int64)
    # float32 operands (float32 result), a NumPy operand mixed in, a batch of 2, and out=x.
    spec = matmul_specs()["m-chunked"]
    results["m-f32-mixed"] = refsim.matmul(inputs["a32"], cuda.to_device(inputs["b32"]),
                                           spec, seed=SEED).copy_to_host()
    a2 = np.stack([inputs["a"], -inputs["a"]])
    b2 = np.stack([inputs["b"], inputs["b"][::-1]])
    results["m-batched"] = refsim.matmul(cuda.to_device(a2), cuda.to_device(b2),
                                         matmul_specs()["m-kahan-sr"], seed=SEED).copy_to_host()
    for i, (key, spec) in enumerate(initial_value_cases().items()):
        c = inputs["c32"] if i % 2 else cuda.to_device(inputs["c32"])  # NumPy or device C
        results[key] = refsim.matmul(cuda.to_device(inputs["a32"]), inputs["b32"], spec, c,
                                     seed=SEED).copy_to_host()
    from refsim.backends.cuda import last_route

    for key, (spec, which, with_c, _) in route_cases().items():
        a, b = _route_operands(inputs, which)
        c = inputs["r-c"] if with_c else None
        results[key] = refsim.matmul(cuda.to_device(a), cuda.to_device(b), spec, c,
                                     seed=SEED).copy_to_host()
        results[key + "-route"] = np.array(last_route())
    a, b = _route_operands(inputs, "e4m3")
    spec = route_cases()["r-fp16"][0]
    results["r-fp16-exact"] = refsim.matmul(cuda.to_device(a), b, spec, seed=SEED,
                                            route="exact").copy_to_host()
    results["r-fp16-exact-route"] = np.array(last_route())
    try:  # no CUDA route for an sr accumulator: route="fast" says so
        refsim.matmul(cuda.to_device(a), b, matmul_specs()["m-sequential-sr"], route="fast")
    except ValueError as exc:
        assert "no CUDA fast route" in str(exc), exc
    else:
        raise AssertionError("route='fast' without a CUDA route was not refused")
    d = cuda.to_device(inputs["x32"])
    refsim.quantize(d, "e4m3fn", "sr", seed=SEED, out=d)
    results["q-inplace"] = d.copy_to_host()
    block = refsim.GemmSpec(a=refsim.Cast("mxfp8_e4m3"), acc=refsim.AccumSpec("fp32"))
    try:  # block casts run on the CPU only: refused with a clear message, never mis-rounded
        refsim.matmul(cuda.to_device(inputs["a32"]), cuda.to_device(inputs["b32"]), block)
    except NotImplementedError as exc:
        assert "mxfp8_e4m3" in str(exc) and "CPU only" in str(exc), exc
    else:
        raise AssertionError("a block Cast on CUDA was not refused")
    return results


def cpu_results(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same cases on the CPU backend."""
    import refsim

    expected = {}
    for key, fmt, rounding, kwargs in quantize_cases():
        x = inputs["x32" if "float32" in key else "x64"]
        expected[key] = refsim.quantize(x, fmt, rounding, seed=SEED, **kwargs)
    words = rbits_inputs()
    for key, fmt, r_key, sr_bits in rbits_cases():
        x = inputs["x32" if "float32" in key else "x64"]
        expected[key] = refsim.quantize(x, fmt, "sr", sr_bits=sr_bits, rbits=words[r_key])
    for key, spec in matmul_specs().items():
        got, counts = refsim.matmul(inputs["a"], inputs["b"], spec, seed=SEED, counts=True)
        expected[key] = got
        expected[key + "-counts"] = np.array(list(counts.values()), np.int64)
    expected["m-f32-mixed"] = refsim.matmul(inputs["a32"], inputs["b32"], matmul_specs()[
        "m-chunked"], seed=SEED)
    a2 = np.stack([inputs["a"], -inputs["a"]])
    b2 = np.stack([inputs["b"], inputs["b"][::-1]])
    expected["m-batched"] = refsim.matmul(a2, b2, matmul_specs()["m-kahan-sr"], seed=SEED)
    expected["q-inplace"] = refsim.quantize(inputs["x32"], "e4m3fn", "sr", seed=SEED)
    for key, spec in initial_value_cases().items():
        expected[key] = refsim.matmul(inputs["a32"], inputs["b32"], spec, inputs["c32"],
                                      seed=SEED)
    for key, (spec, which, with_c, route) in route_cases().items():
        a, b = _route_operands(inputs, which)
        c = inputs["r-c"] if with_c else None
        expected[key] = refsim.matmul(a, b, spec, c, seed=SEED, route="exact")
        expected[key + "-route"] = np.array(route)
    expected["r-fp16-exact"] = expected["r-fp16"]
    expected["r-fp16-exact-route"] = np.array("exact")
    return expected


CASE_KEYS = ([key for key, *_ in quantize_cases()] + ["q-inplace"]
             + [key for key, *_ in rbits_cases()]
             + [k for key in matmul_specs() for k in (key, key + "-counts")]
             + ["m-f32-mixed", "m-batched", *initial_value_cases()]
             + [k for key in [*route_cases(), "r-fp16-exact"] for k in (key, key + "-route")])


def _compare(actual: np.ndarray, expected: np.ndarray, key: str) -> None:
    from refsim.validation.bits import assert_same_bits

    if key.endswith("-route"):  # the CUDA route that ran (refsim.backends.cuda.last_route)
        assert str(actual) == str(expected), (key, str(actual), str(expected))
        return
    assert actual.dtype == expected.dtype, (key, actual.dtype, expected.dtype)
    if key.endswith("-counts"):
        np.testing.assert_array_equal(actual, expected, err_msg=key)
    else:
        assert_same_bits(actual, expected, context=key)


# ---- the simulator -----------------------------------------------------------------------------
def _child(mode: str, *args: str) -> subprocess.Popen:
    """This file run as a script in a child process (started, not waited for)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if mode in ("sim", "sweep"):
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    return subprocess.Popen([sys.executable, __file__, mode, *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, what: str) -> str:
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    assert proc.returncode == 0, f"{what} failed:\n{stdout}\n{stderr[-6000:]}"
    return stdout


@pytest.fixture(scope="module")
def sim_results(tmp_path_factory):
    """Every case run once in the simulator, in one child process, while this process computes
    the CPU results."""
    folder = tmp_path_factory.mktemp("cudasim")
    inputs = make_inputs()
    np.savez(folder / "inputs.npz", **inputs)
    proc = _child("sim", str(folder / "inputs.npz"), str(folder / "results.npz"))
    try:
        expected = cpu_results(inputs)
    finally:
        _finish(proc, "the simulator run")
    with np.load(folder / "results.npz") as data:
        actual = {key: data[key] for key in data.files}
    return actual, expected


@pytest.mark.parametrize("key", CASE_KEYS)
def test_simulator_matches_cpu(sim_results, key):
    actual, expected = sim_results
    _compare(actual[key], np.asarray(expected[key]), key)


SWEEP_SHAPES = ((1, 1, 1, 1), (2, 67, 33, 70), (1, 5, 40, 129))  # (P, M, K, N): tile edges


def sweep_inputs() -> dict[str, np.ndarray]:
    """Random operands for the slow route sweep: per shape, an e4m3fn pair (about one in eight
    values zero, either sign) scaled so that fp16 sums overflow now and then, and C."""
    import refsim

    rng = np.random.default_rng(SEED + 3)
    out = {}
    for s, (p, m, k, n) in enumerate(SWEEP_SHAPES):
        for name, shape in (("a", (p, m, k)), ("b", (p, k, n))):
            x = rng.standard_normal(shape) * np.exp2(rng.integers(-10, 9, shape))
            zeros = rng.random(shape) < 0.125
            x[zeros] = np.copysign(0.0, rng.standard_normal(int(zeros.sum())))
            out[f"s{s}-{name}"] = refsim.quantize(x.astype(np.float32), "e4m3fn",
                                                  overflow="saturate")
        out[f"s{s}-c"] = rng.standard_normal((p, m, n)).astype(np.float32)
    return out


def sweep_cases() -> dict[str, tuple]:
    """key -> (GemmSpec, with C, route) for the slow sweep."""
    return {key: (spec, with_c, route) for key, (spec, which, with_c, route)
            in route_cases().items() if which == "e4m3"}


def run_sweep(inputs: dict[str, np.ndarray], cuda) -> dict[str, np.ndarray]:
    """The CUDA results (and routes) of every sweep case on every shape."""
    import refsim
    from refsim.backends.cuda import last_route

    results = {}
    for key, (spec, with_c, _) in sweep_cases().items():
        for s in range(len(SWEEP_SHAPES)):
            c = inputs[f"s{s}-c"] if with_c else None
            got = refsim.matmul(cuda.to_device(inputs[f"s{s}-a"]),
                                cuda.to_device(inputs[f"s{s}-b"]), spec, c, seed=SEED)
            results[f"{key}-s{s}"] = got.copy_to_host()
            results[f"{key}-s{s}-route"] = np.array(last_route())
    return results


@pytest.mark.slow
def test_simulator_route_sweep(tmp_path):
    """Every e4m3 route case on shapes across the tile's edges (64 x 64 outputs, 16-deep K
    slices, a batch of 2), against the CPU exact core; the route must be the case's."""
    import refsim

    inputs = sweep_inputs()
    np.savez(tmp_path / "inputs.npz", **inputs)
    proc = _child("sweep", str(tmp_path / "inputs.npz"), str(tmp_path / "results.npz"))
    try:
        expected = {}
        for key, (spec, with_c, route) in sweep_cases().items():
            for s in range(len(SWEEP_SHAPES)):
                c = inputs[f"s{s}-c"] if with_c else None
                expected[f"{key}-s{s}"] = refsim.matmul(inputs[f"s{s}-a"], inputs[f"s{s}-b"],
                                                        spec, c, seed=SEED, route="exact")
                expected[f"{key}-s{s}-route"] = np.array(route)
    finally:
        _finish(proc, "the simulator sweep")
    with np.load(tmp_path / "results.npz") as data:
        assert set(data.files) == set(expected)
        for key in data.files:
            _compare(data[key], np.asarray(expected[key]), key)


# ---- PTX of the real kernels --------------------------------------------------------------------
PTX_FAST = ("quantize-sr-float32", "quantize-float64", "matmul-pairwise", "matmul-chunked",
            "route-tile", "route-multiterm")
PTX_ALL = ("quantize-float32", "quantize-sr-float64", "matmul-sequential", "matmul-kahan",
           "matmul-multiterm")


def compile_ptx(names: list[str]) -> dict:
    """PTX of the named real kernels for sm_80: {"skip": reason} without a CUDA toolkit."""
    from numba import cuda
    from numba.core import types

    try:  # the toolkit (libNVVM) is found?
        cuda.compile_ptx(lambda x: None, (types.float32[::1],), cc=(8, 0))
    except Exception as exc:  # NvvmSupportError, CudaSupportError, OSError, ...
        return {"skip": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
    if not cuda.is_available():
        # Numba 0.68's built-in target asks the current device for its compute capability when
        # it compiles a device function (even for compile_ptx with cc given): stand in for it.
        from types import SimpleNamespace

        import numba.cuda.dispatcher as dispatcher

        dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=(8, 0))
    from refsim.backends import cuda as backend
    from refsim.kernels.accum_core import N_MT
    from refsim.kernels.core import N_PARAMS

    backend._cuda()
    u64, i64 = types.uint64, types.int64
    spec = types.UniTuple(i64, N_PARAMS + 3)
    out = {}
    for name in names:
        kind, _, rest = name.partition("-")
        if kind == "route":
            ptx = _route_ptx(rest)
            out[name] = {"bytes": len(ptx), "ld_local": ptx.count("ld.local"),
                         "fma": ptx.count("fma.rn.f32")}
            continue
        if kind == "quantize":
            sr = rest.startswith("sr-")
            dtype = rest.removeprefix("sr-")
            c_man, c_bias = (23, 127) if dtype == "float32" else (52, 1023)
            carrier = types.uint32 if dtype == "float32" else u64
            kernel = backend._quantize_kernels(c_man, c_bias)[1 if sr else 0]
            sig = (carrier[::1], carrier[::1], types.UniTuple(i64, N_PARAMS), i64, i64, i64, u64)
        else:
            kernel = backend._matmul_kernel(rest)
            arr = u64[:, :, ::1]
            sig = (arr, arr, types.boolean, u64[::1], types.boolean, u64[::1], types.boolean,
                   u64[::1], i64[:, ::1], types.boolean, i64, spec, spec, types.boolean, spec,
                   types.boolean, spec, types.UniTuple(i64, N_MT), u64)
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(8, 0))
        out[name] = {"bytes": len(ptx), "mul_hi_u64": ptx.count("mul.hi.u64")}
    return out


def _route_ptx(which: str) -> str:
    """PTX (sm_80) of a fast-route kernel of refsim.backends.cuda_tile: the fp16 double-rounding
    tile, or the multiterm kernel of the H100 e4m3 preset."""
    from numba import cuda
    from numba.core import types

    from refsim import hardware
    from refsim.backends import cpu_multiterm, cuda_tile
    from refsim.backends.operands import OperandRange

    f32, f64, i64, b1 = types.float32, types.float64, types.int64, types.boolean
    if which == "tile":
        fp16 = cuda_tile._rounder(hardware.gemm_spec("h100", "fp16").a.fmt, np.dtype("float32"))
        kernel = cuda_tile._tile_kernel("float32", fp16, 0, 0, False, 0, cuda_tile.TILE)  # rne
        sig = (f32[:, :, ::1], f32[:, :, ::1], f64[::1], i64, i64, i64, i64)
        return cuda.compile_ptx(kernel.py_func, sig, cc=(8, 0))[0]
    e4m3 = OperandRange(True, 4, -9, 8)
    mt = cpu_multiterm.plan(hardware.gemm_spec("h100", "e4m3").acc, e4m3, e4m3, None)
    assert mt is not None
    fast = types.UniTuple(types.uint64, len(mt.fast))
    arr = f64[:, :, ::1]
    sig = (arr, arr, f64[::1], b1, b1, f64[::1], *[i64] * 8, b1, fast, fast)
    return cuda.compile_ptx(cuda_tile._mt_kernel(mt.key).py_func, sig, cc=(8, 0))[0]


def _check_ptx(names: tuple[str, ...]) -> dict:
    stdout = _finish(_child("ptx", *names), "PTX compilation")
    report = json.loads(stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(f"no CUDA toolkit/libNVVM: {report['skip']}")
    assert set(report) == set(names)
    return report


def test_real_kernels_compile_to_ptx():
    report = _check_ptx(PTX_FAST)
    # Philox on CUDA takes its high words from umul64hi (refsim.backends.cuda's overload).
    assert report["quantize-sr-float32"]["mul_hi_u64"] > 0
    # The 4 x 4 register tile: its accumulators in registers (no local memory), one FMA per
    # output and step (the multiply and add contracted; the product is exact).
    assert report["route-tile"]["ld_local"] == 0, report["route-tile"]
    assert report["route-tile"]["fma"] >= 16, report["route-tile"]


@pytest.mark.slow
def test_every_real_kernel_compiles_to_ptx():
    _check_ptx(PTX_ALL)


# ---- a real GPU ---------------------------------------------------------------------------------
def _real_cuda():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("NUMBA_ENABLE_CUDASIM=1: the simulator is not a GPU")
    from numba import cuda

    if not cuda.is_available():
        pytest.skip("numba.cuda.is_available() is False: no usable NVIDIA GPU/driver here")
    return cuda


@pytest.mark.cuda
def test_gpu_matches_cpu():
    cuda = _real_cuda()
    inputs = make_inputs()
    actual = run_cases(inputs, cuda)
    expected = cpu_results(inputs)
    for key in CASE_KEYS:
        _compare(actual[key], np.asarray(expected[key]), key)


@pytest.mark.cuda
def test_gpu_stream_words_match_numpy_philox():
    cuda = _real_cuda()
    from numba import cuda as numba_cuda

    from refsim.backends.cuda import _cuda
    from refsim.kernels.rng import random_words, stream_word

    _cuda()  # registers the CUDA overloads (umul64hi) before compiling

    @numba_cuda.jit
    def words(out, seed):
        for i in range(numba_cuda.grid(1), out.size, numba_cuda.gridsize(1)):
            out[i] = stream_word(seed, i, 0)

    out = cuda.device_array(1 << 16, np.uint64)
    words[64, 256](out, np.uint64(SEED))
    np.testing.assert_array_equal(out.copy_to_host(), random_words(SEED, 1 << 16))


# ---- the child processes ------------------------------------------------------------------------
def _main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "sim":
        from numba import cuda
        from numba.core import config

        assert config.ENABLE_CUDASIM, "the simulator run needs NUMBA_ENABLE_CUDASIM=1"
        with np.load(argv[1]) as data:
            inputs = {key: data[key] for key in data.files}
        np.savez(argv[2], **run_cases(inputs, cuda))
    elif mode == "sweep":
        from numba import cuda
        from numba.core import config

        assert config.ENABLE_CUDASIM, "the simulator run needs NUMBA_ENABLE_CUDASIM=1"
        with np.load(argv[1]) as data:
            inputs = {key: data[key] for key in data.files}
        np.savez(argv[2], **run_sweep(inputs, cuda))
    elif mode == "ptx":
        print(json.dumps(compile_ptx(argv[1:])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    _main(sys.argv[1:])
