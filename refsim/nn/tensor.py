"""Tensor: a NumPy array with reverse-mode autodiff, and its elementwise and shape ops.

Usage rules:
  - `Tensor(data, requires_grad=False)`; data is a float32 or float64 NumPy array (training uses
    float32; the gradient tests use float64). Nothing is cast implicitly: both operands of a
    binary op must have the same dtype (Python scalars take the tensor's dtype).
  - Every op is a function that computes its forward value and returns a closure computing the
    gradients of its inputs from the output's gradient, next to each other (as in micrograd).
  - `loss.backward()` visits the graph in a deterministic order: an iterative depth-first
    post-order over `children`, which are tuples (never sets). Gradients of a node are summed in
    that order, so the same inputs give bit-identical gradients in every run.
  - Ops that only compute (no parameter below them) record no graph.
  - NaN and +-Inf propagate as in torch (IEEE arithmetic; relu keeps NaN): a non-finite value
    is never silently made finite (refsim.nn.train stops on one).
  - Matrix products live in refsim.nn.ops (they are simulated); the ops here are plain NumPy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import special

__all__ = ["Tensor", "broadcast_shape", "unbroadcast"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

_SQRT_HALF = math.sqrt(0.5)  # Python floats, so float32 stays float32 (NEP 50)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

Backward = Callable[[np.ndarray], Sequence[np.ndarray | None]]


def broadcast_shape(op: str, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """The broadcast shape of a and b, or an error naming the op and both shapes."""
    try:
        return np.broadcast_shapes(a, b)
    except ValueError:
        raise ValueError(f"{op}: shapes {a} and {b} do not broadcast") from None


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum `grad` over the axes that broadcasting added or stretched, back to `shape`."""
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


