"""refsim.hardware.characterize: black boxes (refsim's presets, specs that are not presets, the
CPU BLAS) characterized from crafted vectors; the spec it returns reproduces the box on every
vector it used and on 10^4 random rows (characterize checks those itself and raises otherwise),
and the preset rows of real GPUs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from refsim import hardware, matmul
from refsim.characterize import NoModelError, spec_equal_on
from refsim.formats import FloatFormat
from refsim.specs import AccumSpec, Cast, GemmSpec

DATA = Path(__file__).resolve().parents[1] / "data" / "tensor_cores"


def _box(spec: GemmSpec):
    calls = []

    def mma(a, b, c):
        calls.append(a.shape)
        return matmul(a, b, spec, c=c)
    mma.calls = calls  # type: ignore[attr-defined]
    return mma


def _operands(row: hardware.Preset) -> str:
    """The input format characterize is told: the preset's operand format (FNUZ on MI300X)."""
    fmt = row.spec.a.fmt if row.spec.a is not None else None
    return fmt.name if isinstance(fmt, FloatFormat) and row.device == "mi300x" else row.input


def _recovered(row: hardware.Preset) -> hardware.Characterization:
    box = _box(row.spec)
    found = hardware.characterize(box, _operands(row), row.out)
    assert found.random_rows >= 10_000 and found.calls == len(box.calls)
    assert spec_equal_on(found.spec, row.spec, found.probes), (row.device, found.spec)
    return found


FAST = [("a100", "fp16", "fp32"), ("h100", "e4m3", "fp16"), ("mi250x", "bf16", "fp32")]
ROWS = [row for row in hardware.devices() if row.device not in hardware.ALIASES]


@pytest.mark.parametrize("key", FAST, ids="/".join)
def test_presets_are_recovered(key):
    row = next(r for r in ROWS if (r.device, r.input, r.out) == key)
    found = _recovered(row)
    names = {f.name: f for f in found.evidence}
    report = found.report()
    assert "group size" in names
    assert "mma calls" in report and str(found.spec) in report
    if key == ("h100", "e4m3", "fp16"):  # interleaved groups, C after: read off and decided
        assert found.spec.acc.group_run == 2 and found.spec.acc.c_entry == "outer"
        assert names["interleaved groups"].value.endswith("runs of 2")
        assert names["fraction bits kept (F)"].value == "25"
        assert names["where C joins"].rejected  # alternatives eliminated by named vectors


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.device}/{r.input}/{r.out}")
def test_every_preset_is_recovered(row):
    _recovered(row)


UNUSUAL = [
    AccumSpec("fp32", "rtz", "multiterm", group=24, width=20, chunk=48, group_run=4,
              variant="acc-aligned", align="product", operands="e5m2"),
    AccumSpec("fp32", "rtz", "multiterm", group=8, width=18, chunk=8, outer=AccumSpec("fp32"),
              c_entry="outer", variant="acc-aligned", align="product", truncation="floor",
              operands="bf16"),
    AccumSpec(FloatFormat(8, 15), "rne", "multiterm", group=4, width=17, variant="acc-aligned",
              align="normalized", operands="fp16")]
UNUSUAL_IDS = ["e5m2-g24-run4-F19", "bf16-g8-F17-floor-c-after",
               "fp16-g4-F16-normalized-e8m15-rne"]


@pytest.mark.parametrize("acc", [
    pytest.param(acc, marks=[pytest.mark.slow] if i else [], id=UNUSUAL_IDS[i])
    for i, acc in enumerate(UNUSUAL)])
def test_unusual_black_boxes_are_recovered(acc):
    fmt = acc.operands
    spec = GemmSpec(a=Cast(fmt), b=Cast(fmt), acc=acc)
    found = hardware.characterize(_box(spec), fmt.name, "fp32", random_rows=2500)
    assert spec_equal_on(found.spec, spec, found.probes)
    assert found.spec.acc.group == acc.group and found.spec.acc.width == acc.width
    assert found.spec.acc.group_run == acc.group_run


