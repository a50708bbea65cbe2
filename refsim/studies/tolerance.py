"""Tolerance: the operand (and accumulator) bits each GEMM needs, from a dose sweep, and how
the threshold relates to reduction length, usage frequency and depth across GEMMs.

Usage rules:
  - For every architecture in `architectures` (refsim.studies.architectures) and every row of
    its factor profile (one (layer, role) GEMM), each dose m in `doses` gives one training run
    per seed in `seeds` with only that GEMM perturbed (refsim.studies.dose: operands of width
    m, int{m} with per-tensor scaling in the published grid, fp32 accumulation) and every
    other product in float32 (np.matmul). The
    architecture's baseline (no GEMM perturbed) runs for every seed in `noise_seeds` (a
    superset of `seeds`): its seed-to-seed sd is the model's seed noise. `arch_overrides`
    ({architecture: {TrainConfig field: value}}) changes an architecture for this study.
  - Measures, both role-neutral: `test_loss`, the final test loss with fp32 inference
    (eval_preset "numpy": a forward perturbation is not carried into the evaluation), and
    `train_loss_auc`, the mean training loss over every step (same batches in every run of
    one seed). Runs train with refsim.studies.architectures.RECIPE for `steps` steps (cosine
    schedule: the baselines end on a plateau, checked and reported: `plateau`).
  - Per GEMM and measure: damage at each dose (mean over seeds of the paired damage), the
    threshold M* (`threshold` in seed-noise units; refsim.studies.dose.threshold_bits) of the
    mean curve, the per-seed thresholds and their standard error (sd / sqrt(seeds)), and
    whether the mean curve falls monotonically. Reliability of M* across GEMMs:
    refsim.studies.stats.reliability.
  - Accumulator lever (`acc_architectures`, `acc_doses`): the same for a sequential
    e{acc_exp_bits}mM accumulator with float32 operands, reported per GEMM (tolerance.csv)
    but not tested across GEMMs (too few GEMMs for the power the claims need).
  - Tolerance outcomes (OUTCOMES): M*, and the area under the dose-response curve (the mean
    damage over the doses and seeds, `dose_area`, each run's damage capped at DAMAGE_CAP:
    continuous where M* is censored, e.g. for a GEMM that tolerates every dose, and bounded: a
    diverged run or one that blew up counts as the cap).
  - Cross-GEMM claims (refsim.studies.claims, family "cross-gemm/<outcome>/<measure>"), on
    each outcome (the signs below are M*'s; the area's are the same: more damage, more bits):
      K: longer reductions need fewer bits (partial Spearman rho(log K, M*) < 0),
      frequency: more-used elements need more bits (rho(log F, M*) > 0),
      depth: relative depth has no effect beyond the SESOI (rho = 0),
    each partial on the other two factors, the role (dummies) and the architecture
    (dummies: a within-model comparison), as Fisher's z corrected for the reliability of M*
    (Spearman's attenuation: z / sqrt(R)), SESOI atanh(sesoi_rho). A mixed model (M* on the
    standardized factors and role dummies, a random intercept per architecture; one value per
    GEMM, seeds averaged first, so seeds are not pseudo-replicates) is reported beside them.
  - `tolerance_rows(doc)` gives the rows of docs/results/tolerance.csv (one per GEMM).
"""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path
from typing import Any

import numpy as np

from refsim.studies import stats
from refsim.studies.architectures import ARCHITECTURES, arch_fields, need_arch_overrides
from refsim.studies.claims import as_findings, claim, finalize, fisher_z
from refsim.studies.dose import (
    damage,
    dose_name,
    dose_spec,
    monotone,
    need_operand_doses,
    seed_noise,
    threshold_bits,
)
from refsim.studies.params import need
from refsim.studies.report import save_figure
from refsim.studies.training import low_plan, profile_of, train_run

__all__ = ["FULL", "QUICK", "STANDARD", "TITLE", "VERSION", "analyze", "check", "claims",
           "dose_area", "grid", "plateau", "plateau_text", "plot", "run_one", "section",
           "tolerance_rows"]

