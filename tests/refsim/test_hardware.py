"""refsim.hardware: every row of real-GPU tensor-core output and every test vector of Fasi et al.
(2021) reproduced bit for bit through the public API, and each block-model feature (alignment,
truncation, flushing, where C enters) against the Fraction twin refsim.formats.exact_sum."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refsim import hardware, matmul
from refsim.accumulate import dot
from refsim.formats import FloatFormat
from refsim.formats.exact_sum import dot_exact, matmul_exact
from refsim.formats.testing import values
from refsim.specs import AccumSpec, GemmSpec
from refsim.validation.bits import assert_same_bits

DATA = Path(__file__).resolve().parents[1] / "data" / "tensor_cores"
# file -> (device, input format, output format) of the preset that must reproduce it
DATASETS = {"v100_fp16": ("v100", "fp16", "fp32"), "a100_fp16": ("a100", "fp16", "fp32"),
            "h100_fp16": ("h100", "fp16", "fp32"), "h100_e4m3": ("h100", "e4m3", "fp32"),
            "h100_e4m3_fp16": ("h100", "e4m3", "fp16"), "l40s_fp16_fp16": ("l40s", "fp16", "fp16")}


def _same(actual, expected, context: str) -> None:
    """Bit equality of a result and the twin's (float64) values, compared as float64."""
    assert_same_bits(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                     context=context)


def _load(name: str):
    """The arrays of one file; for an fp16 output, c is what the GPU added: __float2half(c)
    (the README says why)."""
    with np.load(DATA / f"{name}.npz") as data:
        arrays = {key: data[key] for key in data.files}
    if str(arrays["output_format"]).startswith("fp16"):
        arrays["c"] = arrays["c"].astype(np.float16).astype(np.float32)
    return arrays


def _gpu_call(spec: GemmSpec, data: dict, twin: bool = False) -> np.ndarray:
    """One MMA per row, as the upstream bench runs it: D[i] = a[i] . b[i] + c[i]; float32
    bits (an fp16 result as the float32 of the same value)."""
    a, b, c = data["a"][:, None, :], data["b"][:, :, None], data["c"][:, None, None]
    if twin:
        return matmul_exact(a, b, spec, c=c).astype(np.float32).reshape(-1).view(np.uint32)
    d = matmul(a, b, spec, c=c)
    assert d.dtype == np.float32 and d.shape == (len(data["c"]), 1, 1)
    return d.reshape(-1).view(np.uint32)


# ---- real GPUs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_row_of_real_gpu_output(name):
    data = _load(name)
    device, input_format, out = DATASETS[name]
    assert (str(data["device"]).lower(), str(data["input_format"]).lower()) == (device,
                                                                                input_format)
    assert str(data["output_format"]).startswith(out)
    spec = hardware.gemm_spec(device, input_format, out)
    got = _gpu_call(spec, data)
    bad = np.flatnonzero(got != data["d"])
    assert bad.size == 0, f"{name}: {bad.size} of {got.size} rows differ, first {bad[:5]}"
    # The Fraction twin reproduces them too, independently of the kernel.
    twin = _gpu_call(spec, data, twin=True)
    assert np.array_equal(twin, data["d"]), f"{name}: the twin differs on {(twin != got).sum()}"


def test_h200_is_h100():
    for input_format in ("fp16", "bf16", "tf32", "e4m3", "e5m2"):
        assert hardware.gemm_spec("h200", input_format) == hardware.gemm_spec("h100", input_format)
    data = _load("h100_fp16")
    assert np.array_equal(_gpu_call(hardware.gemm_spec("h200", "fp16"), data), data["d"])


def test_the_data_reject_other_models():
    """Two's-complement (floor) truncation fails about 1 row in 5 of the H100 fp8 data; a
    normalized product exponent, or one fraction bit fewer, fail too: the rows discriminate."""
    data = _load("h100_e4m3")
    spec = hardware.gemm_spec("h100", "e4m3")
    floor = dataclasses.replace(spec, acc=dataclasses.replace(spec.acc, truncation="floor"))
    differ = int((_gpu_call(floor, data) != data["d"]).sum())
    assert 50 <= differ <= 200, differ  # 104 of 500
    normalized = dataclasses.replace(spec, acc=dataclasses.replace(spec.acc, align="normalized"))
    assert (_gpu_call(normalized, data) != data["d"]).sum() > 20
    for name in ("v100_fp16", "h100_fp16"):
        data = _load(name)
        spec = hardware.gemm_spec(*DATASETS[name])
        narrower = dataclasses.replace(spec, acc=dataclasses.replace(spec.acc,
                                                                     width=spec.acc.width - 1))
        assert (_gpu_call(narrower, data) != data["d"]).sum() > 20, name


