"""Loss curves of both examples under each numerics against native fp32, in one plot.

    python -m examples.loss_curves --steps 50 --json losses.json --png docs/emulate_loss_curves.png
    python -m examples.loss_curves --from-json losses.json --png docs/emulate_loss_curves.png

Trains examples.models' GPT decoder and ResNet-18-shaped CNN (SIZES["full"]) for --steps steps
under every entry of NUMERICS (exact mode, one torch and one Numba thread by default), from the
same initial weights and batches, and plots the training loss per step: one panel per model.
The JSON (written after every run, so an interrupted sweep keeps what it finished) holds the
losses and seconds of each run; --from-json only draws it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from examples.models import NUMERICS
from examples.train import set_threads, train

MODELS = {"gpt": "GPT decoder (4 blocks, d_model 256): repeated-pattern task",
          "resnet": "ResNet-18 layout (width 16): 10 noisy templates, 16x16"}


def plot(results: dict[str, dict[str, dict]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MODELS), figsize=(6 * len(MODELS), 4.2))
    for ax, (model, title) in zip(axes, MODELS.items(), strict=True):
        for name in NUMERICS:
            run = results.get(model, {}).get(name)
            if run is None:
                continue
            style = {"color": "black", "linewidth": 2.2} if name == "fp32" else {}
            ax.plot(range(len(run["losses"])), run["losses"], label=name, **style)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    fig.suptitle("refsim.torch_nn.emulate: every matrix product (forward and backward) "
                 "emulated, against native fp32", fontsize=11)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.loss_curves", description=__doc__)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--numerics", nargs="+", choices=tuple(NUMERICS), default=list(NUMERICS))
    parser.add_argument("--size", default="full")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write (and extend) this file")
    parser.add_argument("--from-json", type=Path, default=None, help="only plot this file")
    parser.add_argument("--png", type=Path, default=Path("docs/emulate_loss_curves.png"))
    args = parser.parse_args(argv)
    if args.from_json is not None:
        plot(json.loads(args.from_json.read_text()), args.png)
        return 0
    set_threads(args.threads)
    results: dict[str, dict[str, dict]] = {}
    if args.json is not None and args.json.exists():
        results = json.loads(args.json.read_text())
    for model in args.models:
        for name in args.numerics:
            run = train(model, name, args.steps, size=args.size)
            results.setdefault(model, {})[name] = {
                "losses": run.losses, "seconds": run.seconds, "products": run.products,
                "native": run.native, "roles": sorted(run.roles)}
            print(f"{model} {name}: loss {run.losses[0]:.3f} -> {run.losses[-1]:.3f}, "
                  f"{sum(run.seconds):.1f} s, {run.products} products, {run.native} native",
                  file=sys.stderr, flush=True)
            if args.json is not None:
                args.json.write_text(json.dumps(results, indent=1))
    plot(results, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
