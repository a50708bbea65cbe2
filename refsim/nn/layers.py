"""Layers: Module (named parameters, named matrix products) and the layers the models use.

Usage rules:
  - A Module's parameters are the Tensors with requires_grad among its attributes, and those of
    its sub-modules (attributes that are Modules or lists of Modules), in attribute insertion
    order, named by their path ("block0.attn.qkv.weight"): a deterministic order that the
    optimizers and the checkpoints rely on.
  - Every layer that multiplies matrices is given its product name at construction and lists it
    in `gemm_names()`; a Numerics plan is checked against that list.
  - Initialization draws from the NumPy Generator passed in, in float32. Linear and Conv2d take
    `init` (INITS): "uniform" draws weights and biases uniform in +-1/sqrt(fan_in) (torch's
    default for Linear and Conv2d, variance 1/(3 fan_in)); "he" draws the weights uniform in
    +-sqrt(6/fan_in) (variance 2/fan_in, He et al. 2015, which keeps a ReLU stack's activations
    at one scale: under "uniform" each ReLU layer shrinks their second moment about 6-fold, and
    six-layer MLPs on digits stalled at 29-90% test accuracy after 300 SGD steps) and the
    biases as "uniform". Both modes draw the same uniforms from the Generator and scale them,
    so one seed gives the same stream of draws.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from refsim.nn import ops
from refsim.nn.numerics import Context
from refsim.nn.tensor import Tensor

__all__ = ["INITS", "CausalSelfAttention", "Conv2d", "Embedding", "LayerNorm", "Linear", "Module",
           "need_init"]

INITS = {"uniform": 1.0, "he": math.sqrt(6.0)}
"""Weight initialization name -> gain on the bound 1/sqrt(fan_in) (module docstring)."""


def _param(values: np.ndarray) -> Tensor:
    return Tensor(values.astype(np.float32), requires_grad=True)


def need_init(init: str) -> None:
    """ValueError unless `init` names one of INITS."""
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}; got {init!r}")


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int,
             gain: float = 1.0) -> Tensor:
    bound = gain / math.sqrt(fan_in)
    return _param(rng.uniform(-bound, bound, size=shape))


class Module:
    """Base class: parameter and product discovery by attribute order."""

    def children_modules(self) -> Iterator[tuple[str, Module]]:
        for key, value in vars(self).items():
            if isinstance(value, Module):
                yield key, value
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{key}{i}", item

    def named_parameters(self, prefix: str = "") -> list[tuple[str, Tensor]]:
        found = [(prefix + key, value) for key, value in vars(self).items()
                 if isinstance(value, Tensor) and value.requires_grad]
        for key, child in self.children_modules():
            found += child.named_parameters(f"{prefix}{key}.")
        return found

    def parameters(self) -> list[Tensor]:
        return [p for _, p in self.named_parameters()]

    def gemm_names(self) -> list[str]:
        names: list[str] = []
        for _, child in self.children_modules():
            names += child.gemm_names()
        return names

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None


class Linear(Module):
    """y = x W + b with W of shape (d_in, d_out); its product is named `name`."""

    def __init__(self, name: str, d_in: int, d_out: int, rng: np.random.Generator,
                 bias: bool = True, init: str = "uniform") -> None:
        need_init(init)
        self.name = name
        self.weight = _uniform(rng, (d_in, d_out), d_in, INITS[init])
        self.bias = _uniform(rng, (d_out,), d_in) if bias else None

    def gemm_names(self) -> list[str]:
        return [self.name]

    def __call__(self, x: Tensor, ctx: Context) -> Tensor:
        return ops.linear(x, self.weight, self.bias, self.name, ctx)


class Conv2d(Module):
    """2-D convolution with weight (O, C, k, k), stride and zero padding."""

    def __init__(self, name: str, c_in: int, c_out: int, k: int, rng: np.random.Generator,
                 stride: int = 1, padding: int = 0, init: str = "uniform") -> None:
        need_init(init)
        self.name = name
        fan_in = c_in * k * k
        self.weight = _uniform(rng, (c_out, c_in, k, k), fan_in, INITS[init])
        self.bias = _uniform(rng, (c_out,), fan_in)
        self.stride, self.padding = stride, padding

    def gemm_names(self) -> list[str]:
        return [self.name]

    def __call__(self, x: Tensor, ctx: Context) -> Tensor:
        return ops.conv2d(x, self.weight, self.bias, self.name, ctx, self.stride, self.padding)


class LayerNorm(Module):
    def __init__(self, d: int) -> None:
        self.gamma = _param(np.ones(d))
        self.beta = _param(np.zeros(d))

    def __call__(self, x: Tensor) -> Tensor:
        return ops.layernorm(x, self.gamma, self.beta)


class Embedding(Module):
    """A (vocab, d) table looked up by integer indices; N(0, 1) initialization (as torch)."""

    def __init__(self, vocab: int, d: int, rng: np.random.Generator) -> None:
        self.table = _param(rng.standard_normal((vocab, d)))

    def __call__(self, indices: np.ndarray) -> Tensor:
        return ops.embedding(indices, self.table)


class CausalSelfAttention(Module):
    """Multi-head causal self-attention: products `{name}.qkv`, `.qk`, `.av` and `.proj`."""

    def __init__(self, name: str, d: int, heads: int, rng: np.random.Generator) -> None:
        if d % heads:
            raise ValueError(f"attention {name!r}: d_model {d} is not a multiple of heads {heads}")
        self.name, self.heads = name, heads
        self.qkv = Linear(f"{name}.qkv", d, 3 * d, rng)
        self.proj = Linear(f"{name}.proj", d, d, rng)

    def gemm_names(self) -> list[str]:
        return [self.qkv.name, f"{self.name}.qk", f"{self.name}.av", self.proj.name]

    def __call__(self, x: Tensor, ctx: Context) -> Tensor:
        b, t, d = x.shape
        dh = d // self.heads
        # (B, T, 3, H, dh) -> (3, B, H, T, dh)
        qkv = self.qkv(x, ctx).reshape(b, t, 3, self.heads, dh).transpose(2, 0, 3, 1, 4)
        q, k, v = (_pick(qkv, i) for i in range(3))
        y = ops.causal_self_attention(q, k, v, self.name, ctx)
        return self.proj(y.transpose(0, 2, 1, 3).reshape(b, t, d), ctx)


def _pick(x: Tensor, i: int) -> Tensor:
    """x[i] along the first axis."""
    shape = x.shape

    def backward(g):
        grad = np.zeros(shape, g.dtype)
        grad[i] = g
        return (grad,)
    return Tensor.make(np.ascontiguousarray(x.data[i]), (x,), backward)
