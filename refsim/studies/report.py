"""Study outputs: results.json, results.csv, plots (matplotlib, Agg) and report.md.

Usage rules:
  - A study's document (results.json) has the keys of SCHEMA: study, title, quick, params,
    grid (runs, cached, computed, seconds), rows (flat dicts, also written as results.csv),
    summary (study-specific numbers), findings (claim, supported: true / false / null when the
    run cannot tell, evidence with the numbers), plots (PNG file names) and section (the
    markdown section of report.md). run_study adds mode ("quick", "standard" or "full"),
    grid_name (the grid the mode ran: a study without a standard grid runs its quick one) and
    provenance (refsim.studies.provenance). `validate(doc)` lists what does not match.
  - Non-finite floats are written as null (JSON has no NaN or Infinity).
  - matplotlib is an optional extra ("plots"): `pyplot()` imports it lazily with the Agg
    backend and says how to install it when it is missing.
  - `write_report(out_dir, docs)` writes the combined report.md of `refsim study all`: where
    it came from (commit, date, machine, command, wall time), the conclusions first (every
    finding with its evidence and power statement), then each study's section, with the
    plots linked by relative paths.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA", "clean", "headline", "pyplot", "said", "validate", "write_report",
           "write_study"]

SCHEMA: dict[str, type | tuple[type, ...]] = {
    "study": str, "title": str, "quick": bool, "params": dict, "grid": dict, "rows": list,
    "summary": dict, "findings": list, "plots": list, "section": str, "seconds": (int, float),
}
GRID_KEYS = ("runs", "cached", "computed", "seconds")
PROVENANCE_KEYS = ("git_commit", "date", "machine", "wall_seconds", "command")
FINDING_KEYS: dict[str, type | tuple[type, ...]] = {
    "id": str, "claim": str, "supported": (bool, type(None)), "evidence": str}


def clean(obj: Any) -> Any:
    """obj with non-finite floats replaced by None and tuples by lists (JSON-safe)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str):  # NumPy scalars
        return clean(obj.item())
    return obj


def validate(doc: Any) -> list[str]:
    """The ways `doc` differs from SCHEMA (empty when it matches)."""
    if not isinstance(doc, dict):
        return [f"document must be an object; got {type(doc).__name__}"]
    problems = []
    for key, kind in SCHEMA.items():
        if key not in doc:
            problems.append(f"missing key {key!r}")
        elif not isinstance(doc[key], kind) or (kind is not bool and isinstance(doc[key], bool)
                                                 and key != "quick"):
            problems.append(f"{key!r} must be {kind}; got {type(doc[key]).__name__}")
    if isinstance(doc.get("grid"), dict):
        problems += [f"grid lacks {key!r}" for key in GRID_KEYS if key not in doc["grid"]]
    for i, row in enumerate(doc.get("rows", []) if isinstance(doc.get("rows"), list) else []):
        if not isinstance(row, dict) or any(isinstance(v, dict | list) for v in row.values()):
            problems.append(f"rows[{i}] must be a flat object")
            break
    for i, f in enumerate(doc.get("findings", []) if isinstance(doc.get("findings"), list)
                          else []):
        for key, kind in FINDING_KEYS.items():
            if not isinstance(f, dict) or key not in f or not isinstance(f[key], kind):
                problems.append(f"findings[{i}].{key} must be {kind}")
    plots = doc["plots"] if isinstance(doc.get("plots"), list) else []
    problems += [f"plot {name!r} is not a .png file name" for name in plots
                 if not (isinstance(name, str) and name.endswith(".png"))]
    if "mode" in doc and doc["mode"] not in ("quick", "standard", "full"):
        problems.append(f"mode must be quick, standard or full; got {doc['mode']!r}")
    if "provenance" in doc:
        prov = doc["provenance"]
        problems += [f"provenance lacks {key!r}" for key in PROVENANCE_KEYS
                     if not isinstance(prov, dict) or key not in prov]
    return problems


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError("plots need matplotlib: pip install 'refsim[plots]' (or run with "
                         "--no-plots)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_dir: Path, name: str) -> str:
    """Lay out, write out_dir/name (PNG, 90 dpi) and close `fig`; returns name."""
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=90)
    pyplot().close(fig)
    return name


