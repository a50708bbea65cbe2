"""The executable specification of block-scaled quantization: Fractions and Python ints.

Every rule of docs/blocks.md is written here once, over `fractions.Fraction`, sharing no code with
refsim.blocks: the blocks are walked one by one, the scale is found by exact comparisons with
powers of two (never from bit patterns), every quotient is exact, and each element is rounded by
`refsim.formats.exact.round_value` (the rounding specification). Slow; for tests and golden vectors.

Usage rules: `quantize_blocks_exact(x, fmt, rounding, axis, sr_bits, seed)` returns (values,
scales, tensor_scale) like refsim.quantize_blocks with return_codes (values in x's dtype, scales
as float64 with the block axis, and for 2-D tiles the other of the last two, holding one entry
per block). Element i takes its stochastic rounding number from sr_uniform(seed, i, ...), i its
flat C-order index in x (in both candidates of 4over6).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from refsim.formats.block_format import BlockFormat, get_block_format
from refsim.formats.exact import round_value, sr_bits_needed, sr_uniform

__all__ = ["block_scale", "quantize_blocks_exact"]


def _pow2(e: int) -> Fraction:
    return Fraction(2) ** e


def _floor_log2(a: Fraction) -> int:
    """The e with 2^e <= a < 2^(e+1), a > 0, by exact comparison."""
    e = a.numerator.bit_length() - a.denominator.bit_length()
    while _pow2(e) > a:
        e -= 1
    while _pow2(e + 1) <= a:
        e += 1
    return e


def _round_half_even(k: Fraction) -> int:
    n = math.floor(k)
    f = k - n
    return n + 1 if f > Fraction(1, 2) or (f == Fraction(1, 2) and n % 2 == 1) else n


def _pow2_exponent(amax: Fraction, fmt: BlockFormat) -> int:
    """The exponent e of the scale 2^e of a block with finite absolute maximum amax."""
    scale = fmt.scale
    if amax == 0:
        return scale.emin
    elem_max = Fraction(fmt.elem_max)
    emax = _floor_log2(elem_max)  # re-derived, not fmt.elem_emax
    fl = _floor_log2(amax)
    if fmt.scale_rule == "floor":
        e = fl - emax
    elif fmt.scale_rule == "ceil":
        e = (fl if amax == _pow2(fl) else fl + 1) - emax
    elif fmt.scale_rule == "even":
        # amax rounded to nearest even with the element's precision (bits of its top binade)
        precision = fmt.elem_precision
        n = _round_half_even(amax / _pow2(fl - precision + 1))
        e = _floor_log2(n * _pow2(fl - precision + 1)) - emax
    else:  # rceil: the smallest e with amax <= elem_max * 2^e
        e = fl - emax - 1
        while amax > elem_max * _pow2(e):
            e += 1
    return min(max(e, scale.emin), scale.emax)


def block_scale(amax: Fraction, fmt: BlockFormat, tensor_scale: Fraction,
                target: Fraction | None = None) -> Fraction:
    """The scale of a block with finite absolute maximum amax (times tensor_scale excluded);
    non-power-of-two scales map amax to `target` (None: the element's max)."""
    if fmt.pow2_scale:
        return _pow2(_pow2_exponent(amax, fmt))
    ideal = amax / ((Fraction(fmt.elem_max) if target is None else target) * tensor_scale)
    mode = "rup" if fmt.scale_rule == "rceil" else "rne"  # nearest, and 4over6's candidates
    s = Fraction(round_value(ideal, fmt.scale, mode, "saturate"))
    if s == 0 and amax > 0:
        s = Fraction(fmt.scale.min_subnormal)
    return s


def _tensor_scale(values: list[float], fmt: BlockFormat) -> Fraction:
    if not fmt.tensor_scale:
        return Fraction(1)
    finite = [abs(Fraction(v)) for v in values if math.isfinite(v)]
    amax = max(finite, default=Fraction(0))
    if amax == 0:
        return Fraction(1)
    scale_max = Fraction(256) if fmt.scale_rule == "4over6" else Fraction(fmt.scale.max)
    s = round_value(amax / (scale_max * Fraction(fmt.elem_max)), "fp32")
    return Fraction(s) if s != 0 else _pow2(-149)


def _tiles(shape: tuple[int, ...], ax: int, fmt: BlockFormat) -> tuple[list[int], dict]:
    """(scale array shape, {scale index: flat element indices in C order}), walking every
    element: its block is its index along ax // block_size, and for 2-D tiles its index along
    the other of the last two axes // block_rows."""
    ndim = len(shape)
    cross = None
    if fmt.block_rows > 1:
        if ndim < 2 or ax not in (ndim - 1, ndim - 2):
            raise ValueError("2-D tiles need an axis among the last two of a >= 2-d array")
        cross = ndim - 2 if ax == ndim - 1 else ndim - 1
    scale_shape = list(shape)
    scale_shape[ax] = -(-shape[ax] // fmt.block_size)
    if cross is not None:
        scale_shape[cross] = -(-shape[cross] // fmt.block_rows)
    groups: dict[tuple[int, ...], list[int]] = {}
    for flat, idx in enumerate(np.ndindex(*shape)):
        key = list(idx)
        key[ax] //= fmt.block_size
        if cross is not None:
            key[cross] //= fmt.block_rows
        groups.setdefault(tuple(key), []).append(flat)
    return scale_shape, groups


def _quantize_block(flat: list[float], block: list[int], s: Fraction, s_t: Fraction,
                    fmt: BlockFormat, rounding: str, sr_bits: int | None,
                    seed: int) -> list[tuple[float, Fraction]]:
    """Per element of the block: (element value, dequantized value element * s * s_t, exact)."""
    divisor = s * s_t if s != 0 else Fraction(1)
    result = []
    for i in block:
        # A zero stays a float, so that -0.0 keeps its sign into round_value.
        q: Fraction | float = Fraction(flat[i]) / divisor if flat[i] != 0 else flat[i]
        u = None
        if rounding == "sr":
            u = sr_uniform(seed, i, sr_bits_needed(q, fmt.element, sr_bits))
        p = round_value(q, fmt.element, rounding, "saturate", sr_bits, u)
        result.append((p, Fraction(p) * divisor))
    return result


def _sse(flat: list[float], block: list[int], done: list[tuple[float, Fraction]]) -> Fraction:
    """The exact sum of squared errors of the dequantized block against the input."""
    return sum(((v - Fraction(flat[i])) ** 2 for i, (_, v) in zip(block, done, strict=True)),
               Fraction(0))


def quantize_blocks_exact(x: np.ndarray, fmt: BlockFormat | str, rounding: str = "rne",
                          axis: int | None = None, sr_bits: int | None = None,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Block quantization of x, tile by tile, element by element (docs/blocks.md)."""
    fmt = get_block_format(fmt)
    x = np.asarray(x)
    ax = (fmt.axis if axis is None else axis) % x.ndim
    carrier = "fp32" if x.dtype == np.float32 else "fp64"
    flat = [float(v) for v in x.ravel()]
    s_t = _tensor_scale(flat, fmt)
    scale_shape, groups = _tiles(x.shape, ax, fmt)
    scales = np.empty(scale_shape)
    out = np.empty(x.size, dtype=x.dtype)
    for key, block in groups.items():
        if not all(math.isfinite(flat[i]) for i in block):
            scales[key] = math.nan  # a NaN scale: every element of the block is NaN
            for i in block:
                out[i] = math.nan
            continue
        amax = max(abs(Fraction(flat[i])) for i in block)
        s = block_scale(amax, fmt, s_t)
        done = _quantize_block(flat, block, s, s_t, fmt, rounding, sr_bits, seed)
        if fmt.scale_rule == "4over6":
            s_4 = block_scale(amax, fmt, s_t, Fraction(4))
            done_4 = _quantize_block(flat, block, s_4, s_t, fmt, rounding, sr_bits, seed)
            sse_6 = _sse(flat, block, done)
            sse_4 = _sse(flat, block, done_4)
            if sse_4 < sse_6:  # a tie keeps 6, NVFP4's own choice
                s, done = s_4, done_4
        scales[key] = float(s)
        for i, (p, value) in zip(block, done, strict=True):
            sign_negative = math.copysign(1.0, p) < 0
            rounded = round_value(value, carrier, "rne")
            out[i] = -abs(rounded) if sign_negative else rounded
    return out.reshape(x.shape), scales, float(s_t)
