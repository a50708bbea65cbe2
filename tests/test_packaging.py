"""The installed layout: formats/ and validation/ ship as refsim.formats and refsim.validation."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _installed_name(folder: Path) -> str:
    parts = folder.relative_to(ROOT).parts
    return ".".join(parts if parts[0] == "refsim" else ("refsim", *parts))


def test_every_package_folder_is_listed():
    """A package folder missing from pyproject's list would be left out of the wheel."""
    folders = {_installed_name(p.parent) for top in ("refsim", "formats", "validation")
               for p in (ROOT / top).rglob("__init__.py") if "__pycache__" not in p.parts}
    assert set(_setuptools()["packages"]) == folders


def test_no_generic_top_level_names():
    """`formats` and `validation` are PyPI names of other projects: refsim must not install them."""
    assert set(_setuptools()["package-dir"]) == {"refsim.formats", "refsim.validation"}
    for name in ("formats", "validation"):
        spec = importlib.util.find_spec(f"refsim.{name}")
        assert spec is not None and spec.origin is not None
        assert Path(spec.origin).parent == ROOT / name
