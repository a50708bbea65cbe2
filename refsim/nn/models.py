"""The models: MLP, a small CNN, a small ResNet-style CNN and a tiny decoder-only transformer.

Each model is built from a seed (its initialization is a pure function of it), takes its input
as a NumPy array plus a Context, returns logits, and lists its matrix products in `gemm_names()`
in forward order. The ReLU models (MLP, CNN, ResNet) take `init`, their weights' initialization
(refsim.nn.layers.INITS); the transformer keeps "uniform" (its LayerNorms hold the scale).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from refsim.nn import ops
from refsim.nn.layers import CausalSelfAttention, Conv2d, Embedding, LayerNorm, Linear, Module
from refsim.nn.numerics import Context
from refsim.nn.tensor import Tensor

__all__ = ["CNN", "MLP", "ResNet", "Transformer"]


def _input(x: np.ndarray) -> Tensor:
    return Tensor(np.asarray(x, np.float32))


class MLP(Module):
    """Linear layers fc1..fcN with ReLU between them; sizes = (d_in, hidden..., d_out)."""

    def __init__(self, sizes: Sequence[int] = (64, 128, 10), seed: int = 0,
                 init: str = "uniform") -> None:
        if len(sizes) < 2:
            raise ValueError(f"MLP sizes need at least an input and an output size; got {sizes}")
        rng = np.random.default_rng(seed)
        self.sizes = tuple(sizes)
        self.layers = [Linear(f"fc{i + 1}", d_in, d_out, rng, init=init)
                       for i, (d_in, d_out) in enumerate(itertools.pairwise(sizes))]

    def __call__(self, x: np.ndarray, ctx: Context, taps: dict | None = None) -> Tensor:
        """Logits (N, d_out) of x (N, d_in); `taps`, if given, receives each layer's output."""
        h = _input(x)
        for i, layer in enumerate(self.layers):
            h = layer(h, ctx)
            if taps is not None:
                taps[layer.name] = h.data
            if i + 1 < len(self.layers):
                h = h.relu()
        return h


