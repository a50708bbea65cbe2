"""characterize(mma, input_format, out): a black-box matrix unit -> the GemmSpec that reproduces it.

Usage rules:
  - `mma(a, b, c)` takes a (M, K), b (K, N), c (M, N) float64 arrays holding values of the input
    format (and, for c, of the output format) and returns D = A·B + C (M, N) as an array-like
    of floats. A device, a BLAS (`lambda a, b, c: a32 @ b32 + c32`), a torch call on a GPU, a
    user's kernel, or one of refsim's own presets.
  - It works in three steps (docs/hardware.md, "characterize"): (1) crafted vectors whose exact
    results are powers of two read off, with no model, the block structure: which positions
    share a group (group size, interleaved groups) and F, the fraction bits kept below the
    largest exponent; (2) every spec of refsim's families (the IEEE orders with exact or
    rounded products, and the multiterm block with each alignment, truncation, block
    precision and rounding, place of C, subnormal handling) that fits (1) is run through
    refsim.matmul on a battery of crafted vectors and eliminated where it differs from mma;
    (3) the survivors are checked on random rows (10^4 by default).
  - The result's `spec` reproduces mma on every vector tried; `evidence` says, for each feature,
    which alternatives were eliminated by which vector and what mma returned there, and which
    features no vector could decide (their alternatives agree on everything tried). When no spec
    of the families fits, characterize raises NoModelError naming the feature and the vectors.
  - Only general AccumSpec fields are used (DESIGN.md: beside the presets, no device code).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refsim.accumulate import matmul
from refsim.formats import FloatFormat, get_format
from refsim.formats.registry import name_of
from refsim.specs import AccumSpec, Cast, GemmSpec

__all__ = ["Characterization", "Feature", "NoModelError", "Probe", "characterize", "spec_equal_on"]

Mma = Callable[[np.ndarray, np.ndarray, np.ndarray], object]
_BIG_CHUNK = 1 << 40  # "one chunk for any K": C added once after the whole sum


class NoModelError(ValueError):
    """mma fits no spec refsim can express; .feature and .probes say where it failed."""

    def __init__(self, message: str, feature: str, probes: list[Probe]) -> None:
        super().__init__(message)
        self.feature = feature
        self.probes = probes


@dataclass
class Probe:
    """One crafted vector: d = a·b + c over K positions, and what mma returned."""

    name: str
    a: np.ndarray
    b: np.ndarray
    c: float
    got: float = float("nan")

    def describe(self) -> str:
        terms = [f"{x:g}*{y:g}@{k}" for k, (x, y) in enumerate(zip(self.a, self.b, strict=True))
                 if x != 0 and y != 0]
        return (f"{self.name}: K={self.a.size}, products {' + '.join(terms) or '0'}, "
                f"c={self.c!r} -> mma gave {self.got!r}")


@dataclass
class Feature:
    """One decided (or undecided) feature: its value and what decided it.

    Attributes:
        name: e.g. "group size".
        value: the value characterize chose (text).
        decided: False when no vector told the alternatives apart.
        rejected: alternative value -> (probe, what that alternative gives there).
    """

    name: str
    value: str
    decided: bool = True
    rejected: dict[str, tuple[Probe, float]] = field(default_factory=dict)
    note: str = ""


@dataclass
class Characterization:
    """What characterize found: spec, the evidence for each feature, the vectors used."""

    spec: GemmSpec
    evidence: list[Feature]
    probes: list[Probe]
    calls: int
    random_rows: int

    def report(self) -> str:
        """Readable: each feature, its value, the vectors that decided it."""
        lines = [f"spec: {self.spec}", f"mma calls: {self.calls}; crafted vectors: "
                 f"{len(self.probes)}; random rows checked: {self.random_rows}"]
        for feature in self.evidence:
            status = "" if feature.decided else "  (not decided: alternatives agree on every "\
                "vector tried)"
            lines.append(f"- {feature.name}: {feature.value}{status}")
            if feature.note:
                lines.append(f"    {feature.note}")
            for alternative, (probe, theirs) in feature.rejected.items():
                lines.append(f"    not {alternative}: {probe.describe()}; {alternative} gives "
                             f"{theirs!r}")
        return "\n".join(lines)


# ---- calling mma ------------------------------------------------------------------------------
class _Box:
    """mma with call counting; runs probes grouped by their b vector (one call per group)."""

    def __init__(self, mma: Mma, fin: FloatFormat, fout: FloatFormat) -> None:
        self.mma, self.fin, self.fout, self.calls = mma, fin, fout, 0

    def call(self, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        self.calls += 1
        d = np.asarray(self.mma(a.copy(), b.copy(), c.copy()), dtype=np.float64)
        if d.shape != (a.shape[0], b.shape[1]):
            raise ValueError(f"mma returned shape {d.shape} for a {a.shape}, b {b.shape}; "
                             f"expected {(a.shape[0], b.shape[1])}")
        return d

    def run(self, probes: list[Probe]) -> None:
        groups: dict[bytes, list[Probe]] = {}
        for probe in probes:
            groups.setdefault(probe.b.tobytes(), []).append(probe)
        for members in groups.values():
            a = np.stack([p.a for p in members])
            # two identical columns: a matrix product, not a matrix-vector product (a BLAS
            # may take another kernel, with another order, for N = 1)
            b = np.repeat(members[0].b[:, None], 2, axis=1)
            c = np.repeat(np.array([[p.c] for p in members]), 2, axis=1)
            d = self.call(a, b, c)
            for probe, value in zip(members, d[:, 0], strict=True):
                probe.got = float(value)


def _simulate(spec: GemmSpec, probes: list[Probe]) -> np.ndarray:
    """What spec gives on each probe (float64): one batched refsim.matmul per K (padding with
    zeros would add blocks, and a block re-truncates its C)."""
    out = np.empty(len(probes))
    by_k: dict[int, list[int]] = {}
    for i, p in enumerate(probes):
        by_k.setdefault(p.a.size, []).append(i)
    for k, index in by_k.items():
        a = np.stack([probes[i].a for i in index]).reshape(len(index), 1, k)
        b = np.stack([probes[i].b for i in index]).reshape(len(index), k, 1)
        c = np.array([probes[i].c for i in index]).reshape(-1, 1, 1)
        # the exact core: the fast multiterm route's per-call setup (exponent tables) costs
        # more than these few hundred short rows
        out[index] = np.asarray(matmul(a, b, spec, c=c, route="exact"), np.float64).reshape(-1)
    return out


def _same(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Elementwise bit equality as values (NaN == NaN, -0 != +0)."""
    both_nan = np.isnan(x) & np.isnan(y)
    return both_nan | ((x == y) & (np.signbit(x) == np.signbit(y)))


