"""The executable specification of accumulation: plain Python loops over exact Fractions.

Each order of docs/accumulation.md is written here once, as the literal sequence of operations,
with every rounding done by refsim.formats.exact.round_value from the exact Fraction value. No
code is shared with refsim.kernels.accum_core (which packs values into 128-bit windows); only the
contract is: the operation order, the zero-sign rules of IEEE 754 and the random words of each
rounding.

Usage rules:
  - Specs are taken by duck typing (no refsim import): a rounding `rnd` has attributes fmt,
    rounding, overflow, sr_bits (refsim.specs.Cast, or an AccumSpec); an accumulator `acc` also
    has order, chunk, product and outer_spec (refsim.specs.AccumSpec).
  - A value is a Python float (rounded values, zeros, Inf, NaN) or a nonzero Fraction (an exact
    term or product).
  - Results are float64 arrays; slow (microseconds per operation): for small cases only.

Random words: rounding `step` of family `tag` for output `index` under `seed` reads the 32-bit
    H_j = half index % 2 (low half first) of
          np.random.Philox(key=seed, counter=index // 8 + (j << 64) + (step << 128) + (tag << 192))
          .random_raw(4)[(index // 2) % 4]
and u = 0.H_0 H_1 ... (as refsim.formats.exact.sr_uniform for quantize, with step and tag added).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from refsim.formats.exact import (
    float_max,
    p3109_code_odd,
    pow2,
    quantize_exact,
    round_integer,
    round_value,
    split_at_quantum,
    sr_bits_needed,
    stream_half,
)
from refsim.formats.float_format import FloatFormat

__all__ = ["COUNT_KEYS", "accum_uniform", "add_round", "dot_exact", "matmul_exact",
           "operand_terms", "reduce_exact", "round_one", "sum_exact"]

COUNT_KEYS = ("overflow", "underflow", "saturation")
Events = dict[str, int] | None
"""A dict of event counts (COUNT_KEYS) the accumulator roundings add to, or None."""

# Families of roundings (counter word 3): the same numbers as refsim.kernels.accum_core.TAG_*.
TAG_ADD, TAG_PRODUCT, TAG_OUTER, TAG_KAHAN_Y, TAG_KAHAN_D, TAG_KAHAN_C, TAG_OUT = range(1, 8)
_WORD_BITS = 32
_UINT64_MAX = (1 << 64) - 1


def accum_uniform(seed: int, index: int, step: int, tag: int, nbits: int) -> Fraction:
    """u = 0.H_0 H_1 ... with enough words for nbits bits (at least H_0)."""
    n_words = max(1, -(-nbits // _WORD_BITS))
    u = Fraction(0)
    for j in range(n_words):
        word = stream_half(seed, index, (j << 64) + (step << 128) + (tag << 192))
        u += Fraction(word, 1 << (_WORD_BITS * (j + 1)))
    return u


Value = float | Fraction


def _is_zero(x: Value) -> bool:
    return isinstance(x, float) and x == 0


def _negate(x: Value) -> Value:
    return -x


def _count(x: Value, rnd: Any, u: Fraction | None, result: float, events: dict[str, int]) -> None:
    """Classify one rounding of a finite nonzero x: overflow (the rounded magnitude, on the
    format's grid without an upper limit, exceeds max), saturation (such an overflow whose result
    is finite, i.e. +-max) or underflow (a nonzero x rounded to zero)."""
    fmt = rnd.fmt
    if not isinstance(fmt, FloatFormat) or (isinstance(x, float) and not math.isfinite(x)):
        return
    exact = Fraction(x)
    if exact == 0 or (exact < 0 and not fmt.signed):
        return
    n, f, q = split_at_quantum(abs(exact), fmt)
    magnitude = round_integer(n, f, exact < 0, rnd.rounding, rnd.sr_bits, u,
                              p3109_code_odd(n, q, fmt)) * pow2(q)
    if magnitude > float_max(fmt):
        events["overflow"] += 1
        if math.isfinite(result):
            events["saturation"] += 1
    elif magnitude == 0 and fmt.zero:
        events["underflow"] += 1


def round_one(x: Value, rnd: Any, seed: int, index: int, step: int, tag: int,
              events: Events = None) -> float:
    """x (exact) rounded once to rnd.fmt with rnd.rounding; sr reads the words of (step, tag).
    With `events`, the rounding's overflow/underflow/saturation is counted there."""
    u = None
    if rnd.rounding == "sr":
        u = accum_uniform(seed, index, step, tag, sr_bits_needed(x, rnd.fmt, rnd.sr_bits))
    result = round_value(x, rnd.fmt, rnd.rounding, rnd.overflow, rnd.sr_bits, u)
    if events is not None:
        _count(x, rnd, u, result, events)
    return result


