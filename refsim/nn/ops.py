"""The ops beyond elementwise arithmetic: simulated matrix products, softmax and losses,
layernorm, convolution, pooling, embedding, dropout and causal self-attention.

Usage rules:
  - Every matrix product is `gemm(a, b, layer, ctx)`: its forward and both backward products go
    through `ctx.gemm` (refsim.matmul under the plan's Product for that layer and role). linear,
    conv2d (im2col) and attention are built on it, so they inherit the three roles.
  - Everything else is plain NumPy in the tensors' dtype (float32 in training); only matrix
    products are simulated.
  - Each op's backward is written next to its forward and returns one gradient per child.
  - NaN and +-Inf propagate through every op, forward and backward, as through torch's
    (tests/nn/test_nonfinite.py checks each against torch): no op makes a non-finite value
    finite where torch does not (torch does for a future position under the causal mask and
    for an unscored position of the loss).
  - Errors name the op (and layer) and the shapes involved.
"""

from __future__ import annotations

import math

import numpy as np

from refsim.kernels.rng import raw_words
from refsim.nn.numerics import Context
from refsim.nn.tensor import Tensor, unbroadcast

__all__ = ["avg_pool2d", "causal_mask", "causal_self_attention", "conv2d", "cross_entropy",
           "dropout", "embedding", "gemm", "im2col", "layernorm", "linear", "log_softmax",
           "max_pool2d", "nll", "normalize", "softmax"]


# ---- matrix products ----------------------------------------------------------------------------
def gemm(a: Tensor, b: Tensor, layer: str, ctx: Context) -> Tensor:
    """C = A @ B (batched as np.matmul); forward, backward-input dA = dC B^T and
    backward-weight dB = A^T dC each under the plan's Product for `layer`.

    If an operand is broadcast over batch dimensions, its per-batch gradients are summed in
    NumPy (not simulated); `linear` avoids that by folding the batch into the rows."""
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"gemm {layer!r}: A of shape {a.shape} and B of shape {b.shape} do not "
                         "multiply (A's last dimension must equal B's second-to-last)")
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"gemm {layer!r}: batch dimensions of A {a.shape} and B {b.shape} do "
                         "not broadcast") from None
    out = ctx.gemm(layer, "forward", a.data, b.data)

    def backward(g):
        da = db = None
        if a.requires_grad:
            da = unbroadcast(ctx.gemm(layer, "backward-input", g, np.swapaxes(b.data, -1, -2)),
                             a.shape)
        if b.requires_grad:
            db = unbroadcast(ctx.gemm(layer, "backward-weight", np.swapaxes(a.data, -1, -2), g),
                             b.shape)
        return da, db
    return Tensor.make(out, (a, b), backward)


def linear(x: Tensor, w: Tensor, bias: Tensor | None, layer: str, ctx: Context) -> Tensor:
    """x (..., d_in) @ w (d_in, d_out) + bias; leading axes are flattened into the GEMM's rows,
    so backward-weight reduces over all of them (B*T for a sequence)."""
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"linear {layer!r}: input of shape {x.shape} and weight of shape "
                         f"{w.shape}: input features {x.shape[-1]} != weight rows {w.shape[0]}")
    lead = x.shape[:-1]
    y = gemm(x.reshape(-1, x.shape[-1]), w, layer, ctx).reshape(*lead, w.shape[1])
    return y if bias is None else y + bias


# ---- softmax and losses -------------------------------------------------------------------------
def softmax(x: Tensor, axis: int = -1) -> Tensor:
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    out = e / e.sum(axis=axis, keepdims=True)

    def backward(g):
        return (out * (g - (g * out).sum(axis=axis, keepdims=True)),)
    return Tensor.make(out, (x,), backward)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    out = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(g):
        return (g - np.exp(out) * g.sum(axis=axis, keepdims=True),)
    return Tensor.make(out, (x,), backward)


def nll(logp: Tensor, targets: np.ndarray, mask: np.ndarray | None = None) -> Tensor:
    """Mean of -logp[..., target] over the positions where mask is True (all if None).

    Args:
        logp: (..., classes) log-probabilities.
        targets: integer array of logp's shape without the last axis.
        mask: optional bool array of targets' shape.
    """
    targets = np.asarray(targets)
    if targets.shape != logp.shape[:-1] or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"nll: targets must be integers of shape {logp.shape[:-1]} for logp of "
                         f"shape {logp.shape}; got {targets.dtype} of shape {targets.shape}")
    classes = logp.shape[-1]
    if targets.size and (targets.min() < 0 or targets.max() >= classes):
        raise ValueError(f"nll: targets must be in [0, {classes}); got values in "
                         f"[{targets.min()}, {targets.max()}]")
    weight = np.ones(targets.shape, bool) if mask is None else np.asarray(mask, bool)
    if weight.shape != targets.shape:
        raise ValueError(f"nll: mask of shape {weight.shape} must match targets {targets.shape}")
    count = int(weight.sum())
    if count == 0:
        raise ValueError("nll: the mask selects no position")
    picked = np.take_along_axis(logp.data, targets[..., None], axis=-1)[..., 0]
    # Selected, not multiplied by the mask: a NaN or Inf at an unscored position stays out of
    # the loss (NaN * 0 is NaN), as torch's ignore_index; its row's gradient still sees it.
    loss = -np.where(weight, picked, 0).sum() / count

    def backward(g):
        grad = np.zeros_like(logp.data)
        np.put_along_axis(grad, targets[..., None], (-g * weight / count)[..., None], axis=-1)
        return (grad,)
    return Tensor.make(np.asarray(loss, logp.dtype), (logp,), backward)