VERSION = 1
TITLE = "Tolerance: the bits each GEMM needs (dose sweeps)"
NAME = "tolerance"
MEASURES = ("test_loss", "train_loss_auc")
OUTCOMES = {"threshold": ("threshold_bits", "threshold_se"), "area": ("area", "area_se")}
"""The two tolerance outcomes of a GEMM: its threshold M* (bits), and the area under its
dose-response curve (dose_area: mean damage over the doses, seed-sd)."""
PLATEAU_SD = 0.5
"""A baseline is on its plateau when its epoch-end test loss moved by less than this many seed-sd
(mean over the seeds) over the last quarter of training (declared before running)."""
DAMAGE_CAP = 10.0
"""The most damage (seed-sd) one run adds to the dose-response area: a run worse than this
has failed, and by how much says how it failed, not how much precision the GEMM needs. A
diverged run (+inf) counts as the cap. Set after the first int2..int6 run, in which int2 drove
some runs' finite test loss to 1e33 seed-sd and the uncapped area's reliability to 0 (the cap
is 10 tau; docs/studies.md)."""
FACTORS = ("k", "frequency", "depth")
ROLES3 = ("forward", "backward-input", "backward-weight")

QUICK: dict[str, Any] = {
    "architectures": ["mlp-down", "cnn-deep"], "seeds": [0, 1], "noise_seeds": [0, 1, 2, 3],
    "operand_family": "int", "doses": [2, 4, 6], "exp_bits": 5, "rounding": "rne",
    "steps": 60, "threshold": 1.0,
    "acc_architectures": [], "acc_doses": [4, 7, 10], "acc_exp_bits": 8, "layers": ["*"],
    "sesoi_rho": 0.3, "primary": "test_loss", "arch_overrides": {},
}
FULL: dict[str, Any] = {
    **QUICK, "architectures": ["mlp-down", "mlp-up", "mlp-hourglass", "resnet-2",
                               "transformer-1", "transformer-2"],
    "seeds": [0, 1, 2], "noise_seeds": list(range(8)), "doses": [2, 3, 4, 5, 6], "steps": 500,
    "acc_architectures": ["mlp-down"],
}
STANDARD: dict[str, Any] = dict(FULL)
"""The published grid: 6 architectures, 131 GEMMs (mlp-deep and cnn-deep were left out when, under
torch's default init, their baselines did not train, 8-9% and 9-94% test accuracy over the 8
seeds of a first run; with He init they do, and 131 GEMMs already meet the 130 asked for, within
the 2-hour budget), operands int2..int6 with per-tensor scaling (the float ladder e5m0..e5m4 left
118 of 131 GEMMs censored: refsim.studies.dose), 3 seeds per dose (with 2, M*'s reliability on
the test loss was 0.70 and its claims' power 0.79), 8 baseline seeds per architecture, 500 steps
to a plateau; the accumulator lever on mlp-down. The declarations made before running: tau = 1
seed-sd (a pilot put the paired noise of one run near 0.5-1 seed-sd, so a mean of two crosses 1
by chance rarely), SESOI |rho| 0.3, alpha 0.05 with Holm's correction per family."""


