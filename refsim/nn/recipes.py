"""Low-precision training recipes as they are published, one GemmSpec per role (docs/nn.md,
"Recipes").

Each recipe returns (description, default roles, layer patterns) with every role a
(GemmSpec, scaling) pair; refsim.nn.numerics wraps them into the presets of the same names. Roles
as in refsim.nn.numerics: `forward` C = A B (A activations, B weights), `backward-input`
dA = dC B^T (A = output gradient, B = weights transposed), `backward-weight` dB = A^T dC (A =
activations transposed, B = output gradient). Every block runs along each GEMM's K, so a tensor
that two GEMMs read along different axes is quantized twice, once per GEMM (as the recipes' kernels
do: "row-wise" and "column-wise" copies). Weight tiles (16x16, 128x128) are 2-D, so both copies of
a weight hold the same values.

Where a paper keeps products in higher precision (attention's batched products, the output layer)
the recipe names them with layer patterns (`*.attn.qk`, `*.attn.av`, and LAST for the model's last
product) and computes them as the `bf16` preset does.
"""

from __future__ import annotations

from refsim.formats.block_format import NAMED_BLOCKS
from refsim.hardware import gemm_spec
from refsim.specs import AccumSpec, Cast, GemmSpec
from refsim.transforms import RandomHadamard

__all__ = ["RECIPES", "recipe"]

Role = tuple[GemmSpec, str]
Recipe = tuple[str, dict[str, Role], dict[str, dict[str, Role]]]

RECIPES: tuple[str, ...] = ("mxfp8", "nvfp4", "nvfp4-4over6", "deepseek-fp8")
"""The recipe presets, in the order the recipes study reports them."""

_ATTENTION = ("*.attn.qk", "*.attn.av")
_LAST = "@last"  # refsim.nn.numerics.LAST: the model's last product
NVFP4_SR_BITS = 16
"""Random bits of the gradients' stochastic rounding in the NVFP4 recipes (the most refsim's
scaled block quantization takes; docs/blocks.md)."""
RHT_SEED = 0
"""The NVFP4 recipe's sign vector: one fixed seed for the whole run, as the paper uses one fixed
random sign vector."""


def _bf16() -> Role:
    # As the `bf16` preset: bf16 operands (rne), fp32 sequential accumulation, bf16 output.
    return (GemmSpec(a=Cast("bf16"), b=Cast("bf16"), acc=AccumSpec("fp32"), out=Cast("bf16")),
            "none")


def _kept(patterns: tuple[str, ...]) -> dict[str, dict[str, Role]]:
    """Layer patterns computed in bf16, every role."""
    return {p: {role: _bf16() for role in ("forward", "backward-input", "backward-weight")}
            for p in patterns}


def _mxfp8() -> Recipe:
    mx = Cast(NAMED_BLOCKS["mxfp8_e4m3_rceil"])
    gemm = GemmSpec(a=mx, b=mx, acc=AccumSpec("fp32"))
    return ("MXFP8 (NVIDIA, arXiv:2506.08027): e4m3 elements for every tensor (gradients too), "
            "1x32 blocks along K with E8M0 scales rounded up (rceil), rne; fp32 sequential "
            "accumulation; attention products in bf16",
            dict.fromkeys(("forward", "backward-input", "backward-weight"), (gemm, "none")),
            _kept(_ATTENTION))


def _nvfp4(groups: str, tiles: str, label: str) -> Recipe:
    act = NAMED_BLOCKS[groups]
    weight = NAMED_BLOCKS[tiles]
    acc = AccumSpec("fp32")
    rne, sr = Cast(act, "rne"), Cast(act, "sr", sr_bits=NVFP4_SR_BITS)
    w = Cast(weight, "rne")
    rht = RandomHadamard(16, seed=RHT_SEED, fmt="fp32", rounding="rne")
    roles = {"forward": (GemmSpec(a=rne, b=w, acc=acc), "blocks"),
             "backward-input": (GemmSpec(a=sr, b=w, acc=acc), "blocks"),
             "backward-weight": (GemmSpec(a=rne, b=sr, acc=acc, transform=rht), "blocks")}
    return (f"{label}: e2m1 elements, E4M3 block scales under an fp32 tensor scale "
            f"(applied in the epilogue); weights in 16x16 tiles, activations and gradients in 1x16 "
            f"groups along K; rne for weights and activations, sr ({NVFP4_SR_BITS} bits) for "
            f"gradients; a 16-point random Hadamard transform (fp32) on both inputs of the "
            f"weight-gradient GEMM; fp32 sequential accumulation; the output layer and attention "
            f"products in bf16",
            roles, _kept((*_ATTENTION, _LAST)))


def _deepseek() -> Recipe:
    h100 = gemm_spec("h100", "e4m3").acc.to_dict()
    acc = AccumSpec.from_dict({**h100, "chunk": 128, "outer": {"fmt": "fp32"}})
    act = Cast(NAMED_BLOCKS["deepseek_1x128"])
    weight = Cast(NAMED_BLOCKS["deepseek_128x128"])
    roles = {"forward": (GemmSpec(a=act, b=weight, acc=acc), "blocks"),
             "backward-input": (GemmSpec(a=act, b=weight, acc=acc), "blocks"),
             "backward-weight": (GemmSpec(a=act, b=act, acc=acc), "blocks")}
    return ("DeepSeek-V3 FP8 (arXiv:2412.19437): e4m3 for every tensor with fp32 scales "
            "amax / 448, activations and gradients per 1x128 group along K, weights per 128x128 "
            "tile; the H100 fp8 tensor-core model (refsim.hardware) on the elements, promoted "
            "every 128 products into fp32 with the two blocks' scales (refsim.scaled_matmul); "
            "the output layer and attention products in bf16",
            roles, _kept((*_ATTENTION, _LAST)))


def recipe(name: str) -> Recipe:
    """The recipe `name` (RECIPES): (description, default roles, layer patterns)."""
    if name == "mxfp8":
        return _mxfp8()
    if name == "nvfp4":
        return _nvfp4("nvfp4", "nvfp4_16x16",
                      "NVFP4 (NVIDIA, arXiv:2509.25149)")
    if name == "nvfp4-4over6":
        return _nvfp4("nvfp4_4over6", "nvfp4_4over6_16x16",
                      "NVFP4 with four-over-six block scales (arXiv:2512.02010)")
    if name == "deepseek-fp8":
        return _deepseek()
    raise ValueError(f"unknown recipe {name!r} (allowed: {', '.join(RECIPES)})")
