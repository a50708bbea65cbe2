"""Layer sensitivity: quantize one GEMM (one layer, one role) at a time and correlate the damage
with the GEMM's reduction length, usage frequency and depth.

Usage rules:
  - For every model in `models` and every row of its factor profile (refsim.factors.profile
    on one training batch), a training run puts that one GEMM's operands in `fmt` (rounding
    `rounding`, saturating; accumulation `acc`) and keeps every other product fp32; an all-fp32
    run with the same seed is the baseline. The damage of a GEMM is the final test loss minus
    the baseline's (and the test accuracy difference), averaged over `seeds`.
  - Correlations: Spearman's rho of the mean damage against K, against the usage frequency
    (the geometric mean of the two operands' uses, refsim.factors.ProfileRow.frequency) and
    against the depth from the input, pooled over all GEMMs of all models, with p-values.
  - Findings: "accumulation" (the paper: GEMMs with longer reductions tolerate more noise) is
    supported when rho(K, damage) < 0 with p < 0.05; "frequency" (less-used elements tolerate
    more) when rho(frequency, damage) > 0 with p < 0.05; "depth" (no effect on the outcome)
    is contradicted when rho(depth, damage) is significant (p < 0.05) and otherwise undecided:
    an insignificant correlation over a few GEMMs cannot establish the absence of an effect.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from refsim.studies import stats
from refsim.studies.params import need, need_format
from refsim.studies.report import said, save_figure
from refsim.studies.training import low_plan, operand_spec, profile_of, train_run

__all__ = ["FULL", "QUICK", "TITLE", "VERSION", "analyze", "check", "grid", "plot", "run_one",
           "section"]

VERSION = 2
TITLE = "Layer sensitivity: one GEMM at a time in low precision"
NAME = "sensitivity"
MODELS = ("mlp", "cnn", "transformer")
TRAIN_SIZES = {"mlp": 1437, "cnn": 1437}

QUICK: dict[str, Any] = {
    "models": ["mlp", "cnn"], "seeds": [0, 1, 2], "steps": 40, "fmt": "e5m1",
    "rounding": "rne", "acc": "fp32", "optimizer": "adam", "lr": 0.01, "transformer_lr": 0.003,
    "transformer_train": 512,
}
FULL: dict[str, Any] = {**QUICK, "models": list(MODELS), "seeds": [0, 1, 2, 3, 4],
                        "steps": 300, "transformer_train": 2048}


def check(p: dict[str, Any]) -> None:
    from formats.policy import ROUNDINGS

    need(bool(p["models"]) and all(m in MODELS for m in p["models"]), NAME, "models",
         f"a non-empty list of {', '.join(MODELS)}", p["models"])
    need(len(p["seeds"]) >= 1 and all(isinstance(s, int) and s >= 0 for s in p["seeds"]),
         NAME, "seeds", "a non-empty list of ints >= 0", p["seeds"])
    check_training(p, NAME)
    for key in ("fmt", "acc"):
        need_format(NAME, key, p[key])
    need(p["rounding"] in ROUNDINGS, NAME, "rounding", f"one of {', '.join(ROUNDINGS)}",
         p["rounding"])


def model_fields(p: dict[str, Any], model: str, seed: int) -> dict[str, Any]:
    """TrainConfig fields of a short run of `model` under parameters p (steps, optimizer, lr,
    transformer_lr, transformer_train); epochs cover the steps, never more."""
    steps = p["steps"]
    fields: dict[str, Any] = {"model": model, "seed": seed, "max_steps": steps,
                              "optimizer": p["optimizer"], "lr": p["lr"]}
    n = TRAIN_SIZES.get(model, p["transformer_train"])
    if model == "transformer":
        fields["n_train"] = p["transformer_train"]
        fields["lr"] = p["transformer_lr"]
    fields["epochs"] = math.ceil(steps * 32 / n)
    return fields


def check_training(p: dict[str, Any], study: str) -> None:
    """The training parameters shared by sensitivity and allocate."""
    for key in ("steps", "transformer_train"):
        need(isinstance(p[key], int) and p[key] >= 1, study, key, "a positive int", p[key])
    need(p["optimizer"] in ("sgd", "adam"), study, "optimizer", "sgd or adam", p["optimizer"])
    for key in ("lr", "transformer_lr"):
        need(isinstance(p[key], int | float) and p[key] > 0, study, key, "a positive number",
             p[key])


def grid(p: dict[str, Any]) -> list[dict[str, Any]]:
    runs = []
    spec = operand_spec(p["fmt"], p["rounding"], p["acc"])
    for model in p["models"]:
        rows = profile_of(model_fields(p, model, 0))
        for seed in p["seeds"]:
            fields = model_fields(p, model, seed)
            runs.append({"model": model, "layer": None, "role": None, "train": fields,
                         "plan": {"preset": "fp32"}})
            runs += [{"model": model, "layer": r.layer, "role": r.role, "k": r.k,
                      "frequency": r.frequency, "depth": r.depth_input, "train": fields,
                      "plan": low_plan([(r.layer, r.role)], spec)} for r in rows]
    return runs


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    return train_run(cfg)


def warm_key(cfg: dict[str, Any]) -> tuple:
    """Runs with one key use the same compiled kernels."""
    return (cfg["model"], cfg["layer"] is None)


def analyze(p: dict[str, Any], configs: list[dict[str, Any]],
            results: list[dict[str, Any]]) -> tuple[list, dict, list]:
    base = {(c["model"], c["train"]["seed"]): r for c, r in zip(configs, results, strict=True)
            if c["layer"] is None}
    units: dict[tuple[str, str, str], dict[str, Any]] = {}
    for c, r in zip(configs, results, strict=True):
        if c["layer"] is None:
            continue
        b = base[(c["model"], c["train"]["seed"])]
        u = units.setdefault((c["model"], c["layer"], c["role"]), {
            "model": c["model"], "layer": c["layer"], "role": c["role"], "k": c["k"],
            "frequency": c["frequency"], "depth": c["depth"], "d_loss": [], "d_acc": []})
        u["d_loss"].append(r["test_loss"] - b["test_loss"])
        u["d_acc"].append(r["test_accuracy"] - b["test_accuracy"])
    rows = []
    for u in units.values():
        dl = [v for v in u["d_loss"] if math.isfinite(v)]
        rows.append({key: u[key] for key in ("model", "layer", "role", "k", "frequency",
                                             "depth")} | {
            "d_test_loss": float(np.mean(dl)) if dl else math.inf,
            "d_test_loss_sd": float(np.std(dl, ddof=1)) if len(dl) > 1 else math.nan,
            "d_test_accuracy": float(np.mean(u["d_acc"])), "seeds": len(u["d_loss"]),
            "diverged": len(u["d_loss"]) - len(dl)})
    damage = [r["d_test_loss"] for r in rows]
    corr = {f: stats.spearman([r[f] for r in rows], damage) for f in ("k", "frequency",
                                                                      "depth")}
    per_model = {m: {f: stats.spearman([r[f] for r in rows if r["model"] == m],
                                       [r["d_test_loss"] for r in rows if r["model"] == m])
                     for f in ("k", "frequency", "depth")} for m in p["models"]}
    baseline = {m: {"test_loss": float(np.mean([v["test_loss"] for (mm, _), v in base.items()
                                                 if mm == m])),
                    "test_accuracy": float(np.mean([v["test_accuracy"]
                                                    for (mm, _), v in base.items() if mm == m]))}
                for m in p["models"]}
    summary = {"correlations": corr, "per_model": per_model, "baseline": baseline,
               "units": len(rows), "seeds": p["seeds"], "rows": rows}
    return rows, summary, _findings(p, summary)


def _text(c: dict[str, float]) -> str:
    return f"rho {c['rho']:+.2f}, p {stats.fmt_p(c['p'])}"


def _findings(p: dict[str, Any], s: dict[str, Any]) -> list[dict[str, Any]]:
    c = s["correlations"]
    where = (f"{s['units']} GEMMs of {', '.join(p['models'])}, {p['fmt']} operands one GEMM at a "
             f"time, {len(p['seeds'])} seeds, {p['steps']} steps")

    def sig(x: dict[str, float], sign: int) -> bool:
        return bool(math.isfinite(x["rho"]) and sign * x["rho"] > 0 and x["p"] < 0.05)

    return [
        {"id": "accumulation", "claim": "layers with higher accumulation (longer reductions K) "
         "tolerate more low-precision noise", "supported": sig(c["k"], -1),
         "evidence": f"Spearman of the test-loss increase against K: {_text(c['k'])} ({where})"},
        {"id": "frequency", "claim": "GEMMs whose elements are used less often tolerate more "
         "low-precision noise (standard models)", "supported": sig(c["frequency"], +1),
         "evidence": f"Spearman of the test-loss increase against usage frequency: "
         f"{_text(c['frequency'])} ({where})"},
        {"id": "depth", "claim": "depth has no noticeable effect on the final outcome "
         "(standard models)",
         "supported": False if math.isfinite(c["depth"]["p"]) and c["depth"]["p"] < 0.05
         else None,
         "evidence": f"Spearman of the test-loss increase against depth: "
         f"{_text(c['depth'])} ({where}); a significant correlation would contradict the "
         "claim, an insignificant one over this few GEMMs cannot establish it"},
    ]


def plot(s: dict[str, Any], out: Path) -> list[str]:
    from refsim.studies.report import pyplot

    plt = pyplot()
    rows = [r for r in s["rows"] if math.isfinite(r["d_test_loss"])]
    if not rows:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    models = list(dict.fromkeys(r["model"] for r in rows))
    for ax, f, label in ((axes[0], "k", "K (reduction length)"),
                         (axes[1], "frequency", "usage frequency"),
                         (axes[2], "depth", "depth from the input")):
        for m in models:
            sel = [r for r in rows if r["model"] == m]
            ax.plot([r[f] for r in sel], [r["d_test_loss"] for r in sel], "o", label=m)
        if f != "depth":
            ax.set_xscale("log")
            ax.tick_params(axis="x", which="minor", labelbottom=False)  # they overlap
        c = s["correlations"][f]
        ax.set_title(f"rho {c['rho']:+.2f} (p {stats.fmt_p(c['p'])})", fontsize=9)
        ax.axhline(0, color="gray", lw=0.6)
        ax.set_xlabel(label)
        ax.set_ylabel("test loss increase")
    axes[0].legend(fontsize=7)
    return [save_figure(fig, out, "sensitivity.png")]


def section(doc: dict[str, Any]) -> str:
    s, p = doc["summary"], doc["params"]
    lines = [f"## {TITLE}", "",
             f"Models {', '.join(p['models'])}; one GEMM (layer and role) at a time with "
             f"operands in {p['fmt']} ({p['rounding']}, saturating) and a {p['acc']} "
             f"accumulator, the rest fp32; {p['steps']} training steps ({p['optimizer']}, lr "
             f"{p['lr']:g}); seeds {p['seeds']}; "
             f"{doc['grid']['runs']} runs ({doc['grid']['cached']} cached), "
             f"{doc['seconds']:.0f} s. Damage = final test loss minus the fp32 run's with the "
             "same seed, mean over seeds.", "",
             "Baselines (fp32): " + ", ".join(
                 f"{m} test loss {v['test_loss']:.4f}, accuracy {100 * v['test_accuracy']:.2f}%"
                 for m, v in s["baseline"].items()) + ".", "",
             "| model | layer | role | K | frequency | depth | test loss increase (sd) | "
             "accuracy change |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['layer']} | {r['role']} | {r['k']} | "
              f"{r['frequency']:.4g} | {r['depth']} | {r['d_test_loss']:+.4f} "
              f"({r['d_test_loss_sd']:.4f}) | {100 * r['d_test_accuracy']:+.2f} pp |"
              for r in s["rows"]]
    c = s["correlations"]
    lines += ["", "Spearman correlation of the damage, pooled: " + "; ".join(
        f"{f}: {_text(c[f])} (n {c[f]['n']})" for f in c) + ". Per model: " + "; ".join(
        f"{m}: " + ", ".join(f"{f} {_text(v)}" for f, v in pm.items())
        for m, pm in s["per_model"].items()) + ".", ""]
    lines += [f"![sensitivity]({f})" for f in doc["plots"]]
    lines += ["", said(doc["findings"]), ""]
    return "\n".join(lines)
