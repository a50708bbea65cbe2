"""Causal sweeps: move one factor of one GEMM, hold the others fixed, and measure how the
bits it needs (the threshold M*) move.

Usage rules:
  - Every sweep trains an MLP on digits (refsim.studies.architectures.RECIPE) whose shape or
    batch size sets the factor, and perturbs one GEMM (layer, role) with the operand doses
    `doses` (refsim.studies.dose), seeds `seeds` (the depth sweeps: `depth_seeds`); each
    variant's baseline runs over `noise_seeds` (its own seed noise) and every seed its points
    pair with. SWEEPS lists them; for C = A B (linear layer fcL with
    d_in, d_out, batch B):
      K/forward          hidden [W, 64], fc2 forward: K = W; uses B (weights), 64 (inputs)
      K/backward-input   hidden [64, W], fc2 backward-input (dX = dY W^T): K = W; uses B, 64
      K/backward-weight  hidden [64, 64], batch W, fc2 backward-weight (dW = X^T dY): K = W;
                         uses 64 (X), 64 (dY)
      F/forward-batch    hidden [64, 64], batch W, fc2 forward: K = 64; weights used W times
      F/forward-width    hidden [64, W], fc2 forward: K = 64; inputs used W times
      F/backward-input-batch  hidden [64, 64], batch W, fc2 backward-input: K = 64; W^T used
                         W times
      D/<role>           hidden [128] * 6 (He init and lr 0.05 as in RECIPE: 98% test
                         accuracy in 500 steps), fcW for W = 2..6, every role: K and
                         uses fixed
    The level W is the factor's value (depth: the layer's position).
  - Per sweep: each seed's threshold M*_s at each level (refsim.studies.dose.threshold_bits
    on that seed's damage curve, in that variant's seed-noise units), and the least-squares
    slope of M*_s against log2(level) (bits per doubling; depth: bits per layer) over every
    (level, seed) point, with its standard error from the residuals (levels x seeds - 2
    degrees of freedom). Each point is an independent pair of training runs: a seed shares
    nothing across levels (each level is another model), so the points are not repeated
    measures. The per-seed slopes are reported beside it.
  - Outcomes (refsim.studies.tolerance.OUTCOMES): M* and the dose-response area, each
    per seed; the slopes below are computed for both.
  - Claims (refsim.studies.claims, family "causal/<outcome>"): K sweeps, "longer reductions need
    fewer bits" (slope < 0, SESOI `sesoi_slope` bits per doubling); F sweeps, "more-used
    elements need more bits" (slope > 0, same SESOI); D sweeps, "depth does not change the bits
    needed" (slope 0, SESOI `sesoi_depth` bits per layer). Measure: `measure` (default the final
    test loss with fp32 inference); the train-loss AUC slopes are reported too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from refsim.studies.architectures import arch_fields
from refsim.studies.claims import as_findings, claim, finalize
from refsim.studies.dose import (
    damage,
    dose_name,
    dose_spec,
    need_operand_doses,
    seed_noise,
    threshold_bits,
)
from refsim.studies.params import need
from refsim.studies.report import save_figure
from refsim.studies.tolerance import MEASURES, OUTCOMES, dose_area, plateau, plateau_text
from refsim.studies.training import low_plan, train_run

__all__ = ["FULL", "QUICK", "STANDARD", "SWEEPS", "TITLE", "VERSION", "analyze", "check",
           "claims", "grid", "plot", "run_one", "section", "sweep_seeds", "sweeps"]

VERSION = 1
TITLE = "Causal sweeps: one factor moved, the others held"
NAME = "causal"
POINT_FIELDS = {"threshold": ("threshold_bits", "seed_thresholds"),
                "area": ("area", "seed_areas")}
"""Per outcome (refsim.studies.tolerance.OUTCOMES): a sweep point's field of the mean curve
and of the per-seed values."""

SWEEPS: dict[str, dict[str, Any]] = {
    "K/forward": {"factor": "K", "layer": "fc2", "role": "forward", "vary": "hidden0"},
    "K/backward-input": {"factor": "K", "layer": "fc2", "role": "backward-input",
                         "vary": "hidden1"},
    "K/backward-weight": {"factor": "K", "layer": "fc2", "role": "backward-weight",
                          "vary": "batch"},
    "F/forward-batch": {"factor": "F", "layer": "fc2", "role": "forward", "vary": "batch"},
    "F/forward-width": {"factor": "F", "layer": "fc2", "role": "forward", "vary": "hidden1"},
    "F/backward-input-batch": {"factor": "F", "layer": "fc2", "role": "backward-input",
                               "vary": "batch"},
    "D/forward": {"factor": "D", "role": "forward", "vary": "depth"},
    "D/backward-input": {"factor": "D", "role": "backward-input", "vary": "depth"},
    "D/backward-weight": {"factor": "D", "role": "backward-weight", "vary": "depth"},
}
"""Name -> what it moves (module docstring)."""

QUICK: dict[str, Any] = {
    "sweeps": ["K/forward", "D/forward"], "levels": [16, 256], "depths": [2, 5],
    "seeds": [0, 1], "depth_seeds": [0, 1], "noise_seeds": [0, 1, 2], "operand_family": "int",
    "doses": [2, 4, 6],
    "exp_bits": 5, "rounding": "rne", "steps": 60, "threshold": 1.0, "sesoi_slope": 0.25,
    "sesoi_depth": 0.25, "sesoi_area": 0.25, "measure": "test_loss", "depth_width": 128,
    "depth_layers": 6, "depth_lr": 0.05,
}
FULL: dict[str, Any] = {
    **QUICK, "sweeps": list(SWEEPS), "levels": [16, 64, 256, 1024], "depths": [2, 4, 6],
    "seeds": list(range(6)), "depth_seeds": list(range(28)), "noise_seeds": list(range(8)),
    "doses": [2, 3, 4, 5, 6],
    "steps": 500,
}
STANDARD: dict[str, Any] = dict(FULL)
"""The published grid: 4 levels 4x apart (K and uses 16..1024; batches 8..512) with 6 seeds, layers
2, 4 and 6 with 28 seeds, operands int2..int6 with per-tensor scaling (refsim.studies.dose: on
e5m0..e5m4 the K/backward-input and F/backward-input-batch sweeps were censored at every point,
and 3 levels x 3 seeds left the depth slopes' power at 0.08-0.11; on int2..int6 with 4 seeds, the
depth slopes' power was 0.15-0.49 and F/forward-batch's 0.56: a depth point's per-seed M*
scatters by about 1.2 bits; layers 2..6 with 16 seeds, in the depth MLP under the default uniform
init at lr 0.1, left the area slopes' power at 0.20-0.23, each seed's area scattering by 2-3.7
seed-sd; with He init at lr 0.05 a pilot of 6 seeds at layers 2 and 6 put that scatter at
0.8-1.3, and three levels 2 layers apart give a slope's standard error 1.15x smaller than five 1
apart for the same runs). Declared before running: tau 1 seed-sd, SESOI 0.25 bits per doubling of
K or F (1.5 bits over the 64-fold range swept) and 0.25 bits per layer of depth (1 bit over the 4
layers swept); for the dose-response area 0.25 seed-sd per doubling or per layer; alpha 0.05 with
Holm's correction over the sweeps (per outcome)."""

