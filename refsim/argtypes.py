"""argparse types shared by every command line (refsim, refsim study, python -m refsim.validation).

Usage rules: pass them as `type=` to add_argument. A bad value raises ArgumentTypeError, which
argparse reports as one line, "PROG: error: argument --FLAG: MESSAGE", with exit status 2; the
message says what the flag accepts and repeats the value given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["nonnegative_int", "output_dir", "positive_float", "positive_int"]


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text, "a non-negative integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer; got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text!r}") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number; got {text!r}")
    return value


def output_dir(text: str) -> str:
    """A directory to write into: it may not exist yet, but neither it nor a folder above it
    may be a file."""
    if not text:
        raise argparse.ArgumentTypeError("must be a directory; got an empty path")
    path = Path(text)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == path else f"lies under {str(parent)!r}, a file"
            raise argparse.ArgumentTypeError(f"{text!r} {where}, not a directory")
    return text


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}") from None