# ---- crafted vectors ----------------------------------------------------------------------------
class _Craft:
    """Products of input-format values with exact, chosen values."""

    def __init__(self, fin: FloatFormat, fout: FloatFormat, k: int) -> None:
        self.fin, self.fout, self.k = fin, fout, k
        self.lo = fin.emin - (fin.man_bits if fin.subnormals else 0)  # smallest value's exponent
        self.hi = min(fin.emax, 60)
        # The "big" products 2^top: as large as the operands and the output allow, so that a
        # term 62 binades below them is still a visible output value.
        self.top = max(0, min(fout.emax - 2, 2 * self.hi - 2, 40))
        # the tiny term's exponent: with normal operands, and deeper with subnormal ones
        self.bottom = max(self.top - 62, fout.emin, 2 * fin.emin)
        self.deep = max(self.top - 62, fout.emin, 2 * self.lo)

    def pow2(self, e: int) -> tuple[float, float] | None:
        """a, b values of fin (subnormals allowed) with a * b = 2^e (None if out of reach)."""
        for lo in (self.fin.emin, self.lo):  # normal operands first (a unit may flush others)
            for ea in sorted(range(lo, self.hi + 1), key=lambda x: abs(2 * x - e)):
                if lo <= e - ea <= self.hi:
                    return 2.0 ** ea, 2.0 ** (e - ea)
        return None

    def scaled(self, x: float, y: float, e: int) -> tuple[float, float] | None:
        """x * y * 2^e as a product of fin values (x, y of fin with exponents near 0)."""
        pair = self.pow2(e)
        if pair is None:
            return None
        a, b = x * pair[0], y * pair[1]
        if abs(a) > self.fin.max or abs(b) > self.fin.max:
            return None
        return a, b

    def vector(self, name: str, terms: dict[int, tuple[float, float] | None], c: float = 0.0,
               k: int | None = None) -> Probe:
        k = self.k if k is None else k
        a, b = np.zeros(k), np.zeros(k)
        for pos, pair in terms.items():
            assert pair is not None
            a[pos], b[pos] = pair
        return Probe(name, a, b, c)


