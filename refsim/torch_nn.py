"""torch modules whose matrix products follow a refsim.nn Numerics plan: QLinear, QConv2d.

Usage rules:
  - A `TorchContext(numerics, seed, mode)` plays the role of refsim.nn's Context: each product
    (layer, role) runs under the plan's Product with the seed gemm_seed(seed, step, layer,
    role); the training loop increments `ctx.step`. mode "exact" (refsim.torch_ops.matmul,
    bit-identical to refsim.matmul) or "fast" (fp32 torch.matmul between the Casts).
  - `qgemm(a, b, layer, ctx)` is C = A @ B as an autograd.Function with the three roles:
    forward C = A B, backward-input dA = dC B^T, backward-weight dB = A^T dC, exactly as
    refsim.nn.ops.gemm (same operands, same seeds), so a layer's gradients match refsim.nn's.
  - QLinear keeps torch's weight layout (out, in) and computes x @ W^T: B = W^T, whose gradient
    is transposed back (exact). QConv2d is im2col (torch's unfold: columns ordered C, kh, kw;
    rows N, HO, WO as in refsim.nn.ops.im2col) times the weight as a (C*kh*kw, O) matrix.
  - `convert(model, numerics, ...)` replaces every nn.Linear and nn.Conv2d of a model in place
    (layer names: the modules' dotted paths), keeping their parameters, and returns the context.
  - Elementwise work (bias, activations, losses) stays ordinary torch: only matrix products are
    simulated, as in refsim.nn.
  - `emulate(spec_or_plan_or_preset, ...)` (refsim.torch_emulate, re-exported here) needs no
    conversion: a context under which every product of any torch model, forward and backward,
    runs under the plan.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from refsim.formats.block_format import BlockFormat
from refsim.nn.numerics import Numerics, Product, gemm_seed
from refsim.torch_ops import matmul

__all__ = ["Emulation", "ProductRecord", "QConv2d", "QLinear", "TorchContext", "convert",
           "emulate", "qgemm", "run_product"]


def run_product(product: Product, a: torch.Tensor, b: torch.Tensor, seed: int,
                mode: str = "exact") -> torch.Tensor:
    """a @ b as `product` declares (refsim.nn.numerics.run_product on tensors); a's dtype."""
    if product.gemm is None:
        return torch.matmul(a, b)
    if product.scaling == "none":
        return matmul(a, b, product.gemm, mode=mode, seed=seed).to(a.dtype)
    assert product.gemm.a is not None and product.gemm.b is not None
    fa, fb = product.gemm.a.fmt, product.gemm.b.fmt
    assert not isinstance(fa, BlockFormat) and not isinstance(fb, BlockFormat)  # Product checks
    sa = _tensor_scale(a, float(fa.max))
    sb = _tensor_scale(b, float(fb.max))
    y = matmul(a.double() / sa, b.double() / sb, product.gemm, mode=mode, seed=seed).double()
    return (y * (sa * sb)).to(a.dtype)


def _tensor_scale(x: torch.Tensor, fmt_max: float) -> float:
    amax = float(x.abs().max()) if x.numel() else 0.0
    if amax == 0.0 or not math.isfinite(amax):
        return 1.0
    return amax / fmt_max


class TorchContext:
    """Plan, run seed, step and mode of the products of converted modules."""

    def __init__(self, numerics: Numerics, seed: int = 0, mode: str = "exact") -> None:
        if mode not in ("exact", "fast"):
            raise ValueError(f"mode must be 'exact' or 'fast'; got {mode!r}")
        self.numerics = numerics
        self.seed = seed
        self.step = 0
        self.mode = mode

    def gemm(self, layer: str, role: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        product = self.numerics.product(layer, role)
        return run_product(product, a, b, gemm_seed(self.seed, self.step, layer, role),
                           self.mode)


class _QGemm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, layer: str,
                tctx: TorchContext) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        ctx.layer = layer
        ctx.tctx = tctx
        return tctx.gemm(layer, "forward", a.detach(), b.detach())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        a, b = ctx.saved_tensors
        tctx: TorchContext = ctx.tctx
        grad = grad.contiguous()
        da = db = None
        if ctx.needs_input_grad[0]:
            da = tctx.gemm(ctx.layer, "backward-input", grad, b.detach().transpose(-1, -2))
        if ctx.needs_input_grad[1]:
            db = tctx.gemm(ctx.layer, "backward-weight", a.detach().transpose(-1, -2), grad)
        return da, db, None, None