BATCH_LEVELS = {16: 8, 64: 32, 256: 128, 1024: 512}
"""Batch sizes for the batch sweeps, by level index (K/backward-weight, F/*-batch): the width
levels would make batches of up to 1024 of the 1437 digits; these keep 4 levels 4x apart."""


def check(p: dict[str, Any]) -> None:
    need(bool(p["sweeps"]) and all(s in SWEEPS for s in p["sweeps"]), NAME, "sweeps",
         f"a non-empty list of {', '.join(SWEEPS)}", p["sweeps"])
    need(len(p["levels"]) >= 2 and all(v in BATCH_LEVELS for v in p["levels"])
         and sorted(set(p["levels"])) == list(p["levels"]), NAME, "levels",
         f"at least two ascending values of {sorted(BATCH_LEVELS)}", p["levels"])
    need(len(p["depths"]) >= 2 and all(isinstance(d, int) and 2 <= d <= p["depth_layers"]
                                       for d in p["depths"]), NAME, "depths",
         f"at least two layer positions in [2, depth_layers = {p['depth_layers']}]",
         p["depths"])
    for key in ("seeds", "depth_seeds", "noise_seeds"):
        need(bool(p[key]) and all(isinstance(s, int) and s >= 0 for s in p[key])
             and len(set(p[key])) == len(p[key]), NAME, key,
             "a non-empty list of distinct ints >= 0", p[key])
    for key in ("seeds", "depth_seeds"):
        need(len(p[key]) >= 2, NAME, key, "at least 2 seeds (a slope's standard error)",
             p[key])
    need(len(p["noise_seeds"]) >= 2, NAME, "noise_seeds", "at least 2 seeds", p["noise_seeds"])
    need_operand_doses(NAME, p)
    for key in ("threshold", "sesoi_slope", "sesoi_depth", "sesoi_area", "depth_lr"):
        need(isinstance(p[key], int | float) and p[key] > 0, NAME, key, "a positive number",
             p[key])
    need(p["measure"] in MEASURES, NAME, "measure", f"one of {', '.join(MEASURES)}",
         p["measure"])


