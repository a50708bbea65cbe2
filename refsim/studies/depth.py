"""Depth study: error growth through chains of quantized GEMMs, and low precision at shallow
versus deep layers in training.

Usage rules:
  - Chains: h_0 (batch x width, standard normal) goes through L square layers h_l =
    act(Q(h_{l-1}) Q(W_l)) with refsim.matmul (operands cast to `fmt` with the rounding under
    study, saturating; fp32 accumulation), against the float64 chain with the same float32
    weights. Inits: "orthogonal" (QR of a Gaussian, no activation: norms are preserved
    exactly) or "he-relu" (N(0, 2/width) weights, ReLU). The error after layer L is
    ||h_L - h_L^ref||_F / ||h_L^ref||_F, recorded at every L of one chain of `layers` layers.
    Independent errors that add up give growth like sqrt(L); errors that compound
    coherently, like L: the fitted log-log slope says which.
  - Training: an MLP with `train_hidden` hidden layers trained with every role of its first
    `low_layers` layers ("shallow"), or of its last `low_layers` layers ("deep"), in `fmt`,
    the rest fp32, and an all-fp32 run, for every seed; the shallow/deep difference is paired
    over seeds.
  - Finding "depth" (the paper: depth affects the stability of matrix operations somewhat but
    not the final outcome): supported when the chain error grows with L in every chain
    (Spearman rho > 0, p < 0.05) and the 95% confidence interval of the shallow-minus-deep
    difference in final test accuracy lies within +-`margin_acc`; not supported when the
    chains do not grow or the difference is significant (p < 0.05); otherwise undecided (the
    interval is too wide for this many seeds).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from refsim.studies import stats
from refsim.studies.params import need, need_format
from refsim.studies.report import said, save_figure
from refsim.studies.training import low_plan, operand_spec, train_run

__all__ = ["FULL", "QUICK", "TITLE", "VERSION", "analyze", "check", "grid", "plot", "run_one",
           "section"]

VERSION = 2
TITLE = "Depth: error through chains of quantized GEMMs, and shallow versus deep low precision"
NAME = "depth"
INITS = ("orthogonal", "he-relu")
CONDITIONS = ("fp32", "shallow", "deep")

QUICK: dict[str, Any] = {
    "layers": 32, "width": 64, "batch": 64, "inits": list(INITS), "roundings": ["rne", "sr"],
    "fmt": "e4m3fn", "chain_seeds": [0, 1, 2],
    "train_hidden": [64, 64, 64, 64], "low_layers": 2, "train_fmt": "e5m1",
    "optimizer": "adam", "lr": 0.01, "seeds": [0, 1, 2, 3, 4], "steps": 80,
    "margin_acc": 0.01,
}
FULL: dict[str, Any] = {**QUICK, "layers": 64, "chain_seeds": [0, 1, 2, 3, 4],
                        "seeds": list(range(8)), "steps": 400}


def check(p: dict[str, Any]) -> None:
    from refsim.formats.policy import ROUNDINGS

    for key in ("layers", "width", "batch", "steps", "low_layers"):
        need(isinstance(p[key], int) and p[key] >= 1, NAME, key, "a positive int", p[key])
    need(p["layers"] >= 2, NAME, "layers", "at least 2 (a slope needs two depths)", p["layers"])
    need(bool(p["inits"]) and all(i in INITS for i in p["inits"]), NAME, "inits",
         f"a non-empty list of {', '.join(INITS)}", p["inits"])
    need(bool(p["roundings"]) and all(r in ROUNDINGS for r in p["roundings"]), NAME,
         "roundings", f"a non-empty list of {', '.join(ROUNDINGS)}", p["roundings"])
    for key in ("fmt", "train_fmt"):
        need_format(NAME, key, p[key])
    for key in ("chain_seeds", "seeds"):
        need(bool(p[key]) and all(isinstance(s, int) and s >= 0 for s in p[key]), NAME, key,
             "a non-empty list of ints >= 0", p[key])
    need(bool(p["train_hidden"]) and all(isinstance(h, int) and h >= 1
                                         for h in p["train_hidden"]),
         NAME, "train_hidden", "a non-empty list of positive ints", p["train_hidden"])
    need(2 * p["low_layers"] <= len(p["train_hidden"]) + 1, NAME, "low_layers",
         f"at most half the MLP's {len(p['train_hidden']) + 1} layers", p["low_layers"])
    need(p["optimizer"] in ("sgd", "adam"), NAME, "optimizer", "sgd or adam", p["optimizer"])
    need(p["lr"] > 0, NAME, "lr", "a positive number", p["lr"])
    need(0 <= p["margin_acc"] <= 1, NAME, "margin_acc", "a number in [0, 1]", p["margin_acc"])


def _train_fields(p: dict[str, Any], seed: int) -> dict[str, Any]:
    return {"model": "mlp", "hidden": p["train_hidden"], "seed": seed,
            "optimizer": p["optimizer"], "lr": p["lr"],
            "epochs": math.ceil(p["steps"] * 32 / 1437), "max_steps": p["steps"]}


def grid(p: dict[str, Any]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = [
        {"part": "chain", "init": i, "rounding": r, "seed": s, "layers": p["layers"],
         "width": p["width"], "batch": p["batch"], "fmt": p["fmt"]}
        for i in p["inits"] for r in p["roundings"] for s in p["chain_seeds"]]
    n = len(p["train_hidden"]) + 1
    names = [f"fc{i + 1}" for i in range(n)]
    roles = ("forward", "backward-input", "backward-weight")
    spec = operand_spec(p["train_fmt"])
    for seed in p["seeds"]:
        for cond in CONDITIONS:
            if cond == "fp32":
                plan: dict[str, Any] = {"preset": "fp32"}
            else:
                chosen = names[:p["low_layers"]] if cond == "shallow" else names[-p["low_layers"]:]
                # The first layer has no backward-input GEMM; a plan entry for it is harmless.
                plan = low_plan([(layer, role) for layer in chosen for role in roles], spec)
            runs.append({"part": "train", "condition": cond, "seed": seed,
                         "train": _train_fields(p, seed), "plan": plan})
    return runs


def _weights(rng: np.random.Generator, init: str, d: int) -> np.ndarray:
    g = rng.standard_normal((d, d))
    if init == "orthogonal":
        q, r = np.linalg.qr(g)
        return (q * np.sign(np.diag(r))).astype(np.float32)
    return (g * math.sqrt(2.0 / d)).astype(np.float32)


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    if cfg["part"] == "train":
        return train_run(cfg)
    from refsim.accumulate import matmul
    from refsim.specs import AccumSpec, Cast, GemmSpec

    cast = Cast(cfg["fmt"], cfg["rounding"], overflow="saturate")
    spec = GemmSpec(a=cast, b=cast, acc=AccumSpec("fp32"))
    rng = np.random.default_rng([cfg["seed"], INITS.index(cfg["init"])])
    h = rng.standard_normal((cfg["batch"], cfg["width"])).astype(np.float32)
    ref = h.astype(np.float64)
    errors = []
    for layer in range(cfg["layers"]):
        w = _weights(rng, cfg["init"], cfg["width"])
        h = np.asarray(matmul(h, w, spec, seed=cfg["seed"] * 1000 + layer), np.float32)
        ref = ref @ w.astype(np.float64)
        if cfg["init"] == "he-relu":
            h, ref = np.maximum(h, 0), np.maximum(ref, 0)
        errors.append(float(np.linalg.norm(h - ref) / np.linalg.norm(ref)))
    return {"err": errors}


def warm_key(cfg: dict[str, Any]) -> tuple:
    """Runs with one key use the same compiled kernels."""
    return (cfg["part"], cfg.get("rounding"), cfg.get("condition") == "fp32")


def analyze(p: dict[str, Any], configs: list[dict[str, Any]],
            results: list[dict[str, Any]]) -> tuple[list, dict, list]:
    rows = []
    curves: dict[str, list[list[float]]] = {}
    train: dict[str, dict[int, dict[str, float]]] = {c: {} for c in CONDITIONS}
    for cfg, res in zip(configs, results, strict=True):
        if cfg["part"] == "chain":
            key = f"{cfg['init']}/{cfg['rounding']}"
            curves.setdefault(key, []).append(res["err"])
            rows += [{"part": "chain", "init": cfg["init"], "rounding": cfg["rounding"],
                      "seed": cfg["seed"], "depth": i + 1, "rel_err": e}
                     for i, e in enumerate(res["err"])]
        else:
            train[cfg["condition"]][cfg["seed"]] = res
            rows.append({"part": "train", "condition": cfg["condition"], "seed": cfg["seed"],
                         "test_loss": res["test_loss"], "test_accuracy": res["test_accuracy"]})
    chains = {}
    for key, runs in curves.items():
        mean = np.mean(np.asarray(runs), axis=0)
        depths = np.arange(1, len(mean) + 1)
        sp = stats.spearman(depths, mean)
        chains[key] = {"mean_err": [float(v) for v in mean], "slope": stats.loglog_slope(
            depths, mean), **{f"spearman_{k}": v for k, v in sp.items()}, "seeds": len(runs)}
    seeds = sorted(set(train["shallow"]) & set(train["deep"]))
    acc = stats.paired([train["shallow"][s]["test_accuracy"] for s in seeds],
                       [train["deep"][s]["test_accuracy"] for s in seeds])
    loss = stats.paired([train["shallow"][s]["test_loss"] for s in seeds],
                        [train["deep"][s]["test_loss"] for s in seeds])
    means = {c: {m: float(np.mean([train[c][s][m] for s in train[c]])) if train[c]
                 else math.nan for m in ("test_loss", "test_accuracy")} for c in CONDITIONS}
    summary = {"chains": chains, "training": {"means": means, "shallow_minus_deep_acc": acc,
                                              "shallow_minus_deep_loss": loss,
                                              "seeds": seeds}}
    return rows, summary, _findings(p, summary)


def _findings(p: dict[str, Any], s: dict[str, Any]) -> list[dict[str, Any]]:
    chains = s["chains"]
    grows = bool(chains) and all(c["spearman_rho"] > 0 and c["spearman_p"] < 0.05
                                 for c in chains.values())
    acc = s["training"]["shallow_minus_deep_acc"]
    loss = s["training"]["shallow_minus_deep_loss"]
    # Equivalence: the whole 95% interval of the accuracy difference within the margin;
    # a difference: the interval excludes 0; otherwise this run cannot tell.
    m = p["margin_acc"]
    if math.isfinite(acc["ci_low"]) and -m <= acc["ci_low"] and acc["ci_high"] <= m:
        outcome: bool | None = True
    elif math.isfinite(acc["p"]) and acc["p"] < 0.05:
        outcome = False
    else:
        outcome = None
    ci = (f"95% CI {100 * acc['ci_low']:+.2f} to {100 * acc['ci_high']:+.2f}"
          if math.isfinite(acc["ci_low"]) else "no interval: fewer than 2 seeds or no spread")
    chain_text = "; ".join(f"{k}: slope {c['slope']:.2f}, rho {c['spearman_rho']:.2f} "
                           f"(p {stats.fmt_p(c['spearman_p'])})" for k, c in chains.items())
    n_seeds = len(s["training"]["seeds"])
    detectable = stats.detectable_diff(acc["sd_diff"], n_seeds)
    power = (f"detects a difference of {100 * detectable:.2f} pp with {100 * stats.POWER:.0f}% "
             f"power at alpha {stats.ALPHA:g}" if math.isfinite(detectable)
             else "power undefined (fewer than 2 seeds or no spread)")
    evidence = (f"chains to L={p['layers']} ({chain_text}); training ({n_seeds} seeds, "
                f"{p['train_fmt']} in {p['low_layers']} layers): shallow minus deep test "
                f"accuracy {100 * acc['mean_diff']:+.2f} pp ({ci}, sd "
                f"{100 * acc['sd_diff']:.2f}, "
                f"p {stats.fmt_p(acc['p'])}), test loss {loss['mean_diff']:+.4f} "
                f"(p {stats.fmt_p(loss['p'])}); "
                f"equivalence margin +-{100 * m:.1f} pp; {power}")
    verdict = None if outcome is None else bool(grows and outcome)
    if not grows:
        verdict = False
    out = [{"id": "depth", "claim": "depth affects the stability of matrix operations somewhat "
            "but not the final training outcome", "supported": verdict,
            "evidence": evidence}]
    slopes = [c["slope"] for c in chains.values() if math.isfinite(c["slope"])]
    if slopes:
        med = float(np.median(slopes))
        out.append({"id": "depth-sqrt", "claim": "chain error grows like sqrt(L) (slope nearer "
                    "0.5 than 1)", "supported": bool(abs(med - 0.5) < abs(med - 1.0)),
                    "evidence": f"median log-log slope {med:.2f} over {len(slopes)} chains"})
    return out


def plot(s: dict[str, Any], out: Path) -> list[str]:
    from refsim.studies.report import pyplot

    plt = pyplot()
    files = []
    if s["chains"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        last = 1
        first = None
        for key, c in s["chains"].items():
            depths = np.arange(1, len(c["mean_err"]) + 1)
            ax.loglog(depths, c["mean_err"], "o-", ms=2, label=f"{key} (slope {c['slope']:.2f})")
            last = len(depths)
            first = c["mean_err"][0] if first is None else min(first, c["mean_err"][0])
        if first:
            depths = np.arange(1, last + 1)
            ax.loglog(depths, first * np.sqrt(depths), "k--", lw=0.7, label="sqrt(L)")
            ax.loglog(depths, first * depths, "k:", lw=0.7, label="L")
        ax.set_xlabel("depth L")
        ax.set_ylabel("relative error")
        ax.set_title("Chains of quantized GEMMs (mean over seeds)")
        ax.legend(fontsize=7)
        files.append(save_figure(fig, out, "chain_error.png"))
    means = s["training"]["means"]
    if any(math.isfinite(means[c]["test_accuracy"]) for c in means):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        conds = list(means)
        ax.bar(conds, [100 * means[c]["test_accuracy"] for c in conds])
        ax.set_ylabel("test accuracy (%), mean over seeds")
        ax.set_title("Low precision in shallow vs deep layers")
        files.append(save_figure(fig, out, "shallow_deep.png"))
    return files


def section(doc: dict[str, Any]) -> str:
    s, p = doc["summary"], doc["params"]
    lines = [f"## {TITLE}", "",
             f"Chains of {p['layers']} layers, width {p['width']}, batch {p['batch']}, operands "
             f"{p['fmt']} (saturating), fp32 accumulation, seeds {p['chain_seeds']}; training: "
             f"MLP 64-{'-'.join(map(str, p['train_hidden']))}-10 on digits, {p['optimizer']} lr "
             f"{p['lr']:g}, {p['steps']} steps, "
             f"{p['train_fmt']} operands in the first or last {p['low_layers']} layers, seeds "
             f"{p['seeds']}; {doc['grid']['runs']} runs ({doc['grid']['cached']} cached), "
             f"{doc['seconds']:.0f} s.", "",
             "| chain | error at L=1 | error at the last L | log-log slope | Spearman rho (p) |",
             "|---|---|---|---|---|"]
    for key, c in s["chains"].items():
        lines.append(f"| {key} | {c['mean_err'][0]:.3g} | {c['mean_err'][-1]:.3g} | "
                     f"{c['slope']:.2f} | {c['spearman_rho']:.2f} "
                     f"({stats.fmt_p(c['spearman_p'])}) |")
    lines += [""] + [f"![chain error]({f})" for f in doc["plots"] if f == "chain_error.png"]
    m = s["training"]["means"]
    lines += ["", "| training | test loss | test accuracy |", "|---|---|---|"]
    lines += [f"| {c} | {m[c]['test_loss']:.4f} | {100 * m[c]['test_accuracy']:.2f}% |"
              for c in m]
    lines += [""] + [f"![shallow vs deep]({f})" for f in doc["plots"] if f == "shallow_deep.png"]
    lines += ["", said(doc["findings"]), ""]
    return "\n".join(lines)
