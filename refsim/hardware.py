"""Presets that reproduce real matrix accelerators' MMA instructions (docs/hardware.md).

Usage rules:
  - gemm_spec(device, input_format, out="fp32") returns a GemmSpec; refsim.matmul(a, b, spec,
    c=C) then computes D = A·B + C as that device's tensor core / matrix core does, one
    instruction's block of products at a time, each block's result the next block's C.
  - Every preset is built from general AccumSpec features (order multiterm or chunked: group,
    width, variant, align, truncation, operands, subnormals, c_entry, outer, chunk_order,
    group_run, and the late accumulator late_bits, late_norm_bits, late_truncation, c_cutoff,
    interleave); there is no per-device code path.
  - The operand Casts are the device's own conversion from fp32 (docs/hardware.md, "Operands"):
    NVIDIA fp8 saturates (cvt .satfinite), fp16/bf16 round to nearest, tf32 truncates.
  - devices() lists every preset with its parameters, its source, and what confirms it: rows of
    real-GPU outputs reproduced bit for bit (tests/data/tensor_cores, and the upstream dumps
    named there), or only a published model. Aliases ("ada", "a2", "rtx-pro-6000") are rows of
    their own, each saying which preset it stands for and why.
  - Unknown devices, formats or combinations raise ValueError listing what exists.
  - characterize(mma, input_format, out) (refsim.characterize) reads these features off any
    black-box matrix unit.

The NVIDIA block model (Fasi et al. 2021; Khattak & Mikaitis 2025; confirmed by the upstream
dumps named in devices()): each product is exact with the unnormalized exponent ea + eb
(significand in [1, 4), a subnormal operand has its format's emin); the products and C are
aligned to the largest of those exponents and each is truncated toward zero to F fraction bits
below it; the truncated terms are summed exactly and the sum rounded once, toward zero to fp32
(to nearest for the fp16-output modes), to `block` precision. In refsim terms:

    AccumSpec(block, "rtz", "multiterm", group=g, width=F + 1, variant="acc-aligned",
              align="product", operands=input format)

AMD CDNA 3 (MI300X; the published model's Algorithms 1 and 2) is the same block with F = 24,
rounded to nearest, and C joining late (late_bits=32, late_norm_bits=31, late_truncation=
"floor"; fp8: interleave=2, c_cutoff=25, FNUZ operands); CDNA 2 (MI250X) rounds each product
and each pairwise sum to fp32 without subnormals (chunked, chunk_order="pairwise").
"""

from __future__ import annotations

from dataclasses import dataclass

from refsim.characterize import Characterization, NoModelError, characterize
from refsim.formats import FloatFormat, get_format
from refsim.specs import AccumSpec, Cast, GemmSpec

__all__ = ["ALIASES", "DEVICES", "INPUTS", "Characterization", "NoModelError", "Preset",
           "characterize", "devices", "gemm_spec"]

ALIASES: dict[str, str] = {"ada": "l40s", "a2": "a100", "rtx-pro-6000": "b200"}
"""Device names that stand for another preset (devices() says on what evidence)."""
DEVICES: tuple[str, ...] = ("v100", "a100", "h100", "h200", "b200", "l40s", "mi100", "mi250x",
                            "mi300x", *ALIASES)
INPUTS: tuple[str, ...] = ("fp16", "bf16", "tf32", "e4m3", "e5m2")
OUTS: tuple[str, ...] = ("fp32", "fp16")

# refsim's name of each input format, and how the device converts an fp32 operand to it:
# NVIDIA's tf32 MMA reads the top 19 bits of an fp32 register (truncation); __float2half and
# __float2bfloat16 round to nearest (overflow to Inf); the fp8 conversions of the upstream
# benches (__nv_cvt_float_to_fp8(x, __NV_SATFINITE, ...), PTX cvt.rn.satfinite) saturate,
# +-Inf included.
_INPUT_FORMATS = {"fp16": "fp16", "bf16": "bf16", "tf32": "tf32", "e4m3": "e4m3fn",
                  "e5m2": "e5m2"}
_INPUT_ROUNDING = {"tf32": "rtz"}
_INPUT_OVERFLOW = {"e4m3": "satfinite", "e5m2": "satfinite"}

