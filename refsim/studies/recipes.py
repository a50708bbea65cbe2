"""Training recipes against fp32: what each low-precision recipe does to the test loss, and which
GEMM role the damage comes from.

Usage rules:
  - Recipes are refsim.nn presets (refsim.nn.numerics.RECIPES: mxfp8, nvfp4, nvfp4-4over6,
    deepseek-fp8; docs/nn.md says what each quantizes per role and its source). Each recipe is
    trained with every role as the recipe says ("all") and, with `roles` true, once per role
    with only that role as the recipe says and the other two as the reference plan
    (Numerics.only), on every model and seed.
  - The reference is the `reference` preset (fp32: every product simulated in fp32) trained with
    the same seed: same initial weights, batches and dropout, so differences are paired.
  - Measure: the final test loss (`measure`; the training-loss area is reported too). Per model
    the difference recipe - reference over seeds (stats.paired: mean, 95% CI, p); pooled over
    models in units of each model's seed noise (the seed-to-seed sd of the measure, root of the
    median variance over the model's plans), as the allocate study does.
  - Findings (one per recipe, id "recipe-<name>"): "<recipe> trains as well as the reference",
    a non-inferiority test with margin `small_diff` seed-noise units on the pooled difference
    (recipe - reference; lower is better): supported when the 95% confidence interval lies
    below +small_diff (any loss is smaller than the margin), not supported when it lies above
    it (the recipe is worse by more than the margin), else undecided. A difference can be
    significant and still within the margin: "as well as" is about size, not about whether the
    bits differ (they always do). The role that carries the damage is the one whose single-role
    run has the largest pooled difference.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from refsim.studies import stats
from refsim.studies.params import need
from refsim.studies.report import said, save_figure
from refsim.studies.training import TRAINING, check_training, model_fields, train_run

__all__ = ["FULL", "QUICK", "TITLE", "VERSION", "analyze", "check", "grid", "non_inferior",
           "plot", "run_one", "section"]

VERSION = 1
TITLE = "Training recipes (MXFP8, NVFP4, NVFP4 4/6, DeepSeek FP8) against fp32"
NAME = "recipes"
MEASURES = ("test_loss", "train_loss_auc")
ALL = "all"

QUICK: dict[str, Any] = {
    **TRAINING, "models": ["mlp", "cnn", "transformer"], "mlp_hidden": [64], "seeds": [0, 1],
    "steps": 20, "recipes": ["mxfp8", "nvfp4", "nvfp4-4over6", "deepseek-fp8"],
    "reference": "fp32", "roles": True, "measure": "test_loss", "small_diff": 0.5,
}
FULL: dict[str, Any] = {**QUICK, "seeds": [0, 1, 2, 3, 4], "steps": 300, "mlp_hidden": [128],
                        "transformer_train": 2048}


def check(p: dict[str, Any]) -> None:
    from refsim.nn.numerics import PRESETS, RECIPES

    check_training(p, NAME)
    need(bool(p["recipes"]) and all(r in RECIPES for r in p["recipes"]), NAME, "recipes",
         f"a non-empty list of {', '.join(RECIPES)}", p["recipes"])
    need(p["reference"] in PRESETS and p["reference"] not in RECIPES, NAME, "reference",
         "a preset that is not a recipe (fp32, numpy, bf16, ...)", p["reference"])
    need(isinstance(p["roles"], bool), NAME, "roles", "true or false", p["roles"])
    need(p["measure"] in MEASURES, NAME, "measure", f"one of {', '.join(MEASURES)}",
         p["measure"])
    need(isinstance(p["small_diff"], int | float) and p["small_diff"] > 0, NAME, "small_diff",
         "a positive number", p["small_diff"])


def _role_sets(p: dict[str, Any]) -> list[str]:
    from refsim.nn.numerics import ROLES

    return [ALL, *(ROLES if p["roles"] else ())]


def grid(p: dict[str, Any]) -> list[dict[str, Any]]:
    runs = []
    for model in p["models"]:
        for seed in p["seeds"]:
            fields = model_fields(p, model, seed)
            runs.append({"model": model, "recipe": "reference", "roles": ALL, "train": fields,
                         "plan": {"preset": p["reference"]}})
            for recipe in p["recipes"]:
                for roles in _role_sets(p):
                    plan: dict[str, Any] = {"preset": recipe}
                    if roles != ALL:
                        plan.update(roles=[roles], rest=p["reference"])
                    runs.append({"model": model, "recipe": recipe, "roles": roles,
                                 "train": fields, "plan": plan})
    return runs


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    return train_run(cfg)


def warm_key(cfg: dict[str, Any]) -> tuple:
    """Runs with one key use the same compiled kernels."""
    return (cfg["model"], cfg["recipe"])


def _noise(values: list[list[float]]) -> float:
    var = [float(np.var(v, ddof=1)) for v in
           ([x for x in vals if math.isfinite(x)] for vals in values) if len(v) > 1]
    return math.sqrt(float(np.median(var))) if var else math.nan


def analyze(p: dict[str, Any], configs: list[dict[str, Any]],
            results: list[dict[str, Any]]) -> tuple[list, dict, list]:
    raw: dict[str, dict[tuple[str, str, str, int], float]] = {k: {} for k in MEASURES}
    rows = []
    for c, r in zip(configs, results, strict=True):
        seed = c["train"]["seed"]
        for k in MEASURES:
            raw[k][(c["model"], c["recipe"], c["roles"], seed)] = r[k]
        rows.append({"model": c["model"], "recipe": c["recipe"], "roles": c["roles"],
                     "seed": seed, **{k: r[k] for k in MEASURES},
                     "test_accuracy": r["test_accuracy"], "seconds": r.get("seconds")})
    plans = [("reference", ALL)] + [(rc, rs) for rc in p["recipes"] for rs in _role_sets(p)]
    noise = {k: {m: _noise([[raw[k].get((m, rc, rs, s), math.nan) for s in p["seeds"]]
                            for rc, rs in plans]) for m in p["models"]} for k in MEASURES}

    def series(k: str, model: str | None, recipe: str, roles: str, z: bool) -> list[float]:
        out = []
        for m in p["models"] if model is None else [model]:
            scale = noise[k][m] if z else 1.0
            out += [raw[k].get((m, recipe, roles, s), math.nan) / scale for s in p["seeds"]]
        return out

    per_model: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    pooled: dict[str, dict[str, dict[str, float]]] = {}
    for k in MEASURES:
        for recipe in p["recipes"]:
            for roles in _role_sets(p):
                key = f"{recipe}|{roles}"
                pooled.setdefault(k, {})[key] = stats.paired(
                    series(k, None, recipe, roles, True), series(k, None, "reference", ALL, True))
                per_model.setdefault(k, {})[key] = {
                    m: stats.paired(series(k, m, recipe, roles, False),
                                    series(k, m, "reference", ALL, False))
                    for m in p["models"]}
    means = {k: {f"{rc}|{rs}": float(np.nanmean(series(k, None, rc, rs, False)))
                 for rc, rs in plans} for k in MEASURES}
    seconds: dict[str, list[float]] = {}
    for c, r in zip(configs, results, strict=True):
        seconds.setdefault(c["recipe"], []).append(r.get("seconds", math.nan))
    summary = {"pooled": pooled, "per_model": per_model, "noise": noise, "mean": means,
               "measure": p["measure"], "pairs": len(p["models"]) * len(p["seeds"]),
               "seconds_per_run": {rc: float(np.nanmean(v)) for rc, v in seconds.items()}}
    return rows, summary, _findings(p, summary)


def _cmp(c: dict[str, float], unit: str) -> str:
    return (f"{c['mean_diff']:+.3f} {unit} (95% CI [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}], "
            f"p {stats.fmt_p(c['p'])}, n {c['n']}; detects {c['detectable']:.3g})")


def _culprit(p: dict[str, Any], s: dict[str, Any], recipe: str) -> str | None:
    sets = [rs for rs in _role_sets(p) if rs != ALL]
    diffs = {rs: s["pooled"][p["measure"]][f"{recipe}|{rs}"]["mean_diff"] for rs in sets}
    finite = {rs: d for rs, d in diffs.items() if math.isfinite(d)}
    return max(finite, key=lambda rs: finite[rs]) if finite else None


def non_inferior(c: dict[str, float], margin: float) -> bool | None:
    """The non-inferiority verdict of a paired comparison (module docstring)."""
    if not (math.isfinite(c["ci_low"]) and math.isfinite(c["ci_high"])):
        return None
    if c["ci_high"] < margin:
        return True
    if c["ci_low"] > margin:
        return False
    return None


def _findings(p: dict[str, Any], s: dict[str, Any]) -> list[dict[str, Any]]:
    small = p["small_diff"]
    out = []
    for recipe in p["recipes"]:
        c = s["pooled"][p["measure"]][f"{recipe}|{ALL}"]
        culprit = _culprit(p, s, recipe)
        where = "" if culprit is None else (
            f"; the single-role run that loses most is {culprit} ("
            f"{s['pooled'][p['measure']][f'{recipe}|{culprit}']['mean_diff']:+.3f})")
        out.append({"id": f"recipe-{recipe}",
                    "claim": f"{recipe} trains as well as {p['reference']}",
                    "supported": non_inferior(c, small),
                    "evidence": f"{p['measure']} {recipe} - {p['reference']}: "
                                f"{_cmp(c, 'seed-noise units')}, margin {small:g}; "
                                f"{len(p['models'])} models x {len(p['seeds'])} seeds, "
                                f"{p['steps']} steps{where}",
                    "power": {"detectable_diff": c["detectable"], "small_diff": small,
                              "n": c["n"]}})
    return out


def plot(s: dict[str, Any], out: Path) -> list[str]:
    from refsim.studies.report import pyplot

    plt = pyplot()
    pooled = s["pooled"][s["measure"]]
    keys = [k for k, c in pooled.items() if math.isfinite(c["mean_diff"])]
    if not keys:
        return []
    recipes = list(dict.fromkeys(k.split("|")[0] for k in keys))
    role_sets = list(dict.fromkeys(k.split("|")[1] for k in keys))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(role_sets)
    for i, rs in enumerate(role_sets):
        xs, ys, lo, hi = [], [], [], []
        for j, rc in enumerate(recipes):
            c = pooled.get(f"{rc}|{rs}")
            if c is None or not math.isfinite(c["mean_diff"]):
                continue
            xs.append(j + (i - (len(role_sets) - 1) / 2) * width)
            ys.append(c["mean_diff"])
            ok = math.isfinite(c["ci_low"])
            lo.append(c["mean_diff"] - c["ci_low"] if ok else 0.0)
            hi.append(c["ci_high"] - c["mean_diff"] if ok else 0.0)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=rs)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(range(len(recipes)), recipes)
    ax.set_ylabel(f"{s['measure']} - reference (seed-noise units)")
    ax.set_title("Recipes against the reference, all roles and one role at a time")
    ax.legend(fontsize=7, title="roles quantized", title_fontsize=7)
    files = [save_figure(fig, out, "recipes.png")]
    per_model = s["per_model"][s["measure"]]
    models = list(next(iter(per_model.values())))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(recipes))]
        ys = [per_model[f"{rc}|{ALL}"][m]["mean_diff"] for rc in recipes]
        ax.bar(xs, ys, width, label=m)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(range(len(recipes)), recipes)
    ax.set_ylabel(f"{s['measure']} - reference")
    ax.set_title("Recipes (all roles) per model")
    ax.legend(fontsize=7)
    files.append(save_figure(fig, out, "recipes_per_model.png"))
    return files


def section(doc: dict[str, Any]) -> str:
    s, p = doc["summary"], doc["params"]
    measure = p["measure"]
    lines = [f"## {TITLE}", "",
             f"Models {', '.join(p['models'])} (MLP hidden {p['mlp_hidden']}); reference: the "
             f"{p['reference']} plan with the same seeds; {p['steps']} steps ({p['optimizer']}, "
             f"lr {p['lr']:g}; transformer {p['transformer_optimizer']}, lr "
             f"{p['transformer_lr']:g}, task {p['transformer_task']}); seeds {p['seeds']}; "
             f"{doc['grid']['runs']} runs ({doc['grid']['cached']} cached), "
             f"{doc['seconds']:.0f} s. Seconds per run: " + ", ".join(
                 f"{k} {v:.1f}" for k, v in s["seconds_per_run"].items()) + ".", "",
             f"Difference in {measure}, recipe minus reference, paired over seeds. Per model in "
             f"the measure's units; pooled over models in seed-noise units. \"all\": every role "
             f"as the recipe says; a role name: only that role as the recipe says.", "",
             "| recipe | roles | pooled (seed-noise units) | " + " | ".join(
                 f"{m}" for m in p["models"]) + " |",
             "|---|---|---|" + "---|" * len(p["models"])]
    for key, c in s["pooled"][measure].items():
        recipe, roles = key.split("|")
        cells = [f"{pm['mean_diff']:+.4f} [{pm['ci_low']:+.4f}, {pm['ci_high']:+.4f}]"
                 for pm in s["per_model"][measure][key].values()]
        lines.append(f"| {recipe} | {roles} | {c['mean_diff']:+.3f} [{c['ci_low']:+.3f}, "
                     f"{c['ci_high']:+.3f}] | " + " | ".join(cells) + " |")
    lines += ["", "Mean per plan (over models and seeds): " + "; ".join(
        f"{k.replace('|', ' ')} {v:.4f}" for k, v in s["mean"][measure].items()) + ".", ""]
    lines += [f"![recipes]({f})" for f in doc["plots"]]
    lines += ["", said(doc["findings"]), ""]
    return "\n".join(lines)
