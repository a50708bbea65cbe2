"""Real accumulators as a factor: H100 FP8 (13 fraction bits kept), B200 FP8 (25) and H100 FP8
promoted into fp32 every 128 products (DeepSeek-V3) across the reduction length K, on synthetic
GEMMs and in training.

Usage rules:
  - Accumulators (ACCUMULATORS; refsim.hardware presets, e4m3 operands): `h100` is
    gemm_spec("h100", "e4m3") (blocks of 32 products aligned and truncated to 13 fraction bits,
    the running sum held to 13 fraction bits); `b200` is gemm_spec("b200", "e4m3") (25 bits, the
    block sums added in fp32 round-to-nearest); `h100-promote` is the H100 block chain restarted
    every `promote_every` products (default 128) and each chunk's result added into an fp32
    (RNE) sum, as refsim.nn.recipes' deepseek-fp8 recipe builds it (AccumSpec order multiterm
    with chunk and outer); `fp32` is the same e4m3 operands with an fp32 sequential RNE
    accumulator (the reference the training runs are paired with).
  - Synthetic part: for every data kind (DATA: the two operands' distributions) and scaling
    (`none`: the values are rounded to e4m3 as they are; `tensor`: each operand is divided by
    amax / 448 first, per-tensor scaling to the e4m3 range), trial t draws A (m x 2^max log2_k)
    and B (2^max log2_k x n) from NumPy streams seeded [seed, t, data index, operand]; the GEMM
    of length K uses the first K columns of A and rows of B (scaled by their own amax), so the
    points of one trial along K share one sequence. The exact result is the integer product of
    the e4m3 values times 2^9 (every e4m3 value is a multiple of 2^-9 below 2^9; a sum of at
    most 2^20 products stays below 2^63), so no reference rounding is involved.
  - Errors per output: `rel` = |d - S| / |S| (S the exact dot product; an output with S = 0 is
    left out) and `norm` = |d - S| / sum |a_k b_k|; per trial: the max and median of rel over the
    m n outputs and the Frobenius relative error ||D - S||_F / ||S||_F. Per K the report gives
    the max of rel over every output of every trial and the median of rel over them, and the
    first K at which that max exceeds each of `levels`.
  - DeepSeek-V3 (arXiv:2412.19437, section 3.3.2) reports a maximum relative error of "nearly
    2%" at K = 4096 without promotion, without saying which inputs: per data kind and scaling,
    the h100 max rel at K = 4096 is called near 2% when it lies within a factor
    `deepseek_factor` of 0.02.
  - Training part: MLP (64, H, 10) on digits (refsim.nn), H in `hidden`, so the output layer's
    forward product has K = H; every product of every role runs through one accumulator's
    GemmSpec with per-tensor scaling (refsim.nn.numerics "tensor": e4m3 operands, amax / 448).
    The run of the `fp32` accumulator with the same seed is its pair. After `steps` SGD steps
    (`lr`, `lr_schedule`: cosine to 0 by default, so the runs end on a plateau) the final test
    loss and accuracy are evaluated in fp32 (TrainConfig.eval_preset "numpy": np.matmul in
    float32), so inference is the same for every accumulator. Damage at (accumulator, H) = the
    mean paired difference of that test loss over the seeds in units of the fp32 runs'
    seed-to-seed standard deviation at that H (seed sd), its standard error sd(diff) / sqrt(n)
    / seed sd (the seed sd taken as known), t with n - 1 degrees of freedom.
  - Claims (`claims(doc)`, refsim.studies.claims.claim, family "accumulators", ids
    "accumulators/..."; the findings are refsim.studies.claims.as_findings of them, Holm within
    the study), their SESOIs declared in the parameters before any run:
      slope-<acc>-<data>: the error grows with K: the mean over trials of the least-squares
        slope of log2(max rel) on log2 K (bits per doubling of K; an error of 0 is floored at
        2^-60), direction +1, SESOI `sesoi_slope` = 0.1 bits per doubling (a 1.9x change of
        the error over the nine doublings from 2^7 to 2^16: less is no growth worth reporting);
      below-h100-<acc>-<data>: at K = `compare_k` the accumulator's max rel is below H100's: the
        mean over trials of log2(max rel h100) - log2(max rel acc), direction +1, SESOI
        `sesoi_log2_error` = 1 bit (a factor of 2 in the error);
      train-<acc>: at the largest H the accumulator's damage; direction +1 for h100 (it costs
        accuracy), 0 for the others (no cost), SESOI `sesoi_seed_sd` = 0.5 seed sd (the
        allocation comparisons' unit, docs/studies.md "The decisive design": half the
        seed-to-seed spread of the outcome).
    Synthetic claims are made for the data kinds in `claim_data` with `claim_scaling`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from refsim.studies.params import need
from refsim.studies.report import save_figure

__all__ = ["ACCUMULATORS", "DATA", "FULL", "QUICK", "SCALINGS", "STANDARD", "TITLE", "VERSION",
           "analyze", "check", "claims", "exact_products", "gemm", "grid", "operands", "plot",
           "run_one", "section"]

VERSION = 1
TITLE = "Real accumulators: H100 and B200 FP8 tensor cores and promotion every 128 across K"
NAME = "accumulators"
FAMILY = "accumulators"

ACCUMULATORS = ("fp32", "h100", "b200", "h100-promote")
LOW = ("h100", "b200", "h100-promote")
DATA: dict[str, tuple[str, str]] = {
    "normal": ("N(0,1)", "N(0,1)"),
    "uniform": ("U(0,1)", "U(0,1)"),
    "abs-normal": ("|N(0,1)|", "|N(0,1)|"),
    "activation": ("|N(0,1)|", "N(0,1)"),
    "uniform-normal": ("U(0,1)", "N(0,1)"),
    "shifted-0.1": ("|N(0,1)|", "N(0.1,1)"),
    "shifted-0.5": ("|N(0,1)|", "N(0.5,1)"),
}
"""Data kinds: (A's distribution, B's distribution). `activation` is ReLU-like activations
(half-normal) times zero-mean weights: the products are zero-mean, their sum cancels. The
`shifted` kinds give the weights a mean of 0.1 or 0.5 of their sd: partial cancellation, between
the zero-mean and the one-signed kinds."""
SCALINGS = ("none", "tensor")
E4M3 = "e4m3fn"
E4M3_MAX = 448.0
E4M3_QUANTUM = 9  # every e4m3 value is a multiple of 2^-9 (its smallest subnormal)
ERROR_FLOOR = 2.0 ** -24
"""Errors below fp32's unit roundoff count as 2^-24 in logs: every accumulator here ends in
fp32, whose rounding of the exact result alone may err by that much (and an error of 0 has no
log)."""
MEASURES = ("frob_rel", "max_rel")
MEASURE_WORDS = {"frob_rel": "Frobenius relative error", "max_rel": "maximum relative error"}

QUICK: dict[str, Any] = {
    "log2_k": [7, 8, 9, 10, 11, 12],
    "data": ["uniform", "activation"],
    "scalings": ["tensor"],
    "m": 8, "n": 8, "trials": 4,
    "levels": [0.001, 0.01],
    "promote_every": 128,
    "compare_k": 4096,
    "deepseek_factor": 1.5,
    "claim_data": ["uniform", "activation"],
    "claim_scaling": "tensor",
    "claim_measure": "frob_rel",
    "hidden": [64, 1024],
    "seeds": [0, 1, 2],
    "steps": 60, "lr": 0.05, "lr_schedule": "cosine", "batch_size": 32,
    "sesoi_slope": 0.1, "sesoi_log2_error": 1.0, "sesoi_seed_sd": 0.5,
    "seed": 0,
}
STANDARD: dict[str, Any] = {
    **QUICK,
    "log2_k": list(range(7, 17)),
    "data": list(DATA),
    "scalings": list(SCALINGS),
    "m": 16, "n": 16, "trials": 6,
    "hidden": [64, 256, 1024, 4096],
    "seeds": list(range(4)),
    "steps": 400,
}
"""Sized for about 5-10 minutes on 2 cores (docs/studies.md): 42 synthetic runs (16 x K x 16,
6 trials, K = 2^7..2^16; 5-8 s each) and 64 training runs (4 accumulators x 4 widths x 4 seeds
x 400 steps; 65-165 CPU seconds per seed over the widths and accumulators, the low end measured
on a lightly loaded machine, the high end under heavy load). 4 seeds, not 8: the paired
differences' sd was about 0.09 seed-sd in a pilot, so 4 seeds give power near 1 at the SESOI
of 0.5, and the 2-hour budget of `make study` on shared cores needed the time."""
FULL: dict[str, Any] = {**STANDARD, "trials": 24, "hidden": [64, 256, 1024, 4096, 16384],
                        "seeds": list(range(16))}


def check(p: dict[str, Any]) -> None:
    """Raise ValueError naming the first bad parameter."""
    from refsim.nn.optim import SCHEDULES

    lk = p["log2_k"]
    need(isinstance(lk, list) and len(lk) >= 2 and all(isinstance(v, int) and 1 <= v <= 20
                                                       for v in lk)
         and lk == sorted(set(lk)), NAME, "log2_k",
         "an increasing list of at least two ints in [1, 20]", lk)
    need(bool(p["data"]) and all(d in DATA for d in p["data"])
         and len(set(p["data"])) == len(p["data"]), NAME, "data",
         f"a non-empty list of distinct {', '.join(DATA)}", p["data"])
    need(bool(p["scalings"]) and all(s in SCALINGS for s in p["scalings"])
         and len(set(p["scalings"])) == len(p["scalings"]), NAME, "scalings",
         f"a non-empty list of distinct {', '.join(SCALINGS)}", p["scalings"])
    for key in ("m", "n", "steps", "batch_size", "promote_every", "compare_k"):
        need(isinstance(p[key], int) and not isinstance(p[key], bool) and p[key] >= 1, NAME,
             key, "a positive int", p[key])
    need(isinstance(p["trials"], int) and p["trials"] >= 2, NAME, "trials",
         "an int >= 2 (the claims need a spread over trials)", p["trials"])
    need(p["compare_k"] in [1 << v for v in lk], NAME, "compare_k",
         f"one of the K of log2_k ({', '.join(str(1 << v) for v in lk)})", p["compare_k"])
    need(bool(p["levels"]) and all(isinstance(v, int | float) and 0 < v < 1
                                   for v in p["levels"]), NAME, "levels",
         "a non-empty list of numbers in (0, 1)", p["levels"])
    need(isinstance(p["deepseek_factor"], int | float) and p["deepseek_factor"] > 1, NAME,
         "deepseek_factor", "a number > 1", p["deepseek_factor"])
    need(all(d in p["data"] for d in p["claim_data"]), NAME, "claim_data",
         "a list of data kinds that `data` runs", p["claim_data"])
    need(p["claim_measure"] in MEASURES, NAME, "claim_measure", f"one of {', '.join(MEASURES)}",
         p["claim_measure"])
    need(p["claim_scaling"] in p["scalings"], NAME, "claim_scaling",
         "one of the scalings that `scalings` runs", p["claim_scaling"])
    need(bool(p["hidden"]) and all(isinstance(h, int) and h >= 1 for h in p["hidden"])
         and p["hidden"] == sorted(set(p["hidden"])), NAME, "hidden",
         "an increasing list of positive ints", p["hidden"])
    need(isinstance(p["seeds"], list) and len(p["seeds"]) >= 2
         and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in p["seeds"])
         and len(set(p["seeds"])) == len(p["seeds"]), NAME, "seeds",
         "a list of at least two distinct ints >= 0", p["seeds"])
    need(isinstance(p["lr"], int | float) and p["lr"] > 0, NAME, "lr", "a positive number",
         p["lr"])
    need(p["lr_schedule"] in SCHEDULES, NAME, "lr_schedule", f"one of {', '.join(SCHEDULES)}",
         p["lr_schedule"])
    for key in ("sesoi_slope", "sesoi_log2_error", "sesoi_seed_sd"):
        need(isinstance(p[key], int | float) and p[key] > 0, NAME, key, "a positive number",
             p[key])
    need(isinstance(p["seed"], int) and p["seed"] >= 0, NAME, "seed", "an int >= 0", p["seed"])


def gemm(acc: str, promote_every: int = 128):
    """The GemmSpec of accumulator `acc` (module docstring), e4m3 operands."""
    from refsim.hardware import gemm_spec
    from refsim.specs import AccumSpec

    h100 = gemm_spec("h100", "e4m3")
    if acc == "h100":
        return h100
    if acc == "b200":
        return gemm_spec("b200", "e4m3")
    if acc == "h100-promote":
        inner = {**h100.acc.to_dict(), "chunk": promote_every, "outer": {"fmt": "fp32"}}
        return dataclasses.replace(h100, acc=AccumSpec.from_dict(inner))
    if acc == "fp32":
        return dataclasses.replace(h100, acc=AccumSpec("fp32"))
    raise ValueError(f"unknown accumulator {acc!r} (allowed: {', '.join(ACCUMULATORS)})")


def grid(p: dict[str, Any]) -> list[dict[str, Any]]:
    """One synthetic run per (data, scaling, accumulator), all trials and K in it; one training
    run per (accumulator, hidden width, seed)."""
    runs = [{"part": "synthetic", "data": d, "scaling": s, "acc": a, "log2_k": p["log2_k"],
             "m": p["m"], "n": p["n"], "trials": p["trials"],
             "promote_every": p["promote_every"], "seed": p["seed"]}
            for d in p["data"] for s in p["scalings"] for a in LOW]
    runs += [{"part": "train", "acc": a, "hidden": h, "seed": s, "steps": p["steps"],
              "lr": p["lr"], "lr_schedule": p["lr_schedule"], "batch_size": p["batch_size"],
              "promote_every": p["promote_every"]}
             for h in reversed(p["hidden"]) for s in p["seeds"] for a in ACCUMULATORS]
    return runs


# ---- synthetic GEMMs -----------------------------------------------------------------------------
def _draw(kind: str, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    if kind == "U(0,1)":
        return rng.random(shape)
    if kind == "|N(0,1)|":
        return np.abs(rng.standard_normal(shape))
    mean = float(kind[2:kind.index(",")])  # "N(mu,1)"
    return rng.standard_normal(shape) + mean


def operands(data: str, trial: int, m: int, n: int, kmax: int, seed: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Trial `trial`'s float64 A (m x kmax) and B (kmax x n) before rounding (module doc)."""
    code = list(DATA).index(data)
    da, db = DATA[data]
    # Drawn K-major, so a shorter K's operands are a prefix of a longer K's.
    a = _draw(da, np.random.default_rng([seed, trial, code, 0]), (kmax, m)).T
    b = _draw(db, np.random.default_rng([seed, trial, code, 1]), (kmax, n))
    return np.ascontiguousarray(a), b


