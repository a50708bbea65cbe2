"""Statistics for the study reports: correlations (plain and partial), paired comparisons,
power, a mixed model, slopes, and the verdict rule that uses them.

Usage rules:
  - Functions return plain floats (NaN when the statistic is undefined, e.g. a constant input
    or fewer than 3 points) and never warn: a report says "undefined" rather than failing.
  - The tests come from scipy.stats and statsmodels, not from formulas written here:
    `spearman` (scipy.stats.spearmanr); `partial_spearman` (Spearman's rho of x and y with the
    covariates' ranks regressed out; its p is statsmodels OLS's t-test of x's coefficient in
    rank(y) ~ rank(x) + rank(covariates), which is the same test); `paired` (scipy's paired
    t-test); `mixed_model` (statsmodels MixedLM, a random intercept per group).
  - Power (statsmodels.stats.power), 80% at two-sided alpha 0.05 by default:
    `detectable_rho(n, covariates)` is the smallest |rho| a (partial) Spearman correlation over
    n points detects, through Fisher's z with Spearman's variance 1.06 / (n - 3 - covariates)
    (Fieller, Hartley & Pearson 1957): NormalIndPower with nobs1 = (n - 3 - covariates) / 1.06.
    Measurement noise in y lowers a correlation by sqrt(reliability) (Spearman's attenuation),
    so `reliability(means, ses)` (the share of the spread of the means that is not
    measurement noise) turns that into the smallest detectable correlation with the true
    values: detectable_rho / sqrt(reliability). `detectable_diff(sd, n)` is the smallest
    paired mean difference detected from n pairs whose differences have standard deviation
    sd (TTestPower: Cohen's d times sd).
  - `decide(estimate, p, detectable, small, sign)` is the verdict rule of every study finding:
    a directional claim (sign +1 or -1) is supported (True) when p < alpha in the claimed
    direction; not supported (False) when p < alpha the other way, or when nothing is found
    although the grid detects effects as small as `small` (detectable <= small); else
    undecided (None). A no-effect claim (sign 0) is not supported when p < alpha, supported
    when nothing is found and detectable <= small, else undecided. `power_text` says it in
    words for the report.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["ALPHA", "POWER", "decide", "detectable_diff", "detectable_rho", "fmt_p",
           "loglog_slope", "mixed_model", "paired", "partial_spearman", "power_text",
           "reliability", "spearman"]

Values = Sequence[float] | np.ndarray  # a sample: a list of numbers or a 1-D array

ALPHA = 0.05
POWER = 0.8
SPEARMAN_VARIANCE = 1.06
"""Var(Fisher z of Spearman's rho) is about 1.06 / (n - 3) (Fieller, Hartley & Pearson 1957)."""


def _finite_pairs(x: Values, y: Values) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(xa) & np.isfinite(ya)
    return xa[keep], ya[keep]


def spearman(x: Values, y: Values) -> dict[str, float]:
    """{"rho", "p", "n"}: Spearman's rank correlation and its two-sided p-value."""
    from scipy import stats

    xa, ya = _finite_pairs(x, y)
    n = len(xa)
    if n < 3 or np.all(xa == xa[0]) or np.all(ya == ya[0]):
        return {"rho": math.nan, "p": math.nan, "n": n}
    res = stats.spearmanr(xa, ya)
    return {"rho": float(res.statistic), "p": float(res.pvalue), "n": n}


def paired(a: Values, b: Values) -> dict[str, float]:
    """Paired comparison of a against b (same seeds): mean of a - b, its standard deviation, the
    count of a < b, the two-sided paired t-test p-value, the 95% t confidence interval of the
    mean difference (ci_low, ci_high; NaN for n < 2 or no spread) and `detectable`, the
    smallest mean difference these pairs detect with 80% power (detectable_diff)."""
    from scipy import stats

    xa, xb = _finite_pairs(a, b)
    d = xa - xb
    n = len(d)
    out = {"mean_diff": float(d.mean()) if n else math.nan,
           "sd_diff": float(d.std(ddof=1)) if n > 1 else math.nan,
           "n": n, "a_lower": int((d < 0).sum()), "p": math.nan, "ci_low": math.nan,
           "ci_high": math.nan, "detectable": math.nan}
    if n >= 2:
        out["detectable"] = detectable_diff(out["sd_diff"], n)
    if n >= 2 and np.ptp(d) > 0:
        out["p"] = float(stats.ttest_rel(xa, xb).pvalue)
        half = float(stats.t.ppf(0.975, n - 1)) * out["sd_diff"] / math.sqrt(n)
        out["ci_low"], out["ci_high"] = out["mean_diff"] - half, out["mean_diff"] + half
    return out


def partial_spearman(x: Values, y: Values,
                     covariates: Sequence[Values] = ()) -> dict[str, float]:
    """{"rho", "p", "n", "covariates"}: Spearman's correlation of x and y given the covariates
    (each a sequence as long as x), over the points where all are finite (module docstring).
    With no covariates it is Spearman's rho and p."""
    from scipy import stats

    cols = [np.asarray(v, np.float64) for v in (x, y, *covariates)]
    keep = np.logical_and.reduce([np.isfinite(c) for c in cols])
    cols = [c[keep] for c in cols]
    n, k = int(keep.sum()), len(covariates)
    out = {"rho": math.nan, "p": math.nan, "n": n, "covariates": k}
    if n < k + 4 or any(np.ptp(c) == 0 for c in cols):
        return out
    ranks = [stats.rankdata(c) for c in cols]
    if k == 0:
        return {**spearman(cols[0], cols[1]), "covariates": 0}
    import statsmodels.api as sm

    z = sm.add_constant(np.column_stack(ranks[2:]))

    def residual(v: np.ndarray) -> np.ndarray:
        return v - z @ np.linalg.lstsq(z, v, rcond=None)[0]

    rx, ry = residual(ranks[0]), residual(ranks[1])
    if np.allclose(rx, 0) or np.allclose(ry, 0):
        return out  # x or y is a function of the covariates' ranks: nothing is left
    out["rho"] = float(np.dot(rx, ry) / math.sqrt(np.dot(rx, rx) * np.dot(ry, ry)))
    fit = sm.OLS(ranks[1], np.column_stack([z, ranks[0]])).fit()
    out["p"] = float(fit.pvalues[-1])
    return out


def detectable_rho(n: int, covariates: int = 0, alpha: float = ALPHA,
                   power: float = POWER) -> float:
    """Smallest |rho| of a (partial) Spearman correlation over n points that a two-sided test
    at `alpha` detects with probability `power` (module docstring); NaN if n is too small."""
    from statsmodels.stats.power import NormalIndPower

    nobs = (n - 3 - covariates) / SPEARMAN_VARIANCE
    if nobs < 1:
        return math.nan
    z = NormalIndPower().solve_power(effect_size=None, nobs1=nobs, alpha=alpha, power=power,
                                     ratio=0)
    return float(math.tanh(z))


def detectable_diff(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest mean of n paired differences with standard deviation sd that a two-sided paired
    t-test at `alpha` detects with probability `power`; NaN if n < 2 or sd is not finite."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return _cohen_d(n, alpha, power) * sd


@functools.lru_cache(maxsize=256)
def _cohen_d(n: int, alpha: float, power: float) -> float:
    """The standardized paired difference detected (statsmodels' root finding is slow, and a
    study asks for the same n many times)."""
    from statsmodels.stats.power import TTestPower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power,
                                     alternative="two-sided")
    return float(np.asarray(d).reshape(-1)[0])


def reliability(means: Values, ses: Values) -> float:
    """Share of the variance of `means` that is not measurement noise: 1 - mean(se^2) /
    var(means), clipped to [0, 1] (NaN for fewer than 3 finite pairs or no spread)."""
    m, e = _finite_pairs(means, ses)
    if len(m) < 3 or np.var(m, ddof=1) == 0:
        return math.nan
    return float(min(1.0, max(0.0, 1.0 - np.mean(e ** 2) / np.var(m, ddof=1))))


def decide(estimate: float, p: float, detectable: float, small: float, sign: int,
           alpha: float = ALPHA) -> bool | None:
    """The verdict (module docstring): True, False or None (undecided)."""
    if not (math.isfinite(estimate) and math.isfinite(p)):
        return None
    significant = p < alpha
    powered = math.isfinite(detectable) and detectable <= small
    if sign == 0:
        return False if significant else (True if powered else None)
    if significant:
        return bool(estimate * sign > 0)
    return False if powered else None


def power_text(detectable: float, small: float, what: str = "|rho|") -> str:
    """'detects |rho| >= 0.38 with 80% power at alpha 0.05 (small: <= 0.4)'."""
    if detectable == math.inf:
        return (f"detects no {what} with {100 * POWER:.0f}% power (the measurements are too "
                f"noisy or too few); small effect: {what} <= {small:g}")
    if not math.isfinite(detectable):
        return f"power undefined (too few points or no spread); small effect: {what} <= {small:g}"
    return (f"detects {what} >= {detectable:.3g} with {100 * POWER:.0f}% power at alpha {ALPHA:g}"
            f" ({'at most' if detectable <= small else 'more than'} the small effect {small:g})")


def mixed_model(y: Values, factors: Mapping[str, Values],
                groups: Sequence[str]) -> dict[str, dict[str, float]]:
    """y ~ factors + a random intercept per group (statsmodels MixedLM, REML), each factor
    standardized to mean 0 and sd 1 first: {factor: {"coef", "ci_low", "ci_high", "p"}} (95%
    Wald intervals); NaN entries when the fit fails or has too few points."""
    names = list(factors)
    nan = {f: {"coef": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}
           for f in names}
    cols = [np.asarray(y, np.float64)] + [np.asarray(factors[f], np.float64) for f in names]
    g = np.asarray(groups)
    keep = np.logical_and.reduce([np.isfinite(c) for c in cols])
    if keep.sum() < len(names) + 3 or len(set(g[keep])) < 2:
        return nan
    endog = cols[0][keep]
    x = []
    for c in cols[1:]:
        c = c[keep]
        if np.std(c) == 0:
            return nan
        x.append((c - c.mean()) / c.std())
    import statsmodels.api as sm
    from statsmodels.regression.mixed_linear_model import MixedLM

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence notes: the NaN check below decides
            fit = MixedLM(endog, sm.add_constant(np.column_stack(x)), groups=g[keep]).fit(
                reml=True)
            ci = np.asarray(fit.conf_int())
            params, pvalues = np.asarray(fit.fe_params), np.asarray(fit.pvalues)
    except (ValueError, np.linalg.LinAlgError):
        return nan
    out = {}
    for i, f in enumerate(names, start=1):
        out[f] = {"coef": float(params[i]), "ci_low": float(ci[i, 0]),
                  "ci_high": float(ci[i, 1]), "p": float(pvalues[i])}
    return out


def loglog_slope(x: Values, y: Values) -> float:
    """Least-squares slope of log(y) against log(x) over the positive finite points."""
    xa, ya = _finite_pairs(x, y)
    keep = (xa > 0) & (ya > 0)
    if keep.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(xa[keep]), np.log(ya[keep]), 1)[0])


def fmt_p(p: float) -> str:
    """A p-value for a report: two significant digits, "< 1e-15" below double precision's
    resolution of 1 - p (scipy returns exactly 0 for a perfect rank correlation), "n/a" if NaN."""
    if not math.isfinite(p):
        return "n/a"
    return "< 1e-15" if p < 1e-15 else f"{p:.2g}"
