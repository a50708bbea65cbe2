"""Factor studies: accumulation, usage frequency, depth, layer sensitivity, bit-width allocation.

Usage rules:
  - `run_study(name, out_dir, quick=..., overrides=...)` resolves the study's parameters
    (refsim.studies.params; `mode` "quick", "standard" or "full" overrides `quick`), builds
    its grid of independent runs, runs them through refsim.studies.executor (cached by full
    config under `cache_dir`, default out_dir/cache), analyses the results and writes
    out_dir/results.json, results.csv, the plots and report.md. It returns the results
    document (refsim.studies.report.SCHEMA), with its provenance (refsim.studies.provenance:
    git commit, date, machine, wall time and `command`).
  - `run_all(out_dir, ...)` runs every study into out_dir/<name>/ (one shared cache,
    out_dir/cache) and writes the combined out_dir/report.md. Studies whose module has
    `claims(doc)` contribute claims (refsim.studies.claims): run_all corrects them (Holm per
    family), writes out_dir/claims.json (a list, refsim.studies.claims.CLAIM_KEYS and more) and,
    when the tolerance study ran, out_dir/tolerance.csv (one row per GEMM). STANDARD_SET is
    what `refsim study all --standard` (and `make study`) runs.
  - Each study module provides VERSION (bumped when its runs change meaning: it is part of
    the cache key), TITLE, QUICK, FULL, check(params), grid(params), run_one(config),
    analyze(params, configs, results) -> (rows, summary, findings), plot(summary, out_dir)
    and section(doc); optionally warm_key(config) (refsim.studies.executor).
  - Guide: docs/studies.md.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from refsim.studies.cache import Cache
from refsim.studies.executor import run_grid
from refsim.studies.params import apply_overrides, defaults
from refsim.studies.report import headline, write_report, write_study

__all__ = ["STANDARD_SET", "STUDIES", "collect_claims", "headline", "run_all", "run_study"]

STUDIES = ("accumulation", "frequency", "depth", "sensitivity", "tolerance", "causal",
           "allocate", "recipes", "accumulators")
STANDARD_SET = ("accumulation", "tolerance", "causal", "allocate", "accumulators")
"""The studies that decide the paper's claims (docs/studies.md): `study all --standard`."""


def _module(name: str):
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r} (allowed: {', '.join(STUDIES)}, or all)")
    return importlib.import_module(f"refsim.studies.{name}")


def run_study(name: str, out_dir: str | Path, *, quick: bool = False,
              overrides: Mapping[str, Any] | None = None, executor: str = "process",
              workers: int = 1, scheduler: str | None = None,
              cache_dir: str | Path | None = None, use_cache: bool = True, plots: bool = True,
              progress: TextIO | None = None, mode: str | None = None,
              command: str | None = None, outputs: str | Path | None = None
              ) -> dict[str, Any]:
    """Run one study and write its outputs (module docstring); returns its document."""
    from refsim.studies.provenance import collect

    mod = _module(name)
    mode = mode or ("quick" if quick else "full")
    base, grid_name = defaults(mod, mode)
    params = apply_overrides(name, base, overrides)
    mod.check(params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Cache((out / "cache" if cache_dir is None else Path(cache_dir)) if use_cache
                  else None)
    start = time.perf_counter()
    configs = mod.grid(params)
    results, stats = run_grid(mod.run_one, configs, study=name, version=mod.VERSION,
                              cache=cache, executor=executor, workers=workers,
                              scheduler=scheduler, progress=progress,
                              warm_key=getattr(mod, "warm_key", None))
    rows, summary, findings = mod.analyze(params, configs, results)
    plot_files = mod.plot(summary, out) if plots else []
    doc = {"study": name, "title": mod.TITLE, "quick": mode == "quick", "mode": mode,
           "grid_name": grid_name, "params": params, "grid": dict(stats), "rows": rows,
           "summary": summary, "findings": findings, "plots": plot_files, "section": "",
           "seconds": 0.0}
    doc["seconds"] = time.perf_counter() - start
    doc["provenance"] = collect(command, doc["seconds"],
                                outputs=out if outputs is None else outputs)
    doc["section"] = mod.section(doc)
    write_study(out, doc)
    return doc


def collect_claims(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The claims of every study in docs that makes any, Holm-corrected per family."""
    from refsim.studies.claims import finalize

    raw: list[dict[str, Any]] = []
    for doc in docs:
        mod = _module(doc["study"])
        if hasattr(mod, "claims"):
            raw += mod.claims(doc)
    return finalize(raw)


def write_outputs(out: Path, docs: list[dict[str, Any]], seconds: float,
                  appendix: str = "") -> Path:
    """claims.json, tolerance.csv (when the tolerance study ran) and report.md in out."""
    import csv
    import json

    from refsim.studies.report import clean

    claims = collect_claims(docs)
    out.mkdir(parents=True, exist_ok=True)
    if claims:
        (out / "claims.json").write_text(json.dumps(clean(claims), indent=1) + "\n")
    for doc in docs:
        if doc["study"] == "tolerance":
            from refsim.studies.tolerance import tolerance_rows

            rows = clean(tolerance_rows(doc))
            if rows:
                with (out / "tolerance.csv").open("w", newline="") as fh:
                    writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
                    writer.writeheader()
                    writer.writerows(rows)
    return write_report(out, docs, seconds, appendix=appendix, claims=claims)


def run_all(out_dir: str | Path, *, quick: bool = False, studies: tuple[str, ...] = STUDIES,
            progress: TextIO | None = None, **options: Any) -> tuple[list[dict[str, Any]], Path]:
    """Every study into out_dir/<name>/ and the combined outputs; (documents, report path)."""
    out = Path(out_dir)
    options.setdefault("cache_dir", out / "cache")
    options.setdefault("outputs", out)
    start = time.perf_counter()
    docs = [run_study(name, out / name, quick=quick, progress=progress, **options)
            for name in studies]
    return docs, write_outputs(out, docs, time.perf_counter() - start)