def add_round(x: Value, y: Value, rnd: Any, seed: int, index: int, step: int, tag: int,
              events: Events = None) -> float:
    """round(x + y) with IEEE 754's rules for NaN, Inf and the sign of an exact zero."""
    xf = float(x) if isinstance(x, float) else None
    yf = float(y) if isinstance(y, float) else None
    if (xf is not None and math.isnan(xf)) or (yf is not None and math.isnan(yf)):
        return math.nan
    x_inf = xf is not None and math.isinf(xf)
    y_inf = yf is not None and math.isinf(yf)
    if x_inf or y_inf:
        if x_inf and y_inf and xf != yf:
            return math.nan
        infinite = xf if x_inf else yf
        assert infinite is not None
        return round_one(infinite, rnd, seed, index, step, tag, events)
    if _is_zero(x) and _is_zero(y):
        # A Fraction zero carries no sign: it counts as +0.
        x_sign = math.copysign(1.0, xf) if xf is not None else 1.0
        y_sign = math.copysign(1.0, yf) if yf is not None else 1.0
        if x_sign == y_sign:
            zero = math.copysign(0.0, x_sign)
        else:
            zero = -0.0 if rnd.rounding == "rdn" else 0.0
        return round_one(zero, rnd, seed, index, step, tag, events)
    if _is_zero(x):
        return round_one(y, rnd, seed, index, step, tag, events)
    if _is_zero(y):
        return round_one(x, rnd, seed, index, step, tag, events)
    total = Fraction(x) + Fraction(y)
    if total == 0:
        zero = -0.0 if rnd.rounding == "rdn" else 0.0
        return round_one(zero, rnd, seed, index, step, tag, events)
    return round_one(total, rnd, seed, index, step, tag, events)


def _product(x: float, y: float) -> Value:
    """The exact product: float arithmetic for zeros and specials (IEEE signs), else Fraction."""
    if math.isnan(x) or math.isnan(y) or math.isinf(x) or math.isinf(y) or x == 0 or y == 0:
        return x * y
    return Fraction(x) * Fraction(y)


def _term(value: Value, acc: Any, seed: int, index: int, k: int) -> Value:
    if acc.product is None:
        return value
    return round_one(value, acc.product, seed, index, k, TAG_PRODUCT)


def _sequential(terms: list[Value], k0: int, acc: Any, seed: int, index: int,
                events: Events, init: float | None = None) -> float:
    """s = round(t_0); s = round(s + t_k) for k >= 1 (step = k0 + k); +0 when empty. With an
    initial value: s = init, then s = round(s + t_k) for every k; round(init) when empty."""
    if init is not None:
        if not terms:
            return round_one(init, acc, seed, index, k0, TAG_ADD, events)
        s: Value = init
        for k, t in enumerate(terms):
            s = add_round(s, t, acc, seed, index, k0 + k, TAG_ADD, events)
        return float(s)
    if not terms:
        return round_one(0.0, acc, seed, index, 0, TAG_ADD)
    s = round_one(terms[0], acc, seed, index, k0, TAG_ADD, events)
    for k in range(1, len(terms)):
        s = add_round(s, terms[k], acc, seed, index, k0 + k, TAG_ADD, events)
    return float(s)