def to_e4m3(x: np.ndarray, scaling: str) -> np.ndarray:
    """x rounded to e4m3 (rne), divided by amax / 448 first when scaling is "tensor"."""
    import refsim

    if scaling == "tensor":
        amax = float(np.max(np.abs(x)))
        if amax > 0:
            x = x / (amax / E4M3_MAX)
    return np.asarray(refsim.quantize(x, E4M3), np.float64)


def exact_products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The exact A B of e4m3 values as float64 (module docstring: integers times 2^-18). Each
    result is rounded once to float64, far below every accumulator's error."""
    ia = np.ldexp(a, E4M3_QUANTUM)
    ib = np.ldexp(b, E4M3_QUANTUM)
    if not (np.array_equal(ia, np.round(ia)) and np.array_equal(ib, np.round(ib))):
        raise ValueError("exact_products takes e4m3 values (multiples of 2^-9)")
    if a.shape[1] > 1 << 20:
        raise ValueError(f"exact_products holds K <= 2^20 in int64; got K = {a.shape[1]}")
    s = ia.astype(np.int64) @ ib.astype(np.int64)
    return np.ldexp(s.astype(np.float64), -2 * E4M3_QUANTUM)


def _errors(d: np.ndarray, s: np.ndarray, scale: np.ndarray) -> dict[str, Any]:
    err = np.abs(d - s)
    nz = s != 0
    rel = err[nz] / np.abs(s[nz])
    norm = np.where(scale > 0, err / np.where(scale > 0, scale, 1), 0.0)
    frob = float(np.linalg.norm(d - s) / np.linalg.norm(s)) if np.any(nz) else math.nan
    return {"rel": rel, "max_rel": float(rel.max()) if rel.size else math.nan,
            "median_rel": float(np.median(rel)) if rel.size else math.nan,
            "max_norm": float(norm.max()), "frob_rel": frob}


