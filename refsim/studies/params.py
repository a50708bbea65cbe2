"""Study parameters: quick, standard and full defaults, overrides, and checks that name what is
wrong.

Usage rules:
  - A study declares QUICK and FULL (dicts with the same keys), optionally STANDARD (the grid
    sized to decide in under an hour on 2 cores: sensitivity and allocate), and a
    `check(params)` that raises ValueError naming the parameter and what is allowed.
  - MODES: "quick", "standard", "full". `defaults(module, mode)` returns (the mode's dict, the
    name of the grid it is): a study without STANDARD runs its QUICK grid in standard mode,
    and says so ("quick").
  - `resolve(study, quick, full, overrides, quick_mode)` starts from QUICK or FULL (or
    `apply_overrides(study, base, overrides)` from any dict), applies the overrides (unknown
    keys and values of the wrong type are errors) and returns a new dict.
  - `parse_assignments(["key=value", ...])`: the CLI's --set; a value is read as JSON when it
    parses (numbers, lists, true/false), else taken as a string.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MODES", "apply_overrides", "defaults", "need", "need_format", "parse_assignments",
           "resolve"]

MODES = ("quick", "standard", "full")


def defaults(module: Any, mode: str) -> tuple[dict[str, Any], str]:
    """(parameters, grid name) of a study module in `mode` (module docstring)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    table = {"quick": module.QUICK, "standard": getattr(module, "STANDARD", None),
             "full": module.FULL}
    if table[mode] is None:
        return dict(module.QUICK), "quick"
    return dict(table[mode]), mode


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def resolve(study: str, quick: Mapping[str, Any], full: Mapping[str, Any],
            overrides: Mapping[str, Any] | None, quick_mode: bool) -> dict[str, Any]:
    """The parameters of one study run (module docstring)."""
    return apply_overrides(study, quick if quick_mode else full, overrides)


def apply_overrides(study: str, base: Mapping[str, Any], overrides: Mapping[str, Any] | None
                    ) -> dict[str, Any]:
    """base with the overrides applied (module docstring)."""
    params = dict(base)
    for key, value in (overrides or {}).items():
        if key not in params:
            raise ValueError(f"study {study}: unknown parameter {key!r} (allowed: "
                             f"{', '.join(sorted(params))})")
        if _kind(value) != _kind(params[key]):
            raise ValueError(f"study {study}: parameter {key!r} must be a {_kind(params[key])} "
                             f"(like {params[key]!r}); got {value!r}")
        if isinstance(params[key], int) and not isinstance(params[key], bool) \
                and isinstance(value, float):
            raise ValueError(f"study {study}: parameter {key!r} must be an int; got {value!r}")
        params[key] = list(value) if isinstance(value, tuple) else value
    return params


def need(ok: bool, study: str, key: str, allowed: str, value: Any) -> None:
    """Raise ValueError("study S: parameter K must be ALLOWED; got VALUE") unless ok."""
    if not ok:
        raise ValueError(f"study {study}: parameter {key!r} must be {allowed}; got {value!r}")


def parse_assignments(items: Sequence[str] | None) -> dict[str, Any]:
    """{"key": value} from ["key=value", ...] (module docstring)."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE (e.g. --set seeds=3); got {item!r}")
        try:
            out[key.strip()] = json.loads(text)
        except ValueError:
            out[key.strip()] = text
    return out


def need_format(study: str, key: str, name: Any) -> None:
    """Raise ValueError naming `key` unless `name` is a format name refsim knows."""
    from refsim.formats import get_format

    try:
        get_format(name)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"study {study}: parameter {key!r}: {exc}") from None