def _pairwise(terms: list[Value], acc: Any, seed: int, index: int, events: Events,
              init: float | None = None, step0: int = 0) -> float:
    """Recursive halves: left = the largest power of two below n; merges numbered in post-order
    from step0. With an initial value C: round(C + root) at step step0 + n - 1, the root
    unrounded for one term; one term alone is round(t_0) at step step0."""
    counter = [step0]

    def tree(part: list[Value]) -> Value:
        if len(part) == 1:
            return part[0]
        half = 1 << ((len(part) - 1).bit_length() - 1)
        left = tree(part[:half])
        right = tree(part[half:])
        step = counter[0]
        counter[0] += 1
        return add_round(left, right, acc, seed, index, step, TAG_ADD, events)

    if init is not None:
        if not terms:
            return round_one(init, acc, seed, index, 0, TAG_ADD, events)
        root = tree(terms)
        return add_round(init, root, acc, seed, index, step0 + len(terms) - 1, TAG_ADD, events)
    if not terms:
        return round_one(0.0, acc, seed, index, 0, TAG_ADD)
    if len(terms) == 1:
        return round_one(terms[0], acc, seed, index, step0, TAG_ADD, events)
    return float(tree(terms))


def _promote(total: float | None, s: float, c: int, acc: Any, seed: int, index: int,
             events: Events) -> float:
    outer = acc.outer_spec
    if total is None:
        return round_one(s, outer, seed, index, c, TAG_OUTER, events)
    return add_round(total, s, outer, seed, index, c, TAG_OUTER, events)


def _chunked(terms: list[Value], acc: Any, seed: int, index: int, events: Events,
             init: float | None = None) -> float:
    """Chunks summed sequentially (chunk_order 'pairwise': by the pairwise tree, merges at steps
    k0, k0 + 1, ...), promoted into the outer sum; C starts the first chunk's sum (c_entry
    inner) or the outer sum (outer); round_O(C) when there are no terms."""
    tree = getattr(acc, "chunk_order", None) == "pairwise"
    if not terms:
        if init is not None:
            return round_one(init, acc.outer_spec, seed, index, 0, TAG_OUTER, events)
        return round_one(0.0, acc.outer_spec, seed, index, 0, TAG_OUTER)
    outside = init is not None and acc.c_entry == "outer"
    total: float | None = init if outside else None
    for c, k0 in enumerate(range(0, len(terms), acc.chunk)):
        first_init = init if (c == 0 and not outside) else None
        part = terms[k0:k0 + acc.chunk]
        if tree:
            s = _pairwise(part, acc, seed, index, events, first_init, k0)
        else:
            s = _sequential(part, k0, acc, seed, index, events, first_init)
        total = _promote(total, s, c, acc, seed, index, events)
    assert total is not None
    return total


def _kahan(terms: list[Value], acc: Any, seed: int, index: int, events: Events,
           init: float | None = None) -> float:
    """Compensated summation; with an initial value C: s = C, c = +0, then every term."""
    if init is not None and not terms:
        return round_one(init, acc, seed, index, 0, TAG_ADD, events)
    if not terms:
        return round_one(0.0, acc, seed, index, 0, TAG_ADD)
    if init is not None:
        s: float = init
        start = 0
    else:
        s = round_one(terms[0], acc, seed, index, 0, TAG_ADD, events)
        start = 1
    c: float = 0.0
    for k in range(start, len(terms)):
        y = add_round(terms[k], -c, acc, seed, index, k, TAG_KAHAN_Y, events)
        t = add_round(s, y, acc, seed, index, k, TAG_ADD, events)
        d = add_round(t, -s, acc, seed, index, k, TAG_KAHAN_D, events)
        c = add_round(d, -y, acc, seed, index, k, TAG_KAHAN_C, events)
        s = t
    return s


