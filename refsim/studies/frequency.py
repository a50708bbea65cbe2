"""Usage-frequency study: how many outputs each quantized element feeds (U), with the reduction
length K held fixed, in isolated products and in training.

Usage rules:
  - Isolated products C = A Q: Q (K x N) is the quantized operand (cast to `fmt` with the
    rounding under study, saturating), A (U x K) is exact, so every element of Q feeds U
    outputs while K stays fixed. "forward": A one-signed activations U(0, 1), Q weights
    U(-1, 1)/sqrt(K) (Y = X W, U = batch x sequence). "weight-gradient": A = X^T with X
    one-signed, Q zero-mean gradients N(0, 1e-3^2) (dW = X^T dY, U = d_in, K = batch).
    Accumulation fp32; the reference is float64 with the unquantized Q.
  - Measures: `out_err` = ||C^ - C||_F / ||C||_F over all outputs (each output is one length-K
    dot product, so it should not depend on U); `agg_err`, the relative error of the sums over
    the U outputs each element feeds (1^T C: what a downstream reduction over those outputs, a
    loss mean or the next weight gradient, sees); and `agg_err_indep`, the same when each use of
    an element is quantized independently (stochastic rounding with a fresh seed per use), the
    noise that would average out. Their ratio is the penalty of reuse: a shared error is
    repeated in all U outputs instead of averaging over them.
  - Training (MLP on digits): "batch": batch size varied with only fc1's forward GEMM in
    `train_fmt` (its weights' U = batch, K = d_in = 64 fixed); "width": the hidden width varied
    with only fc2's forward GEMM in `train_fmt` (K = hidden varies, its weights' U = batch
    fixed). Each against fp32 with the same seed and shape: the effect is the difference in
    final test loss.
  - Finding "frequency" (the paper: matrices used less often tolerate more noise): supported
    when the low-precision penalty grows with usage frequency in training (Spearman rho of the
    test-loss increase against U > 0, p < 0.05).
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
TITLE = "Usage frequency: outputs fed per quantized element, with K fixed"
NAME = "frequency"
PRODUCTS = ("forward", "weight-gradient")

QUICK: dict[str, Any] = {
    "log2_u": [0, 2, 4, 6, 8, 10], "k": 256, "n": 16, "fmt": "e4m3fn", "grad_fmt": "e5m2",
    "roundings": ["rne", "sr"], "product_seeds": [0, 1, 2],
    "batches": [8, 32, 128], "widths": [32, 128, 512], "train_fmt": "e5m1",
    "seeds": [0, 1, 2], "steps": 40, "optimizer": "adam", "lr": 0.01,
}
FULL: dict[str, Any] = {**QUICK, "log2_u": list(range(0, 13)), "product_seeds": [0, 1, 2, 3, 4],
                        "batches": [8, 16, 32, 64, 128, 256], "widths": [32, 64, 128, 256, 512],
                        "seeds": [0, 1, 2, 3, 4], "steps": 400}


SMALL_RHO = 0.4
"""The small effect of the verdict's power statement (the sensitivity study's small_rho)."""

def check(p: dict[str, Any]) -> None:
    from refsim.formats.policy import ROUNDINGS

    need(bool(p["log2_u"]) and all(isinstance(v, int) and 0 <= v <= 14 for v in p["log2_u"]),
         NAME, "log2_u", "a non-empty list of ints in [0, 14]", p["log2_u"])
    for key in ("k", "n", "steps"):
        need(isinstance(p[key], int) and p[key] >= 1, NAME, key, "a positive int", p[key])
    for key in ("fmt", "grad_fmt", "train_fmt"):
        need_format(NAME, key, p[key])
    need(bool(p["roundings"]) and all(r in ROUNDINGS for r in p["roundings"]), NAME,
         "roundings", f"a non-empty list of {', '.join(ROUNDINGS)}", p["roundings"])
    for key in ("product_seeds", "seeds"):
        need(bool(p[key]) and all(isinstance(s, int) and s >= 0 for s in p[key]), NAME, key,
             "a non-empty list of ints >= 0", p[key])
    need(p["optimizer"] in ("sgd", "adam"), NAME, "optimizer", "sgd or adam", p["optimizer"])
    need(isinstance(p["lr"], int | float) and p["lr"] > 0, NAME, "lr", "a positive number",
         p["lr"])
    for key in ("batches", "widths"):
        need(all(isinstance(v, int) and v >= 1 for v in p[key]), NAME, key,
             "a list of positive ints", p[key])


def _fields(p: dict[str, Any], seed: int, batch: int = 32, hidden: int = 128) -> dict[str, Any]:
    return {"model": "mlp", "hidden": [hidden], "batch_size": batch, "seed": seed,
            "optimizer": p["optimizer"], "lr": p["lr"],
            "epochs": math.ceil(p["steps"] * batch / 1437), "max_steps": p["steps"]}


def grid(p: dict[str, Any]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = [
        {"part": "product", "product": prod, "rounding": r, "log2_u": lu, "k": p["k"],
         "n": p["n"], "fmt": p["fmt"] if prod == "forward" else p["grad_fmt"], "seed": s}
        for prod in PRODUCTS for r in p["roundings"] for lu in p["log2_u"]
        for s in p["product_seeds"]]
    spec = operand_spec(p["train_fmt"])
    for seed in p["seeds"]:
        for batch in p["batches"]:
            for low in (False, True):
                plan = low_plan([("fc1", "forward")], spec) if low else {"preset": "fp32"}
                runs.append({"part": "train", "sweep": "batch", "value": batch, "low": low,
                             "train": _fields(p, seed, batch=batch), "plan": plan})
        for width in p["widths"]:
            for low in (False, True):
                plan = low_plan([("fc2", "forward")], spec) if low else {"preset": "fp32"}
                runs.append({"part": "train", "sweep": "width", "value": width, "low": low,
                             "train": _fields(p, seed, hidden=width), "plan": plan})
    return runs


def _operands(cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    u, k, n = 1 << cfg["log2_u"], cfg["k"], cfg["n"]
    rng = np.random.default_rng([cfg["seed"], PRODUCTS.index(cfg["product"])])
    q_rng = np.random.default_rng([cfg["seed"], PRODUCTS.index(cfg["product"]), 1])
    a = rng.random((u, k)).astype(np.float32)  # one-signed: activations (or X^T)
    if cfg["product"] == "forward":
        q = (q_rng.uniform(-1, 1, (k, n)) / math.sqrt(k)).astype(np.float32)
    else:
        q = (q_rng.standard_normal((k, n)) * 1e-3).astype(np.float32)
    return a, q


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    if cfg["part"] == "train":
        return train_run(cfg)
    from refsim.accumulate import matmul
    from refsim.quantize import quantize
    from refsim.specs import AccumSpec, GemmSpec

    a, q = _operands(cfg)
    u = a.shape[0]
    spec = GemmSpec(acc=AccumSpec("fp32"))
    exact = a.astype(np.float64) @ q.astype(np.float64)
    qq = np.asarray(quantize(q, cfg["fmt"], cfg["rounding"], overflow="saturate",
                             seed=cfg["seed"]), np.float32)
    shared = np.asarray(matmul(a, qq, spec), np.float64)
    # Independent noise: each use r gets its own stochastic rounding of Q (one SR draw of a
    # stacked (U, K, N) copy: the random bits differ by flat index, so by use).
    stacked = np.ascontiguousarray(np.broadcast_to(q, (u, *q.shape)))
    qr = np.asarray(quantize(stacked, cfg["fmt"], "sr", overflow="saturate",
                             seed=cfg["seed"] + 1), np.float32)
    indep = np.asarray(matmul(a[:, None, :], qr, spec), np.float64)[:, 0, :]
    agg = exact.sum(axis=0)

    def rel(x: np.ndarray, ref: np.ndarray) -> float:
        return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))

    return {"out_err": rel(shared, exact), "agg_err": rel(shared.sum(axis=0), agg),
            "agg_err_indep": rel(indep.sum(axis=0), agg)}


def warm_key(cfg: dict[str, Any]) -> tuple:
    """Runs with one key use the same compiled kernels."""
    return (cfg["part"], cfg.get("rounding"), cfg.get("low"))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def analyze(p: dict[str, Any], configs: list[dict[str, Any]],
            results: list[dict[str, Any]]) -> tuple[list, dict, list]:
    rows = []
    prod: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    train: dict[tuple[str, int, bool, int], dict[str, float]] = {}
    for cfg, res in zip(configs, results, strict=True):
        if cfg["part"] == "product":
            prod.setdefault((cfg["product"], cfg["rounding"], 1 << cfg["log2_u"]), []).append(res)
        else:
            train[(cfg["sweep"], cfg["value"], cfg["low"], cfg["train"]["seed"])] = res
    curves = []
    for (product, rounding, u), runs in prod.items():
        row: dict[str, Any] = {"part": "product", "product": product, "rounding": rounding, "u": u,
               **{m: _mean([r[m] for r in runs]) for m in ("out_err", "agg_err",
                                                          "agg_err_indep")}}
        row["reuse_penalty"] = row["agg_err"] / row["agg_err_indep"]
        rows.append(row)
        curves.append(row)
    product_stats = {}
    for product in PRODUCTS:
        for rounding in p["roundings"]:
            sel = [r for r in curves if (r["product"], r["rounding"]) == (product, rounding)]
            if sel:
                us = [r["u"] for r in sel]
                product_stats[f"{product}/{rounding}"] = {
                    "out_err_vs_u": stats.spearman(us, [r["out_err"] for r in sel]),
                    "penalty_vs_u": stats.spearman(us, [r["reuse_penalty"] for r in sel]),
                    "out_err_slope": stats.loglog_slope(us, [r["out_err"] for r in sel]),
                    "penalty_slope": stats.loglog_slope(us, [r["reuse_penalty"] for r in sel])}
    effects = []
    for (sweep, value, low, seed), res in sorted(train.items()):
        if not low or (sweep, value, False, seed) not in train:
            continue
        base = train[(sweep, value, False, seed)]
        # U of the quantized GEMM's weights: the batch size; K: fc1's 64 or the hidden width.
        u = value if sweep == "batch" else 32
        k = 64 if sweep == "batch" else value
        row = {"part": "train", "sweep": sweep, "value": value, "seed": seed, "u": u, "k": k,
               "d_test_loss": res["test_loss"] - base["test_loss"],
               "d_test_accuracy": res["test_accuracy"] - base["test_accuracy"]}
        rows.append(row)
        effects.append(row)
    batch = [r for r in effects if r["sweep"] == "batch"]
    width = [r for r in effects if r["sweep"] == "width"]
    summary = {"products": product_stats, "curves": curves, "effects": effects,
               "u_vs_loss": stats.spearman([r["u"] for r in batch],
                                           [r["d_test_loss"] for r in batch]),
               "k_vs_loss": stats.spearman([r["k"] for r in width],
                                           [r["d_test_loss"] for r in width]),
               "by_value": {f"{sweep}={v}": _mean([r["d_test_loss"] for r in effects
                                                   if (r["sweep"], r["value"]) == (sweep, v)])
                            for sweep, v in dict.fromkeys((r["sweep"], r["value"])
                                                          for r in effects)}}
    return rows, summary, _findings(p, summary)


def _findings(p: dict[str, Any], s: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    sp = s["u_vs_loss"]
    pen = [v["penalty_vs_u"]["rho"] for v in s["products"].values()]
    pen_text = ", ".join(f"{k} rho {v['penalty_vs_u']['rho']:.2f}"
                         for k, v in s["products"].items())
    # The paper predicts more damage at higher U (rho > 0); without significance the verdict
    # depends on power, as in the sensitivity study (stats.decide).
    detectable = stats.detectable_rho(sp["n"]) if sp["n"] else math.nan
    supported = stats.decide(sp["rho"], sp["p"], detectable, SMALL_RHO, sign=+1)
    out.append({"id": "frequency", "claim": "matrices whose elements are used less often "
                "tolerate more low-precision noise", "supported": supported,
                "evidence": f"training, batch sweep {p['batches']} with fc1 forward in "
                f"{p['train_fmt']} ({len(p['seeds'])} seeds): Spearman rho of the test-loss "
                f"increase against U = {sp['rho']:.2f} (p {stats.fmt_p(sp['p'])}, n "
                f"{sp['n']}; {stats.power_text(detectable, SMALL_RHO)}); isolated products: "
                f"reuse penalty against U: {pen_text}"})
    if pen:
        out.append({"id": "reuse-penalty", "claim": "in an isolated product, a shared "
                    "quantization error does not average over the outputs it feeds (the "
                    "penalty against independent noise grows with U)",
                    "supported": bool(all(v > 0 for v in pen if math.isfinite(v))
                                      and any(math.isfinite(v) for v in pen)),
                    "evidence": pen_text + "; per-output error against U: " + ", ".join(
                        f"{k} slope {v['out_err_slope']:.2f}" for k, v in s["products"].items())})
    return out


def plot(s: dict[str, Any], out: Path) -> list[str]:
    from refsim.studies.report import pyplot

    plt = pyplot()
    files = []
    if s["curves"]:
        prods = list(dict.fromkeys(r["product"] for r in s["curves"]))
        fig, axes = plt.subplots(1, len(prods), figsize=(5.5 * len(prods), 4), squeeze=False)
        for ax, product in zip(axes[0], prods, strict=True):
            for rounding in dict.fromkeys(r["rounding"] for r in s["curves"]):
                sel = [r for r in s["curves"] if (r["product"], r["rounding"]) ==
                       (product, rounding)]
                us = [r["u"] for r in sel]
                ax.loglog(us, [r["out_err"] for r in sel], "o-", ms=3,
                          label=f"{rounding}: per output")
                ax.loglog(us, [r["agg_err"] for r in sel], "s--", ms=3,
                          label=f"{rounding}: sum over uses")
            sel = [r for r in s["curves"] if r["product"] == product]
            pts = sorted({r["u"]: r["agg_err_indep"] for r in sel}.items())
            ax.loglog(*zip(*pts, strict=True), "k:", label="independent SR per use")
            ax.set_xlabel("U (outputs fed per quantized element)")
            ax.set_ylabel("relative error")
            ax.set_title(f"{product} product, K fixed")
            ax.legend(fontsize=7)
        files.append(save_figure(fig, out, "error_vs_u.png"))
    if s["effects"]:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for ax, sweep, label in ((axes[0], "batch", "batch size (U of fc1 weights; K = 64)"),
                                 (axes[1], "width", "hidden width (K of fc2; U = 32)")):
            sel = [r for r in s["effects"] if r["sweep"] == sweep]
            if sel:
                ax.semilogx([r["value"] for r in sel], [r["d_test_loss"] for r in sel], "o")
                vals = sorted({r["value"] for r in sel})
                ax.semilogx(vals, [np.mean([r["d_test_loss"] for r in sel if r["value"] == v])
                                   for v in vals], "-")
            ax.axhline(0, color="gray", lw=0.6)
            ax.set_xlabel(label)
            ax.set_ylabel("test loss, low precision - fp32")
        files.append(save_figure(fig, out, "training_sweeps.png"))
    return files


def section(doc: dict[str, Any]) -> str:
    s, p = doc["summary"], doc["params"]
    lines = [f"## {TITLE}", "",
             f"Isolated products: K = {p['k']}, N = {p['n']}, U = 2^{min(p['log2_u'])}.."
             f"2^{max(p['log2_u'])}, quantized operand {p['fmt']} (forward) / {p['grad_fmt']} "
             f"(weight gradient), seeds {p['product_seeds']}. Training: MLP on digits, "
             f"{p['steps']} steps ({p['optimizer']}, lr {p['lr']:g}), {p['train_fmt']} in one "
             f"GEMM, seeds {p['seeds']}; "
             f"{doc['grid']['runs']} runs ({doc['grid']['cached']} cached), "
             f"{doc['seconds']:.0f} s.", "",
             "| product / rounding | per-output error vs U: slope | reuse penalty vs U: "
             "Spearman rho (p) | penalty at the largest U |", "|---|---|---|---|"]
    for key, v in s["products"].items():
        product, rounding = key.split("/")
        last = [r for r in s["curves"] if (r["product"], r["rounding"]) == (product, rounding)]
        lines.append(f"| {key} | {v['out_err_slope']:.2f} | {v['penalty_vs_u']['rho']:.2f} "
                     f"({stats.fmt_p(v['penalty_vs_u']['p'])}) | "
                     f"{last[-1]['reuse_penalty']:.3g} |" if last else f"| {key} | | | |")
    lines += [""] + [f"![error against U]({f})" for f in doc["plots"] if f == "error_vs_u.png"]
    lines += ["", "Training, mean test-loss increase over seeds (low precision minus fp32):", ""]
    lines += [f"- {k}: {v:+.4f}" for k, v in s["by_value"].items()]
    u, k = s["u_vs_loss"], s["k_vs_loss"]
    lines += ["", f"Spearman rho against U (batch sweep, K fixed): {u['rho']:.2f} (p "
              f"{stats.fmt_p(u['p'])}, n {u['n']}); against K (width sweep, U fixed): "
              f"{k['rho']:.2f} "
              f"(p {stats.fmt_p(k['p'])}, n {k['n']})."]
    lines += [""] + [f"![training sweeps]({f})" for f in doc["plots"]
                     if f == "training_sweeps.png"]
    lines += ["", said(doc["findings"]), ""]
    return "\n".join(lines)
