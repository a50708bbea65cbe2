"""The `refsim` command: argparse with one sub-command per task (`train`; `study`, registered by
refsim.studies.cli; others add theirs with `add_parser`; `validate` is python -m refsim.validation).

Usage rules:
  - Exit status: 0 success; 1 a check found a mismatch (`refsim validate`); USAGE (2) a user's
    mistake (a bad flag, value, plan or path), reported in one line as argparse does, never as a
    traceback; STOPPED (3) `refsim train` stopped on a NaN or Inf (refsim.nn.train);
    INTERRUPTED (130) Ctrl-C, with one line saying what is kept (a study's cached runs).
  - Flag values are checked where they are parsed, by the argparse types of refsim.argtypes,
    which every command line shares (refsim.studies.cli, validation.__main__); their messages
    name the flag.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from refsim.argtypes import nonnegative_int, output_dir, positive_float, positive_int

__all__ = ["INTERRUPTED", "STOPPED", "USAGE", "main"]

USAGE = 2
STOPPED = 3
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process killed by Ctrl-C


def _train(args: argparse.Namespace) -> int:
    from refsim.nn.numerics import load_numerics
    from refsim.nn.train import TrainConfig, prepare_out_dir, print_summary, train

    if args.threads != 0:
        import numba

        # numba.config sets its settings from the environment at import: no static attributes
        limit: int = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
        if not 1 <= args.threads <= limit:
            raise ValueError(f"--threads must be 0 (Numba default) or in [1, {limit}]; "
                             f"got {args.threads}")
        numba.set_num_threads(args.threads)
    if args.task is not None and args.model != "transformer":
        raise ValueError(f"--task applies to --model transformer only ({args.model} trains on "
                         f"the bundled digits); got --task {args.task}")
    if args.init != "uniform" and args.model == "transformer":
        raise ValueError(f"--init {args.init} applies to --model mlp, cnn or resnet (the "
                         f"transformer keeps uniform)")
    numerics = load_numerics(args.numerics)
    config = TrainConfig(model=args.model, epochs=args.epochs, seed=args.seed,
                         batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                         storage=args.storage, task=args.task or "copy",
                         max_steps=args.max_steps, init=args.init)
    if args.out is not None:  # after the checks, before any work: a run never writes over another
        prepare_out_dir(args.out, args.overwrite)
    summary = train(config, numerics, out_dir=args.out,
                    progress=None if args.quiet else sys.stderr, overwrite=True)
    stopped = summary["nonfinite"]
    if stopped is None:
        print_summary(summary)
    if args.out is not None:
        print(f"wrote {args.out}/metrics.jsonl and {args.out}/summary.json")
    if stopped is not None:
        print(f"refsim train: {stopped['message']}", file=sys.stderr)
        return STOPPED
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from refsim.nn.data import TASKS
    from refsim.nn.layers import INITS
    from refsim.nn.numerics import PRESETS
    from refsim.nn.train import MODELS

    p = sub.add_parser("train", help="train a model with simulated matrix products",
                       description="Train an MLP or CNN on the bundled digits, or a tiny "
                       "transformer on a synthetic sequence task, with every matrix product "
                       "simulated under a numerics plan.",
                       epilog="Exit status: 0 trained; 2 a bad flag, plan or --out; 3 stopped "
                       "because the loss or a gradient became NaN or Inf (the message names "
                       "the step, layer and role; summary.json records it under 'nonfinite').")
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--numerics", default="fp32",
                   help=f"a preset ({', '.join(PRESETS)}) or a plan.toml (default fp32)")
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--out", type=output_dir, default=None,
                   help="directory for metrics.jsonl and summary.json: new or empty, unless "
                   "--overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="let --out hold an earlier run: its metrics.jsonl and summary.json are "
                   "deleted first")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--lr", type=positive_float, default=None)
    p.add_argument("--optimizer", choices=("sgd", "adam"), default=None)
    p.add_argument("--storage", default=None,
                   help="store weights in this format, updated with stochastic rounding")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="the transformer's task (default copy; --model transformer only)")
    p.add_argument("--max-steps", type=positive_int, default=None)
    p.add_argument("--init", choices=tuple(INITS), default="uniform",
                   help="weight initialization: uniform (torch's default) or he (variance "
                   "2/fan_in; mlp, cnn and resnet only)")
    p.add_argument("--threads", type=nonnegative_int, default=1,
                   help="Numba threads (default 1: these products are small, and on a busy "
                   "machine each parallel launch waits for a free core; 0: Numba's default). "
                   "Results never depend on it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)


def _characterize(args: argparse.Namespace) -> int:
    import importlib

    from refsim.characterize import NoModelError, characterize

    module_name, _, attr = args.device_module.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--device-module must be MODULE:FUNCTION (e.g. mymod:mma); got "
                         f"{args.device_module!r}")
    sys.path.insert(0, ".")  # a module beside the user, as python -m would find it
    try:
        mma = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"--device-module {args.device_module}: {exc}") from None
    finally:
        sys.path.pop(0)
    try:
        found = characterize(mma, args.input, args.out, random_rows=args.random_rows)
    except NoModelError as exc:
        print(f"no model: {exc}")
        return 1
    print(found.report())
    if args.toml:
        print("\n# the spec as TOML (refsim.GemmSpec.from_toml)\n" + found.spec.to_toml(), end="")
    return 0


def _add_characterize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("characterize", help="read a black-box matrix unit's arithmetic off "
                       "crafted vectors: the GemmSpec that reproduces it (docs/hardware.md)")
    p.add_argument("--device-module", required=True, metavar="MODULE:FUNCTION",
                   help="a function mma(a, b, c) -> D on float64 arrays (a (M, K), b (K, N), "
                        "c (M, N)), e.g. mymod:mma for mymod.py in the current folder")
    p.add_argument("--input", required=True, help="the operands' format (fp16, bf16, tf32, "
                   "e4m3, e5m2, fp32, fp64, ...)")
    p.add_argument("--out", default="fp32", help="the output (and C) format (default fp32)")
    p.add_argument("--random-rows", type=positive_int, default=10_000,
                   help="random rows checked at the end (default 10000)")
    p.add_argument("--toml", action="store_true", help="also print the spec as TOML")
    p.set_defaults(func=_characterize)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refsim", description="refsim: a bit-exact reference "
                                     "simulator for low-precision deep-learning numerics")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_characterize(sub)
    from refsim.studies.cli import add_study_parser

    add_study_parser(sub)
    # Listed for --help only: main() hands `validate`'s arguments to validation's own parser.
    sub.add_parser("validate", add_help=False,
                   help="the validation suite, golden vectors and their verification "
                        "(python -m refsim.validation; `refsim validate --help` for its options)")
    return parser


def _validate(argv: list[str]) -> int:
    # The one place refsim reaches up to validation/: the command line is the top of both.
    # It reports its own errors (one line, USAGE) under this command's name.
    from refsim.validation.__main__ import main as validation_main

    return validation_main(argv, prog="refsim validate")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["validate"]:
        command, run = "validate", lambda: _validate(argv[1:])
    else:
        args = build_parser().parse_args(argv)
        command, run = args.command, lambda: args.func(args)
    try:
        return run()
    except (ValueError, TypeError, OSError) as exc:
        # A bad value, plan or path (an OSError names its file); a bug would be another type.
        print(f"refsim {command}: error: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt as exc:
        from refsim.studies.executor import GridInterrupted

        detail = f": {exc}" if isinstance(exc, GridInterrupted) else ""
        lead = "\n" if sys.stderr.isatty() else ""  # off a progress bar's line
        print(f"{lead}refsim {command}: interrupted{detail}", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
