"""Training runs for the studies: a config dict in, the final metrics out.

Usage rules:
  - A run config is JSON: {"train": TrainConfig fields (lists for tuples), "plan": a numerics
    plan as Numerics.from_dict takes it}. `train_run(config)` trains (refsim.nn.train) and
    returns {"test_loss", "test_accuracy", "final_train_loss", "steps", "seconds"}; a loss that
    became NaN or Inf stays so (the report counts it as diverged).
  - `low_plan(units, spec)` is the fp32 plan with the GEMMs listed in `units` ((layer, role)
    pairs) replaced by the GemmSpec dict `spec`; `bits_plan(bits, ...)` gives every role of
    each listed layer operands of its own mantissa width.
  - `profile_of(train)` is refsim.factors.profile of the model a TrainConfig builds, on one
    training batch.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["bits_plan", "low_plan", "operand_spec", "profile_of", "train_config", "train_run"]


def train_config(fields: dict[str, Any]):
    from refsim.nn.train import TrainConfig

    data = dict(fields)
    if "hidden" in data:
        data["hidden"] = tuple(data["hidden"])
    return TrainConfig(**data)


def operand_spec(fmt: str, rounding: str = "rne", acc: str = "fp32") -> dict[str, Any]:
    """A GemmSpec dict: both operands cast to fmt (saturating), accumulation in acc."""
    cast = {"fmt": fmt, "rounding": rounding, "overflow": "saturate"}
    return {"a": cast, "b": dict(cast), "acc": {"fmt": acc}}


def low_plan(units: list[tuple[str, str]], spec: dict[str, Any]) -> dict[str, Any]:
    layers: dict[str, dict[str, Any]] = {}
    for layer, role in units:
        layers.setdefault(layer, {})[role] = spec
    return {"preset": "fp32", "layers": layers}


def bits_plan(bits: dict[str, int], exp_bits: int, rounding: str = "rne",
              acc: str = "fp32") -> dict[str, Any]:
    from refsim.nn.numerics import ROLES

    return {"preset": "fp32",
            "layers": {layer: {role: operand_spec(f"e{exp_bits}m{m}", rounding, acc)
                               for role in ROLES} for layer, m in bits.items()}}


def train_run(config: dict[str, Any]) -> dict[str, Any]:
    from refsim.nn.numerics import Numerics
    from refsim.nn.train import train

    cfg = train_config(config["train"])
    summary = train(cfg, Numerics.from_dict(config["plan"], name="study"))
    out = {key: summary[key] for key in ("test_loss", "test_accuracy", "final_train_loss",
                                          "steps")}
    out["seconds"] = summary["wall_seconds"]
    for key in ("test_loss", "test_accuracy", "final_train_loss"):
        if out[key] is None or not math.isfinite(out[key]):
            out[key] = math.nan
    return out


def profile_of(fields: dict[str, Any]):
    from refsim.factors import profile
    from refsim.nn.train import build

    cfg = train_config(fields).resolved()
    model, split = build(cfg)
    return profile(model, split.x_train[:cfg.batch_size])
