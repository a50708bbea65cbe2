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
  - Each policy is trained for every seed; the run of the plan `rest` (fp32 or numpy, as in
    the sensitivity study) with the same seed is the reference. Training parameters:
    refsim.studies.training.TRAINING.
  - Comparisons are paired over (model, seed), in units of each model's seed noise (the
    seed-to-seed standard deviation of the measure, the root of the median variance over the
    model's policies), so that models with different loss scales weigh alike. Each comparison
    has its paired t-test and the smallest mean difference the pairs detect with 80% power
    (refsim.studies.stats.paired), and its verdict comes from refsim.studies.stats.decide with
    `small_diff` (seed-noise units) as the small effect, on `measure` (default: the final test
    loss; train_loss_auc is reported too).
  - Findings: "allocation" (factor beats U and the random draws: supported when both
    comparisons are; not supported when either is not; else undecided), "allocation-a" (A-
    beats A+), "allocation-f" (F+ beats F-) and "allocation-d" (D+ and D- do alike).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from refsim.studies import stats
from refsim.studies.params import need
from refsim.studies.report import said, save_figure
from refsim.studies.training import (
    TRAINING,
    bits_plan,
    check_training,
    model_fields,
    profile_of,
    train_run,
)

__all__ = ["FULL", "QUICK", "STANDARD", "TITLE", "VERSION", "allocation", "analyze", "check",
           "grid", "plot", "run_one", "section"]

VERSION = 3
TITLE = "Bit-width allocation from the factors, against uniform and random"
NAME = "allocate"
POLICIES = ("factor", "A+", "A-", "F+", "F-", "D+", "D-", "U")
MEASURES = ("test_loss", "train_loss_auc", "test_loss_auc")

QUICK: dict[str, Any] = {
    **TRAINING, "models": ["mlp", "cnn"], "mlp_hidden": [64, 32], "seeds": [0, 1, 2],
    "mean_bits": 2, "spread": 1, "exp_bits": 5, "rounding": "rne",
    "policies": list(POLICIES), "random_draws": 2, "rest": "fp32", "measure": "test_loss",
    "small_diff": 0.5,
}
FULL: dict[str, Any] = {**QUICK, "models": ["mlp", "cnn", "transformer"],
                        "seeds": [0, 1, 2, 3, 4], "steps": 300, "random_draws": 4,
                        "transformer_train": 2048}
STANDARD: dict[str, Any] = {
    **FULL, "models": ["mlp", "cnn", "transformer"], "rest": "numpy", "optimizer": "sgd",
    "lr": 0.05, "mlp_hidden": [256, 128, 64, 32, 16], "transformer_task": "markov",
    "transformer_length": 8, "transformer_vocab": 16, "transformer_lr": 0.003,
}
"""The standard grid (issue 13): the sensitivity study's models and training (the ResNet left
out for time), 5 seeds, 300 steps, every policy and 4 random draws."""


def check(p: dict[str, Any]) -> None:
    from refsim.formats.policy import ROUNDINGS

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
    need(p["rest"] in ("fp32", "numpy"), NAME, "rest", "fp32 or numpy", p["rest"])
    need(p["measure"] in MEASURES, NAME, "measure", f"one of {', '.join(MEASURES)}",
         p["measure"])
    need(isinstance(p["small_diff"], int | float) and p["small_diff"] > 0, NAME, "small_diff",
         "a positive number", p["small_diff"])


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


def layer_factors(p: dict[str, Any], model: str) -> list[dict[str, Any]]:
    rows = profile_of(model_fields(p, model, 0))
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
            fields = model_fields(p, model, seed)
            runs.append({"model": model, "policy": "reference", "bits": {}, "train": fields,
                         "plan": {"preset": p["rest"]}})
            for pol, bits in plans.items():
                runs.append({"model": model, "policy": pol, "bits": bits, "train": fields,
                             "plan": bits_plan(bits, p["exp_bits"], p["rounding"])})
    return runs


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    return train_run(cfg)


def warm_key(cfg: dict[str, Any]) -> tuple:
    """Runs with one key use the same compiled kernels."""
    return (cfg["model"], cfg["policy"] == "reference")


def _noise(values: dict[str, list[float]]) -> float:
    var = [float(np.var(v, ddof=1)) for v in
           ([x for x in vals if math.isfinite(x)] for vals in values.values()) if len(v) > 1]
    return math.sqrt(float(np.median(var))) if var else math.nan