@pytest.mark.slow
def test_a_box_outside_the_families_is_refused_with_its_vectors():
    """Round to nearest, ties away, after an exact sum: no block rounding refsim tries."""
    from refsim.quantize import quantize

    def mma(a, b, c):
        exact = (a.astype(np.longdouble) @ b.astype(np.longdouble)) + c
        return quantize(np.asarray(exact, np.float64), "bf16", "rna")

    with pytest.raises(NoModelError) as info:
        hardware.characterize(mma, "e4m3", "bf16", random_rows=100)
    assert info.value.probes and "mma gave" in str(info.value)


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_cpu_blas(library, dtype):
    """numpy's and torch's CPU matmul: a spec that reproduces them, or a refusal naming the
    vector where the closest model fails (docs/hardware.md says what this machine's BLAS
    does: exact products, no truncation window, an order over K refsim does not express)."""
    if library == "torch":
        torch = pytest.importorskip("torch")
        tdt = torch.float32 if dtype == "fp32" else torch.float64

        def mma(a, b, c):
            t = torch.from_numpy
            return (t(a).to(tdt) @ t(b).to(tdt) + t(c).to(tdt)).double().numpy()
    else:
        ndt = np.float32 if dtype == "fp32" else np.float64

        def mma(a, b, c):
            return (a.astype(ndt) @ b.astype(ndt) + c.astype(ndt)).astype(np.float64)
    try:
        found = hardware.characterize(mma, dtype, dtype, random_rows=2500)
    except NoModelError as exc:
        assert exc.probes or exc.feature == "random rows"
        return
    assert found.spec.acc.fmt.man_bits == (23 if dtype == "fp32" else 52)


def test_real_gpu_rows_agree_with_the_characterized_spec():
    """The spec characterize reads off the h100 fp8 fp16-output preset reproduces the H100 rows."""
    row = next(r for r in ROWS if (r.device, r.input, r.out) == ("h100", "e4m3", "fp16"))
    found = hardware.characterize(_box(row.spec), "e4m3", "fp16", random_rows=400)
    with np.load(DATA / "h100_e4m3_fp16.npz") as data:
        a, b, d = data["a"], data["b"], data["d"]
        c = data["c"].astype(np.float16).astype(np.float32)
    got = matmul(a[:, None, :], b[:, :, None], found.spec, c=c[:, None, None])
    assert np.array_equal(np.asarray(got, np.float32).reshape(-1).view(np.uint32), d)


@pytest.mark.slow
@pytest.mark.parametrize("name, key", [
    ("v100_fp16", ("v100", "fp16", "fp32")), ("a100_fp16", ("a100", "fp16", "fp32")),
    ("h100_fp16", ("h100", "fp16", "fp32")), ("h100_e4m3", ("h100", "e4m3", "fp32")),
    ("l40s_fp16_fp16", ("l40s", "fp16", "fp16"))])
def test_every_real_gpu_file_agrees_with_the_characterized_spec(name, key):
    row = next(r for r in ROWS if (r.device, r.input, r.out) == key)
    found = hardware.characterize(_box(row.spec), row.input, row.out, random_rows=400)
    with np.load(DATA / f"{name}.npz") as data:
        a, b, d, c = data["a"], data["b"], data["d"], data["c"]
    if key[2] == "fp16":
        c = c.astype(np.float16).astype(np.float32)
    got = matmul(a[:, None, :], b[:, :, None], found.spec, c=c[:, None, None])
    assert np.array_equal(np.asarray(got, np.float32).reshape(-1).view(np.uint32), d)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="k must be an int >= 8"):
        hardware.characterize(lambda a, b, c: a @ b + c, "fp16", k=4)
    with pytest.raises(ValueError, match="floating-point"):
        hardware.characterize(lambda a, b, c: a @ b + c, "int8")
    with pytest.raises(ValueError, match="mma returned shape"):
        hardware.characterize(lambda a, b, c: np.zeros(3), "fp16")


def test_command_line(tmp_path, monkeypatch, capsys):
    from refsim.cli import main

    (tmp_path / "black_box.py").write_text(
        "from refsim import hardware, matmul\n"
        "spec = hardware.gemm_spec('v100', 'fp16', 'fp16')\n"
        "def mma(a, b, c):\n"
        "    return matmul(a, b, spec, c=c)\n"
        "def broken(a, b, c):\n"
        "    return a @ b + c + 1e-3\n")
    monkeypatch.chdir(tmp_path)
    assert main(["characterize", "--device-module", "black_box:mma", "--input", "fp16",
                 "--out", "fp16", "--random-rows", "400", "--toml"]) == 0
    out = capsys.readouterr().out
    assert "group size: 4" in out and 'rounding = "rne"' in out
    assert main(["characterize", "--device-module", "black_box:broken", "--input", "fp16",
                 "--random-rows", "100"]) == 1
    assert capsys.readouterr().out.startswith("no model: ")
    assert main(["characterize", "--device-module", "black_box", "--input", "fp16"]) == 2
    assert "MODULE:FUNCTION" in capsys.readouterr().err
