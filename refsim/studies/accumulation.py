"""Accumulation study: dot-product error against the reduction length K, with the error bounds,
stagnation and the variance retention ratio of partial sums.

Usage rules:
  - A dot product of K terms t_k = x_k y_k (x, y float32; each product exact in float64, so
    summing the products with refsim.sum is the dot product with exact products) is summed in
    each accumulator format, rounding and order; the reference is math.fsum of the same terms
    (correctly rounded in float64, far below every accumulator's error).
  - Data: "zero-mean" (x, y standard normal) or "one-signed" (x, y uniform in [0, 1)). Trial t
    of a data kind draws from NumPy streams seeded [seed, t, kind, operand], and every K uses
    the first K draws, so the points of one trial along K are the running sum of one sequence.
  - Error measures per trial: `norm_err` = |s - S| / sum|t_k| (what the bounds bound), `rel_err`
    = |s - S| / |S|, `ratio` = s / S (stagnation shows as a ratio falling below 1 on one-signed
    data). An overflowed sum (Inf or NaN) counts as `overflow` and is left out of the errors.
  - Bounds, with u = 2^-(p) for p significand bits (stochastic rounding: 2u, one ulp):
    deterministic gamma_K = K u / (1 - K u) (infinite once K u >= 1) and Higham & Mary's
    probabilistic lambda sqrt(K) u (parameter `lam`).
  - Variance retention ratio: zero-mean terms summed sequentially with RNE in e8mM
    accumulators (M = `vrr_mantissas`); VRR(K) = mean(s^2) / mean(S^2) over `vrr_trials`
    trials. Its knee is where it first falls below `vrr_threshold` (log2 K interpolated
    linearly); Sakr et al. predict about 2 in log2 K per mantissa bit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from refsim.studies import stats
from refsim.studies.params import need, need_format
from refsim.studies.report import said, save_figure

__all__ = ["FULL", "QUICK", "TITLE", "VERSION", "analyze", "check", "grid", "plot", "run_one",
           "section"]

VERSION = 1
TITLE = "Accumulation: dot-product error against the reduction length"
NAME = "accumulation"

ORDER_NAMES = ("sequential", "pairwise", "chunked", "kahan")
DATA = ("zero-mean", "one-signed")

QUICK: dict[str, Any] = {
    "log2_k": [4, 6, 8, 10, 12, 14],
    "formats": ["fp32", "bf16", "fp16", "e6m9", "e6m5"],
    "roundings": ["rne", "sr"],
    "orders": list(ORDER_NAMES),
    "data": list(DATA),
    "chunk": 64,
    "trials": 8,
    "lam": 3.0,
    "vrr_mantissas": [2, 3, 4, 5],
    "vrr_log2_k": list(range(4, 17)),
    "vrr_trials": 128,
    "vrr_threshold": 0.75,
    "seed": 0,
}
FULL: dict[str, Any] = {
    **QUICK,
    "log2_k": list(range(4, 21)),
    "formats": ["fp32", "bf16", "fp16", "e6m9", "e6m7", "e6m5"],
    "trials": 16,
    "vrr_mantissas": [2, 3, 4, 5, 6, 7, 8],
    "vrr_log2_k": list(range(4, 21)),
    "vrr_trials": 128,
}


def _fmt(name: str):
    from refsim.formats import FloatFormat, get_format

    fmt = get_format(name)
    if not isinstance(fmt, FloatFormat):
        raise ValueError(f"study {NAME}: accumulator {name!r} is not a floating-point format")
    return fmt


def check(p: dict[str, Any]) -> None:
    """Raise ValueError naming the first bad parameter."""
    from refsim.formats.policy import ROUNDINGS

    for key, hi in (("log2_k", 24), ("vrr_log2_k", 24)):
        need(bool(p[key]) and all(isinstance(v, int) and 1 <= v <= hi for v in p[key]), NAME,
             key, f"a non-empty list of ints in [1, {hi}]", p[key])
    need(bool(p["formats"]) and all(isinstance(v, str) for v in p["formats"]), NAME, "formats",
         "a non-empty list of accumulator format names (e.g. fp16, e6m9)", p["formats"])
    for name in p["formats"]:
        need_format(NAME, "formats", name)
        need(_fmt(name).man_bits >= 1, NAME, "formats", "floating-point formats", name)
    need(bool(p["roundings"]) and all(r in ROUNDINGS for r in p["roundings"]), NAME,
         "roundings", f"a non-empty list of {', '.join(ROUNDINGS)}", p["roundings"])
    need(bool(p["orders"]) and all(o in ORDER_NAMES for o in p["orders"]), NAME, "orders",
         f"a non-empty list of {', '.join(ORDER_NAMES)}", p["orders"])
    need(bool(p["data"]) and all(d in DATA for d in p["data"]), NAME, "data",
         f"a non-empty list of {', '.join(DATA)}", p["data"])
    for key in ("chunk", "trials", "vrr_trials"):
        need(isinstance(p[key], int) and p[key] >= 1, NAME, key, "a positive int", p[key])
    need(p["vrr_trials"] >= 2, NAME, "vrr_trials", "at least 2", p["vrr_trials"])
    need(isinstance(p["lam"], int | float) and p["lam"] > 0, NAME, "lam", "a positive number",
         p["lam"])
    need(all(isinstance(m, int) and 1 <= m <= 23 for m in p["vrr_mantissas"]), NAME,
         "vrr_mantissas", "a list of ints in [1, 23]", p["vrr_mantissas"])
    need(0 < p["vrr_threshold"] < 1, NAME, "vrr_threshold", "a number in (0, 1)",
         p["vrr_threshold"])
    need(isinstance(p["seed"], int) and p["seed"] >= 0, NAME, "seed", "an int >= 0", p["seed"])


def grid(p: dict[str, Any]) -> list[dict[str, Any]]:
    """One run per (data, format, rounding, order, K), then one per (VRR mantissa, K)."""
    runs = [{"part": "error", "data": d, "fmt": f, "rounding": r, "order": o, "log2_k": lk,
             "trials": p["trials"], "chunk": p["chunk"], "seed": p["seed"]}
            for d in p["data"] for f in p["formats"] for r in p["roundings"]
            for o in p["orders"] for lk in p["log2_k"]]
    runs += [{"part": "vrr", "mant": m, "log2_k": lk, "trials": p["vrr_trials"],
              "seed": p["seed"]} for m in p["vrr_mantissas"] for lk in p["vrr_log2_k"]]
    return runs


def terms(data: str, trials: int, k: int, seed: int) -> np.ndarray:
    """The (trials, k) float64 products x * y of `data` (module docstring)."""
    code = DATA.index(data)
    out = np.empty((trials, k), np.float64)
    for t in range(trials):
        xs = []
        for operand in range(2):
            rng = np.random.default_rng([seed, t, code, operand])
            v = rng.standard_normal(k) if data == "zero-mean" else rng.random(k)
            xs.append(v.astype(np.float32).astype(np.float64))
        out[t] = xs[0] * xs[1]  # exact: two 24-bit significands fit in 53 bits
    return out


def _accum(cfg: dict[str, Any]):
    from refsim.specs import AccumSpec

    order = cfg["order"]
    if order == "chunked":
        return AccumSpec(cfg["fmt"], cfg["rounding"], "chunked", chunk=cfg["chunk"])
    return AccumSpec(cfg["fmt"], cfg["rounding"], order)


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    """One grid point: per-trial errors (part "error") or the variance ratio (part "vrr")."""
    import refsim

    k = 1 << cfg["log2_k"]
    if cfg["part"] == "vrr":
        t = terms("zero-mean", cfg["trials"], k, cfg["seed"])
        exact = np.array([math.fsum(row) for row in t])
        s = np.asarray(refsim.sum(t, f"e8m{cfg['mant']}", axis=-1), np.float64)
        return {"vrr": float(np.mean(s * s) / np.mean(exact * exact))}
    t = terms(cfg["data"], cfg["trials"], k, cfg["seed"])
    exact = np.array([math.fsum(row) for row in t])
    scale = np.array([math.fsum(row) for row in np.abs(t)])
    s = np.asarray(refsim.sum(t, _accum(cfg), axis=-1, seed=cfg["seed"]), np.float64)
    ok = np.isfinite(s)
    err = np.abs(s - exact)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(exact != 0, err / np.abs(exact), np.inf)
        ratio = np.where(exact != 0, s / exact, np.nan)
    return {"norm_err": [float(v) for v in (err / scale)[ok]],
            "rel_err": [float(v) for v in rel[ok]],
            "ratio": [float(v) for v in ratio[ok]],
            "overflow": int((~ok).sum())}


def warm_key(cfg: dict[str, Any]) -> tuple:
    """Runs with one key use the same compiled kernels."""
    return (cfg["part"], cfg.get("order"), cfg.get("rounding"))


def unit_roundoff(fmt_name: str, rounding: str) -> float:
    """u = 2^-p (p significand bits); 2u for stochastic rounding (one ulp)."""
    u = 2.0 ** -(_fmt(fmt_name).man_bits + 1)
    return 2 * u if rounding == "sr" else u


def bounds(fmt_name: str, rounding: str, k: int, lam: float) -> tuple[float, float]:
    """(deterministic gamma_K, probabilistic lambda sqrt(K) u) for one accumulator."""
    u = unit_roundoff(fmt_name, rounding)
    det = k * u / (1 - k * u) if k * u < 1 else math.inf
    return det, lam * math.sqrt(k) * u


def _median(v: list[float]) -> float:
    return float(np.median(v)) if v else math.nan


def _knee(log2_k: list[int], vrr: list[float], threshold: float) -> float:
    """log2 K where VRR first falls below threshold (linear interpolation); NaN if never."""
    for i, v in enumerate(vrr):
        if v < threshold:
            if i == 0:
                return float(log2_k[0])
            k0, k1, v0, v1 = log2_k[i - 1], log2_k[i], vrr[i - 1], v
            return float(k0 + (v0 - threshold) / (v0 - v1) * (k1 - k0))
    return math.nan


def _fact_checks() -> list[dict[str, Any]]:
    """Two numbers from docs/references.md recomputed here (fp16 running sum of 1.0; e5m2 terms in
    a (1,6,9) accumulator, one seed)."""
    import refsim

    out = [{"check": "fp16 RNE running sum of 1.0 (4096 terms) stops at", "expected": 2048.0,
            "got": float(refsim.sum(np.ones(4096), "fp16"))}]
    for n, expected in ((1024, 0.015), (4096, 0.49), (16384, 0.88)):
        x = refsim.quantize(np.random.default_rng(0).random(n), "e5m2")
        s = float(refsim.sum(x, "e6m9"))
        exact = math.fsum(x)
        out.append({"check": f"U(0,1) rounded to e5m2, e6m9 sequential RNE sum, n={n}: "
                    "relative error", "expected": expected, "got": abs(s - exact) / exact})
    return out


def analyze(p: dict[str, Any], configs: list[dict[str, Any]],
            results: list[dict[str, Any]]) -> tuple[list, dict, list]:
    rows = []
    vrr: dict[int, dict[int, float]] = {}
    for cfg, res in zip(configs, results, strict=True):
        if cfg["part"] == "vrr":
            vrr.setdefault(cfg["mant"], {})[cfg["log2_k"]] = res["vrr"]
            rows.append({"part": "vrr", "fmt": f"e8m{cfg['mant']}", "rounding": "rne",
                         "order": "sequential", "data": "zero-mean", "k": 1 << cfg["log2_k"],
                         "vrr": res["vrr"]})
            continue
        k = 1 << cfg["log2_k"]
        det, prob = bounds(cfg["fmt"], cfg["rounding"], k, p["lam"])
        ne = res["norm_err"]
        rows.append({"part": "error", "data": cfg["data"], "fmt": cfg["fmt"],
                     "rounding": cfg["rounding"], "order": cfg["order"], "k": k,
                     "median_norm_err": _median(ne), "max_norm_err": max(ne, default=math.nan),
                     "median_rel_err": _median(res["rel_err"]),
                     "mean_ratio": float(np.mean(res["ratio"])) if res["ratio"] else math.nan,
                     "overflow": res["overflow"], "trials": cfg["trials"],
                     "bound_det": det, "bound_prob": prob,
                     "within_det": sum(v <= det for v in ne),
                     "within_prob": sum(v <= prob for v in ne)})
    err_rows = [r for r in rows if r["part"] == "error"]
    # Growth of the error with K: slope of log(median error) on log K per configuration.
    slopes = []
    stagnation = []
    for d in p["data"]:
        for f in p["formats"]:
            for r in p["roundings"]:
                for o in p["orders"]:
                    sel = [x for x in err_rows if (x["data"], x["fmt"], x["rounding"],
                                                   x["order"]) == (d, f, r, o)]
                    slopes.append({"data": d, "fmt": f, "rounding": r, "order": o,
                                   "slope": stats.loglog_slope([x["k"] for x in sel],
                                                               [x["median_norm_err"]
                                                                for x in sel])})
                    if d == "one-signed":
                        low = [x["k"] for x in sel if x["mean_ratio"] < 0.9
                               or x["overflow"] == x["trials"]]
                        stagnation.append({"fmt": f, "rounding": r, "order": o,
                                           "first_k_ratio_below_0.9": min(low, default=None),
                                           "last_ratio": sel[-1]["mean_ratio"] if sel
                                           else math.nan})
    knees = {m: _knee(sorted(v), [v[k] for k in sorted(v)], p["vrr_threshold"])
             for m, v in sorted(vrr.items())}
    ms = [m for m in knees if math.isfinite(knees[m])]
    knee_slope = (float(np.polyfit(ms, [knees[m] for m in ms], 1)[0]) if len(ms) >= 2
                  else math.nan)
    within_prob = sum(x["within_prob"] for x in err_rows)
    total = sum(x["trials"] - x["overflow"] for x in err_rows)
    within_det = sum(x["within_det"] for x in err_rows)
    summary = {"slopes": slopes, "stagnation": stagnation,
               "vrr": {str(m): {str(k): v[k] for k in sorted(v)} for m, v in vrr.items()},
               "knees_log2_k": {str(m): knees[m] for m in knees}, "knee_slope": knee_slope,
               "vrr_threshold": p["vrr_threshold"],
               "within_det": within_det, "within_prob": within_prob, "trials_total": total,
               "lam": p["lam"], "checks": _fact_checks(), "rows": err_rows}
    findings = _findings(p, summary)
    return rows, summary, findings


def _findings(p: dict[str, Any], s: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    calm = {(x["fmt"], x["rounding"]) for x in s["stagnation"] if x["order"] == "sequential"
            and x["first_k_ratio_below_0.9"] is None}
    grow = [x["slope"] for x in s["slopes"] if x["data"] == "one-signed"
            and x["order"] == "sequential" and (x["fmt"], x["rounding"]) in calm
            and math.isfinite(x["slope"])]
    if grow:
        med = float(np.median(grow))
        out.append({"id": "sqrt-growth", "claim": "where a sequential sum does not stagnate "
                    "(one-signed data), its error grows about like sqrt(K), not K (log-log "
                    "slope near 0.5)", "supported": bool(0.3 <= med <= 0.7),
                    "evidence": f"median slope {med:.2f} over {len(grow)} accumulator/rounding "
                    f"pairs (K = 2^{min(p['log2_k'])}..2^{max(p['log2_k'])}, {p['trials']} "
                    "trials)"})
    tot = s["trials_total"]
    if tot:
        out.append({"id": "bounds", "claim": "every error lies within the deterministic bound "
                    "gamma_K", "supported": s["within_det"] == tot,
                    "evidence": f"{s['within_det']}/{tot} trials within gamma_K, "
                    f"{s['within_prob']}/{tot} within {s['lam']:g} sqrt(K) u"})
    rne = [x for x in s["stagnation"] if x["rounding"] == "rne" and x["order"] == "sequential"]
    sr = [x for x in s["stagnation"] if x["rounding"] == "sr" and x["order"] == "sequential"]
    if rne and sr:
        n_rne = sum(x["first_k_ratio_below_0.9"] is not None for x in rne)
        n_sr = sum(x["first_k_ratio_below_0.9"] is not None for x in sr)
        out.append({"id": "stagnation", "claim": "one-signed data: sequential RNE sums "
                    "stagnate in narrow accumulators and SR does not",
                    "supported": bool(n_rne > n_sr),
                    "evidence": f"computed/exact fell below 0.9 for {n_rne}/{len(rne)} "
                    f"accumulators with RNE and {n_sr}/{len(sr)} with SR"})
    if math.isfinite(s["knee_slope"]):
        out.append({"id": "vrr-knee", "claim": "the variance-retention knee moves by about 2 "
                    "in log2 K per accumulator mantissa bit (Sakr et al. 2019)",
                    "supported": bool(1.5 <= s["knee_slope"] <= 2.5),
                    "evidence": f"fitted {s['knee_slope']:.2f} per bit (knees at log2 K = " +
                    ", ".join(f"{v:.1f} for m={m}" for m, v in s["knees_log2_k"].items()
                              if v is not None and math.isfinite(v)) + ")"})
    return out


def plot(s: dict[str, Any], out: Path) -> list[str]:
    from refsim.studies.report import pyplot

    plt = pyplot()
    rows = s["rows"]
    files = []
    datas = list(dict.fromkeys(r["data"] for r in rows))
    orders = list(dict.fromkeys(r["order"] for r in rows))
    fmts = list(dict.fromkeys(r["fmt"] for r in rows))
    colors = {f: plt.cm.tab10(i % 10) for i, f in enumerate(fmts)}
    if rows:
        fig, axes = plt.subplots(len(datas), len(orders), figsize=(4 * len(orders),
                                 3.4 * len(datas)), squeeze=False, sharex=True)
        for i, d in enumerate(datas):
            for j, o in enumerate(orders):
                ax = axes[i][j]
                for f in fmts:
                    for r, style in (("rne", "-"), ("sr", ":")):
                        sel = [x for x in rows if (x["data"], x["order"], x["fmt"],
                                                   x["rounding"]) == (d, o, f, r)]
                        pts = [(x["k"], x["median_norm_err"]) for x in sel
                               if x["median_norm_err"] and x["median_norm_err"] > 0]
                        if pts:
                            ax.loglog(*zip(*pts, strict=True), style, color=colors[f],
                                      label=f"{f} {r}")
                        if r == "rne" and sel and o == "sequential":
                            ks = [x["k"] for x in sel]
                            ax.loglog(ks, [x["bound_prob"] for x in sel], "--", lw=0.8,
                                      color=colors[f])
                            det = [(x["k"], x["bound_det"]) for x in sel
                                   if x["bound_det"] is not None and math.isfinite(
                                       x["bound_det"])]
                            if det:
                                ax.loglog(*zip(*det, strict=True), "-.", lw=0.6,
                                          color=colors[f])
                ax.set_title(f"{d}, {o}", fontsize=9)
                ax.set_xlabel("K")
                ax.set_ylabel("|s - S| / sum|t|")
        axes[0][0].legend(fontsize=6, ncol=2)
        fig.suptitle("Dot-product error (median over trials); sequential panels: "
                     f"--: {s['lam']:g} sqrt(K) u, -.: gamma_K (RNE)", fontsize=9)
        files.append(save_figure(fig, out, "error_vs_k.png"))
        one = [x for x in rows if x["data"] == "one-signed" and x["order"] == "sequential"]
        if one:
            fig, ax = plt.subplots(figsize=(6, 4))
            for f in fmts:
                for r, style in (("rne", "-"), ("sr", ":")):
                    sel = [x for x in one if (x["fmt"], x["rounding"]) == (f, r)
                           and x["mean_ratio"] is not None and math.isfinite(x["mean_ratio"])]
                    if sel:
                        ax.semilogx([x["k"] for x in sel], [x["mean_ratio"] for x in sel],
                                    style, color=colors[f], label=f"{f} {r}")
            ax.set_xlabel("K")
            ax.set_ylabel("computed / exact")
            ax.set_title("Stagnation: one-signed data, sequential order")
            ax.legend(fontsize=7, ncol=2)
            files.append(save_figure(fig, out, "stagnation.png"))
    if s["vrr"]:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for m, curve in s["vrr"].items():
            ks = [int(k) for k in curve]
            ax.semilogx([2 ** k for k in ks], list(curve.values()), "o-", ms=3, label=f"m={m}")
        ax.axhline(s["vrr_threshold"], color="gray", lw=0.6)
        ax.set_xlabel("K")
        ax.set_ylabel("VRR = E[s^2] / E[S^2]")
        ax.set_title("Variance retention, e8mM accumulators, sequential RNE")
        ax.legend(fontsize=7)
        pts = [(int(m), v) for m, v in s["knees_log2_k"].items()
               if v is not None and math.isfinite(v)]
        if pts:
            ax2.plot(*zip(*pts, strict=True), "o-")
        ax2.set_xlabel("accumulator mantissa bits m")
        ax2.set_ylabel("knee, log2 K")
        ax2.set_title(f"Knee: {s['knee_slope']:.2f} per bit (predicted about 2)")
        files.append(save_figure(fig, out, "vrr.png"))
    return files


def _fmt_num(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def section(doc: dict[str, Any]) -> str:
    s, p = doc["summary"], doc["params"]
    lines = [f"## {TITLE}", "",
             f"Dot products of K = 2^{min(p['log2_k'])}..2^{max(p['log2_k'])} exact products "
             f"(float32 operands), {p['trials']} trials per point, accumulators "
             f"{', '.join(p['formats'])}, roundings {', '.join(p['roundings'])}, orders "
             f"{', '.join(p['orders'])} (chunks of {p['chunk']} in the same format), "
             f"seed {p['seed']}; {doc['grid']['runs']} runs ({doc['grid']['cached']} cached), "
             f"{doc['seconds']:.0f} s.", ""]
    lines += [f"![error against K]({f})" for f in doc["plots"] if f == "error_vs_k.png"]
    zm = [x for x in s["slopes"] if x["data"] == "zero-mean" and x["order"] == "sequential"]
    if zm:
        lines += ["", "Growth of the median normalized error with K (log-log slope; 0.5 is "
                  "sqrt(K), 1 is K), sequential order:", "",
                  "| accumulator | rounding | zero-mean | one-signed |", "|---|---|---|---|"]
        for x in zm:
            one = [y["slope"] for y in s["slopes"] if y["data"] == "one-signed" and
                   (y["fmt"], y["rounding"], y["order"]) == (x["fmt"], x["rounding"],
                                                             "sequential")]
            lines.append(f"| {x['fmt']} | {x['rounding']} | {_fmt_num(x['slope'])} | "
                         f"{_fmt_num(one[0]) if one else 'n/a'} |")
    lines += ["", f"Bounds: {s['within_det']} of {s['trials_total']} finite trials lie within "
              f"gamma_K = K u / (1 - K u) and {s['within_prob']} within {s['lam']:g} sqrt(K) u "
              "(Higham & Mary; u doubled for SR). The probabilistic bound is a statement about "
              "most trials, not all: the count says how often it held here."]
    if s["stagnation"]:
        lines += ["", "Stagnation (one-signed data): the first K at which the mean of "
                  "computed / exact falls below 0.9 (or every trial overflowed):", "",
                  "| accumulator | rounding | order | first K | computed/exact at the largest K |",
                  "|---|---|---|---|---|"]
        lines += [f"| {x['fmt']} | {x['rounding']} | {x['order']} | "
                  f"{_fmt_num(x['first_k_ratio_below_0.9'])} | {_fmt_num(x['last_ratio'])} |"
                  for x in s["stagnation"]]
        lines += [f"![stagnation]({f})" for f in doc["plots"] if f == "stagnation.png"]
    if s["vrr"]:
        lines += ["", f"Variance retention ratio: knees (VRR < {p['vrr_threshold']}) at log2 K "
                  + ", ".join(f"{_fmt_num(v)} (m={m})" for m, v in s["knees_log2_k"].items())
                  + f"; the knee moves {_fmt_num(s['knee_slope'])} in log2 K per mantissa bit "
                  "(Sakr et al. predict about 2). A knee reported n/a lies beyond the largest "
                  "K of this grid.", ""]
        lines += [f"![variance retention]({f})" for f in doc["plots"] if f == "vrr.png"]
    lines += ["", "Recomputed numbers from the references:", ""]
    lines += [f"- {c['check']}: {c['got']:.6g} (reference: {c['expected']:g})"
              for c in s["checks"]]
    lines += ["", said(doc["findings"]), ""]
    return "\n".join(lines)