def _survives(probe: Probe, t: float) -> bool | None:
    if probe.got == t:
        return True
    if probe.got == 0:
        return False
    return None


def _deal_text(group: int, run: int | None, chunk: int | None) -> str:
    if run is None:
        return "no"
    return f"chunks of {chunk} dealt to {(chunk or group) // group} groups in runs of {run}"


# ---- candidates ----------------------------------------------------------------------------------
def _ieee_candidates(fin: FloatFormat, fout: FloatFormat, cast: Cast
                     ) -> list[tuple[dict, GemmSpec]]:
    """Sequential FMA chains and their kin: products exact or rounded, rne or rtz, C first or
    added after the sum."""
    out = []
    for product, rounding, c_after in itertools.product(("exact", "rounded"), ("rne", "rtz"),
                                                         (False, True)):
        prod = None if product == "exact" else Cast(fout, rounding)
        if c_after:
            acc = AccumSpec(fout, rounding, "chunked", chunk=_BIG_CHUNK, product=prod,
                            outer=AccumSpec(fout, rounding), c_entry="outer")
        else:
            acc = AccumSpec(fout, rounding, "sequential", product=prod)
        features = {"order": "sequential (one product at a time)", "products": product,
                    "block rounding": rounding,
                    "where C joins": "added after the sum" if c_after else "first",
                    "group size": "1"}
        out.append((features, GemmSpec(a=cast, b=cast, acc=acc)))
    # AMD CDNA 2 style: chunks of products rounded to fout (flushing subnormals or not), summed
    # in order or by the pairwise tree, promoted into a sum that starts from C
    for chunk, order, flush in itertools.product((2, 4, 8), ("sequential", "pairwise"),
                                                 (False, True)):
        acc_fmt = FloatFormat(fout.exp_bits, fout.man_bits, subnormals=not flush)
        operand = cast if not flush else Cast(FloatFormat(fin.exp_bits, fin.man_bits,
                                                          subnormals=False), "rtz")
        acc = AccumSpec(acc_fmt, "rne", "chunked", chunk=chunk, chunk_order=order,
                        product=Cast(acc_fmt, "rne"), outer=AccumSpec(acc_fmt, "rne"),
                        c_entry="outer")
        features = {"order": f"chunks of {chunk} rounded products summed "
                    f"{'by a pairwise tree' if order == 'pairwise' else 'in order'}",
                    "products": "rounded to the output format", "block rounding": "rne",
                    "where C joins": "added after each chunk (the running sum starts at C)",
                    "group size": str(chunk),
                    "subnormal inputs": "flush" if flush else "keep",
                    "subnormal outputs": "flush" if flush else "keep"}
        out.append((features, GemmSpec(a=operand, b=operand, acc=acc)))
    # exact blocks of 2 (AMD CDNA 1 bf16): no truncation window is visible with two positions
    for variant in ("acc-excluded", "acc-aligned"):
        acc = AccumSpec(fout, "rne", "multiterm", group=2, width=60, variant=variant)
        features = {"order": "multiterm blocks of 2, summed exactly", "products": "exact",
                    "group size": "2", "block rounding": "rne",
                    "where C joins": {"acc-excluded": "added to the block's exact sum, one "
                                      "rounding", "acc-aligned": "aligned with the products"}[
                                          variant]}
        out.append((features, GemmSpec(a=cast, b=cast, acc=acc)))
    return out


