"""Run a grid of independent runs: serially, in local processes, or on a Dask cluster.

Usage rules:
  - `run_grid(fn, configs, ...)` calls fn(config) for every config not already in the cache
    and returns the results in the order of `configs`. fn must be a module-level function (it
    is pickled to the workers) that returns a JSON-serializable dict; results are cached as
    each run finishes, so an interrupted grid resumes with the runs it lacks.
  - executor "process" (the default): concurrent.futures.ProcessPoolExecutor with the spawn
    start method (no fork of a process that may hold Numba's threads) and `workers`
    processes, each limited to one Numba thread: the parallelism is across runs. workers=1
    runs serially in this process. "dask": a dask.distributed Client connected to `scheduler`
    (an address such as tcp://127.0.0.1:8786); dask is imported only then. Each task runs on
    one Numba thread; start the workers with one thread each (`dask worker ADDR --nthreads 1`)
    so that no two runs share a process's Numba thread pool, and with refsim installed (runs
    are pickled by reference).
  - `warm_key` (optional): before a pool starts, the first pending run of each distinct
    warm_key(config) runs in this process, so Numba compiles (and caches on disk) each kernel
    once instead of once per worker; its result is kept like any other.
  - A run is a pure function of its config, so results never depend on the executor, the
    number of workers or the order of completion.
  - Progress: a tqdm bar on `progress` when it is a terminal; on another stream one line with
    the counts at the end; none when `progress` is None (`refsim study --quiet`).
  - Ctrl-C (KeyboardInterrupt) raises GridInterrupted, a KeyboardInterrupt that says how many
    of the grid's runs are cached and where (`refsim study` prints it and exits with 130).
    Local worker processes ignore SIGINT and are terminated by this process, so an interrupt
    prints no traceback from them and does not wait for their runs to finish.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from tqdm import tqdm

from refsim.studies.cache import Cache, code_hash, run_key

__all__ = ["EXECUTORS", "GridInterrupted", "GridStats", "run_grid"]

EXECUTORS = ("process", "dask")


class GridStats(dict):
    """{"runs", "cached", "computed", "seconds"} of one grid."""


class GridInterrupted(KeyboardInterrupt):
    """Ctrl-C during a grid: `cached` of its `runs` runs are in the cache `cache_dir` (None:
    caching is off), so the same call resumes with the others."""

    def __init__(self, study: str, cached: int, runs: int, cache_dir: str | None) -> None:
        self.study, self.cached, self.runs, self.cache_dir = study, cached, runs, cache_dir
        if cache_dir is None:
            text = (f"caching is off, so a rerun computes the {runs} runs of study {study!r} "
                    "again")
        else:
            text = (f"{cached} of the {runs} runs of study {study!r} are cached in {cache_dir}; "
                    "run the same command again to resume")
        super().__init__(text)


class _Progress:
    """tqdm's bar on a terminal (one line, redrawn in place); on any other stream a single line
    with the counts when the grid is done (logs and captured output stay short)."""

    def __init__(self, stream: TextIO | None, total: int, label: str) -> None:
        self.stream, self.total, self.label = stream, total, label
        self.done = self.cached = 0
        self.start = time.perf_counter()
        tty = stream is not None and hasattr(stream, "isatty") and stream.isatty()
        self.bar = tqdm(total=total, desc=label, unit="run", file=stream, dynamic_ncols=True) \
            if tty and total else None

    def step(self, cached: bool = False) -> None:
        self.done += 1
        self.cached += cached
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.cached} cached", refresh=False)
            self.bar.update(1)
            if self.done == self.total:
                self.bar.close()
        elif self.stream is not None and self.done == self.total:
            self.stream.write(f"{self.label}: {self.done}/{self.total} runs ({self.cached} cached)"
                              f" {time.perf_counter() - self.start:.0f} s\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _one_thread() -> None:
    import numba

    numba.set_num_threads(1)


def _worker_init() -> None:
    # Ctrl-C reaches every process of the terminal's group: the parent handles it (it
    # terminates the workers), so a worker must not die of it with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _one_thread()


def _check(executor: str, workers: int, scheduler: str | None) -> None:
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}; got {executor!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive int; got {workers!r}")
    if executor == "dask" and not scheduler:
        raise ValueError("executor 'dask' needs a scheduler address (--scheduler ADDR, e.g. "
                         "tcp://127.0.0.1:8786)")


def run_grid(fn: Callable[[dict[str, Any]], dict[str, Any]], configs: Sequence[dict[str, Any]],
             *, study: str, version: int, cache: Cache, executor: str = "process",
             workers: int = 1, scheduler: str | None = None,
             progress: TextIO | None = None,
             warm_key: Callable[[dict[str, Any]], Any] | None = None,
             ) -> tuple[list[dict[str, Any]], GridStats]:
    """Results of fn over configs, in order, and the grid's statistics (module docstring)."""
    _check(executor, workers, scheduler)
    start = time.perf_counter()
    code = code_hash()
    keys = [run_key(study, version, c, code) for c in configs]
    results: list[dict[str, Any] | None] = [cache.get(k) for k in keys]
    todo = [i for i, r in enumerate(results) if r is None]
    pending = list(todo)
    bar = _Progress(progress, len(configs), study)
    for _ in range(len(configs) - len(pending)):
        bar.step(cached=True)

    def finish(i: int, result: dict[str, Any]) -> None:
        results[i] = result
        cache.put(keys[i], dict(configs[i]), result)
        bar.step()

    try:
        _compute(fn, configs, todo, results, finish, executor, workers, scheduler, warm_key)
    except KeyboardInterrupt:
        bar.close()
        cached = sum(r is not None for r in results) if cache.dir is not None else 0
        raise GridInterrupted(study, cached, len(configs),
                              None if cache.dir is None else str(cache.dir)) from None
    stats = GridStats(runs=len(configs), cached=len(configs) - len(pending), computed=len(pending),
                      seconds=time.perf_counter() - start)
    return [r for r in results if r is not None], stats