def check(p: dict[str, Any]) -> None:
    for key in ("architectures", "acc_architectures"):
        need(all(a in ARCHITECTURES for a in p[key]) and len(set(p[key])) == len(p[key]),
             NAME, key, f"a list of distinct names of {', '.join(ARCHITECTURES)}", p[key])
    need(bool(p["architectures"]), NAME, "architectures", "a non-empty list",
         p["architectures"])
    for key in ("seeds", "noise_seeds"):
        need(bool(p[key]) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                  for s in p[key]) and len(set(p[key])) == len(p[key]),
             NAME, key, "a non-empty list of distinct ints >= 0", p[key])
    need(set(p["seeds"]) <= set(p["noise_seeds"]) and len(p["noise_seeds"]) >= 2, NAME,
         "noise_seeds", "at least 2 seeds including every one of seeds", p["noise_seeds"])
    need_operand_doses(NAME, p)
    need(len(p["acc_doses"]) >= 2 and all(isinstance(m, int) and 0 <= m <= 22
                                          for m in p["acc_doses"])
         and sorted(set(p["acc_doses"])) == list(p["acc_doses"]), NAME, "acc_doses",
         "at least two ascending distinct ints in [0, 22]", p["acc_doses"])
    need(isinstance(p["acc_exp_bits"], int) and 5 <= p["acc_exp_bits"] <= 11, NAME,
         "acc_exp_bits", "an int in [5, 11]", p["acc_exp_bits"])
    need(isinstance(p["steps"], int) and p["steps"] >= 1, NAME, "steps", "a positive int",
         p["steps"])
    need(isinstance(p["threshold"], int | float) and p["threshold"] > 0, NAME, "threshold",
         "a positive number (seed-noise units)", p["threshold"])
    need(isinstance(p["sesoi_rho"], int | float) and 0 < p["sesoi_rho"] < 1, NAME,
         "sesoi_rho", "a number in (0, 1)", p["sesoi_rho"])
    need(p["primary"] in MEASURES, NAME, "primary", f"one of {', '.join(MEASURES)}",
         p["primary"])
    need_arch_overrides(NAME, p["arch_overrides"])
    need(bool(p["layers"]) and all(isinstance(x, str) for x in p["layers"]), NAME, "layers",
         "a non-empty list of layer-name patterns (fnmatch)", p["layers"])


def gemm_rows(p: dict[str, Any], arch: str) -> list[dict[str, Any]]:
    """The factor profile rows of one architecture (those whose layer matches `layers`), with
    the relative depth (depth_input / the number of products)."""
    prof = profile_of(arch_fields(arch, 0, p["steps"], p["arch_overrides"].get(arch)))
    n = max(r.depth_input for r in prof)
    return [{"arch": arch, "layer": r.layer, "role": r.role, "kind": r.kind, "k": r.k,
             "frequency": r.frequency, "depth_input": r.depth_input, "depth": r.depth_input / n,
             "uses_a": r.uses_a, "uses_b": r.uses_b}
            for r in prof if any(fnmatch.fnmatchcase(r.layer, pat) for pat in p["layers"])]


