"""Factor profiles of the three default models, written next to the study reports.

Usage rules:
  - `write_profiles(out_dir, models)` writes out_dir/<model>.csv, .json and .txt (the printed
    table) for each model as `refsim train` builds it with its defaults, profiled on one
    training batch (refsim.factors.profile), and returns a markdown section with the tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from refsim.studies.training import profile_of

__all__ = ["write_profiles"]


def write_profiles(out_dir: str | Path, models: Sequence[str] = ("mlp", "cnn", "transformer"),
                   batch_size: int = 32) -> str:
    """Write the profiles and return their markdown section."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["## Factor profiles of the default models", "",
             f"One row per GEMM role (refsim.factors.profile on a batch of {batch_size}): K is "
             "the reduction length, uses_a / uses_b the mean number of outputs each element of "
             "the first / second operand feeds, d_in / d_loss the depth from the input / loss.",
             ""]
    for model in models:
        prof = profile_of({"model": model, "batch_size": batch_size})
        prof.to_csv(out / f"{model}.csv")
        prof.to_json(out / f"{model}.json")
        (out / f"{model}.txt").write_text(prof.table() + "\n")
        lines += [f"### {model}", "", "```", prof.table(), "```", ""]
    return "\n".join(lines)