class CNN(Module):
    """3x3 convs (pad 1, relu), a 2x2 max-pool after each of the first two, then a linear layer:
    for 1x8x8 digits by default. `channels` lists the convs' output channels (conv1, conv2,
    ...; the default (8, 16) is two convs)."""

    def __init__(self, channels: Sequence[int] = (8, 16), image: int = 8, classes: int = 10,
                 seed: int = 0, init: str = "uniform") -> None:
        if image % 4:
            raise ValueError(f"CNN image size must be a multiple of 4 (two 2x2 pools); got {image}")
        if len(channels) < 2:
            raise ValueError(f"CNN channels must list at least two convs; got {channels}")
        rng = np.random.default_rng(seed)
        self.n_convs = len(channels)
        for i, (c_in, c_out) in enumerate(itertools.pairwise((1, *channels))):
            # attributes conv1, conv2, ...: parameter names (conv1.weight) as the layer names
            setattr(self, f"conv{i + 1}", Conv2d(f"conv{i + 1}", c_in, c_out, 3, rng, padding=1,
                                                      init=init))
        self.fc = Linear("fc", channels[-1] * (image // 4) ** 2, classes, rng, init=init)

    def __call__(self, x: np.ndarray, ctx: Context) -> Tensor:
        """Logits (N, classes) of images x (N, 1, H, W)."""
        h = _input(x)
        for i in range(self.n_convs):
            h = getattr(self, f"conv{i + 1}")(h, ctx).relu()
            if i < 2:
                h = ops.max_pool2d(h)
        return self.fc(h.reshape(h.shape[0], -1), ctx)


class Residual(Module):
    """relu(x + conv2(relu(conv1(x)))): two 3x3 convs (pad 1) that keep the channels."""

    def __init__(self, name: str, width: int, rng: np.random.Generator,
                 init: str = "uniform") -> None:
        self.conv1 = Conv2d(f"{name}.conv1", width, width, 3, rng, padding=1, init=init)
        self.conv2 = Conv2d(f"{name}.conv2", width, width, 3, rng, padding=1, init=init)

    def __call__(self, x: Tensor, ctx: Context) -> Tensor:
        return (x + self.conv2(self.conv1(x, ctx).relu(), ctx)).relu()


class ResNet(Module):
    """A stem conv(3x3, pad 1)-relu-maxpool2, a 1x1 conv to `width` channels (relu), residual
    blocks and a linear layer on the flattened features: for 1x8x8 digits by default.

    Products: stem, reduce, blockI.conv1, blockI.conv2 (I = 1..blocks), fc. The wide stem on the
    full-size image makes the elements of its operands the most reused of all the models' GEMMs
    (refsim.factors), and its weight gradient the longest reduction (batch x 64 pixels).
    """

    def __init__(self, stem: int = 64, width: int = 16, blocks: int = 1, image: int = 8,
                 classes: int = 10, seed: int = 0, init: str = "uniform") -> None:
        if image % 2:
            raise ValueError(f"ResNet image size must be even (one 2x2 pool); got {image}")
        rng = np.random.default_rng(seed)
        self.stem = Conv2d("stem", 1, stem, 3, rng, padding=1, init=init)
        self.reduce = Conv2d("reduce", stem, width, 1, rng, init=init)
        self.blocks = [Residual(f"block{i + 1}", width, rng, init) for i in range(blocks)]
        self.fc = Linear("fc", width * (image // 2) ** 2, classes, rng, init=init)

    def __call__(self, x: np.ndarray, ctx: Context) -> Tensor:
        """Logits (N, classes) of images x (N, 1, H, W)."""
        h = ops.max_pool2d(self.stem(_input(x), ctx).relu())
        h = self.reduce(h, ctx).relu()
        for block in self.blocks:
            h = block(h, ctx)
        return self.fc(h.reshape(h.shape[0], -1), ctx)


class Block(Module):
    """Pre-layernorm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x)) (GELU)."""

    def __init__(self, name: str, d: int, heads: int, d_ff: int, dropout: float,
                 rng: np.random.Generator) -> None:
        self.name, self.dropout = name, dropout
        self.ln1 = LayerNorm(d)
        self.attn = CausalSelfAttention(f"{name}.attn", d, heads, rng)
        self.ln2 = LayerNorm(d)
        self.fc1 = Linear(f"{name}.mlp.fc1", d, d_ff, rng)
        self.fc2 = Linear(f"{name}.mlp.fc2", d_ff, d, rng)

    def _drop(self, x: Tensor, ctx: Context, where: str) -> Tensor:
        if not ctx.training or self.dropout == 0.0:
            return x
        return ops.dropout(x, self.dropout, ctx.stream_seed(f"{self.name}.{where}"))

    def __call__(self, x: Tensor, ctx: Context) -> Tensor:
        x = x + self._drop(self.attn(self.ln1(x), ctx), ctx, "attn")
        return x + self._drop(self.fc2(self.fc1(self.ln2(x), ctx).gelu(), ctx), ctx, "mlp")


class Transformer(Module):
    """Decoder-only: token + learned position embeddings, blocks, final layernorm, a linear head
    (product `head`). Products per block: blockI.attn.{qkv,qk,av,proj}, blockI.mlp.{fc1,fc2}."""

    def __init__(self, vocab: int, seq_len: int, d: int = 32, heads: int = 2, n_blocks: int = 1,
                 d_ff: int = 64, dropout: float = 0.0, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.vocab, self.seq_len = vocab, seq_len
        self.tok = Embedding(vocab, d, rng)
        self.pos = Embedding(seq_len, d, rng)
        self.blocks = [Block(f"block{i}", d, heads, d_ff, dropout, rng) for i in range(n_blocks)]
        self.ln = LayerNorm(d)
        self.head = Linear("head", d, vocab, rng)

    def __call__(self, tokens: np.ndarray, ctx: Context) -> Tensor:
        """Logits (B, T, vocab) for integer tokens (B, T), T <= seq_len."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] > self.seq_len:
            raise ValueError(f"transformer: tokens must have shape (B, T) with T <= "
                             f"{self.seq_len}; got {tokens.shape}")
        h = self.tok(tokens) + self.pos(np.arange(tokens.shape[1]))
        for block in self.blocks:
            h = block(h, ctx)
        return self.head(self.ln(h), ctx)