def _compute(fn, configs, todo, results, finish, executor, workers, scheduler,
             warm_key) -> None:
    if todo and warm_key is not None and executor == "process" and workers > 1:
        firsts = list({warm_key(configs[i]): i for i in reversed(todo)}.values())
        for i in sorted(firsts):
            finish(i, fn(dict(configs[i])))
        todo = [i for i in todo if results[i] is None]
    if todo and executor == "dask":
        _run_dask(fn, configs, todo, scheduler, finish)
    elif todo and workers == 1:
        for i in todo:
            finish(i, fn(dict(configs[i])))
    elif todo:
        _run_processes(fn, configs, todo, workers, finish)


def _run_processes(fn, configs, todo, workers, finish) -> None:
    ctx = multiprocessing.get_context("spawn")
    pool = cf.ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                                  initializer=_worker_init)
    try:
        futures = {pool.submit(fn, dict(configs[i])): i for i in todo}
        for fut in cf.as_completed(futures):
            finish(futures[fut], fut.result())
    except BaseException:
        # Stop at once: the workers ignore SIGINT, and shutdown would wait for their runs.
        # (ProcessPoolExecutor has no public way to stop its workers before Python 3.14.)
        processes = getattr(pool, "_processes", None) or {}
        for proc in list(processes.values()):
            proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _dask_task(fn: Callable[[dict[str, Any]], dict[str, Any]],
               config: dict[str, Any]) -> dict[str, Any]:
    _one_thread()  # numba.set_num_threads applies to the calling thread only
    return fn(config)


def _run_dask(fn, configs, todo, scheduler, finish) -> None:
    try:
        from dask.distributed import Client, as_completed
    except ImportError as exc:
        raise ValueError("executor 'dask' needs dask[distributed] installed (pip install "
                         f"'refsim[dask]'): {exc}") from None
    with Client(scheduler) as client:
        futures = {}
        for i in todo:
            # pure=False: the cache, not Dask, decides what is recomputed.
            futures[client.submit(_dask_task, fn, dict(configs[i]), pure=False)] = i
        for fut in as_completed(list(futures)):
            finish(futures[fut], fut.result())
