"""`refsim study NAME|all|profile`: the command-line front of refsim.studies.

Usage rules:
  - `refsim study NAME` runs one study into --out (default reports/NAME); `refsim study all`
    runs every study into --out (default reports/latest) and writes the combined report.md;
    `refsim study profile --model M` prints a model's factor profile and writes it as CSV and
    JSON. --quick uses each study's small grid; --standard the grid sized to decide in under
    an hour on 2 cores (sensitivity and allocate; a study without one runs its quick grid).
  - --set KEY=VALUE overrides a parameter (VALUE read as JSON when it parses); with `all`, the
    key is STUDY.KEY. Unknown studies, keys and bad values are errors that name what is
    allowed.
  - At the end it prints where the report is and the verdict on each of the paper's findings.
  - Errors and exit statuses as refsim.cli: a bad flag or path is one line and status 2;
    Ctrl-C says how many runs are cached (a rerun of the same command resumes) and exits 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["add_study_parser"]


def _overrides(items: list[str] | None, name: str) -> dict:
    from refsim.studies import STUDIES
    from refsim.studies.params import parse_assignments

    flat = parse_assignments(items)
    out: dict[str, dict] = {}
    for key, value in flat.items():
        study, dot, sub = key.partition(".")
        if not dot:
            if name == "all":
                raise ValueError(f"--set with 'all' takes STUDY.KEY=VALUE (studies: "
                                 f"{', '.join(STUDIES)}); got {key!r}")
            study, sub = name, key
        if study not in STUDIES:
            raise ValueError(f"--set {key!r}: unknown study {study!r} (allowed: "
                             f"{', '.join(STUDIES)})")
        if name not in ("all", study):
            raise ValueError(f"--set {key!r} names study {study!r}, but this run is {name!r}")
        out.setdefault(study, {})[sub] = value
    return out


def _study(args: argparse.Namespace) -> int:
    from refsim.studies import STANDARD_SET, STUDIES, headline, run_study, write_outputs
    from refsim.studies.profiles import write_profiles

    progress = None if args.quiet else sys.stderr
    if args.name == "profile":
        from refsim.studies.training import profile_of

        prof = profile_of({"model": args.model, "batch_size": args.batch_size})
        print(prof.table())
        out = Path(args.out or "reports/profile")
        out.mkdir(parents=True, exist_ok=True)
        prof.to_csv(out / f"{args.model}.csv")
        prof.to_json(out / f"{args.model}.json")
        print(f"wrote {out}/{args.model}.csv and {out}/{args.model}.json")
        return 0
    if args.name != "all" and args.name not in STUDIES:
        raise ValueError(f"unknown study {args.name!r} (allowed: {', '.join(STUDIES)}, all, "
                         "profile)")
    overrides = _overrides(args.set, args.name)
    if args.quick and args.standard:
        raise ValueError("--quick and --standard are two different grids: give one")
    from refsim.studies.provenance import command_line

    options = {"mode": "quick" if args.quick else "standard" if args.standard else "full",
               "command": command_line(), "executor": args.executor, "workers": args.workers,
               "scheduler": args.scheduler, "use_cache": not args.no_cache,
               "plots": not args.no_plots}
    if args.cache:
        options["cache_dir"] = args.cache
    if args.name == "all":
        out = Path(args.out or "reports/latest")
        options.setdefault("cache_dir", out / "cache")
        names = STANDARD_SET if args.standard else STUDIES
        docs = [run_study(name, out / name, progress=progress, outputs=out,
                          overrides=overrides.get(name), **options) for name in names]
        seconds = sum(d["seconds"] for d in docs)
        path = write_outputs(out, docs, seconds,
                             appendix=write_profiles(out / "profiles", docs=docs))
    else:
        out = Path(args.out or f"reports/{args.name}")
        docs = [run_study(args.name, out, progress=progress,
                          overrides=overrides.get(args.name), **options)]
        path = out / "report.md"
    print(f"report: {path}")
    for d in docs:
        print(f"  {d['study']}: {d['grid']['runs']} runs ({d['grid']['cached']} cached), "
              f"{d['seconds']:.0f} s, {out if args.name != 'all' else out / d['study']}")
    lines = headline(docs)
    if lines:
        print("findings (this run's numbers; details in the report):")
        for line in lines:
            print(f"  {line}")
    return 0


def add_study_parser(sub: argparse._SubParsersAction) -> None:
    """Register `refsim study` on the main parser's sub-parsers."""
    from refsim.argtypes import output_dir, positive_int
    from refsim.studies import STUDIES
    from refsim.studies.executor import EXECUTORS

    p = sub.add_parser("study", help="factor studies: accumulation, frequency, depth, "
                       "sensitivity, allocate (or all); reports with plots",
                       description="Run a factor study (docs/studies.md) and write "
                       "results.json, results.csv, plots and report.md.")
    p.add_argument("name", help=f"{', '.join(STUDIES)}, all, or profile")
    p.add_argument("--quick", action="store_true", help="small grids (about 2 minutes each)")
    p.add_argument("--standard", action="store_true", help="the grids sized to decide (about "
                   "40 minutes for all on 2 cores; docs/studies.md)")
    p.add_argument("--out", type=output_dir, default=None, help="output folder (default "
                   "reports/latest for all, reports/NAME otherwise)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a parameter (STUDY.KEY with all); repeatable")
    p.add_argument("--executor", choices=EXECUTORS, default="process")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address (--executor dask)")
    p.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                   help="local worker processes (default: the CPU count; 1 runs in-process)")
    p.add_argument("--cache", type=output_dir, default=None,
                   help="run cache folder (default OUT/cache)")
    p.add_argument("--no-cache", action="store_true", help="recompute every run")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--model", default="mlp", choices=("mlp", "cnn", "resnet", "transformer"),
                   help="profile: the model")
    p.add_argument("--batch-size", type=positive_int, default=32, help="profile: the batch")
    p.set_defaults(func=_study)