def _synthetic(cfg: dict[str, Any]) -> dict[str, Any]:
    import refsim

    spec = gemm(cfg["acc"], cfg["promote_every"])
    ks = [1 << v for v in cfg["log2_k"]]
    per_trial: dict[str, list[list[float]]] = {key: [] for key in
                                               ("max_rel", "median_rel", "max_norm", "frob_rel")}
    pooled: list[list[np.ndarray]] = [[] for _ in ks]
    for t in range(cfg["trials"]):
        a0, b0 = operands(cfg["data"], t, cfg["m"], cfg["n"], ks[-1], cfg["seed"])
        rows: dict[str, list[float]] = {key: [] for key in per_trial}
        for i, k in enumerate(ks):
            a = to_e4m3(a0[:, :k], cfg["scaling"])
            b = to_e4m3(b0[:k], cfg["scaling"])
            s = exact_products(a, b)
            scale = exact_products(np.abs(a), np.abs(b))
            d = np.asarray(refsim.matmul(a, b, spec), np.float64)
            e = _errors(d, s, scale)
            pooled[i].append(e.pop("rel"))
            for key in rows:
                rows[key].append(e[key])
        for key in rows:
            per_trial[key].append(rows[key])
    all_rel = [np.concatenate(v) for v in pooled]
    return {**per_trial, "k": ks,
            "k_max_rel": [float(v.max()) if v.size else math.nan for v in all_rel],
            "k_median_rel": [float(np.median(v)) if v.size else math.nan for v in all_rel],
            "k_outputs": [int(v.size) for v in all_rel]}


