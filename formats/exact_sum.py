"""The executable specification of accumulation: plain Python loops over exact Fractions.

Each order of docs/accumulation.md is written here once, as the literal sequence of operations,
with every rounding done by formats.exact.round_value from the exact Fraction value. No code is
shared with refsim.accum_core (which packs values into 128-bit windows); only the contract is:
the operation order, the zero-sign rules of IEEE 754 and the random words of each rounding.

Usage rules:
  - Specs are taken by duck typing (no refsim import): a rounding `rnd` has attributes fmt,
    rounding, overflow, sr_bits (refsim.specs.Cast, or an AccumSpec); an accumulator `acc` also
    has order, chunk, product and outer_spec (refsim.specs.AccumSpec).
  - A value is a Python float (rounded values, zeros, Inf, NaN) or a nonzero Fraction (an exact
    term or product).
  - Results are float64 arrays; slow (microseconds per operation): for small cases only.

Random words: rounding `step` of family `tag` for output `index` under `seed` reads
    W_j = np.random.Philox(key=seed, counter=index // 4 + (j << 64) + (step << 128) + (tag << 192))
          .random_raw(4)[index % 4]
and u = 0.W_0 W_1 ... (as formats.exact.sr_uniform for quantize, with step and tag added).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

from formats.exact import quantize_exact, round_value, sr_bits_needed

__all__ = ["accum_uniform", "add_round", "dot_exact", "matmul_exact", "reduce_exact",
           "round_one", "sum_exact"]

# Families of roundings (counter word 3): the same numbers as refsim.accum_core.TAG_*.
TAG_ADD, TAG_PRODUCT, TAG_OUTER, TAG_KAHAN_Y, TAG_KAHAN_D, TAG_KAHAN_C, TAG_OUT = range(1, 8)
_WORD_BITS = 64
_UINT64_MAX = (1 << 64) - 1


def accum_uniform(seed: int, index: int, step: int, tag: int, nbits: int) -> Fraction:
    """u = 0.W_0 W_1 ... with enough words for nbits bits (at least W_0)."""
    n_words = max(1, -(-nbits // _WORD_BITS))
    u = Fraction(0)
    for j in range(n_words):
        counter = index // 4 + (j << 64) + (step << 128) + (tag << 192)
        word = int(np.random.Philox(key=seed, counter=counter).random_raw(4)[index % 4])
        u += Fraction(word, 1 << (_WORD_BITS * (j + 1)))
    return u


Value = float | Fraction


def _is_zero(x: Value) -> bool:
    return isinstance(x, float) and x == 0


def _negate(x: Value) -> Value:
    return -x


def round_one(x: Value, rnd: Any, seed: int, index: int, step: int, tag: int) -> float:
    """x (exact) rounded once to rnd.fmt with rnd.rounding; sr reads the words of (step, tag)."""
    u = None
    if rnd.rounding == "sr":
        u = accum_uniform(seed, index, step, tag, sr_bits_needed(x, rnd.fmt, rnd.sr_bits))
    return round_value(x, rnd.fmt, rnd.rounding, rnd.overflow, rnd.sr_bits, u)


def add_round(x: Value, y: Value, rnd: Any, seed: int, index: int, step: int, tag: int) -> float:
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
        return round_one(infinite, rnd, seed, index, step, tag)
    if _is_zero(x) and _is_zero(y):
        # A Fraction zero carries no sign: it counts as +0.
        x_sign = math.copysign(1.0, xf) if xf is not None else 1.0
        y_sign = math.copysign(1.0, yf) if yf is not None else 1.0
        if x_sign == y_sign:
            zero = math.copysign(0.0, x_sign)
        else:
            zero = -0.0 if rnd.rounding == "rdn" else 0.0
        return round_one(zero, rnd, seed, index, step, tag)
    if _is_zero(x):
        return round_one(y, rnd, seed, index, step, tag)
    if _is_zero(y):
        return round_one(x, rnd, seed, index, step, tag)
    total = Fraction(x) + Fraction(y)
    if total == 0:
        return round_one(-0.0 if rnd.rounding == "rdn" else 0.0, rnd, seed, index, step, tag)
    return round_one(total, rnd, seed, index, step, tag)


def _product(x: float, y: float) -> Value:
    """The exact product: float arithmetic for zeros and specials (IEEE signs), else Fraction."""
    if math.isnan(x) or math.isnan(y) or math.isinf(x) or math.isinf(y) or x == 0 or y == 0:
        return x * y
    return Fraction(x) * Fraction(y)


def _term(value: Value, acc: Any, seed: int, index: int, k: int) -> Value:
    if acc.product is None:
        return value
    return round_one(value, acc.product, seed, index, k, TAG_PRODUCT)


def _sequential(terms: list[Value], k0: int, acc: Any, seed: int, index: int) -> float:
    """s = round(t_0); s = round(s + t_k) for k >= 1 (step = k0 + k); +0 when empty."""
    if not terms:
        return round_one(0.0, acc, seed, index, 0, TAG_ADD)
    s = round_one(terms[0], acc, seed, index, k0, TAG_ADD)
    for k in range(1, len(terms)):
        s = add_round(s, terms[k], acc, seed, index, k0 + k, TAG_ADD)
    return s


def _pairwise(terms: list[Value], acc: Any, seed: int, index: int) -> float:
    """Recursive halves: left = the largest power of two below n; merges numbered in post-order."""
    counter = [0]

    def tree(part: list[Value]) -> Value:
        if len(part) == 1:
            return part[0]
        half = 1 << ((len(part) - 1).bit_length() - 1)
        left = tree(part[:half])
        right = tree(part[half:])
        step = counter[0]
        counter[0] += 1
        return add_round(left, right, acc, seed, index, step, TAG_ADD)

    if not terms:
        return round_one(0.0, acc, seed, index, 0, TAG_ADD)
    if len(terms) == 1:
        return round_one(terms[0], acc, seed, index, 0, TAG_ADD)
    return float(tree(terms))


def _chunked(terms: list[Value], acc: Any, seed: int, index: int) -> float:
    outer = acc.outer_spec
    if not terms:
        return round_one(0.0, outer, seed, index, 0, TAG_OUTER)
    total: float | None = None
    for c, k0 in enumerate(range(0, len(terms), acc.chunk)):
        s = _sequential(terms[k0:k0 + acc.chunk], k0, acc, seed, index)
        if total is None:
            total = round_one(s, outer, seed, index, c, TAG_OUTER)
        else:
            total = add_round(total, s, outer, seed, index, c, TAG_OUTER)
    assert total is not None
    return total


def _kahan(terms: list[Value], acc: Any, seed: int, index: int) -> float:
    if not terms:
        return round_one(0.0, acc, seed, index, 0, TAG_ADD)
    s = round_one(terms[0], acc, seed, index, 0, TAG_ADD)
    c: float = 0.0
    for k in range(1, len(terms)):
        y = add_round(terms[k], -c, acc, seed, index, k, TAG_KAHAN_Y)
        t = add_round(s, y, acc, seed, index, k, TAG_ADD)
        d = add_round(t, -s, acc, seed, index, k, TAG_KAHAN_D)
        c = add_round(d, -y, acc, seed, index, k, TAG_KAHAN_C)
        s = t
    return s


def reduce_exact(raw_terms: list[Value], acc: Any, seed: int = 0, index: int = 0) -> float:
    """One output: the terms (exact, then rounded to acc.product) reduced in acc.order."""
    terms = [_term(value, acc, seed, index, k) for k, value in enumerate(raw_terms)]
    if acc.order == "sequential":
        return _sequential(terms, 0, acc, seed, index)
    if acc.order == "pairwise":
        return _pairwise(terms, acc, seed, index)
    if acc.order == "chunked":
        return _chunked(terms, acc, seed, index)
    if acc.order == "kahan":
        return _kahan(terms, acc, seed, index)
    raise NotImplementedError(f"order {acc.order!r} has no specification here yet")


def sum_exact(x: np.ndarray, acc: Any, axis: int = -1, seed: int = 0) -> np.ndarray:
    """reduce_exact over `axis`; output index = flat C-order index of the result."""
    moved = np.moveaxis(np.asarray(x), axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    out = np.empty(rows.shape[0], np.float64)
    for i, row in enumerate(rows):
        out[i] = reduce_exact([float(v) for v in row], acc, seed, i)
    return out.reshape(moved.shape[:-1])


def dot_exact(x: np.ndarray, y: np.ndarray, acc: Any, seed: int = 0) -> np.ndarray:
    terms = [_product(float(a), float(b)) for a, b in zip(x, y, strict=True)]
    return np.asarray(reduce_exact(terms, acc, seed, 0), np.float64)


def matmul_exact(a: np.ndarray, b: np.ndarray, spec: Any, seed: int = 0) -> np.ndarray:
    """spec.a/spec.b Casts (seed, seed + 1), exact products, reduce, spec.out Cast (step 0)."""
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
    index = 0
    for p in range(a3.shape[0]):
        for i in range(m):
            for j in range(n):
                terms = [_product(float(a3[p, i, t]), float(b3[p, t, j])) for t in range(k)]
                value = reduce_exact(terms, spec.acc, seed, index)
                if spec.out is not None:
                    value = round_one(value, spec.out, seed, index, 0, TAG_OUT)
                out[p, i, j] = value
                index += 1
    return out.reshape(*batch, m, n)
