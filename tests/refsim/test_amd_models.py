"""AMD matrix-core models (refsim.hardware mi300x, mi250x fp16) and the AccumSpec features they
are built from: the late accumulator (late_bits, late_norm_bits, late_truncation, c_cutoff,
interleave) and pairwise chunks (chunk_order), each against the Fraction twin
refsim.formats.exact_sum on hand-made vectors that exercise exactly what the field changes, on
random data, on the torch exact path and on the CUDA kernel (simulator)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refsim import hardware, matmul, quantize
from refsim.formats.exact_sum import matmul_exact
from refsim.specs import AccumSpec, GemmSpec
from refsim.validation.bits import assert_same_bits

ROOT = Path(__file__).resolve().parents[2]
MI300X = ("fp16", "bf16", "tf32", "e4m3", "e5m2")


def _same(actual, expected, context: str) -> None:
    assert_same_bits(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                     context=context)


def _one(device: str, input_format: str, a, b, c=None) -> float:
    """D = a . b + c for one row through the preset, checked against the twin; as a float."""
    spec = hardware.gemm_spec(device, input_format)
    x = np.array([a], np.float32)
    y = np.array(b, np.float32)[:, None]
    cc = None if c is None else np.array([[c]], np.float32)
    got = matmul(x, y, spec, c=cc, route="exact")
    _same(got, matmul_exact(x, y, spec, c=cc), context=f"{device} {input_format} {a} {b} {c}")
    return float(got[0, 0])


# ---- Algorithm 1 (CDNA 3 fp16, bf16, tf32) -------------------------------------------------------
def test_c_below_the_products_is_rounded_down_to_their_grid():
    """Products keep 24 fraction bits below their exponent (here 2^-24); a smaller C joins that
    grid rounded toward -inf: +2^-30 vanishes, -2^-30 costs a whole unit."""
    for fmt in ("fp16", "bf16", "tf32"):
        assert _one("mi300x", fmt, [1.0], [1.0], 2.0**-30) == 1.0
        assert _one("mi300x", fmt, [1.0], [1.0], -(2.0**-30)) == 1 - 2.0**-24
    # The NVIDIA-style block (C truncated toward zero with the products) keeps 1.0 both ways.
    for c in (2.0**-30, -(2.0**-30)):
        assert matmul(np.ones((1, 1), np.float32), np.ones((1, 1), np.float32),
                      hardware.gemm_spec("a100", "fp16"), c=np.array([[c]], np.float32)) == 1.0


def test_c_above_the_products_takes_a_rounded_down_sum():
    """C = 1 above p = 2^-24 + 2^-32: p moves to 32 fraction bits below C's exponent (exact),
    the sum is renormalized and rounded down to 31 fraction bits (1 + 2^-24, a tie that RNE
    takes to 1); negated, rounding down gives -(1 + 2^-24 + 2^-31), which RNE takes to
    -(1 + 2^-23): the model is not sign-symmetric."""
    a, b = [2.0**-12 * (1 + 2.0**-8)], [2.0**-12]  # fp16 values; p = 2^-24 + 2^-32
    assert _one("mi300x", "fp16", a, b, 1.0) == 1.0
    assert _one("mi300x", "fp16", [-a[0]], b, -1.0) == -(1 + 2.0**-23)
    # Exact addition then one RNE (MI100) gives 1 + 2^-23 for the positive case.
    assert _one("mi100", "fp16", a + [0.0] * 3, b + [0.0] * 3, 1.0) == 1 + 2.0**-23


def test_a_zero_c_has_exponent_emin_and_rounds_tiny_products_down_first():
    """tf32 p = 2^-150 (1 + 2^-9 + 2^-20), below 2^-126: C = 0 (exponent -126) is larger, so p
    moves to 2^-158 rounding down (2^-150 + 0), is cut to 31 fraction bits below 2^-126, and
    the tie 2^-150 goes to even, 0; rounding p directly would give 2^-149."""
    x = 2.0**-75 * (1 + 2.0**-10)
    assert _one("mi300x", "tf32", [x], [x]) == 0.0
    assert _one("mi300x", "tf32", [x], [x], 0.0) == 0.0
    assert _one("mi300x", "tf32", [-x], [x]) == -(2.0**-149)  # down: -(2^-150 + 2^-158)
    assert float(np.float32(x * x)) == 2.0**-149


def test_late_norm_bits_cut_the_late_sum():
    """Five fraction bits kept after renormalization instead of 31: C = 1 and p = 2^-6 give
    1 + 2^-6 rounded down to 1 (and -1 - 2^-6 down to -1 - 2^-5)."""
    spec = hardware.gemm_spec("mi300x", "fp16")
    acc = dataclasses.replace(spec.acc, late_norm_bits=5)
    short = dataclasses.replace(spec, acc=acc)
    x = np.array([[2.0**-3]], np.float32)
    y = np.array([[2.0**-3]], np.float32)
    for sign, want in ((1.0, 1.0), (-1.0, -1 - 2.0**-5)):
        cc = np.array([[sign]], np.float32)
        xx = sign * x
        got = matmul(xx, y, short, c=cc)
        assert got[0, 0] == want
        _same(got, matmul_exact(xx, y, short, c=cc), context="late_norm_bits")


# ---- Algorithm 2 (CDNA 3 fp8) -------------------------------------------------------------------
def test_interleaved_subsets_are_aligned_apart():
    """e4m3fnuz: p0 = 2^14 and p1 = -(2^-14 + 2^-17) in different subsets (positions 0 and 1):
    p1 is exact in its own subset, then moved to the group's grid 2^-10 rounding down, -2^-10.
    In the same subset (positions 0 and 2) p1 is truncated toward zero there: 0."""
    big, small = [128.0, -(2.0**-7) * 1.125], [128.0, 2.0**-7]
    for fmt in ("e4m3", "e5m2"):
        assert _one("mi300x", fmt, big, small) == 2.0**14 - 2.0**-10
        assert _one("mi300x", fmt, [big[0], 0.0, big[1]], [small[0], 0.0, small[1]]) == 2.0**14
    assert _one("mi300x", "fp16", big, small) == 2.0**14  # Algorithm 1: one alignment


def test_c_far_below_is_dropped_in_fp8():
    """fp8: a C more than 25 binades below the products adds nothing (not even the unit that
    rounding a negative C down costs); within 25 it is rounded down as in Algorithm 1. The
    products' exponent is 14 (grid 2^-10): C = -2^-11 is 25 below, -2^-12 26."""
    assert _one("mi300x", "e4m3", [128.0], [128.0], -(2.0**-12)) == 2.0**14
    assert _one("mi300x", "e4m3", [128.0], [128.0], -(2.0**-11)) == 2.0**14 - 2.0**-10
    assert _one("mi300x", "e4m3", [128.0], [128.0], -(2.0**-8)) == 2.0**14 - 2.0**-8
    assert _one("mi300x", "fp16", [128.0], [128.0], -(2.0**-12)) == 2.0**14 - 2.0**-10