def test_fp16_output_rows_imply_c_is_float2half():
    """The fp8 fp16-output rows were computed with C = __float2half(c): with C = 0 or with the
    fp32 c the h100 preset misses most rows."""
    with np.load(DATA / "h100_e4m3_fp16.npz") as data:
        raw = {key: data[key] for key in data.files}
    spec = hardware.gemm_spec("h100", "e4m3", "fp16")
    for c, least in ((np.zeros_like(raw["c"]), 450), (raw["c"], 40)):  # 496 and 60 of 500
        differ = int((_gpu_call(spec, {**raw, "c": c}) != raw["d"]).sum())
        assert differ >= least, differ


def test_fp8_fp16_output_chain():
    """Hopper/B200 fp8 with an fp16 output: two groups of 16 dealt in runs of 2 (positions
    0, 1, 4, 5, .. then 2, 3, 6, 7, ..), chained in fp16 from 0, then C added with fp16 RNE."""
    spec = hardware.gemm_spec("h100", "e4m3", "fp16")
    assert spec.acc.group_run == 2 and spec.acc.chunk == 32 and spec.acc.group == 16
    assert hardware.gemm_spec("b200", "e5m2", "fp16").acc == dataclasses.replace(
        spec.acc, operands=FloatFormat(5, 2))
    random_spec = spec
    spec = hardware.gemm_spec("h100", "e5m2", "fp16")  # 2048 is an e5m2 value
    a = np.zeros((1, 32), np.float32)
    b = np.ones((32, 1), np.float32)
    consecutive = dataclasses.replace(spec, acc=dataclasses.replace(spec.acc, group_run=None))
    # 2048 at position 0, 1 at positions 17 and 18. Dealt: group 0 = {0, 17}: 2049 rounds to
    # fp16 as a tie, to even: 2048; group 1 = {18}: 2048 + 1 -> 2048 again. Consecutive
    # groups: {0} gives 2048, {17, 18} 2048 + 2 = 2050 exactly.
    a[0, [0, 17, 18]] = [2048.0, 1.0, 1.0]
    assert matmul(a, b, spec)[0, 0] == 2048.0
    assert matmul(a, b, consecutive)[0, 0] == 2050.0
    # C joins after both groups: 2048 (+ 1 at position 4, a tie lost in group 0), then + C = 1
    # with fp16 RNE: a tie again, 2048. C in group 0 would give 2048 + 1 + 1 = 2050.
    a[0] = 0.0
    a[0, [0, 4]] = [2048.0, 1.0]
    c = np.array([[1.0]], np.float32)
    assert matmul(a, b, spec, c=c)[0, 0] == 2048.0
    inner = dataclasses.replace(spec, acc=dataclasses.replace(spec.acc, c_entry="inner"))
    assert matmul(a, b, inner, c=c)[0, 0] == 2050.0
    # Random operands, partial and chained chunks: the kernel (dealt by
    # refsim.accumulate.dealt_positions) and the Fraction twin (its own deal) agree.
    rng = np.random.default_rng(2200)
    for k in (5, 32, 40, 70, 96):
        x = _operand_values(rng, "e4m3fn", (3, k))
        y = _operand_values(rng, "e4m3fn", (k, 2))
        cc = (rng.standard_normal((3, 2)) * 2.0 ** rng.integers(-20, 12, (3, 2)))
        cc = cc.astype(np.float16).astype(np.float32)  # fp16 values, subnormals too
        _same(matmul(x, y, random_spec, c=cc), matmul_exact(x, y, random_spec, c=cc),
              context=f"K={k}")
    torch = pytest.importorskip("torch")
    from refsim.torch_ops import matmul as torch_matmul

    with pytest.raises(NotImplementedError, match="group_run"):
        torch_matmul(torch.ones(2, 32), torch.ones(32, 2), spec)


def test_group_run_is_checked_and_round_trips():
    acc = AccumSpec("fp16", "rne", "multiterm", group=4, width=8, chunk=8, group_run=2)
    assert AccumSpec.from_dict(acc.to_dict()) == acc and "group_run=2" in str(acc)
    assert AccumSpec("fp16", "rne", "multiterm", group=4, width=8, chunk=8,
                     group_run=4).group_run is None  # runs of a whole group: consecutive
    for kwargs, message in (({"group_run": 2}, "needs chunk"),
                            ({"chunk": 8, "group_run": 3}, "must divide group")):
        with pytest.raises(ValueError, match=message):
            AccumSpec("fp16", "rne", "multiterm", group=4, width=8, **kwargs)
    with pytest.raises(ValueError, match="group_run apply to order='multiterm'"):
        AccumSpec("fp16", group_run=2)