def cross_entropy(logits: Tensor, targets: np.ndarray, mask: np.ndarray | None = None) -> Tensor:
    """Mean cross-entropy of logits (..., classes) against integer targets (log-softmax + nll)."""
    return nll(log_softmax(logits, -1), targets, mask)


# ---- normalization ------------------------------------------------------------------------------
def normalize(x: Tensor, eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) over the last axis (biased variance, as layernorm)."""
    mu = x.data.mean(axis=-1, keepdims=True)
    centered = x.data - mu
    inv = 1.0 / np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)
    xhat = centered * inv

    def backward(g):
        mean_g = g.mean(axis=-1, keepdims=True)
        mean_gx = (g * xhat).mean(axis=-1, keepdims=True)
        return (inv * (g - mean_g - xhat * mean_gx),)
    return Tensor.make(xhat, (x,), backward)


def layernorm(x: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-5) -> Tensor:
    """Layer normalization over the last axis with gain gamma and bias beta (shape (d,))."""
    if gamma.shape != (x.shape[-1],) or beta.shape != (x.shape[-1],):
        raise ValueError(f"layernorm: gamma {gamma.shape} and beta {beta.shape} must both have "
                         f"shape ({x.shape[-1]},) for input of shape {x.shape}")
    return normalize(x, eps) * gamma + beta


# ---- convolution and pooling --------------------------------------------------------------------
def _conv_out(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def im2col(x: Tensor, kh: int, kw: int, stride: int = 1, padding: int = 0) -> Tensor:
    """(N, C, H, W) -> (N*HO*WO, C*kh*kw): row (n, i, j) holds the window at output (i, j), its
    columns in C order of (c, kh, kw) (as refsim.conv2d). Backward adds each column back into
    its window (col2im), one kernel offset at a time."""
    if x.ndim != 4:
        raise ValueError(f"im2col: input must have shape (N, C, H, W); got {x.shape}")
    n, c, h, w = x.shape
    ho, wo = _conv_out(h, kh, stride, padding), _conv_out(w, kw, stride, padding)
    if ho < 1 or wo < 1:
        raise ValueError(f"im2col: kernel {kh}x{kw} does not fit input of shape {x.shape} with "
                         f"padding {padding}")
    xp = np.pad(x.data, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    win = win[:, :, ::stride, ::stride][:, :, :ho, :wo]  # (n, c, ho, wo, kh, kw)
    cols = np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(n * ho * wo,
                                                                         c * kh * kw)

    def backward(g):
        g6 = g.reshape(n, ho, wo, c, kh, kw)
        dxp = np.zeros_like(xp)
        for a in range(kh):
            for b in range(kw):
                dxp[:, :, a:a + stride * ho:stride, b:b + stride * wo:stride] += \
                    g6[:, :, :, :, a, b].transpose(0, 3, 1, 2)
        return (dxp[:, :, padding:padding + h, padding:padding + w],)
    return Tensor.make(cols, (x,), backward)


def conv2d(x: Tensor, w: Tensor, bias: Tensor | None, layer: str, ctx: Context,
           stride: int = 1, padding: int = 0) -> Tensor:
    """Cross-correlation of x (N, C, H, W) with w (O, C, kh, kw): im2col rows times w as a
    (C*kh*kw, O) matrix, so the roles read as in a linear layer (reduction C*kh*kw forward,
    N*HO*WO for backward-weight)."""
    if x.ndim != 4 or w.ndim != 4 or x.shape[1] != w.shape[1]:
        raise ValueError(f"conv2d {layer!r}: input of shape {x.shape} and weight of shape "
                         f"{w.shape} do not match (need (N, C, H, W) and (O, C, kh, kw))")
    n, _, h, wd = x.shape
    o, c, kh, kw = w.shape
    ctx.note_conv(layer, (h, wd), kh, stride, padding)
    cols = im2col(x, kh, kw, stride, padding)
    w2 = w.reshape(o, c * kh * kw).transpose()
    ho, wo = _conv_out(h, kh, stride, padding), _conv_out(wd, kw, stride, padding)
    y = gemm(cols, w2, layer, ctx).reshape(n, ho, wo, o).transpose(0, 3, 1, 2)
    return y if bias is None else y + bias.reshape(1, o, 1, 1)


def _windows(x: Tensor, k: int, op: str) -> np.ndarray:
    if x.ndim != 4 or x.shape[2] % k or x.shape[3] % k:
        raise ValueError(f"{op}: input of shape {x.shape} must be (N, C, H, W) with H and W "
                         f"multiples of the kernel size {k}")
    n, c, h, w = x.shape
    return x.data.reshape(n, c, h // k, k, w // k, k).transpose(0, 1, 2, 4, 3, 5).reshape(
        n, c, h // k, w // k, k * k)


def _unwindows(g5: np.ndarray, shape: tuple[int, ...], k: int) -> np.ndarray:
    n, c, h, w = shape
    return g5.reshape(n, c, h // k, w // k, k, k).transpose(0, 1, 2, 4, 3, 5).reshape(shape)


def max_pool2d(x: Tensor, k: int = 2) -> Tensor:
    """Max over non-overlapping k x k windows (stride k); the gradient goes to the first
    maximum of each window (row-major). A window holding a NaN gives NaN and its gradient goes
    to the last NaN, as torch's max_pool2d (its scan takes any NaN it meets)."""
    win = _windows(x, k, "max_pool2d")
    idx = win.argmax(axis=-1)  # the first NaN where there is one
    nan = np.isnan(win)
    if nan.any():
        last_nan = win.shape[-1] - 1 - nan[..., ::-1].argmax(axis=-1)
        idx = np.where(nan.any(axis=-1), last_nan, idx)
    out = np.take_along_axis(win, idx[..., None], axis=-1)[..., 0]
    shape = x.shape

    def backward(g):
        g5 = np.zeros(win.shape, g.dtype)
        np.put_along_axis(g5, idx[..., None], g[..., None], axis=-1)
        return (_unwindows(g5, shape, k),)
    return Tensor.make(out, (x,), backward)