def test_fp8_operands_are_fnuz():
    spec = hardware.gemm_spec("mi300x", "e4m3")
    assert spec.a.fmt.name == "e4m3fnuz" and spec.acc.operands.name == "e4m3fnuz"
    assert hardware.gemm_spec("mi300x", "e5m2").acc.operands.name == "e5m2fnuz"
    assert float(np.max(quantize(np.array([1000.0]), "e4m3fnuz", "rne",
                                 overflow="saturate"))) == 240.0


# ---- CDNA 2 fp16: pairwise blocks of 4 ----------------------------------------------------------
def test_mi250x_fp16_sums_a_block_pairwise():
    """Products 1, 2^-24, 2^-24, 2^-24: pairwise fl(fl(1 + 2^-24) + fl(2^-24 + 2^-24)) =
    1 + 2^-23; a sequential chunk would give 1 (each 2^-24 a tie to even)."""
    a = [1.0, 2.0**-12, 2.0**-12, 2.0**-12]
    assert _one("mi250x", "fp16", a, a) == 1 + 2.0**-23
    assert _one("mi250x", "fp16", a, a, 0.0) == 1 + 2.0**-23
    spec = hardware.gemm_spec("mi250x", "fp16")
    sequential = dataclasses.replace(spec, acc=dataclasses.replace(spec.acc, chunk_order=None))
    x = np.array([a], np.float32)
    got = matmul(x, x.T.copy(), sequential, c=np.zeros((1, 1), np.float32))
    assert got[0, 0] == 1.0
    # Subnormal fp16 inputs are flushed: 2^-20 * 1 contributes nothing.
    assert _one("mi250x", "fp16", [2.0**-20, 1.0], [1.0, 1.0]) == 1.0


