"""refsim.factors.profile against numbers worked out by hand (linear, conv with stride 1 and 2
and padding, attention), and its CSV / JSON / table outputs."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from refsim.factors import conv_input_repeats, profile
from refsim.nn import MLP, Transformer
from refsim.nn.layers import Conv2d, Module


def test_linear_layers():
    # MLP 6-5-3 on a batch of 4. For C = A B (M x K)(K x N): A's elements feed N outputs,
    # B's feed M.
    prof = profile(MLP((6, 5, 3)), np.zeros((4, 6), np.float32))
    fwd = prof.row("fc1", "forward")  # Y = X W: (4 x 6)(6 x 5)
    assert (fwd.batch, fwd.m, fwd.k, fwd.n) == (1, 4, 6, 5)
    assert (fwd.uses_a, fwd.uses_b) == (5, 4)  # activation: d_out; weight: batch
    bw = prof.row("fc1", "backward-weight")  # dW = X^T dY: (6 x 4)(4 x 5)
    assert (bw.m, bw.k, bw.n) == (6, 4, 5)
    assert (bw.uses_a, bw.uses_b) == (5, 6)  # X: d_out; dY: d_in
    bi = prof.row("fc2", "backward-input")  # dX = dY W^T: (4 x 3)(3 x 5)
    assert (bi.m, bi.k, bi.n) == (4, 3, 5)
    assert (bi.uses_a, bi.uses_b) == (5, 4)  # dY: d_in; W: batch
    with pytest.raises(KeyError, match="fc1"):
        prof.row("fc1", "backward-input")  # the model input needs no gradient
    assert [(r.layer, r.depth_input, r.depth_loss) for r in prof if r.role == "forward"] == [
        ("fc1", 1, 2), ("fc2", 2, 1)]
    assert len(prof) == 5
    assert fwd.macs == 4 * 6 * 5


class _TwoConvs(Module):
    """conv 2->3 (3x3, stride 1, pad 1) then conv 3->4 (3x3, stride 2, pad 1)."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.c1 = Conv2d("c1", 2, 3, 3, rng, stride=1, padding=1)
        self.c2 = Conv2d("c2", 3, 4, 3, rng, stride=2, padding=1)

    def __call__(self, x, ctx):
        from refsim.nn.tensor import Tensor

        return self.c2(self.c1(Tensor(x), ctx), ctx).reshape(x.shape[0], -1)


def test_conv_input_repeats_by_hand():
    # 5 pixels, k 3, pad 1, stride 1: windows cover pixels 0..4 2, 3, 3, 3, 2 times -> 13/5.
    assert conv_input_repeats((5, 5), 3, 1, 1) == pytest.approx((13 / 5) ** 2)
    # stride 2: 3 windows starting at -1, 1, 3 cover pixels 1, 2, 1, 2, 1 times -> 7/5.
    assert conv_input_repeats((5, 5), 3, 2, 1) == pytest.approx((7 / 5) ** 2)
    # 8 pixels, k 3, pad 1, stride 1: 22 covers over 8 pixels.
    assert conv_input_repeats((8, 8), 3, 1, 1) == pytest.approx((22 / 8) ** 2)
    # no padding, stride = k: each pixel once
    assert conv_input_repeats((6, 6), 2, 2, 0) == 1.0


def test_conv_stride_1_and_2_with_padding():
    n = 2
    prof = profile(_TwoConvs(), np.zeros((n, 2, 5, 5), np.float32))
    c1 = prof.row("c1", "forward")  # im2col (n*25 x 18) times W (18 x 3)
    assert (c1.kind, c1.m, c1.k, c1.n) == ("conv", n * 25, 2 * 9, 3)
    assert c1.uses_b == n * 25  # each weight: N * Ho * Wo
    assert c1.uses_a == pytest.approx(3 * (13 / 5) ** 2)  # C_out * mean window count
    c2 = prof.row("c2", "forward")  # Ho = Wo = (5 + 2 - 3) // 2 + 1 = 3
    assert (c2.m, c2.k, c2.n) == (n * 9, 3 * 9, 4)
    assert c2.uses_b == n * 9
    assert c2.uses_a == pytest.approx(4 * (7 / 5) ** 2)  # about C_out k^2 / s^2 = 9
    bw = prof.row("c2", "backward-weight")  # dW = cols^T dY: (27 x n*9)(n*9 x 4)
    assert (bw.m, bw.k, bw.n) == (27, n * 9, 4)
    assert bw.uses_a == pytest.approx(4 * (7 / 5) ** 2)  # the input, through im2col
    assert bw.uses_b == 27  # each dY element: C_in * k^2
    bi = prof.row("c2", "backward-input")  # dcols = dY W^T: (n*9 x 4)(4 x 27)
    assert (bi.m, bi.k, bi.n) == (n * 9, 4, 27)
    assert (bi.uses_a, bi.uses_b) == (27, n * 9)


def test_attention():
    b, t, d, heads = 3, 4, 8, 2
    model = Transformer(vocab=5, seq_len=t, d=d, heads=heads, d_ff=16)
    prof = profile(model, np.zeros((b, t), np.int64))
    qk = prof.row("block0.attn.qk", "forward")  # S = Q K^T per (batch, head): (T x dh)(dh x T)
    assert (qk.kind, qk.batch, qk.m, qk.k, qk.n) == ("attention", b * heads, t, d // heads, t)
    assert (qk.uses_a, qk.uses_b) == (t, t)
    av = prof.row("block0.attn.av", "forward")  # O = P V: (T x T)(T x dh)
    assert (av.m, av.k, av.n) == (t, t, d // heads)
    assert (av.uses_a, av.uses_b) == (d // heads, t)
    dq = prof.row("block0.attn.qk", "backward-input")  # dQ = dS K: (T x T)(T x dh)
    assert (dq.m, dq.k, dq.n) == (t, t, d // heads)
    qkv = prof.row("block0.attn.qkv", "forward")  # (B*T x d)(d x 3d)
    assert (qkv.m, qkv.k, qkv.n) == (b * t, d, 3 * d)
    assert qkv.uses_b == b * t  # a weight feeds batch x sequence outputs
    assert [r.layer for r in prof if r.role == "forward"] == model.gemm_names()
    assert prof.row("head", "forward").depth_loss == 1
    assert prof.row("block0.attn.qkv", "forward").depth_loss == 7
    assert qkv.frequency == pytest.approx((3 * d * b * t) ** 0.5)


def test_outputs(tmp_path):
    prof = profile(MLP((6, 5, 3)), np.zeros((4, 6), np.float32))
    prof.to_csv(tmp_path / "p.csv")
    prof.to_json(tmp_path / "p.json")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
    assert len(rows) == len(prof) and rows[0]["layer"] == "fc1" and rows[0]["k"] == "6"
    data = json.loads((tmp_path / "p.json").read_text())
    assert data[0]["uses_a"] == 5 and "frequency" in data[0]
    table = prof.table().splitlines()
    assert table[0].split()[:3] == ["layer", "role", "kind"] and len(table) == len(prof) + 2


def test_profile_needs_products():
    class Empty(Module):
        def __call__(self, x, ctx):
            return x

    with pytest.raises(ValueError, match="no matrix products"):
        profile(Empty(), np.zeros((1, 1), np.float32))
