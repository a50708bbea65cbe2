"""Layer sensitivity: perturb one GEMM (one layer, one role) at a time and relate the damage to
the GEMM's reduction length, usage frequency and depth.

Usage rules:
  - For every model in `models` and every row of its factor profile (refsim.factors.profile on
    one training batch) whose layer matches one of the fnmatch patterns `layers` (default
    ["*"]: all), each lever in `levers` gives a training run with that one GEMM
    perturbed and every other product as the plan `rest` computes it ("fp32": simulated fp32;
    "numpy": np.matmul in float32, the same fp32 arithmetic without the simulation's cost):
      operands:    both operands cast to `fmt` (rounding `rounding`, saturating), accumulation
                   in `acc` (the paper's low-precision noise);
      accumulator: float32 operands, accumulation in `acc_fmt` in `acc_order` (the reduction
                   itself made narrow).
    The run of `rest` alone with the same seed (same initialization, same batches in the same
    order) is the baseline: every damage is a paired difference.
  - Measures (refsim.studies.training): `measure` (default train_loss_auc, the area under the
    training-loss curve: every step's loss on the same batch for baseline and treatment, the
    most sensitive of them) decides the accumulation and frequency findings; `outcome_measure`
    (default test_loss, the final test loss) decides the depth finding, which is about the
    final outcome. Every row also has test_loss, test_loss_auc, train_loss_auc and
    test_accuracy differences.
  - Normalization within a model: a model's seed noise is the seed-to-seed standard deviation
    of the measure, pooled over all of that model's runs (baseline and treatments, each over
    the seeds) as the root of the median variance, so that a few broken runs do not set the
    scale. A GEMM's damage z is its mean paired difference over the seeds in units of that
    noise, with its standard error; damages of different models are then comparable.
  - Per lever, pooled over all GEMMs of all models: Spearman's rho of z against log K, log
    usage frequency and relative depth (depth_input / the model's product count) and the
    partial correlations (K given frequency, frequency given K, depth given both); the
    correlations among the factors themselves; a mixed model (statsmodels MixedLM: the
    per-seed z against the standardized factors, a random intercept per model); the
    reliability of the damages (refsim.studies.stats) and the smallest correlation the grid
    detects with 80% power. A diverged run (a non-finite measure) ranks as the most damaged:
    its GEMM's z is replaced by a value above every finite one in the rank statistics and is
    left out of the mixed model.
  - Findings (refsim.studies.stats.decide, on the partial correlations, with the detectable
    correlation corrected for the damages' reliability and `small_rho` as the small effect):
    "accumulation" (longer reductions tolerate more noise: rho(K, z | F) < 0), "frequency"
    (less-used elements tolerate more: rho(F, z | K) > 0) and "depth" (no noticeable effect on
    the final outcome: rho(depth, z_outcome | K, F) = 0) for the operands lever; the same
    with ids suffixed "-acc" for the accumulator lever.
"""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path
from typing import Any

import numpy as np

from refsim.studies import stats
from refsim.studies.params import need, need_format
from refsim.studies.report import said, save_figure
from refsim.studies.training import (
    TRAINING,
    accumulator_spec,
    check_training,
    low_plan,
    model_fields,
    operand_spec,
    profile_of,
    train_run,
)

__all__ = ["FULL", "LEVERS", "QUICK", "STANDARD", "TITLE", "VERSION", "analyze", "check", "grid",
           "plot", "run_one", "section"]

VERSION = 3
TITLE = "Layer sensitivity: one GEMM at a time in low precision"
NAME = "sensitivity"
LEVERS = ("operands", "accumulator")
MEASURES = ("train_loss_auc", "test_loss_auc", "test_loss")
RESTS = ("fp32", "numpy")
FACTORS = ("k", "frequency", "depth")
FACTOR_LABELS = {"k": "K", "frequency": "frequency", "depth": "depth"}

QUICK: dict[str, Any] = {
    **TRAINING, "models": ["mlp", "cnn"], "seeds": [0, 1, 2], "levers": ["operands"],
    "fmt": "e5m1", "rounding": "rne", "acc": "fp32", "acc_fmt": "bf16",
    "acc_order": "sequential", "rest": "fp32", "measure": "train_loss_auc",
    "outcome_measure": "test_loss", "small_rho": 0.4, "layers": ["*"],
}
FULL: dict[str, Any] = {**QUICK, "models": ["mlp", "cnn", "transformer"],
                        "seeds": [0, 1, 2, 3, 4], "steps": 300, "transformer_train": 2048}
