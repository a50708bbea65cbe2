"""`python -m refsim.validation`: the suite, golden vectors and their verification.

    python -m refsim.validation [run] [--peers P ...] [--dtypes float32 float64] [--max-size N]
    python -m refsim.validation golden --format F --rounding R --out DIR [--seed S] [--dtype D]
    python -m refsim.validation verify DIR --candidate module:function

`main(argv)` is the entry point (the `refsim validate` command calls it with its arguments).
Exit status: 0 no unexpected mismatch; 1 a mismatch (a failed row, or a candidate that differs
from its golden vectors); 2 a user's mistake (a bad flag, path, candidate or manifest), reported
in one line, never as a traceback; 3 (CANDIDATE_RAISED) `verify`'s candidate raised: one line
names the exception and its message. The flag types are refsim.argtypes, shared by every command.
"""

from __future__ import annotations

import argparse
import sys

from refsim import argtypes
from refsim.validation.golden import CandidateError, verify_golden, write_golden
from refsim.validation.run import format_table, run_suite
from refsim.validation.suites import SUITES

USAGE = 2
CANDIDATE_RAISED = 3


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run every adapter on every input suite (the default)")
    for p in (parser, run):
        p.add_argument("--peers", nargs="+", default=None,
                       help="peers to run (default: all): refsim-torch-cpu, torch-cast, "
                            "ml_dtypes, gfloat, gfloat-p3109, qtorch, torchao-mx, "
                            "torchao-nvfp4, pychop, pychop-faultchop, pychop-p3109")
        p.add_argument("--dtypes", nargs="+", default=["float32", "float64"],
                       choices=["float32", "float64"], help="input dtypes")
        p.add_argument("--suites", nargs="+", default=list(SUITES), choices=list(SUITES))
        p.add_argument("--max-size", type=argtypes.nonnegative_int, default=1 << 13,
                       help="inputs per suite at most (sampled; 0: all)")
        p.add_argument("--quiet", action="store_true", help="no progress lines")
    golden = sub.add_parser("golden", help="write golden vectors for a format and rounding")
    golden.add_argument("--format", required=True, help="a format name (e4m3fn, bf16, ...)")
    golden.add_argument("--rounding", required=True, help="rne, rna, rtz, rup, rdn, rto or sr")
    golden.add_argument("--out", type=argtypes.output_dir, required=True, help="output directory")
    golden.add_argument("--overflow", default="default")
    golden.add_argument("--sr-bits", type=argtypes.positive_int, default=None)
    golden.add_argument("--seed", type=argtypes.nonnegative_int, default=0)
    golden.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    golden.add_argument("--suites", nargs="+", choices=list(SUITES), default=list(SUITES),
                        help="the input suites (default all; formats over 24 bits, such as fp32, "
                        "sample --size codes for 'codes' and 'midpoints')")
    golden.add_argument("--size", type=argtypes.positive_int, default=1 << 14,
                        help="inputs of the random suites")
    verify = sub.add_parser("verify", help="check a function against golden vectors")
    verify.add_argument("dir", help="a directory written by `golden`")
    verify.add_argument("--candidate", required=True,
                        help="module:function taking and returning a NumPy array")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m refsim.validation") -> int:
    """Run the command line; returns the exit status (module docstring). `prog`: the name
    that usage lines and error messages show."""
    args = _parser(prog).parse_args(argv)
    try:
        return _run(args)
    except CandidateError as exc:
        print(f"{prog} verify: {exc}", file=sys.stderr)
        return CANDIDATE_RAISED
    except (ValueError, TypeError, OSError) as exc:
        print(f"{prog}{' ' + args.command if args.command else ''}: error: {exc}",
              file=sys.stderr)
        return USAGE


def _run(args: argparse.Namespace) -> int:
    if args.command == "golden":
        path = write_golden(args.out, args.format, args.rounding, overflow=args.overflow,
                            sr_bits=args.sr_bits, seed=args.seed, dtype=args.dtype,
                            suites=tuple(args.suites), size=args.size)
        print(f"wrote {path.parent}/golden.npz, golden.csv and {path.name}")
        return 0
    if args.command == "verify":
        report = verify_golden(args.dir, args.candidate)
        print(report)
        print(f"{int(report.ok)} passed, {int(not report.ok)} failed")
        return 0 if report.ok else 1
    rows, skipped = run_suite(tuple(args.peers) if args.peers else None, tuple(args.dtypes),
                              tuple(args.suites), args.max_size, progress=not args.quiet)
    print(format_table(rows, skipped))
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