def _block_formats(fout: FloatFormat, frac_bits: int) -> list[tuple[str, FloatFormat]]:
    """Block result precisions to try: the output's, and (for wider outputs) F - 1 .. F + 2."""
    found = [(name_of(fout), fout)]
    for p in range(max(1, frac_bits - 1), frac_bits + 3):
        if p < fout.man_bits:
            fmt = FloatFormat(fout.exp_bits, p)
            found.append((f"{p} fraction bits (e{fout.exp_bits}m{p})", fmt))
    return found


def _block_candidates(fin: FloatFormat, fout: FloatFormat, cast: Cast, group: int, run: int | None,
                      chunk: int | None, frac_bits: int) -> list[tuple[dict, GemmSpec]]:
    """The multiterm block with every alignment, truncation, block precision and rounding,
    place of C, variant and subnormal handling around the measured group and F."""
    out = []
    width = frac_bits + 1
    for (bname, bfmt), rounding, align, truncation, c_place, subnormals in itertools.product(
            _block_formats(fout, frac_bits), ("rtz", "rne"), ("product", "normalized"),
            ("toward-zero", "floor"), ("aligned", "excluded", "after", "late", "late-odd-even"),
            ("keep", "flush")):
        extra = 1 if align == "product" else 0
        if width + group.bit_length() + extra > 62:
            continue
        common: dict[str, Any] = dict(group=group, width=width, align=align, truncation=truncation,
                      operands=fin, subnormals=subnormals)
        try:
            if c_place == "after":
                acc = AccumSpec(bfmt, rounding, "multiterm", chunk=chunk or group,
                                outer=AccumSpec(fout, "rne"), c_entry="outer",
                                variant="acc-aligned", group_run=run, **common)
            elif c_place.startswith("late"):
                if bfmt != fout or rounding != "rne" or run is not None:
                    continue
                odd_even = c_place == "late-odd-even"  # AMD CDNA 3 fp8: halves, C cutoff
                acc = AccumSpec(bfmt, rounding, "multiterm", variant="acc-aligned",
                                late_bits=fout.man_bits + 9, late_norm_bits=fout.man_bits + 8,
                                late_truncation="floor", interleave=2 if odd_even else None,
                                c_cutoff=frac_bits + 1 if odd_even else None, **common)
            else:
                variant = "acc-aligned" if c_place == "aligned" else "acc-excluded"
                if run is not None:
                    acc = AccumSpec(bfmt, rounding, "multiterm", chunk=chunk, variant=variant,
                                    group_run=run, **common)
                else:
                    acc = AccumSpec(bfmt, rounding, "multiterm", variant=variant, **common)
        except ValueError:
            continue
        features = {"order": "multiterm blocks (aligned, truncated, one rounding per block)",
                    "products": "exact", "group size": str(group),
                    "interleaved groups": _deal_text(group, run, chunk),
                    "fraction bits kept (F)": str(frac_bits),
                    "product exponent alignment": {"product": "unnormalized (ea + eb)",
                                                   "normalized": "normalized"}[align],
                    "truncation": truncation, "block result precision": bname,
                    "block rounding": rounding,
                    "where C joins": {"aligned": "aligned with the products",
                                      "excluded": "added to the block's exact sum, one rounding",
                                      "after": "added after the block sum (out-format RNE)",
                                      "late": "late, with its own width (AMD CDNA 3)",
                                      "late-odd-even": "late, with its own width, dropped more "
                                      f"than {frac_bits + 1} binades below; odd and even products "
                                      "aligned apart (AMD CDNA 3 fp8)"}[c_place],
                    "subnormal inputs": subnormals}
        out.append((features, GemmSpec(a=cast, b=cast, acc=acc)))
    return out