STANDARD: dict[str, Any] = {
    **FULL, "models": ["mlp", "cnn", "resnet", "transformer"], "levers": list(LEVERS),
    "rest": "numpy", "optimizer": "sgd", "lr": 0.05, "mlp_hidden": [256, 128, 64, 32, 16],
    "transformer_task": "markov", "transformer_length": 8, "transformer_vocab": 16,
    "transformer_lr": 0.003, "acc_fmt": "e8m3",
}
"""The one-dose standard grid (docs/studies.md, "The decisive design", says what replaced it):
>= 40 GEMMs over four models, K and usage frequency each over more than two decades, 5 seeds,
300 steps, both levers. tests/studies/test_standard_grid.py checks these numbers from the
models' profiles."""


def check(p: dict[str, Any]) -> None:
    from refsim.formats.policy import ROUNDINGS

    check_training(p, NAME)
    for key in ("fmt", "acc", "acc_fmt"):
        need_format(NAME, key, p[key])
    need(p["rounding"] in ROUNDINGS, NAME, "rounding", f"one of {', '.join(ROUNDINGS)}",
         p["rounding"])
    need(bool(p["levers"]) and all(x in LEVERS for x in p["levers"])
         and len(set(p["levers"])) == len(p["levers"]), NAME, "levers",
         f"a non-empty list of {', '.join(LEVERS)}", p["levers"])
    need(p["acc_order"] in ("sequential", "pairwise", "kahan"), NAME, "acc_order",
         "sequential, pairwise or kahan", p["acc_order"])
    need(p["rest"] in RESTS, NAME, "rest", f"one of {', '.join(RESTS)}", p["rest"])
    for key in ("measure", "outcome_measure"):
        need(p[key] in MEASURES, NAME, key, f"one of {', '.join(MEASURES)}", p[key])
    need(isinstance(p["small_rho"], int | float) and 0 < p["small_rho"] < 1, NAME, "small_rho",
         "a number in (0, 1)", p["small_rho"])
    need(bool(p["layers"]) and all(isinstance(x, str) for x in p["layers"]), NAME, "layers",
         "a non-empty list of layer-name patterns (fnmatch)", p["layers"])


def lever_spec(p: dict[str, Any], lever: str) -> dict[str, Any]:
    """The GemmSpec dict that perturbs one GEMM under `lever`."""
    if lever == "operands":
        return operand_spec(p["fmt"], p["rounding"], p["acc"])
    return accumulator_spec(p["acc_fmt"], p["acc_order"])


