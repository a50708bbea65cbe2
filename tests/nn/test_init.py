"""Weight initialization: "uniform" (torch's default) and "he" draw the same uniforms scaled,
the "he" weights have variance 2/fan_in, and TrainConfig checks `init`."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refsim.nn import TrainConfig
from refsim.nn.layers import INITS, Conv2d, Linear
from refsim.nn.models import MLP
from refsim.nn.train import build


@pytest.mark.parametrize("init", list(INITS))
def test_linear_bounds_and_shared_draws(init):
    fan_in = 96
    w = Linear("fc", fan_in, 200, np.random.default_rng(3), init=init)
    ref = Linear("fc", fan_in, 200, np.random.default_rng(3))
    bound = INITS[init] / math.sqrt(fan_in)
    assert np.abs(w.weight.data).max() <= np.float32(bound)
    # the same uniforms, scaled: the biases (drawn after the weights, never scaled) agree bit
    # for bit, so one seed gives one stream of draws under either init
    np.testing.assert_allclose(w.weight.data, ref.weight.data * np.float32(INITS[init]),
                               rtol=1e-6)
    np.testing.assert_array_equal(w.bias.data, ref.bias.data)


def test_he_variance_is_two_over_fan_in():
    fan_in = 16 * 3 * 3
    conv = Conv2d("c", 16, 512, 3, np.random.default_rng(0), init="he")
    var = float(np.var(conv.weight.data.astype(np.float64)))
    assert var == pytest.approx(2.0 / fan_in, rel=0.02)  # 73,728 draws: sd of var ~0.5%


def test_he_keeps_a_relu_stack_at_scale():
    """Six ReLU layers of width 256 on unit inputs: "he" keeps the second moment within 2x,
    torch's default shrinks it about 6x per layer."""
    x = np.random.default_rng(1).standard_normal((512, 256))
    moments = {}
    for init in INITS:
        h = x
        for layer in MLP((256,) * 7, seed=2, init=init).layers:
            h = np.maximum(h @ layer.weight.data.astype(np.float64), 0.0)
        moments[init] = float(np.mean(h ** 2))
    assert 0.5 < moments["he"] < 2.0
    assert moments["uniform"] < 1e-3


def test_train_config_init():
    with pytest.raises(ValueError, match="init must be one of uniform, he; got 'xavier'"):
        TrainConfig(init="xavier")
    with pytest.raises(ValueError, match="init applies to the ReLU models"):
        TrainConfig(model="transformer", init="he")
    for model in ("mlp", "cnn", "resnet"):
        he, _ = build(TrainConfig(model=model, init="he", seed=4).resolved())
        plain, _ = build(TrainConfig(model=model, seed=4).resolved())
        for (name, a), (_, b) in zip(he.named_parameters(), plain.named_parameters(),
                                     strict=True):
            if name.endswith("weight"):
                np.testing.assert_allclose(a.data, b.data * np.float32(math.sqrt(6)),
                                           rtol=1e-6, err_msg=name)