def test_aliases_stand_for_their_presets():
    rows = hardware.devices()
    for alias, target in hardware.ALIASES.items():
        mine = [row for row in rows if row.device == alias]
        theirs = [row for row in rows if row.device == target]
        assert [(r.input, r.out, r.spec) for r in mine] == [(r.input, r.out, r.spec)
                                                            for r in theirs]
        assert all(row.source.startswith(f"alias of {target}: ") for row in mine)
    assert hardware.gemm_spec("ADA", "e4m3", "fp16") == hardware.gemm_spec("l40s", "e4m3", "fp16")
    ada = {row.input + "/" + row.out: row.validated for row in rows if row.device == "ada"}
    assert "Ada/E4M3/d_Ada_fp16.txt" in ada["e4m3/fp16"]
    assert all(row.validated.startswith("published model only")
               for row in rows if row.device == "rtx-pro-6000")


def test_operand_conversions_are_the_devices():
    """NVIDIA's fp8 conversions saturate (cvt .satfinite, +-Inf included): an operand above the
    format's max is max, not NaN; fp16 and bf16 round to nearest with overflow to Inf; MI300X's
    FNUZ operands saturate as the published model's conversion does."""
    big = np.array([[1e9, -1e9, np.inf, 1.0]], np.float32)
    one = np.array([[1.0], [0.0], [0.0], [0.0]], np.float32)
    for device, fmt, top in (("h100", "e4m3", 448.0), ("h100", "e5m2", 57344.0),
                             ("l40s", "e4m3", 448.0), ("b200", "e5m2", 57344.0),
                             ("mi300x", "e4m3", 240.0)):
        spec = hardware.gemm_spec(device, fmt)
        assert spec.a.overflow in ("satfinite", "saturate") and spec.a == spec.b
        assert matmul(big, one, spec)[0, 0] == top, (device, fmt)
        for column, value in ((1, -top), (2, top)):  # -1e9; +Inf (satfinite: max)
            y = np.zeros((4, 1), np.float32)
            y[column, 0] = 1.0
            assert matmul(big, y, spec)[0, 0] == value, (device, fmt, column)
    spec = hardware.gemm_spec("h100", "fp16")
    assert spec.a.overflow == "default"
    assert matmul(np.array([[70000.0]], np.float32), np.ones((1, 1), np.float32),
                  spec)[0, 0] == np.inf


# ---- Fasi, Higham, Mikaitis, Pranesh (2021) ------------------------------------------------------
def _hex_list(text: str) -> list[float]:
    inside = text[text.index("[") + 1:text.index("]")]
    return [float.fromhex(v.strip()) for v in inside.split(",") if v.strip()]


def _fasi_cases() -> list[tuple[str, str, str, str, list[float], list[float], float, str]]:
    """(id, device, input, out, a, b, c, expected text) for every vector and GPU column."""
    cases = []
    columns: list[tuple[int, str, str]] = []  # (column, device, input)
    section_input = "fp16"
    for line in (DATA / "fasi2021_vectors.md").read_text().splitlines():
        if line.startswith("## "):
            section_input = "bf16" if "bfloat16" in line else "fp16"
            continue
        if not line.startswith("| "):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == "test":  # a header row: which columns hold expectations
            columns = [(i, "v100" if "V100" in head else "a100", section_input)
                       for i, head in enumerate(cells) if head.startswith("expected D")]
            has_out = "out" in cells
            continue
        if set(cells[0]) <= {"-"}:
            continue
        out = cells[1] if has_out else "fp32"
        a, b = _hex_list(cells[3 if has_out else 2]), _hex_list(cells[4 if has_out else 3])
        c = float.fromhex(cells[5 if has_out else 4].strip("`"))
        for i, device, input_format in columns:
            if "not in this file" not in cells[i]:
                cases.append((f"{cells[0]} [{device}]", device, input_format, out, a, b, c,
                              cells[i]))
    return cases


FASI = _fasi_cases()


def test_fasi_vectors_are_all_read():
    assert len(FASI) == 85  # 60 fp16 (V100 and T4/A100 columns), 25 bf16 (A100)
    assert {(case[1], case[2], case[3]) for case in FASI} == {
        ("v100", "fp16", "fp32"), ("v100", "fp16", "fp16"), ("a100", "fp16", "fp32"),
        ("a100", "fp16", "fp16"), ("a100", "bf16", "fp32")}