def _compare(p: dict[str, Any], z: dict[tuple[str, str, int], float], randoms: list[str]
             ) -> dict[str, dict[str, float]]:
    pairs = [(m, s) for m in p["models"] for s in p["seeds"]]

    def series(policy: str) -> list[float]:
        if policy == "R":
            return [float(np.mean([z[(m, r, s)] for r in randoms])) for m, s in pairs]
        return [z.get((m, policy, s), math.nan) for m, s in pairs]

    names = [*p["policies"], *(["R"] if randoms else [])]
    out = {}
    for a, b in (("factor", "U"), ("factor", "R"), ("A-", "A+"), ("F+", "F-"), ("D+", "D-")):
        if a in names and b in names:
            out[f"{a} vs {b}"] = stats.paired(series(a), series(b))
    return out


def analyze(p: dict[str, Any], configs: list[dict[str, Any]],
            results: list[dict[str, Any]]) -> tuple[list, dict, list]:
    rows = []
    raw: dict[str, dict[tuple[str, str, int], float]] = {k: {} for k in MEASURES}
    for c, r in zip(configs, results, strict=True):
        seed = c["train"]["seed"]
        for k in MEASURES:
            raw[k][(c["model"], c["policy"], seed)] = r[k]
        rows.append({"model": c["model"], "policy": c["policy"], "seed": seed,
                     "bits": " ".join(f"{k}:{v}" for k, v in c["bits"].items()),
                     **{k: r[k] for k in MEASURES}, "test_accuracy": r["test_accuracy"]})
    randoms = [f"R{i}" for i in range(p["random_draws"])]
    policies = [*p["policies"], *randoms]
    noise = {k: {m: _noise({pol: [raw[k].get((m, pol, s), math.nan) for s in p["seeds"]]
                            for pol in policies}) for m in p["models"]} for k in MEASURES}
    z = {k: {key: v / noise[k][key[0]] for key, v in raw[k].items()} for k in MEASURES}
    for row in rows:
        for k in MEASURES:
            row[f"z_{k}"] = z[k][(row["model"], row["policy"], row["seed"])]
    means = {k: {pol: float(np.nanmean([raw[k].get((m, pol, s), math.nan)
                                        for m in p["models"] for s in p["seeds"]]))
                 for pol in [*policies, "reference"]} for k in MEASURES}
    comparisons = {k: _compare(p, z[k], randoms) for k in MEASURES}
    allocations: dict[str, dict[str, Any]] = {}
    for c in configs:
        if c["policy"] != "reference":
            allocations.setdefault(c["model"], {})[c["policy"]] = c["bits"]
    seconds: dict[str, list[float]] = {}
    for c, r in zip(configs, results, strict=True):
        seconds.setdefault(c["model"], []).append(r.get("seconds", math.nan))
    summary = {"mean": means, "noise": noise, "comparisons": comparisons,
               "allocations": allocations, "pairs": len(p["models"]) * len(p["seeds"]),
               "measure": p["measure"],
               "seconds_per_run": {m: float(np.nanmean(v)) for m, v in seconds.items()}}
    return rows, summary, _findings(p, summary)


def _cmp(c: dict[str, float]) -> str:
    return (f"mean difference {c['mean_diff']:+.3f} seed-noise units (sd {c['sd_diff']:.3f}, "
            f"95% CI [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}], lower in "
            f"{c['a_lower']}/{c['n']}, p {stats.fmt_p(c['p'])}; detects "
            f"{c['detectable']:.3g} with {100 * stats.POWER:.0f}% power)")


