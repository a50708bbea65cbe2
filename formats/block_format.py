"""BlockFormat: elements in a small format that share one scale per block of `block_size`.

A block format describes the encoding only (element format, scale format, how the scale is chosen
from the block's absolute maximum, the axis the blocks run along, and for 2-D tiles their extent
across it); how elements are rounded (rne, sr, ...) is policy, given to
refsim.blocks.quantize_blocks. Semantics: docs/blocks.md.

Usage rules:
  - Power-of-two scales (a scale format with man_bits=0, OCP E8M0) take the rules "floor" (OCP MX
    v1.0), "ceil", "even" and "rceil"; other scale formats (E4M3 as NVFP4, fp32 as DeepSeek-V3)
    take "nearest" and "rceil", and "4over6" (arXiv:2512.02010) with e2m1 elements.
    tensor_scale=True adds a per-tensor fp32 scale (NVFP4), only with a non-power-of-two scale.
  - block_rows > 1 makes each block a 2-D tile of block_rows x block_size over the last two axes:
    block_size elements along `axis` (which must then be one of the last two), block_rows along
    the other one. BlockFormat(e, 16, block_rows=16) is NVFP4's 16x16 weight tile.
  - Named formats: NAMED_BLOCKS; get_block_format(name) returns them, get_block_format(fmt)
    returns a BlockFormat unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from refsim.formats.fixed_format import FixedFormat
from refsim.formats.float_format import FloatFormat
from refsim.formats.registry import Format, get_format

POW2_RULES: tuple[str, ...] = ("floor", "ceil", "even", "rceil")
"""Rules of a power-of-two scale 2^e (emax_elem: exponent of the element's largest binade):
floor: e = floor(log2 amax) - emax_elem (OCP MX v1.0); ceil: e = ceil(log2 amax) - emax_elem;
even: e = floor(log2 amax') - emax_elem, amax' = amax rounded (to nearest) to the element's
precision, so a block max that would round up past the element's top binade moves the scale up;
rceil: the smallest e with amax <= elem_max * 2^e (the ideal scale amax / elem_max rounded up)."""

VALUE_RULES: tuple[str, ...] = ("nearest", "rceil", "4over6")
"""Rules of a scale format with mantissa bits (E4M3, fp32): the ideal scale amax / (elem_max *
tensor_scale) rounded to the scale format, to nearest even (nearest) or upward (rceil); 4over6
(e2m1 elements only): the nearest scales of amax / (6 * tensor_scale) and amax / (4 *
tensor_scale), whichever block has the smaller exact sum of squared errors (a tie takes 6)."""

SCALED_MAX_ELEMENT_BITS = 8
"""With a non-power-of-two scale the element may have at most this many significant bits (FP8,
FP6, FP4, int8): refsim.scaling.exact_quotient keeps 25 or more significant bits of x / scale,
which every deterministic rounding, and sr with sr_bits <= 16, of such an element needs."""

SCALED_MAX_DIVISOR_BITS = 28
"""With a non-power-of-two scale, the significant bits of block scale x tensor scale (the
divisor of refsim.scaling.exact_quotient) may be at most this many: an E4M3 scale (4) under an
fp32 tensor scale (24), or an fp32 scale (24) alone."""

FOUR_OVER_SIX_SCALE_MAX = 256
"""4over6's tensor scale is amax / (6 * 256), not amax / (6 * 448): the 4-candidate's block scale
amax_b / (4 * s_t) is then at most 384, within E4M3 (arXiv:2512.02010; its code's
E4M3_MAX_FOUROVERSIX)."""


E8M0 = FloatFormat(8, 0, subnormals=False, specials="fn", signed=False, zero=False)
"""The OCP MX scale format (e8m0fnu): 2^-127 .. 2^127, 0xFF is NaN."""


def _int_field(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {value!r}")
    return int(value)


@dataclass(frozen=True)
class BlockFormat:
    """Blocks of `block_size` elements along `axis` (2-D tiles: times `block_rows` across it),
    each block with one scale.

    Args:
        element: the element format (object or name): a signed FloatFormat with a zero, or a
            signed FixedFormat (integer elements; mxint8 is FixedFormat(8, 6)).
        block_size: elements per block (>= 1). A last block shorter than block_size (the axis
            length is not a multiple) is a block of its own, scaled from its own elements.
        scale: the scale format (object or name), e8m0fnu for MX, e4m3fn for NVFP4.
        scale_rule: how the scale is chosen from the block's absolute maximum: POW2_RULES for a
            power-of-two scale format (man_bits 0), VALUE_RULES otherwise.
        axis: the axis the blocks run along (checked against the input's rank when used).
        tensor_scale: a second, per-tensor fp32 scale (NVFP4); non-power-of-two scales only.
        block_rows: 1 (1-D blocks), or the extent of a 2-D tile across `axis`: a tile is
            block_rows x block_size elements of the last two axes (leading axes are batch),
            block_size of them along `axis`, block_rows along the other of the last two. Edge
            tiles (a dimension not a multiple) are tiles of their own. In a GemmSpec operand
            the block_size side runs along K (a: (M, K) tiles of block_rows x block_size; b:
            (K, N) tiles of block_size x block_rows).
    """

    element: Format
    block_size: int = 32
    scale: FloatFormat = E8M0
    scale_rule: str = "floor"
    axis: int = -1
    tensor_scale: bool = False
    block_rows: int = 1

    def __post_init__(self) -> None:
        element = _format(self.element, "BlockFormat.element")
        object.__setattr__(self, "element", element)
        if isinstance(element, FloatFormat):
            if not element.signed or not element.zero:
                raise ValueError(f"BlockFormat.element must be a signed format with a zero; "
                                 f"got {element.name}")
        elif not element.signed:
            raise ValueError(f"BlockFormat.element must be signed; got {element.name}")
        block_size = _int_field(self.block_size, "BlockFormat.block_size")
        if block_size <= 0:
            raise ValueError(f"BlockFormat.block_size must be a positive int; got {block_size}")
        object.__setattr__(self, "block_size", block_size)
        block_rows = _int_field(self.block_rows, "BlockFormat.block_rows")
        if block_rows <= 0:
            raise ValueError(f"BlockFormat.block_rows must be a positive int (1: 1-D blocks); "
                             f"got {block_rows}")
        object.__setattr__(self, "block_rows", block_rows)
        scale = _format(self.scale, "BlockFormat.scale")
        if not isinstance(scale, FloatFormat):
            raise ValueError(f"BlockFormat.scale must be a floating-point format (e8m0fnu, "
                             f"e4m3fn, ...); got the fixed-point {scale.name}")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "axis", _int_field(self.axis, "BlockFormat.axis"))
        if not isinstance(self.tensor_scale, bool):
            raise TypeError(f"BlockFormat.tensor_scale must be a bool; got {self.tensor_scale!r}")
        rules = POW2_RULES if self.pow2_scale else VALUE_RULES
        if not isinstance(self.scale_rule, str) or self.scale_rule not in rules:
            kind = "a power-of-two" if self.pow2_scale else "a non-power-of-two"
            raise ValueError(f"BlockFormat.scale_rule must be one of {', '.join(rules)} for "
                             f"{kind} scale format ({scale.name}); got {self.scale_rule!r}")
        if self.tensor_scale and self.pow2_scale:
            raise ValueError("BlockFormat.tensor_scale applies to non-power-of-two scale formats "
                             f"(e4m3fn, as NVFP4) only; got scale={scale.name}")
        if self.scale_rule == "4over6" and (not isinstance(element, FloatFormat)
                                            or float(element.max) != 6.0 or element.man_bits != 1):
            raise ValueError(f"BlockFormat.scale_rule '4over6' needs e2m1 elements (max 6, the "
                             f"candidates map a block's max to 6 or 4); got {element.name}")
        self._check_serves()

    def _check_serves(self) -> None:
        """Raise unless every element value times every scale value is an exact float64."""
        lo_e, hi_e = _exponent_span(self.element)
        lo_s, hi_s = _exponent_span(self.scale)
        if self.tensor_scale:  # an fp32 per-tensor scale: 2^-149 .. 2^128
            lo_s, hi_s = lo_s - 149, hi_s + 128
        if lo_e + lo_s < -1074 or hi_e + hi_s > 1024:
            raise ValueError(
                f"BlockFormat: scale {self.scale.name} cannot serve element {self.element.name}: "
                f"scaled values span 2^{lo_e + lo_s}..2^{hi_e + hi_s}, beyond float64 (the "
                "carrier), which holds 2^-1074..2^1024"
            )
        if not self.pow2_scale:
            if _man_bits(self.element) + 1 > SCALED_MAX_ELEMENT_BITS:
                raise ValueError(
                    f"BlockFormat: with the non-power-of-two scale {self.scale.name}, the element "
                    f"may have at most {SCALED_MAX_ELEMENT_BITS} significant bits (FP8/FP6/FP4, "
                    f"int8); got {self.element.name} with {_man_bits(self.element) + 1}")
            divisor = self.scale.man_bits + 1 + (24 if self.tensor_scale else 0)
            if divisor > SCALED_MAX_DIVISOR_BITS:
                raise ValueError(
                    f"BlockFormat: block scale x tensor scale may have at most "
                    f"{SCALED_MAX_DIVISOR_BITS} significant bits (e4m3fn under an fp32 tensor "
                    f"scale, or fp32 alone); got scale={self.scale.name} ("
                    f"{self.scale.man_bits + 1} bits)"
                    + (" with tensor_scale (24 bits)" if self.tensor_scale else ""))

    # ---- derived constants ----------------------------------------------------------------------
    @property
    def pow2_scale(self) -> bool:
        """Is every scale a power of two (scale man_bits 0, as E8M0)?"""
        return self.scale.man_bits == 0

    @property
    def tile(self) -> tuple[int, int]:
        """(block_rows, block_size): the tile across and along the block axis ((1, n): 1-D)."""
        return self.block_rows, self.block_size

    @cached_property
    def elem_max(self) -> float:
        """Largest element value."""
        return float(self.element.max)

    @cached_property
    def elem_emax(self) -> int:
        """Exponent of the element's largest binade: floor(log2 elem_max) (8 for e4m3fn, 0 for
        mxint8's FixedFormat(8, 6))."""
        return int(np.frexp(self.elem_max)[1]) - 1

    @cached_property
    def elem_precision(self) -> int:
        """Significant bits of the element's top binade (man_bits + 1; 7 for int8 elements)."""
        if isinstance(self.element, FixedFormat):
            return self.element.k_max.bit_length()
        return self.element.man_bits + 1

    @cached_property
    def name(self) -> str:
        """The registry name (NAMED_BLOCKS), or a spelling of the fields."""
        for key, named in NAMED_BLOCKS.items():
            if named == self:
                return key
        for key, named in NAMED_BLOCKS.items():
            if named == self.with_axis(named.axis):
                return f"{key}(axis={self.axis})"
        size = (f"{self.block_rows}x{self.block_size}" if self.block_rows > 1
                else str(self.block_size))
        text = f"block({self.element.name},{size},{self.scale.name},{self.scale_rule}"
        if self.axis != -1:
            text += f",axis={self.axis}"
        if self.tensor_scale:
            text += ",tensor_scale"
        return text + ")"

    def __str__(self) -> str:
        return self.name

    def with_axis(self, axis: int) -> BlockFormat:
        """The same format with blocks along `axis`."""
        return BlockFormat(self.element, self.block_size, self.scale, self.scale_rule, axis,
                           self.tensor_scale, self.block_rows)

    def to_dict(self) -> dict:
        """Fields as plain data (format names); from_dict() reads it back."""
        data = {"kind": "block", "element": self.element.name, "block_size": self.block_size,
                "scale": self.scale.name, "scale_rule": self.scale_rule, "axis": self.axis,
                "tensor_scale": self.tensor_scale}
        if self.block_rows != 1:  # 1-D formats keep the dict (and TOML) they always had
            data["block_rows"] = self.block_rows
        return data

    @classmethod
    def from_dict(cls, data: dict) -> BlockFormat:
        fields = dict(data)
        fields.pop("kind", None)
        allowed = ("element", "block_size", "scale", "scale_rule", "axis", "tensor_scale",
                   "block_rows")
        unknown = sorted(set(fields) - set(allowed))
        if unknown:
            raise ValueError(f"BlockFormat: unknown keys {', '.join(unknown)} (allowed: "
                             f"{', '.join(allowed)})")
        if "element" not in fields:
            raise ValueError("BlockFormat: element is required")
        return cls(**fields)


def _format(value: object, name: str) -> Format:
    try:
        return get_format(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name}: {exc}") from None


def _man_bits(fmt: Format) -> int:
    """Mantissa bits below the leading bit of the top binade (int8 elements: 6)."""
    if isinstance(fmt, FixedFormat):
        return fmt.k_max.bit_length() - 1
    return fmt.man_bits


def _exponent_span(fmt: Format) -> tuple[int, int]:
    """(lowest bit, highest bit + 1): every value is a multiple of 2^lo and below 2^hi."""
    if isinstance(fmt, FixedFormat):
        return -fmt.frac_bits, fmt.bits - fmt.frac_bits
    lo = fmt.emin - fmt.man_bits if fmt.subnormals else fmt.emin
    return lo, fmt.emax + 1


_E2M1 = FloatFormat(2, 1, specials="none")
_E4M3 = FloatFormat(4, 3, specials="fn")
_FP32 = FloatFormat(8, 23)

NAMED_BLOCKS: dict[str, BlockFormat] = {
    # OCP MX v1.0, table 1: blocks of 32, E8M0 scale.
    "mxfp8_e4m3": BlockFormat(FloatFormat(4, 3, specials="fn"), 32, E8M0, "floor"),
    "mxfp8_e5m2": BlockFormat(FloatFormat(5, 2), 32, E8M0, "floor"),
    "mxfp6_e3m2": BlockFormat(FloatFormat(3, 2, specials="none"), 32, E8M0, "floor"),
    "mxfp6_e2m3": BlockFormat(FloatFormat(2, 3, specials="none"), 32, E8M0, "floor"),
    "mxfp4_e2m1": BlockFormat(FloatFormat(2, 1, specials="none"), 32, E8M0, "floor"),
    # MXINT8: two's-complement int8 with an implicit scale 2^-6 (values -2 .. 1.984375).
    "mxint8": BlockFormat(FixedFormat(8, 6), 32, E8M0, "floor"),
    # NVFP4: FP4 elements, blocks of 16, an E4M3 scale of amax / 6 and a per-tensor fp32 scale.
    "nvfp4": BlockFormat(FloatFormat(2, 1, specials="none"), 16, FloatFormat(4, 3, specials="fn"),
                         "nearest", tensor_scale=True),
    # Block floating point: int8 integers sharing an 8-bit exponent, blocks of 16.
    "bfp8": BlockFormat(FixedFormat(8, 0), 16, E8M0, "floor"),
    # MXFP8 with the scale rounded up (cuBLAS, torchao RCEIL): no element saturates.
    "mxfp8_e4m3_rceil": BlockFormat(_E4M3, 32, E8M0, "rceil"),
    # NVIDIA's NVFP4 training recipe (arXiv:2509.25149): 16x16 weight tiles.
    "nvfp4_16x16": BlockFormat(_E2M1, 16, _E4M3, "nearest", tensor_scale=True, block_rows=16),
    # Four over six (arXiv:2512.02010): each block's max maps to 6 or to 4, the better one.
    "nvfp4_4over6": BlockFormat(_E2M1, 16, _E4M3, "4over6", tensor_scale=True),
    "nvfp4_4over6_16x16": BlockFormat(_E2M1, 16, _E4M3, "4over6", tensor_scale=True,
                                      block_rows=16),
    # DeepSeek-V3 FP8 (arXiv:2412.19437): activations per 1x128 group, weights per 128x128 tile,
    # e4m3 with fp32 scales amax / 448 ...
    "deepseek_1x128": BlockFormat(_E4M3, 128, _FP32, "nearest"),
    "deepseek_128x128": BlockFormat(_E4M3, 128, _FP32, "nearest", block_rows=128),
    # ... and with UE8M0 scales, 2^ceil(log2(amax / 448)) (DeepSeek-V3.1's scale_fmt "ue8m0").
    "deepseek_1x128_ue8m0": BlockFormat(_E4M3, 128, E8M0, "rceil"),
    "deepseek_128x128_ue8m0": BlockFormat(_E4M3, 128, E8M0, "rceil", block_rows=128),
}


def get_block_format(value: object) -> BlockFormat:
    """`value` as a BlockFormat: a BlockFormat, a NAMED_BLOCKS name, or a to_dict() dict."""
    if isinstance(value, BlockFormat):
        return value
    if isinstance(value, dict):
        return BlockFormat.from_dict(value)
    if isinstance(value, str) and value.lower() in NAMED_BLOCKS:
        return NAMED_BLOCKS[value.lower()]
    raise ValueError(f"unknown block format {value!r}: use one of {', '.join(NAMED_BLOCKS)} or a "
                     "BlockFormat(...)")


def is_block_format(value: object) -> bool:
    """Is `value` a BlockFormat, a block-format name or a block-format dict?"""
    if isinstance(value, BlockFormat):
        return True
    if isinstance(value, str):
        return value.lower() in NAMED_BLOCKS
    return isinstance(value, dict) and value.get("kind") == "block"