def test_fasi_vectors():
    """Each vector is one wmma m16n16k16 step: a and b padded with zeros to K = 16."""
    reference: dict[str, float] = {}
    for name, device, input_format, out, a, b, c, expected in FASI:
        spec = hardware.gemm_spec(device, input_format, out)
        x = np.zeros((1, 16), np.float32)
        y = np.zeros((16, 1), np.float32)
        x[0, :len(a)] = a
        y[:len(b), 0] = b
        d = float(matmul(x, y, spec, c=np.array([[c]], np.float32))[0, 0])
        twin = float(matmul_exact(x, y, spec, c=np.array([[c]], np.float32))[0, 0])
        assert np.float64(d).tobytes() == np.float64(twin).tobytes(), name
        key = f"{device}/{input_format}/{out}"
        if expected.startswith("`"):
            assert d == float.fromhex(expected.strip("`")), (name, d.hex())
        elif expected.startswith("!= 0"):
            assert d != 0, name
        elif expected.startswith("p "):
            reference[key] = d
        elif expected.startswith("< p"):
            assert d < reference.pop(key), name
        else:
            raise AssertionError(f"{name}: unread expectation {expected!r}")
    assert not reference


# ---- the table -----------------------------------------------------------------------------------
def test_devices_table_and_errors():
    rows = hardware.devices()
    keys = {(row.device, row.input, row.out) for row in rows}
    assert len(keys) == len(rows)
    for device in hardware.DEVICES:
        assert any(row.device == device for row in rows)
    for row in rows:
        assert row.source and row.validated
        assert hardware.gemm_spec(row.device, row.input, row.out) == row.spec
        assert isinstance(row.spec.acc.fmt, FloatFormat)
    validated = {(row.device, row.input, row.out) for row in rows
                 if row.validated.startswith("rows")}
    assert validated == {DATASETS[name] for name in DATASETS}
    # Every NVIDIA row but A100's and the aliases' own: an upstream dump or the test rows.
    for row in rows:
        if row.device in ("v100", "a100", "h100", "h200", "b200", "l40s", "ada", "a2"):
            assert "matched" in row.validated, (row.device, row.input, row.out)
        if "upstream dumps" in row.validated:
            assert "at b12b5a7" in row.validated
    with pytest.raises(ValueError, match=r"v100 has \(input/out\): fp16/fp16, fp16/fp32"):
        hardware.gemm_spec("v100", "bf16")
    with pytest.raises(ValueError, match=r"device must be one of v100.*rtx-pro-6000"):
        hardware.gemm_spec("t4", "fp16")
    with pytest.raises(ValueError, match="input_format must be one of"):
        hardware.gemm_spec("h100", "fp64")
    with pytest.raises(TypeError, match="device must be a string"):
        hardware.gemm_spec(100, "fp16")
    with pytest.raises(ValueError, match=r"mi250x has \(input/out\): bf16/fp32, fp16/fp32"):
        hardware.gemm_spec("mi250x", "tf32")
    amd = {(row.device, row.input) for row in rows if row.device.startswith("mi")}
    assert amd == {("mi100", "fp16"), ("mi100", "bf16"), ("mi250x", "fp16"), ("mi250x", "bf16"),
                   *(("mi300x", f) for f in ("fp16", "bf16", "tf32", "e4m3", "e5m2"))}
    assert all(row.validated == "published model only (not validated by data)"
               for row in rows if row.device.startswith("mi"))


def test_b200_fp8_adds_c_after_a_truncated_sum():
    """32 products summed, truncated to fp32, then C added with fp32 round-to-nearest-even."""
    spec = hardware.gemm_spec("b200", "e4m3")
    a = np.zeros((1, 32), np.float32)
    b = np.zeros((32, 1), np.float32)
    a[0, :2] = [8.0, 2.0**-9]  # 64 + 2^-18: half an fp32 ulp above 64
    b[:2, 0] = [8.0, 2.0**-9]
    c = np.array([[2.0**-18]], np.float32)
    # rtz(64 + 2^-18) = 64, then rne(64 + 2^-18) = 64 (a tie, to even): two roundings. With C
    # in the alignment (one rtz of 64 + 2^-17) the result would be 64 + 2^-17.
    assert matmul(a, b, spec, c=c)[0, 0] == 64.0
    joined = AccumSpec("fp32", "rtz", "multiterm", group=32, width=26, variant="acc-aligned",
                       align="product", operands="e4m3fn")
    assert matmul(a, b, dataclasses.replace(spec, acc=joined), c=c)[0, 0] == 64 + 2.0**-17
    # Chained blocks: each block's fp32 result is the next block's C.
    rng = np.random.default_rng(15)
    a = rng.choice([-1.5, -0.75, 0.0, 0.875, 2.0**-7, 3.5], (4, 96)).astype(np.float32)
    b = rng.choice([-2.0, -0.0625, 0.5, 1.125, 2.0**-9, 448.0], (96, 3)).astype(np.float32)
    c = rng.standard_normal((4, 3)).astype(np.float32)
    expected = c.astype(np.float64)
    for k0 in range(0, 96, 32):
        expected = matmul(a[:, k0:k0 + 32], b[k0:k0 + 32], spec, c=expected.astype(np.float32))
    _same(matmul(a, b, spec, c=c), expected, context="b200 e4m3 chained")