class Tensor:
    """An array, its gradient (after backward) and the op that made it."""

    __slots__ = ("_backward", "children", "data", "grad", "name", "requires_grad")

    def __init__(self, data, requires_grad: bool = False, name: str | None = None) -> None:
        if isinstance(data, Tensor):
            raise TypeError("data is already a Tensor")
        data = np.asarray(data)
        if data.dtype not in _FLOATS:
            raise TypeError(f"Tensor data must be float32 or float64; got {data.dtype} (nothing "
                            "is cast implicitly)")
        self.data: np.ndarray = data
        self.grad: np.ndarray | None = None
        self.requires_grad = bool(requires_grad)
        self.name = name
        self.children: tuple[Tensor, ...] = ()
        self._backward: Backward | None = None

    # ---- graph ----------------------------------------------------------------------------------
    @staticmethod
    def make(data: np.ndarray, children: tuple[Tensor, ...], backward: Backward) -> Tensor:
        """The result of an op: records children and backward only if a child needs a grad."""
        out = Tensor(data)
        if any(child.requires_grad for child in children):
            out.requires_grad = True
            out.children = children
            out._backward = backward
        return out

    def topo_order(self) -> list[Tensor]:
        """Nodes that need a gradient, every node after all of its children (deterministic)."""
        order: list[Tensor] = []
        seen: set[int] = set()
        stack: list[tuple[Tensor, bool]] = [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in seen or not node.requires_grad:
                continue
            seen.add(id(node))
            stack.append((node, True))
            # Reversed, so the first child is expanded first: the order reads like the forward.
            stack.extend((child, False) for child in reversed(node.children))
        return order

    def backward(self, grad: np.ndarray | None = None) -> None:
        """Gradients of this tensor (a scalar, unless `grad` is given) w.r.t. every leaf."""
        if not self.requires_grad:
            raise ValueError("backward: this tensor does not depend on any tensor that "
                             "requires a gradient")
        if grad is None:
            if self.data.size != 1:
                raise ValueError(f"backward needs a scalar or an explicit grad; this tensor has "
                                 f"shape {self.data.shape}")
            grad = np.ones_like(self.data)
        elif np.shape(grad) != self.data.shape:
            raise ValueError(f"backward: grad of shape {np.shape(grad)} does not match the "
                             f"tensor's shape {self.data.shape}")
        order = self.topo_order()
        for node in order:
            if node._backward is not None:
                node.grad = None  # intermediate gradients are rebuilt by every backward
        self.grad = np.asarray(grad, dtype=self.data.dtype)
        for node in reversed(order):
            if node._backward is None or node.grad is None:
                continue
            grads = node._backward(node.grad)
            for child, g in zip(node.children, grads, strict=True):
                if g is None or not child.requires_grad:
                    continue
                g = np.asarray(g, dtype=child.data.dtype)
                child.grad = g if child.grad is None else child.grad + g

    def zero_grad(self) -> None:
        self.grad = None

    # ---- conveniences ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def numpy(self) -> np.ndarray:
        return self.data

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"Tensor{label}(shape={self.data.shape}, dtype={self.data.dtype})"

    def _lift(self, other: object, op: str) -> Tensor:
        if isinstance(other, Tensor):
            if other.dtype != self.dtype:
                raise TypeError(f"{op}: dtypes {self.dtype} and {other.dtype} differ (nothing "
                                "is cast implicitly)")
            return other
        if isinstance(other, int | float | np.floating | np.integer):
            return Tensor(np.asarray(other, dtype=self.dtype))
        raise TypeError(f"{op}: cannot combine a Tensor with {type(other).__name__}")

    # ---- binary ops with broadcasting -----------------------------------------------------------
    def __add__(self, other: object) -> Tensor:
        b = self._lift(other, "add")
        broadcast_shape("add", self.shape, b.shape)
        sa, sb = self.shape, b.shape

        def backward(g):
            return unbroadcast(g, sa), unbroadcast(g, sb)
        return Tensor.make(self.data + b.data, (self, b), backward)

    def __sub__(self, other: object) -> Tensor:
        b = self._lift(other, "sub")
        broadcast_shape("sub", self.shape, b.shape)
        sa, sb = self.shape, b.shape

        def backward(g):
            return unbroadcast(g, sa), unbroadcast(-g, sb)
        return Tensor.make(self.data - b.data, (self, b), backward)

    def __mul__(self, other: object) -> Tensor:
        b = self._lift(other, "mul")
        broadcast_shape("mul", self.shape, b.shape)
        a = self

        def backward(g):
            return unbroadcast(g * b.data, a.shape), unbroadcast(g * a.data, b.shape)
        return Tensor.make(self.data * b.data, (self, b), backward)

    def __truediv__(self, other: object) -> Tensor:
        b = self._lift(other, "div")
        broadcast_shape("div", self.shape, b.shape)
        a = self
        out = a.data / b.data

        def backward(g):
            return unbroadcast(g / b.data, a.shape), unbroadcast(-g * out / b.data, b.shape)
        return Tensor.make(out, (a, b), backward)

    def __radd__(self, other: object) -> Tensor:
        return self._lift(other, "add") + self

    def __rsub__(self, other: object) -> Tensor:
        return self._lift(other, "sub") - self

    def __rmul__(self, other: object) -> Tensor:
        return self._lift(other, "mul") * self

    def __rtruediv__(self, other: object) -> Tensor:
        return self._lift(other, "div") / self

    def __neg__(self) -> Tensor:
        return Tensor.make(-self.data, (self,), lambda g: (-g,))

    # ---- shape ops ------------------------------------------------------------------------------
    def reshape(self, *shape) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], tuple | list):
            shape = tuple(shape[0])
        try:
            data = self.data.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape shape {self.shape} to {shape}") from None
        old = self.shape
        return Tensor.make(data, (self,), lambda g: (g.reshape(old),))

    def transpose(self, *axes) -> Tensor:
        """Permute axes (all of them; no axes reverses them, as np.transpose)."""
        if len(axes) == 1 and isinstance(axes[0], tuple | list):
            axes = tuple(axes[0])
        if axes and sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of the {self.ndim} "
                             f"axes of shape {self.shape}")
        perm = tuple(axes) if axes else tuple(reversed(range(self.ndim)))
        inverse = tuple(np.argsort(perm))
        return Tensor.make(self.data.transpose(perm), (self,),
                           lambda g: (g.transpose(inverse),))

    def swapaxes(self, i: int, j: int) -> Tensor:
        perm = list(range(self.ndim))
        perm[i], perm[j] = perm[j], perm[i]
        return self.transpose(tuple(perm))

    # ---- reductions -----------------------------------------------------------------------------
    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        shape = self.shape
        kept = np.sum(self.data, axis=axis, keepdims=True)
        out = kept if keepdims else np.squeeze(kept, axis=axis)

        def backward(g):
            return (np.broadcast_to(g.reshape(kept.shape), shape),)
        return Tensor.make(np.asarray(out), (self,), backward)

    def mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        axes = range(self.ndim) if axis is None else np.atleast_1d(axis)
        count = int(np.prod([self.shape[int(a)] for a in axes]))
        return self.sum(axis, keepdims) * (1.0 / count)

    # ---- elementwise functions ------------------------------------------------------------------
    def relu(self) -> Tensor:
        """max(x, 0) that keeps NaN, as torch.relu: zero where x <= 0 (a NaN compares false,
        so it passes through), and the gradient passes wherever the value did (a NaN too)."""
        keep = ~(self.data <= 0)
        return Tensor.make(np.where(keep, self.data, 0).astype(self.dtype), (self,),
                           lambda g: (np.where(keep, g, 0),))

    def gelu(self) -> Tensor:
        """x * Phi(x), Phi the standard normal CDF (exact erf form, as torch's default)."""
        x = self.data
        cdf = 0.5 * (1.0 + special.erf(x * _SQRT_HALF))
        pdf = np.exp(-0.5 * x * x) * _INV_SQRT_2PI
        return Tensor.make((x * cdf).astype(self.dtype), (self,),
                           lambda g: (g * (cdf + x * pdf),))

    def tanh(self) -> Tensor:
        out = np.tanh(self.data)
        return Tensor.make(out, (self,), lambda g: (g * (1 - out * out),))

    def exp(self) -> Tensor:
        out = np.exp(self.data)
        return Tensor.make(out, (self,), lambda g: (g * out,))

    def log(self) -> Tensor:
        x = self.data
        return Tensor.make(np.log(x), (self,), lambda g: (g / x,))
