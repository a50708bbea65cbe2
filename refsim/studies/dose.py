"""Dose-response helpers shared by the tolerance and causal studies: operand and accumulator
doses, paired damage in seed-noise units, and the threshold bits M*.

Usage rules:
  - A dose is a mantissa width m. `dose_spec(lever, m, p)` is the GemmSpec dict of one
    perturbed GEMM: lever "operands" casts both operands to e{exp_bits}m{m} (rounding
    p["rounding"], saturating) with fp32 accumulation; lever "accumulator" keeps the float32
    operands and accumulates sequentially in e{acc_exp_bits}m{m} (RNE).
  - Damage: a run's measure minus its same-seed baseline's, divided by the seed noise (the
    seed-to-seed standard deviation of the baseline's measure over `noise_seeds`). A run that
    diverged (a non-finite measure) has damage +inf: worse than any finite one.
  - `threshold_bits(doses, damage, tau)` is M*, where the damage curve first falls below tau
    going from fewer to more bits: linear interpolation between the first dose below tau and
    the dose before it (damage is assumed to fall with bits; `monotone` says whether the
    tested points do; the first crossing, not the last, so that a noise spike at a large dose
    cannot move M* to the top). Censored ends: below tau already at the smallest dose gives
    M* = doses[0] (censored "low": the GEMM tolerates every dose tested); at or above tau at
    every dose gives M* = doses[-1] + 1 (censored "high").
  - Lower M* means more tolerant: the GEMM loses more precision before training suffers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["LEVERS", "damage", "dose_spec", "monotone", "seed_noise", "threshold_bits"]

LEVERS = ("operands", "accumulator")


def dose_spec(lever: str, m: int, p: dict[str, Any]) -> dict[str, Any]:
    """The GemmSpec dict of a GEMM perturbed by `lever` at m mantissa bits (module docstring)."""
    from refsim.studies.training import accumulator_spec, operand_spec

    if lever == "operands":
        return operand_spec(f"e{p['exp_bits']}m{m}", p["rounding"])
    if lever == "accumulator":
        return accumulator_spec(f"e{p['acc_exp_bits']}m{m}", "sequential")
    raise ValueError(f"lever must be one of {', '.join(LEVERS)}; got {lever!r}")


def seed_noise(values: Sequence[float]) -> float:
    """Seed-to-seed standard deviation (ddof 1) of the finite values; NaN for fewer than 2."""
    v = np.asarray([x for x in values if math.isfinite(x)], np.float64)
    return float(v.std(ddof=1)) if len(v) > 1 else math.nan


def damage(treated: float, baseline: float, noise: float) -> float:
    """(treated - baseline) / noise; +inf when the treated run diverged (module docstring)."""
    if not math.isfinite(treated):
        return math.inf
    if not (math.isfinite(baseline) and math.isfinite(noise) and noise > 0):
        return math.nan
    return (treated - baseline) / noise


def threshold_bits(doses: Sequence[int], damages: Sequence[float], tau: float
                   ) -> tuple[float, str]:
    """(M*, censoring: "", "low" or "high") of a damage curve (module docstring); (NaN, "")
    when a damage is NaN."""
    pairs = sorted(zip(doses, damages, strict=True))
    if not pairs or any(math.isnan(d) for _, d in pairs):
        return math.nan, ""
    below = [i for i, (_, d) in enumerate(pairs) if d < tau]
    if not below:
        return float(pairs[-1][0] + 1), "high"
    j = below[0]
    if j == 0:
        return float(pairs[0][0]), "low"
    (m0, d0), (m1, d1) = pairs[j - 1], pairs[j]
    frac = 1.0 if math.isinf(d0) else (d0 - tau) / (d0 - d1)
    return float(m0 + frac * (m1 - m0)), ""


def monotone(doses: Sequence[int], damages: Sequence[float]) -> bool:
    """Whether the damage never rises with more bits over the tested doses."""
    d = [x for _, x in sorted(zip(doses, damages, strict=True))]
    return all(b <= a for a, b in itertools.pairwise(d))