# ---- training ------------------------------------------------------------------------------------
def plan_dict(acc: str, promote_every: int = 128) -> dict[str, Any]:
    """A numerics plan: every role of every product through `acc` with per-tensor scaling."""
    from refsim.nn.numerics import ROLES

    product = {**gemm(acc, promote_every).to_dict(), "scaling": "tensor"}
    return {"name": f"accumulators-{acc}", "default": {r: dict(product) for r in ROLES}}


def _train(cfg: dict[str, Any]) -> dict[str, Any]:
    import time

    from threadpoolctl import threadpool_limits

    from refsim.nn.numerics import Numerics
    from refsim.nn.train import TrainConfig, train

    train_images = 1437  # refsim.nn.data.digits' training split
    epochs = math.ceil(cfg["steps"] * cfg["batch_size"] / train_images)
    tc = TrainConfig(model="mlp", hidden=(cfg["hidden"],), seed=cfg["seed"], epochs=epochs,
                     max_steps=cfg["steps"], optimizer="sgd", lr=cfg["lr"],
                     batch_size=cfg["batch_size"], lr_schedule=cfg["lr_schedule"],
                     eval_preset="numpy")
    plan = Numerics.from_dict(plan_dict(cfg["acc"], cfg["promote_every"]))
    start, cpu = time.perf_counter(), time.process_time()
    with threadpool_limits(limits=1, user_api="blas"):
        summary = train(tc, plan)
    out = {"test_loss": summary["test_loss"], "test_accuracy": summary["test_accuracy"],
           "final_train_loss": summary["final_train_loss"], "steps": summary["steps"],
           "diverged": summary["nonfinite"] is not None,
           "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}
    for key in ("test_loss", "test_accuracy", "final_train_loss"):
        if out[key] is None or out["diverged"] or not math.isfinite(out[key]):
            out[key] = math.nan
    return out


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    """One grid point: a synthetic sweep over K (all trials) or one training run."""
    return _synthetic(cfg) if cfg["part"] == "synthetic" else _train(cfg)


def warm_key(cfg: dict[str, Any]) -> tuple:
    """Runs with one key use the same compiled kernels."""
    return (cfg["part"], cfg["acc"])


# ---- analysis ------------------------------------------------------------------------------------
def _slope(x: list[float], y: list[float]) -> float:
    return float(np.polyfit(x, y, 1)[0])


def _log2(v: float) -> float:
    return math.log2(max(v, ERROR_FLOOR))


def _mean_se(values: list[float]) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if math.isfinite(x)], np.float64)
    n = len(v)
    if n < 2:
        return (float(v.mean()) if n else math.nan), math.nan, n
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(n)), n