_UPSTREAM = "github.com/north-numerical-computing/MATLAB-tensor-core"
_COMMIT = "b12b5a7"
_KHATTAK = ("Khattak & Mikaitis, Accurate Models of NVIDIA Tensor Cores, arXiv:2512.07004 (2025); "
            "models/{model}.m of " + _UPSTREAM)
_FASI = "Fasi, Higham, Mikaitis, Pranesh, PeerJ CS 7:e330 (2021)"
_B200_FP8 = (f"the dumps model_validation/B200/E4M3 and E5M2 of {_UPSTREAM} at {_COMMIT} "
             "(the published models/B200TC.m, which aligns C with the products, differs from "
             "them on 1793 and 1764 of 5000 rows)")
_HMMA_FP8 = (f"the dumps model_validation/{{gpu}}/E4M3 and E5M2 d_{{gpu}}_fp16.txt of "
             f"{_UPSTREAM} at {_COMMIT} (mma.sync ... .f16.e4m3.e4m3.f16, "
             "model_validation/CUDA/mma_fp8_output_fp16.cu), read with the upstream's note that "
             "this instruction runs on the fp16 (HMMA) tensor core with an interleaved pattern "
             "and C added at the end with RNE (models/tools/Generic_BFMA_TC.m, models/{model}.m)")
_AMD = ("Khattak & Mikaitis, models of AMD matrix cores, models/{model}.m of " + _UPSTREAM)
_E8M13 = FloatFormat(8, 13)  # fp32's range with 13 fraction bits: the fp8 MMA's block result

# Upstream experiments (model_validation/<GPU>/<format>/d_<GPU>_<out>.txt at _COMMIT, 5000 rows
# each) that each preset reproduces bit for bit (checked outside the test suite, which holds
# rows 0-499 of six of them); H100/H200 fp8 with an fp32 output with C = 0 (the upstream's
# Validate_TC_models.m), fp16 outputs with C = __float2half(c).
_UPSTREAM_ROWS: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("v100", "fp16", "fp32"): ("V100",), ("v100", "fp16", "fp16"): ("V100",),
    ("a100", "fp16", "fp32"): ("A100", "A2"), ("a100", "fp16", "fp16"): ("A100", "A2"),
    ("a100", "bf16", "fp32"): ("A100", "A2"), ("a100", "tf32", "fp32"): ("A100", "A2"),
    ("l40s", "fp16", "fp32"): ("L40S", "Ada"), ("l40s", "fp16", "fp16"): ("L40S", "Ada"),
    ("l40s", "bf16", "fp32"): ("L40S", "Ada"), ("l40s", "tf32", "fp32"): ("L40S", "Ada"),
    ("l40s", "e4m3", "fp32"): ("L40S", "Ada"), ("l40s", "e5m2", "fp32"): ("L40S", "Ada"),
    ("l40s", "e4m3", "fp16"): ("Ada",), ("l40s", "e5m2", "fp16"): ("Ada",),
    **{(device, fmt, out): ("H100", "H200") for device in ("h100", "h200")
       for fmt, out in (("fp16", "fp32"), ("fp16", "fp16"), ("bf16", "fp32"), ("tf32", "fp32"),
                        ("e4m3", "fp32"), ("e5m2", "fp32"), ("e4m3", "fp16"),
                        ("e5m2", "fp16"))},
    **{("b200", fmt, out): ("B200",) for fmt, out in (
        ("fp16", "fp32"), ("fp16", "fp16"), ("bf16", "fp32"), ("tf32", "fp32"), ("e4m3", "fp32"),
        ("e5m2", "fp32"), ("e4m3", "fp16"), ("e5m2", "fp16"))},
}
# Rows kept in tests/data/tensor_cores (rows 0-499 of the upstream experiment of that GPU) and
# reproduced by tests/refsim/test_hardware.py.
_TEST_ROWS = {("v100", "fp16", "fp32"): "v100_fp16.npz", ("a100", "fp16", "fp32"): "a100_fp16.npz",
              ("h100", "fp16", "fp32"): "h100_fp16.npz", ("h100", "e4m3", "fp32"): "h100_e4m3.npz",
              ("h100", "e4m3", "fp16"): "h100_e4m3_fp16.npz",
              ("l40s", "fp16", "fp16"): "l40s_fp16_fp16.npz"}


