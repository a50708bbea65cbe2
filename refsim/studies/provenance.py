"""Where a study result came from: git commit, date, machine, versions, wall time, command.

Usage rules:
  - `collect(command, seconds)` returns a flat JSON-safe dict that run_study stores as the
    "provenance" key of every results.json: git_commit (None outside a git checkout),
    git_dirty (uncommitted changes to tracked files, None when unknown), date (UTC, ISO 8601),
    machine (platform, processor name, logical CPUs), python / numpy / numba / scipy versions,
    wall_seconds and command (the exact command line; by default this process's argv with
    the program shown as `refsim` when it is the refsim entry point or `python -m refsim`).
  - Nothing here affects a result: provenance is recorded, never part of a run's cache key.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["collect", "command_line"]


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, as a shell line (module docstring)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and (Path(argv[0]).name in ("refsim", "__main__.py")):
        argv[0] = "refsim"
    return shlex.join(argv)


def collect(command: str | None = None, seconds: float | None = None,
            outputs: str | Path | None = None) -> dict[str, Any]:
    """The provenance record (module docstring). `outputs`: the folder the run writes its
    results into; changes under it do not count as uncommitted code (a run that rewrites a
    committed docs/results/ is still a run of a clean commit)."""
    import numba
    import numpy
    import scipy

    commit = _git("rev-parse", "HEAD")
    spec = ["--", "."]
    if outputs is not None:
        root = Path(__file__).resolve().parents[2]
        try:
            rel = Path(outputs).resolve().relative_to(root)
            spec.append(f":(exclude){rel.as_posix()}")
        except ValueError:
            pass  # outside the repository: nothing to exclude
    status = _git("status", "--porcelain", "--untracked-files=no", *spec)
    return {
        "git_commit": commit or None,
        "git_dirty": None if status is None else bool(status),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.system()} {platform.machine()}, {_processor()}, "
                   f"{os.cpu_count()} logical CPUs",
        "python": platform.python_version(), "numpy": numpy.__version__,
        "numba": numba.__version__, "scipy": scipy.__version__,
        "wall_seconds": seconds,
        "command": command if command is not None else command_line(),
    }