def _t_ci(mean: float, se: float, n: int) -> tuple[float, float]:
    from scipy import stats

    if not (math.isfinite(se) and n >= 2):
        return math.nan, math.nan
    h = float(stats.t(n - 1).ppf(0.975)) * se
    return mean - h, mean + h


def _first(ks: list[int], values: list[float], level: float) -> int | None:
    return next((k for k, v in zip(ks, values, strict=True) if v > level), None)


def _synthetic_summary(p: dict[str, Any], configs: list[dict[str, Any]],
                       results: list[dict[str, Any]]) -> tuple[list, dict]:
    rows: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}
    log2_k = p["log2_k"]
    for c, r in zip(configs, results, strict=True):
        if c["part"] != "synthetic":
            continue
        key = f"{c['data']}/{c['scaling']}/{c['acc']}"
        slope = {}
        for m in MEASURES:
            mean, se, n = _mean_se([_slope(log2_k, [_log2(v) for v in trial])
                                    for trial in r[m]])
            slope[m] = {"slope": mean, "se": se, "n": n}
        first = {str(level): _first(r["k"], r["k_max_rel"], level) for level in p["levels"]}
        frob_med = [float(np.median([trial[i] for trial in r["frob_rel"]]))
                    for i in range(len(r["k"]))]
        curves[key] = {"data": c["data"], "scaling": c["scaling"], "acc": c["acc"],
                       "k": r["k"], "max_rel": r["k_max_rel"], "median_rel": r["k_median_rel"],
                       "median_frob_rel": frob_med,
                       "max_norm": [max(trial[i] for trial in r["max_norm"])
                                    for i in range(len(r["k"]))],
                       "slope": slope,
                       "first_k_above": first,
                       "first_k_frob_above": {str(level): _first(r["k"], frob_med, level)
                                              for level in p["levels"]},
                       "trials": {m: r[m] for m in MEASURES}}
        for i, k in enumerate(r["k"]):
            rows.append({"part": "synthetic", "data": c["data"], "scaling": c["scaling"],
                         "acc": c["acc"], "k": k, "max_rel": r["k_max_rel"][i],
                         "median_rel": r["k_median_rel"][i],
                         "median_frob_rel": frob_med[i],
                         "max_norm": curves[key]["max_norm"][i],
                         "outputs": r["k_outputs"][i]})
    ck = p["compare_k"]
    compare = {}
    deepseek = []
    for d in p["data"]:
        for s in p["scalings"]:
            h = curves.get(f"{d}/{s}/h100")
            if h is None:
                continue
            i = h["k"].index(ck)
            for a in ("b200", "h100-promote"):
                other = curves.get(f"{d}/{s}/{a}")
                if other is None:
                    continue
                entry: dict[str, Any] = {"data": d, "scaling": s, "acc": a, "k": ck}
                for m in MEASURES:
                    diff = [_log2(x[i]) - _log2(y[i]) for x, y in
                            zip(h["trials"][m], other["trials"][m], strict=True)]
                    mean, se, n = _mean_se(diff)
                    entry[m] = {"log2_ratio": mean, "se": se, "n": n}
                compare[f"{d}/{s}/{a}"] = entry
            got = h["max_rel"][i]
            near = 0.02 / p["deepseek_factor"] <= got <= 0.02 * p["deepseek_factor"]
            deepseek.append({"data": d, "scaling": s, "k": ck, "h100_max_rel": got,
                             "h100_median_rel": h["median_rel"][i],
                             "h100_median_frob_rel": h["median_frob_rel"][i],
                             "promote_max_rel": curves.get(f"{d}/{s}/h100-promote", {}).get(
                                 "max_rel", [math.nan] * len(h["k"]))[i],
                             "near_2_percent": bool(near)})
    for v in curves.values():
        del v["trials"]
    return rows, {"curves": curves, "compare": compare, "deepseek": deepseek}


