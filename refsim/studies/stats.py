"""Small statistics for the study reports: Spearman correlation, paired comparisons, slopes.

Usage rules:
  - Functions return plain floats (NaN when the statistic is undefined, e.g. a constant input
    or fewer than 3 points) and never warn: a report says "undefined" rather than failing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["fmt_p", "loglog_slope", "paired", "spearman"]


def _finite_pairs(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(xa) & np.isfinite(ya)
    return xa[keep], ya[keep]


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """{"rho", "p", "n"}: Spearman's rank correlation and its two-sided p-value."""
    from scipy import stats

    xa, ya = _finite_pairs(x, y)
    n = len(xa)
    if n < 3 or np.all(xa == xa[0]) or np.all(ya == ya[0]):
        return {"rho": math.nan, "p": math.nan, "n": n}
    res = stats.spearmanr(xa, ya)
    return {"rho": float(res.statistic), "p": float(res.pvalue), "n": n}


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Paired comparison of a against b (same seeds): mean of a - b, its standard deviation, the
    count of a < b, the two-sided paired t-test p-value and the 95% t confidence interval of the
    mean difference (ci_low, ci_high; NaN for n < 2 or no spread)."""
    from scipy import stats

    xa, xb = _finite_pairs(a, b)
    d = xa - xb
    n = len(d)
    out = {"mean_diff": float(d.mean()) if n else math.nan,
           "sd_diff": float(d.std(ddof=1)) if n > 1 else math.nan,
           "n": n, "a_lower": int((d < 0).sum()), "p": math.nan, "ci_low": math.nan,
           "ci_high": math.nan}
    if n >= 2 and np.ptp(d) > 0:
        out["p"] = float(stats.ttest_rel(xa, xb).pvalue)
        half = float(stats.t.ppf(0.975, n - 1)) * out["sd_diff"] / math.sqrt(n)
        out["ci_low"], out["ci_high"] = out["mean_diff"] - half, out["mean_diff"] + half
    return out


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
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