def qgemm(a: torch.Tensor, b: torch.Tensor, layer: str, ctx: TorchContext) -> torch.Tensor:
    """C = A @ B (2-D) with the three roles under ctx's plan (module docstring)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"qgemm {layer!r}: A of shape {tuple(a.shape)} and B of shape "
                         f"{tuple(b.shape)} do not multiply as 2-D matrices")
    return _QGemm.apply(a, b, layer, ctx)


class QLinear(nn.Module):
    """nn.Linear whose product x @ W^T runs under the plan as layer `name`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, name: str,
                 context: TorchContext, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None
        self.name = name
        self.context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = qgemm(x.reshape(-1, x.shape[-1]), self.weight.t(), self.name, self.context)
        y = y.reshape(*lead, self.weight.shape[0])
        return y if self.bias is None else y + self.bias


class QConv2d(nn.Module):
    """nn.Conv2d (no dilation, no groups) as im2col times the weight under the plan."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True, *, name: str, context: TorchContext,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size,
                                               kernel_size, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_channels, dtype=dtype)) if bias else None
        self.stride = stride
        self.padding = padding
        self.name = name
        self.context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        o, c, kh, kw = self.weight.shape
        cols = torch.nn.functional.unfold(x, (kh, kw), stride=self.stride, padding=self.padding)
        ho = (h + 2 * self.padding - kh) // self.stride + 1
        wo = (w + 2 * self.padding - kw) // self.stride + 1
        rows = cols.transpose(1, 2).reshape(n * ho * wo, c * kh * kw)
        y = qgemm(rows, self.weight.reshape(o, c * kh * kw).t(), self.name, self.context)
        y = y.reshape(n, ho, wo, o).permute(0, 3, 1, 2)
        return y if self.bias is None else y + self.bias.reshape(1, o, 1, 1)


def _single(value: Any, what: str) -> int:
    pair = value if isinstance(value, tuple) else (value, value)
    if pair[0] != pair[1]:
        raise NotImplementedError(f"convert: {what} {value} is not square")
    return int(pair[0])


def convert(model: nn.Module, numerics: Numerics, seed: int = 0, mode: str = "exact",
            context: TorchContext | None = None) -> TorchContext:
    """Replace model's nn.Linear and nn.Conv2d modules in place by QLinear / QConv2d named by
    their dotted paths, with the same parameters; returns the shared context."""
    ctx = context or TorchContext(numerics, seed, mode)
    names = []
    for path, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{path}.{child_name}" if path else child_name
            if isinstance(child, nn.Linear):
                new: QLinear | QConv2d = QLinear(child.in_features, child.out_features,
                                                 child.bias is not None, name=full,
                                                 context=ctx, dtype=child.weight.dtype)
            elif isinstance(child, nn.Conv2d):
                if child.groups != 1 or _single(child.dilation, "dilation") != 1:
                    raise NotImplementedError(f"convert: {full} uses groups or dilation")
                if not isinstance(child.padding, tuple):
                    raise NotImplementedError(f"convert: {full} padding {child.padding!r}")
                new = QConv2d(child.in_channels, child.out_channels,
                              _single(child.kernel_size, "kernel_size"),
                              _single(child.stride, "stride"), _single(child.padding, "padding"),
                              child.bias is not None, name=full, context=ctx,
                              dtype=child.weight.dtype)
            else:
                continue
            with torch.no_grad():
                new.weight.copy_(child.weight)
                if child.bias is not None:
                    assert new.bias is not None
                    new.bias.copy_(child.bias)
            setattr(module, child_name, new)
            names.append(full)
    numerics.check(names)
    return ctx


from refsim.torch_emulate import Emulation, ProductRecord, emulate  # noqa: E402 (re-export)