def _train_summary(p: dict[str, Any], configs: list[dict[str, Any]],
                   results: list[dict[str, Any]]) -> tuple[list, dict]:
    from scipy import stats

    runs: dict[tuple[str, int, int], dict[str, Any]] = {}
    for c, r in zip(configs, results, strict=True):
        if c["part"] == "train":
            runs[(c["acc"], c["hidden"], c["seed"])] = r
    rows: list[dict[str, Any]] = []
    baseline: dict[str, Any] = {}
    damage: dict[str, Any] = {}
    for h in p["hidden"]:
        base = [runs[("fp32", h, s)]["test_loss"] for s in p["seeds"]]
        ok = [v for v in base if math.isfinite(v)]
        sd = float(np.std(ok, ddof=1)) if len(ok) > 1 else math.nan
        acc_base = [runs[("fp32", h, s)]["test_accuracy"] for s in p["seeds"]]
        baseline[str(h)] = {"test_loss": float(np.mean(ok)) if ok else math.nan,
                            "seed_sd": sd, "test_accuracy": float(np.nanmean(acc_base)),
                            "train_loss": float(np.nanmean(
                                [runs[("fp32", h, s)]["final_train_loss"]
                                 for s in p["seeds"]])),
                            "seconds": float(np.mean([runs[(a, h, s)]["seconds"]
                                                      for a in ACCUMULATORS
                                                      for s in p["seeds"]]))}
        for a in LOW:
            diffs = [runs[(a, h, s)]["test_loss"] - runs[("fp32", h, s)]["test_loss"]
                     for s in p["seeds"]]
            dacc = [runs[(a, h, s)]["test_accuracy"] - runs[("fp32", h, s)]["test_accuracy"]
                    for s in p["seeds"]]
            diverged = sum(runs[(a, h, s)]["diverged"] for s in p["seeds"])
            mean, se, n = _mean_se(diffs)
            z, zse = (mean / sd, se / sd) if sd > 0 else (math.nan, math.nan)
            lo, hi = _t_ci(z, zse, n)
            pval = (float(2 * stats.t(n - 1).sf(abs(z / zse)))
                    if math.isfinite(zse) and zse > 0 else math.nan)
            damage[f"{a}/{h}"] = {"acc": a, "hidden": h, "z": z, "z_se": zse, "n": n,
                                  "ci_low": lo, "ci_high": hi, "p": pval,
                                  "diff": mean, "diff_se": se, "diverged": diverged,
                                  "d_accuracy": float(np.nanmean(dacc))}
            rows.append({"part": "train", "acc": a, "hidden": h, "k": h, "z": z, "z_se": zse,
                         "ci_low": lo, "ci_high": hi, "p": pval, "d_test_loss": mean,
                         "d_test_accuracy": float(np.nanmean(dacc)), "diverged": diverged,
                         "seeds": n})
    onset = {}
    for a in LOW:
        mine = [damage[f"{a}/{h}"] for h in p["hidden"]]
        onset[a] = {
            "first_k_detectable": next((d["hidden"] for d in mine if d["ci_low"] > 0), None),
            "first_k_beyond_sesoi": next((d["hidden"] for d in mine
                                          if d["ci_low"] > p["sesoi_seed_sd"]), None)}
    return rows, {"baseline": baseline, "damage": damage, "onset": onset}


def analyze(p: dict[str, Any], configs: list[dict[str, Any]],
            results: list[dict[str, Any]]) -> tuple[list, dict, list]:
    srows, synth = _synthetic_summary(p, configs, results)
    trows, training = _train_summary(p, configs, results)
    summary = {"synthetic": synth, "training": training}
    from refsim.studies.claims import as_findings, finalize

    return srows + trows, summary, as_findings(finalize(claims({"params": p,
                                                                 "summary": summary})))