def test_hopper_block_keeps_13_fraction_bits():
    spec = hardware.gemm_spec("h100", "e4m3")
    a = np.array([[1.0, 2.0**-9, 2.0**-9]], np.float32)
    b = np.array([[1.0], [2.0**-4], [2.0**-4]], np.float32)
    assert matmul(a, b, spec)[0, 0] == 1 + 2.0**-12  # 2^-13 + 2^-13: at F = 13 bits, kept
    b[1:, 0] = 2.0**-5
    assert matmul(a, b, spec)[0, 0] == 1.0  # 2^-14 + 2^-14: below F = 13 bits, truncated
    # The block result keeps 13 fraction bits: 1.75 * 1.25 + 2^-13 = 2.1875 + 2^-13 is aligned
    # exactly (E = 0), but the result lies in [2, 4) and loses its 2^-13 bit.
    a = np.array([[1.75, 2.0**-9]], np.float32)
    b = np.array([[1.25], [2.0**-4]], np.float32)
    assert matmul(a, b, spec)[0, 0] == 2.1875
    wide = dataclasses.replace(spec, acc=dataclasses.replace(spec.acc, fmt="fp32"))
    assert matmul(a, b, wide)[0, 0] == 2.1875 + 2.0**-13


# ---- the block model's features against the twin ------------------------------------------------
OPERANDS = {"e4m3fn": (-6, 9), "fp16": (-14, 24), "bf16": (-126, 133)}


def _operand_values(rng, fmt: str, shape) -> np.ndarray:
    """Values of fmt with subnormals, zeros of both signs, ties and wide exponent spread."""
    emin, lowest = OPERANDS[fmt]
    man = {"e4m3fn": 3, "fp16": 10, "bf16": 7}[fmt]
    exponent = rng.integers(emin - 3, emin + 14, shape)
    mantissa = rng.integers(0, 2**man, shape)
    x = (1 + mantissa / 2.0**man) * np.exp2(exponent)
    sub = exponent < emin  # subnormals: multiples of the smallest one
    x[sub] = rng.integers(1, 2**man, sub.sum()) * 2.0**-lowest
    x *= rng.choice([-1.0, 1.0], shape)
    pick = rng.random(shape)
    x[pick < 0.08] = 0.0
    x[(pick >= 0.08) & (pick < 0.12)] = -0.0
    return x.astype(np.float32)


def _initial(rng, shape) -> np.ndarray:
    """C: ordinary values, C far above and far below the products, fp32 subnormals, +-0."""
    c = rng.standard_normal(shape) * np.exp2(rng.integers(-4, 8, shape))
    flat = c.reshape(-1)
    flat[0:4] = [2.0**100, -(2.0**-140), -0.0, 0.0]
    flat[4:6] = [-(2.0**40) * 1.25, 2.0**-149 * 3]
    return c.astype(np.float32)


VARIANTS = [dict(align=align, truncation=truncation, subnormals=subnormals, variant=variant,
                 c_entry=c_entry)
            for align in ("normalized", "product") for truncation in ("toward-zero", "floor")
            for subnormals in ("keep", "flush") for variant in ("acc-excluded", "acc-aligned")
            for c_entry in ("inner", "outer")]


@pytest.mark.parametrize("options", VARIANTS,
                         ids=["-".join(str(v)[:5] for v in o.values()) for o in VARIANTS])
def test_model_features_match_the_twin(options):
    i = VARIANTS.index(options)
    rng = np.random.default_rng(1500 + i)
    operand = ("e4m3fn", "fp16", "bf16")[i % 3]
    rounding = ("rtz", "rne", "rdn", "sr")[i % 4]
    fmt = ("fp32", FloatFormat(8, 13), "bf16", "fp16")[i % 4]
    a = _operand_values(rng, operand, (2, 3, 13))
    b = _operand_values(rng, operand, (2, 13, 2))
    c = _initial(rng, (2, 3, 2))
    a[0, 0, :4] = [1.5, -1.5, 1.0, 2.0**-9]  # cancellation within a group
    b[0, :4, 0] = [1.75, 1.75, 2.0**-24, 1.0]
    extra = 1 if options["align"] == "product" else 0
    for group, width, chunk in ((4, 6, 8), (4, 62 - 3 - extra, None), (13, 3, None)):
        acc = AccumSpec(fmt, rounding, "multiterm", group=group, width=width, chunk=chunk,
                        outer="fp32", operands=operand, **options)
        spec = GemmSpec(acc=acc)
        for cc in (c, None):
            got = matmul(a, b, spec, c=cc, seed=7)
            _same(got, matmul_exact(a, b, spec, seed=7, c=cc), context=str(acc))


