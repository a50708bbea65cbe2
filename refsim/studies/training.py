"""Training runs for the studies: a config dict in, the final metrics out.

Usage rules:
  - A run config is JSON: {"train": TrainConfig fields (lists for tuples), "plan": a numerics
    plan as Numerics.from_dict takes it}. `train_run(config)` trains (refsim.nn.train) and
    returns {"test_loss", "test_accuracy", "final_train_loss", "test_loss_auc",
    "train_loss_auc", "steps", "seconds", "cpu_seconds"}; a loss that became NaN or Inf stays
    so (the report counts it as diverged).
  - The areas under the loss curves, normalized by the steps (so they read as mean losses):
    `train_loss_auc` is the mean of every step's training-batch loss (the batches are the same
    for every plan with one seed, so a paired difference compares like with like);
    `test_loss_auc` weights each epoch's end-of-epoch test loss by the steps of that epoch;
    `test_curve` lists the epoch-end test losses (the plateau check).
    Both come from the run's metrics.jsonl (refsim.nn.train), written to a temporary folder.
  - A run holds NumPy's BLAS to one thread (threadpoolctl, a scikit-learn dependency): runs
    in parallel do not oversubscribe the cores, and products the plan leaves to np.matmul (the
    `numpy` preset) are computed the same way under every executor.
  - `low_plan(units, spec, rest)` is the plan `rest` (a preset name: "fp32" simulates every
    other product, "numpy" leaves them to np.matmul in float32) with the GEMMs listed in
    `units` ((layer, role) pairs) replaced by the GemmSpec dict `spec`; `bits_plan(formats, ...)`
    gives every role of each listed layer operands in its own format.
  - `profile_of(train)` is refsim.factors.profile of the model a TrainConfig builds, on one
    training batch.
  - TRAINING: the training parameters shared by the sensitivity and allocate studies;
    `check_training(p, study)` checks them and `model_fields(p, model, seed)` turns them into
    the TrainConfig fields of one run. Digits models (mlp, cnn, resnet) use `optimizer` and
    `lr`, the MLP's hidden sizes are `mlp_hidden`; the transformer uses `transformer_optimizer`,
    `transformer_lr` and the task `transformer_task` (`transformer_length`,
    `transformer_vocab`, `transformer_train` sequences); `model_overrides` ({model: {field:
    value}}) sets any TrainConfig field of one model last (e.g. the ResNet's optimizer).
    Epochs cover `steps`, never more.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["MODELS", "TRAINING", "accumulator_spec", "bits_plan", "check_training",
           "low_plan", "model_fields", "operand_spec", "profile_of", "train_config",
           "train_run"]

MODELS = ("mlp", "cnn", "resnet", "transformer")
DIGITS_TRAIN = 1437  # refsim.nn.data.digits: training images
TRAINING: dict[str, Any] = {
    "steps": 40, "optimizer": "adam", "lr": 0.01, "mlp_hidden": [128],
    "transformer_optimizer": "adam", "transformer_lr": 0.003, "transformer_train": 512,
    "transformer_task": "copy", "transformer_length": 5, "transformer_vocab": 8,
    "model_overrides": {},
}


def model_fields(p: dict[str, Any], model: str, seed: int) -> dict[str, Any]:
    """TrainConfig fields of one run of `model` under the parameters p (module docstring)."""
    steps = p["steps"]
    fields: dict[str, Any] = {"model": model, "seed": seed, "max_steps": steps,
                              "optimizer": p["optimizer"], "lr": p["lr"]}
    n = DIGITS_TRAIN
    if model == "mlp":
        fields["hidden"] = list(p["mlp_hidden"])
    if model == "transformer":
        n = p["transformer_train"]
        fields.update(n_train=n, optimizer=p["transformer_optimizer"], lr=p["transformer_lr"],
                      task=p["transformer_task"], length=p["transformer_length"],
                      vocab=p["transformer_vocab"])
    fields.update(p["model_overrides"].get(model, {}))
    fields["epochs"] = math.ceil(steps * fields.get("batch_size", 32) / n)
    return fields


def check_training(p: dict[str, Any], study: str) -> None:
    """The TRAINING parameters: ValueError naming the one that is wrong."""
    from refsim.nn.data import TASKS
    from refsim.studies.params import need

    need(bool(p["models"]) and all(m in MODELS for m in p["models"]), study, "models",
         f"a non-empty list of {', '.join(MODELS)}", p["models"])
    need(bool(p["seeds"]) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                  for s in p["seeds"]) and len(set(p["seeds"])) == len(p["seeds"]),
         study, "seeds", "a non-empty list of distinct ints >= 0", p["seeds"])
    for key in ("steps", "transformer_train", "transformer_length", "transformer_vocab"):
        need(isinstance(p[key], int) and p[key] >= 1, study, key, "a positive int", p[key])
    for key in ("optimizer", "transformer_optimizer"):
        need(p[key] in ("sgd", "adam"), study, key, "sgd or adam", p[key])
    for key in ("lr", "transformer_lr"):
        need(isinstance(p[key], int | float) and p[key] > 0, study, key, "a positive number",
             p[key])
    need(bool(p["mlp_hidden"]) and all(isinstance(h, int) and h >= 1 for h in p["mlp_hidden"]),
         study, "mlp_hidden", "a non-empty list of positive ints", p["mlp_hidden"])
    need(p["transformer_task"] in TASKS, study, "transformer_task",
         f"one of {', '.join(TASKS)}", p["transformer_task"])
    need(p["transformer_task"] != "markov" or p["transformer_length"] >= 3, study,
         "transformer_length", "at least 3 for the markov task", p["transformer_length"])
    over = p["model_overrides"]
    need(isinstance(over, dict) and all(m in MODELS and isinstance(v, dict)
                                        for m, v in over.items()), study, "model_overrides",
         f"a {{model: {{TrainConfig field: value}}}} dict over {', '.join(MODELS)}", over)
    for m, v in over.items():
        _check_fields(study, m, {**model_fields({**p, "model_overrides": {}}, m, 0), **v})


def _check_fields(study: str, model: str, fields: dict[str, Any]) -> None:
    try:
        train_config(fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"study {study}: parameter 'model_overrides' ({model}): {exc}") \
            from None


def train_config(fields: dict[str, Any]):
    from refsim.nn.train import TrainConfig

    data = dict(fields)
    for key in ("hidden", "channels"):
        if key in data:
            data[key] = tuple(data[key])
    return TrainConfig(**data)


def operand_spec(fmt: str, rounding: str = "rne", acc: str = "fp32", scaling: str = "none"
                 ) -> dict[str, Any]:
    """A GemmSpec dict (a plan's product): both operands cast to fmt (saturating),
    accumulation in acc, with refsim.nn.numerics' `scaling` ("none" or "tensor")."""
    cast = {"fmt": fmt, "rounding": rounding, "overflow": "saturate"}
    spec: dict[str, Any] = {"a": cast, "b": dict(cast), "acc": {"fmt": acc}}
    if scaling != "none":
        spec["scaling"] = scaling
    return spec


def accumulator_spec(fmt: str, order: str = "sequential", rounding: str = "rne"
                     ) -> dict[str, Any]:
    """A GemmSpec dict: float32 operands as they are, accumulation in fmt (in `order`)."""
    return {"acc": {"fmt": fmt, "order": order, "rounding": rounding}}


def low_plan(units: list[tuple[str, str]], spec: dict[str, Any], rest: str = "fp32"
             ) -> dict[str, Any]:
    layers: dict[str, dict[str, Any]] = {}
    for layer, role in units:
        layers.setdefault(layer, {})[role] = spec
    return {"preset": rest, "layers": layers}


def bits_plan(formats: dict[str, str], rounding: str = "rne", scaling: str = "none",
              acc: str = "fp32") -> dict[str, Any]:
    """Every role of each listed layer with operands in its own format ({layer: format name};
    refsim.studies.dose names them), every other product simulated in fp32."""
    from refsim.nn.numerics import ROLES

    return {"preset": "fp32",
            "layers": {layer: {role: operand_spec(fmt, rounding, acc, scaling) for role in ROLES}
                       for layer, fmt in formats.items()}}


def _curves(path: Path) -> dict[str, Any]:
    """train_loss_auc and test_loss_auc of one metrics.jsonl (module docstring); NaN for a run
    that stopped at a non-finite value (refsim.nn.train ends its metrics with a "nonfinite"
    record) or has no finite curve."""
    steps: list[float] = []
    epochs: list[tuple[int, float]] = []
    per_epoch: dict[int, int] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "step":
            steps.append(rec["loss"])
            per_epoch[rec["epoch"]] = per_epoch.get(rec["epoch"], 0) + 1
        elif rec["kind"] == "epoch":
            epochs.append((per_epoch.get(rec["epoch"], 0), rec["test_loss"]))
        else:
            steps.append(math.nan)
    weight = sum(n for n, _ in epochs)
    curve = [v for _, v in epochs]
    if not steps or not weight or not all(math.isfinite(v) for v in steps):
        return {"train_loss_auc": math.nan, "test_loss_auc": math.nan, "test_curve": curve}
    return {"train_loss_auc": math.fsum(steps) / len(steps),
            "test_loss_auc": math.fsum(n * v for n, v in epochs) / weight, "test_curve": curve}


def train_run(config: dict[str, Any]) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    from refsim.nn.numerics import Numerics
    from refsim.nn.train import train

    cfg = train_config(config["train"])
    cpu = time.process_time()
    with tempfile.TemporaryDirectory(prefix="refsim-run-") as tmp, \
            threadpool_limits(limits=1, user_api="blas"):
        summary = train(cfg, Numerics.from_dict(config["plan"], name="study"), out_dir=tmp)
        curves = _curves(Path(tmp) / "metrics.jsonl")
    out = {key: summary[key] for key in ("test_loss", "test_accuracy", "final_train_loss",
                                          "steps")}
    out.update(curves)
    out["seconds"] = summary["wall_seconds"]
    out["cpu_seconds"] = time.process_time() - cpu
    for key in ("test_loss", "test_accuracy", "final_train_loss", "test_loss_auc",
                "train_loss_auc"):
        if out[key] is None or not math.isfinite(out[key]):
            out[key] = math.nan
    return out


def profile_of(fields: dict[str, Any]):
    from refsim.factors import profile
    from refsim.nn.train import build

    cfg = train_config(fields).resolved()
    model, split = build(cfg)
    return profile(model, split.x_train[:cfg.batch_size])