# ---- claims ----------------------------------------------------------------------------------
def _claim_inputs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The keyword arguments of every claim (module docstring), without calling claim()."""
    p, s = doc["params"], doc["summary"]
    curves, compare = s["synthetic"]["curves"], s["synthetic"]["compare"]
    sc, cm = p["claim_scaling"], p["claim_measure"]
    what = MEASURE_WORDS[cm]
    out = []
    span = f"K = 2^{p['log2_k'][0]}..2^{p['log2_k'][-1]}"
    for d in p["claim_data"]:
        where = f"{DATA[d][0]} x {DATA[d][1]} operands in e4m3 ({sc} scaling)"
        for a in LOW:
            c = curves[f"{d}/{sc}/{a}"]["slope"][cm]
            out.append(dict(
                id=f"{FAMILY}/slope-{a}-{d}",
                statement=f"the {a} accumulator's {what} grows with K ({where}, {span})",
                effect=c["slope"], se=c["se"],
                sesoi=p["sesoi_slope"], direction=1, family=FAMILY,
                measure=f"log2 {what} of a trial's GEMM",
                design=f"least-squares slope on log2 K per trial, {c['n']} trials of "
                f"{p['m']} x K x {p['n']} GEMMs", n=c["n"],
                units="bits per doubling of K", df=c["n"] - 1))
        for a in ("b200", "h100-promote"):
            k = compare[f"{d}/{sc}/{a}"]["k"]
            c = compare[f"{d}/{sc}/{a}"][cm]
            out.append(dict(
                id=f"{FAMILY}/below-h100-{a}-{d}", statement=f"at K = {k} the {a} accumulator's "
                f"{what} is below the H100 FP8 preset's ({where})",
                effect=c["log2_ratio"], se=c["se"], sesoi=p["sesoi_log2_error"], direction=1,
                family=FAMILY, measure=f"log2 {what} of a trial's GEMM",
                design=f"paired over {c['n']} random {p['m']} x {k} x {p['n']} GEMMs "
                "(same operands for both accumulators)", n=c["n"],
                units="bits (log2 of the error ratio h100 / acc)", df=c["n"] - 1))
    hmax = p["hidden"][-1]
    for a in LOW:
        d = s["training"]["damage"][f"{a}/{hmax}"]
        costs = a == "h100"
        out.append(dict(
            id=f"{FAMILY}/train-{a}",
            statement=(f"the {a} accumulator costs {'' if costs else 'no '}accuracy at K = "
                       f"{hmax} (MLP on digits, every product e4m3 with per-tensor scaling)"),
            effect=d["z"], se=d["z_se"],
            sesoi=p["sesoi_seed_sd"], direction=1 if costs else 0, family=FAMILY,
            measure="final test loss evaluated in fp32",
            design=f"paired with the fp32-accumulator run of the same seed, {d['n']} seeds, "
            f"{p['steps']} SGD steps, MLP (64, {hmax}, 10)", n=d["n"],
            units="seed sd of the fp32 runs' final test loss", df=d["n"] - 1))
    return out


def claims(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The study's claims, each from refsim.studies.claims.claim (module docstring)."""
    from refsim.studies.claims import claim

    return [claim(c.pop("id"), c.pop("statement"), **c) for c in _claim_inputs(doc)]


# ---- plots and the report section --------------------------------------------------------------
def plot(s: dict[str, Any], out: Path) -> list[str]:
    from refsim.studies.report import pyplot

    plt = pyplot()
    files = []
    curves = s["synthetic"]["curves"]
    if curves:
        datas = list(dict.fromkeys(c["data"] for c in curves.values()))
        fig, axes = plt.subplots(1, len(datas), figsize=(3.6 * len(datas), 3.4), squeeze=False,
                                 sharey=True)
        colors = {a: plt.cm.tab10(i) for i, a in enumerate(LOW)}
        for ax, d in zip(axes[0], datas, strict=True):
            for c in curves.values():
                if c["data"] != d:
                    continue
                style = "-" if c["scaling"] == "tensor" else ":"
                pts = [(k, v) for k, v in zip(c["k"], c["max_rel"], strict=True) if v > 0]
                if pts:
                    ax.loglog(*zip(*pts, strict=True), style, color=colors[c["acc"]],
                              label=f"{c['acc']} ({c['scaling']})")
            ax.axhline(0.02, color="gray", lw=0.6)
            ax.set_title(f"{DATA[d][0]} x {DATA[d][1]}", fontsize=9)
            ax.set_xlabel("K")
        axes[0][0].set_ylabel("max relative error")
        axes[0][0].legend(fontsize=6)
        fig.suptitle("Synthetic e4m3 GEMMs: max relative error against K (gray: 2%)",
                     fontsize=9)
        files.append(save_figure(fig, out, "accumulators_error.png"))
    dmg = s["training"]["damage"]
    if dmg:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for a in LOW:
            marks = [x for x in dmg.values() if x["acc"] == a and math.isfinite(x["z"])]
            if marks:
                half = [[x["z"] - x["ci_low"] if math.isfinite(x["ci_low"]) else 0.0
                         for x in marks],
                        [x["ci_high"] - x["z"] if math.isfinite(x["ci_high"]) else 0.0
                         for x in marks]]
                ax.errorbar([x["hidden"] for x in marks], [x["z"] for x in marks], yerr=half,
                            fmt="o-", ms=4, capsize=2, label=a)
        ax.set_xscale("log")
        ax.axhline(0, color="gray", lw=0.6)
        ax.set_xlabel("K of the output layer (hidden width)")
        ax.set_ylabel("damage: final test loss, seed sd (95% t interval)")
        ax.legend(fontsize=7)
        ax.set_title("Training: damage against the fp32 accumulator", fontsize=9)
        files.append(save_figure(fig, out, "accumulators_training.png"))
    return files