def write_study(out_dir: Path, doc: dict[str, Any]) -> None:
    """results.json, results.csv and report.md (the section) of one study."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(clean(doc), indent=1) + "\n")
    rows = clean(doc["rows"])
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in names]
    with (out_dir / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "report.md").write_text(doc["section"])


def said(findings: Sequence[dict[str, Any]]) -> str:
    """The closing "What this says" sentence of a study section."""
    words = {True: "yes", False: "no", None: "undecided"}
    return "What this says: " + "; ".join(
        f"{f['claim']} — {words[f['supported']]} ({f['evidence']})" for f in findings) + "."


def _mark(supported: bool | None) -> str:
    return {True: "SUPPORTED", False: "NOT SUPPORTED", None: "UNDECIDED"}[supported]


def headline(docs: Sequence[dict[str, Any]]) -> list[str]:
    """One line per finding: verdict, claim and evidence."""
    found = [f for doc in docs for f in doc["findings"] if f["id"] in PAPER_FINDINGS]
    found.sort(key=lambda f: PAPER_FINDINGS.index(f["id"]))
    return [f"[{_mark(f['supported'])}] {f['claim']} -- {f['evidence']}" for f in found]


PAPER_FINDINGS = ("accumulation", "accumulation-acc", "frequency", "frequency-acc", "depth",
                  "depth-acc", "allocation", "allocation-a", "allocation-f", "allocation-d")
"""Finding ids of the paper's three findings and its allocation claims (docs/references.md);
"-acc": the same finding with the accumulator as the lever (refsim.studies.sensitivity)."""
CORE_FINDINGS = ("accumulation", "frequency", "depth", "allocation")
"""The ones every `refsim study all` run reports (NOT RUN when their study was left out)."""


PAPER_CLAIMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "K": ("longer reductions (K) tolerate more low-precision noise",
          ("causal/K/", "cross-gemm/k/")),
    "frequency": ("less-used elements tolerate more noise", ("causal/F/", "cross-gemm/frequency/")),
    "depth": ("depth does not change the final outcome", ("causal/D/", "cross-gemm/depth/")),
    "allocation": ("factor-based bit allocation beats uniform and random; A- >= A+, F+ >= F-, "
                   "D+ ~ D-", ("allocation/",)),
    "accumulators": ("(refsim's own) real accumulators: H100 FP8 vs B200 vs promotion every 128 "
                     "across K", ("accumulators/",)),
}
"""The paper's four claims (Shen, Lai & Zhang 2024; docs/references.md) and the prefixes of
the claims.json ids that test each."""


def _num(v: Any, spec: str = "+.3g") -> str:
    return format(v, spec) if isinstance(v, int | float) and math.isfinite(v) else "n/a"


def claims_table(claims: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown rows of every claim: verdict, effect with CI, SESOI, power, p, Holm p, n."""
    lines = ["| claim | verdict | effect [95% CI] | SESOI | power at SESOI | p | p (Holm) | n "
             "| units |", "|---|---|---|---|---|---|---|---|---|"]
    for c in claims:
        lo, hi = c["ci"]
        lines.append(f"| {c['claim']} | **{c['verdict']}** | {_num(c['effect'])} "
                     f"[{_num(lo)}, {_num(hi)}] | {_num(c['sesoi'], '.3g')} | "
                     f"{_num(c['power_at_sesoi'], '.2f')} | {fmt_p(c['p'])} | "
                     f"{fmt_p(c['p_holm'])} | {c['n']} | {c['units']} |")
    return lines


def paper_table(claims: Sequence[dict[str, Any]]) -> list[str]:
    """The README's "What the study finds" table: per paper claim, how many of the claims.json
    entries that test it reached each verdict, and every one of them by id."""
    lines = ["| claim (Shen, Lai & Zhang 2024) | verdicts | claims.json entries |",
             "|---|---|---|"]
    for text, prefixes in PAPER_CLAIMS.values():
        mine = [c for c in claims if c["claim"].startswith(prefixes)]
        if not mine:
            lines.append(f"| {text} | not run | |")
            continue
        counts = ", ".join(f"{sum(c['verdict'] == v for c in mine)} {v}"
                           for v in ("supported", "contradicted", "equivalent", "undecided")
                           if any(c["verdict"] == v for c in mine))
        cells = "; ".join(f"{c['claim']}: {c['verdict']}" for c in mine)
        lines.append(f"| {text} | {counts} (of {len(mine)}) | {cells} |")
    return lines


