"""The run cache: one JSON file per finished run, named by a hash of the run's full config.

Usage rules:
  - `run_key(study, version, config)` is the SHA-256 of the canonical JSON (sorted keys) of the
    study name, the study's code version and the run config, so a run is recomputed whenever
    any of them changes, and found again after an interruption when none did.
  - `put` writes to a temporary file and renames it, so a run killed mid-write leaves no
    half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["Cache", "run_key"]


def run_key(study: str, version: int, config: dict[str, Any]) -> str:
    """The cache key of one run (64 hex digits)."""
    text = json.dumps({"study": study, "version": version, "config": config}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Cache:
    """A directory of finished runs; None as the directory disables caching."""

    def __init__(self, directory: str | Path | None) -> None:
        self.dir = None if directory is None else Path(directory)
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        if self.dir is None:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())["result"]
        except (ValueError, KeyError):  # a damaged entry is recomputed, not trusted
            return None

    def put(self, key: str, config: dict[str, Any], result: dict[str, Any]) -> None:
        if self.dir is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"config": config, "result": result}, sort_keys=True))
        os.replace(tmp, path)