def _variant(p: dict[str, Any], sweep: str, level: int) -> tuple[dict[str, Any], str]:
    """(TrainConfig overrides, perturbed layer) of one sweep point."""
    sw = SWEEPS[sweep]
    if sw["vary"] == "depth":
        return ({"hidden": [p["depth_width"]] * p["depth_layers"], "lr": p["depth_lr"]},
                f"fc{level}")
    over: dict[str, Any] = {"hidden": [64, 64]}
    if sw["vary"] == "hidden0":
        over["hidden"] = [level, 64]
    elif sw["vary"] == "hidden1":
        over["hidden"] = [64, level]
    else:
        over["batch_size"] = BATCH_LEVELS[level]
    return over, sw["layer"]


def sweeps(p: dict[str, Any]) -> list[tuple[str, int, dict[str, Any], str, float]]:
    """(sweep, level, overrides, layer, factor value) of every sweep point."""
    out = []
    for sweep in p["sweeps"]:
        depth = SWEEPS[sweep]["vary"] == "depth"
        for level in (p["depths"] if depth else p["levels"]):
            over, layer = _variant(p, sweep, level)
            value = float(level) if depth else float(over.get("batch_size", level))
            out.append((sweep, level, over, layer, value))
    return out


def sweep_seeds(p: dict[str, Any], sweep: str) -> list[int]:
    """The seeds of a sweep's points: `depth_seeds` for the depth sweeps, else `seeds`."""
    return p["depth_seeds"] if SWEEPS[sweep]["factor"] == "D" else p["seeds"]


def _fields(p: dict[str, Any], over: dict[str, Any], seed: int) -> dict[str, Any]:
    return arch_fields("mlp-down", seed, p["steps"], over)