def fmt_p(p: Any) -> str:
    """A p-value: two significant digits, "< 1e-15", or "n/a"."""
    if not isinstance(p, int | float) or not math.isfinite(p):
        return "n/a"
    return "< 1e-15" if p < 1e-15 else f"{p:.2g}"


def write_report(out_dir: Path, docs: Sequence[dict[str, Any]], seconds: float,
                 appendix: str = "", claims: Sequence[dict[str, Any]] | None = None) -> Path:
    """The combined report.md of several studies (each in out_dir/<study>/), then `appendix`;
    with `claims` (refsim.studies.claims, finalized), their verdicts come first."""
    modes = {d.get("mode", "quick" if d["quick"] else "full") for d in docs}
    mode = ("quick mode (small grids: read the numbers as a smoke test of the method)"
            if "quick" in modes else "standard mode (the grids sized to decide, "
            "docs/studies.md)" if "standard" in modes else "full mode")
    fallbacks = [d["study"] for d in docs if d.get("grid_name", d.get("mode")) != d.get("mode")]
    if fallbacks:
        mode += f" ({', '.join(fallbacks)}: no standard grid, so their quick grids)"
    prov = docs[0].get("provenance", {}) if docs else {}
    lines = ["# refsim factor studies", "",
             f"Studies: {', '.join(d['study'] for d in docs)}; "
             f"{mode}; "
             f"{seconds:.0f} s in all. Every number below comes from this run "
             "(results.json in each study's folder).", ""]
    if prov:
        dirty = " (with uncommitted changes)" if prov.get("git_dirty") else ""
        lines += [f"Run: `{prov.get('command')}` at commit {prov.get('git_commit')}{dirty}, "
                  f"{prov.get('date')}, on {prov.get('machine')}.", ""]
    if claims:
        under = [c["claim"] for c in claims if not (c["power_at_sesoi"] >= 0.8)]
        lines += ["## Claims and verdicts", "",
                  "Every claim below was declared with its smallest effect of interest (SESOI) "
                  "before the run; its verdict is computed (refsim.studies.claims): "
                  "`supported` (significant in the claimed direction, or for a claim of no "
                  "effect, equivalent), `contradicted` (significant against it), `equivalent` "
                  "(a directional claim whose effect lies, significantly, inside +-SESOI: two "
                  "one-sided tests), `undecided`. p-values are Holm-corrected within each "
                  "family (the part of the id before the measure). Machine-readable: "
                  "claims.json.", ""]
        lines += [*paper_table(claims), "", *claims_table(claims), ""]
        lines.append("Power at the SESOI is below 0.8 for: " + ", ".join(under) + "."
                     if under else "Every claim has power >= 0.8 at its SESOI.")
        lines.append("")
    paper = [f for d in docs for f in d["findings"] if f["id"] in PAPER_FINDINGS]
    if paper or not claims:
        lines += ["## Conclusions of the one-dose studies", "",
                  "The paper (Shen, Lai & Zhang 2024) reports three findings and an allocation "
                  "claim. For each, this run's verdict from the one-dose studies (sensitivity, "
                  "frequency, depth): SUPPORTED (the test stated in the study's section "
                  "passed), NOT SUPPORTED (the effect is significant the other way, or nothing "
                  "was found although the grid detects a small effect with 80% power) or "
                  "UNDECIDED (nothing decisive: the smallest effect this grid detects is not "
                  "small). Each line ends with its power statement.", ""]
        lines += [f"- **{_mark(f['supported'])}** — {f['claim']}: {f['evidence']}"
                  for f in sorted(paper, key=lambda f: PAPER_FINDINGS.index(f["id"]))]
    if not claims:
        lines += [f"- **NOT RUN** — the {i} finding: its study was not part of this run."
                  for i in CORE_FINDINGS if i not in {f["id"] for f in paper}]
    others = [f for d in docs for f in d["findings"] if f["id"] not in PAPER_FINDINGS]
    if others:
        lines += ["", "Checks of the underlying numerics:", ""]
        lines += [f"- **{_mark(f['supported'])}** — {f['claim']}: {f['evidence']}"
                  for f in others]
    for d in docs:
        section = d["section"].replace("](", f"]({d['study']}/")
        lines += ["", section.rstrip()]
    if appendix:
        lines += ["", appendix.rstrip()]
    path = out_dir / "report.md"
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
