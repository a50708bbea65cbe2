"""Claims and their verdicts: an effect with its standard error, a declared smallest effect of
interest (SESOI), a difference test, an equivalence test, Holm's correction and power.

Usage rules:
  - `claim(id, statement, effect=, se=, sesoi=, direction=, family=, measure=, design=, n=,
    units=, df=None)` records one claim as a study computed it: `effect` is the estimate in
    `units` (a slope in bits per doubling, a Fisher-z of a correlation, a paired difference in
    seed-sd units, ...), `se` its standard error, `df` the degrees of freedom of its t
    distribution (None: normal). `direction` is the sign the claim predicts (+1 or -1), or 0
    for a claim of no effect. `sesoi` (> 0, in the effect's units) is declared in the study's
    parameters before it runs, never derived from its data.
  - Two tests per claim, both at ALPHA: the two-sided difference test of effect = 0 (p), and
    the two one-sided tests of |effect| >= sesoi (Schuirmann 1987; p_tost is the larger of the
    two one-sided p-values, so p_tost < alpha exactly when the 1 - 2 alpha confidence interval
    lies inside +-sesoi).
  - `finalize(claims)` corrects each family's p and p_tost separately with Holm's step-down
    procedure (Holm 1979; statsmodels multipletests) and adds the verdict from the corrected
    values:
      contradicted  the difference is significant against the claim: the opposite sign of a
                    directional claim, or any sign for a claim of no effect;
      supported     the difference is significant in the claimed direction (direction +-1),
                    or, for a claim of no effect, the equivalence test is significant;
      equivalent    a directional claim whose effect is, significantly, inside +-sesoi: no
                    effect as large as the smallest one of interest;
      undecided     neither test is significant.
    A claim whose difference and equivalence tests are both significant (a real effect smaller
    than the SESOI) is, for a directional claim, "equivalent" (the effect is too small to
    matter), and for a no-effect claim "supported" (the effect is inside the SESOI): the
    SESOI, declared beforehand, says what matters.
  - Power: `power_at_sesoi` is the probability that the two-sided difference test at ALPHA
    (uncorrected) detects a true effect of size sesoi given se; `power_equivalence` the
    probability that the equivalence test succeeds when the true effect is 0. Both use the t
    distribution with df (normal when None). A claim with power_at_sesoi < POWER is listed in
    the report as underpowered.
  - Every field is a plain float, int or string (JSON-safe after report.clean).
  - `as_findings(claims)` turns finalized claims into a study's findings (refsim.studies.report:
    id, claim, supported, evidence): supported is True for "supported", False for
    "contradicted" and "equivalent" (a directional claim with no effect beyond the SESOI is not
    what the claim says), None for "undecided".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["CLAIM_KEYS", "VERDICTS", "as_findings", "claim", "finalize", "fisher_z", "power_at"]

ALPHA = 0.05
POWER = 0.8
VERDICTS = ("supported", "contradicted", "equivalent", "undecided")
CLAIM_KEYS = ("claim", "statement", "verdict", "effect", "ci", "sesoi", "power_at_sesoi", "p",
              "p_holm", "n", "design")
"""The keys docs/results/claims.json promises for every claim (more are present)."""


def _dist(df: float | None):
    from scipy import stats

    return stats.norm() if df is None or not math.isfinite(df) else stats.t(df)


def power_at(effect: float, se: float, df: float | None = None, alpha: float = ALPHA) -> float:
    """Probability that a two-sided test at alpha rejects 0 when the true effect is `effect`
    and the estimate has standard error se (NaN if se is not a positive finite number)."""
    if not (math.isfinite(se) and se > 0 and math.isfinite(effect)):
        return math.nan
    d = _dist(df)
    crit = float(d.ppf(1 - alpha / 2))
    shift = abs(effect) / se
    return float(d.sf(crit - shift) + d.cdf(-crit - shift))


def _power_equivalence(sesoi: float, se: float, df: float | None, alpha: float) -> float:
    if not (math.isfinite(se) and se > 0):
        return math.nan
    d = _dist(df)
    crit = float(d.ppf(1 - alpha))
    return float(max(0.0, 2 * d.cdf(sesoi / se - crit) - 1))


def fisher_z(rho: float, n: int, covariates: int = 0, variance: float = 1.06
             ) -> tuple[float, float]:
    """(atanh(rho), its standard error) for a (partial) Spearman correlation over n points:
    Var(z) about variance / (n - 3 - covariates), 1.06 for Spearman's rho (Fieller, Hartley &
    Pearson 1957). NaN standard error when n is too small."""
    dof = n - 3 - covariates
    se = math.sqrt(variance / dof) if dof > 0 else math.nan
    return (math.atanh(max(-0.999999, min(0.999999, rho))) if math.isfinite(rho) else math.nan,
            se)


def claim(id: str, statement: str, *, effect: float, se: float, sesoi: float, direction: int,
          family: str, measure: str, design: str, n: int, units: str,
          df: float | None = None) -> dict[str, Any]:
    """One claim's tests before Holm's correction (module docstring)."""
    if direction not in (-1, 0, 1):
        raise ValueError(f"claim {id}: direction must be -1, 0 or +1; got {direction!r}")
    if not (isinstance(sesoi, int | float) and math.isfinite(sesoi) and sesoi > 0):
        raise ValueError(f"claim {id}: sesoi must be a positive number; got {sesoi!r}")
    d = _dist(df)
    ok = math.isfinite(effect) and math.isfinite(se) and se > 0
    p = p_tost = math.nan
    ci = ci90 = [math.nan, math.nan]
    if ok:
        t = effect / se
        p = float(2 * d.sf(abs(t)))
        p_tost = float(max(d.sf((effect + sesoi) / se), d.cdf((effect - sesoi) / se)))
        h95, h90 = float(d.ppf(0.975)) * se, float(d.ppf(0.95)) * se
        ci, ci90 = [effect - h95, effect + h95], [effect - h90, effect + h90]
    return {"claim": id, "statement": statement, "family": family, "direction": direction,
            "effect": float(effect), "se": float(se), "df": df, "ci": ci, "ci90": ci90,
            "sesoi": float(sesoi), "units": units, "p": p, "p_tost": p_tost,
            "power_at_sesoi": power_at(sesoi, se, df),
            "power_equivalence": _power_equivalence(sesoi, se, df, ALPHA),
            "n": int(n), "design": design, "measure": measure,
            "p_holm": math.nan, "p_tost_holm": math.nan, "verdict": "undecided"}


def _holm(ps: Sequence[float]) -> list[float]:
    from statsmodels.stats.multitest import multipletests

    idx = [i for i, v in enumerate(ps) if math.isfinite(v)]
    out = [math.nan] * len(ps)
    if idx:
        adjusted = multipletests([ps[i] for i in idx], alpha=ALPHA, method="holm")[1]
        for i, v in zip(idx, adjusted, strict=True):
            out[i] = float(v)
    return out


def _verdict(c: dict[str, Any]) -> str:
    diff = math.isfinite(c["p_holm"]) and c["p_holm"] < ALPHA
    equiv = math.isfinite(c["p_tost_holm"]) and c["p_tost_holm"] < ALPHA
    sign = 1 if c["effect"] > 0 else -1
    if c["direction"] == 0:
        if equiv:
            return "supported"
        return "contradicted" if diff else "undecided"
    if equiv:
        return "equivalent"
    if diff:
        return "supported" if sign == c["direction"] else "contradicted"
    return "undecided"


def finalize(claims: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The claims with p_holm, p_tost_holm and verdict filled in, Holm within each family
    (module docstring); the input order is kept."""
    out = [dict(c) for c in claims]
    ids = [c["claim"] for c in out]
    if len(set(ids)) != len(ids):
        raise ValueError(f"claim ids must be unique; repeated: "
                         f"{sorted({i for i in ids if ids.count(i) > 1})}")
    for family in dict.fromkeys(c["family"] for c in out):
        members = [c for c in out if c["family"] == family]
        for key in ("p", "p_tost"):
            for c, v in zip(members, _holm([c[key] for c in members]), strict=True):
                c[f"{key}_holm"] = v
    for c in out:
        c["verdict"] = _verdict(c)
    return out


def as_findings(claims: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Findings (refsim.studies.report) of finalized claims (module docstring)."""
    out = []
    for c in claims:
        lo, hi = c["ci"]
        out.append({
            "id": c["claim"], "claim": c["statement"],
            "supported": {"supported": True, "undecided": None}.get(c["verdict"], False),
            "evidence": (f"{c['verdict']}: effect {c['effect']:+.3g} {c['units']} (95% CI "
                         f"[{lo:+.3g}, {hi:+.3g}]), SESOI {c['sesoi']:.3g}, p {c['p']:.2g} "
                         f"(Holm {c['p_holm']:.2g}), equivalence p {c['p_tost']:.2g} (Holm "
                         f"{c['p_tost_holm']:.2g}), power at the SESOI "
                         f"{c['power_at_sesoi']:.2f}, n {c['n']}; {c['design']}; "
                         f"{c['measure']}"),
            "power": {"power_at_sesoi": c["power_at_sesoi"], "sesoi": c["sesoi"]}})
    return out
