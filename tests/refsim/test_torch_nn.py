"""QLinear / QConv2d and qgemm: forward and both gradients bit-identical to refsim.nn's
products under the same plan, seeds and step; convert(); DDP with gloo on CPU."""

from __future__ import annotations

import os

import numpy as np
import pytest

from refsim.nn import ops
from refsim.nn.numerics import Context, preset
from refsim.nn.tensor import Tensor
from refsim.validation.bits import assert_same_bits

torch = pytest.importorskip("torch", reason="the torch modules need torch (the test extra)")
from torch import nn  # noqa: E402

from refsim.torch_nn import QConv2d, QLinear, TorchContext, convert  # noqa: E402


@pytest.mark.parametrize("plan", ["fp8", "fp8-chunk128", "bf16", "int8"])
def test_qlinear_matches_refsim_nn_roles(plan):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 20)).astype(np.float32)
    w = (rng.standard_normal((5, 20)) * 0.3).astype(np.float32)  # torch layout (out, in)
    g = rng.standard_normal((6, 5)).astype(np.float32)
    ref = Context(preset(plan), seed=3, step=2)
    expected_y = ref.gemm("fc1", "forward", x, w.T)
    expected_dx = ref.gemm("fc1", "backward-input", g, w)
    expected_dw = ref.gemm("fc1", "backward-weight", x.T, g).T
    tctx = TorchContext(preset(plan), seed=3)
    tctx.step = 2
    layer = QLinear(20, 5, bias=False, name="fc1", context=tctx)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
    tx = torch.from_numpy(x).requires_grad_()
    y = layer(tx)
    y.backward(torch.from_numpy(g))
    assert_same_bits(y.detach().numpy(), expected_y, context=f"{plan} forward")
    assert_same_bits(tx.grad.numpy(), expected_dx, context=f"{plan} backward-input")
    assert_same_bits(layer.weight.grad.numpy(), np.ascontiguousarray(expected_dw),
                     context=f"{plan} backward-weight")


def test_qconv2d_forward_and_backward_match_refsim_nn():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    ref = Context(preset("fp8"), seed=5)
    rx, rw = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    ry = ops.conv2d(rx, rw, None, "conv1", ref, stride=1, padding=1)
    g = rng.standard_normal(ry.shape).astype(np.float32)
    ry.backward(g)
    layer = QConv2d(3, 4, 3, 1, 1, bias=False, name="conv1",
                    context=TorchContext(preset("fp8"), seed=5))
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
    tx = torch.from_numpy(x).requires_grad_()
    ty = layer(tx)
    ty.backward(torch.from_numpy(g))
    assert_same_bits(ty.detach().numpy(), ry.data)
    assert_same_bits(tx.grad.numpy(), rx.grad)
    assert_same_bits(layer.weight.grad.numpy(), rw.grad)


def test_convert_replaces_layers_in_place():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 3))
    before = model(torch.ones(1, 1, 4, 4)).detach()
    plan = preset("fp32").with_layers({"3": preset("bf16").default["forward"]})
    ctx = convert(model, plan, seed=1)
    assert isinstance(model[0], QConv2d) and isinstance(model[3], QLinear)
    assert model[3].name == "3" and ctx.mode == "exact"
    after = model(torch.ones(1, 1, 4, 4))
    assert after.shape == before.shape and torch.isfinite(after).all()
    with pytest.raises(ValueError, match="matches no"):
        convert(nn.Sequential(nn.Linear(2, 2)), preset("fp32").with_layers(
            {"nope*": preset("bf16").default["forward"]}))


def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    convert(model, preset("fp8"), seed=9)
    ddp = nn.parallel.DistributedDataParallel(model)
    x = torch.from_numpy(np.random.default_rng(rank).standard_normal((5, 8)).astype(np.float32))
    ddp(x).square().sum().backward()
    queue.put((rank, model[0].weight.grad.numpy().copy()))
    dist.destroy_process_group()


def test_runs_under_ddp_with_gloo():
    """Two CPU processes: DDP's averaged gradient equals (g0 + g1) / 2 of the per-rank
    gradients computed without DDP, bit for bit."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = 29500 + os.getpid() % 1000
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    grads = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    local = []
    for rank in range(2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 4))
        convert(model, preset("fp8"), seed=9)
        x = torch.from_numpy(np.random.default_rng(rank).standard_normal((5, 8)).astype(
            np.float32))
        model(x).square().sum().backward()
        local.append(model[0].weight.grad.numpy())
    expected = (local[0] + local[1]) / np.float32(2)
    assert_same_bits(grads[0], expected)
    assert_same_bits(grads[1], expected)