def test_widest_groups_hold_in_int64():
    """The largest width the spec allows, the largest products (significands near 4), all of
    one sign, floor truncation and a C far below: the int64 group sum must not overflow."""
    big = 65504.0  # fp16 max: significand 2 - 2^-10, products' significands near 4
    for align, width in (("product", 62 - 6 - 1), ("normalized", 62 - 6)):
        acc = AccumSpec("fp32", "rtz", "multiterm", group=32, width=width, variant="acc-aligned",
                        align=align, truncation="floor", operands="fp16")
        x = np.full(32, -big, np.float32)
        y = np.full(32, big, np.float32)
        c = np.array(-(2.0**-149), np.float32)
        _same(dot(x, y, acc, c), dot_exact(x, y, acc, c=c), context=align)
        # -32 * 65504^2 = -32 * 4190209 * 2^10 has 22 significant bits: exact in fp32; C
        # floors to one unit below it, which rounding toward zero drops.
        assert dot(x, y, acc, c) == -32 * big * big


def test_product_exponent_and_flush():
    # 1.5 * 1.5 = 2.25 has exponent 0 + 0 = 0 (significand 2.25), not 1: with width 2 (one
    # fraction bit below 2^0), 2.25 keeps 2.0 + its 2^-1 bit = 2.0, and 0.75 (exponent -1) 0.5.
    product = AccumSpec("fp32", "rne", "multiterm", group=2, width=2, align="product")
    normalized = AccumSpec("fp32", "rne", "multiterm", group=2, width=2)
    x = np.array([1.5, 0.75], np.float32)
    y = np.array([1.5, 1.0], np.float32)
    assert dot(x, y, product) == 2.0 + 0.5  # q = 2^-1: 2.25 -> 2.0, 0.75 -> 0.5
    assert dot(x, y, normalized) == 2.0  # E = 1, q = 2^0: 2.25 -> 2, 0.75 -> 0
    # A subnormal operand has its format's emin: fp16 2^-24 and 3 * 2^-24 have exponent -14
    # (significands 2^-10, 3 * 2^-10), so their products with 1.0 align to E = -14 and, with
    # width 4 (q = 2^-17), vanish; aligned by their own exponents (-24, -23) they are kept.
    sub = np.array([2.0**-24, 3 * 2.0**-24], np.float32)
    one = np.array([1.0, 1.0], np.float32)
    clamped = AccumSpec("fp32", "rtz", "multiterm", group=2, width=4, align="product",
                        operands="fp16")
    assert dot(sub, one, clamped) == 0.0
    assert dot(sub, one, dataclasses.replace(clamped, operands=None)) == 2.0**-22
    keep = dataclasses.replace(clamped, width=12)  # q = 2^-25: both kept
    flush = dataclasses.replace(keep, subnormals="flush")
    assert dot(sub, one, keep) == 2.0**-22
    assert dot(sub, one, flush) == 0.0
    for acc in (clamped, keep, flush):
        _same(dot(sub, one, acc), dot_exact(sub, one, acc), context=str(acc))


def test_floor_truncation_of_negative_terms():
    """floor(-v / 2^q): a negative term with bits below the kept width loses one more unit."""
    toward = AccumSpec("fp32", "rne", "multiterm", group=3, width=3)
    floor = dataclasses.replace(toward, truncation="floor")
    x = np.array([1.0, -0.2, -(2.0**-30)], np.float64)
    ones = np.ones(3)
    # q = 2^-2: -0.2 -> -0 (toward zero) or -0.25 (floor); -2^-30 -> -0 or -0.25.
    assert dot(x, ones, toward) == 1.0
    assert dot(x, ones, floor) == 0.5
    _same(dot(x, ones, floor), dot_exact(x, ones, floor), context="floor")
    # Negative zeros sum to -0; a tiny negative value costs a whole unit under floor.
    assert np.signbit(dot(np.array([-0.0, -0.0]), ones[:2], toward))
    neg = np.array([-(2.0**-40), -0.0, -1.0])
    assert dot(neg, ones, toward) == -1.0
    assert dot(neg, ones, floor) == -1.0 - 2.0**-2


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), group=st.integers(1, 6), width=st.integers(1, 30),
       options=st.sampled_from(VARIANTS), rounding=st.sampled_from(["rtz", "rne", "rup", "sr"]))
