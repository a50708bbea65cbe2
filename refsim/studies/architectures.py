"""The architectures the redesigned studies train, and their training recipe.

Usage rules:
  - ARCHITECTURES maps a name to the TrainConfig fields that build it (refsim.nn.train). They
    are chosen to break the aliasing of the factors across GEMMs: in `mlp-down` the forward
    reduction length K falls with depth, in `mlp-up` it rises, `mlp-hourglass` alternates
    it, `mlp-deep` holds K and usage fixed over 9 layers, so K, usage frequency and depth are
    not functions of one another across models; the
    CNN, the ResNet and the transformers add convolutions, residual paths and attention
    products, whose roles differ from the linear layers'.
  - RECIPE is how every architecture trains: SGD (lr 0.05, momentum 0.9; the transformers:
    Adam, lr 0.003) with a cosine schedule to 0 over `steps` steps (so a run ends on a plateau,
    and its end point does not hinge on where one large step landed), test-set evaluation
    with fp32 inference (eval_preset "numpy": every plan's
    test loss is measured the same way, whichever role it perturbs), BLAS held to one thread
    (refsim.studies.training). Why SGD: a paired design needs training that is not chaotic. In
    a pilot (mlp-down, 400 steps, 4 seeds) Adam at lr 0.003 moved the final test loss of a run
    with one GEMM in e5m4 by 1-2 seed-sd from its baseline, as much as e5m0 did (the pairing
    was lost); SGD moved it by under 0.5 at e5m4 and by 1-11 at e5m0 (docs/studies.md).
    Why He initialization (refsim.nn.layers.INITS) for the ReLU models: under torch's default
    uniform init the six- to nine-layer MLPs stall (after 300 steps mlp-down reached 29-83%
    test accuracy over 8 seeds, seed-sd of the test loss 0.48, and mlp-deep 8-9%); with He
    init they reach 94-98% (seed-sd 0.01-0.04). The transformers keep "uniform".
  - `arch_fields(name, seed, steps, overrides)` gives the TrainConfig fields of one run;
    `overrides` ({field: value}) changes the architecture (the causal sweeps vary widths and
    batch sizes this way).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["ARCHITECTURES", "RECIPE", "arch_fields", "n_train", "need_arch_overrides"]

DIGITS_TRAIN = 1437  # refsim.nn.data.digits: training images
MARKOV = {"model": "transformer", "task": "markov", "length": 8, "vocab": 16, "n_train": 1024,
          "d_model": 32, "heads": 2, "d_ff": 64, "optimizer": "adam", "lr": 0.003,
          "init": "uniform"}

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "mlp-down": {"model": "mlp", "hidden": [256, 128, 64, 32, 16]},
    "mlp-up": {"model": "mlp", "hidden": [16, 32, 64, 128, 256]},
    "mlp-hourglass": {"model": "mlp", "hidden": [32, 256, 32, 256, 32]},
    "mlp-deep": {"model": "mlp", "hidden": [64] * 8},
    "cnn-deep": {"model": "cnn", "channels": [8, 16, 16, 32, 32]},
    "resnet-2": {"model": "resnet", "blocks": 2, "channels": [16, 16]},
    "transformer-1": {**MARKOV, "blocks": 1},
    "transformer-2": {**MARKOV, "blocks": 2},
}
"""Name -> TrainConfig fields (module docstring)."""

RECIPE: dict[str, Any] = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                          "lr_schedule": "cosine", "eval_preset": "numpy", "batch_size": 32,
                          "init": "he"}


def n_train(fields: Mapping[str, Any]) -> int:
    """Training examples of a run with these TrainConfig fields."""
    return int(fields.get("n_train", 2048)) if fields["model"] == "transformer" \
        else DIGITS_TRAIN


def arch_fields(name: str, seed: int, steps: int,
                overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """TrainConfig fields of one run of architecture `name` (module docstring)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r} (allowed: "
                         f"{', '.join(ARCHITECTURES)})")
    fields: dict[str, Any] = {**RECIPE, **ARCHITECTURES[name], **(overrides or {})}
    fields.update(seed=seed, max_steps=steps)
    fields["epochs"] = math.ceil(steps * fields["batch_size"] / n_train(fields))
    return fields


def need_arch_overrides(study: str, over: Any) -> None:
    """`arch_overrides` is {architecture name: {TrainConfig field: value}} whose fields build
    (refsim.studies.architectures); ValueError naming what is wrong otherwise."""
    from refsim.studies.params import need
    from refsim.studies.training import train_config

    need(isinstance(over, dict) and all(a in ARCHITECTURES and isinstance(v, dict)
                                        for a, v in over.items()), study, "arch_overrides",
         f"a {{architecture: {{TrainConfig field: value}}}} dict over "
         f"{', '.join(ARCHITECTURES)}", over)
    for arch, fields in over.items():
        try:
            train_config(arch_fields(arch, 0, 1, fields))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"study {study}: parameter 'arch_overrides' ({arch}): {exc}") \
                from None
