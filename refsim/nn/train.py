"""Training loop: seeded shuffling, per-step metrics as JSON lines, evaluation, a summary.

Usage rules:
  - `train(config, numerics)` builds the model from config.seed, checks the plan against the
    model's products (a pattern that matches nothing is an error), and trains for
    config.epochs epochs (or config.max_steps steps, whichever ends first).
  - Epoch e visits the training set in the order np.random.default_rng([seed, e]).permutation;
    the last partial batch is kept. The Context step is the global step (0, 1, ...), which
    seeds every stochastic rounding and dropout mask of that step (refsim.nn.numerics).
  - After every epoch the test set is evaluated (batches of EVAL_BATCH, training=False) with
    the same plan's forward products. Accuracy: digits, the fraction of test images classified
    right; sequence tasks, the fraction of answer tokens predicted right (greedy, teacher
    forced), and `sequence_accuracy`, the fraction of test sequences with every answer right.
  - out_dir (optional): metrics.jsonl gets one line per step {"kind": "step", "step", "epoch",
    "loss", "seconds"} and one per epoch {"kind": "epoch", "epoch", "train_loss",
    "test_accuracy", "test_loss", "seconds"}; summary.json gets the returned summary. A run never
    writes over another: out_dir must be empty or absent unless overwrite=True, which first
    deletes the earlier run's metrics.jsonl and summary.json (nothing else). summary.json is
    written last and atomically (a temporary file renamed), so a summary beside metrics.jsonl
    always belongs to it; an interrupted run leaves its partial metrics and no summary.
  - task (and length, vocab, n_train) describe the transformer's data; the other models train
    on the bundled digits, and a task other than the default is refused for them.
  - Training stops at the first step whose loss, a parameter's gradient or a parameter after
    the update is NaN or Inf (nothing after it would be a measurement): the summary's
    "nonfinite" (None for a run that finished) says at which step and epoch, what was found,
    and where it came from: `layer` and `role` of the first matrix product of that step whose
    result was not finite (`inputs_finite`: whether that product made it or was handed it),
    else layer "loss" and role "loss" (the loss computation made it), or the parameter and
    role "backward" (a gradient made outside the products) or "update" (the optimizer).
    Its final metrics are then None, and metrics.jsonl ends with {"kind": "nonfinite", ...}.
    `train` returns normally (the studies count such a run as diverged); `refsim train`
    prints the one-line message and exits with status 3.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from refsim.nn import ops
from refsim.nn.data import TASKS, Split, digits, sequence_task
from refsim.nn.layers import Module, need_init
from refsim.nn.models import CNN, MLP, ResNet, Transformer
from refsim.nn.numerics import PRESETS, Context, Numerics, preset
from refsim.nn.optim import SCHEDULES, SGD, Adam, Optimizer
from refsim.nn.tensor import Tensor
from refsim.specs import Cast

__all__ = ["EVAL_BATCH", "MODELS", "RUN_FILES", "TrainConfig", "build", "evaluate", "forward_loss",
           "make_optimizer", "nonfinite_report", "train"]

MODELS = ("mlp", "cnn", "resnet", "transformer")
EVAL_BATCH = 256


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how; None fields take the model's default (DEFAULTS).

    Args:
        model: mlp, cnn, resnet or transformer.
        epochs: passes over the training set.
        seed: model initialization, shuffling, SR and dropout all derive from it.
        batch_size, lr: as usual; optimizer: "sgd" or "adam"; momentum, weight_decay as in
            refsim.nn.optim.
        storage: None, or a format name: weights stored in it, updated with SR (optim docs).
        hidden: MLP hidden sizes.
        task, length, vocab, n_train: the transformer's sequence task.
        d_model, heads, d_ff, dropout: the transformer's shape; blocks: its blocks, or the
            ResNet's residual blocks.
        channels: the CNN's conv channels (one 3x3 conv each; default (8, 16)), or the
            ResNet's (stem, width) (default (64, 16)); refsim.nn.models.
        max_steps: stop after this many steps (None: run every epoch).
        lr_schedule: "constant" or "cosine" (to 0 over the run's steps; refsim.nn.optim).
        eval_preset: a Numerics preset name the test set is evaluated with (e.g. "numpy":
            fp32 inference, the same for every training plan), or None: the training plan's
            forward products.
        init: the weights' initialization, "uniform" or "he" (refsim.nn.layers.INITS; "he"
            for the ReLU models mlp, cnn and resnet only).
    """

    model: str = "mlp"
    epochs: int = 10
    seed: int = 0
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    storage: str | None = None
    hidden: tuple[int, ...] = (128,)
    task: str = "copy"
    length: int = 5
    vocab: int = 8
    n_train: int = 2048
    d_model: int = 32
    heads: int = 2
    blocks: int = 1
    d_ff: int = 64
    dropout: float = 0.0
    max_steps: int | None = None
    channels: tuple[int, ...] | None = None
    lr_schedule: str = "constant"
    eval_preset: str | None = None
    init: str = "uniform"

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r} (allowed: {', '.join(MODELS)})")
        if self.optimizer not in (None, "sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam'; got {self.optimizer!r}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r} (allowed: {', '.join(TASKS)})")
        if self.model != "transformer" and self.task != "copy":
            raise ValueError(f"task applies to model 'transformer' only ({self.model} trains on "
                             f"the bundled digits); got task {self.task!r}")
        for key in ("epochs", "batch_size", "max_steps", "n_train", "length", "vocab"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{key} must be a positive int; got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)}; got "
                             f"{self.lr_schedule!r}")
        if self.channels is not None and not (
                len(self.channels) >= 2 and all(isinstance(c, int) and c >= 1
                                                for c in self.channels)
                and (self.model != "resnet" or len(self.channels) == 2)):
            raise ValueError(f"channels must list at least two positive ints (two for the "
                             f"resnet: stem, width); got {self.channels!r}")
        need_init(self.init)
        if self.model == "transformer" and self.init != "uniform":
            raise ValueError(f"init applies to the ReLU models (mlp, cnn, resnet); the "
                             f"transformer keeps 'uniform'; got init {self.init!r}")
        if self.eval_preset is not None and self.eval_preset not in PRESETS:
            raise ValueError(f"eval_preset must be None or one of {', '.join(PRESETS)}; got "
                             f"{self.eval_preset!r}")

    def total_steps(self, n_train: int) -> int:
        """Steps the run takes over n_train examples (epochs of ceil(n / batch) steps, capped
        by max_steps); needs a resolved config."""
        assert self.batch_size is not None
        steps = self.epochs * math.ceil(n_train / self.batch_size)
        return steps if self.max_steps is None else min(steps, self.max_steps)

    def resolved(self) -> TrainConfig:
        """The config with the model's defaults filled in."""
        defaults = DEFAULTS[self.model]
        filled = {key: defaults[key] for key in defaults if getattr(self, key) is None}
        return dataclasses.replace(self, **filled)


DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {"batch_size": 32, "lr": 0.05, "optimizer": "sgd"},
    "cnn": {"batch_size": 32, "lr": 0.05, "optimizer": "sgd"},
    "resnet": {"batch_size": 32, "lr": 0.01, "optimizer": "adam"},
    "transformer": {"batch_size": 32, "lr": 3e-3, "optimizer": "adam"},
}


def build(config: TrainConfig) -> tuple[Module, Split]:
    """The model (initialized from config.seed) and its data."""
    c = config
    if c.model == "mlp":
        return MLP((64, *c.hidden, 10), seed=c.seed, init=c.init), digits()
    if c.model == "cnn":
        return CNN(channels=c.channels or (8, 16), seed=c.seed, init=c.init), \
            digits(images=True)
    if c.model == "resnet":
        stem, width = c.channels or (64, 16)
        return ResNet(stem=stem, width=width, blocks=c.blocks, seed=c.seed, init=c.init), \
            digits(images=True)
    split = sequence_task(c.task, n_train=c.n_train, length=c.length, vocab=c.vocab, seed=c.seed)
    model = Transformer(c.vocab + 1, split.x_train.shape[1], d=c.d_model, heads=c.heads,
                        n_blocks=c.blocks, d_ff=c.d_ff, dropout=c.dropout, seed=c.seed)
    return model, split


