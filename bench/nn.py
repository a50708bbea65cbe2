"""refsim.nn: training time with every matrix product simulated, and where the time goes.

    python -m bench.nn [--parts mlp cnn transformer ratio] [--threads 2] [--limit 300]

mlp: one epoch of the 64-128-10 MLP on digits (1,437 images, batch 32, SGD) under fp8.
cnn: one epoch of the CNN (conv 1->8, pool, conv 8->16, pool, fc 64->10) under fp8.
Both after two warm-up steps on a separate model (compilation), with a profile: seconds per
product and role, and the split between operand Casts (refsim.quantize), accumulation (the rest
of refsim.matmul) and everything else (autodiff, NumPy ops, optimizer).
ratio: one training epoch of the MLP, the CNN and the transformer under the unsimulated `numpy`
preset and under each of --compare (default fp32 fp8), in this process, one Numba thread and one
BLAS thread, CPU time, best of --repeat; prints each preset's epoch as a multiple of numpy's (the
target: a step under fp32 and fp8 within 5x of numpy's; docs/BENCHMARKS.md).
transformer: the tiny transformer under fp8 trained epoch by epoch on its synthetic task until
the test sequence accuracy (every answer token right) reaches --target (or --limit seconds
pass); prints the time to reach it and a profile of the first epoch.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections import defaultdict

import numba
import numpy as np

from refsim.nn import Context, preset
from refsim.nn.train import TrainConfig, build, evaluate, forward_loss, make_optimizer


def _profile_seconds(profile: cProfile.Profile) -> dict[str, float]:
    """Cumulative seconds of the simulated-GEMM entry points."""
    wanted = {("quantize.py", "quantize"): "casts", ("accumulate.py", "matmul"): "matmul",
              ("numerics.py", "run_product"): "products"}
    out: dict[str, float] = defaultdict(float)
    for (path, _, func), (_, _, _, cumulative, _) in pstats.Stats(profile).stats.items():
        key = wanted.get((path.rsplit("/", 1)[-1], func))
        if key is not None:
            out[key] += cumulative
    return out


def epoch(config: TrainConfig, plan_name: str) -> None:
    config = config.resolved()
    plan = preset(plan_name)
    warm, split = build(config)
    warm_ctx = Context(plan, seed=config.seed)
    warm_opt = make_optimizer(config, warm)
    for b in range(2):
        idx = np.arange(b * config.batch_size, (b + 1) * config.batch_size)
        warm_opt.zero_grad()
        forward_loss(warm, warm_ctx, split.x_train[idx], split.y_train[idx], None)[1].backward()
        warm_opt.step()
    model, split = build(config)
    trace: list = []
    ctx = Context(plan, seed=config.seed, trace=trace)
    opt = make_optimizer(config, model)
    n = len(split.y_train)
    order = np.random.default_rng([config.seed, 0]).permutation(n)
    profile = cProfile.Profile()
    start, cpu_start = time.perf_counter(), time.process_time()
    profile.enable()
    for b in range(0, n, config.batch_size):
        idx = order[b:b + config.batch_size]
        opt.zero_grad()
        forward_loss(model, ctx, split.x_train[idx], split.y_train[idx], None)[1].backward()
        opt.step()
        ctx.step += 1
    profile.disable()
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    ctx.trace = None
    acc = evaluate(model, split, ctx)["test_accuracy"]
    print(f"\n### {config.model}, numerics {plan_name}: one epoch ({ctx.step} steps) "
          f"{total:.2f} s wall ({cpu:.2f} s CPU, all threads), test accuracy after it "
          f"{100 * acc:.1f}%\n")
    _report(trace, profile, total)


def _report(trace: list, profile: cProfile.Profile, total: float) -> None:
    """Seconds per product and role, and the split of the total (module docstring)."""
    parts = _profile_seconds(profile)
    print("| product | role | calls | MACs | seconds | ns/MAC |")
    print("|---|---|---|---|---|---|")
    rows: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for t in trace:
        row = rows[(t["layer"], t["role"])]
        row[0] += 1
        row[1] += t["macs"]
        row[2] += t["seconds"]
    for (layer, role), (calls, macs, seconds) in rows.items():
        print(f"| {layer} | {role} | {calls} | {macs:.3g} | {seconds:.2f} | "
              f"{1e9 * seconds / macs:.0f} |")
    products = parts["products"]
    print(f"\nsimulated products {products:.2f} s ({100 * products / total:.0f}%): operand "
          f"Casts (quantize) {parts['casts']:.2f} s, accumulation and the rest of matmul "
          f"{parts['matmul'] - parts['casts']:.2f} s; outside the products (autodiff, NumPy "
          f"ops, optimizer, profiler) {total - products:.2f} s "
          f"({100 * (total - products) / total:.0f}%)")


def transformer(plan_name: str, target: float, limit: float, task: str) -> None:
    config = TrainConfig(model="transformer", task=task, length=8, vocab=10).resolved()
    model, split = build(config)
    plan = preset(plan_name)
    ctx = Context(plan, seed=config.seed)
    opt = make_optimizer(config, model)
    n = len(split.y_train)
    start = time.perf_counter()
    print(f"\n### transformer on {task} (length {config.length}, vocab {config.vocab}, "
          f"{n} training sequences), numerics {plan_name}, target: {100 * target:.0f}% of the "
          f"test sequences with every answer token right\n")
    print("| epoch | steps | seconds | train loss | test token acc | test sequence acc |")
    print("|---|---|---|---|---|---|")
    epoch_index = 0
    trace: list = []
    profile = cProfile.Profile()
    first = 0.0
    while time.perf_counter() - start < limit:
        if epoch_index == 0:
            ctx.trace = trace
            profile.enable()
        order = np.random.default_rng([config.seed, epoch_index]).permutation(n)
        losses = []
        for b in range(0, n, config.batch_size):
            idx = order[b:b + config.batch_size]
            opt.zero_grad()
            loss = forward_loss(model, ctx, split.x_train[idx], split.y_train[idx],
                         split.mask_train[idx])[1]
            loss.backward()
            opt.step()
            ctx.step += 1
            losses.append(float(loss.data))
        if epoch_index == 0:
            profile.disable()
            ctx.trace = None
            first = time.perf_counter() - start
        result = evaluate(model, split, ctx)
        seconds = time.perf_counter() - start
        print(f"| {epoch_index + 1} | {ctx.step} | {seconds:.1f} | {np.mean(losses):.4f} | "
              f"{100 * result['test_accuracy']:.2f}% | "
              f"{100 * result['sequence_accuracy']:.2f}% |", flush=True)
        epoch_index += 1
        if result["sequence_accuracy"] >= target:
            print(f"\nreached {100 * target:.0f}% in {seconds:.1f} s")
            break
    else:
        print(f"\nnot reached within {limit:.0f} s")
    print(f"\nprofile of the first epoch ({first:.2f} s, compilation included):\n")
    _report(trace, profile, first)


def _epoch_cpu(config: TrainConfig, plan_name: str) -> float:
    """CPU seconds of one training epoch under plan_name (after a warm-up epoch)."""
    config = config.resolved()
    plan = preset(plan_name)
    seconds = []
    for _ in range(2):  # the first epoch compiles; only the second is kept
        model, split = build(config)
        ctx = Context(plan.bind(model.gemm_names()), seed=config.seed)
        opt = make_optimizer(config, model)
        n = len(split.y_train)
        order = np.random.default_rng([config.seed, 0]).permutation(n)
        start = time.process_time()
        for b in range(0, n, config.batch_size):
            idx = order[b:b + config.batch_size]
            mask = None if split.mask_train is None else split.mask_train[idx]
            opt.zero_grad()
            forward_loss(model, ctx, split.x_train[idx], split.y_train[idx], mask)[1].backward()
            opt.step()
            ctx.step += 1
        seconds.append(time.process_time() - start)
    return seconds[-1]


def ratio(plans: list[str], repeat: int) -> None:
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(1)
    configs = {"MLP 64-128-10": TrainConfig(model="mlp", hidden=(128,)),
               "CNN": TrainConfig(model="cnn"),
               "transformer (reversal, length 8)": TrainConfig(
                   model="transformer", task="reversal", length=8, vocab=10)}
    print("\n### one training epoch, CPU seconds (best of "
          f"{repeat}), one thread; each preset as a multiple of numpy's\n")
    print("| model | numpy | " + " | ".join(plans) + " |")
    print("|---|---|" + "---|" * len(plans))
    with threadpool_limits(limits=1, user_api="blas"):
        for label, config in configs.items():
            base = min(_epoch_cpu(config, "numpy") for _ in range(repeat))
            cells = [min(_epoch_cpu(config, p) for _ in range(repeat)) / base for p in plans]
            print(f"| {label} | {base:.3f} s | " + " | ".join(f"{c:.1f}x" for c in cells)
                  + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["mlp", "cnn", "transformer"],
                        choices=["mlp", "cnn", "transformer", "ratio"])
    parser.add_argument("--compare", nargs="+", default=["fp32", "fp8"],
                        help="presets timed against numpy by --parts ratio")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--numerics", default="fp8")
    parser.add_argument("--threads", type=int, default=None, help="Numba threads (default: all)")
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--limit", type=float, default=300.0)
    parser.add_argument("--task", default="reversal")
    args = parser.parse_args()
    if args.threads is not None:
        numba.set_num_threads(args.threads)
    print(f"Numba threads: {numba.get_num_threads()}")
    if "mlp" in args.parts:
        epoch(TrainConfig(model="mlp", hidden=(128,)), args.numerics)
    if "cnn" in args.parts:
        epoch(TrainConfig(model="cnn"), args.numerics)
    if "transformer" in args.parts:
        transformer(args.numerics, args.target, args.limit, args.task)
    if "ratio" in args.parts:
        ratio(args.compare, args.repeat)


if __name__ == "__main__":
    main()