def _validated(device: str, input_format: str, out: str, extra: str = "") -> str:
    """The `validated` text of a row: the test rows and the upstream experiments it matches."""
    key = (device, input_format, out)
    parts = []
    if key in _TEST_ROWS:
        parts.append(f"rows matched: 500/500 ({_TEST_ROWS[key]})")
    gpus = _UPSTREAM_ROWS.get(key, ())
    if gpus:
        fmt = input_format.upper() if input_format.startswith("e") else input_format
        dumps = ", ".join(f"{gpu}/{fmt}/d_{gpu}_{out}.txt" for gpu in gpus)
        parts.append(f"upstream dumps matched: 5000/5000 rows each of model_validation/"
                     f"{{{dumps}}} at {_COMMIT}")
    if extra:
        parts.append(extra)
    return "; ".join(parts) or "published model only"


@dataclass(frozen=True)
class Preset:
    """One (device, input format, output format) row of the table.

    Attributes:
        device, input, out: names as gemm_spec takes them.
        group: products per block (one MMA step).
        frac_bits: F, fraction bits kept below the block's largest exponent (None: see notes).
        spec: the GemmSpec.
        source: the published model or measurement the preset follows.
        validated: what confirms it: "rows matched: ..." for real-GPU data reproduced bit for
            bit by tests/refsim/test_hardware.py, "upstream dumps matched: ..." for the
            upstream experiments (commit named) reproduced bit for bit, else "published model
            only" (with the test vectors it passes, if any).
        notes: features beyond the common block model, and known limits.
    """

    device: str
    input: str
    out: str
    group: int
    frac_bits: int | None
    spec: GemmSpec
    source: str
    validated: str
    notes: str = ""


def _operand_cast(input_format: str, **kwargs) -> Cast:
    options = {"overflow": _INPUT_OVERFLOW.get(input_format, "default"), **kwargs}
    return Cast(_INPUT_FORMATS[input_format], _INPUT_ROUNDING.get(input_format, "rne"), **options)


def _nvidia(input_format: str, out: str, group: int, frac_bits: int, *,
            block: FloatFormat | str | None = None, c_after: bool = False,
            truncation: str = "toward-zero", group_run: int | None = None) -> GemmSpec:
    """The NVIDIA block model (module doc). block: the block result's format (default: fp32
    rounded toward zero, fp16 rounded to nearest for out='fp16'). c_after: the products alone
    are aligned and summed, the sum rounded to `block`, then C added with a round-to-nearest-
    even addition in `out` (B200 fp8; fp8 with an fp16 output on Hopper and B200). group_run
    (with c_after): the instruction's 2 * group products run as two chained groups dealt in
    runs of group_run (docs/hardware.md, "FP8 with an fp16 output")."""
    operands = get_format(_INPUT_FORMATS[input_format])
    rounding = "rne" if out == "fp16" else "rtz"
    fmt = block if block is not None else out
    cast = _operand_cast(input_format)
    if c_after:
        chunk = group if group_run is None else 2 * group
        acc = AccumSpec(fmt, rounding, "multiterm", group=group, width=frac_bits + 1,
                        chunk=chunk, outer=AccumSpec(out, "rne"), c_entry="outer",
                        variant="acc-aligned", align="product", operands=operands,
                        truncation=truncation, group_run=group_run)
    else:
        acc = AccumSpec(fmt, rounding, "multiterm", group=group, width=frac_bits + 1,
                        variant="acc-aligned", align="product", operands=operands,
                        truncation=truncation)
    return GemmSpec(a=cast, b=cast, acc=acc)