def grid(p: dict[str, Any]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    variants: dict[str, dict[str, Any]] = {}
    paired: dict[str, set[int]] = {}
    for sweep, level, over, layer, _ in sweeps(p):
        vkey = repr(sorted(over.items()))
        variants.setdefault(vkey, over)
        paired.setdefault(vkey, set()).update(sweep_seeds(p, sweep))
        for m in p["doses"]:
            spec = dose_spec("operands", m, p)
            runs.extend({"kind": "point", "sweep": sweep, "level": level, "variant": vkey,
                         "bits": m, "seed": seed, "train": _fields(p, over, seed),
                         "plan": low_plan([(layer, SWEEPS[sweep]["role"])], spec, "numpy")}
                        for seed in sweep_seeds(p, sweep))
    # baselines: the seed noise's seeds, and every seed a point pairs with
    for vkey, over in variants.items():
        runs.extend({"kind": "baseline", "sweep": "", "level": 0, "variant": vkey, "bits": -1,
                     "seed": seed, "train": _fields(p, over, seed), "plan": {"preset": "numpy"}}
                    for seed in sorted(set(p["noise_seeds"]) | paired[vkey]))
    return runs


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    return train_run(cfg)


def warm_key(cfg: dict[str, Any]) -> tuple:
    return (cfg["kind"],)


def _slope(x: list[float], y: list[float]) -> float:
    xa, ya = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(xa) & np.isfinite(ya)
    if keep.sum() < 2 or np.ptp(xa[keep]) == 0:
        return math.nan
    return float(np.polyfit(xa[keep], ya[keep], 1)[0])


def _ols(x: list[float], y: list[float]) -> tuple[float, float, int]:
    """(slope, its standard error, points) of y on x by least squares over the finite points."""
    xa, ya = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya, n = xa[keep], ya[keep], int(keep.sum())
    if n < 3 or np.ptp(xa) == 0:
        return math.nan, math.nan, n
    sxx = float(np.sum((xa - xa.mean()) ** 2))
    slope = float(np.sum((xa - xa.mean()) * (ya - ya.mean())) / sxx)
    resid = ya - ya.mean() - slope * (xa - xa.mean())
    return slope, math.sqrt(float(np.sum(resid ** 2)) / (n - 2) / sxx), n


def analyze(p: dict[str, Any], configs: list[dict[str, Any]],
            results: list[dict[str, Any]]) -> tuple[list, dict, list]:
    rows = []
    base: dict[tuple[str, str, int], float] = {}
    point: dict[tuple, float] = {}
    curves: dict[str, list[list[float]]] = {}
    accuracy: dict[str, list[float]] = {}
    for c, r in zip(configs, results, strict=True):
        rows.append({"kind": c["kind"], "sweep": c["sweep"], "level": c["level"],
                     "variant": c["variant"], "bits": c["bits"], "seed": c["seed"],
                     **{k: r[k] for k in (*MEASURES, "test_accuracy", "seconds")}})
        if c["kind"] == "baseline" and c["seed"] in p["noise_seeds"]:
            curves.setdefault(c["variant"], []).append(r.get("test_curve", []))
            accuracy.setdefault(c["variant"], []).append(r["test_accuracy"])
        for k in MEASURES:
            if c["kind"] == "baseline":
                base[(c["variant"], k, c["seed"])] = r[k]
            else:
                point[(c["sweep"], c["level"], k, c["bits"], c["seed"])] = r[k]
    variants = {c["variant"] for c in configs}
    noise = {v: {k: seed_noise([base.get((v, k, s), math.nan) for s in p["noise_seeds"]])
                 for k in MEASURES} for v in variants}
    vkey = {(c["sweep"], c["level"]): c["variant"] for c in configs if c["kind"] == "point"}
    out: dict[str, Any] = {}
    for sweep, level, _, _, value in sweeps(p):
        entry = out.setdefault(sweep, {"levels": [], "values": [], "points": {}})
        entry["levels"].append(level)
        entry["values"].append(value)
        v = vkey[(sweep, level)]
        seeds = sweep_seeds(p, sweep)
        for k in MEASURES:
            per_seed = {s: [damage(point[(sweep, level, k, m, s)], base[(v, k, s)],
                                   noise[v][k]) for m in p["doses"]] for s in seeds}
            mean = [float(np.mean([per_seed[s][i] for s in seeds]))
                    for i in range(len(p["doses"]))]
            entry["points"].setdefault(k, []).append({
                "level": level, "value": value, "damage": mean,
                "threshold_bits": threshold_bits(p["doses"], mean, p["threshold"])[0],
                "seed_thresholds": [threshold_bits(p["doses"], per_seed[s],
                                                   p["threshold"])[0] for s in seeds],
                "area": float(np.mean([dose_area(per_seed[s]) for s in seeds])),
                "seed_areas": [dose_area(per_seed[s]) for s in seeds]})
    for sweep, entry in out.items():
        depth = SWEEPS[sweep]["factor"] == "D"
        x = entry["values"] if depth else [math.log2(v) for v in entry["values"]]
        slopes: dict[str, Any] = {}
        entry["slopes"] = slopes
        for outcome, (field, seed_field) in POINT_FIELDS.items():
            for k in MEASURES:
                pts = entry["points"][k]
                seed_slopes = [_slope(x, [pt[seed_field][i] for pt in pts])
                               for i in range(len(sweep_seeds(p, sweep)))]
                xs = [xv for xv, pt in zip(x, pts, strict=True) for _ in pt[seed_field]]
                ys = [t for pt in pts for t in pt[seed_field]]
                slope, se, n = _ols(xs, ys)
                slopes[f"{outcome}/{k}"] = {
                    "per_seed": seed_slopes, "mean": slope, "se": se, "n": n,
                    "of_means": _slope(x, [pt[field] for pt in pts])}
    summary = {"sweeps": out, "noise": {v: noise[v] for v in sorted(variants)},
               "plateau": {v: plateau(curves.get(v, []), noise[v]["test_loss"])
                           for v in sorted(variants)},
               "baseline_accuracy": {v: [float(np.min(accuracy[v])), float(np.max(accuracy[v]))]
                                     for v in sorted(accuracy)}}
    return rows, summary, as_findings(finalize(claims({"params": p, "summary": summary})))


def claims(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One claim per sweep and outcome (module docstring), before Holm's correction."""
    p, s = doc["params"], doc["summary"]
    k = p["measure"]
    out = []
    for outcome in OUTCOMES:
        for sweep, entry in s["sweeps"].items():
            factor = SWEEPS[sweep]["factor"]
            sl = entry["slopes"][f"{outcome}/{k}"]
            unit = "bits" if outcome == "threshold" else "seed-sd of area"
            sesoi = {"threshold": {"K": p["sesoi_slope"], "F": p["sesoi_slope"],
                                   "D": p["sesoi_depth"]},
                     "area": {"K": p["sesoi_area"], "F": p["sesoi_area"],
                              "D": p["sesoi_area"]}}[outcome][factor]
            direction, statement, units = {
                "K": (-1, "a longer reduction (K) needs fewer operand bits",
                      f"{unit} per doubling of K"),
                "F": (1, "more uses per element need more operand bits",
                      f"{unit} per doubling of uses"),
                "D": (0, "depth does not change the operand bits needed",
                      f"{unit} per layer of depth")}[factor]
            what = ("threshold bits M*" if outcome == "threshold" else
                    "dose-response area (mean damage over the doses)")
            pts = entry["points"][k]
            censored = outcome == "threshold" and all(
                t == p["doses"][0] for pt in pts for t in pt["seed_thresholds"])
            note = ("; every point tolerated every dose (M* censored at "
                    f"{p['doses'][0]}): no slope can be measured" if censored else "")
            out.append(claim(
                f"causal/{sweep}/{outcome}", f"{statement} ({sweep.split('/', 1)[1]})",
                effect=sl["mean"], se=sl["se"], sesoi=sesoi, direction=direction,
                family=f"causal/{outcome}",
                measure=f"{what} on {k} (tau {p['threshold']:g} seed-sd)",
                design=f"MLP sweep of {len(entry['levels'])} levels {entry['values']} x "
                       f"{len(sweep_seeds(p, sweep))} seeds, least squares over the (level, seed) "
                       f"points{note}",
                n=sl["n"], units=units, df=sl["n"] - 2 if sl["n"] > 2 else None))
    return out


def plot(s: dict[str, Any], out: Path) -> list[str]:
    from refsim.studies.report import pyplot

    plt = pyplot()
    if not s["sweeps"]:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharey=True)
    for ax, factor in zip(axes, ("K", "F", "D"), strict=True):
        for sweep, entry in s["sweeps"].items():
            if SWEEPS[sweep]["factor"] != factor:
                continue
            pts = entry["points"]["test_loss"]
            ax.plot([pt["value"] for pt in pts], [pt["threshold_bits"] for pt in pts], "o-",
                    label=sweep.split("/", 1)[1])
        if factor != "D":
            ax.set_xscale("log", base=2)
        ax.set_xlabel({"K": "K", "F": "uses per element (swept)", "D": "layer"}[factor])
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0].set_ylabel("threshold bits M* (test loss)")
    fig.suptitle("Causal sweeps: one factor moved")
    return [save_figure(fig, out, "causal.png")]


