"""compare(): a candidate's output bits against the reference's, as a bit-level report.

Usage rules: outputs are float16/float32/float64 arrays of one dtype and shape (a quantizer's
results in its input's dtype); NaN equals NaN whatever its payload, -0 and +0 differ. A mask of
*known* differences (a peer's documented behaviour) moves mismatches there out of the failures
into their own count, with the reason. The ULP histogram counts format steps when `fmt` is given
(the rank of each value in the format's sorted grid), else steps of the output dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refsim.formats import Format, get_format
from refsim.validation.bits import UNSIGNED, describe, same_bits

__all__ = ["Mismatch", "Report", "compare", "ulp_distance"]

# Histogram buckets: exact distances 1, 2, then powers of two; "zero sign" is a -0/+0 swap
# (distance 0 by value) and "nan" a NaN on one side only.
_BUCKETS = ("1", "2", "3-4", "5-8", "9-16", "17-256", ">256", "zero sign", "nan")


@dataclass(frozen=True)
class Mismatch:
    """One differing element: flat index and the three values described in hex and fields."""

    index: int
    input: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return (f"[{self.index}] input    {self.input}\n      expected {self.expected}\n"
                f"      actual   {self.actual}")


@dataclass
class Report:
    """The result of compare(): counts, the first mismatches and the ULP histogram.

    total: elements compared; mismatched: elements whose bits differ outside the known mask;
    known: elements that differ inside it (`known_reason` says why); first: up to `limit`
    unexpected mismatches, then up to `limit` known ones in `first_known`.
    """

    name: str
    total: int
    mismatched: int
    known: int
    known_reason: str
    first: list[Mismatch] = field(default_factory=list)
    first_known: list[Mismatch] = field(default_factory=list)
    histogram: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No mismatch outside the known differences."""
        return self.mismatched == 0

    @property
    def status(self) -> str:
        if self.mismatched:
            return "FAIL"
        return "known" if self.known else "pass"

    def __str__(self) -> str:
        lines = [f"{self.name}: {self.status}: {self.total} compared, {self.mismatched} "
                 f"unexpected mismatches, {self.known} known differences"
                 + (f" ({self.known_reason})" if self.known else "")]
        if self.histogram:
            lines.append("  ULP distances: " + ", ".join(f"{key}: {count}" for key, count
                                                         in self.histogram.items() if count))
        for title, items in (("first mismatches", self.first),
                             ("first known differences", self.first_known)):
            if items:
                lines.append(f"  {title}:")
                lines.extend("    " + str(item).replace("\n", "\n    ") for item in items)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "total": self.total,
                "mismatched": self.mismatched, "known": self.known,
                "known_reason": self.known_reason, "histogram": dict(self.histogram),
                "first": [vars(m) for m in self.first],
                "first_known": [vars(m) for m in self.first_known]}


def _ordered(values: np.ndarray) -> np.ndarray:
    """int64 keys in the order of the values: +-magnitude bits (-0 and +0 both give 0)."""
    bits = values.view(UNSIGNED[values.dtype]).astype(np.uint64)
    width = values.dtype.itemsize * 8
    sign = bits >> np.uint64(width - 1)
    magnitude = (bits & np.uint64((1 << (width - 1)) - 1)).astype(np.int64)
    return np.where(sign == 1, -magnitude, magnitude)


def ulp_distance(expected: np.ndarray, actual: np.ndarray, fmt: Format | str | None = None
                 ) -> np.ndarray:
    """|rank(expected) - rank(actual)| per element, in steps of `fmt` (values of the format,
    at most 16 bits) or of the arrays' dtype; -1 where exactly one side is NaN."""
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    nan_one = np.isnan(expected) != np.isnan(actual)
    if fmt is not None and get_format(fmt).bits <= 16:
        grid = get_format(fmt).all_values()
        grid = np.unique(grid[~np.isnan(grid)].astype(np.float64))
        with np.errstate(invalid="ignore"):
            rank_e = np.searchsorted(grid, expected.astype(np.float64))
            rank_a = np.searchsorted(grid, actual.astype(np.float64))
        distance = np.abs(rank_e - rank_a).astype(np.int64)
    else:
        distance = np.abs(_ordered(expected) - _ordered(actual))
    both_nan = np.isnan(expected) & np.isnan(actual)
    distance = np.where(both_nan, 0, distance)
    return np.where(nan_one, -1, distance)


def _histogram(expected: np.ndarray, actual: np.ndarray, fmt: Format | str | None
               ) -> dict[str, int]:
    distance = ulp_distance(expected, actual, fmt)
    counts = dict.fromkeys(_BUCKETS, 0)
    counts["nan"] = int(np.count_nonzero(distance == -1))
    counts["zero sign"] = int(np.count_nonzero(distance == 0))
    edges = ((1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 256))
    for key, (low, high) in zip(_BUCKETS, edges, strict=False):
        counts[key] = int(np.count_nonzero((distance >= low) & (distance <= high)))
    counts[">256"] = int(np.count_nonzero(distance > 256))
    return counts


def _mismatches(indices: np.ndarray, x: np.ndarray | None, e: np.ndarray, a: np.ndarray,
                limit: int) -> list[Mismatch]:
    out = []
    for i in indices[:limit]:
        text_x = "-" if x is None else describe(x[i], x.dtype)
        out.append(Mismatch(int(i), text_x, describe(e[i], e.dtype), describe(a[i], a.dtype)))
    return out


def compare(candidate: Any, reference: Any, inputs: np.ndarray | None = None, *,
            name: str = "candidate", fmt: Format | str | None = None,
            known: np.ndarray | None = None, known_reason: str = "", limit: int = 5) -> Report:
    """Compare a candidate's output with the reference's, bit for bit.

    Args:
        candidate, reference: output arrays, or callables applied to `inputs`.
        inputs: the inputs (for the report; required when either side is a callable).
        name: a label for the report.
        fmt: the format the outputs are values of, for ULP distances in format steps.
        known: boolean mask of inputs where a difference is documented (not a failure).
        known_reason: the documented reason, shown with the known count.
        limit: how many mismatches of each kind the report keeps.
    """
    if callable(candidate) or callable(reference):
        if inputs is None:
            raise ValueError("inputs is required when candidate or reference is a callable")
    actual = np.asarray(candidate(inputs) if callable(candidate) else candidate)
    expected = np.asarray(reference(inputs) if callable(reference) else reference)
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        raise ValueError(f"candidate gives {actual.dtype}{actual.shape}, reference "
                         f"{expected.dtype}{expected.shape}: compare outputs of one dtype and "
                         "shape")
    a = actual.reshape(-1)
    e = expected.reshape(-1)
    x = None if inputs is None else np.asarray(inputs).reshape(-1)
    if x is not None and x.size != e.size:
        raise ValueError(f"inputs has {x.size} elements, the outputs {e.size}")
    differ = ~same_bits(a, e)
    known_mask = (np.zeros(e.shape, bool) if known is None
                  else np.asarray(known, bool).reshape(-1))
    unexpected = np.flatnonzero(differ & ~known_mask)
    expected_diff = np.flatnonzero(differ & known_mask)
    histogram = _histogram(e[differ], a[differ], fmt) if differ.any() else {}
    return Report(name=name, total=int(e.size), mismatched=int(unexpected.size),
                  known=int(expected_diff.size), known_reason=known_reason,
                  first=_mismatches(unexpected, x, e, a, limit),
                  first_known=_mismatches(expected_diff, x, e, a, limit), histogram=histogram)