def _rows() -> list[Preset]:
    rows: list[Preset] = []

    def nvidia(device: str, model: str, inputs: tuple[str, ...], group: int, frac_bits: int,
               *, outs: tuple[str, ...] | None = None, extra: dict[str, str] | None = None,
               notes: str = "", **kwargs) -> None:
        """Rows of one device and input formats; outs: fp32 (and fp16 for fp16 inputs)."""
        for input_format in inputs:
            for out in outs or (("fp32", "fp16") if input_format == "fp16" else ("fp32",)):
                seen = _validated(device, input_format, out,
                                  (extra or {}).get(f"{input_format}/{out}", ""))
                rows.append(Preset(device, input_format, out, group, frac_bits,
                                   _nvidia(input_format, out, group, frac_bits, **kwargs),
                                   _KHATTAK.format(model=model), seen, notes))

    def hmma_fp8(device: str, model: str, gpu: str) -> None:
        """FP8 with an fp16 output on Hopper and Blackwell: two fp16-tensor-core groups of 16
        dealt in runs of 2, chained, then C added with fp16 RNE (docs/hardware.md)."""
        rows.extend(Preset(
            device, input_format, "fp16", 16, 25,
            _nvidia(input_format, "fp16", 16, 25, c_after=True, group_run=2),
            _HMMA_FP8.format(gpu=gpu, model=model),
            _validated(device, input_format, "fp16"),
            "mma.sync with an fp16 accumulator: the 32 products run as two fp16 tensor-core "
            "blocks of 16 (F = 25, rounded to fp16 to nearest), the first from 0, the second "
            "from the first's result; block j takes positions k with (k // 2) % 2 == j "
            "(group_run=2); then C (__float2half(c) in the upstream bench) is added with an "
            "fp16 RNE addition. wgmma with an fp16 accumulator is not measured")
            for input_format in ("e4m3", "e5m2"))

    vectors = f"the test vectors of {_FASI} pass"
    nvidia("v100", "V100TC", ("fp16",), 4, 23,
           extra={"fp16/fp32": vectors, "fp16/fp16": vectors})
    nvidia("a100", "A100TC", ("fp16", "bf16"), 8, 24,
           extra={"fp16/fp32": vectors, "fp16/fp16": vectors, "bf16/fp32": vectors})
    nvidia("a100", "A100TC", ("tf32",), 4, 24)
    for device, model in (("h100", "H100TC"), ("h200", "H200TC")):
        # the same tensor core (models/H200TC.m is H100's); the test rows are H100's
        nvidia(device, model, ("fp16", "bf16"), 16, 25)
        nvidia(device, model, ("tf32",), 8, 25)
        nvidia(device, model, ("e4m3", "e5m2"), 32, 13, block=_E8M13,
               notes="wgmma (the fp32 rows, C = 0): the block result keeps 13 fraction bits "
                     "(e8m13, truncated) in fp32; DeepSeek-V3's 'about 14 bits'")
        hmma_fp8(device, model, device.upper())
    nvidia("b200", "B200TC", ("fp16", "bf16"), 16, 25)
    nvidia("b200", "B200TC", ("tf32",), 8, 25)
    rows.extend(Preset("b200", input_format, "fp32", 32, 25,
                       _nvidia(input_format, "fp32", 32, 25, c_after=True), _B200_FP8,
                       _validated("b200", input_format, "fp32"),
                       "the 32 products are aligned (F = 25, the B200 adder's width) and summed, "
                       "the sum truncated to fp32, then C is added with an fp32 "
                       "round-to-nearest-even addition")
                for input_format in ("e4m3", "e5m2"))
    hmma_fp8("b200", "B200TC", "B200")
    nvidia("l40s", "L40STC", ("fp16", "bf16"), 8, 24)
    nvidia("l40s", "L40STC", ("tf32",), 4, 24)
    nvidia("l40s", "L40STC", ("e4m3", "e5m2"), 16, 13, block=_E8M13,
           notes="the block result keeps 13 fraction bits (e8m13, truncated) in fp32")
    nvidia("l40s", "L40STC", ("e4m3", "e5m2"), 16, 13, block="fp16", outs=("fp16",),
           notes="fp16 output: the same block (F = 13, C = __float2half(c) aligned with the "
                 "products) rounded to fp16 to nearest; Ada has fp8 MMA of its own")
    # AMD CDNA 1 (MI100): each block's products and C summed exactly, one fp32 RNE rounding.
    for input_format, group in (("fp16", 4), ("bf16", 2)):
        width = 62 - group.bit_length()  # the widest multiterm group refsim holds in int64
        acc = AccumSpec("fp32", "rne", "multiterm", group=group, width=width,
                        variant="acc-excluded")
        cast = _operand_cast(input_format)
        rows.append(Preset(
            "mi100", input_format, "fp32", group, None, GemmSpec(a=cast, b=cast, acc=acc),
            _AMD.format(model="MI100MC"), "published model only (not validated by data)",
            f"exact block sum (the model's correct_rounding), C added exactly, one RNE; refsim "
            f"keeps {width - 1} bits below the block's largest product, so a product more than "
            f"{width - 1} bits below it is truncated (exact in the published model)"))
    # AMD CDNA 2 (MI250X): products rounded to fp32, summed pairwise, C added; subnormal inputs
    # and results flushed. A block of 2 (bf16) is fl(C + fl(p1 + p2)): chunks of 2 summed in
    # fp32 and promoted into an fp32 outer sum that starts from C.
    ftz = FloatFormat(8, 23, subnormals=False)
    flush_cast = Cast(FloatFormat(8, 7, subnormals=False), "rtz")
    acc = AccumSpec(ftz, "rne", "chunked", chunk=2, product=Cast(ftz, "rne"),
                    outer=AccumSpec(ftz, "rne"), c_entry="outer")
    rows.append(Preset(
        "mi250x", "bf16", "fp32", 2, None, GemmSpec(a=flush_cast, b=flush_cast, acc=acc),
        _AMD.format(model="MI250MC"), "published model only (not validated by data)",
        "pairwise_sum: fl(C + fl(fl(p1) + fl(p2))), inputs flushed to zero (a cast to bf16 "
        "without subnormals, toward zero: pass bf16 values); refsim's fp32 without subnormals "
        "rounds a result in [2^-127, 2^-126) to 2^-126 where flush-to-zero gives 0 (the only "
        "difference)"))
    # CDNA 2 fp16: a block of 4 summed pairwise, fl(C + fl(fl(p1 + p2) + fl(p3 + p4))): chunks
    # of 4 summed by the pairwise tree (chunk_order), promoted into an outer sum from C.
    flush16 = Cast(FloatFormat(5, 10, subnormals=False), "rtz")
    acc = AccumSpec(ftz, "rne", "chunked", chunk=4, chunk_order="pairwise",
                    product=Cast(ftz, "rne"), outer=AccumSpec(ftz, "rne"), c_entry="outer")
    rows.append(Preset(
        "mi250x", "fp16", "fp32", 4, None, GemmSpec(a=flush16, b=flush16, acc=acc),
        _AMD.format(model="MI250MC"), "published model only (not validated by data)",
        "pair_wise_sum: fl(C + fl(fl(fl(p1) + fl(p2)) + fl(fl(p3) + fl(p4)))), inputs flushed "
        "to zero (a cast to fp16 without subnormals, toward zero: pass fp16 values); the same "
        "flush-to-zero caveat as bf16"))
    # AMD CDNA 3 (MI300X): Algorithm 1 (fp16, bf16, tf32 as AMD's xf32) and Algorithm 2 (fp8,
    # the FNUZ formats) of the published model: products truncated toward zero to 24 fraction
    # bits below their largest exponent; C joins late, rounded down (docs/hardware.md).
    for input_format, group in (("fp16", 8), ("bf16", 8), ("tf32", 4), ("e4m3", 16),
                                ("e5m2", 16)):
        fp8 = input_format in ("e4m3", "e5m2")
        name = input_format + "fnuz" if fp8 else _INPUT_FORMATS[input_format]
        acc = AccumSpec("fp32", "rne", "multiterm", group=group, width=25,
                        variant="acc-aligned", align="product", operands=name,
                        late_bits=32, late_norm_bits=31, late_truncation="floor",
                        c_cutoff=25 if fp8 else None, interleave=2 if fp8 else None)
        # fp8: the published model converts with CPFloat's saturation (GEMM.m, fp8_fnuz)
        cast = Cast(name, _INPUT_ROUNDING.get(input_format, "rne"),
                    overflow="saturate" if fp8 else "default")
        algorithm = ("Algorithm 2 (odd_even_grouping): odd- and even-indexed products aligned "
                     "separately, then moved to the common exponent rounding down; C dropped "
                     "more than 25 binades below; operands in the FNUZ formats "
                     f"({name})") if fp8 else "Algorithm 1 (global_alignment, late_partial_sum)"
        rows.append(Preset(
            "mi300x", input_format, "fp32", group, 24, GemmSpec(a=cast, b=cast, acc=acc),
            _AMD.format(model="MI300XMC (= MI300MC, CDNA 3)"),
            "published model only (not validated by data)",
            f"{algorithm}; C no larger than the products is rounded down to their grid, a "
            "larger C takes the product sum rounded down to 32 fraction bits below C's "
            "exponent and the sum is renormalized and rounded down to 31 fraction bits, then "
            "one RNE to fp32; products of 2^128 or more (bf16, tf32) are not turned into "
            "infinities as the model does"))
    rows.extend(_aliases(rows))
    return rows


