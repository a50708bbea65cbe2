"""refsim.torch_nn.emulate(): one training step of each example under emulation against the same
step in native fp32 torch, and where the time goes.

    python -m bench.torch_emulate [--models gpt resnet] [--specs fp8-fp32acc h100-fp8 ...]
                                  [--modes exact fast] [--threads 1] [--repeat 3]

One step = forward, cross-entropy, backward, AdamW step of examples.train (SIZES["full"]: the
GPT decoder, 4 blocks of d_model 256, batch 8 x 32 tokens; the ResNet-18 layout of width 16,
batch 16 of 16x16 images). Native fp32 and every emulated step run in this process with the same
torch and Numba thread count; each figure is the process CPU time of one step (median of
--repeat after one warm-up step), so other jobs on a shared machine do not count. For each
emulated step the products' own CPU time (operand Casts, refsim's kernels, conversions:
ProductRecord.seconds, the calling thread's CPU time: all of it on one thread) is split from the
rest (the dispatch mode, im2col copies, torch's own work).

Specs: fp8-fp32acc: e4m3fn operands (rne), fp32 sequential accumulation (issue goal <= 3x);
h100-fp8: refsim.hardware.gemm_spec("h100", "e4m3"), the tensor-core model (goal <= 40x);
mxfp8, nvfp4: the recipe presets; fp16-acc: fp16 operands, fp16 accumulation.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from examples.train import build, loss_of, set_threads
from refsim.hardware import gemm_spec
from refsim.nn.numerics import Numerics, Product, preset
from refsim.specs import AccumSpec, Cast, GemmSpec
from refsim.torch_nn import emulate

SPECS = ("fp8-fp32acc", "h100-fp8", "mxfp8", "nvfp4", "fp16-acc")


def plan(name: str) -> Numerics:
    if name == "fp8-fp32acc":
        return Numerics(Product(GemmSpec(a=Cast("e4m3fn"), b=Cast("e4m3fn"),
                                         acc=AccumSpec("fp32"))), name=name)
    if name == "h100-fp8":
        return Numerics(Product(gemm_spec("h100", "e4m3")), name=name)
    if name == "fp16-acc":
        return Numerics(Product(GemmSpec(a=Cast("fp16"), b=Cast("fp16"),
                                         acc=AccumSpec("fp16"))), name=name)
    return preset(name)


def step_seconds(model: str, numerics: Numerics | None, mode: str, repeat: int
                 ) -> tuple[float, float]:
    """(median CPU seconds of one step, median CPU seconds of its products)."""
    net, batch = build(model, "full", 0)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    data = torch.Generator().manual_seed(1)
    x, y = batch(data)
    totals, products = [], []
    for i in range(repeat + 1):
        em = emulate(numerics, mode=mode) if numerics is not None else None
        start = time.process_time()
        if em is not None:
            with em:
                loss = loss_of(net, x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        else:
            loss = loss_of(net, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        spent = time.process_time() - start
        if i:  # the first step warms up (Numba's cache, torch's allocator)
            totals.append(spent)
            products.append(sum(r.seconds for r in em.products) if em is not None else 0.0)
            if em is not None:
                assert not any(r.native for r in em.products)
    return statistics.median(totals), statistics.median(products)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.torch_emulate", description=__doc__)
    parser.add_argument("--models", nargs="+", choices=("gpt", "resnet"),
                        default=["gpt", "resnet"])
    parser.add_argument("--specs", nargs="+", choices=SPECS, default=list(SPECS))
    parser.add_argument("--modes", nargs="+", choices=("exact", "fast"),
                        default=["exact", "fast"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print(f"threads {args.threads}, CPU seconds per step (median of {args.repeat})")
    print("| model | numerics | mode | step | x native | products | rest |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models:
        native, _ = step_seconds(model, None, "exact", args.repeat)
        print(f"| {model} | fp32 (native torch) | - | {native:.3f} s | 1 | - | - |", flush=True)
        for name in args.specs:
            for mode in args.modes:
                total, prods = step_seconds(model, plan(name), mode, args.repeat)
                print(f"| {model} | {name} | {mode} | {total:.3f} s | {total / native:.1f}x | "
                      f"{prods:.3f} s | {total - prods:.3f} s |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