def _row(sweep: str, e: dict[str, Any], outcome: str, values: list | None = None) -> str:
    """One table row: the sweep, its levels (if given), the outcome per level on the test
    loss, and the outcome's slope on each measure."""
    field = POINT_FIELDS[outcome][0]
    per_level = ", ".join(f"{pt[field]:.2f}" for pt in e["points"]["test_loss"])
    slopes = " | ".join(f"{e['slopes'][f'{outcome}/{k}']['mean']:+.3f} +- "
                        f"{e['slopes'][f'{outcome}/{k}']['se']:.3f}" for k in MEASURES)
    levels = "" if values is None else f" {values} |"
    return f"| {sweep} |{levels} {per_level} | {slopes} |"


def section(doc: dict[str, Any]) -> str:
    s, p = doc["summary"], doc["params"]
    lines = [f"## {TITLE}", "",
             f"MLPs on digits, one GEMM perturbed with operands "
             f"{', '.join(dose_name(m, p) for m in p['doses'])}"
             f"{' (per-tensor scaling)' if p['operand_family'] == 'int' else ''}, "
             f"seeds {p['seeds']} per dose (depth sweeps: {p['depth_seeds']}), seed noise over "
             f"{p['noise_seeds']}, {p['steps']} "
             f"steps; tau {p['threshold']:g} seed-sd. {doc['grid']['runs']} runs "
             f"({doc['grid']['cached']} cached), {doc['seconds']:.0f} s.", "",
             "| sweep | levels | M* per level (test loss) | slope (test loss) | slope "
             "(train AUC) |", "|---|---|---|---|---|"]
    lines += [_row(sweep, e, "threshold", e["values"]) for sweep, e in s["sweeps"].items()]
    lines += ["", "Slopes of M* in bits per doubling of the factor (depth: per layer), least "
              "squares over every (level, seed) point, +- its standard error. The "
              "dose-response area's slopes (seed-sd per doubling or per layer):", "",
              "| sweep | area per level (test loss) | slope (test loss) | slope (train AUC) |",
              "|---|---|---|---|"]
    lines += [_row(sweep, e, "area") for sweep, e in s["sweeps"].items()]
    lines += ["", plateau_text(s.get("plateau", {}), s.get("baseline_accuracy", {}),
                               "variants (model shapes)")]
    lines += [""] + [f"![causal]({f})" for f in doc["plots"]] + [""]
    return "\n".join(lines)