def avg_pool2d(x: Tensor, k: int = 2) -> Tensor:
    """Mean over non-overlapping k x k windows (stride k)."""
    win = _windows(x, k, "avg_pool2d")
    shape = x.shape

    def backward(g):
        g5 = np.broadcast_to((g / (k * k))[..., None], (*g.shape, k * k))
        return (_unwindows(np.ascontiguousarray(g5), shape, k),)
    return Tensor.make(win.mean(axis=-1), (x,), backward)


# ---- embedding and dropout ----------------------------------------------------------------------
def embedding(indices: np.ndarray, table: Tensor) -> Tensor:
    """Rows of table (V, D) at integer `indices` (any shape); backward adds each position's
    gradient into its row, in C order of the positions (np.add.at, deterministic)."""
    indices = np.asarray(indices)
    vocab = table.shape[0]
    if not np.issubdtype(indices.dtype, np.integer):
        raise TypeError(f"embedding: indices must be integers; got {indices.dtype}")
    if indices.size and (indices.min() < 0 or indices.max() >= vocab):
        raise ValueError(f"embedding: indices must be in [0, {vocab}) for a table of shape "
                         f"{table.shape}; got values in [{indices.min()}, {indices.max()}]")

    def backward(g):
        grad = np.zeros_like(table.data)
        np.add.at(grad, indices.reshape(-1), g.reshape(-1, table.shape[1]))
        return (grad,)
    return Tensor.make(table.data[indices], (table,), backward)


def dropout(x: Tensor, p: float, seed: int) -> Tensor:
    """Zero each element with probability p, scale the rest by 1/(1-p). Element i is dropped
    iff the top 53 bits of the 64-bit Philox word i under seed (refsim.kernels.rng.raw_words:
    np.random.Philox(key=seed).random_raw(n)[i]), read as a fraction in [0, 1), are below p: the
    mask depends only on seed and position."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1); got {p}")
    if p == 0.0:
        return x
    u = (raw_words(seed, x.data.size) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    keep = (u >= p).reshape(x.shape)
    scale = 1.0 / (1.0 - p)
    factor = (keep * scale).astype(x.dtype)
    return Tensor.make(x.data * factor, (x,), lambda g: (g * factor,))


# ---- attention ----------------------------------------------------------------------------------
def causal_mask(scores: Tensor) -> Tensor:
    """scores (..., T, T) with entries above the diagonal (key after query) set to -inf."""
    t = scores.shape[-1]
    if scores.ndim < 2 or scores.shape[-2] != t:
        raise ValueError(f"causal_mask: scores must be (..., T, T); got {scores.shape}")
    future = np.triu(np.ones((t, t), bool), k=1)
    out = np.where(future, -np.inf, scores.data).astype(scores.dtype)
    return Tensor.make(out, (scores,), lambda g: (np.where(future, 0, g),))


def causal_self_attention(q: Tensor, k: Tensor, v: Tensor, layer: str, ctx: Context) -> Tensor:
    """softmax(mask(Q K^T / sqrt(d))) V over (B, H, T, d) tensors; the two matrix products are
    the GEMMs `{layer}.qk` and `{layer}.av`."""
    if not q.shape == k.shape == v.shape or q.ndim < 2:
        raise ValueError(f"causal_self_attention {layer!r}: q {q.shape}, k {k.shape} and v "
                         f"{v.shape} must have one shape (..., T, d)")
    scores = gemm(q, k.swapaxes(-1, -2), f"{layer}.qk", ctx) * (1.0 / math.sqrt(q.shape[-1]))
    weights = softmax(causal_mask(scores), -1)
    return gemm(weights, v, f"{layer}.av", ctx)
