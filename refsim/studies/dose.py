"""Dose-response helpers shared by the tolerance and causal studies: operand and accumulator
doses, paired damage in seed-noise units, and the threshold bits M*.

Usage rules:
  - A dose is a width m in bits. `dose_spec(lever, m, p)` is the GemmSpec dict of one
    perturbed GEMM: lever "operands" casts both operands (rounding p["rounding"], saturating)
    with fp32 accumulation to the format `operand_format(m, p)`: family "int" (the published
    grids) is int{m}, m bits in two's complement, with per-tensor scaling (refsim.nn.numerics:
    amax|A| maps to the format's largest value, so the dose is the grid's resolution, never
    its range); family "float" is e{exp_bits}m{m} unscaled (m mantissa bits). Why int: on the
    float ladder e5m0..e5m4, 118 of 131 GEMMs took even e5m0 without damage (the run at commit
    3cfe2d5, docs/studies.md), so M* was censored for 90% of them; int2..int6 put the
    thresholds inside the range (scripts/dose_pilot.py on mlp-down and transformer-1: int2
    damaged 32 of 38 GEMMs by > 1 seed-sd, int4 3). Lever "accumulator" keeps the float32
    operands and accumulates sequentially in e{acc_exp_bits}m{m} (RNE).
  - `need_operand_family(study, p)` checks "operand_family", "exp_bits" and "rounding";
    `need_operand_doses(study, p)` those and "doses"; `dose_name(m, p)` names a dose's format
    (tolerance.csv columns, reports).
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

__all__ = ["LEVERS", "OPERAND_FAMILIES", "damage", "dose_name", "dose_spec", "monotone",
           "need_operand_doses", "need_operand_family", "operand_format", "operand_scaling",
           "seed_noise", "threshold_bits"]

LEVERS = ("operands", "accumulator")
OPERAND_FAMILIES = {"int": (2, 16), "float": (0, 22)}
"""Operand dose family -> the smallest and largest width m allowed (module docstring)."""


def operand_format(m: int, p: dict[str, Any]) -> str:
    """The operand format of dose m under p's operand_family (module docstring)."""
    return f"int{m}" if p["operand_family"] == "int" else f"e{p['exp_bits']}m{m}"


def operand_scaling(p: dict[str, Any]) -> str:
    """The operands' scaling under p's operand_family: "tensor" for int, "none" for float."""
    return "tensor" if p["operand_family"] == "int" else "none"


def dose_name(m: int, p: dict[str, Any], lever: str = "operands") -> str:
    """The format name of dose m of `lever`: 'int3', 'e5m2', or the accumulator's 'e8m7'."""
    return operand_format(m, p) if lever == "operands" else f"e{p['acc_exp_bits']}m{m}"


def need_operand_family(study: str, p: dict[str, Any]) -> tuple[int, int]:
    """Check "operand_family", "exp_bits" and "rounding" (ValueError naming the one that is
    wrong); the family's smallest and largest width."""
    from refsim.formats.policy import ROUNDINGS
    from refsim.studies.params import need

    family = p["operand_family"]
    need(family in OPERAND_FAMILIES, study, "operand_family",
         f"one of {', '.join(OPERAND_FAMILIES)}", family)
    need(isinstance(p["exp_bits"], int) and 2 <= p["exp_bits"] <= 8, study, "exp_bits",
         "an int in [2, 8]", p["exp_bits"])
    need(p["rounding"] in ROUNDINGS, study, "rounding", f"one of {', '.join(ROUNDINGS)}",
         p["rounding"])
    return OPERAND_FAMILIES[family]


def need_operand_doses(study: str, p: dict[str, Any]) -> None:
    """need_operand_family, and "doses": ascending distinct widths of the family."""
    from refsim.studies.params import need

    lo, hi = need_operand_family(study, p)
    need(len(p["doses"]) >= 2 and all(isinstance(m, int) and not isinstance(m, bool)
                                      and lo <= m <= hi for m in p["doses"])
         and sorted(set(p["doses"])) == list(p["doses"]), study, "doses",
         f"at least two ascending distinct ints in [{lo}, {hi}] (operand_family "
         f"{p['operand_family']})", p["doses"])


def dose_spec(lever: str, m: int, p: dict[str, Any]) -> dict[str, Any]:
    """The GemmSpec dict of a GEMM perturbed by `lever` at width m (module docstring)."""
    from refsim.studies.training import accumulator_spec, operand_spec

    if lever == "operands":
        return operand_spec(operand_format(m, p), p["rounding"], scaling=operand_scaling(p))
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