def test_random_blocks_match_the_twin(data, group, width, options, rounding):
    fmt = data.draw(st.sampled_from(["e4m3fn", "e5m2"]))
    k = data.draw(st.integers(0, 9))
    x = np.array(data.draw(st.lists(values(fmt), min_size=k, max_size=k)), np.float32)
    y = np.array(data.draw(st.lists(values(fmt), min_size=k, max_size=k)), np.float32)
    c = np.array(data.draw(st.one_of(values("bf16"), values("fp32"))), np.float32)
    chunk = data.draw(st.sampled_from([None, group, 2 * group]))
    acc = AccumSpec("bf16", rounding, "multiterm", group=group, width=width, chunk=chunk,
                    outer="fp32", operands=fmt, **options)
    _same(dot(x, y, acc, c, seed=3), dot_exact(x, y, acc, seed=3, c=c),
                     context=f"{acc} x={x.tolist()} y={y.tolist()} c={float(c)}")


def test_block_result_ties_round_to_even_in_fp16_mode():
    spec = hardware.gemm_spec("v100", "fp16", "fp16")
    a = np.array([[1.0, 2.0**-11, 0.0, 0.0]], np.float32)
    b = np.ones((4, 1), np.float32)
    assert matmul(a, b, spec)[0, 0] == 1.0  # 1 + 2^-11: a tie, to even
    a[0, 2] = 2.0**-12
    assert matmul(a, b, spec)[0, 0] == 1 + 2.0**-10  # above the tie
    assert matmul(a, b, hardware.gemm_spec("v100", "fp16"))[0, 0] == 1 + 2.0**-11 + 2.0**-12


def test_mi_presets_run_and_match_the_twin():
    rng = np.random.default_rng(1501)
    for device, input_format in (("mi100", "fp16"), ("mi100", "bf16"), ("mi250x", "bf16")):
        spec = hardware.gemm_spec(device, input_format)
        a = _operand_values(rng, input_format, (3, 9))
        b = _operand_values(rng, input_format, (9, 2))
        c = _initial(rng, (3, 2))
        _same(matmul(a, b, spec, c=c), matmul_exact(a, b, spec, c=c),
                         context=device)
    # MI100: the block's products and C are summed exactly, then rounded once to nearest.
    spec = hardware.gemm_spec("mi100", "fp16")
    a = np.array([[1.0, 2.0**-24, 2.0**-24, 0.0]], np.float32)
    b = np.array([[1.0], [2.0**-1], [2.0**-1], [0.0]], np.float32)
    assert matmul(a, b, spec, c=np.array([[2.0**-25]], np.float32))[0, 0] == 1 + 2.0**-23


