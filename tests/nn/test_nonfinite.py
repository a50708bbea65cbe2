"""NaN and +-Inf through refsim.nn: every op's forward and backward against torch on poisoned
inputs, and the training loop's stop (which step, layer and role) with `refsim train`'s exit.

The ops are those of test_grad.CASES (float64, `numpy` preset), each input poisoned in turn;
NaN, +Inf and -Inf must land where torch puts them, and finite values must agree."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from refsim.cli import STOPPED, main
from refsim.nn import Context, Tensor, TrainConfig, ops, preset, train
from refsim.nn.numerics import Numerics, run_product
from refsim.nn.train import nonfinite_report, print_summary

from . import test_grad as grad


def _torch_causal_attention(q, k, v):
    # torch's scaled_dot_product_attention is not one function on non-finite input: its math
    # backend adds the mask (NaN + -inf is NaN), its fused CPU kernel skips masked keys. The
    # reference is the definition: a future key never reaches a query.
    t = q.shape[-2]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), -math.inf)
    return torch.softmax(s, -1) @ v


def _reference(name):
    ours, theirs, shapes, options = grad.CASES[name]
    if name == "causal-attention":
        theirs = _torch_causal_attention
    return ours, theirs, shapes, options


POISONS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
VARIANTS = [(name, i, kind) for name, (_, _, shapes, _) in grad.CASES.items()
            for i in range(len(shapes)) for kind in (*POISONS, "mix")
            if kind != "mix" or i == 0]


def _poison(a: np.ndarray, kind: str) -> None:
    flat = a.reshape(-1)
    if kind == "mix":  # all three, at the ends and the middle
        flat[0], flat[flat.size // 2], flat[-1] = math.nan, math.inf, -math.inf
    else:
        flat[flat.size // 2] = POISONS[kind]


def _assert_same(ours, theirs, what, finite_only=False):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    if finite_only:
        np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs),
                                      err_msg=f"{what}: non-finite positions")
    else:
        for test in (np.isnan, np.isposinf, np.isneginf):
            np.testing.assert_array_equal(test(ours), test(theirs),
                                          err_msg=f"{what}: {test.__name__} positions")
    finite = np.isfinite(ours) & np.isfinite(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-10, atol=1e-12,
                               err_msg=what)


@pytest.mark.parametrize(("name", "which", "kind"), VARIANTS,
                         ids=[f"{n}-input{i}-{k}" for n, i, k in VARIANTS])
def test_nonfinite_propagates_as_in_torch(name, which, kind, monkeypatch):
    monkeypatch.setattr(grad, "_torch_attention", _torch_causal_attention)  # attention-layer
    ours_fn, torch_fn, shapes, options = _reference(name)
    arrays = grad._inputs(shapes, seed=len(name), **options)
    _poison(arrays[which], kind)
    with np.errstate(all="ignore"):
        out, grads, weight = grad._ours(ours_fn, arrays)
    t_out, t_grads = grad._torch(torch_fn, arrays, weight)
    _assert_same(out, t_out, "forward")
    for i, (ours, theirs) in enumerate(zip(grads, t_grads, strict=True)):
        # torch's fused layernorm backward groups its sums otherwise: with an infinite gain,
        # which entries of dX are NaN rather than +-Inf is an artifact of that grouping.
        fused = name == "layernorm" and which == 1 and kind != "nan" and i == 0
        _assert_same(ours, theirs, f"gradient of input {i}", finite_only=fused)


def test_relu_keeps_nan_as_torch():
    x = np.array([math.nan, -1.0, 0.0, 2.0, math.inf, -math.inf])
    ours = Tensor(x.copy(), requires_grad=True)
    y = ours.relu()
    y.backward(np.full(6, 3.0))
    theirs = torch.tensor(x, requires_grad=True)
    torch.relu(theirs).backward(torch.full((6,), 3.0, dtype=torch.float64))
    np.testing.assert_array_equal(y.data, [math.nan, 0, 0, 2, math.inf, 0])
    np.testing.assert_array_equal(y.data, torch.relu(torch.tensor(x)).numpy())
    np.testing.assert_array_equal(ours.grad, [3, 0, 0, 3, 3, 0])  # the gradient passes a NaN
    np.testing.assert_array_equal(ours.grad, theirs.grad.numpy())


def test_max_pool_routes_a_nan_window_to_its_last_nan_as_torch():
    x = np.array([[[[1.0, math.nan, 5.0, 2.0],
                    [math.nan, 4.0, 1.0, 3.0]]]])
    ours = Tensor(x.copy(), requires_grad=True)
    y = ops.max_pool2d(ours, 2)
    y.backward(np.ones(y.shape))
    theirs = torch.tensor(x, requires_grad=True)
    t_y = torch.nn.functional.max_pool2d(theirs, 2)
    t_y.backward(torch.ones_like(t_y))
    np.testing.assert_array_equal(y.data, t_y.detach().numpy())
    np.testing.assert_array_equal(ours.grad, theirs.grad.numpy())
    assert ours.grad[0, 0, 1, 0] == 1  # the second NaN (row-major) of the first window


def test_cross_entropy_leaves_out_a_nan_at_an_unscored_position_as_torch():
    logits = np.random.default_rng(0).standard_normal((2, 3, 5))
    logits[0, 1, 2] = math.nan  # position (0, 1) is not scored (grad.MASK)
    ours = Tensor(logits.copy(), requires_grad=True)
    loss = ops.cross_entropy(ours, grad.TARGETS, grad.MASK)
    with np.errstate(invalid="ignore"):
        loss.backward()
    theirs = torch.tensor(logits, requires_grad=True)
    targets = torch.tensor(np.where(grad.MASK, grad.TARGETS, -100))
    t_loss = torch.nn.functional.cross_entropy(theirs.reshape(6, 5), targets.reshape(6))
    t_loss.backward()
    t_loss = t_loss.detach()
    assert math.isfinite(float(loss.data))
    np.testing.assert_allclose(float(loss.data), t_loss.item(), rtol=1e-12)
    _assert_same(ours.grad, theirs.grad.numpy(), "gradient")  # NaN in that row, as torch


@pytest.mark.parametrize("poison", [math.nan, math.inf])
def test_per_tensor_scaling_never_makes_a_nonfinite_operand_finite(poison):
    a = np.array([[1.0, 2.0], [poison, 1.0]], np.float32)
    b = np.ones((2, 3), np.float32)
    out = run_product(preset("int8").product("fc", "forward"), a, b, seed=0)
    assert np.isnan(out).all()  # the scale of A is not finite, so no output is
    clean = run_product(preset("int8").product("fc", "forward"), a[:1], b, seed=0)
    np.testing.assert_allclose(clean, [[3, 3, 3]], rtol=0.01)  # int8 rounding of A / s_a


# ---- the training loop's stop ------------------------------------------------------------------
# The issue's case: fc1's forward accumulator is e3m1fn (max 16, no Inf) rounding up, so its
# sums overflow to NaN. Before, ReLU mapped that NaN to 0 and training reported a finite loss.
NAN_PLAN = """preset = "fp32"
[layers."fc1".forward]
acc = { fmt = "e3m1fn", rounding = "rup" }
"""
SMALL = TrainConfig(model="mlp", hidden=(8,), epochs=1, max_steps=3)


def test_nan_from_fc1_accumulator_stops_training_naming_step_layer_and_role(tmp_path):
    summary = train(SMALL, Numerics.from_toml(NAN_PLAN), out_dir=tmp_path)
    stop = summary["nonfinite"]
    assert (stop["step"], stop["layer"], stop["role"], stop["found"]) == (
        0, "fc1", "forward", "the loss is nan")
    assert stop["inputs_finite"] is True
    assert summary["steps"] == 0 and summary["final_train_loss"] is None
    assert summary["test_loss"] is None and summary["test_accuracy"] is None
    assert json.loads((tmp_path / "summary.json").read_text())["nonfinite"] == stop
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["kind"] == "nonfinite" and last["layer"] == "fc1"
    stream = io.StringIO()
    print_summary(summary, stream)
    assert stream.getvalue().splitlines()[-1] == stop["message"]


def test_nonfinite_gradient_stops_training_naming_its_product():
    plan = Numerics.from_toml(NAN_PLAN.replace("fc1\".forward", "fc1\".backward-weight"))
    stop = train(SMALL, plan)["nonfinite"]
    assert (stop["step"], stop["layer"], stop["role"]) == (0, "fc1", "backward-weight")
    assert stop["found"] == "the gradient of layers0.weight holds a NaN or Inf"


def test_a_finite_run_records_no_stop():
    summary = train(SMALL, preset("fp32"))
    assert summary["nonfinite"] is None and summary["steps"] == 3


def test_nonfinite_report_without_a_product_names_the_loss_or_the_parameter():
    ctx = Context(preset("fp32"), step=7)
    stop = nonfinite_report(ctx, 1, "the loss is inf")
    assert (stop["layer"], stop["role"], stop["inputs_finite"]) == ("loss", "loss", None)
    assert stop["message"].startswith("training stopped at step 7 (epoch 2): the loss is inf;")
    ctx.nonfinite = ("fc2", "backward-input", False)
    stop = nonfinite_report(ctx, 1, "the update made fc1.weight hold a NaN or Inf", "fc1.weight",
                            "update")
    assert (stop["layer"], stop["role"]) == ("fc1.weight", "update")  # the optimizer made it


def test_cli_train_stops_with_one_line_and_status_3(tmp_path, capsys):
    plan = tmp_path / "nan.toml"
    plan.write_text(NAN_PLAN)
    out = tmp_path / "run"
    code = main(["train", "--model", "mlp", "--numerics", str(plan), "--epochs", "1",
                 "--max-steps", "3", "--out", str(out), "--quiet"])
    assert code == STOPPED == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["refsim train: training stopped at step 0 (epoch 1): the loss is nan; the "
                   "first NaN or Inf came from layer fc1, role forward (its matrix product made "
                   "it from finite inputs)"]
    assert json.loads((out / "summary.json").read_text())["nonfinite"]["role"] == "forward"
