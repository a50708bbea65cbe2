"""Bit-width allocation: per-layer operand mantissa widths set from the factors, against uniform
and random allocations with the same mean bits.

Usage rules:
  - A layer's factors come from its forward GEMM in refsim.factors.profile: K (reduction
    length), F (usage frequency, the geometric mean of the operands' uses) and D (depth from
    the input). Every role of the layer gets operands e{exp_bits}m{bits} (rounding `rounding`,
    saturating) and fp32 accumulation.
  - Policies (the paper's section 4.1): "A+"/"A-" give more bits to larger/smaller K, "F+"/"F-"
    to higher/lower F, "D+"/"D-" to deeper/shallower layers, "factor" ranks layers by
    rank(F) - rank(K) (more bits where K is small and F high), "U" gives every layer
    `mean_bits`, and "R0", "R1", ... are random permutations (seeded by the draw and the
    model, the same for every training seed). Every non-uniform policy hands out the same
    multiset of widths: linspace(mean_bits - spread, mean_bits + spread, n_layers) rounded
    half to even, whose mean is mean_bits exactly. Ties in a score go to the earlier layer.
  - Each policy is trained for every seed and compared with the all-fp32 run of that seed
    (test loss increase). Finding "allocation": supported when "factor" has a lower mean test
    loss than both "U" and the random draws, each paired over (model, seed) with p < 0.05.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from refsim.studies import stats
from refsim.studies.params import need
from refsim.studies.report import said, save_figure
from refsim.studies.sensitivity import check_training, model_fields
from refsim.studies.training import bits_plan, profile_of, train_run

__all__ = ["FULL", "QUICK", "TITLE", "VERSION", "allocation", "analyze", "check", "grid", "plot",
           "run_one", "section"]

VERSION = 2
TITLE = "Bit-width allocation from the factors, against uniform and random"
NAME = "allocate"
MODELS = ("mlp", "cnn", "transformer")
POLICIES = ("factor", "A+", "A-", "F+", "F-", "D+", "D-", "U")

QUICK: dict[str, Any] = {
    "models": ["mlp", "cnn"], "mlp_hidden": [64, 32], "seeds": [0, 1, 2], "steps": 40,
    "mean_bits": 2, "spread": 1, "exp_bits": 5, "rounding": "rne",
    "policies": list(POLICIES), "random_draws": 2, "optimizer": "adam", "lr": 0.01,
    "transformer_lr": 0.003, "transformer_train": 512,
}
FULL: dict[str, Any] = {**QUICK, "models": list(MODELS), "seeds": [0, 1, 2, 3, 4],
                        "steps": 300, "random_draws": 4, "transformer_train": 2048}


def check(p: dict[str, Any]) -> None:
    from formats.policy import ROUNDINGS

    need(len(p["models"]) >= 1 and all(m in MODELS for m in p["models"]), NAME, "models",
         f"a non-empty list of {', '.join(MODELS)}", p["models"])
    need(bool(p["seeds"]) and all(isinstance(s, int) and s >= 0 for s in p["seeds"]), NAME,
         "seeds", "a non-empty list of ints >= 0", p["seeds"])
    need(all(isinstance(h, int) and h >= 1 for h in p["mlp_hidden"]), NAME, "mlp_hidden",
         "a list of positive ints", p["mlp_hidden"])
    check_training(p, NAME)
    need(isinstance(p["exp_bits"], int) and 2 <= p["exp_bits"] <= 8, NAME, "exp_bits",
         "an int in [2, 8]", p["exp_bits"])
    need(isinstance(p["spread"], int) and p["spread"] >= 0, NAME, "spread", "an int >= 0",
         p["spread"])
    need(isinstance(p["mean_bits"], int) and p["mean_bits"] - p["spread"] >= 0
         and p["mean_bits"] + p["spread"] <= 23, NAME, "mean_bits",
         "an int with mean_bits - spread >= 0 and mean_bits + spread <= 23", p["mean_bits"])
    need(all(x in POLICIES for x in p["policies"]), NAME, "policies",
         f"a list of {', '.join(POLICIES)}", p["policies"])
    need(isinstance(p["random_draws"], int) and p["random_draws"] >= 0, NAME, "random_draws",
         "an int >= 0", p["random_draws"])
    need(p["rounding"] in ROUNDINGS, NAME, "rounding", f"one of {', '.join(ROUNDINGS)}",
         p["rounding"])


def widths(n: int, mean_bits: int, spread: int) -> list[int]:
    """The multiset of widths every non-uniform policy hands out, ascending."""
    values = [int(v) for v in np.round(np.linspace(mean_bits - spread, mean_bits + spread, n))]
    assert sum(values) == n * mean_bits, "symmetric rounding keeps the mean"
    return values


def allocation(policy: str, factors: list[dict[str, Any]], mean_bits: int, spread: int,
               draw_seed: tuple[int, ...] = ()) -> dict[str, int]:
    """{layer: mantissa bits} under `policy` for layers with factors {"layer", "k", "f", "d"}."""
    n = len(factors)
    if policy == "U":
        return {x["layer"]: mean_bits for x in factors}
    values = widths(n, mean_bits, spread)
    if policy.startswith("R"):
        order = np.random.default_rng(list(draw_seed)).permutation(n)
        return {factors[i]["layer"]: values[j] for j, i in enumerate(order)}

    def ranks(key: str) -> np.ndarray:
        return np.argsort(np.argsort([x[key] for x in factors], kind="stable"), kind="stable")

    if policy == "factor":
        score = ranks("f") - ranks("k")
    else:
        key = {"A": "k", "F": "f", "D": "d"}[policy[0]]
        score = ranks(key) * (1 if policy[1] == "+" else -1)
    order = np.argsort(score, kind="stable")  # lowest score gets the fewest bits
    return {factors[i]["layer"]: values[j] for j, i in enumerate(order)}


def _fields(p: dict[str, Any], model: str, seed: int) -> dict[str, Any]:
    fields = model_fields(p, model, seed)
    if model == "mlp":
        fields["hidden"] = p["mlp_hidden"]
    return fields


def layer_factors(p: dict[str, Any], model: str) -> list[dict[str, Any]]:
    rows = profile_of(_fields(p, model, 0))
    return [{"layer": r.layer, "k": r.k, "f": r.frequency, "d": r.depth_input}
            for r in rows if r.role == "forward"]


def grid(p: dict[str, Any]) -> list[dict[str, Any]]:
    runs = []
    for mi, model in enumerate(p["models"]):
        factors = layer_factors(p, model)
        plans = {pol: allocation(pol, factors, p["mean_bits"], p["spread"])
                 for pol in p["policies"]}
        for i in range(p["random_draws"]):
            plans[f"R{i}"] = allocation("R", factors, p["mean_bits"], p["spread"],
                                        (7919, mi, i))
        for seed in p["seeds"]:
            fields = _fields(p, model, seed)
            runs.append({"model": model, "policy": "fp32", "bits": {}, "train": fields,
                         "plan": {"preset": "fp32"}})
            for pol, bits in plans.items():
                runs.append({"model": model, "policy": pol, "bits": bits, "train": fields,
                             "plan": bits_plan(bits, p["exp_bits"], p["rounding"])})
    return runs


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    return train_run(cfg)


def warm_key(cfg: dict[str, Any]) -> tuple:
    """Runs with one key use the same compiled kernels."""
    return (cfg["model"], cfg["policy"] == "fp32")


def analyze(p: dict[str, Any], configs: list[dict[str, Any]],
            results: list[dict[str, Any]]) -> tuple[list, dict, list]:
    rows = []
    loss: dict[tuple[str, str, int], float] = {}
    for c, r in zip(configs, results, strict=True):
        seed = c["train"]["seed"]
        loss[(c["model"], c["policy"], seed)] = r["test_loss"]
        rows.append({"model": c["model"], "policy": c["policy"], "seed": seed,
                     "bits": " ".join(f"{k}:{v}" for k, v in c["bits"].items()),
                     "test_loss": r["test_loss"], "test_accuracy": r["test_accuracy"]})
    pairs = [(m, s) for m in p["models"] for s in p["seeds"]]
    randoms = [f"R{i}" for i in range(p["random_draws"])]

    def series(policy: str) -> list[float]:
        if policy == "R":
            return [float(np.mean([loss[(m, r, s)] for r in randoms])) if randoms else math.nan
                    for m, s in pairs]
        return [loss.get((m, policy, s), math.nan) for m, s in pairs]

    names = [*p["policies"], *(["R"] if randoms else [])]
    means = {pol: float(np.nanmean(series(pol))) if pairs else math.nan for pol in names}
    fp32 = float(np.mean(series("fp32")))
    comparisons = {}
    for a, b in (("factor", "U"), ("factor", "R"), ("A-", "A+"), ("F+", "F-"), ("D+", "D-")):
        if a in names and b in names:
            comparisons[f"{a} vs {b}"] = stats.paired(series(a), series(b))
    allocations = {}
    for c in configs:
        if c["policy"] != "fp32":
            allocations.setdefault(c["model"], {})[c["policy"]] = c["bits"]
    summary = {"mean_test_loss": means, "fp32_test_loss": fp32, "comparisons": comparisons,
               "allocations": allocations, "pairs": len(pairs)}
    return rows, summary, _findings(p, summary)


def _cmp(c: dict[str, float]) -> str:
    return (f"mean difference {c['mean_diff']:+.4f} (sd {c['sd_diff']:.4f}, lower in "
            f"{c['a_lower']}/{c['n']}, p {stats.fmt_p(c['p'])})")


def _findings(p: dict[str, Any], s: dict[str, Any]) -> list[dict[str, Any]]:
    comps = s["comparisons"]
    out = []
    if "factor vs U" in comps and "factor vs R" in comps:
        u, r = comps["factor vs U"], comps["factor vs R"]
        ok = all(math.isfinite(x["mean_diff"]) and x["mean_diff"] < 0 and x["p"] < 0.05
                 for x in (u, r))
        out.append({"id": "allocation", "claim": "allocating bits from the factors (more bits "
                    "where K is small and usage frequency high) beats uniform and random "
                    "allocations at the same mean bits", "supported": bool(ok),
                    "evidence": f"test loss, factor minus uniform: {_cmp(u)}; factor minus "
                    f"random ({p['random_draws']} draws): {_cmp(r)}; {len(p['models'])} models "
                    f"x {len(p['seeds'])} seeds, mean {p['mean_bits']} mantissa bits "
                    f"(e{p['exp_bits']}mM), {p['steps']} steps"})
    for key, claim in (("A- vs A+", "fewer bits at long reductions (A-) does at least as well "
                        "as A+"), ("F+ vs F-", "more bits at frequently used elements (F+) does "
                                   "at least as well as F-")):
        if key in comps:
            c = comps[key]
            out.append({"id": f"allocation-{key[0].lower()}", "claim": claim,
                        "supported": bool(math.isfinite(c["mean_diff"]) and c["mean_diff"] <= 0),
                        "evidence": f"test loss, {key}: {_cmp(c)}"})
    return out


def plot(s: dict[str, Any], out: Path) -> list[str]:
    from refsim.studies.report import pyplot

    plt = pyplot()
    means = {k: v for k, v in s["mean_test_loss"].items() if math.isfinite(v)}
    if not means:
        return []
    fig, ax = plt.subplots(figsize=(7, 3.8))
    names = list(means)
    ax.bar(names, [means[n] for n in names],
           color=["tab:red" if n == "factor" else "tab:gray" if n in ("U", "R") else "tab:blue"
                  for n in names])
    ax.axhline(s["fp32_test_loss"], color="k", ls="--", lw=0.8, label="fp32")
    lo = min(min(means.values()), s["fp32_test_loss"])
    hi = max(means.values())
    ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
    ax.set_ylabel("final test loss (mean over models and seeds)")
    ax.set_title("Allocation policies at the same mean bits")
    ax.legend(fontsize=7)
    return [save_figure(fig, out, "allocation.png")]


def section(doc: dict[str, Any]) -> str:
    s, p = doc["summary"], doc["params"]
    lines = [f"## {TITLE}", "",
             f"Models {', '.join(p['models'])} (MLP hidden {p['mlp_hidden']}); operands "
             f"e{p['exp_bits']}mM with mean M = {p['mean_bits']} (spread {p['spread']}), "
             f"{p['rounding']}, fp32 accumulation; {p['steps']} steps ({p['optimizer']}, lr "
             f"{p['lr']:g}); seeds {p['seeds']}; "
             f"{p['random_draws']} random draws; {doc['grid']['runs']} runs "
             f"({doc['grid']['cached']} cached), {doc['seconds']:.0f} s.", "",
             "| policy | mean test loss |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in s["mean_test_loss"].items()]
    lines.append(f"| fp32 (reference) | {s['fp32_test_loss']:.4f} |")
    lines += ["", "Paired comparisons (test loss, first minus second, over model x seed):", ""]
    lines += [f"- {k}: {_cmp(v)}" for k, v in s["comparisons"].items()]
    lines += ["", "Allocations (layer: mantissa bits):", ""]
    for model, pols in s["allocations"].items():
        lines += [f"- {model} {pol}: " + ", ".join(f"{k} {v}" for k, v in bits.items())
                  for pol, bits in pols.items()]
    lines += [""] + [f"![allocation]({f})" for f in doc["plots"]]
    lines += ["", said(doc["findings"]), ""]
    return "\n".join(lines)