def _findings(p: dict[str, Any], s: dict[str, Any]) -> list[dict[str, Any]]:
    comps = s["comparisons"][p["measure"]]
    small = p["small_diff"]
    setup = (f"{p['measure']}, {len(p['models'])} models x {len(p['seeds'])} seeds, mean "
             f"{p['mean_bits']} mantissa bits (e{p['exp_bits']}mM), {p['steps']} steps")

    def verdict(c: dict[str, float], sign: int) -> bool | None:
        return stats.decide(c["mean_diff"], c["p"], c["detectable"], small, sign)

    def power(c: dict[str, float]) -> dict[str, float]:
        return {"detectable_diff": c["detectable"], "small_diff": small, "n": c["n"]}

    out: list[dict[str, Any]] = []
    if "factor vs U" in comps and "factor vs R" in comps:
        u, r = comps["factor vs U"], comps["factor vs R"]
        vu, vr = verdict(u, -1), verdict(r, -1)
        both = True if vu is True and vr is True else \
            False if False in (vu, vr) else None
        out.append({"id": "allocation", "claim": "allocating bits from the factors (more bits "
                    "where K is small and usage frequency high) beats uniform and random "
                    "allocations at the same mean bits", "supported": both,
                    "evidence": f"factor minus uniform: {_cmp(u)}; factor minus random "
                    f"({p['random_draws']} draws): {_cmp(r)}; small effect {small:g} seed-noise "
                    f"units ({setup})", "power": {"U": power(u), "R": power(r)}})
    for key, fid, sign, claim in (
            ("A- vs A+", "allocation-a", -1, "fewer bits at long reductions (A-) beats A+"),
            ("F+ vs F-", "allocation-f", -1, "more bits at frequently used elements (F+) beats "
             "F-"),
            ("D+ vs D-", "allocation-d", 0, "more bits at deep layers (D+) and at shallow ones "
             "(D-) do alike")):
        if key in comps:
            c = comps[key]
            out.append({"id": fid, "claim": claim, "supported": verdict(c, sign),
                        "evidence": f"{key}: {_cmp(c)}; small effect {small:g} ({setup})",
                        "power": power(c)})
    return out


def plot(s: dict[str, Any], out: Path) -> list[str]:
    from refsim.studies.report import pyplot

    plt = pyplot()
    means = {k: v for k, v in s["mean"][s["measure"]].items()
             if math.isfinite(v) and k != "reference"}
    if not means:
        return []
    ref = s["mean"][s["measure"]]["reference"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    names = list(means)
    ax.bar(names, [means[n] for n in names],
           color=["tab:red" if n == "factor" else "tab:gray" if n == "U" or n.startswith("R")
                  else "tab:blue" for n in names])
    lo = min(means.values())
    hi = max(means.values())
    if math.isfinite(ref):
        ax.axhline(ref, color="k", ls="--", lw=0.8, label="reference (no low precision)")
        lo = min(lo, ref)
    ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
    ax.set_ylabel(f"{s['measure']} (mean over models and seeds)")
    ax.set_title("Allocation policies at the same mean bits")
    ax.legend(fontsize=7)
    return [save_figure(fig, out, "allocation.png")]


def section(doc: dict[str, Any]) -> str:
    s, p = doc["summary"], doc["params"]
    lines = [f"## {TITLE}", "",
             f"Models {', '.join(p['models'])} (MLP hidden {p['mlp_hidden']}); operands "
             f"e{p['exp_bits']}mM with mean M = {p['mean_bits']} (spread {p['spread']}), "
             f"{p['rounding']}, fp32 accumulation; reference: the {p['rest']} plan; "
             f"{p['steps']} steps ({p['optimizer']}, lr {p['lr']:g}; transformer "
             f"{p['transformer_optimizer']}, lr {p['transformer_lr']:g}, task "
             f"{p['transformer_task']}); seeds {p['seeds']}; {p['random_draws']} random draws; "
             f"{doc['grid']['runs']} runs ({doc['grid']['cached']} cached), "
             f"{doc['seconds']:.0f} s. Seconds per run: " + ", ".join(
                 f"{m} {v:.1f}" for m, v in s["seconds_per_run"].items()) + ".", "",
             "| policy | " + " | ".join(f"mean {k}" for k in MEASURES) + " |",
             "|---|" + "---|" * len(MEASURES)]
    lines += [f"| {pol} | " + " | ".join(f"{s['mean'][k][pol]:.4f}" for k in MEASURES) + " |"
              for pol in s["mean"][MEASURES[0]]]
    lines += ["", "Seed noise (seed-to-seed sd) per model: " + "; ".join(
        f"{m}: " + ", ".join(f"{k} {s['noise'][k][m]:.4g}" for k in MEASURES)
        for m in p["models"]) + ".", "",
        f"Paired comparisons over model x seed, first minus second, in seed-noise units "
        f"(decision measure: {p['measure']}):", ""]
    for k in MEASURES:
        lines += [f"- {k}, {name}: {_cmp(c)}" for name, c in s["comparisons"][k].items()]
    lines += ["", "Allocations (layer: mantissa bits):", ""]
    for model, pols in s["allocations"].items():
        lines += [f"- {model} {pol}: " + ", ".join(f"{k} {v}" for k, v in bits.items())
                  for pol, bits in pols.items()]
    lines += [""] + [f"![allocation]({f})" for f in doc["plots"]]
    lines += ["", said(doc["findings"]), ""]
    return "\n".join(lines)
