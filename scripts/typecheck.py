"""mypy over refsim/, formats/ and validation/ as the one package they install as.

formats/ and validation/ install as refsim.formats and refsim.validation (setuptools package-dir,
pyproject.toml). mypy resolves imports from the file tree and does not run the editable install's
import hook, so it would not find `refsim.formats` in this repository. This script lays the
installed shape out as symbolic links in .mypy-tree/ (git-ignored): refsim/<every entry of
refsim/>, refsim/formats -> formats/, refsim/validation -> validation/; runs mypy there with the
project's configuration, and prints paths as they are in the repository.

Usage: python scripts/typecheck.py [extra mypy arguments]; exit status: mypy's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".mypy-tree"
MAPPED = {"formats": ROOT / "formats", "validation": ROOT / "validation"}


def build_tree() -> Path:
    """A fresh .mypy-tree/refsim whose entries link to the repository's files."""
    shutil.rmtree(TREE, ignore_errors=True)
    package = TREE / "refsim"
    package.mkdir(parents=True)
    for entry in sorted((ROOT / "refsim").iterdir()):
        if entry.name != "__pycache__":
            os.symlink(entry, package / entry.name)
    for name, target in MAPPED.items():
        os.symlink(target, package / name)
    return package


def main(argv: list[str]) -> int:
    build_tree()
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
               "refsim", *argv]
    done = subprocess.run(command, cwd=TREE, capture_output=True, text=True)
    text = done.stdout + done.stderr
    for name in MAPPED:  # report repository paths: refsim/formats/x.py is formats/x.py
        text = text.replace(f"refsim/{name}/", f"{name}/")
    sys.stdout.write(text)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