def test_pairwise_chunks_match_the_twin_in_every_rounding():
    rng = np.random.default_rng(1502)
    a = (rng.standard_normal((3, 11)) * np.exp2(rng.integers(-20, 20, (3, 11)))).astype(np.float32)
    b = rng.standard_normal((11, 2)).astype(np.float32)
    c = rng.standard_normal((3, 2))
    for rounding in ("rne", "rtz", "rdn", "sr"):
        for chunk, c_entry in ((4, "outer"), (3, "inner"), (11, "inner")):
            acc = AccumSpec("bf16", rounding, "chunked", chunk=chunk, chunk_order="pairwise",
                            outer="fp32", c_entry=c_entry)
            spec = GemmSpec(acc=acc)
            for cc in (c, None):
                got = matmul(a, b, spec, c=cc, seed=9, route="exact")
                _same(got, matmul_exact(a, b, spec, c=cc, seed=9), context=f"{acc} {cc is None}")


# ---- the features in every variant, random data --------------------------------------------------
LATE = [dict(late_truncation=t, c_cutoff=cut, interleave=il, late_norm_bits=nb)
        for t in ("toward-zero", "floor") for cut in (None, 0, 3) for il in (None, 2, 4)
        for nb in (4, 31)]


def _values(rng, shape, spread: int) -> np.ndarray:
    """fp16-exact values over 2 * spread binades, with zeros of both signs."""
    x = (1 + rng.integers(0, 2**10, shape) / 2**10) * np.exp2(rng.integers(-spread, spread,
                                                                            shape))
    x *= rng.choice([-1.0, 1.0], shape)
    pick = rng.random(shape)
    x[pick < 0.1] = 0.0
    x[(pick >= 0.1) & (pick < 0.15)] = -0.0
    return x.astype(np.float32)


@pytest.mark.parametrize("options", LATE, ids=[f"{o['late_truncation'][:5]}-{o['c_cutoff']}-"
                                                f"{o['interleave']}-{o['late_norm_bits']}"
                                                for o in LATE])
def test_late_accumulator_matches_the_twin(options):
    rng = np.random.default_rng(1503 + LATE.index(options))
    a = _values(rng, (3, 17), 12)
    b = _values(rng, (17, 2), 12)
    c = (rng.standard_normal((3, 2)) * np.exp2(rng.integers(-40, 40, (3, 2)))).astype(np.float32)
    c[0, 0], c[1, 1], c[2, 0] = -0.0, 2.0**-149, -(2.0**60)
    rounding = ("rne", "rtz", "rdn", "sr")[LATE.index(options) % 4]
    for fmt, width, group in (("fp32", 25, 8), ("bf16", 5, 4)):
        acc = AccumSpec(fmt, rounding, "multiterm", group=group, width=width,
                        variant="acc-aligned", align="product", operands="fp16",
                        late_bits=max(32 if fmt == "fp32" else 8, options["late_norm_bits"]),
                        chunk=2 * group if fmt == "bf16" else None, outer="fp32", **options)
        spec = GemmSpec(acc=acc)
        for cc in (c, None):
            got = matmul(a, b, spec, c=cc, seed=5)
            _same(got, matmul_exact(a, b, spec, c=cc, seed=5), context=str(acc))


