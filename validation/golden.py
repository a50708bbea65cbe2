"""Golden vectors: refsim's outputs for a format and rounding, written for third parties.

Usage rules: `write_golden(out_dir, fmt, rounding, ...)` writes
  - golden.npz: `inputs` and `outputs` (arrays of the input dtype);
  - golden.csv: one line per element: index, input bits and output bits in hex;
  - manifest.json: the request (format spec card, rounding, overflow, sr_bits, seed, dtype),
    the refsim version, the suites used, the count and the SHA-256 of the two data files.
`verify_golden(dir, candidate)` runs candidate(inputs) -> outputs (a NumPy array of the inputs'
dtype) and compares them with the stored outputs bit for bit (refsim.validation.report.compare);
a candidate that raises gives CandidateError.
A candidate is named on the command line as "module:function"; for stochastic rounding it is
called as function(inputs, seed=seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from refsim import quantize
from refsim.formats import FloatFormat, Format, get_format
from refsim.validation.bits import UNSIGNED
from refsim.validation.report import Report, compare
from refsim.validation.suites import SUITES, suite

__all__ = ["CandidateError", "load_candidate", "spec_card", "verify_golden", "write_golden"]


class CandidateError(Exception):
    """verify_golden: the candidate raised (the message names it, the exception and its
    message; the candidate's exception is the __cause__)."""


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("refsim")
    except Exception:  # not installed as a distribution (a source checkout)
        return "unknown"


def spec_card(fmt: Format) -> dict[str, Any]:
    """The format's fields and derived constants (hex floats), as in docs/formats.md."""
    card: dict[str, Any] = {"name": fmt.name, "kind": "float" if isinstance(fmt, FloatFormat)
                            else "fixed", "bits": fmt.bits}
    card.update(dataclasses.asdict(fmt))
    card["max"] = float(fmt.max).hex()
    if isinstance(fmt, FloatFormat):
        card.update(emin=fmt.emin, emax=fmt.emax, min_normal=float(fmt.min_normal).hex(),
                    min_subnormal=float(fmt.min_subnormal).hex(), has_inf=fmt.has_inf,
                    has_nan=fmt.has_nan)
    return card


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_golden(out_dir: str | Path, fmt: Format | str, rounding: str, *,
                 overflow: str = "default", sr_bits: int | None = None, seed: int = 0,
                 dtype: str = "float64", suites: tuple[str, ...] = tuple(SUITES),
                 size: int = 1 << 14) -> Path:
    """Write golden vectors into out_dir (created if needed); returns the manifest's path.
    Every argument is checked, and the outputs computed, before out_dir is created or written:
    a bad request leaves no folder behind."""
    fmt_obj = get_format(fmt)
    out = Path(out_dir)
    if not suites:
        raise ValueError("suites must name at least one suite")
    inputs = np.concatenate([suite(name, fmt_obj, dtype, seed=seed, size=size) for name in suites])
    outputs = np.asarray(quantize(inputs, fmt_obj, rounding, overflow=overflow, sr_bits=sr_bits,
                                  seed=seed))
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "golden.npz", inputs=inputs, outputs=outputs)
    utype = UNSIGNED[inputs.dtype]
    digits = inputs.dtype.itemsize * 2
    with open(out / "golden.csv", "w") as f:
        f.write("index,input,output\n")
        for i, (x, y) in enumerate(zip(inputs.view(utype), outputs.view(utype), strict=True)):
            f.write(f"{i},0x{int(x):0{digits}x},0x{int(y):0{digits}x}\n")
    manifest = {
        "refsim_version": _version(), "format": spec_card(fmt_obj), "rounding": rounding,
        "overflow": overflow, "sr_bits": sr_bits, "seed": seed, "dtype": str(inputs.dtype),
        "suites": list(suites), "count": int(inputs.size),
        "sha256": {"golden.npz": _sha256(out / "golden.npz"),
                   "golden.csv": _sha256(out / "golden.csv")},
    }
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def load_candidate(spec: str) -> Callable[..., Any]:
    """The function named "module:function" (dots allowed in both parts)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"candidate must be 'module:function'; got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"candidate {spec!r}: cannot import module {module_name!r} ({exc})"
                         ) from None
    where = module_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"candidate {spec!r}: {where!r} has no attribute {part!r}")
        obj = getattr(obj, part)
        where = f"{where}.{part}"
    if not callable(obj):
        raise TypeError(f"candidate {spec} is not callable")
    return obj


def _manifest(path: Path) -> dict[str, Any]:
    """manifest.json of a golden directory, checked for what verify_golden reads."""
    file = path / "manifest.json"
    if not path.is_dir():
        raise ValueError(f"golden directory {str(path)!r} does not exist (or is not a directory)")
    if not file.is_file():
        raise ValueError(f"{file} does not exist (is {str(path)!r} a directory written by "
                         "`golden`?)")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file} cannot be read as JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{file} must hold a JSON object; got a {type(manifest).__name__}")
    wanted = {"sha256": dict, "rounding": str, "format": dict, "seed": int}
    for key, kind in wanted.items():
        if not isinstance(manifest.get(key), kind):
            got = "nothing" if key not in manifest else type(manifest[key]).__name__
            raise ValueError(f"{file} must give {key!r} ({kind.__name__}); it gives {got} "
                             "(was it written by `golden`?)")
    if "golden.npz" not in manifest["sha256"] or not isinstance(manifest["format"].get("name"),
                                                                 str):
        raise ValueError(f"{file} must give the SHA-256 of golden.npz and the format's name "
                         "(was it written by `golden`?)")
    return manifest


def verify_golden(golden_dir: str | Path, candidate: Callable[..., Any] | str) -> Report:
    """Run the candidate on the stored inputs and compare with the stored outputs."""
    path = Path(golden_dir)
    manifest = _manifest(path)
    for name, digest in manifest["sha256"].items():
        if _sha256(path / name) != digest:
            raise ValueError(f"{path / name} does not match the SHA-256 in its manifest")
    func = load_candidate(candidate) if isinstance(candidate, str) else candidate
    with np.load(path / "golden.npz") as data:
        missing = {"inputs", "outputs"} - set(data.files)
        if missing:
            raise ValueError(f"{path / 'golden.npz'} lacks the array(s) {', '.join(missing)}")
        inputs = data["inputs"]
        outputs = data["outputs"]
    name = candidate if isinstance(candidate, str) else getattr(func, "__qualname__", repr(func))
    try:
        if manifest["rounding"] == "sr":
            got = func(inputs.copy(), seed=manifest["seed"])
        else:
            got = func(inputs.copy())
    except Exception as exc:  # whatever the candidate raises is its failure, not the caller's
        raise CandidateError(f"the candidate {name} raised {type(exc).__name__}: {exc}") from exc
    got = np.asarray(got)
    if got.dtype != outputs.dtype or got.shape != outputs.shape:
        raise ValueError(f"the candidate returned {got.dtype}{got.shape}; the golden outputs are "
                         f"{outputs.dtype}{outputs.shape}")
    label = f"{manifest['format']['name']}/{manifest['rounding']} ({path})"
    return compare(got, outputs, inputs, name=label, fmt=manifest["format"]["name"])
