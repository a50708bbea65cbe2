"""The executable specification of refsim.transforms.RandomHadamard: Fractions and Python ints.

Shares no code with refsim.transforms: the Hadamard matrix is built by Sylvester's recursion
(not a butterfly), the signs are read from numpy.random.Philox (the definition of the stream),
the normalisation constants are derived with integer square roots, every output is an exact
Fraction sum of b terms, and rounding is formats.exact.round_value.

Usage rules:
  - hadamard_exact(x, block, seed, fmt, rounding, overflow, axis) returns what
    RandomHadamard(block, seed, fmt, rounding, overflow).apply(x, axis) must return, as float64.
  - Slow (b^2 Fraction operations per block): for tests.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from refsim.formats.exact import round_value

__all__ = ["SIGN_KEY", "hadamard_exact", "hadamard_matrix", "scale_exact", "sign_vector"]

SIGN_KEY = 0x524854
"""Philox key word k1 of the sign stream (docs/transforms.md)."""


def hadamard_matrix(block: int) -> list[list[int]]:
    """Sylvester's H_b: H_1 = [1], H_2n = [[H_n, H_n], [H_n, -H_n]] (block a power of two)."""
    matrix = [[1]]
    while len(matrix) < block:
        matrix = ([row + row for row in matrix] + [row + [-v for v in row] for row in matrix])
    if len(matrix) != block:
        raise ValueError(f"block must be a power of two; got {block}")
    return matrix


def sign_vector(seed: int, block: int) -> list[int]:
    """s_i = -1 when the top bit of word i of Philox(key = seed + SIGN_KEY * 2^64) is set."""
    words = np.random.Philox(key=seed + (SIGN_KEY << 64)).random_raw(block)
    return [-1 if int(word) >> 63 else 1 for word in words]


def scale_exact(block: int) -> Fraction:
    """1/sqrt(block) when block is a power of 4, else the float32 nearest (rne) of it."""
    root = math.isqrt(block)
    if root * root == block:
        return Fraction(1, root)
    # 1/sqrt(b) in [2^e, 2^(e+1)): e is the largest with 2^(2e) * b <= 1 (exact comparisons).
    e = 0
    while Fraction(2) ** (2 * e) * block > 1:
        e -= 1
    # n = floor(2^(23 - e) / sqrt(b)) = isqrt(2^(46 - 2e) / b); 2^(46 - 2e) / b is an integer here.
    square = Fraction(2) ** (46 - 2 * e) / block
    assert square.denominator == 1
    n = math.isqrt(square.numerator)
    if (2 * n + 1) ** 2 < 4 * square.numerator:  # sqrt is irrational: no ties
        n += 1
    return n * Fraction(2) ** (e - 23)


def _block_exact(values: list[float], matrix: list[list[int]], signs: list[int], c: Fraction,
                 fmt, rounding: str, overflow: str) -> list[float]:
    finite = all(math.isfinite(v) for v in values)
    if finite:  # exact integers over one common power-of-two denominator (fast big-int sums)
        exact = [Fraction(v) for v in values]
        denominator = max(f.denominator for f in exact)
        units = [f.numerator * (denominator // f.denominator) for f in exact]
    out = []
    for row in matrix:
        value: float | Fraction
        if finite:
            total = sum(h * s * u for h, s, u in zip(row, signs, units, strict=True))
            # an exact zero is +0 (docs/transforms.md)
            value = 0.0 if total == 0 else c * Fraction(total, denominator)
        else:
            terms = [h * s * v for h, s, v in zip(row, signs, values, strict=True)]
            if any(math.isnan(t) for t in terms) or (math.inf in terms and -math.inf in terms):
                value = math.nan
            else:
                value = math.inf if math.inf in terms else -math.inf
        out.append(round_value(value, fmt, rounding, overflow))
    return out


def hadamard_exact(x, block: int, seed: int, fmt, rounding: str = "rne",
                   overflow: str = "default", axis: int = -1) -> np.ndarray:
    """x (float32/float64, K = x.shape[axis] a multiple of block) transformed along axis:
    each block's y_j = round(c * sum_i H[j][i] s_i x_i), as a float64 array of x's shape."""
    matrix = hadamard_matrix(block)
    signs = sign_vector(seed, block)
    c = scale_exact(block)
    moved = np.moveaxis(np.asarray(x), axis, -1)
    flat = moved.reshape(-1, block)
    out = np.empty(flat.shape, np.float64)
    for r in range(flat.shape[0]):
        out[r] = _block_exact([float(v) for v in flat[r]], matrix, signs, c, fmt, rounding,
                              overflow)
    return np.moveaxis(out.reshape(moved.shape), -1, axis)
