"""The grid executor: cache keys, resume after an interruption, local processes and Dask give
the results of a serial run."""

from __future__ import annotations

import io
import os

import pytest

from refsim.studies.cache import Cache, CacheWarning, code_hash, run_key
from refsim.studies.executor import GridInterrupted, run_grid

FAIL_AT: list[int] = []


def square(config: dict) -> dict:
    if config["i"] in FAIL_AT:
        raise KeyboardInterrupt(f"interrupted at run {config['i']}")
    return {"value": config["i"] ** 2}


CONFIGS = [{"i": i, "tag": "x"} for i in range(6)]


def test_key_covers_the_whole_config():
    base = run_key("s", 1, {"a": 1, "b": [1, 2]})
    assert base == run_key("s", 1, {"b": [1, 2], "a": 1})  # key order does not matter
    assert base != run_key("s", 1, {"a": 1, "b": [2, 1]})
    assert base != run_key("s", 2, {"a": 1, "b": [1, 2]})  # code version
    assert base != run_key("t", 1, {"a": 1, "b": [1, 2]})
    assert base != run_key("s", 1, {"a": 1, "b": [1, 2]}, code_hash())  # the run code's hash
    assert len(code_hash()) == 64 and code_hash() == code_hash()


def test_resume_after_interruption(tmp_path):
    cache = Cache(tmp_path / "cache")
    FAIL_AT[:] = [4]
    try:
        with pytest.raises(KeyboardInterrupt):
            run_grid(square, CONFIGS, study="t", version=1, cache=cache)
    finally:
        FAIL_AT.clear()
    stream = io.StringIO()
    results, stats = run_grid(square, CONFIGS, study="t", version=1, cache=cache,
                              progress=stream)
    assert results == [{"value": i * i} for i in range(6)]
    assert (stats["cached"], stats["computed"]) == (4, 2)  # runs 0-3 finished before the stop
    assert "6/6 runs (4 cached)" in stream.getvalue()
    # A damaged entry is recomputed, not trusted (test_study_cache: every kind of damage).
    victim = cache._path(run_key("t", 1, CONFIGS[0], code_hash()))
    victim.write_text("{not json")
    with pytest.warns(CacheWarning, match=str(victim)):
        _, stats = run_grid(square, CONFIGS, study="t", version=1, cache=cache)
    assert (stats["cached"], stats["computed"]) == (5, 1)


def test_interruption_says_how_many_runs_are_cached(tmp_path):
    cache = Cache(tmp_path / "cache")
    FAIL_AT[:] = [3]
    try:
        with pytest.raises(GridInterrupted) as stop:
            run_grid(square, CONFIGS, study="t", version=1, cache=cache)
        assert str(stop.value) == (f"3 of the 6 runs of study 't' are cached in {cache.dir}; "
                                   "run the same command again to resume")
        assert isinstance(stop.value, KeyboardInterrupt)
        with pytest.raises(GridInterrupted, match="caching is off, so a rerun computes the 6 "
                           "runs of study 't' again"):
            run_grid(square, CONFIGS, study="t", version=1, cache=Cache(None))
    finally:
        FAIL_AT.clear()


def square_where(config: dict) -> dict:
    return {**square(config), "pid": os.getpid()}


def test_processes_match_serial(tmp_path):
    serial, _ = run_grid(square, CONFIGS, study="t", version=1, cache=Cache(None))
    # warm_key: the first run of each key (runs 0 and 2) runs in this process first.
    parallel, stats = run_grid(square_where, CONFIGS, study="t", version=1,
                               cache=Cache(tmp_path / "c"), workers=2,
                               warm_key=lambda c: c["i"] < 2)
    assert [{"value": r["value"]} for r in parallel] == serial and stats["computed"] == 6
    assert [r["pid"] == os.getpid() for r in parallel] == [True, False, True] + [False] * 3


def test_bad_executor_settings():
    with pytest.raises(ValueError, match="executor must be one of process, dask"):
        run_grid(square, CONFIGS, study="t", version=1, cache=Cache(None), executor="mpi")
    with pytest.raises(ValueError, match="workers must be a positive int"):
        run_grid(square, CONFIGS, study="t", version=1, cache=Cache(None), workers=0)
    with pytest.raises(ValueError, match="needs a scheduler address"):
        run_grid(square, CONFIGS, study="t", version=1, cache=Cache(None), executor="dask")


def test_dask_local_cluster(tmp_path):
    distributed = pytest.importorskip(
        "distributed", reason="dask[distributed] is an optional extra (pip install "
        "'refsim[dask]'); without it the Dask executor cannot be exercised")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        results, stats = run_grid(square, CONFIGS, study="t", version=1,
                                  cache=Cache(tmp_path / "c"), executor="dask",
                                  scheduler=cluster.scheduler_address)
    assert results == [{"value": i * i} for i in range(6)] and stats["computed"] == 6


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_tqdm_bar_on_a_terminal_and_one_line_elsewhere():
    terminal, log = _Terminal(), io.StringIO()
    run_grid(square, CONFIGS, study="t", version=1, cache=Cache(None), progress=terminal)
    run_grid(square, CONFIGS, study="t", version=1, cache=Cache(None), progress=log)
    assert "\r" in terminal.getvalue() and "6/6" in terminal.getvalue()  # redrawn in place
    assert "run/s" in terminal.getvalue() or "s/run" in terminal.getvalue()  # tqdm's rate
    assert log.getvalue().count("\n") == 1 and "6/6 runs (0 cached)" in log.getvalue()