# ---- multiterm ----------------------------------------------------------------------------------
def _floor_log2(a: Fraction) -> int:
    """floor(log2(a)) for a > 0."""
    e = a.numerator.bit_length() - a.denominator.bit_length()
    return e if a >= Fraction(2) ** e else e - 1


def _format_exponent(x: float, emin: int | None) -> int:
    """A nonzero operand's exponent in its format: floor(log2|x|), at least emin (a value below
    2^emin is subnormal there and has exponent emin)."""
    e = _floor_log2(abs(Fraction(x)))
    return e if emin is None else max(e, emin)


def _flushed(x: float, emin: int | None) -> float:
    """x, or the zero of its sign when it is finite, nonzero and below 2^emin."""
    if emin is None or not math.isfinite(x) or x == 0:
        return x
    return math.copysign(0.0, x) if abs(Fraction(x)) < Fraction(2) ** emin else x


def operand_terms(pairs: Sequence[tuple[float, float | None]],
                  acc: Any) -> tuple[list[Value], list[int | None]]:
    """The terms of one output from its operand pairs (x, y), or (x, None) for a term x alone,
    and their alignment exponents.

    For multiterm: operands below 2^emin of acc.operands are first replaced by zeros of their
    sign when acc.subnormals is 'flush'; with acc.align 'product' a finite nonzero term x*y has
    the exponent ea + eb (each by _format_exponent in acc.operands; None: no lower limit). Every
    other exponent is None (the term's own floor(log2|t|) is used)."""
    multiterm = getattr(acc, "order", None) == "multiterm"
    operands = acc.operands if multiterm else None
    emin = None if operands is None else operands.emin
    flush = multiterm and acc.subnormals == "flush"
    by_operands = multiterm and acc.align == "product"
    terms: list[Value] = []
    exps: list[int | None] = []
    for x, y in pairs:
        if flush:
            x = _flushed(x, emin)
            y = None if y is None else _flushed(y, emin)
        value = x if y is None else _product(x, y)
        exp = None
        if by_operands and isinstance(value, Fraction | float) and value != 0 and (
                not isinstance(value, float) or math.isfinite(value)):
            exp = _format_exponent(x, emin) + (0 if y is None else _format_exponent(y, emin))
        terms.append(value)
        exps.append(exp)
    return terms, exps


def _truncated(value: Value, q: int, floor: bool) -> tuple[bool, Fraction]:
    """(negative, |T|) for T = a finite value truncated to a multiple of 2^q: toward zero, or
    toward -inf when `floor` (then T is never a negative zero)."""
    if isinstance(value, float) and value == 0:
        return math.copysign(1.0, value) < 0, Fraction(0)
    exact = Fraction(value)
    unit = Fraction(2) ** q
    if floor:
        units = math.floor(exact / unit)
        return units < 0, abs(units) * unit
    return exact < 0, math.floor(abs(exact) / unit) * unit


def _aligned_sum(entries: list[tuple[Value, int | None]], acc: Any) -> Value:
    """The multiterm adder on (value, alignment exponent or None) entries: specials by IEEE
    rules (NaN if any NaN or both infinities, else the infinity); else each value truncated (to
    zero, or floor when acc.truncation is 'floor') to a multiple of 2^(E - width + 1), E the
    largest alignment exponent (None: floor(log2|v|)) of the nonzero values, and summed exactly.
    A zero sum is -0 if every truncated value is a -0, +0 if every one is +0, else +0 (-0 under
    rdn)."""
    floats = [v for v, _ in entries if isinstance(v, float)]
    if any(math.isnan(v) for v in floats):
        return math.nan
    infinities = {v for v in floats if math.isinf(v)}
    if len(infinities) == 2:
        return math.nan
    if infinities:
        return infinities.pop()
    exponents = [_floor_log2(abs(Fraction(v))) if e is None else e for v, e in entries if v != 0]
    q = max(exponents) - acc.width + 1 if exponents else 0
    truncated = [_truncated(v, q, acc.truncation == "floor") for v, _ in entries]
    total = Fraction(0)
    for negative, magnitude in truncated:
        total += -magnitude if negative else magnitude
    if total != 0:
        return total
    if all(magnitude == 0 for _, magnitude in truncated):
        signs = {negative for negative, _ in truncated}
        if len(signs) == 1:
            return -0.0 if signs.pop() else 0.0
    return -0.0 if acc.rounding == "rdn" else 0.0