def units(p: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per (model, layer, role) GEMM: its factors from the model's profile."""
    out = []
    for model in p["models"]:
        rows = profile_of(model_fields(p, model, 0))
        products = max(r.depth_input for r in rows)
        out += [{"model": model, "layer": r.layer, "role": r.role, "k": r.k,
                 "frequency": r.frequency, "depth": r.depth_input,
                 "rel_depth": r.depth_input / products} for r in rows
                if any(fnmatch.fnmatchcase(r.layer, pat) for pat in p["layers"])]
    return out


def grid(p: dict[str, Any]) -> list[dict[str, Any]]:
    runs = []
    specs = {lever: lever_spec(p, lever) for lever in p["levers"]}
    gemms = units(p)
    for model in p["models"]:
        for seed in p["seeds"]:
            fields = model_fields(p, model, seed)
            runs.append({"model": model, "lever": None, "layer": None, "role": None,
                         "train": fields, "plan": {"preset": p["rest"]}})
            runs += [{**u, "lever": lever, "train": fields,
                      "plan": low_plan([(u["layer"], u["role"])], spec, p["rest"])}
                     for lever, spec in specs.items() for u in gemms if u["model"] == model]
    return runs


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    return train_run(cfg)


def warm_key(cfg: dict[str, Any]) -> tuple:
    """Runs with one key use the same compiled kernels."""
    return (cfg["model"], cfg["lever"])


# ---- analysis ------------------------------------------------------------------------------------
def _noise(values: list[list[float]]) -> float:
    """Root of the median over units of the across-seed variance (module docstring)."""
    var = [float(np.var(v, ddof=1)) for v in
           ([x for x in vals if math.isfinite(x)] for vals in values) if len(v) > 1]
    return math.sqrt(float(np.median(var))) if var else math.nan


def _ranked(z: list[float]) -> list[float]:
    """z with +inf (every run diverged) replaced by a finite value above all others."""
    finite = [v for v in z if math.isfinite(v)]
    top = (max(finite) if finite else 0.0) + 1.0 + abs(max(finite, default=0.0))
    return [top if v == math.inf else v for v in z]


def _damages(p: dict[str, Any], configs: list[dict[str, Any]], results: list[dict[str, Any]]
             ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    keys = ("train_loss_auc", "test_loss_auc", "test_loss", "test_accuracy")
    base = {(c["model"], c["train"]["seed"]): r for c, r in zip(configs, results, strict=True)
            if c["lever"] is None}
    gathered: dict[tuple, dict[str, Any]] = {}
    for c, r in zip(configs, results, strict=True):
        if c["lever"] is None:
            continue
        b = base[(c["model"], c["train"]["seed"])]
        u = gathered.setdefault((c["lever"], c["model"], c["layer"], c["role"]), {
            **{k: c[k] for k in ("lever", "model", "layer", "role", "k", "frequency", "depth",
                                 "rel_depth")}, "runs": {k: [] for k in keys},
            "diffs": {k: [] for k in keys}})
        for k in keys:
            u["runs"][k].append(r[k])
            u["diffs"][k].append(r[k] - b[k])
    models: dict[str, dict[str, Any]] = {}
    for m in p["models"]:
        mine = [u for u in gathered.values() if u["model"] == m]
        info: dict[str, Any] = {"baseline": {}, "noise": {}}
        for k in keys:
            runs = [[base[(m, s)][k] for s in p["seeds"]]]
            for lever in p["levers"]:
                runs += [u["runs"][k] for u in mine if u["lever"] == lever]
            info["noise"][k] = _noise(runs)
            info["baseline"][k] = float(np.nanmean(runs[0]))
            info["baseline"][f"{k}_sd"] = float(np.nanstd(runs[0], ddof=1)) \
                if len(runs[0]) > 1 else math.nan
        models[m] = info
    rows = []
    for u in gathered.values():
        noise = models[u["model"]]["noise"]
        row = {k: u[k] for k in ("lever", "model", "layer", "role", "k", "frequency", "depth",
                                 "rel_depth")}
        for k in keys:
            d = np.asarray(u["diffs"][k], np.float64)
            ok = d[np.isfinite(d)]
            n = len(ok)
            mean = float(ok.mean()) if n else math.nan
            sd = float(ok.std(ddof=1)) if n > 1 else math.nan
            row[f"d_{k}"] = mean if n or k == "test_accuracy" else math.inf
            row[f"d_{k}_sd"] = sd
            if k != "test_accuracy":
                scale = noise[k]
                row[f"z_{k}"] = mean / scale if n else math.inf
                row[f"z_{k}_se"] = sd / math.sqrt(n) / scale if n > 1 else math.nan
                row[f"p_{k}"] = stats.paired(ok, np.zeros(n))["p"] if n > 1 else math.nan
        row["seeds"] = len(u["diffs"]["test_loss"])
        row["diverged"] = int(sum(not math.isfinite(v) for v in u["diffs"][p["measure"]]))
        rows.append(row)
    return rows, models


def _lever_stats(p: dict[str, Any], rows: list[dict[str, Any]], measure: str
                 ) -> dict[str, Any]:
    """Correlations, partial correlations, power and the mixed model of one lever's rows."""
    z = _ranked([r[f"z_{measure}"] for r in rows])
    x = {"k": [math.log10(r["k"]) for r in rows],
         "frequency": [math.log10(r["frequency"]) for r in rows],
         "depth": [r["rel_depth"] for r in rows]}
    given = {"k": ["frequency"], "frequency": ["k"], "depth": ["k", "frequency"]}
    finite = [r for r in rows if math.isfinite(r[f"z_{measure}"])]
    rel = stats.reliability([r[f"z_{measure}"] for r in finite],
                            [r[f"z_{measure}_se"] for r in finite])
    out: dict[str, Any] = {"measure": measure, "n": len(rows), "reliability": rel,
                           "significant": sum(1 for r in rows if r[f"p_{measure}"] < stats.ALPHA
                                              or r[f"z_{measure}"] == math.inf),
                           "marginal": {}, "partial": {}, "detectable": {}}
    for f in FACTORS:
        out["marginal"][f] = stats.spearman(x[f], z)
        out["partial"][f] = {**stats.partial_spearman(x[f], z, [x[g] for g in given[f]]),
                             "given": given[f]}
        raw = stats.detectable_rho(len(rows), len(given[f]))
        true = raw / math.sqrt(rel) if rel > 0 else math.inf if rel == 0 else math.nan
        # a correlation cannot exceed 1: beyond it, no correlation is detectable
        out["detectable"][f] = {"raw": raw, "true": math.inf if true >= 1 else true}
    out["factor_correlations"] = {f"{a}~{b}": stats.spearman(x[a], x[b])
                                  for a, b in (("k", "frequency"), ("k", "depth"),
                                               ("frequency", "depth"))}
    out["per_model"] = {m: {f: stats.spearman([v for v, r in zip(x[f], rows, strict=True)
                                                if r["model"] == m],
                                               [v for v, r in zip(z, rows, strict=True)
                                                if r["model"] == m]) for f in FACTORS}
                        for m in p["models"]}
    return out


def _mixed(p: dict[str, Any], configs: list[dict[str, Any]], results: list[dict[str, Any]],
           models: dict[str, Any], lever: str, measure: str) -> dict[str, Any]:
    base = {(c["model"], c["train"]["seed"]): r for c, r in zip(configs, results, strict=True)
            if c["lever"] is None}
    y, groups = [], []
    f: dict[str, list[float]] = {"k": [], "frequency": [], "depth": []}
    for c, r in zip(configs, results, strict=True):
        if c["lever"] != lever:
            continue
        d = r[measure] - base[(c["model"], c["train"]["seed"])][measure]
        y.append(d / models[c["model"]]["noise"][measure])
        groups.append(c["model"])
        f["k"].append(math.log10(c["k"]))
        f["frequency"].append(math.log10(c["frequency"]))
        f["depth"].append(c["rel_depth"])
    return stats.mixed_model(y, f, groups)


def analyze(p: dict[str, Any], configs: list[dict[str, Any]],
            results: list[dict[str, Any]]) -> tuple[list, dict, list]:
    rows, models = _damages(p, configs, results)
    levers = {}
    for lever in p["levers"]:
        mine = [r for r in rows if r["lever"] == lever]
        levers[lever] = {
            "main": _lever_stats(p, mine, p["measure"]),
            "outcome": _lever_stats(p, mine, p["outcome_measure"]),
            "mixed": _mixed(p, configs, results, models, lever, p["measure"]),
            "mixed_outcome": _mixed(p, configs, results, models, lever, p["outcome_measure"]),
        }
    seconds: dict[str, list[float]] = {}
    for c, r in zip(configs, results, strict=True):
        seconds.setdefault(c["model"], []).append(r.get("seconds", math.nan))
    summary = {"levers": levers, "models": models, "units": len(rows),
               "gemms": len({(r["model"], r["layer"], r["role"]) for r in rows}),
               "seeds": p["seeds"], "rows": rows,
               "seconds_per_run": {m: float(np.nanmean(v)) for m, v in seconds.items()}}
    return rows, summary, _findings(p, summary)


# ---- findings ------------------------------------------------------------------------------------
def _text(c: dict[str, float]) -> str:
    if not math.isfinite(c["rho"]):
        return "rho undefined"
    return f"rho {c['rho']:+.2f}, p {stats.fmt_p(c['p'])}"


def _verdict(st: dict[str, Any], f: str, sign: int, small: float) -> tuple[bool | None, str]:
    part, det = st["partial"][f], st["detectable"][f]
    verdict = stats.decide(part["rho"], part["p"], det["true"], small, sign)
    given = " and ".join(FACTOR_LABELS[g] for g in part["given"])
    text = (f"partial Spearman of the damage ({st['measure']}, in seed-noise units) with "
            f"{FACTOR_LABELS[f]} given {given}: {_text(part)} (marginal "
            f"{_text(st['marginal'][f])}; n {part['n']}); "
            f"{stats.power_text(det['true'], small)}; the grid detects |rho| >= "
            f"{det['raw']:.2f} among the measured damages, whose reliability is "
            f"{st['reliability']:.2f}; {st['significant']}/{st['n']} GEMMs significantly "
            "damaged")
    return verdict, text


def _findings(p: dict[str, Any], s: dict[str, Any]) -> list[dict[str, Any]]:
    small = p["small_rho"]
    where = (f"{s['gemms']} GEMMs of {', '.join(p['models'])}, {len(p['seeds'])} seeds, "
             f"{p['steps']} steps")
    out = []
    for lever, st in s["levers"].items():
        suffix = "" if lever == "operands" else "-acc"
        how = (f"{p['fmt']} operands" if lever == "operands"
               else f"{p['acc_fmt']} {p['acc_order']} accumulation")
        for fid, f, sign, claim in (
                ("accumulation", "k", -1, "layers with higher accumulation (longer reductions "
                 "K) tolerate more low-precision noise"),
                ("frequency", "frequency", +1, "GEMMs whose elements are used less often "
                 "tolerate more low-precision noise"),
                ("depth", "depth", 0, "depth has no noticeable effect on the final outcome")):
            st_used = st["outcome"] if f == "depth" else st["main"]
            verdict, text = _verdict(st_used, f, sign, small)
            det = st_used["detectable"][f]
            out.append({"id": fid + suffix, "claim": f"{claim} ({how} in one GEMM at a time)",
                        "supported": verdict, "evidence": f"{text} ({where})",
                        "power": {"detectable_rho": det["true"],
                                  "detectable_rho_measured": det["raw"], "small_rho": small,
                                  "reliability": st_used["reliability"]}})
    return out


# ---- plots and the report section --------------------------------------------------------------
def plot(s: dict[str, Any], out: Path) -> list[str]:
    from refsim.studies.report import pyplot

    rows_all = s["rows"]
    if not rows_all:
        return []
    plt = pyplot()
    levers = list(s["levers"])
    measure = next(iter(s["levers"].values()))["main"]["measure"]
    fig, axes = plt.subplots(len(levers), 3, figsize=(13, 3.8 * len(levers)), squeeze=False)
    models = list(dict.fromkeys(r["model"] for r in rows_all))
    for li, lever in enumerate(levers):
        rows = [r for r in rows_all if r["lever"] == lever and math.isfinite(r[f"z_{measure}"])]
        st = s["levers"][lever]["main"]
        for ax, f, label in ((axes[li][0], "k", "K (reduction length)"),
                             (axes[li][1], "frequency", "usage frequency"),
                             (axes[li][2], "rel_depth", "relative depth from the input")):
            for m in models:
                sel = [r for r in rows if r["model"] == m]
                ax.errorbar([r[f] for r in sel], [r[f"z_{measure}"] for r in sel],
                            yerr=[r[f"z_{measure}_se"] if math.isfinite(r[f"z_{measure}_se"])
                                  else 0.0 for r in sel], fmt="o", ms=4, capsize=2, label=m)
            if f != "rel_depth":
                ax.set_xscale("log")
                ax.tick_params(axis="x", which="minor", labelbottom=False)  # they overlap
            key = "depth" if f == "rel_depth" else f
            c = st["partial"][key]
            ax.set_title(f"{lever}: partial rho {c['rho']:+.2f} (p {stats.fmt_p(c['p'])})",
                         fontsize=9)
            ax.axhline(0, color="gray", lw=0.6)
            ax.set_xlabel(label)
            ax.set_ylabel(f"damage ({measure}, seed-noise units)")
        axes[li][0].legend(fontsize=7)
    return [save_figure(fig, out, "sensitivity.png")]


def _fmt(v: float, spec: str) -> str:
    return format(v, spec) if math.isfinite(v) else ("diverged" if v == math.inf else "n/a")


def section(doc: dict[str, Any]) -> str:
    s, p = doc["summary"], doc["params"]
    m, om = p["measure"], p["outcome_measure"]
    levers = {"operands": f"operands in {p['fmt']} ({p['rounding']}, saturating), "
              f"{p['acc']} accumulation",
              "accumulator": f"float32 operands, {p['acc_fmt']} {p['acc_order']} "
              "accumulation"}
    lines = [f"## {TITLE}", "",
             f"Models {', '.join(p['models'])}; {s['gemms']} GEMMs (layer and role), each "
             "perturbed alone by each lever: " + "; ".join(
                 f"**{lv}**: {levers[lv]}" for lv in p["levers"]) +
             f". Every other product: {p['rest']} "
             f"({'np.matmul in float32' if p['rest'] == 'numpy' else 'simulated fp32'}). "
             f"{p['steps']} training steps; seeds {p['seeds']}; "
             f"{doc['grid']['runs']} runs ({doc['grid']['cached']} cached), "
             f"{doc['seconds']:.0f} s. Damage = the treatment's measure minus the baseline's "
             "with the same seed (same initialization and batches), mean over seeds, in units "
             f"of the model's seed noise (z). Main measure: {m}; final outcome: "
             f"{p['outcome_measure']}.", "",
             "| model | baseline test loss | test accuracy | "
             f"{m} (seed sd) | seed noise of {m} | of {p['outcome_measure']} | "
             "seconds per run |", "|---|---|---|---|---|---|---|"]
    for model, info in s["models"].items():
        b = info["baseline"]
        lines.append(f"| {model} | {b['test_loss']:.4f} | {100 * b['test_accuracy']:.2f}% | "
                     f"{b[m]:.4f} ({_fmt(b[f'{m}_sd'], '.4f')}) | "
                     f"{_fmt(info['noise'][m], '.4g')} | "
                     f"{_fmt(info['noise'][p['outcome_measure']], '.4g')} | "
                     f"{s['seconds_per_run'].get(model, math.nan):.1f} |")
    for lever, st in s["levers"].items():
        main, outc = st["main"], st["outcome"]
        lines += ["", f"### Lever: {lever} ({levers[lever]})", "",
                  f"| model | layer | role | K | frequency | depth | z {m} (se) | p | "
                  f"z {p['outcome_measure']} | accuracy change |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in s["rows"] if r["lever"] == lever):
            lines.append(
                f"| {r['model']} | {r['layer']} | {r['role']} | {r['k']} | "
                f"{r['frequency']:.4g} | {r['depth']} | {_fmt(r[f'z_{m}'], '+.2f')} "
                f"({_fmt(r[f'z_{m}_se'], '.2f')}) | {stats.fmt_p(r[f'p_{m}'])} | "
                f"{_fmt(r[f'z_{om}'], '+.2f')} | "
                f"{_fmt(100 * r['d_test_accuracy'], '+.2f')} pp |")
        fc = main["factor_correlations"]
        lines += ["", f"Damage reliability {main['reliability']:.2f} ({m}) and "
                  f"{outc['reliability']:.2f} ({p['outcome_measure']}); "
                  f"{main['significant']}/{main['n']} GEMMs significantly damaged "
                  f"(paired t, p < {stats.ALPHA:g}). The factors are correlated across "
                  "GEMMs: " + "; ".join(f"{k.replace('~', ' with ')} {_text(v)}"
                                        for k, v in fc.items()) + ".", "",
                  "| factor | measure | Spearman rho (p) | partial rho (p), given | "
                  "detectable rho (absolute): measured / true | mixed model coef [95% CI] (p) |",
                  "|---|---|---|---|---|---|"]
        for f in FACTORS:
            for label, stt, mixed in ((m, main, st["mixed"]),
                                      (p["outcome_measure"], outc, st["mixed_outcome"])):
                c, pc, det, mm = (stt["marginal"][f], stt["partial"][f],
                                  stt["detectable"][f], mixed[f])
                lines.append(
                    f"| {FACTOR_LABELS[f]} | {label} | {_text(c)} | {_text(pc)}, "
                    f"{' and '.join(FACTOR_LABELS[g] for g in pc['given'])} | "
                    f"{_fmt(det['raw'], '.2f')} / {_fmt(det['true'], '.2f')} | "
                    f"{_fmt(mm['coef'], '+.3f')} [{_fmt(mm['ci_low'], '+.3f')}, "
                    f"{_fmt(mm['ci_high'], '+.3f')}] ({stats.fmt_p(mm['p'])}) |")
        lines += ["", "Per model (Spearman, " + m + "): " + "; ".join(
            f"{model}: " + ", ".join(f"{FACTOR_LABELS[f]} {_text(v)}" for f, v in pm.items())
            for model, pm in main["per_model"].items()) + "."]
    lines += ["", "K and frequency enter the statistics as log10, depth as the position "
              "from the input over the model's product count. The mixed model regresses the "
              "per-seed z on the standardized factors with a random intercept per model "
              "(coefficients: z per factor sd). 'Detectable' is the smallest |rho| found with "
              f"{100 * stats.POWER:.0f}% power at alpha {stats.ALPHA:g}: among the measured "
              "damages, and with the true damages (divided by the square root of the "
              f"reliability); a verdict says NOT SUPPORTED when that is at most "
              f"{p['small_rho']:g} and nothing is found, UNDECIDED when it is larger.", ""]
    lines += [f"![sensitivity]({f})" for f in doc["plots"]]
    lines += ["", said(doc["findings"]), ""]
    return "\n".join(lines)