# alias -> (the GPU's name in the upstream dumps or None, why the preset stands for it)
_ALIAS_SOURCES = {
    "ada": ("Ada", "Ada RTX 1000: models/AdaTC.m of " + _UPSTREAM + " sets L40STC.m's parameters "
            "for every format (both Ada Lovelace)"),
    "a2": ("A2", "models/A2TC.m of " + _UPSTREAM + " calls A100TC (both Ampere)"),
    "rtx-pro-6000": (None, "RTX PRO 6000 (RTX Blackwell): models/RTXPRO6000TC.m of " + _UPSTREAM
                     + " calls B200TC; no dumps of it; the b200 fp8 rows follow the B200 dumps, "
                     "which B200TC.m does not match"),
}


def _aliases(rows: list[Preset]) -> list[Preset]:
    """One row per alias and preset of the device it stands for, with its own evidence."""
    out = []
    for alias, target in ALIASES.items():
        gpu, why = _ALIAS_SOURCES[alias]
        for row in rows:
            if row.device != target:
                continue
            key = (row.device, row.input, row.out)
            if gpu is not None and gpu in _UPSTREAM_ROWS.get(key, ()):
                fmt = row.input.upper() if row.input.startswith("e") else row.input
                seen = (f"upstream dumps matched: 5000/5000 rows of model_validation/{gpu}/{fmt}/"
                        f"d_{gpu}_{row.out}.txt at {_COMMIT}")
            else:
                seen = "published model only (as " + target + ")"
            out.append(Preset(alias, row.input, row.out, row.group, row.frac_bits, row.spec,
                              f"alias of {target}: {why}", seen, row.notes))
    return out


