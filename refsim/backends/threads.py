"""Small kernels run on one thread: below a size, waking the thread pool costs more than the work.

A parallel launch costs tens of microseconds on an idle machine and, measured on a loaded 2-core
VM, about 16 ms (a 32x64 quantize: 20 us on one thread, 16 ms on two), because each worker waits
for a time slice. Results never depend on the thread count (docs/rng.md), so this changes time
only. Estimates are in nanoseconds of one-thread work.

run_jobs runs a nogil kernel over ranges of jobs on Python threads, for kernels that are not
compiled parallel (refsim.backends.cpu_multiterm: Numba's parfor lowering was most of its cold
compile time).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable, Iterator

import numba

SERIAL_BELOW_NS = 200_000  # one thread below 0.2 ms of estimated work
NS_PER_QUANTIZE = 1  # per element, fast path
NS_PER_FAST_MAC = 1  # per multiply-add, refsim.backends.cpu_gemm
NS_PER_TILE_MAC = 0.05  # per multiply-add, refsim.backends.cpu_tile (padded tiles)
NS_PER_EXACT_MAC = 60  # per multiply-add, refsim.kernels.accum_core


@contextlib.contextmanager
def threads_for(work_ns: float) -> Iterator[None]:
    """Run the enclosed kernel calls on one thread when work_ns is small; else leave the
    caller's thread count alone."""
    if work_ns >= SERIAL_BELOW_NS or numba.get_num_threads() == 1:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


_POOLS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}  # by worker count


def run_jobs(work: Callable[[int, int], None], n_jobs: int, n_threads: int) -> None:
    """work(j0, j1) over jobs 0 .. n_jobs-1, split into n_threads contiguous ranges run at once:
    one on the calling thread, the others on a shared pool. For kernels compiled nogil and not
    parallel (Numba's parfor lowering is most of a cold kernel's compile time): the split never
    changes results, only time. An exception of any range is raised here."""
    n_threads = max(1, min(n_threads, n_jobs))
    if n_threads == 1:
        work(0, n_jobs)
        return
    bounds = [n_jobs * t // n_threads for t in range(n_threads + 1)]
    pool = _POOLS.get(n_threads - 1)
    if pool is None:
        pool = _POOLS[n_threads - 1] = concurrent.futures.ThreadPoolExecutor(
            n_threads - 1, thread_name_prefix="refsim")
    futures = [pool.submit(work, bounds[t], bounds[t + 1]) for t in range(1, n_threads)]
    try:
        work(bounds[0], bounds[1])
    finally:
        for f in futures:
            f.result()