def _accumulator_exponent(s: float, acc: Any) -> int | None:
    """The alignment exponent of the running sum or C: floor(log2|s|), at least the accumulator
    format's emin under align 'product'; None (its own floor(log2|s|)) otherwise, or for zeros
    and specials."""
    if acc.align != "product" or s == 0 or not math.isfinite(s):
        return None
    return max(_floor_log2(abs(Fraction(s))), acc.fmt.emin)


def _on_grid(x: Fraction, q: int, floor: bool) -> Fraction:
    """x rounded to a multiple of 2^q: toward -inf when `floor`, else toward zero."""
    unit = Fraction(2) ** q
    units = x / unit
    whole = math.floor(units) if floor or units >= 0 else -math.floor(-units)
    return whole * unit


def _late_sum(group: list[tuple[Value, int | None]], s: float, acc: Any) -> Value:
    """The late accumulator (acc.late_bits; docs/accumulation.md) of one group and the running
    sum s, as an exact value: the products split into acc.interleave subsets by position, each
    truncated (acc.truncation) to width - 1 fraction bits below its own largest exponent, the
    subset sums moved (late_truncation) to the group's largest exponent E; s's exponent e_c is
    max(floor(log2|s|), fmt.emin) (fmt.emin for a zero). e_c <= E: s moved (late_truncation) to
    the products' grid, or dropped when more than c_cutoff binades below, and added exactly.
    Else the product sum and s are moved (late_truncation) to late_bits fraction bits below e_c
    and added, and the sum kept to late_norm_bits fraction bits below its leading bit (not below
    fmt.emin). Zeros: -0 if every product and s is a zero of sign - or truncates to one, +0
    if every one is +0, else +0 (-0 under rdn)."""
    values = [v for v, _ in group] + [s]
    floats = [v for v in values if isinstance(v, float)]
    if any(math.isnan(v) for v in floats):
        return math.nan
    infinities = {v for v in floats if math.isinf(v)}
    if len(infinities) == 2:
        return math.nan
    if infinities:
        return infinities.pop()
    frac = acc.width - 1
    late_floor = acc.late_truncation == "floor"
    step = acc.interleave or 1
    signs: list[tuple[bool, bool]] = []  # (negative, truncated to zero) of every contribution
    parts: list[tuple[int, Fraction]] = []
    for j in range(step):
        subset = group[j::step]
        exponents = [_floor_log2(abs(Fraction(v))) if e is None else e for v, e in subset
                     if v != 0]
        q = max(exponents) - frac if exponents else 0
        total = Fraction(0)
        for v, _ in subset:
            negative, magnitude = _truncated(v, q, acc.truncation == "floor")
            signs.append((negative, magnitude == 0))
            total += -magnitude if negative else magnitude
        if exponents:
            parts.append((max(exponents), total))
    emin = acc.fmt.emin
    e_c = max(_floor_log2(abs(Fraction(s))), emin) if s != 0 else emin
    s_negative = math.copysign(1.0, s) < 0
    if parts and e_c <= max(e for e, _ in parts):
        e_max = max(e for e, _ in parts)
        product_sum = sum((_on_grid(x, e_max - frac, late_floor) for _, x in parts), Fraction(0))
        dropped = acc.c_cutoff is not None and e_max - e_c > acc.c_cutoff
        sc = Fraction(0) if dropped or s == 0 else _on_grid(Fraction(s), e_max - frac, late_floor)
        signs.append((s_negative if sc == 0 else sc < 0, sc == 0))
        result = product_sum + sc
    else:
        grid = e_c - acc.late_bits
        moved = sum((_on_grid(x, grid, late_floor) for _, x in parts), Fraction(0))
        sc = _on_grid(Fraction(s), grid, late_floor)  # exact for s in fmt (late_bits >= man_bits)
        signs.append((s_negative if sc == 0 else sc < 0, sc == 0))
        late = moved + sc
        result = Fraction(0)
        if late != 0:
            lead = max(_floor_log2(abs(late)), emin)
            result = _on_grid(late, lead - acc.late_norm_bits, late_floor)
    if result != 0:
        return result
    if all(zero for _, zero in signs):
        kinds = {negative for negative, _ in signs}
        if len(kinds) == 1:
            return -0.0 if kinds.pop() else 0.0
    return -0.0 if acc.rounding == "rdn" else 0.0


