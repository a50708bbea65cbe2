"""Shared timing helper of the benchmarks: medians after one warm-up call."""

from __future__ import annotations

import time

import numpy as np


def median_seconds(fn, repeat: int) -> float:
    """Median wall time of `repeat` calls of fn(), after one warm-up call (JIT, page faults)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))