def test_presets_match_the_twin_on_random_data():
    rng = np.random.default_rng(1504)
    for input_format in MI300X:
        spec = hardware.gemm_spec("mi300x", input_format)
        fmt = spec.a.fmt
        spread = 6 if input_format in ("e4m3", "e5m2") else 14
        a = np.asarray(quantize(_values(rng, (4, 35), spread), fmt, "rne", overflow="saturate"),
                       np.float32)
        b = np.asarray(quantize(_values(rng, (35, 3), spread), fmt, "rne", overflow="saturate"),
                       np.float32)
        c = (rng.standard_normal((4, 3)) * np.exp2(rng.integers(-30, 30, (4, 3))))
        c = c.astype(np.float32)
        for cc in (c, None):
            _same(matmul(a, b, spec, c=cc), matmul_exact(a, b, spec, c=cc), context=input_format)
    spec = hardware.gemm_spec("mi250x", "fp16")
    a, b = _values(rng, (4, 19), 10), _values(rng, (19, 3), 10)
    c = rng.standard_normal((4, 3)).astype(np.float32)
    for cc in (c, None):
        _same(matmul(a, b, spec, c=cc, route="exact"), matmul_exact(a, b, spec, c=cc),
              context="mi250x fp16")


def test_spec_fields_are_checked_and_round_trip():
    base = dict(fmt="fp32", order="multiterm", group=8, width=25, variant="acc-aligned")
    for spec in [hardware.gemm_spec("mi300x", f) for f in MI300X] + [
            hardware.gemm_spec("mi250x", "fp16")]:
        assert GemmSpec.from_toml(spec.to_toml()) == spec
        assert GemmSpec.from_dict(spec.to_dict()) == spec
    late = AccumSpec(**base, late_bits=32, late_norm_bits=31)
    assert late.late_truncation == "toward-zero"  # the products' truncation by default
    assert "late_bits=32" in str(late)
    assert AccumSpec("fp32", "rne", "chunked", chunk=4, chunk_order="sequential") == \
        AccumSpec("fp32", "rne", "chunked", chunk=4)
    for kwargs, message in (
            (dict(base, late_bits=32), "needs late_norm_bits"),
            (dict(base, late_bits=32, late_norm_bits=33), "late_norm_bits .33. must be at most"),
            (dict(base, late_bits=20, late_norm_bits=3), "at least fmt's mantissa bits"),
            (dict(base, late_bits=58, late_norm_bits=3), "plus 2 must be at most 62"),
            (dict(base, variant="acc-excluded", late_bits=32, late_norm_bits=31),
             "variant='acc-aligned' only"),
            (dict(base, c_cutoff=3), "c_cutoff needs late_bits"),
            (dict(base, interleave=2), "interleave needs late_bits"),
            (dict(base, late_bits=32, late_norm_bits=31, interleave=3), "must divide group"),
            (dict(base, late_bits=32, late_norm_bits=31, late_truncation="up"),
             "late_truncation must be one of toward-zero, floor"),
            (dict(base, late_bits=32, late_norm_bits=31, c_cutoff=-1), "c_cutoff must be"),
            (dict(fmt="fp32", order="multiterm", group=8, width=25, chunk_order="pairwise"),
             "chunk_order applies to order='chunked' only"),
            (dict(fmt="fp32", order="chunked", chunk=4, chunk_order="tree"),
             "chunk_order must be one of sequential, pairwise")):
        with pytest.raises(ValueError, match=message):
            AccumSpec(**kwargs)