def make_optimizer(config: TrainConfig, model: Module, total_steps: int | None = None
                   ) -> Optimizer:
    """The optimizer `config` names (SGD or Adam, fp32 masters, optional SR weight storage,
    its lr schedule over total_steps)."""
    storage = None if config.storage is None else Cast(config.storage, "sr")
    params = model.parameters()
    assert config.lr is not None
    if config.optimizer == "adam":
        return Adam(params, config.lr, weight_decay=config.weight_decay, storage=storage,
                    seed=config.seed, schedule=config.lr_schedule, total_steps=total_steps)
    return SGD(params, config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
               storage=storage, seed=config.seed, schedule=config.lr_schedule,
               total_steps=total_steps)


def _quiet() -> np.errstate:
    # NaN and Inf are looked for explicitly (the stop rule): NumPy's warnings on them are noise.
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def forward_loss(model: Module, ctx: Context, x, y, mask):
    """(logits, cross-entropy loss) of one batch; mask: the scored positions, or None for all."""
    logits = model(x, ctx)  # type: ignore[operator]
    return logits, ops.cross_entropy(logits, y, mask)


def evaluate(model: Module, split: Split, ctx: Context) -> dict[str, float]:
    """Test loss and accuracy (module docstring) with ctx.training off."""
    training, ctx.training = ctx.training, False
    n = len(split.y_test)
    correct = total = 0
    loss_sum = 0.0
    whole = 0
    try:
        for start in range(0, n, EVAL_BATCH):
            sl = slice(start, start + EVAL_BATCH)
            mask = None if split.mask_test is None else split.mask_test[sl]
            with _quiet():
                logits, loss = forward_loss(model, ctx, split.x_test[sl], split.y_test[sl], mask)
            right = logits.data.argmax(axis=-1) == split.y_test[sl]
            scored = np.ones(right.shape, bool) if mask is None else mask
            correct += int((right & scored).sum())
            total += int(scored.sum())
            loss_sum += float(loss.data) * int(scored.sum())
            if right.ndim == 2:
                whole += int((right | ~scored).all(axis=1).sum())
    finally:
        ctx.training = training
    out = {"test_accuracy": correct / total, "test_loss": loss_sum / total}
    if split.mask_test is not None:
        out["sequence_accuracy"] = whole / n
    return out


def _evaluate_at(model: Module, split: Split, ctx: Context, step: int) -> dict[str, float]:
    ctx.step = step  # an evaluation context of its own still seeds by the training step
    return evaluate(model, split, ctx)


class _Progress:
    """A one-line progress bar on a stream (redrawn in place on a terminal)."""

    def __init__(self, stream: TextIO | None, epochs: int, batches: int) -> None:
        self.stream, self.epochs, self.batches = stream, epochs, batches
        self.tty = bool(stream is not None and stream.isatty())

    def update(self, epoch: int, batch: int, loss: float) -> None:
        if self.stream is None or not self.tty:
            return
        filled = int(20 * batch / self.batches)
        self.stream.write(f"\repoch {epoch + 1}/{self.epochs} [{'#' * filled:<20}] "
                          f"{batch}/{self.batches} loss {loss:.4f}")
        self.stream.flush()

    def epoch_done(self, epoch: int, record: dict[str, Any]) -> None:
        if self.stream is None:
            return
        self.stream.write(("\r" if self.tty else "") +
                          f"epoch {epoch + 1}/{self.epochs}: train loss "
                          f"{record['train_loss']:.4f}, test accuracy "
                          f"{100 * record['test_accuracy']:.2f}% ({record['seconds']:.1f} s)"
                          + " " * 10 + "\n")
        self.stream.flush()