def grid(p: dict[str, Any]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for arch in p["architectures"]:
        over = p["arch_overrides"].get(arch)
        runs.extend({"arch": arch, "lever": "baseline", "layer": "", "role": "", "bits": -1,
                     "seed": seed, "train": arch_fields(arch, seed, p["steps"], over),
                     "plan": {"preset": "numpy"}} for seed in p["noise_seeds"])
        levers = [("operands", p["doses"])]
        if arch in p["acc_architectures"]:
            levers.append(("accumulator", p["acc_doses"]))
        for g in gemm_rows(p, arch):
            for lever, doses in levers:
                for m in doses:
                    spec = dose_spec(lever, m, p)
                    plan = low_plan([(g["layer"], g["role"])], spec, "numpy")
                    runs.extend({"arch": arch, "lever": lever, "layer": g["layer"],
                                 "role": g["role"], "bits": m, "seed": seed,
                                 "train": arch_fields(arch, seed, p["steps"], over),
                                 "plan": plan}
                                for seed in p["seeds"])
    return runs


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    return train_run(cfg)


def warm_key(cfg: dict[str, Any]) -> tuple:
    """Runs with one key use the same compiled kernels."""
    return (cfg["arch"], cfg["lever"])


def _curve(p: dict[str, Any], doses: list[int], per_seed: dict[int, dict[int, float]]
           ) -> dict[str, Any]:
    """Mean damage per dose, M* of the mean curve, per-seed M* and its standard error."""
    seeds = p["seeds"]
    mean = [float(np.mean([per_seed[s][m] for s in seeds])) for m in doses]
    mstar, cens = threshold_bits(doses, mean, p["threshold"])
    seed_m = [threshold_bits(doses, [per_seed[s][m] for m in doses], p["threshold"])[0]
              for s in seeds]
    seed_a = [dose_area([per_seed[s][m] for m in doses]) for s in seeds]
    return {"damage": mean, "threshold_bits": mstar, "censored": cens, "seed_thresholds": seed_m,
            "threshold_se": _se(seed_m), "monotone": monotone(doses, mean),
            "area": float(np.mean(seed_a)), "seed_areas": seed_a, "area_se": _se(seed_a)}


def dose_area(damages: list[float]) -> float:
    """Mean damage over the doses of one seed, each capped at DAMAGE_CAP (+inf, a diverged
    run, counts as the cap)."""
    d = [min(x, DAMAGE_CAP) for x in damages]
    return float(np.mean(d)) if d else math.nan


def _se(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.std(finite, ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else math.nan


def plateau(curves: list[list[float]], noise: float) -> dict[str, Any]:
    """Change of the baselines' epoch-end test loss over the last quarter of their epochs (the
    mean over the curves given), in loss units and in seed-sd (`noise`), and whether that is a
    plateau (PLATEAU_SD); the causal and allocation studies check their baselines with it."""
    changes = [c[-1] - c[int(0.75 * (len(c) - 1))] for c in curves if len(c) >= 2]
    mean = float(np.mean(changes)) if changes else math.nan
    in_sd = mean / noise if math.isfinite(noise) and noise > 0 else math.nan
    return {"mean_change": mean,
            "max_abs_change": float(np.max(np.abs(changes))) if changes else math.nan,
            "mean_change_sd": in_sd, "plateau": bool(abs(in_sd) < PLATEAU_SD)}


def plateau_text(plateaus: dict[str, dict[str, Any]], accuracy: dict[str, list[float]],
                 what: str) -> str:
    """One paragraph: how many baselines end on a plateau (refsim.studies.tolerance.plateau),
    the range of their last-quarter change in seed-sd, and their test accuracy range."""
    if not plateaus:
        return "Plateau: not computed (no baseline curves)."
    changes = [pl["mean_change_sd"] for pl in plateaus.values()
               if math.isfinite(pl["mean_change_sd"])]
    off = [v for v, pl in plateaus.items() if not pl["plateau"]]
    text = (f"Plateau: {len(plateaus) - len(off)} of {len(plateaus)} {what} end on a plateau "
            f"(the baselines' test loss moved by "
            f"{min(changes, default=math.nan):+.2f} to {max(changes, default=math.nan):+.2f} "
            f"seed-sd over the last quarter; criterion |change| < "
            f"{PLATEAU_SD:g})" + (f"; not on a plateau: {', '.join(off)}" if off else "") + ".")
    if accuracy:
        lo = min(a for a, _ in accuracy.values())
        hi = max(b for _, b in accuracy.values())
        text += f" Baseline test accuracy {100 * lo:.1f}-{100 * hi:.1f}%."
    return text


def analyze(p: dict[str, Any], configs: list[dict[str, Any]],
            results: list[dict[str, Any]]) -> tuple[list, dict, list]:
    rows = []
    base: dict[tuple[str, str, int], float] = {}
    treated: dict[tuple, float] = {}
    curves: dict[str, list[list[float]]] = {}
    for c, r in zip(configs, results, strict=True):
        row = {"arch": c["arch"], "lever": c["lever"], "layer": c["layer"], "role": c["role"],
               "bits": c["bits"], "seed": c["seed"],
               **{k: r[k] for k in (*MEASURES, "test_accuracy", "seconds")}}
        rows.append(row)
        for k in MEASURES:
            if c["lever"] == "baseline":
                base[(c["arch"], k, c["seed"])] = r[k]
            else:
                treated[(c["arch"], c["lever"], c["layer"], c["role"], k, c["bits"],
                         c["seed"])] = r[k]
        if c["lever"] == "baseline" and "test_curve" in r:
            curves.setdefault(c["arch"], []).append(r["test_curve"])
    noise = {a: {k: seed_noise([base.get((a, k, s), math.nan) for s in p["noise_seeds"]])
                 for k in MEASURES} for a in p["architectures"]}
    for row in rows:
        for k in MEASURES:
            row[f"damage_{k}"] = (damage(row[k], base[(row["arch"], k, row["seed"])],
                                         noise[row["arch"]][k])
                                  if row["lever"] != "baseline" else 0.0)
    gemms = []
    for arch in p["architectures"]:
        for g in gemm_rows(p, arch):
            entry = dict(g)
            levers = [("operands", p["doses"])]
            if arch in p["acc_architectures"]:
                levers.append(("accumulator", p["acc_doses"]))
            for lever, doses in levers:
                for k in MEASURES:
                    per_seed = {s: {m: damage(treated[(arch, lever, g["layer"], g["role"], k, m,
                                                       s)],
                                              base[(arch, k, s)], noise[arch][k])
                                    for m in doses} for s in p["seeds"]}
                    entry[f"{lever}/{k}"] = _curve(p, doses, per_seed)
            gemms.append(entry)
    summary: dict[str, Any] = {"noise": noise, "gemms": gemms,
                               "plateau": {a: plateau(v, noise[a]["test_loss"])
                                           for a, v in curves.items()},
                               "baseline": {a: {k: float(np.mean([base[(a, k, s)]
                                                                  for s in p["noise_seeds"]]))
                                                for k in (*MEASURES,)}
                                            for a in p["architectures"]},
                               "cross": {f"{o}/{k}": _cross(p, gemms, k, o)
                                         for o in OUTCOMES for k in MEASURES}}
    summary["n_gemms"] = len(gemms)
    return rows, summary, as_findings(finalize(claims({"params": p, "summary": summary})))


def _design(gemms: list[dict[str, Any]], key: str, outcome: str):
    field, se_field = OUTCOMES[outcome]
    y = np.array([g[key][field] for g in gemms], np.float64)
    se = np.array([g[key][se_field] for g in gemms], np.float64)
    x = {"k": np.log2([g["k"] for g in gemms]),
         "frequency": np.log2([g["frequency"] for g in gemms]),
         "depth": np.array([g["depth"] for g in gemms], np.float64)}
    roles = [g["role"] for g in gemms]
    archs = [g["arch"] for g in gemms]
    dummies = [np.array([r == role for r in roles], np.float64) for role in ROLES3[1:]]
    dummies += [np.array([a == arch for a in archs], np.float64)
                for arch in sorted(set(archs))[1:]]
    return y, se, x, dummies, archs, roles


def _cross(p: dict[str, Any], gemms: list[dict[str, Any]], measure: str, outcome: str
           ) -> dict[str, Any]:
    key = f"operands/{measure}"
    y, se, x, dummies, archs, roles = _design(gemms, key, outcome)
    rel = stats.reliability(y, se)
    out: dict[str, Any] = {"n": len(gemms), "reliability": rel,
                           "censored_low": sum(g[key]["censored"] == "low" for g in gemms),
                           "censored_high": sum(g[key]["censored"] == "high" for g in gemms),
                           "factor_rho": {}, "partial": {}, "mixed": {}}
    for i, a in enumerate(FACTORS):
        for b in FACTORS[i + 1:]:
            out["factor_rho"][f"{a}~{b}"] = stats.spearman(x[a], x[b])["rho"]
    for f in FACTORS:
        others = [x[o] for o in FACTORS if o != f]
        out["partial"][f] = stats.partial_spearman(x[f], y, [*others, *[d for d in dummies
                                                                     if np.ptp(d) > 0]])
        out["partial"][f]["marginal"] = stats.spearman(x[f], y)["rho"]
    role_dummies = {f"role={r}": np.array([q == r for q in roles], np.float64)
                    for r in ROLES3[1:] if r in roles}
    out["mixed"] = stats.mixed_model(y, {**{f: x[f] for f in FACTORS}, **role_dummies}, archs)
    return out


def claims(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The cross-GEMM claims of this study (module docstring), before Holm's correction."""
    p, s = doc["params"], doc["summary"]
    out = []
    sesoi = math.atanh(p["sesoi_rho"])
    texts = {"k": (-1, "GEMMs with longer reductions (K) need fewer operand bits"),
             "frequency": (1, "GEMMs whose elements are used more often need more operand "
                              "bits"),
             "depth": (0, "depth has no effect on the operand bits a GEMM needs")}
    for outcome in OUTCOMES:
        for measure in MEASURES:
            cross = s["cross"][f"{outcome}/{measure}"]
            rel = cross["reliability"]
            scale = math.sqrt(max(rel, 1e-6)) if math.isfinite(rel) else math.nan
            what = ("threshold bits M*" if outcome == "threshold" else
                    "dose-response area (mean damage over the doses)")
            for f in FACTORS:
                part = cross["partial"][f]
                z, se = fisher_z(part["rho"], part["n"], part["covariates"])
                direction, statement = texts[f]
                out.append(claim(
                    f"cross-gemm/{f}/{outcome}/{measure}", statement, effect=z / scale,
                    se=se / scale, sesoi=sesoi, direction=direction,
                    family=f"cross-gemm/{outcome}/{measure}",
                    measure=f"{what} on {measure} (tau {p['threshold']:g} seed-sd)",
                    design=f"{part['n']} GEMMs of {len(p['architectures'])} architectures, "
                           f"partial Spearman given the other factors, role and architecture, "
                           f"corrected for reliability {rel:.2f}",
                    n=part["n"], units="Fisher z of rho (disattenuated)"))
    return out


def tolerance_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per GEMM: factors, thresholds and damage per dose (docs/results/tolerance.csv)."""
    p = doc["params"]
    out = []
    for g in doc["summary"]["gemms"]:
        row = {"model": g["arch"], "layer": g["layer"], "role": g["role"], "kind": g["kind"],
               "k": g["k"], "frequency": g["frequency"], "depth": g["depth_input"],
               "relative_depth": g["depth"]}
        for k in MEASURES:
            c = g[f"operands/{k}"]
            row[f"threshold_bits_{k}"] = c["threshold_bits"]
            row[f"threshold_censored_{k}"] = c["censored"]
            row[f"threshold_se_{k}"] = c["threshold_se"]
            row[f"monotone_{k}"] = c["monotone"]
            row[f"area_{k}"] = c["area"]
            for m, d in zip(p["doses"], c["damage"], strict=True):
                row[f"damage_{k}_{dose_name(m, p)}"] = d
        for k in MEASURES:
            c = g.get(f"accumulator/{k}")
            row[f"acc_threshold_bits_{k}"] = c["threshold_bits"] if c else math.nan
            for m in p["acc_doses"]:
                row[f"acc_damage_{k}_{dose_name(m, p, 'accumulator')}"] = (
                    c["damage"][p["acc_doses"].index(m)] if c else math.nan)
        out.append(row)
    return out


def plot(s: dict[str, Any], out: Path) -> list[str]:
    from refsim.studies.report import pyplot

    plt = pyplot()
    gemms = s["gemms"]
    if not gemms:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharey=True)
    colors = {"forward": "tab:blue", "backward-input": "tab:orange",
              "backward-weight": "tab:green"}
    key = "operands/test_loss"
    for ax, f, label in zip(axes, FACTORS, ("log2 K", "log2 usage frequency",
                                            "relative depth"), strict=True):
        for role, color in colors.items():
            pts = [(g[f], g[key]["threshold_bits"]) for g in gemms if g["role"] == role]
            if pts:
                xs = [math.log2(a) if f != "depth" else a for a, _ in pts]
                ax.scatter(xs, [b for _, b in pts], s=10, color=color, label=role, alpha=0.7)
        ax.set_xlabel(label)
    axes[0].set_ylabel("threshold bits M* (test loss)")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    fig.suptitle("Operand bits each GEMM needs, against its factors")
    return [save_figure(fig, out, "thresholds.png")]


def _fmt(v: float, spec: str = ".2f") -> str:
    return format(v, spec) if isinstance(v, int | float) and math.isfinite(v) else "n/a"


def section(doc: dict[str, Any]) -> str:
    s, p = doc["summary"], doc["params"]
    lines = [f"## {TITLE}", "",
             f"{s['n_gemms']} GEMMs of {len(p['architectures'])} architectures "
             f"({', '.join(p['architectures'])}); operands "
             f"{', '.join(dose_name(m, p) for m in p['doses'])} ({p['rounding']}, saturating"
             f"{', per-tensor scaling' if p['operand_family'] == 'int' else ''}, fp32 "
             f"accumulation), one GEMM at a time, seeds "
             f"{p['seeds']} per dose, baselines over seeds {p['noise_seeds']}; {p['steps']} "
             f"steps (SGD, the transformers Adam; cosine schedule), test loss with fp32 "
             f"inference. Threshold "
             f"tau = {p['threshold']:g} seed-sd. {doc['grid']['runs']} runs "
             f"({doc['grid']['cached']} cached), {doc['seconds']:.0f} s.", "",
             "| architecture | baseline test loss | seed sd (test loss) | seed sd (train AUC) | "
             "plateau: test-loss change over the last quarter |", "|---|---|---|---|---|"]
    for a in p["architectures"]:
        pl = s["plateau"].get(a, {})
        lines.append(f"| {a} | {_fmt(s['baseline'][a]['test_loss'], '.4f')} | "
                     f"{_fmt(s['noise'][a]['test_loss'], '.4f')} | "
                     f"{_fmt(s['noise'][a]['train_loss_auc'], '.4f')} | "
                     f"{_fmt(pl.get('mean_change', math.nan), '+.4f')} (max |.| "
                     f"{_fmt(pl.get('max_abs_change', math.nan), '.4f')}; "
                     f"{_fmt(pl.get('mean_change_sd', math.nan), '+.2f')} seed-sd: "
                     f"{'plateau' if pl.get('plateau') else 'NOT a plateau'}) |")
    for key, c in s["cross"].items():
        outcome, measure = key.split("/")
        name = "M*" if outcome == "threshold" else "the dose-response area"
        lines += ["", f"**Across GEMMs, {name} on {measure}:** reliability "
                  f"{_fmt(c['reliability'])}, "
                  f"{c['censored_low']} GEMMs tolerate every dose (M* censored low), "
                  f"{c['censored_high']} need more than the largest. Factor correlations: "
                  + ", ".join(f"{k} {_fmt(v)}" for k, v in c["factor_rho"].items()) + ".", "",
                  f"| factor | marginal rho | partial rho | p | n | mixed-model coef ("
                  f"{'bits' if outcome == 'threshold' else 'seed-sd'} per sd of the factor) "
                  "| 95% CI |", "|---|---|---|---|---|---|---|"]
        for f in FACTORS:
            q, mm = c["partial"][f], c["mixed"].get(f, {})
            lines.append(f"| {f} | {_fmt(q['marginal'])} | {_fmt(q['rho'])} | "
                         f"{stats.fmt_p(q['p'])} | {q['n']} | {_fmt(mm.get('coef', math.nan))} "
                         f"| [{_fmt(mm.get('ci_low', math.nan))}, "
                         f"{_fmt(mm.get('ci_high', math.nan))}] |")
    lines += [""] + [f"![thresholds]({f})" for f in doc["plots"]]
    lines += ["", "Per-GEMM thresholds and damage per dose: tolerance.csv.", ""]
    return "\n".join(lines)