def test_initial_value_is_checked():
    spec = hardware.gemm_spec("a100", "fp16")
    a = np.ones((2, 3), np.float32)
    b = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"c of shape \(3,\) does not broadcast to the output "
                                         r"shape \(2, 4\)"):
        matmul(a, b, spec, c=np.ones(3, np.float32))
    with pytest.raises(TypeError, match="c must have dtype float32 or float64"):
        matmul(a, b, spec, c=np.ones((2, 4), np.int32))
    with pytest.raises(TypeError, match="c must be a NumPy float32/float64 array"):
        matmul(a, b, spec, c=1.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        dot(np.ones(3), np.ones(3), "fp32", np.ones(2))
    d = matmul(a, b, spec, c=np.arange(4, dtype=np.float64))  # broadcast over rows
    assert d.dtype == np.float64 and np.array_equal(d, np.tile(3.0 + np.arange(4), (2, 1)))


def test_spec_fields_round_trip_and_are_checked():
    spec = hardware.gemm_spec("b200", "e5m2")
    assert GemmSpec.from_toml(spec.to_toml()) == spec
    assert GemmSpec.from_dict(spec.to_dict()) == spec
    assert "c_entry=outer" in str(spec) and "align=product" in str(spec)
    plain = AccumSpec("fp32", order="multiterm", group=2, width=4)
    assert plain.to_dict() == {"fmt": "fp32", "rounding": "rne", "order": "multiterm",
                               "overflow": "default", "group": 2, "width": 4,
                               "variant": "acc-excluded"}
    assert plain == AccumSpec("fp32", order="multiterm", group=2, width=4, align="normalized",
                              truncation="toward-zero", subnormals="keep", c_entry="inner")
    for kwargs, message in (
            ({"align": "exponent"}, "align must be one of normalized, product"),
            ({"truncation": "ceil"}, "truncation must be one of toward-zero, floor"),
            ({"subnormals": "flush"}, "subnormals='flush' needs operands"),
            ({"operands": "int8"}, "operands must be a floating-point format"),
            ({"c_entry": "middle"}, "c_entry must be one of inner, outer"),
            ({"align": "product", "width": 60}, r"plus 1 \(align=product\) must be at most 62"),
            ({"align": "product", "product": "fp16"}, "cannot be combined with a product Cast")):
        options = {"group": 2, "width": 4, **kwargs}
        with pytest.raises(ValueError, match=message):
            AccumSpec("fp32", order="multiterm", **options)
    with pytest.raises(ValueError, match="align applies to order='multiterm' only"):
        AccumSpec("fp32", align="product")
    with pytest.raises(ValueError, match="c_entry applies to order='chunked' or 'multiterm'"):
        AccumSpec("fp32", c_entry="outer")
    assert re.search("c_entry", AccumSpec("fp32", order="chunked", chunk=2,
                                          c_entry="outer").to_toml())


# ---- the torch path (mode="exact"): the same bits ------------------------------------------------
def test_torch_exact_reproduces_the_rows():
    torch = pytest.importorskip("torch")
    from refsim.torch_ops import matmul as torch_matmul

    for name, (device, input_format, out) in DATASETS.items():
        spec = hardware.gemm_spec(device, input_format, out)
        if spec.acc.group_run is not None:  # refused there (test_fp8_fp16_output_chain)
            continue
        data = _load(name)
        d = torch_matmul(torch.from_numpy(data["a"][:, None, :]),
                         torch.from_numpy(data["b"][:, :, None]), spec,
                         torch.from_numpy(data["c"][:, None, None]))
        assert d.dtype == torch.float32
        assert np.array_equal(d.numpy().reshape(-1).view(np.uint32), data["d"]), name


@pytest.mark.parametrize("options", VARIANTS[::3], ids=lambda o: "-".join(str(v)[:5]
                                                                          for v in o.values()))
def test_torch_exact_matches_the_cpu(options):
    torch = pytest.importorskip("torch")
    from refsim.torch_ops import matmul as torch_matmul

    i = VARIANTS.index(options)
    rng = np.random.default_rng(1600 + i)
    operand = ("e4m3fn", "fp16", "bf16")[i % 3]
    rounding = ("rtz", "rne", "rdn", "rup")[i % 4]
    fmt = ("fp32", FloatFormat(8, 13), "bf16", "fp16")[i % 4]
    a = _operand_values(rng, operand, (2, 3, 13))
    b = _operand_values(rng, operand, (2, 13, 2))
    c = _initial(rng, (2, 3, 2))
    for group, width, chunk in ((4, 6, 8), (4, 47, None), (13, 3, None)):
        acc = AccumSpec(fmt, rounding, "multiterm", group=group, width=width, chunk=chunk,
                        outer="fp32", operands=operand, **options)
        spec = GemmSpec(acc=acc)
        for cc in (c, None):
            got = torch_matmul(torch.from_numpy(a), torch.from_numpy(b), spec,
                               None if cc is None else torch.from_numpy(cc))
            _same(got.numpy(), matmul(a, b, spec, c=cc), context=str(acc))


def test_torch_exact_initial_value_in_every_order():
    torch = pytest.importorskip("torch")
    from refsim.torch_ops import matmul as torch_matmul

    rng = np.random.default_rng(1700)
    a = _operand_values(rng, "bf16", (3, 7))
    b = _operand_values(rng, "bf16", (7, 2))
    c = _initial(rng, (3, 2))
    specs = [AccumSpec("bf16", "rne"), AccumSpec("fp16", "rtz", "pairwise"),
             AccumSpec("bf16", "rup", "kahan"),
             AccumSpec("bf16", "rdn", "chunked", chunk=3, outer="fp32"),
             AccumSpec("bf16", "rne", "chunked", chunk=3, outer="fp32", c_entry="outer")]
    for acc in specs:
        spec = GemmSpec(acc=acc)
        for k in (7, 1, 0):
            got = torch_matmul(torch.from_numpy(a[:, :k]), torch.from_numpy(b[:k]), spec,
                               torch.from_numpy(c))
            _same(got.numpy(), matmul(a[:, :k], b[:k], spec, c=c), context=f"{acc} K={k}")
    with pytest.raises(NotImplementedError, match="acc-excluded"):
        torch_matmul(torch.from_numpy(a), torch.from_numpy(b), hardware.gemm_spec("mi100", "bf16"))
    with pytest.raises(ValueError, match=r"c of shape \(3,\) does not broadcast"):
        torch_matmul(torch.from_numpy(a), torch.from_numpy(b), spec, torch.zeros(3))
