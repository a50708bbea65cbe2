"""Presets that reproduce real matrix accelerators' MMA instructions (docs/hardware.md).

Usage rules:
  - gemm_spec(device, input_format, out="fp32") returns a GemmSpec; refsim.matmul(a, b, spec,
    c=C) then computes D = A·B + C as that device's tensor core / matrix core does, one
    instruction's block of products at a time, each block's result the next block's C.
  - Every preset is built from general AccumSpec features (order multiterm or chunked: group,
    width, variant, align, truncation, operands, subnormals, c_entry, outer, chunk_order, and
    the late accumulator late_bits, late_norm_bits, late_truncation, c_cutoff, interleave);
    there is no per-device code path.
  - devices() lists every preset with its parameters, its source, and what confirms it: rows of
    real-GPU outputs reproduced bit for bit (tests/data/tensor_cores), or only a published model.
  - Unknown devices, formats or combinations raise ValueError listing what exists.

The NVIDIA block model (Fasi et al. 2021; Khattak & Mikaitis 2025, as issue 15 and the data in
tests/data/tensor_cores confirm): each product is exact with the unnormalized exponent ea + eb
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

from refsim.formats import FloatFormat, get_format
from refsim.specs import AccumSpec, Cast, GemmSpec

__all__ = ["DEVICES", "INPUTS", "Preset", "devices", "gemm_spec"]

DEVICES: tuple[str, ...] = ("v100", "a100", "h100", "h200", "b200", "l40s", "mi100", "mi250x",
                            "mi300x")
INPUTS: tuple[str, ...] = ("fp16", "bf16", "tf32", "e4m3", "e5m2")
OUTS: tuple[str, ...] = ("fp32", "fp16")

# refsim's name of each input format, and how a float32 operand is converted to it (NVIDIA's
# tf32 MMA reads the top 19 bits of an fp32 register: truncation; the others round to nearest).
_INPUT_FORMATS = {"fp16": "fp16", "bf16": "bf16", "tf32": "tf32", "e4m3": "e4m3fn",
                  "e5m2": "e5m2"}
_INPUT_ROUNDING = {"tf32": "rtz"}

_KHATTAK = ("Khattak & Mikaitis, Accurate Models of NVIDIA Tensor Cores, arXiv:2512.07004 (2025); "
            "models/{model}.m of github.com/north-numerical-computing/MATLAB-tensor-core")
_FASI = "Fasi, Higham, Mikaitis, Pranesh, PeerJ CS 7:e330 (2021)"
_ISSUE_B200 = ("B200 fp8 as measured (refsim issue 15): the published models/B200TC.m does not "
               "match the measured outputs")
_AMD = ("Khattak & Mikaitis, models of AMD matrix cores, models/{model}.m of "
        "github.com/north-numerical-computing/MATLAB-tensor-core")
_E8M13 = FloatFormat(8, 13)  # fp32's range with 13 fraction bits: the fp8 MMA's block result


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
            bit by tests/refsim/test_hardware.py, else "published model only" (with the test
            vectors it passes, if any).
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
    return Cast(_INPUT_FORMATS[input_format], _INPUT_ROUNDING.get(input_format, "rne"), **kwargs)


def _nvidia(input_format: str, out: str, group: int, frac_bits: int, *,
            block: FloatFormat | str | None = None, c_after: bool = False,
            truncation: str = "toward-zero") -> GemmSpec:
    """The NVIDIA block model (module doc). block: the block result's format (default: fp32
    rounded toward zero, fp16 rounded to nearest for out='fp16'). c_after: the products alone
    are aligned and summed, the sum rounded to `block`, then C added with an fp32 round-to-
    nearest-even addition (B200 fp8)."""
    operands = get_format(_INPUT_FORMATS[input_format])
    rounding = "rne" if out == "fp16" else "rtz"
    fmt = block if block is not None else out
    cast = _operand_cast(input_format)
    if c_after:
        acc = AccumSpec(fmt, rounding, "multiterm", group=group, width=frac_bits + 1,
                        chunk=group, outer=AccumSpec("fp32", "rne"), c_entry="outer",
                        align="product", operands=operands, truncation=truncation)
    else:
        acc = AccumSpec(fmt, rounding, "multiterm", group=group, width=frac_bits + 1,
                        variant="acc-aligned", align="product", operands=operands,
                        truncation=truncation)
    return GemmSpec(a=cast, b=cast, acc=acc)


def _rows() -> list[Preset]:
    rows: list[Preset] = []

    def nvidia(device: str, model: str, inputs: tuple[str, ...], group: int, frac_bits: int,
               *, fp16_out: bool = True, validated: dict[str, str] | None = None,
               notes: str = "", **kwargs) -> None:
        for input_format in inputs:
            outs = ("fp32", "fp16") if fp16_out and input_format == "fp16" else ("fp32",)
            for out in outs:
                seen = (validated or {}).get(f"{input_format}/{out}", "published model only")
                rows.append(Preset(device, input_format, out, group, frac_bits,
                                   _nvidia(input_format, out, group, frac_bits, **kwargs),
                                   _KHATTAK.format(model=model), seen, notes))

    vectors = f"the test vectors of {_FASI} pass"
    fasi = f"published model only; {vectors}"
    nvidia("v100", "V100TC", ("fp16",), 4, 23,
           validated={"fp16/fp32": f"rows matched: 500/500 (v100_fp16.npz); {vectors}",
                      "fp16/fp16": fasi})
    nvidia("a100", "A100TC", ("fp16", "bf16"), 8, 24,
           validated={"fp16/fp32": f"rows matched: 500/500 (a100_fp16.npz); {vectors}",
                      "fp16/fp16": fasi, "bf16/fp32": fasi})
    nvidia("a100", "A100TC", ("tf32",), 4, 24)
    for device, model in (("h100", "H100TC"), ("h200", "H200TC")):
        rows_h = {"fp16/fp32": "rows matched: 500/500 (h100_fp16.npz)",
                  "e4m3/fp32": "rows matched: 500/500 (h100_e4m3.npz, C = 0)"}
        if device == "h200":  # the same tensor core (models/H200TC.m); the rows are H100's
            rows_h = {key: f"{value}, measured on H100" for key, value in rows_h.items()}
        nvidia(device, model, ("fp16", "bf16"), 16, 25, validated=rows_h)
        nvidia(device, model, ("tf32",), 8, 25)
        nvidia(device, model, ("e4m3", "e5m2"), 32, 13, block=_E8M13, validated=rows_h,
               notes="the block result keeps 13 fraction bits (e8m13, truncated) in fp32; "
                     "DeepSeek-V3's 'about 14 bits'")
    nvidia("b200", "B200TC", ("fp16", "bf16"), 16, 25)
    nvidia("b200", "B200TC", ("tf32",), 8, 25)
    rows.extend(Preset("b200", input_format, "fp32", 32, 25,
                       _nvidia(input_format, "fp32", 32, 25, c_after=True), _ISSUE_B200,
                       "measured description only (no rows here)",
                       "the 32 products are aligned (F = 25, the B200 adder's width, assumed) "
                       "and summed, the sum truncated to fp32, then C is added with an fp32 "
                       "round-to-nearest-even addition")
                for input_format in ("e4m3", "e5m2"))
    nvidia("l40s", "L40STC", ("fp16", "bf16"), 8, 24, fp16_out=False)
    nvidia("l40s", "L40STC", ("tf32",), 4, 24)
    nvidia("l40s", "L40STC", ("e4m3", "e5m2"), 16, 13, block=_E8M13,
           notes="the block result keeps 13 fraction bits (e8m13, truncated) in fp32")
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
        cast = Cast(name, _INPUT_ROUNDING.get(input_format, "rne"))
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
    return rows


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
        device: v100, a100, h100, h200, b200, l40s, mi100, mi250x or mi300x.
        input_format: fp16, bf16, tf32, e4m3 or e5m2 (where the device has it).
        out: the accumulator/output format, fp32 or fp16 (fp16 inputs on V100, A100, H100, H200,
            B200 only).

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
