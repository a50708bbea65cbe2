"""The run cache: one JSON file per finished run, named by a hash of the run's full config.

Usage rules:
  - `run_key(study, version, config, code="")` is the SHA-256 of the canonical JSON (sorted
    keys) of the study name, the study's code version, the run config and `code`, the hash of
    the code that computes a run (`code_hash()`, which run_grid passes), so a run is
    recomputed whenever any of them changes, and found again after an interruption when none
    did.
  - `code_hash()`: SHA-256 over the source files that compute a run: every module of the
    installed refsim and refsim.formats packages except the layers above a run (the CLI,
    the demo, refsim.validation, and the studies' analysis and report modules; the studies'
    run code, training.py, architectures.py and dose.py, is included, and a study module's
    own run_one is covered by its VERSION).
  - An entry is {"key", "config", "result", "sha256"}: `result` is the run's dict and `sha256`
    the SHA-256 of the canonical JSON of {"key", "config", "result"} (`checksum`), so an entry
    edited by hand, damaged, or copied under another key's name is caught.
  - `get` trusts nothing it reads: an entry that is not a well-formed JSON object of that shape,
    whose key is not its file's, whose checksum does not match, or a directory in an entry's
    place, gives a CacheWarning naming the file and None, so the run is recomputed (and `put`
    replaces the entry). A missing entry is simply None.
  - `put` writes to a temporary file and renames it, so a run killed mid-write leaves no
    half-written entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

__all__ = ["Cache", "CacheWarning", "checksum", "code_hash", "run_key"]

_ENTRY_KEYS = {"key", "config", "result", "sha256"}


class CacheWarning(UserWarning):
    """A cache entry that cannot be trusted (it is recomputed)."""


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def run_key(study: str, version: int, config: dict[str, Any], code: str = "") -> str:
    """The cache key of one run (64 hex digits)."""
    record: dict[str, Any] = {"study": study, "version": version, "config": config}
    if code:
        record["code"] = code
    return hashlib.sha256(_canonical(record).encode()).hexdigest()


RUN_CODE_STUDIES = ("training.py", "architectures.py", "dose.py")
ABOVE_RUNS = ("cli.py", "demo.py", "__main__.py")


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """SHA-256 (hex) of the code that computes a run (module docstring)."""
    import refsim
    import refsim.formats

    h = hashlib.sha256()
    for pkg in (refsim, refsim.formats):
        assert pkg.__file__ is not None  # regular packages, not namespace ones
        root = Path(pkg.__file__).parent
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in ABOVE_RUNS or (rel.startswith("studies/")
                                     and rel.removeprefix("studies/") not in RUN_CODE_STUDIES):
                continue
            h.update(f"{pkg.__name__}/{rel}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def checksum(key: str, config: Any, result: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of an entry's key, config and result."""
    return hashlib.sha256(_canonical({"key": key, "config": config, "result": result})
                          .encode()).hexdigest()


class Cache:
    """A directory of finished runs; None as the directory disables caching."""

    def __init__(self, directory: str | Path | None) -> None:
        self.dir = None if directory is None else Path(directory)
        if self.dir is not None:
            if self.dir.exists() and not self.dir.is_dir():
                raise ValueError(f"the run cache {str(self.dir)!r} is a file, not a directory")
            self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached result of run `key`, or None (module docstring)."""
        if self.dir is None:
            return None
        path = self._path(key)
        if not path.exists():
            return None
        if path.is_dir():
            _bad(path, "is a directory, not a cache entry (remove it to cache this run "
                 "again)")
            return None
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            _bad(path, f"cannot be read as JSON ({exc})")
            return None
        if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
            shape = (f"an object with keys {sorted(entry)}" if isinstance(entry, dict)
                     else f"a JSON {type(entry).__name__}")
            _bad(path, f"is {shape}, not an entry {{{', '.join(sorted(_ENTRY_KEYS))}}}")
            return None
        result = entry["result"]
        if not isinstance(result, dict):
            _bad(path, f"holds a result that is not a JSON object: {result!r:.60}")
            return None
        if entry["key"] != key:
            _bad(path, f"holds the entry of another run (key {str(entry['key'])!r:.20})")
            return None
        if entry["sha256"] != checksum(key, entry["config"], result):
            _bad(path, "does not match its checksum (edited or damaged)")
            return None
        return result

    def put(self, key: str, config: dict[str, Any], result: dict[str, Any]) -> None:
        """Store run `key`'s config and result (a JSON-serializable dict) with its checksum."""
        if self.dir is None:
            return
        path = self._path(key)
        if path.is_dir():
            warnings.warn(f"study cache: {path} is a directory, so this run is not cached",
                          CacheWarning, stacklevel=2)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # The checksum covers what a reader will load (JSON turns tuples into lists).
        config, result = json.loads(json.dumps(config)), json.loads(json.dumps(result))
        entry = {"key": key, "config": config, "result": result,
                 "sha256": checksum(key, config, result)}
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(entry, sort_keys=True))
        os.replace(tmp, path)


def _bad(path: Path, problem: str) -> None:
    warnings.warn(f"study cache: {path} {problem}; the run is recomputed", CacheWarning,
                  stacklevel=3)
