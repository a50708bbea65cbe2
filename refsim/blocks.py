"""refsim.quantize_blocks: block-scaled quantization (OCP MX, NVFP4, block floating point).

Usage rules (semantics: docs/blocks.md):
  - x is a NumPy float32/float64 array; blocks of fmt.block_size run along `axis` (fmt.axis by
    default); a short last block is a block of its own. The result has x's dtype and shape.
  - Power-of-two scales (MX, bfp8): the block scale 2^e is computed from the bits of the block's
    absolute maximum (docs/blocks.md, "Scale rules"), and each element is rounded once, from its
    exact value, to the element grid scaled by 2^e (x * 2^-e is exact, then refsim.quantize
    rounds it with saturation, then the value is multiplied back by 2^e; for rne along the last
    axis the same steps run in one pass, on bit patterns, with refsim.quantize's lane function).
    Lanes where x * 2^-e or the result would leave the carrier's normal range are rounded by
    refsim.kernels.core from x itself.
  - Non-power-of-two scales (NVFP4's E4M3, DeepSeek's fp32): exact quotients
    (refsim.scaling.exact_quotient), one rounding each; sr needs sr_bits in 1..16 there.
    4over6 quantizes each block twice and keeps the candidate of smaller exact squared error
    (_four_wins: a float64 sum with a proven bound, Fractions for the near-ties).
  - 2-D tiles (fmt.block_rows > 1) over the last two axes: a tile is block_rows consecutive 1-D
    blocks across the block axis (_Tiles); its exponent (or scale) is found from their amax first
    and given to the same kernels, which then only round.
  - A block holding NaN or +-Inf has a NaN scale and every element of it is NaN (OCP MX v1.0).
  - Stochastic rounding: element i takes the stream of refsim.quantize at its flat C-order index
    in x, whatever the axis or block size.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from numba import njit, prange

from refsim.formats import FixedFormat, Format
from refsim.formats.block_format import FOUR_OVER_SIX_SCALE_MAX, BlockFormat, get_block_format
from refsim.formats.policy import ROUNDINGS, check_rounding, check_seed, check_sr_bits
from refsim.kernels import core
from refsim.kernels.lane import F_ENABLED, N_FAST, fast_constants, round_lane, select
from refsim.kernels.rng import stream_word
from refsim.params import CARRIERS, check_array, check_axis, check_out, format_params
from refsim.quantize import quantize
from refsim.scaling import check_scaled_sr_bits, exact_quotient, fp32_nearest

__all__ = ["BlockQuantized", "cast_operand", "quantize_blocks"]

_NAN_EXP = np.int32(1 << 30)  # block exponent sentinel: the scale is NaN


@dataclass(frozen=True)
class BlockQuantized:
    """A block quantization with everything a golden vector needs.

    values: the dequantized values (x's dtype and shape); codes: uint64 element codes (x's
    shape; 0 in NaN blocks); scales: float64 block scales, x's shape with the block axis holding
    one entry per block; scale_codes: uint64 codes of the scales in the scale format;
    tensor_scale: the per-tensor fp32 scale (1.0 when the format has none).
    """

    values: np.ndarray
    codes: np.ndarray
    scales: np.ndarray
    scale_codes: np.ndarray
    tensor_scale: float


# ---- power-of-two scales: the kernels -----------------------------------------------------------
@njit(cache=True)
def _locate(item, nb, inner, length, bs):
    """First flat index, element count and stride of block `item` = (outer, block, inner)."""
    o = item // (nb * inner)
    rest = item - o * nb * inner
    b = rest // inner
    i = rest - b * inner
    start = (o * length + b * bs) * inner + i
    return start, min(bs, length - b * bs), inner


@njit(cache=True)
def _block_exponent(amax, c_man, c_bias, inf_bits, threshold, elem_emax, s_emin, s_emax):
    """Scale exponent of a block from its max |x| pattern (or _NAN_EXP): docs/blocks.md."""
    amax = np.int64(amax)  # the sign bit is clear: int64 holds it, and int64 ops stay exact
    if amax >= inf_bits:
        return _NAN_EXP
    if amax == 0:
        return np.int32(s_emin)
    efield = amax >> c_man
    mfield = amax & ((np.int64(1) << c_man) - 1)
    if efield == 0:  # carrier subnormal: normalize its significand to c_man + 1 bits
        top = core.bit_length(mfield) - 1
        sig = mfield << (c_man - top)
        floor_log2 = top + 1 - c_bias - c_man
    else:
        sig = mfield | (np.int64(1) << c_man)
        floor_log2 = efield - c_bias
    # One comparison of the normalized significand covers ceil, even and rceil (threshold).
    e = floor_log2 - elem_emax + (1 if sig > threshold else 0)
    return np.int32(min(max(e, s_emin), s_emax))


_ITEMS = 256  # blocks per parallel work item of the last-axis kernels
_TILE = 1 << 20  # elements per tile of the last-axis path: y and p stay in (L2/L3) cache


@njit(cache=True)
def _span(item, nb, length, bs):
    """Flat [first, stop) of block `item` when blocks run along the last axis (inner 1)."""
    row = item // nb
    b = item - row * nb
    return row * length + b * bs, row * length + min(length, (b + 1) * bs)


@njit(parallel=True, cache=True)
def _down_last(x, xb, y, exps, flags, lo, hi, base, nb, length, bs, given, c_man, c_bias,
               inf_bits, threshold, elem_emax, s_emin, s_emax, min_normal, pow_down):
    """Blocks lo..hi-1 along the last axis: exps[item] = e (given: read, not computed; 2-D
    tiles), y[i - base] = x[i] * 2^-e (exact where |y| >= min_normal), flags[item] = the number
    of lanes below that (for _fix_lanes). pow_down[e - s_emin] = 2^-e in the carrier (a table:
    no libm call per block)."""
    abs_mask = xb.dtype.type(inf_bits | (inf_bits >> 1) | ((1 << c_man) - 1))
    for chunk in prange((hi - lo + _ITEMS - 1) // _ITEMS):
        for item in range(lo + chunk * _ITEMS, min(hi, lo + (chunk + 1) * _ITEMS)):
            first, stop = _span(item, nb, length, bs)
            # Unsigned bounds: LLVM then knows the addresses are consecutive and vectorizes.
            ufirst = np.uint64(first)
            ustop = np.uint64(stop)
            ubase = np.uint64(base)
            if given:
                e = exps[item]
            else:
                amax = xb.dtype.type(0)
                for i in range(ufirst, ustop):
                    amax = max(amax, xb.dtype.type(xb[i] & abs_mask))
                e = _block_exponent(amax, c_man, c_bias, inf_bits, threshold, elem_emax, s_emin,
                                    s_emax)
                exps[item] = e
            down = y.dtype.type(0.0) if e == _NAN_EXP else pow_down[e - s_emin]
            low = 0
            for i in range(ufirst, ustop):
                v = x[i] * down
                y[i - ubase] = v
                low += (abs(v) < min_normal) & (x[i] != 0)
            flags[item] = 0 if e == _NAN_EXP else low


@njit(parallel=True, cache=True)
def _up_last(p, y, out, exps, lo, hi, base, nb, length, bs, elem_max, finite_max, s_emin,
             pow_up):
    """Blocks lo..hi-1 along the last axis: out[i] = sat(p[i - base]) * 2^e (NaN blocks: NaN).

    p came from refsim.quantize with the default overflow policy (its fastest path); y is
    finite, so an overflow is its only non-finite result (fixed point saturates by itself),
    and sat() turns it into +-elem_max with the sign of y: saturation. The product is exact
    where representable; beyond the carrier it is +-Inf."""
    for chunk in prange((hi - lo + _ITEMS - 1) // _ITEMS):
        for item in range(lo + chunk * _ITEMS, min(hi, lo + (chunk + 1) * _ITEMS)):
            first, stop = _span(item, nb, length, bs)
            ubase = np.uint64(base)
            e = exps[item]
            up = out.dtype.type(np.nan) if e == _NAN_EXP else pow_up[e - s_emin]
            for i in range(np.uint64(first), np.uint64(stop)):
                v = p[i - ubase]
                v = v if abs(v) <= finite_max else math.copysign(elem_max, y[i - ubase])
                out[i] = v * up


_SENTINEL: dict[type[np.unsignedinteger[Any]], np.unsignedinteger[Any]] = {
    np.uint32: np.uint32(0x7FC0DEAD), np.uint64: np.uint64(0x7FF8DEADDEADDEAD)}
"""A NaN pattern no result has (NaN blocks get the canonical NaN): marks lanes for _fix_lanes."""


def _make_one_pass(mode, utype):
    """The one-pass kernel for a deterministic mode and a carrier (compiled on first use; used
    for rne).

    Blocks along the last axis: the block amax and exponent e, then every element rounded once,
    directly from x, to the element grid scaled by 2^e: the element format with its exponents
    shifted by e, whose round_lane constants are row e - s_emin of `table` (_shifted_table). So
    the loop is refsim.quantize's own lane, nothing more. Carrier subnormal inputs get
    _SENTINEL and are redone by _fix_lanes; a block whose shifted format leaves the carrier
    (table row disabled) gets flags = -1: the caller takes the three-step path.
    """
    c_man, c_bias = (23, 127) if utype is np.uint32 else (52, 1023)
    U = utype
    W = 8 * np.dtype(utype).itemsize
    ABS = U((1 << (W - 1)) - 1)
    A_LO = U(1 << c_man)  # the smallest carrier normal pattern
    INF = (2 * c_bias + 1) << c_man
    SENTINEL = _SENTINEL[utype]
    NAN = U(INF | (1 << (c_man - 1)))
    MODE = mode

    @njit(parallel=True, cache=True)
    def one_pass(xb, outb, exps, flags, nb, length, bs, given, threshold, elem_emax, s_emin,
                 s_emax, table):
        n_blocks = exps.size
        for chunk in prange((n_blocks + _ITEMS - 1) // _ITEMS):
            # (row, b) of the chunk's first block, then stepped: no division per block.
            row = (chunk * _ITEMS) // nb
            b = chunk * _ITEMS - row * nb
            for item in range(chunk * _ITEMS, min(n_blocks, (chunk + 1) * _ITEMS)):
                first = row * length + b * bs
                stop = first + min(bs, length - b * bs)
                b += 1
                if b == nb:
                    b = 0
                    row += 1
                ufirst = np.uint64(first)
                ustop = np.uint64(stop)
                if given:  # 2-D tiles: the tile's exponent, found beforehand
                    e = exps[item]
                else:
                    amax = U(0)
                    for i in range(ufirst, ustop):
                        amax = max(amax, U(xb[i] & ABS))
                    e = _block_exponent(amax, c_man, c_bias, INF, threshold, elem_emax, s_emin,
                                        s_emax)
                    exps[item] = e
                if e == _NAN_EXP:
                    for i in range(ufirst, ustop):
                        outb[i] = NAN
                    flags[item] = 0
                    continue
                k = e - s_emin
                if table[k, 0] == 0:
                    flags[item] = -1
                    continue
                # The row as a tuple: its values stay in registers through the loop.
                fast = (table[k, 0], table[k, 1], table[k, 2], table[k, 3], table[k, 4],
                        table[k, 5], table[k, 6], table[k, 7], table[k, 8], table[k, 9],
                        table[k, 10], table[k, 11], table[k, 12])
                low = U(0)
                for i in range(ufirst, ustop):
                    bits = xb[i]
                    a = U(bits & ABS)
                    rare = (a != U(0)) & (a < A_LO)
                    outb[i] = select(rare, SENTINEL, round_lane(MODE, bits, fast, U(0), U(W)))
                    low += U(rare)
                flags[item] = np.int32(low)

    return one_pass


@functools.lru_cache(maxsize=64)
def _shifted_table(element: Format, mode: int, c_man: int, c_bias: int, s_emin: int,
                   s_emax: int) -> np.ndarray:
    """Row e - s_emin: the round_lane constants (saturating) of `element` with its exponents
    (fixed point: its fraction bits) shifted by e, for every scale exponent e; a row of zeros
    (disabled) where the shifted format does not fit in the carrier. Read-only (cached)."""
    params = format_params(element)
    utype = CARRIERS[np.dtype(np.float32 if c_man == 23 else np.float64)][2]
    table = np.zeros((s_emax - s_emin + 1, N_FAST), utype)
    c_min_exp = 1 - c_bias - c_man  # exponent of the carrier's smallest subnormal
    for k, e in enumerate(range(s_emin, s_emax + 1)):
        if params[core.P_KIND] == core.KIND_FIXED:  # k * 2^-(frac_bits - e)
            frac = params[core.P_MAN] - e
            magnitude = params[core.P_EMIN] - (1 if params[core.P_SIGNED] else 0)
            if magnitude > c_man + 1 or -frac < c_min_exp or magnitude - frac > c_bias:
                continue
            shifted = (params[0], frac, *params[2:])
        else:
            smallest = params[core.P_EMIN] - (params[core.P_MAN] if params[core.P_SUBNORMALS]
                                              else 0)
            if params[core.P_EMAX] + e > c_bias or smallest + e < c_min_exp:
                continue
            shifted = (*params[:core.P_EMIN], params[core.P_EMIN] + e, params[core.P_EMAX] + e,
                       *params[core.P_EMAX + 1:])
        table[k] = fast_constants(shifted, c_man, c_bias, mode, core.OVF_SATURATE)
    table.flags.writeable = False
    return table


_ONE_PASS: dict = {}


def _one_pass(mode: int, utype: type):
    """The one-pass kernel of (mode, carrier), made on first use."""
    if (mode, utype) not in _ONE_PASS:
        _ONE_PASS[mode, utype] = _make_one_pass(mode, utype)
    return _ONE_PASS[mode, utype]


@njit(parallel=True, cache=True)
def _down_strided(x, xb, y, exps, flags, nb, inner, length, bs, given, c_man, c_bias, inf_bits,
                  threshold, elem_emax, s_emin, s_emax, min_normal, pow_down):
    """_down_last for blocks along any axis of the (outer, length, inner) view (y: x's size)."""
    abs_mask = xb.dtype.type(inf_bits | (inf_bits >> 1) | ((1 << c_man) - 1))
    for item in prange(exps.size):
        start, count, stride = _locate(item, nb, inner, length, bs)
        if given:
            e = exps[item]
        else:
            amax = xb.dtype.type(0)
            for t in range(count):
                amax = max(amax, xb.dtype.type(xb[start + t * stride] & abs_mask))
            e = _block_exponent(amax, c_man, c_bias, inf_bits, threshold, elem_emax, s_emin,
                                s_emax)
            exps[item] = e
        down = y.dtype.type(0.0) if e == _NAN_EXP else pow_down[e - s_emin]
        low = 0
        for t in range(count):
            v = x[start + t * stride] * down
            y[start + t * stride] = v
            low += (abs(v) < min_normal) & (x[start + t * stride] != 0)
        flags[item] = 0 if e == _NAN_EXP else low


@njit(parallel=True, cache=True)
def _up_strided(p, y, out, exps, nb, inner, length, bs, elem_max, finite_max, s_emin,
                pow_up):
    """_up_last for blocks along any axis (p, y, out: x's size)."""
    for item in prange(exps.size):
        start, count, stride = _locate(item, nb, inner, length, bs)
        e = exps[item]
        up = out.dtype.type(np.nan) if e == _NAN_EXP else pow_up[e - s_emin]
        for t in range(count):
            idx = start + t * stride
            v = p[idx]
            v = v if abs(v) <= finite_max else math.copysign(elem_max, y[idx])
            out[idx] = v * up


@njit(cache=True)
def _fix_lanes(x, xb, outb, exps, items, nb, inner, length, bs, c_man, c_bias, params,
               min_normal, mode, sr_bits, seed, sentinel):
    """Round the lanes _down_* flagged (or, with sentinel != 0, the lanes the one-pass kernel
    marked with it), from x itself, to the element grid scaled by 2^e (the element format
    with its exponents, or fixed-point fraction bits, shifted by e), with the scalar core."""
    for item in items:
        start, count, stride = _locate(item, nb, inner, length, bs)
        e = np.int64(exps[item])
        down = x.dtype.type(math.ldexp(1.0, -e))
        if params[core.P_KIND] == core.KIND_FIXED:
            shifted = (params[0], params[1] - e, params[2], params[3], params[4], params[5],
                       params[6], params[7], params[8])
        else:
            shifted = (params[0], params[1], params[2] + e, params[3] + e, params[4], params[5],
                       params[6], params[7], params[8])
        for t in range(count):
            idx = start + t * stride
            v = x[idx] * down
            if sentinel != 0:
                if outb[idx] != sentinel:
                    continue
            elif not (abs(v) < min_normal and x[idx] != 0):
                continue
            word0 = stream_word(seed, np.uint64(idx), np.uint64(0)) << np.uint64(32) \
                if mode == core.SR else np.uint64(0)
            bits = core.quantize_bits(np.uint64(xb[idx]), c_man, c_bias, shifted, mode,
                                      core.OVF_SATURATE, sr_bits, word0, seed, np.int64(idx))
            outb[idx] = outb.dtype.type(bits)


# ---- the public function -------------------------------------------------------------------------
def _geometry(shape: tuple[int, ...], axis: int, bs: int) -> tuple[int, int, int, int]:
    """(outer, length, inner, blocks) of the (outer, length, inner) view of a C-order array."""
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    length = shape[axis]
    return outer, length, inner, -(-length // bs)


def _check_fits(fmt: BlockFormat, dtype: np.dtype) -> None:
    """Every element value times the smallest scale must be a value of the input dtype."""
    c_man, c_bias, _ = CARRIERS[dtype]
    elem = fmt.element
    if isinstance(elem, FixedFormat):
        lowest = -elem.frac_bits
        precision = elem.bits - 1
    else:
        lowest = elem.emin - elem.man_bits if elem.subnormals else elem.emin
        precision = elem.man_bits + 1
    scale_low = fmt.scale.emin if fmt.pow2_scale else 0
    if lowest + scale_low < 2 - c_bias - c_man - 1 or precision > c_man + 1:
        raise ValueError(f"fmt={fmt.name} does not fit in {dtype.name}: its smallest scaled "
                         f"element 2^{lowest + scale_low} (or its precision) is beyond "
                         f"{dtype.name}; use float64 input")


def _threshold(fmt: BlockFormat, c_man: int) -> int:
    """The normalized significand (c_man + 1 bits) above which the scale exponent is raised."""
    never = 1 << (c_man + 1)
    if fmt.scale_rule == "ceil":
        return 1 << c_man
    if fmt.scale_rule == "even":
        m = fmt.elem_precision - 1  # element fraction bits: carry from 2 - 2^-(m + 1) up
        if m + 1 > c_man:
            return never
        return (1 << (c_man + 1)) - (1 << (c_man - m - 1)) - 1
    if fmt.scale_rule == "rceil":
        # Exceeding elem_max * 2^e means a significand above elem_max / 2^elem_emax.
        return int(Fraction(fmt.elem_max) / Fraction(2) ** fmt.elem_emax * (1 << c_man))
    return never


@njit(parallel=True, cache=True)
def _block_amax(xb, amax, nb, inner, length, bs, abs_mask):
    """amax[item] = the largest |x| bit pattern of 1-D block `item` (NaN and Inf are above every
    finite pattern, so a tile's maximum of these is its own amax pattern)."""
    for item in prange(amax.size):
        start, count, stride = _locate(item, nb, inner, length, bs)
        a = xb.dtype.type(0)
        for t in range(count):
            a = max(a, xb.dtype.type(xb[start + t * stride] & abs_mask))
        amax[item] = a


@njit(cache=True)
def _exponents(amax, exps, c_man, c_bias, inf_bits, threshold, elem_emax, s_emin, s_emax):
    """exps[i] = _block_exponent of the amax pattern amax[i]."""
    for i in range(amax.size):
        exps[i] = _block_exponent(amax[i], c_man, c_bias, inf_bits, threshold, elem_emax,
                                  s_emin, s_emax)


class _Tiles:
    """The tiles of a block format over an array: maps between per-1-D-block arrays (outer, nb,
    inner), per-tile arrays (the scale shape: x's shape with the block axis holding one entry
    per block and, for 2-D tiles, the cross axis one per tile) and per-element arrays.

    A 2-D tile is block_rows consecutive 1-D blocks across the block axis (along `cross`), so
    every per-tile quantity is a reduction over those blocks; 1-D formats have cross None and
    tiles that are the blocks themselves."""

    def __init__(self, shape: tuple[int, ...], axis: int, cross: int | None, fmt: BlockFormat):
        self.shape = shape
        self.axis = axis
        self.cross = cross
        self.rows = fmt.block_rows
        self.bs = fmt.block_size
        self.outer, self.length, self.inner, self.nb = _geometry(shape, axis, fmt.block_size)
        self.block_shape = (*shape[:axis], self.nb, *shape[axis + 1:])
        tile_shape = list(self.block_shape)
        if cross is not None:
            tile_shape[cross] = -(-shape[cross] // self.rows)
        self.tile_shape = tuple(tile_shape)

    def reduce(self, per_block: np.ndarray) -> np.ndarray:
        """Per-tile maxima of a per-block (outer, nb, inner) array (any: bool arrays)."""
        b = per_block.reshape(self.block_shape)
        if self.cross is None:
            return b
        c = self.cross
        n = self.shape[c]
        nt = self.tile_shape[c]
        if nt * self.rows != n:  # an edge tile: pad with zeros (neutral for max of |x|, any)
            pad = [(0, 0)] * b.ndim
            pad[c] = (0, nt * self.rows - n)
            b = np.pad(b, pad)
        return b.reshape(*b.shape[:c], nt, self.rows, *b.shape[c + 1:]).max(axis=c + 1)

    def to_blocks(self, per_tile: np.ndarray) -> np.ndarray:
        """A per-tile array repeated onto the (outer, nb, inner) blocks."""
        b = per_tile
        if self.cross is not None:
            c = self.cross
            b = np.repeat(b, self.rows, axis=c).take(np.arange(self.shape[c]), axis=c)
        return b.reshape(self.outer, self.nb, self.inner)

    def to_elements(self, per_tile: np.ndarray) -> np.ndarray:
        """A per-tile array repeated onto x's elements (x's shape)."""
        return _block_to_elements(self.to_blocks(per_tile), self.bs,
                                  self.length).reshape(self.shape)


def _tile_exponents(flat: np.ndarray, xb: np.ndarray, tiles: _Tiles, consts: tuple) -> np.ndarray:
    """Per-block exponents (outer * nb * inner, int32) where each block takes its tile's: the
    exponent of the tile's amax (the largest of its blocks' amax patterns), as the 1-D kernels
    would find it for a block holding the whole tile."""
    c_man, c_bias, inf_bits, threshold, elem_emax, s_emin, s_emax = consts[:7]
    utype = xb.dtype.type
    abs_mask = utype(inf_bits | (inf_bits >> 1) | ((1 << c_man) - 1))
    amax = np.empty(tiles.outer * tiles.nb * tiles.inner, xb.dtype)
    _block_amax(xb, amax, tiles.nb, tiles.inner, tiles.length, tiles.bs, abs_mask)
    tile_amax = np.ascontiguousarray(tiles.reduce(amax.reshape(tiles.outer, tiles.nb,
                                                               tiles.inner))).reshape(-1)
    exps = np.empty(tile_amax.size, np.int32)
    _exponents(tile_amax, exps, c_man, c_bias, inf_bits, threshold, elem_emax, s_emin, s_emax)
    return np.ascontiguousarray(tiles.to_blocks(exps.reshape(tiles.tile_shape))).reshape(-1)


def _pow2_blocks(x: np.ndarray, fmt: BlockFormat, axis: int, rounding: str,
                 sr_bits: int | None, seed: int, keep_p: bool, out: np.ndarray | None = None,
                 tiles: _Tiles | None = None):
    """(values, exps, p): values in x's dtype, block exponents (outer, nb, inner), and the
    element values p (x's shape; None unless keep_p).

    2-D tiles (tiles.cross set): the tile exponents are found first (_tile_exponents) and
    given to the same kernels, which then only round.

    rne along the last axis (without keep_p) takes the one-pass kernel. Otherwise three steps
    (scale down, refsim.quantize, scale up); blocks along the last axis go tile by tile
    (_TILE elements, whole blocks), so that the scaled input and the rounded elements stay in
    cache between the steps; the tiles are rounded by refsim.quantize, whose stream index is
    the position in the tile, so sr (whose index must be the position in x) and keep_p take
    one tile holding everything.
    """
    c_man, c_bias, utype = CARRIERS[x.dtype]
    outer, length, inner, nb = _geometry(x.shape, axis, fmt.block_size)
    bs = fmt.block_size
    flat = np.ascontiguousarray(x).reshape(-1)
    xb = flat.view(utype)
    n_items = outer * nb * inner
    flags = np.empty(n_items, np.int32)
    inf_bits = (2 * c_bias + 1) << c_man
    min_normal = float(np.ldexp(1.0, 1 - c_bias))
    s_emin, s_emax = fmt.scale.emin, fmt.scale.emax
    span = np.arange(s_emin, s_emax + 1)
    pow_down = np.ldexp(1.0, -span).astype(x.dtype)  # exact: |e| <= 127
    pow_up = np.ldexp(1.0, span).astype(x.dtype)
    consts = (c_man, c_bias, inf_bits, _threshold(fmt, c_man), fmt.elem_emax, s_emin, s_emax,
              min_normal, pow_down)
    given = tiles is not None and tiles.cross is not None
    exps = _tile_exponents(flat, xb, tiles, consts) if given and tiles is not None \
        else np.empty(n_items, np.int32)
    elem_max = x.dtype.type(fmt.elem_max)
    finite_max = np.finfo(x.dtype).max  # only an overflow makes p non-finite
    if out is None or not out.flags.c_contiguous or np.shares_memory(out, x):
        out = np.empty_like(flat)
    else:
        out = out.reshape(-1)
    p_all = None
    mode = ROUNDINGS.index(rounding)
    # One pass for rne (the mode MX hardware rounds in): each mode is its own compiled kernel,
    # and compiling all of them costs about a minute; the other modes take the three steps.
    if inner == 1 and not keep_p and rounding == "rne":
        params = format_params(fmt.element)
        table = _shifted_table(fmt.element, mode, c_man, c_bias, s_emin, s_emax)
        if table[:, F_ENABLED].any():
            _one_pass(mode, utype)(xb, out.view(utype), exps, flags, nb, length, bs, given,
                                   consts[3], consts[4], s_emin, s_emax, table)
            if not (flags < 0).any():
                items = np.flatnonzero(flags)
                if items.size:
                    _fix_lanes(flat, xb, out.view(utype), exps, items, nb, 1, length, bs,
                               c_man, c_bias, params, min_normal, mode, 0, np.uint64(0),
                               _SENTINEL[utype])
                return out.reshape(x.shape), exps.reshape(outer, nb, inner), None
    if inner == 1:
        whole = rounding == "sr" or keep_p
        per_tile = n_items if whole else max(1, _TILE // bs)
        y = np.empty(flat.size if whole else min(flat.size, per_tile * bs), x.dtype)
        p = np.empty_like(y)
        for lo in range(0, n_items, per_tile):
            hi = min(n_items, lo + per_tile)
            base = _span(lo, nb, length, bs)[0]
            size = _span(hi - 1, nb, length, bs)[1] - base
            _down_last(flat, xb, y, exps, flags, lo, hi, base, nb, length, bs, given, *consts)
            quantize(y[:size], fmt.element, rounding, sr_bits=sr_bits, seed=seed, out=p[:size])
            if keep_p:
                p_all = p.copy()
            _up_last(p, y, out, exps, lo, hi, base, nb, length, bs, elem_max, finite_max, s_emin,
                     pow_up)
    else:
        y = np.empty_like(flat)
        _down_strided(flat, xb, y, exps, flags, nb, inner, length, bs, given, *consts)
        p = quantize(y, fmt.element, rounding, sr_bits=sr_bits, seed=seed)
        if keep_p:
            p_all = p.copy()
        _up_strided(p, y, out, exps, nb, inner, length, bs, elem_max, finite_max, s_emin,
                    pow_up)
    if p_all is not None:  # saturate p as _up_* did
        p_all = np.where(np.isfinite(p_all), p_all, np.copysign(elem_max, y))
    items = np.flatnonzero(flags)
    if items.size:
        _fix_lanes(flat, xb, out.view(utype), exps, items, nb, inner, length, bs, c_man, c_bias,
                   format_params(fmt.element), min_normal, ROUNDINGS.index(rounding),
                   sr_bits or 0, np.uint64(seed), utype(0))
        if p_all is not None:
            e_full = _block_to_elements(exps.reshape(outer, nb, inner), bs, length).reshape(-1)
            fixed = _block_to_elements(np.isin(np.arange(n_items), items).reshape(
                outer, nb, inner), bs, length).reshape(-1)
            e_full = np.where(e_full == _NAN_EXP, s_emin, e_full)
            with np.errstate(all="ignore"):  # the same test as _down_*, in the carrier
                low = np.abs(flat * pow_down[e_full - s_emin]) < min_normal
            lanes = fixed & low & (flat != 0)
            p_all[lanes] = np.ldexp(out[lanes].astype(np.float64), -e_full[lanes])
    return out.reshape(x.shape), exps.reshape(outer, nb, inner), \
        None if p_all is None else p_all.reshape(x.shape)


def _block_to_elements(per_block: np.ndarray, bs: int, length: int) -> np.ndarray:
    """(outer, nb, inner) block values repeated onto (outer, length, inner) element positions."""
    return np.repeat(per_block, bs, axis=1)[:, :length, :]


# ---- non-power-of-two scales (NVFP4, fp32) ------------------------------------------------------
def _tensor_scale(x: np.ndarray, fmt: BlockFormat) -> float:
    """fp32 per-tensor scale: amax / (scale max * elem max) to nearest (1 for amax 0); 4over6
    takes FOUR_OVER_SIX_SCALE_MAX for the scale max."""
    if not fmt.tensor_scale:
        return 1.0
    finite = np.isfinite(x)
    amax = float(np.abs(x[finite]).max()) if finite.any() else 0.0
    if amax == 0:
        return 1.0
    scale_max = FOUR_OVER_SIX_SCALE_MAX if fmt.scale_rule == "4over6" else fmt.scale.max
    scale = fp32_nearest(Fraction(amax) / (Fraction(scale_max) * Fraction(fmt.elem_max)))
    if not np.isfinite(scale):
        raise ValueError(f"the per-tensor scale of amax={amax} is beyond float32 for {fmt.name}")
    return scale or float(np.ldexp(1.0, -149))


def _value_blocks(x: np.ndarray, fmt: BlockFormat, tiles: _Tiles, rounding: str,
                  sr_bits: int | None, seed: int):
    """(values, tile scales (tiles.tile_shape), p, tensor scale) for a non-power-of-two scale."""
    outer, length, inner, nb = tiles.outer, tiles.length, tiles.inner, tiles.nb
    with np.errstate(invalid="ignore"):  # a signaling NaN widens to a NaN: nothing is lost
        x64 = np.ascontiguousarray(x, dtype=np.float64)
    x3 = x64.reshape(outer, length, inner)
    pad = nb * fmt.block_size - length
    padded = np.concatenate([x3, np.zeros((outer, pad, inner))], axis=1) if pad else x3
    blocks = padded.reshape(outer, nb, fmt.block_size, inner)
    finite = np.isfinite(blocks)
    bad = tiles.reduce(~finite.all(axis=2))
    amax = tiles.reduce(np.where(finite, np.abs(blocks), 0).max(axis=2))
    s_t = _tensor_scale(x64, fmt)
    mode = "rup" if fmt.scale_rule == "rceil" else "rne"

    def candidate(target: float):
        """(tile scales, per-element divisor, elements) with the tiles' max mapped to target."""
        ideal = exact_quotient(amax, target * s_t)  # target * s_t is exact (<= 28 bits)
        s_b = quantize(ideal, fmt.scale, mode, overflow="saturate")
        s_b = np.where((s_b == 0) & (amax > 0), fmt.scale.min_subnormal, s_b)  # never zero
        divisor = tiles.to_elements(np.where(bad | (s_b == 0), 1.0, s_b)) * s_t
        p = quantize(exact_quotient(x64, divisor), fmt.element, rounding,
                     overflow="saturate", sr_bits=sr_bits, seed=seed)
        return s_b, divisor, p

    s_b, divisor, p = candidate(fmt.elem_max)
    nan = tiles.to_elements(bad)
    if fmt.scale_rule == "4over6":
        s_4, divisor_4, p_4 = candidate(4.0)
        with np.errstate(all="ignore"):  # NaN tiles: their elements are NaN, whichever wins
            four = _four_wins(x64, p * divisor, p_4 * divisor_4, nan, tiles) & ~bad
        s_b = np.where(four, s_4, s_b)
        chosen = tiles.to_elements(four)
        p = np.where(chosen, p_4, p)
        divisor = np.where(chosen, divisor_4, divisor)
    p = np.where(nan, 0.0, p)
    with np.errstate(over="ignore"):
        values = np.where(nan, np.nan, p * divisor).astype(x.dtype)  # one rounding
    return values, np.where(bad, np.nan, s_b), p, s_t


_U = 2.0**-53  # float64's unit roundoff


def _four_wins(x: np.ndarray, d6: np.ndarray, d4: np.ndarray, nan: np.ndarray,
               tiles: _Tiles) -> np.ndarray:
    """Per tile: is the 4-candidate's sum of squared errors sum (d4 - x)^2 strictly below the
    6-candidate's, exactly? (d4, d6: the dequantized elements, exact float64 values.)

    The difference of the two sums is S = sum (d6 - d4) * (2x - d4 - d6) over the tile, and 4
    wins iff S < 0. It is computed in float64 first, with an error bound: each term takes 4
    roundings (relative error <= 4.01u, u = 2^-53, plus at most 2^-1075 from an underflowing
    product), the sum n - 1 more (recursive summation, Higham, Accuracy and Stability of
    Numerical Algorithms, 2nd ed., section 4.2), so |S_computed - S| <= (n + 4) * 1.01u *
    sum M_i + n * 2^-1074, M_i = (|d4| + |d6|) * (2|x| + |d4| + |d6|); twice that is taken as
    the bound (covering the bound's own roundings). Where |S_computed| exceeds it the sign is
    certain (the filter of adaptive predicates, Shewchuk 1997); a tile whose candidates agree
    on every element has S = 0 exactly (a tie: 6). The rest, near-ties, are summed exactly
    with Fractions.
    """
    ids = tiles.to_elements(np.arange(int(np.prod(tiles.tile_shape))).reshape(
        tiles.tile_shape)).reshape(-1)
    live = ~nan.reshape(-1)
    x, d6, d4 = x.reshape(-1), d6.reshape(-1), d4.reshape(-1)
    n_tiles = int(np.prod(tiles.tile_shape))
    diff = d6 - d4
    terms = diff * ((2 * x - d4) - d6)
    mags = (np.abs(d4) + np.abs(d6)) * (2 * np.abs(x) + np.abs(d4) + np.abs(d6))
    per = tiles.rows * tiles.bs  # elements per tile at most
    sums = np.bincount(ids[live], weights=terms[live], minlength=n_tiles)
    bound = 2 * (per + 4) * 1.01 * _U * np.bincount(ids[live], weights=mags[live],
                                                      minlength=n_tiles) + per * 2.0**-1070
    differs = np.bincount(ids[live], weights=(diff[live] != 0), minlength=n_tiles) > 0
    sure = np.abs(sums) > bound  # False for NaN (an overflow): summed exactly below
    four = differs & sure & (sums < 0)
    for tile in np.flatnonzero(differs & ~sure):
        lanes = np.flatnonzero((ids == tile) & live)
        exact = sum((Fraction(float(d6[i])) - Fraction(float(d4[i])))
                    * (2 * Fraction(float(x[i])) - Fraction(float(d4[i]))
                       - Fraction(float(d6[i]))) for i in lanes)
        four[tile] = exact < 0
    return four.reshape(tiles.tile_shape)


def quantize_blocks(x, fmt: BlockFormat | str, rounding: str = "rne", *, axis: int | None = None,
                    sr_bits: int | None = None, seed: int = 0, return_codes: bool = False,
                    out: np.ndarray | None = None):
    """Quantize x to a block format: one scale per block, elements rounded and saturated.

    Args:
        x: NumPy float32/float64 array (at least 1-D).
        fmt: a BlockFormat or a name of refsim.formats.NAMED_BLOCKS ("mxfp8_e4m3", ...).
        rounding: rne, rna, rtz, rup, rdn, rto or sr (the elements; scales follow the rule).
        axis: the axis blocks run along; None takes fmt.axis. With 2-D tiles (fmt.block_rows >
            1) one of the last two axes; the tiles' other side runs along the other one.
        sr_bits: for sr: None (every discarded bit) or 1..64; with a non-power-of-two scale
            (nvfp4, fp32) 1..16.
        seed: 0..2^64-1, the stream key (sr only); element i uses flat C-order index i of x.
        return_codes: return a BlockQuantized (values, element codes, scales, scale codes).
        out: optional array of x's dtype and shape for the values (may be x itself).

    Returns:
        The dequantized values (x's dtype and shape; out, if given), or a BlockQuantized
        (scales: x's shape with the block axis, and for 2-D tiles the other of the last two,
        holding one entry per block).
    """
    fmt = get_block_format(fmt)
    x = check_array(x)
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension; got a 0-d array")
    axis = check_axis(fmt.axis if axis is None else axis, x.ndim)
    assert axis is not None
    check_rounding(rounding)
    check_sr_bits(sr_bits, rounding)
    seed = check_seed(seed)
    check_scaled_sr_bits(rounding, sr_bits, fmt.pow2_scale)
    _check_fits(fmt, x.dtype)
    out = check_out(out, x)
    tiles = _Tiles(x.shape, axis, _cross_axis(fmt, x.ndim, axis), fmt)
    length = tiles.length
    scale_shape = tiles.tile_shape
    if x.size == 0:  # no element, so no block has a scale: empty results of the right shapes
        values = x.copy() if out is None else out
        if not return_codes:
            return values
        scales = np.empty(scale_shape, np.float64)
        return BlockQuantized(values, np.empty(x.shape, np.uint64), scales,
                              np.empty(scale_shape, np.uint64), 1.0)
    if fmt.pow2_scale:
        values, exps, p = _pow2_blocks(x, fmt, axis, rounding, sr_bits, seed, return_codes, out,
                                       tiles)
        values = _into(values, out)
        if not return_codes:
            return values
        nan = exps == _NAN_EXP
        scales = np.where(nan, np.nan, np.ldexp(1.0, np.where(nan, 0, exps)))
        scales = tiles.reduce(scales)  # the blocks of a tile share its scale: any one is it
        tensor_scale = 1.0
        assert p is not None
        p = np.where(_block_to_elements(nan, fmt.block_size, length).reshape(x.shape), 0.0, p)
    else:
        values, scales, p, tensor_scale = _value_blocks(x, fmt, tiles, rounding, sr_bits, seed)
        values = _into(values, out)
        if not return_codes:
            return values
    scales = scales.reshape(scale_shape)
    return BlockQuantized(values, fmt.element.encode(np.asarray(p, np.float64)), scales,
                          fmt.scale.encode(scales), tensor_scale)


def _cross_axis(fmt: BlockFormat, ndim: int, axis: int) -> int | None:
    """The axis a 2-D tile's block_rows side runs along (the other of the last two), or None."""
    if fmt.block_rows == 1:
        return None
    if ndim < 2:
        raise ValueError(f"fmt={fmt.name} has 2-D tiles ({fmt.block_rows}x{fmt.block_size}) over "
                         f"the last two axes; x must have at least 2 dimensions, got {ndim}")
    if axis not in (ndim - 1, ndim - 2):
        raise ValueError(f"fmt={fmt.name} has 2-D tiles ({fmt.block_rows}x{fmt.block_size}) over "
                         f"the last two axes: axis must be -1 or -2 (of {ndim}); got axis={axis}")
    return ndim - 2 if axis == ndim - 1 else ndim - 1


def _into(values: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """values written into out (when given and not already there)."""
    if out is None:
        return values
    if not np.shares_memory(values, out):
        out[...] = values
    return out


def cast_operand(x: np.ndarray, cast, seed: int, axis: int) -> np.ndarray:
    """x rounded by a spec Cast: refsim.quantize, or quantize_blocks along `axis` when the
    Cast's format is a BlockFormat (matmul: a's last axis and b's second-to-last, i.e. K)."""
    fmt: Format | BlockFormat = cast.fmt
    if isinstance(fmt, BlockFormat):
        return quantize_blocks(x, fmt, cast.rounding, axis=axis, sr_bits=cast.sr_bits,
                               seed=seed)
    return quantize(x, fmt, cast.rounding, overflow=cast.overflow, sr_bits=cast.sr_bits,
                    seed=seed)