def _step(model: Module, ctx: Context, optimizer: Optimizer, params: list[tuple[str, Tensor]],
          epoch: int, x, y, mask) -> tuple[float, dict[str, Any] | None]:
    """One training step: its loss, and the stop record if it met a NaN or Inf."""
    ctx.nonfinite = None
    optimizer.zero_grad()
    with _quiet():
        _, loss = forward_loss(model, ctx, x, y, mask)
        value = float(loss.data)
        if not math.isfinite(value):
            return value, nonfinite_report(ctx, epoch, f"the loss is {value}")
        loss.backward()
        stopped = _check_params(ctx, epoch, params, "gradient")
        if stopped is None:
            optimizer.step()
            stopped = _check_params(ctx, epoch, params, "update")
    return value, stopped


RUN_FILES = ("metrics.jsonl", "summary.json")
"""What train writes into out_dir (and what overwrite=True deletes first)."""


def prepare_out_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """out_dir, created if absent, ready for a new run: a ValueError if it holds anything and
    overwrite is False; with overwrite, the earlier run's RUN_FILES deleted (other files kept)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"out_dir {str(out)!r} is not empty (it may hold another run); "
                             "choose a new directory or pass overwrite=True (--overwrite)")
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def train(config: TrainConfig, numerics: Numerics, out_dir: str | Path | None = None,
          progress: TextIO | None = None, model: Module | None = None, *,
          overwrite: bool = False) -> dict[str, Any]:
    """Train, evaluate each epoch, and return the summary (and write it, with the metrics, to
    out_dir: empty or absent unless overwrite, module docstring). `progress`: a stream for the
    progress bar (None: silent). `model`: train this model instead of building one (its data is
    still config's)."""
    config = config.resolved()
    built, split = build(config)
    model = built if model is None else model
    numerics.check(model.gemm_names())
    numerics = numerics.bind(model.gemm_names())  # the pattern @last names the output layer
    optimizer = make_optimizer(config, model, config.total_steps(len(split.y_train)))
    ctx = Context(numerics, seed=config.seed)
    eval_ctx = ctx
    if config.eval_preset is not None:
        eval_numerics = preset(config.eval_preset).bind(model.gemm_names())
        eval_ctx = Context(eval_numerics, seed=config.seed)
    metrics = None
    if out_dir is not None:
        out = prepare_out_dir(out_dir, overwrite)
        metrics = (out / "metrics.jsonl").open("w")
    assert config.batch_size is not None
    n = len(split.y_train)
    batches = math.ceil(n / config.batch_size)
    bar = _Progress(progress, config.epochs, batches)
    start = time.perf_counter()
    record: dict[str, Any] = {}
    epochs_run = 0
    stopped: dict[str, Any] | None = None
    params = model.named_parameters()
    try:
        for epoch in range(config.epochs):
            order = np.random.default_rng([config.seed, epoch]).permutation(n)
            losses = []
            for b in range(batches):
                if config.max_steps is not None and ctx.step >= config.max_steps:
                    break
                idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                mask = None if split.mask_train is None else split.mask_train[idx]
                value, stopped = _step(model, ctx, optimizer, params, epoch,
                                       split.x_train[idx], split.y_train[idx], mask)
                if stopped is not None:
                    if metrics is not None:
                        metrics.write(json.dumps({"kind": "nonfinite", **stopped}) + "\n")
                    break
                losses.append(value)
                if metrics is not None:
                    metrics.write(json.dumps({"kind": "step", "step": ctx.step, "epoch": epoch,
                                              "loss": value,
                                              "seconds": time.perf_counter() - start}) + "\n")
                ctx.step += 1
                bar.update(epoch, b + 1, value)
            if stopped is not None or not losses:
                break
            epochs_run += 1
            record = {"kind": "epoch", "epoch": epoch, "train_loss": float(np.mean(losses)),
                      **_evaluate_at(model, split, eval_ctx, ctx.step),
                      "seconds": time.perf_counter() - start}
            if metrics is not None:
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
            bar.epoch_done(epoch, record)
    finally:
        if metrics is not None:
            metrics.close()
    if stopped is not None:
        record = {}  # the last epoch's metrics are not this run's result
    summary = {
        "model": config.model,
        "numerics": numerics.name,
        "epochs": epochs_run,
        "steps": ctx.step,
        "seed": config.seed,
        "final_train_loss": record.get("train_loss"),
        "test_accuracy": record.get("test_accuracy"),
        "test_loss": record.get("test_loss"),
        "wall_seconds": time.perf_counter() - start,
        "config": dataclasses.asdict(config),
        "plan": numerics.to_dict(),
        "products": numerics.describe(model.gemm_names()),
    }
    if "sequence_accuracy" in record:
        summary["sequence_accuracy"] = record["sequence_accuracy"]
    summary["nonfinite"] = stopped
    if out_dir is not None:  # last, and whole or not at all: a rename is atomic
        tmp = Path(out_dir) / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(Path(out_dir) / "summary.json")
    return summary


def nonfinite_report(ctx: Context, epoch: int, found: str, layer: str = "loss",
                     role: str = "loss") -> dict[str, Any]:
    """The record of a stop at ctx.step (module docstring). `found` says what is not finite;
    the first non-finite product of the step (ctx.nonfinite), if any, names the layer and role
    (except for role "update": the optimizer made it), else `layer` and `role` do."""
    inputs_finite = None
    if ctx.nonfinite is not None and role != "update":
        layer, role, inputs_finite = ctx.nonfinite
        how = ("its matrix product made it from finite inputs" if inputs_finite else
               "the first matrix product to give one; its inputs already held a NaN or Inf")
    elif role == "loss":
        how = "the loss computation; no matrix product gave a NaN or Inf"
    elif role == "backward":
        how = "a gradient computed outside the matrix products"
    else:
        how = "the optimizer's step"
    message = (f"training stopped at step {ctx.step} (epoch {epoch + 1}): {found}; the first NaN "
               f"or Inf came from layer {layer}, role {role} ({how})")
    return {"step": ctx.step, "epoch": epoch, "found": found, "layer": layer, "role": role,
            "inputs_finite": inputs_finite, "message": message}


def _check_params(ctx: Context, epoch: int, params: list[tuple[str, Tensor]],
                  what: str) -> dict[str, Any] | None:
    """The stop record if a parameter's gradient (what="gradient") or its value after the
    update (what="update") holds a NaN or Inf."""
    for name, p in params:
        values = p.grad if what == "gradient" else p.data
        if values is not None and not np.isfinite(values).all():
            if what == "gradient":
                return nonfinite_report(ctx, epoch, f"the gradient of {name} holds a NaN or Inf",
                                        name, "backward")
            return nonfinite_report(ctx, epoch, f"the update made {name} hold a NaN or Inf",
                                    name, "update")
    return None


def print_summary(summary: dict[str, Any], stream: TextIO | None = None) -> None:
    """A few lines for the terminal (default: sys.stdout)."""
    stream = sys.stdout if stream is None else stream
    stream.write(f"{summary['model']} with numerics {summary['numerics']}: "
                 f"{summary['epochs']} epochs, {summary['steps']} steps, seed {summary['seed']}\n")
    if summary.get("nonfinite") is not None:  # a stopped run has no final metrics
        stream.write(summary["nonfinite"]["message"] + "\n")
        return
    extra = ""
    if "sequence_accuracy" in summary:
        extra = f", sequence accuracy {100 * summary['sequence_accuracy']:.2f}%"
    stream.write(f"final train loss {summary['final_train_loss']:.4f}, test accuracy "
                 f"{100 * summary['test_accuracy']:.2f}%{extra}, "
                 f"{summary['wall_seconds']:.1f} s\n")