_TABLE = _rows()


def devices() -> list[Preset]:
    """Every preset (device, input, out) with its parameters, source and validation status."""
    return list(_TABLE)


def _name(value: object, what: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, one of {', '.join(allowed)}; got "
                        f"{type(value).__name__}")
    name = value.lower()
    if name not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
    return name


def gemm_spec(device: str, input_format: str, out: str = "fp32") -> GemmSpec:
    """The GemmSpec that reproduces `device`'s MMA on `input_format` operands.

    Args:
        device: v100, a100, h100, h200, b200, l40s, mi100, mi250x or mi300x, or an alias (ada,
            a2, rtx-pro-6000: ALIASES; devices() says what each stands on).
        input_format: fp16, bf16, tf32, e4m3 or e5m2 (where the device has it).
        out: the accumulator/output format, fp32 or fp16 (NVIDIA only: fp16 inputs on every
            device, fp8 inputs on H100, H200, B200, L40S/Ada).

    Returns:
        A GemmSpec: operand Casts to the input format, the device's block accumulation; use it as
        refsim.matmul(a, b, spec, c=C).
    """
    device = _name(device, "device", DEVICES)
    input_format = _name(input_format, "input_format", INPUTS)
    out = _name(out, "out", OUTS)
    for row in _TABLE:
        if (row.device, row.input, row.out) == (device, input_format, out):
            return row.spec
    have = sorted({f"{row.input}/{row.out}" for row in _TABLE if row.device == device})
    raise ValueError(f"no preset for {device} with input {input_format} and out {out}; "
                     f"{device} has (input/out): {', '.join(have) or 'none'}")