def _num(v: Any, spec: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return format(v, spec) if isinstance(v, float) else str(v)


def section(doc: dict[str, Any]) -> str:
    from refsim.studies.report import said

    s, p = doc["summary"], doc["params"]
    syn, tr = s["synthetic"], s["training"]
    lines = [f"## {TITLE}", "",
             f"Accumulators (refsim.hardware, e4m3 operands): h100 (13 fraction bits kept), "
             f"b200 (25), h100-promote (the H100 chain promoted into fp32 every "
             f"{p['promote_every']} products, DeepSeek-V3) and fp32 (sequential). Synthetic: "
             f"{p['m']} x K x {p['n']} GEMMs, K = 2^{p['log2_k'][0]}..2^{p['log2_k'][-1]}, "
             f"{p['trials']} trials, data {', '.join(p['data'])}, scaling "
             f"{', '.join(p['scalings'])}; error against the exact product (integer "
             f"arithmetic). Training: MLP (64, H, 10) on digits, H in {p['hidden']}, "
             f"{len(p['seeds'])} seeds, {p['steps']} SGD steps (lr {p['lr']:g}, "
             f"{p['lr_schedule']}), every product "
             "through the accumulator with per-tensor scaling, final test loss evaluated in "
             f"fp32. {doc['grid']['runs']} runs ({doc['grid']['cached']} cached), "
             f"{doc['seconds']:.0f} s.", ""]
    lines += [f"![{f}]({f})" for f in doc["plots"]]
    lines += ["", "Max relative error over every output of every trial (median in "
              "parentheses), and its growth: slope of log2 error on log2 K per trial, mean over "
              "trials, bits per doubling, of the trial's max relative error and of its "
              f"Frobenius relative error (errors below 2^-24 count as 2^-24); claims use "
              f"{MEASURE_WORDS[p['claim_measure']]}:", "",
              "| data | scaling | accumulator | " + " | ".join(
                  f"K={k}" for k in (1 << v for v in p["log2_k"])) + " | slope max rel (se) | "
              "slope Frobenius (se) | "
              + " | ".join(f"first K > {lv:g}" for lv in p["levels"]) + " |",
              "|---" * (5 + len(p["log2_k"]) + len(p["levels"])) + "|"]
    for c in syn["curves"].values():
        lines.append(f"| {c['data']} | {c['scaling']} | {c['acc']} | " + " | ".join(
            f"{_num(v, '.2g')} ({_num(m, '.2g')})" for v, m in
            zip(c["max_rel"], c["median_rel"], strict=True)) +
            f" | {_num(c['slope']['max_rel']['slope'], '+.2f')} "
            f"({_num(c['slope']['max_rel']['se'], '.2f')}) | "
            f"{_num(c['slope']['frob_rel']['slope'], '+.2f')} "
            f"({_num(c['slope']['frob_rel']['se'], '.2f')}) | " +
            " | ".join(_num(c["first_k_above"][str(lv)]) for lv in p["levels"]) + " |")
    lines += ["", f"DeepSeek-V3's 'maximum relative error nearly 2% at K = 4096 without "
              f"promotion', here at K = {p['compare_k']} (near: within a factor "
              f"{p['deepseek_factor']:g} of 2%):", "",
              "| data (A x B) | scaling | h100 max rel | median | median Frobenius rel | "
              "h100-promote max rel | near 2% |", "|---|---|---|---|---|---|---|"]
    for d in syn["deepseek"]:
        lines.append(f"| {DATA[d['data']][0]} x {DATA[d['data']][1]} | {d['scaling']} | "
                     f"{_num(d['h100_max_rel'])} | {_num(d['h100_median_rel'])} | "
                     f"{_num(d['h100_median_frob_rel'])} | {_num(d['promote_max_rel'])} | "
                     f"{'yes' if d['near_2_percent'] else 'no'} |")
    lines += ["", "Training: damage = final test loss (fp32 inference) minus the fp32-"
              "accumulator run's with the same seed, in seed sd of the fp32 runs; 95% t "
              "interval:", "",
              "| K (hidden) | fp32 test loss (seed sd) | fp32 accuracy | " + " | ".join(
                  f"{a}" for a in LOW) + " |", "|---|---|---|" + "---|" * len(LOW)]
    for h in p["hidden"]:
        b = tr["baseline"][str(h)]
        cells = []
        for a in LOW:
            d = tr["damage"][f"{a}/{h}"]
            cells.append(f"{_num(d['z'], '+.2f')} [{_num(d['ci_low'], '+.2f')}, "
                         f"{_num(d['ci_high'], '+.2f')}]"
                         + (f", {d['diverged']} diverged" if d["diverged"] else ""))
        lines.append(f"| {h} | {_num(b['test_loss'], '.4f')} ({_num(b['seed_sd'], '.4f')}) | "
                     f"{100 * b['test_accuracy']:.1f}% | " + " | ".join(cells) + " |")
    lines += ["", "Onset (first K whose 95% interval lies above 0 / above the SESOI of "
              f"{p['sesoi_seed_sd']:g} seed sd): " + "; ".join(
                  f"{a}: {_num(o['first_k_detectable'])} / {_num(o['first_k_beyond_sesoi'])}"
                  for a, o in tr["onset"].items()) + ".", "",
              said(doc["findings"]), ""]
    return "\n".join(lines)