def _multiterm(terms: list[Value], exps: list[int | None], acc: Any, seed: int, index: int,
               events: Events, init: float | None = None) -> float:
    """Chunks of acc.chunk terms (None: one chunk), groups of acc.group terms, group g (terms
    g*group ..) at step g; each chunk's sum promoted into the outer accumulator. C starts the
    first chunk's running sum (c_entry inner) or the outer sum (outer). With acc.late_bits every
    group is _late_sum with the running sum, which starts as +0 (or C)."""
    late = getattr(acc, "late_bits", None) is not None
    if not terms:
        if init is not None:
            return round_one(init, acc.outer_spec, seed, index, 0, TAG_OUTER, events)
        return round_one(0.0, acc.outer_spec, seed, index, 0, TAG_OUTER)
    chunk = acc.chunk or len(terms)
    outside = init is not None and acc.c_entry == "outer"
    total: float | None = init if outside else None
    for c, c0 in enumerate(range(0, len(terms), chunk)):
        s: float | None = init if (c == 0 and not outside) else None
        if late and s is None:
            s = 0.0
        # Group j of the chunk holds the positions p with (p // run) % groups == j (run =
        # group_run; None: consecutive groups); a group with no position is skipped.
        run = getattr(acc, "group_run", None) or acc.group
        groups = chunk // acc.group if acc.chunk else -(-len(terms) // acc.group)
        for j in range(groups):
            members = [k for k in range(c0, min(c0 + chunk, len(terms)))
                       if ((k - c0) // run) % groups == j]
            if not members:
                continue
            group = [(terms[k], exps[k]) for k in members]
            step = c0 // acc.group + j
            if late:
                assert s is not None
                s = round_one(_late_sum(group, s, acc), acc, seed, index, step, TAG_ADD, events)
            elif s is None:
                s = round_one(_aligned_sum(group, acc), acc, seed, index, step, TAG_ADD, events)
            elif acc.variant == "acc-aligned":
                joined = [(s, _accumulator_exponent(s, acc)), *group]
                s = round_one(_aligned_sum(joined, acc), acc, seed, index, step, TAG_ADD, events)
            else:
                s = add_round(s, _aligned_sum(group, acc), acc, seed, index, step, TAG_ADD,
                              events)
        assert s is not None
        total = _promote(total, s, c, acc, seed, index, events)
    assert total is not None
    return total


def reduce_exact(raw_terms: list[Value], acc: Any, seed: int = 0, index: int = 0,
                 events: Events = None, init: float | None = None,
                 exps: list[int | None] | None = None) -> float:
    """One output: the terms (exact, then rounded to acc.product) reduced in acc.order, from the
    initial value `init` (C) when given; `exps`: multiterm alignment exponents (operand_terms).
    With `events`, the accumulator roundings' events are counted there."""
    terms = [_term(value, acc, seed, index, k) for k, value in enumerate(raw_terms)]
    if acc.order == "sequential":
        return _sequential(terms, 0, acc, seed, index, events, init)
    if acc.order == "pairwise":
        return _pairwise(terms, acc, seed, index, events, init)
    if acc.order == "chunked":
        return _chunked(terms, acc, seed, index, events, init)
    if acc.order == "kahan":
        return _kahan(terms, acc, seed, index, events, init)
    if acc.order == "multiterm":
        return _multiterm(terms, [None] * len(terms) if exps is None else exps, acc, seed, index,
                          events, init)
    raise NotImplementedError(f"order {acc.order!r} has no specification here")


def _new_events(counts: bool) -> Events:
    return dict.fromkeys(COUNT_KEYS, 0) if counts else None


def _finish(result: np.ndarray, events: Events) -> Any:
    return result if events is None else (result, events)


def sum_exact(x: np.ndarray, acc: Any, axis: int | None = -1, seed: int = 0,
              counts: bool = False) -> Any:
    """reduce_exact over `axis` (None: every element in C order, one output); output index =
    flat C-order index of the result. An empty axis gives the empty sum (+0 in the result
    format). With counts, (result, {overflow, underflow, saturation}) summed over all outputs."""
    x = np.asarray(x)
    if axis is None:
        x, axis = x.reshape(-1), -1
    moved = np.moveaxis(x, axis, -1)
    # the row count spelled out: reshape(-1, 0) cannot infer it when the axis is empty
    rows = moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1])
    out = np.empty(rows.shape[0], np.float64)
    events = _new_events(counts)
    for i, row in enumerate(rows):
        terms, exps = operand_terms([(float(v), None) for v in row], acc)
        out[i] = reduce_exact(terms, acc, seed, i, events, None, exps)
    return _finish(out.reshape(moved.shape[:-1]), events)


