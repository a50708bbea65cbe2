"""Factor profiles of the studied models, written next to the study reports.

Usage rules:
  - `write_profiles(out_dir, models, docs=docs)` writes out_dir/<model>.csv, .json and .txt
    (the printed table) for each model, profiled on one training batch
    (refsim.factors.profile), and returns a markdown section with the tables. With `docs` (the
    documents of a `refsim study all` run) that hold the sensitivity study, the models are
    those it trained and `models`, built as it builds them (its params: MLP widths,
    transformer task, ...); with the tolerance study, its architectures; otherwise each of
    `models` as `refsim train` builds it by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refsim.studies.training import model_fields, profile_of

__all__ = ["write_profiles"]


def write_profiles(out_dir: str | Path, models: Sequence[str] = ("mlp", "cnn", "transformer"),
                   batch_size: int = 32, docs: Sequence[dict[str, Any]] | None = None) -> str:
    """Write the profiles and return their markdown section."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = {m: {"model": m, "batch_size": batch_size} for m in models}
    how = "as `refsim train` builds them by default"
    for doc in docs or ():
        if doc["study"] == "sensitivity":
            p = doc["params"]
            fields = {m: {**model_fields(p, m, 0), "batch_size": batch_size}
                      for m in dict.fromkeys([*p["models"], *models])}
            how = "as the sensitivity study trains them"
        if doc["study"] == "tolerance":
            from refsim.studies.architectures import arch_fields

            p = doc["params"]
            fields = {a: {**arch_fields(a, 0, p["steps"]), "batch_size": batch_size}
                      for a in p["architectures"]}
            how = "as the tolerance study trains them (refsim.studies.architectures)"
    lines = ["## Factor profiles of the models", "",
             f"The models {how}. One row per GEMM role (refsim.factors.profile on a batch of "
             f"{batch_size}): K is the reduction length, uses_a / uses_b the mean number of "
             "outputs each element of the first / second operand feeds, d_in / d_loss the "
             "depth from the input / loss.", ""]
    for model, f in fields.items():
        prof = profile_of(f)
        prof.to_csv(out / f"{model}.csv")
        prof.to_json(out / f"{model}.json")
        (out / f"{model}.txt").write_text(prof.table() + "\n")
        lines += [f"### {model}", "", "```", prof.table(), "```", ""]
    return "\n".join(lines)
