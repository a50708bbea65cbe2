"""Two ordinary torch models for refsim.torch_nn.emulate(), their synthetic tasks, and the
numerics the examples train them under.

- gpt(): a GPT-style decoder (token and learned position embeddings, pre-LN blocks with causal
  F.scaled_dot_product_attention and a GELU MLP, a final LayerNorm and an untied output head),
  4 blocks of d_model 256 and 4 heads by default. Task: continue sequences that repeat a random
  pattern of `period` tokens (the model must copy from `period` positions back).
- resnet18(): the ResNet-18 layout (a 3x3 stem, four stages of two BasicBlocks, widths w, 2w,
  4w, 8w, stride 2 from the second stage, batch norm, global average pooling, a linear
  classifier), CIFAR-style (no 7x7 stem, no max pool); width 64 is ResNet-18's. Task: 10 classes
  of 3-channel images, each class a fixed random template, plus noise.
Both are plain torch (random init from torch.manual_seed); nothing in them knows refsim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refsim.hardware import gemm_spec
from refsim.nn.numerics import Numerics, Product, preset
from refsim.specs import AccumSpec, Cast, GemmSpec

__all__ = ["NUMERICS", "gpt", "gpt_batch", "numerics", "resnet18", "resnet_batch"]


# ---- GPT ----------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, context: int, d_model: int, blocks: int, heads: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads) for _ in range(blocks))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok(tokens) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def gpt(vocab: int = 32, context: int = 32, d_model: int = 256, blocks: int = 4,
        heads: int = 4) -> GPT:
    """The decoder of the module docstring (random init: call torch.manual_seed first)."""
    return GPT(vocab, context, d_model, blocks, heads)


def gpt_batch(generator: torch.Generator, batch: int = 8, length: int = 32, vocab: int = 32,
              period: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, targets) of shape (batch, length): each row repeats a random pattern of
    `period` tokens; targets are the next tokens (the last position is not scored: -100)."""
    pattern = torch.randint(0, vocab, (batch, period), generator=generator)
    seq = pattern.repeat(1, length // period + 2)[:, :length + 1]
    targets = seq[:, 1:].clone()
    targets[:, :period - 1] = -100  # the first repeat cannot be predicted
    return seq[:, :-1], targets


# ---- ResNet-18 ----------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        stages = []
        cin = width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride),
                                        BasicBlock(cout, cout, 1)))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet18(width: int = 64, classes: int = 10) -> ResNet18:
    """The ResNet-18 layout of the module docstring (random init)."""
    return ResNet18(width, classes)


def resnet_batch(generator: torch.Generator, batch: int = 16, size: int = 16,
                 classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (batch, 3, size, size), labels): class templates (fixed, seed 1234) plus
    Gaussian noise of standard deviation 0.5."""
    templates = torch.randn(classes, 3, size, size,
                            generator=torch.Generator().manual_seed(1234))
    labels = torch.randint(0, classes, (batch,), generator=generator)
    noise = torch.randn(batch, 3, size, size, generator=generator)
    return templates[labels] + 0.5 * noise, labels


# ---- numerics -----------------------------------------------------------------------------------
NUMERICS: dict[str, str] = {
    "fp32": "not emulated: native float32 torch (the reference curve)",
    "h100-fp8": "refsim.hardware.gemm_spec('h100', 'e4m3') for every role, with per-tensor "
                "current scaling (amax -> 448, as Transformer Engine scales)",
    "mxfp8": "the mxfp8 recipe preset (refsim.nn.recipes)",
    "nvfp4": "the nvfp4 recipe preset (refsim.nn.recipes)",
    "fp16-acc": "fp16 operands (rne), fp16 sequential accumulation (rne)",
}


def numerics(name: str) -> Numerics | None:
    """The plan of NUMERICS[name]; None for fp32 (no emulation)."""
    if name == "fp32":
        return None
    if name == "h100-fp8":
        return Numerics(Product(gemm_spec("h100", "e4m3"), scaling="tensor"), name=name)
    if name == "fp16-acc":
        spec = GemmSpec(a=Cast("fp16"), b=Cast("fp16"), acc=AccumSpec("fp16"))
        return Numerics(Product(spec), name=name)
    if name in ("mxfp8", "nvfp4"):
        return preset(name)
    raise ValueError(f"unknown numerics {name!r} (allowed: {', '.join(NUMERICS)})")