# ---- the procedure ------------------------------------------------------------------------------
def _structure(box: _Box, craft: _Craft, probes: list[Probe]) -> tuple[dict, list[Feature]]:
    """Group membership of each position with position 0, and F, read off exact results: a
    term beside big - big (2^top - 2^top) dies when it lies below the group's window."""
    top = craft.top
    big = craft.pow2(top)
    assert big is not None
    neg = (-big[0], big[1])
    k = craft.k
    for bottom in dict.fromkeys((craft.bottom, craft.deep)):
        tiny = craft.pow2(bottom)
        t = 2.0 ** bottom
        if tiny is None:
            continue
        member = [craft.vector(f"group: 2^{top}@0, -2^{top}@1, 2^{bottom}@{r}",
                               {0: big, 1: neg, r: tiny}) for r in range(2, k)]
        box.run(member)
        probes += member
        dies = [_survives(p, t) is False for p in member]
        if any(dies) and not all(dies):  # all dying: the unit flushes the tiny operands
            break
    else:
        dies = [False]
    evidence = []
    if not any(dies):  # no truncating block seen (or a group of 2 or less)
        info = {"group": 1, "run": None, "chunk": None, "F": None}
        evidence.append(Feature("group size", "1 (a term 2^-62 below big - big always "
                                "survives: no truncation window seen)",
                                note=member[0].describe()))
        return info, evidence
    in_group = [0, 1] + [r for r, d in zip(range(2, k), dies, strict=True) if d]
    group = len(in_group)
    run = None
    chunk = None
    if in_group != list(range(group)):
        # interleaved: runs of `run` positions, every `period` positions
        run = next(i for i in range(1, group + 1) if in_group[i] != i)
        period = in_group[run]
        chunk = group * (period // run)
    # F: 2^(top - j) beside big - big (in the group) survives iff j <= F
    frac = None
    place = in_group[2] if group > 2 else None
    f_probes = []
    if place is not None:
        for j in range(1, 63):
            pair = craft.pow2(top - j)
            if pair is None or top - j < craft.bottom:
                break
            f_probes.append(craft.vector(f"F: 2^{top}@0, -2^{top}@1, 2^{top - j}@{place}",
                                         {0: big, 1: neg, place: pair}))
        box.run(f_probes)
        probes += f_probes
        frac = 0
        for j, probe in enumerate(f_probes, start=1):
            if not _survives(probe, 2.0 ** (top - j)):
                break
            frac = j
    info = {"group": group, "run": run, "chunk": chunk, "F": frac}
    evidence.append(Feature("group size", str(group),
                            note=f"positions sharing position 0's group (a tiny term there dies "
                            f"beside big - big): {in_group}"))
    evidence.append(Feature("interleaved groups", _deal_text(group, run, chunk),
                            note="from the same vectors"))
    if frac is not None:
        evidence.append(Feature("fraction bits kept (F)", str(frac),
                                note=f"2^(top - j) beside big - big in one group survives for "
                                f"j <= {frac}" + (f"; {f_probes[frac].describe()}"
                                                  if frac < len(f_probes) else "")))
    return info, evidence


def _battery(craft: _Craft, fout: FloatFormat, info: dict, rng: np.random.Generator
             ) -> list[Probe]:
    """Crafted vectors for the features structure does not read off: alignment, truncation,
    block precision and rounding (ties, carries), C (near, far above, far below, ties),
    subnormal inputs and outputs, chains over several blocks; then random rows. Values are
    scaled by 2^base so that the bits below F stay visible in the output format."""
    fin, k = craft.fin, craft.k
    frac = info["F"] or fout.man_bits + 2
    base = max(0, min(craft.top, frac + 3 + fout.emin))
    probes: list[Probe] = []
    g = max(info["group"], 1)
    n = min(g, k) if g > 1 else k  # positions in position 0's group (consecutive) or any

    def p(j: int, x: float = 1.0, y: float = 1.0):  # x * y * 2^(base - j)
        return craft.scaled(x, y, base - j)

    def add(name, terms, c=0.0, kk=None):
        # one block (K = group) unless said: later blocks would truncate the first block's
        # result to F bits again and hide its precision
        kk = kk if kk is not None else (n if g > 1 else k)
        if all(v is not None for v in terms.values()) and np.isfinite(c):
            probes.append(craft.vector(name, terms, _to_out(c, fout), kk))

    one, neg = p(0), p(0, -1.0)
    B = 2.0 ** base
    if fin.man_bits >= 1 and n >= 3:
        add("align: 1.5*1.5 - 1.5*1.5 + 2^-F", {0: p(0, 1.5, 1.5), 1: p(0, -1.5, 1.5),
                                                2: p(frac)})
    if n >= 4:
        add("truncation: 1 - 1 - 2^-(F+1) + 2^-F", {0: one, 1: neg, 2: p(frac + 1, -1.0),
                                                    3: p(frac)})
        add("truncation: -1 + 2^-(F+1)", {0: neg, 1: p(frac + 1)})
    for j in range(max(1, frac - 4), frac + 3):
        add(f"precision: 1 + 2^-{j}", {0: one, 1: p(j)})
        add(f"precision: -1 - 2^-{j}", {0: neg, 1: p(j, -1.0)})
        if n >= 3:
            add(f"carry: 1 + 1 + 2^-{j}", {0: one, 1: one, 2: p(j)})
            add(f"carry: 1 + 1 + 1.5*2^-{j}", {0: one, 1: one, 2: p(j, 1.5)})
            add(f"carry: -1 - 1 - 1.5*2^-{j}", {0: neg, 1: neg, 2: p(j, -1.5)})
        if n >= 4:
            add(f"tie: 1 + 1 + 1 + 2^-{j}", {0: one, 1: one, 2: one, 3: p(j)})
    for j in sorted({fout.man_bits, fout.man_bits + 1, fout.man_bits + 2, frac, frac + 1}):
        add(f"C: 1 + c with c = 2^-{j}", {0: one}, c=B * 2.0 ** -j)
        add(f"C: 2^-{j} + c with c = 1", {0: p(j)}, c=B)
        add(f"C: 1.5*2^-{j} + c with c = 1", {0: p(j, 1.5)}, c=B)
        add(f"C: 1.5*2^-{j} + c with c = -1", {0: p(j, 1.5)}, c=-B)
        add(f"C: 1 + 1 + c with c = 1.5*2^-{j}", {0: one, 1: one} if n >= 2 else {0: one},
            c=B * 1.5 * 2.0 ** -j)
    for far in (12, 30, 40):
        add(f"C far above: c = 2^{far} * 1", {0: one}, c=B * 2.0 ** far)
        add(f"C far below: 1 + 2^-{far}", {0: one}, c=B * 2.0 ** -far)
        add(f"C far below, negative: 1 - 2^-{far}", {0: one}, c=-B * 2.0 ** -far)
    add("C only", {}, c=1.25 * B)
    add("C cancels: 1 - 1 + c", {0: one, 1: neg} if n >= 2 else {0: one}, c=B * 2.0 ** -30)
    add("C negative zero, products zero", {}, c=-0.0)
    add("products +-0 only, C = -0", {0: (0.0, 1.0), 1: (-0.0, 1.0)}, c=-0.0)
    if fin.subnormals:
        sub = 2.0 ** craft.lo
        add("subnormal input: sub * 2^s", {0: (sub, 2.0 ** craft.hi)})
        add("subnormal input beside a normal one", {0: one, 1: (sub, 2.0 ** craft.hi)})
        add("subnormal input: 3 sub * 1", {0: (3 * sub, 1.0)})
    low = craft.pow2(fout.emin - 1)
    if low is not None:
        add("subnormal output: 2^(emin - 1)", {0: low})
        add("subnormal output: 1.5 * 2^(emin - 1) - tiny", {0: low, 1: craft.pow2(fout.emin - 2)}
            if craft.pow2(fout.emin - 2) else {0: low})
    add("subnormal C", {}, c=2.0 ** (fout.emin - 1))
    # chains over several blocks
    for kk in sorted({2 * g, 3 * g + 1, 2 * k} if g > 1 else {8, 33, 2 * k}):
        add(f"chain K={kk}: 1 first, 2^-F last", {0: one, kk - 1: p(frac)}, kk=kk)
        add(f"chain K={kk}: 2^-F first, 1 last", {0: p(frac), kk - 1: one}, kk=kk)
        add(f"chain K={kk}: 1, then -1 and 2^-(F+2) last", {0: one, kk - 2: neg,
                                                           kk - 1: p(frac + 2)}, kk=kk)
    for i in range(64):
        kk = int(rng.choice([k, 2 * k, max(2, g // 2 + 1), max(2, 2 * g + 3)]))
        a = _random_values(fin, rng, kk)
        b = _random_values(fin, rng, kk)
        c = float(rng.standard_normal() * 2.0 ** int(rng.integers(-10, 10)))
        probes.append(Probe(f"random {i}", a, b, _to_out(c, fout)))
    return probes


def _to_out(c, fout: FloatFormat):
    """c (a float or an array) as values of the output format (round to nearest)."""
    from refsim.quantize import quantize
    if isinstance(c, np.ndarray):
        return np.asarray(quantize(c, fout), np.float64)
    return float(quantize(np.array([c]), fout)[0])


def _random_values(fin: FloatFormat, rng: np.random.Generator, n: int) -> np.ndarray:
    """Values of fin: random signs, mantissas, exponents over a 12-binade window, some zeros and
    subnormals."""
    from refsim.quantize import quantize
    exps = rng.integers(-6, 6, n)
    bits = min(fin.man_bits, 30)  # refsim's products are exact in 64 bits: at most 31 + 31
    x = rng.choice([-1.0, 1.0], n) * (1 + rng.integers(0, 2 ** bits, n) / 2.0 ** bits) \
        * np.exp2(exps)
    x[rng.random(n) < 0.1] = 0.0
    if fin.subnormals:
        sub = rng.random(n) < 0.05
        x[sub] = rng.integers(1, 2 ** fin.man_bits, sub.sum()) * 2.0 ** (fin.emin - fin.man_bits)
    return np.asarray(quantize(x, fin, overflow="saturate"), np.float64)


def _eliminate(cands: list[tuple[dict, GemmSpec]], probes: list[Probe]
               ) -> tuple[list[tuple[dict, GemmSpec]], dict[int, tuple[int, float]]]:
    """Candidates that agree with mma on every probe; for the others, the first probe where
    they differ and their value there. The short crafted vectors go first: most candidates
    fail on them, and only the survivors are run on the long random ones."""
    got = np.array([p.got for p in probes])
    short = [i for i, p in enumerate(probes) if not p.name.startswith("random")]
    stages = [np.array(short, np.int64), np.arange(len(probes))]
    alive, failed = [], {}
    for i, (features, spec) in enumerate(cands):
        for index in stages:
            try:
                sim = _simulate(spec, [probes[j] for j in index])
            except (ValueError, NotImplementedError, OverflowError):
                failed[i] = (-1, float("nan"))
                break
            bad = np.flatnonzero(~_same(sim, got[index]))
            if bad.size:
                failed[i] = (int(index[bad[0]]), float(sim[bad[0]]))
                break
        else:
            alive.append((features, spec))
    return alive, failed


def _random_check(box: _Box, spec: GemmSpec, fin: FloatFormat, fout: FloatFormat, rows: int,
                  k: int, rng: np.random.Generator) -> tuple[int, int]:
    """mma and spec on random (M, K) x (K, N) matrices: (rows checked, rows that differ)."""
    side = max(1, int(np.sqrt(rows)))
    a = np.stack([_random_values(fin, rng, k) for _ in range(side)])
    b = np.stack([_random_values(fin, rng, side) for _ in range(k)])
    c = _to_out(rng.standard_normal((side, side)), fout)
    d = box.call(a, b, c)
    sim = np.asarray(matmul(a, b, spec, c=c), np.float64)
    return side * side, int((~_same(sim, d)).sum())


def characterize(mma: Mma, input_format: str, out: str = "fp32", *, k: int = 64,
                 random_rows: int = 10_000, seed: int = 0) -> Characterization:
    """Characterize a black-box matrix unit with crafted vectors (docs/hardware.md).

    Args:
        mma: mma(a, b, c) -> D, float64 arrays a (M, K), b (K, N), c (M, N).
        input_format: the operands' format (a refsim format name: fp16, bf16, tf32, e4m3fn or
            e4m3, e5m2, fp32, fp64, ...).
        out: the output (and C) format, e.g. fp32, fp16, fp64.
        k: positions per crafted vector (at least twice the largest group expected; 64).
        random_rows: random rows (a sqrt x sqrt product) checked at the end.
        seed: of the random vectors.

    Returns:
        A Characterization: .spec, .evidence (list of Feature), .probes, .report().

    Raises:
        NoModelError: no spec of refsim's families reproduces mma on the vectors tried.
    """
    name = {"e4m3": "e4m3fn"}.get(str(input_format).lower(), str(input_format).lower())
    fin, fout = get_format(name), get_format(str(out).lower())
    if not isinstance(fin, FloatFormat) or not isinstance(fout, FloatFormat):
        raise ValueError(f"input_format and out must be floating-point formats; got "
                         f"{input_format!r}, {out!r}")
    if not isinstance(k, int) or k < 8:
        raise ValueError(f"k must be an int >= 8; got {k!r}")
    rng = np.random.default_rng(seed)
    box = _Box(mma, fin, fout)
    craft = _Craft(fin, fout, k)
    probes: list[Probe] = []
    cast = Cast(fin)  # mma takes values of fin: how the device converts is not measured
    info, structure = _structure(box, craft, probes)
    battery = _battery(craft, fout, info, rng)
    box.run(battery)
    probes += battery
    if info["group"] == 1 or info["F"] is None:
        cands = _ieee_candidates(fin, fout, cast)
        if info["group"] > 1:
            cands += _block_candidates(fin, fout, cast, info["group"], info["run"],
                                       info["chunk"], 61 - info["group"].bit_length())
    else:
        cands = _block_candidates(fin, fout, cast, info["group"], info["run"], info["chunk"],
                                  info["F"])
    alive, failed = _eliminate(cands, probes)
    if not alive and not failed:
        raise NoModelError(f"mma fits no model refsim can express: the block structure read off "
                           f"(group {info['group']}, F {info['F']}) admits no AccumSpec",
                           "group size", probes[:1])
    if not alive:
        # the candidate that lasted longest names the feature that failed
        best = max(failed, key=lambda i: failed[i][0])
        at, theirs = failed[best]
        probe = probes[at]
        raise NoModelError(
            f"mma fits no model refsim can express: the closest ({cands[best][1]}) differs on "
            f"{probe.describe()}, where it gives {theirs!r}", probe.name.split(":")[0],
            [probe])
    features, spec = _simplest(alive)
    checked, differ = _random_check(box, spec, fin, fout, random_rows, k, rng)
    if differ:
        raise NoModelError(f"{spec} reproduces every crafted vector but differs from mma on "
                           f"{differ} of {checked} random rows", "random rows", [])
    evidence = structure + _features(features, alive, cands, failed, probes,
                                     {f.name for f in structure})
    return Characterization(spec, evidence, probes, box.calls, checked)


def _simplest(alive: list[tuple[dict, GemmSpec]]) -> tuple[dict, GemmSpec]:
    """Of the specs that fit, the one with the fewest departures from the plain choices."""
    plain = {"block result precision": None, "where C joins": "aligned with the products",
             "truncation": "toward-zero", "subnormal inputs": "keep",
             "product exponent alignment": "unnormalized (ea + eb)", "products": "exact"}

    def cost(item):
        features = item[0]
        score = sum(features.get(key) != value for key, value in plain.items() if value)
        if "(e" in features.get("block result precision", ""):
            score += 1
        return score
    return min(alive, key=cost)


def _features(chosen: dict, alive: list, cands: list, failed: dict, probes: list[Probe],
              done: set[str]) -> list[Feature]:
    """For each feature of the chosen spec: the alternatives (the same spec but that feature)
    and the probe that rejected each; undecided when an alternative also fits."""
    out = []
    for key, value in chosen.items():
        if key in done:
            continue
        feature = Feature(key, value)
        for i, (features, _) in enumerate(cands):
            others = {k2: v for k2, v in features.items() if k2 != key}
            mine = {k2: v for k2, v in chosen.items() if k2 != key}
            if features.get(key) == value or others != mine:
                continue
            alt = features[key]
            if i in failed and failed[i][0] >= 0:
                at, theirs = failed[i]
                feature.rejected.setdefault(alt, (probes[at], theirs))
            elif i not in failed:
                feature.decided = False
        out.append(feature)
    return out


def spec_equal_on(spec: GemmSpec, other: GemmSpec, probes: list[Probe]) -> bool:
    """Do two specs give the same bits on every probe?"""
    return bool(_same(_simulate(spec, probes), _simulate(other, probes)).all())