def dot_exact(x: np.ndarray, y: np.ndarray, acc: Any, seed: int = 0, counts: bool = False,
              c: Any = None) -> Any:
    """reduce_exact of the products x_k * y_k (output index 0), from the initial value c (a
    number or 0-d array) when given."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y, strict=True)]
    terms, exps = operand_terms(pairs, acc)
    events = _new_events(counts)
    init = None if c is None else float(np.asarray(c))
    return _finish(np.asarray(reduce_exact(terms, acc, seed, 0, events, init, exps), np.float64),
                   events)


def matmul_exact(a: np.ndarray, b: np.ndarray, spec: Any, seed: int = 0,
                 counts: bool = False, c: Any = None) -> Any:
    """spec.a/spec.b Casts (seed, seed + 1), exact products, reduce (from the initial values c,
    broadcast to the output shape, when given), spec.out Cast (step 0)."""
    if spec.a is not None:
        a = quantize_exact(a, spec.a.fmt, spec.a.rounding, spec.a.overflow, spec.a.sr_bits, seed)
    if spec.b is not None:
        b = quantize_exact(b, spec.b.fmt, spec.b.rounding, spec.b.overflow, spec.b.sr_bits,
                           (seed + 1) & _UINT64_MAX)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    m, k = a.shape[-2:]
    n = b.shape[-1]
    a3 = np.broadcast_to(a, (*batch, m, k)).reshape(-1, m, k)
    b3 = np.broadcast_to(b, (*batch, k, n)).reshape(-1, k, n)
    out = np.empty((a3.shape[0], m, n), np.float64)
    inits = None if c is None else np.broadcast_to(np.asarray(c), (*batch, m, n)).reshape(-1)
    events = _new_events(counts)
    index = 0
    for p in range(a3.shape[0]):
        for i in range(m):
            for j in range(n):
                pairs = [(float(a3[p, i, t]), float(b3[p, t, j])) for t in range(k)]
                terms, exps = operand_terms(pairs, spec.acc)
                init = None if inits is None else float(inits[index])
                value = reduce_exact(terms, spec.acc, seed, index, events, init, exps)
                if spec.out is not None:
                    value = round_one(value, spec.out, seed, index, 0, TAG_OUT)
                out[p, i, j] = value
                index += 1
    return _finish(out.reshape(*batch, m, n), events)
