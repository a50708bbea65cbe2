"""End to end: an MLP trained for a few steps in refsim.nn and in torch (QLinear, mode
"exact") from the same weights, data order and plan ends with bit-identical weights; in "fast"
mode the weights stay within a bound.

Only matrix products are under test. The few elementwise pieces whose torch and NumPy kernels
are not bit-identical by definition (exp/log inside the loss, the zero sign of ReLU, the bias
gradient's reduction order) are taken from refsim.nn's own code in small autograd Functions,
so both runs feed the products the same operands.
"""

from __future__ import annotations

import numpy as np
import pytest

from refsim.nn import ops
from refsim.nn.models import MLP
from refsim.nn.numerics import Context, preset
from refsim.nn.optim import SGD
from refsim.nn.tensor import Tensor, unbroadcast
from refsim.validation.bits import assert_same_bits

torch = pytest.importorskip("torch", reason="the torch modules need torch (the test extra)")
from refsim.torch_nn import QLinear, TorchContext  # noqa: E402

SIZES, BATCH, STEPS, LR = (12, 16, 4), 8, 3, 0.25


class _Loss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets):
        t = Tensor(logits.detach().numpy().copy(), requires_grad=True)
        loss = ops.cross_entropy(t, targets)
        loss.backward()
        ctx.grad = torch.from_numpy(t.grad)
        return torch.tensor(float(loss.data))

    @staticmethod
    def backward(ctx, g):
        return ctx.grad * g.float(), None


class _Relu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        mask = x > 0
        ctx.save_for_backward(mask)
        return torch.where(mask, x, torch.zeros_like(x))

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return g * mask.to(g.dtype)


class _AddBias(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, bias):
        return y + bias

    @staticmethod
    def backward(ctx, g):
        return g, torch.from_numpy(unbroadcast(g.numpy(), (g.shape[-1],)))


def _data():
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((BATCH, SIZES[0])).astype(np.float32) for _ in range(STEPS)]
    ys = [rng.integers(0, SIZES[-1], BATCH) for _ in range(STEPS)]
    return xs, ys


def _train_refsim(plan):
    model = MLP(SIZES, seed=0)
    init = [(layer.weight.data.copy(), layer.bias.data.copy()) for layer in model.layers]
    ctx = Context(preset(plan), seed=1)
    opt = SGD(model.parameters(), lr=LR)
    for x, y in zip(*_data(), strict=True):
        loss = ops.cross_entropy(model(x, ctx), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        ctx.step += 1
    return init, [(layer.weight.data, layer.bias.data) for layer in model.layers]


def _train_torch(plan, init, mode):
    tctx = TorchContext(preset(plan), seed=1, mode=mode)
    layers = []
    for i, (w, b) in enumerate(init):
        layer = QLinear(w.shape[0], w.shape[1], bias=False, name=f"fc{i + 1}", context=tctx)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(w.T.copy()))
        layer.register_parameter("b", torch.nn.Parameter(torch.from_numpy(b.copy())))
        layers.append(layer)
    params = [p for layer in layers for p in (layer.weight, layer.b)]
    for x, y in zip(*_data(), strict=True):
        h = torch.from_numpy(x)
        for i, layer in enumerate(layers):
            h = _AddBias.apply(layer(h), layer.b)
            if i + 1 < len(layers):
                h = _Relu.apply(h)
        _Loss.apply(h, y).backward()
        with torch.no_grad():
            for p in params:
                p.copy_(p + p.grad * np.float32(-LR))
                p.grad = None
        tctx.step += 1
    return [(layer.weight.detach().numpy().T, layer.b.detach().numpy()) for layer in layers]


@pytest.mark.parametrize("plan", ["fp8", "fp8-chunk128"])
def test_exact_mode_weights_bit_identical_after_training(plan):
    init, expected = _train_refsim(plan)
    got = _train_torch(plan, init, "exact")
    for (w, b), (ew, eb) in zip(got, expected, strict=True):
        assert_same_bits(np.ascontiguousarray(w), ew, context=f"{plan} weight")
        assert_same_bits(b, eb, context=f"{plan} bias")


def test_fast_mode_stays_within_bound():
    """fp32 torch.matmul between the same e4m3/e5m2 casts: the products of e4m3 and e5m2
    operands are exact in fp32 and these sums short, so only the accumulation order differs;
    after 3 steps the weights differ from the exact run by less than 2^-12 relative."""
    init, expected = _train_refsim("fp8")
    got = _train_torch("fp8", init, "fast")
    for (w, b), (ew, eb) in zip(got, expected, strict=True):
        assert np.allclose(w, ew, rtol=2.0**-12, atol=2.0**-20)
        assert np.allclose(b, eb, rtol=2.0**-12, atol=2.0**-20)
