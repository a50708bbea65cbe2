"""Every op's gradient against central finite differences and torch float64 autograd.

All in float64 under the `numpy` preset (np.matmul, no quantization): this checks the
derivative rules, not the simulation (test_numerics checks that the roles reach refsim.matmul).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from refsim.nn import Context, Tensor, ops, preset
from refsim.nn.layers import CausalSelfAttention

CTX = Context(preset("numpy"))


def _inputs(shapes, seed, positive=False, spread=False):
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        x = rng.standard_normal(shape)
        if positive:
            x = np.abs(x) + 0.5
        if spread:  # distinct values far from ties and kinks (relu, max pool)
            x = rng.permutation(np.arange(x.size)).reshape(shape) * 0.1 - x.size * 0.05 + 0.05
        out.append(x)
    return out


def _ours(fn, arrays):
    leaves = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*leaves)
    weight = np.random.default_rng(99).standard_normal(out.shape)
    (out * Tensor(weight)).sum().backward()
    return out.data, [leaf.grad for leaf in leaves], weight


def _torch(fn, arrays, weight):
    leaves = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out = fn(*leaves)
    (out * torch.tensor(weight)).sum().backward()
    return out.detach().numpy(), [leaf.grad.numpy() for leaf in leaves]


def _finite_differences(fn, arrays, weight, h=1e-6):
    grads = []
    for i, a in enumerate(arrays):
        grad = np.zeros_like(a)
        for j in range(a.size):
            plus = [x.copy() for x in arrays]
            minus = [x.copy() for x in arrays]
            plus[i].reshape(-1)[j] += h
            minus[i].reshape(-1)[j] -= h
            f_plus = float((fn(*[Tensor(x) for x in plus]).data * weight).sum())
            f_minus = float((fn(*[Tensor(x) for x in minus]).data * weight).sum())
            grad.reshape(-1)[j] = (f_plus - f_minus) / (2 * h)
        grads.append(grad)
    return grads


TOKENS = np.array([[1, 3, 0], [3, 3, 2]])
TARGETS = np.array([[2, 0, 1], [1, 4, 3]])
MASK = np.array([[True, False, True], [True, True, False]])
DROP_SEED = 1234


def _drop_factor(shape, p):
    ones = ops.dropout(Tensor(np.ones(shape)), p, DROP_SEED).data
    return torch.tensor(ones)


def _torch_attention(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def _layer_attention(x):
    layer = CausalSelfAttention("attn", 4, 2, np.random.default_rng(3))
    for p in layer.parameters():
        p.data = p.data.astype(np.float64)
    return layer, layer(x, CTX)


def _torch_layer_attention(x):
    layer, _ = _layer_attention(Tensor(np.zeros((1, 3, 4))))
    w_qkv = torch.tensor(layer.qkv.weight.data)
    b_qkv = torch.tensor(layer.qkv.bias.data)
    w_proj = torch.tensor(layer.proj.weight.data)
    b_proj = torch.tensor(layer.proj.bias.data)
    b, t, d = x.shape
    qkv = (x @ w_qkv + b_qkv).reshape(b, t, 3, 2, d // 2).permute(2, 0, 3, 1, 4)
    y = _torch_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(b, t, d)
    return y @ w_proj + b_proj


# name: (ours, torch's, input shapes, input options)
CASES = {
    "add-broadcast": (lambda a, b: a + b, lambda a, b: a + b, [(3, 4), (4,)], {}),
    "sub-broadcast": (lambda a, b: a - b, lambda a, b: a - b, [(2, 1, 4), (3, 1)], {}),
    "mul-broadcast": (lambda a, b: a * b, lambda a, b: a * b, [(3, 4), (3, 1)], {}),
    "div-broadcast": (lambda a, b: a / b, lambda a, b: a / b, [(3, 4), (4,)], {"positive": True}),
    "scalar-ops": (lambda a: (2.0 - a) * 3.0 / 1.5 + 1.0 - (1.0 / (a + 4.0)),
                   lambda a: (2.0 - a) * 3.0 / 1.5 + 1.0 - (1.0 / (a + 4.0)), [(5,)],
                   {"positive": True}),
    "neg": (lambda a: -a, lambda a: -a, [(3,)], {}),
    "reshape": (lambda a: a.reshape(4, 3), lambda a: a.reshape(4, 3), [(2, 6)], {}),
    "transpose": (lambda a: a.transpose(2, 0, 1), lambda a: a.permute(2, 0, 1), [(2, 3, 4)], {}),
    "sum-axis": (lambda a: a.sum(axis=1), lambda a: a.sum(dim=1), [(2, 3, 4)], {}),
    "sum-keepdims": (lambda a: a.sum(axis=(0, 2), keepdims=True),
                     lambda a: a.sum(dim=(0, 2), keepdim=True), [(2, 3, 4)], {}),
    "mean": (lambda a: a.mean(axis=-1), lambda a: a.mean(dim=-1), [(3, 5)], {}),
    "mean-all": (lambda a: a.mean(), lambda a: a.mean(), [(3, 5)], {}),
    "relu": (lambda a: a.relu(), torch.relu, [(4, 5)], {"spread": True}),
    "gelu": (lambda a: a.gelu(), torch.nn.functional.gelu, [(4, 5)], {}),
    "tanh": (lambda a: a.tanh(), torch.tanh, [(4, 5)], {}),
    "exp": (lambda a: a.exp(), torch.exp, [(4, 5)], {}),
    "log": (lambda a: a.log(), torch.log, [(4, 5)], {"positive": True}),
    "softmax": (lambda a: ops.softmax(a, -1), lambda a: torch.softmax(a, -1), [(3, 5)], {}),
    "softmax-axis0": (lambda a: ops.softmax(a, 0), lambda a: torch.softmax(a, 0), [(3, 5)], {}),
    "log-softmax": (lambda a: ops.log_softmax(a, -1), lambda a: torch.log_softmax(a, -1),
                    [(3, 5)], {}),
    "cross-entropy": (lambda a: ops.cross_entropy(a, TARGETS[0]),
                      lambda a: torch.nn.functional.cross_entropy(a, torch.tensor(TARGETS[0])),
                      [(3, 5)], {}),
    "cross-entropy-masked": (
        lambda a: ops.cross_entropy(a, TARGETS, MASK),
        lambda a: torch.nn.functional.cross_entropy(
            a[torch.tensor(MASK)], torch.tensor(TARGETS[MASK])), [(2, 3, 5)], {}),
    "layernorm": (lambda x, g, b: ops.layernorm(x, g, b),
                  lambda x, g, b: torch.nn.functional.layer_norm(x, (6,), g, b),
                  [(2, 3, 6), (6,), (6,)], {}),
    "gemm": (lambda a, b: ops.gemm(a, b, "g", CTX), lambda a, b: a @ b, [(3, 4), (4, 5)], {}),
    "gemm-batched": (lambda a, b: ops.gemm(a, b, "g", CTX), lambda a, b: a @ b,
                     [(2, 3, 4), (4, 2)], {}),
    "linear": (lambda x, w, b: ops.linear(x, w, b, "fc", CTX), lambda x, w, b: x @ w + b,
               [(2, 3, 4), (4, 5), (5,)], {}),
    "conv2d-pad1": (lambda x, w, b: ops.conv2d(x, w, b, "c", CTX, 1, 1),
                    lambda x, w, b: torch.nn.functional.conv2d(x, w, b, 1, 1),
                    [(2, 2, 4, 4), (3, 2, 3, 3), (3,)], {}),
    "conv2d-stride2": (lambda x, w, b: ops.conv2d(x, w, b, "c", CTX, 2, 0),
                       lambda x, w, b: torch.nn.functional.conv2d(x, w, b, 2, 0),
                       [(1, 2, 5, 5), (2, 2, 3, 3), (2,)], {}),
    "max-pool": (lambda x: ops.max_pool2d(x, 2), lambda x: torch.nn.functional.max_pool2d(x, 2),
                 [(2, 2, 4, 4)], {"spread": True}),
    "avg-pool": (lambda x: ops.avg_pool2d(x, 2), lambda x: torch.nn.functional.avg_pool2d(x, 2),
                 [(2, 2, 4, 6)], {}),
    "embedding": (lambda t: ops.embedding(TOKENS, t),
                  lambda t: torch.nn.functional.embedding(torch.tensor(TOKENS), t), [(5, 3)], {}),
    "dropout": (lambda x: ops.dropout(x, 0.3, DROP_SEED),
                lambda x: x * _drop_factor((4, 6), 0.3), [(4, 6)], {}),
    "causal-softmax": (lambda a: ops.softmax(ops.causal_mask(a), -1),
                       lambda a: torch.softmax(a.masked_fill(
                           torch.triu(torch.ones(4, 4, dtype=torch.bool), 1), -math.inf), -1),
                       [(2, 4, 4)], {}),
    "causal-attention": (lambda q, k, v: ops.causal_self_attention(q, k, v, "attn", CTX),
                         _torch_attention, [(2, 2, 4, 3)] * 3, {}),
    "attention-layer": (lambda x: _layer_attention(x)[1], _torch_layer_attention, [(2, 3, 4)],
                        {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradient(name):
    ours_fn, torch_fn, shapes, options = CASES[name]
    arrays = _inputs(shapes, seed=len(name), **options)
    out, grads, weight = _ours(ours_fn, arrays)
    t_out, t_grads = _torch(torch_fn, arrays, weight)
    np.testing.assert_allclose(out, t_out, rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(grads, t_grads, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    for ours, fd in zip(grads, _finite_differences(ours_fn, arrays, weight), strict=True):
        np.testing.assert_allclose(ours, fd, rtol=1e-6, atol=1e-7)


def test_dropout_mask_statistics_and_seed():
    x = Tensor(np.ones((100, 100)))
    a = ops.dropout(x, 0.25, 5).data
    assert np.array_equal(a, ops.dropout(x, 0.25, 5).data)
    assert not np.array_equal(a, ops.dropout(x, 0.25, 6).data)
    assert set(np.unique(a)) == {0.0, 1 / 0.75}
    assert abs((a == 0).mean() - 0.25) < 0.02


def test_shared_node_gradients_add_up():
    x = Tensor(np.array([1.5, -2.0]), requires_grad=True)
    y = x * x + x
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, 2 * x.data + 1)
    y.sum().backward()  # a second backward recomputes intermediates (leaves accumulate)
    np.testing.assert_array_equal(x.grad, 2 * (2 * x.data + 1))
