"""The whole validation suite: every adapter on every input suite, one summary table.

Usage rules: `run_suite()` returns the rows and `main()` (`python -m refsim.validation`, and
the entry the `refsim validate` command calls) prints the table, the details of every failure
and of one example per known difference, and ends with the line `N passed, M failed`. A row
passes when it has no mismatch outside its peer's documented differences; the exit status is 1
if any row fails.
Large suites are sampled to `max_size` inputs (deterministically) unless max_size is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refsim.validation.adapters import Adapter, adapters
from refsim.validation.report import Report, compare
from refsim.validation.suites import SUITES, suite

__all__ = ["Row", "format_table", "run_adapter", "run_suite"]


@dataclass
class Row:
    """One adapter on one input dtype, all suites together (`reports` per suite)."""

    adapter: Adapter
    dtype: str
    reports: list[Report]

    @property
    def total(self) -> int:
        return sum(r.total for r in self.reports)

    @property
    def mismatched(self) -> int:
        return sum(r.mismatched for r in self.reports)

    @property
    def known(self) -> int:
        return sum(r.known for r in self.reports)

    @property
    def ok(self) -> bool:
        return self.mismatched == 0

    @property
    def status(self) -> str:
        return "FAIL" if self.mismatched else ("known" if self.known else "pass")


def _sample(x: np.ndarray, max_size: int, seed: int) -> np.ndarray:
    if max_size <= 0 or x.size <= max_size:
        return x
    keep = np.random.default_rng(seed).choice(x.size, max_size, replace=False)
    return x[np.sort(keep)]


def run_adapter(adapter: Adapter, dtype: str, suites: tuple[str, ...] = tuple(SUITES),
                max_size: int = 1 << 13, seed: int = 0) -> Row | None:
    """The adapter on every suite in `dtype`; None when the format does not fit the dtype."""
    reports = []
    for name in suites:
        x = _sample(suite(name, adapter.suite_format, dtype, seed=seed,
                          size=max_size or 1 << 14), max_size, seed)
        try:
            expected = adapter.reference(x)
        except ValueError:  # the format does not fit the dtype: not a check of this row
            return None
        got = adapter.run(x)
        known = None if adapter.known is None else adapter.known(x, got, expected)
        reports.append(compare(got, expected, x, name=f"{adapter.name} {dtype} {name}",
                               fmt=adapter.suite_format, known=known,
                               known_reason=adapter.known_reason))
    return Row(adapter, dtype, reports)


def run_suite(peers: tuple[str, ...] | None = None, dtypes: tuple[str, ...] = ("float32",
              "float64"), suites: tuple[str, ...] = tuple(SUITES), max_size: int = 1 << 13,
              progress: bool = False) -> tuple[list[Row], dict[str, str]]:
    """Every adapter of the installed peers: (rows, {skipped peer: reason})."""
    if isinstance(max_size, bool) or not isinstance(max_size, int | np.integer) or max_size < 0:
        raise ValueError(f"max_size must be a non-negative integer (0: every input); got "
                         f"{max_size!r}")
    found, skipped = adapters(peers)
    rows = []
    for adapter in found:
        for dtype in dtypes:
            if dtype not in adapter.dtypes:
                continue
            row = run_adapter(adapter, dtype, suites, max_size)
            if row is not None:
                rows.append(row)
                if progress:
                    print(f"  {row.status:5} {adapter.name} {dtype}", flush=True)
    return rows, skipped


def format_table(rows: list[Row], skipped: dict[str, str]) -> str:
    """The summary table, the failures' details, one example per known difference, and the
    final `N passed, M failed` line."""
    lines = [f"{'peer':20} {'format/rounding':22} {'input':8} {'compared':>9} {'unexpected':>10} "
             f"{'known':>7}  status"]
    for row in rows:
        a = row.adapter
        lines.append(f"{a.peer:20} {a.fmt + '/' + a.rounding:22} {row.dtype:8} {row.total:9d} "
                     f"{row.mismatched:10d} {row.known:7d}  {row.status}")
    for peer, reason in skipped.items():
        lines.append(f"{peer:20} skipped: {reason}")
    failures = [r for row in rows for r in row.reports if not r.ok]
    if failures:
        lines += ["", "Failures:"] + [str(r) for r in failures]
    shown: set[tuple[str, str]] = set()
    examples = []
    for row in rows:
        key = (row.adapter.peer, row.adapter.known_reason)
        for report in row.reports:
            if report.known and report.ok and key not in shown:
                shown.add(key)
                examples.append(str(report))
    if examples:
        lines += ["", "Known differences (documented in docs/validation.md), one example each:"]
        lines += examples
    passed = sum(row.ok for row in rows)
    lines += ["", f"{passed} passed, {len(rows) - passed} failed"]
    return "\n".join(lines)