# ---- the torch exact path and the CUDA kernel ---------------------------------------------------
def test_torch_exact_matches_the_cpu():
    torch = pytest.importorskip("torch")
    from refsim.torch_ops import matmul as torch_matmul

    rng = np.random.default_rng(1505)
    specs = [hardware.gemm_spec("mi300x", f) for f in MI300X]
    specs.append(hardware.gemm_spec("mi250x", "fp16"))
    for spec in specs:
        a = np.asarray(quantize(_values(rng, (2, 3, 21), 6), spec.a.fmt, "rne",
                                overflow="saturate"), np.float32)
        b = np.asarray(quantize(_values(rng, (21, 2), 6), spec.a.fmt, "rne",
                                overflow="saturate"), np.float32)
        c = (rng.standard_normal((3, 2)) * np.exp2(rng.integers(-30, 30, (3, 2))))
        c = c.astype(np.float32)
        for cc in (c, None):
            got = torch_matmul(torch.from_numpy(a), torch.from_numpy(b), spec,
                               None if cc is None else torch.from_numpy(cc))
            _same(got.numpy(), matmul(a, b, spec, c=cc, route="exact"), context=str(spec.acc))


_CUDA_CHILD = """
import json, sys
import numpy as np
from numba import cuda
import refsim
from refsim import hardware
data = json.loads(sys.stdin.read())
out = {}
for key, (device, fmt) in data["cases"].items():
    a, b, c = (np.array(data[key + x], np.float32) for x in ("a", "b", "c"))
    spec = hardware.gemm_spec(device, fmt)
    out[key] = refsim.matmul(cuda.to_device(a), cuda.to_device(b), spec, c).copy_to_host().tolist()
    out[key + "-noc"] = refsim.matmul(cuda.to_device(a), cuda.to_device(b), spec).copy_to_host(
        ).tolist()
print(json.dumps(out))
"""


def test_cuda_kernel_matches_the_twin():
    """The CUDA kernel (Numba's simulator, in a subprocess) on a tiny case of each new feature:
    late C with interleaved subsets (mi300x e4m3), Algorithm 1 (fp16), pairwise chunks (mi250x)."""
    pytest.importorskip("numba.cuda")
    rng = np.random.default_rng(1506)
    cases = {"e4m3": ("mi300x", "e4m3"), "fp16": ("mi300x", "fp16"), "p": ("mi250x", "fp16")}
    data: dict = {"cases": cases}
    for key, (device, fmt) in cases.items():
        spec = hardware.gemm_spec(device, fmt)
        a = np.asarray(quantize(_values(rng, (2, 18), 5), spec.a.fmt, "rne",
                                overflow="saturate"), np.float32)
        b = np.asarray(quantize(_values(rng, (18, 2), 5), spec.a.fmt, "rne",
                                overflow="saturate"), np.float32)
        c = (rng.standard_normal((2, 2)) * 2.0**-6).astype(np.float32)
        data.update({key + "a": a.tolist(), key + "b": b.tolist(), key + "c": c.tolist()})
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _CUDA_CHILD], input=json.dumps(data),
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for key, (device, fmt) in cases.items():
        spec = hardware.gemm_spec(device, fmt)
        a, b, c = (np.array(data[key + x], np.float32) for x in ("a", "b", "c"))
        _same(np.array(got[key], np.float32), matmul_exact(a, b, spec, c=c), context=key)
        _same(np.array(got[key + "-noc"], np.float32), matmul_exact(a, b, spec),
              context=key + " without C")


def test_mi250x_fp16_pairwise_chunks_on_the_default_route():
    # The fast routes sum a chunk left to right; a pairwise chunk must go to the exact core.
    a = np.array([[1.0, 2.0**-12, 2.0**-12, 2.0**-12]], np.float32)
    spec = hardware.gemm_spec("mi250x", "fp16")
    want = matmul(a, a.T, spec, route="exact")
    assert float(want[0, 0]) == 1.0 + 2.0**-23
    np.testing.assert_array_equal(matmul(a, a.T, spec), want)
