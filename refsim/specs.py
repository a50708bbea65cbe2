"""Specs of simulated arithmetic: Cast, AccumSpec and GemmSpec (docs/accumulation.md).

Usage rules:
  - Every spec is a frozen dataclass, validated on construction; errors name the parameter.
  - Formats may be given as objects or names; they are stored as FloatFormat/FixedFormat objects.
  - `to_dict()`/`from_dict()` and `to_toml()`/`from_toml()` round-trip exactly. A format is written
    as its name when the name parses back to the same format, else as a table of its fields.
  - `str(spec)` is a one-line readable summary, e.g. `AccumSpec(fp16, rne, chunked, chunk=128,
    outer=fp32/rne)`.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from refsim.formats import FixedFormat, FloatFormat, Format, get_format
from refsim.formats.block_format import NAMED_BLOCKS, BlockFormat, get_block_format, is_block_format
from refsim.formats.policy import check_int, check_overflow, check_rounding, check_sr_bits
from refsim.formats.registry import name_of

__all__ = ["CHUNK_ORDERS", "C_ENTRIES", "MULTITERM_ALIGNS", "MULTITERM_MAX_BITS",
           "MULTITERM_TRUNCATIONS",
           "MULTITERM_VARIANTS", "ORDERS", "SUBNORMAL_INPUTS", "TRANSFORM_KINDS", "AccumSpec",
           "Cast", "GemmSpec", "Transform", "format_fits", "register_transform"]

ORDERS: tuple[str, ...] = ("sequential", "pairwise", "chunked", "kahan", "multiterm")
"""sequential: k = 0, 1, 2, ...; pairwise: a fixed binary tree; chunked: `chunk` terms per inner
sum, promoted into `outer`; kahan: compensated; multiterm: a tensor-core-style adder."""

MULTITERM_VARIANTS: tuple[str, ...] = ("acc-excluded", "acc-aligned")
"""acc-excluded: a group is aligned and truncated alone, then added to the accumulator with one
rounding; acc-aligned: the accumulator joins the group's alignment (and truncation) as one more
term."""

MULTITERM_MAX_BITS = 62
"""multiterm: width + group.bit_length() (+ 1 for align='product') may be at most this (the group
sum is exact in int64; refsim.kernels.accum_core proves it)."""

MULTITERM_ALIGNS: tuple[str, ...] = ("normalized", "product")
"""normalized: a value's alignment exponent is floor(log2|v|); product: a product's is ea + eb,
each operand's exponent in its format (its significand is unnormalized, in [1, 4))."""

MULTITERM_TRUNCATIONS: tuple[str, ...] = ("toward-zero", "floor")
"""How aligned values lose their bits below the kept width: toward-zero (sign-magnitude) or
floor (two's complement: a negative value loses up to one unit more)."""

SUBNORMAL_INPUTS: tuple[str, ...] = ("keep", "flush")
"""multiterm: operands subnormal in AccumSpec.operands keep their value or are flushed to zero."""

CHUNK_ORDERS: tuple[str, ...] = ("sequential", "pairwise")
"""chunked: the order of the terms within one chunk (refsim's pairwise tree, or left to right)."""

C_ENTRIES: tuple[str, ...] = ("inner", "outer")
"""chunked/multiterm: the initial value C (matmul's c=) starts the first chunk's running sum
(inner) or the outer accumulator (outer)."""


# ---- formats ------------------------------------------------------------------------------------
# What the constructors accept where they store a format or a spec (each is normalized in
# __post_init__; the fields are typed for what is stored).
FormatLike = Format | str
CastLike = Format | BlockFormat | str | dict[str, Any]


def _format(value: object, name: str) -> Format:
    try:
        return get_format(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name}: {exc}") from None


def _format_to_data(fmt: Format | BlockFormat) -> str | dict[str, Any]:
    """The format's name if it parses back to the same format, else a table of its fields."""
    if isinstance(fmt, BlockFormat):
        return fmt.name if NAMED_BLOCKS.get(fmt.name) == fmt else fmt.to_dict()
    name = name_of(fmt)
    try:
        if get_format(name) == fmt:
            return name
    except ValueError:
        pass
    data: dict[str, Any] = dataclasses.asdict(fmt)
    data["kind"] = "float" if isinstance(fmt, FloatFormat) else "fixed"
    return data


def _format_from_data(data: object, name: str) -> Format:
    if isinstance(data, dict) and data.get("kind") == "block":
        raise ValueError(f"{name}: a block format applies to GemmSpec operands (a Cast) only")
    if isinstance(data, dict):
        fields = dict(data)
        kind = fields.pop("kind", "float")
        cls = {"float": FloatFormat, "fixed": FixedFormat}.get(kind)
        if cls is None:
            raise ValueError(f"{name}.kind must be 'float' or 'fixed'; got {kind!r}")
        try:
            return cls(**fields)
        except TypeError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return _format(data, name)


def _smallest_exponent(fmt: FloatFormat) -> int:
    """Exponent of the smallest positive value."""
    return fmt.emin - fmt.man_bits if fmt.subnormals else fmt.emin


def format_fits(inner: Format, outer: Format) -> bool:
    """Is every finite value of `inner` a value of `outer`? (Floats: grid, range and sign.)"""
    if isinstance(inner, FixedFormat) or isinstance(outer, FixedFormat):
        return inner == outer
    if inner.signed and not outer.signed:
        return False
    if inner.man_bits > outer.man_bits or inner.max > outer.max:
        return False
    # Every inner value is a multiple of 2^(emin - man_bits) (normal or subnormal). Outer values
    # below 2^emin need subnormals with a fine enough quantum there.
    if outer.subnormals:
        return outer.emin - outer.man_bits <= inner.emin - inner.man_bits
    return _smallest_exponent(inner) >= outer.emin


def _short(fmt: Format | BlockFormat) -> str:
    return fmt.name if isinstance(fmt, BlockFormat) else name_of(fmt)


COUNT_MAX = (1 << 63) - 1
"""Largest chunk, group or width accepted: the kernels take them as int64."""


def _check_positive_int(value: object, name: str) -> int | None:
    """None, or `value` as a Python int in 1..COUNT_MAX (any integer type, never a bool)."""
    if value is None:
        return None
    number = check_int(value, name, allowed="a positive int or None")
    if number <= 0:
        raise ValueError(f"{name} must be a positive int; got {number}")
    if number > COUNT_MAX:
        raise ValueError(f"{name} must be at most 2^63 - 1 (the kernels take it as an int64); "
                         f"got {number}")
    return number


def _check_keys(data: object, allowed: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError(f"{what} must be a dict; got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValueError(f"{what}: unknown keys {', '.join(unknown)} (allowed: "
                         f"{', '.join(allowed)})")
    return dict(data)


# ---- TOML: a tiny writer for nested tables of scalars -------------------------------------------
def _toml_scalar(value: object, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    raise TypeError(f"cannot write {key}={value!r} to TOML")


def _toml_lines(data: dict[str, Any], prefix: str) -> list[str]:
    lines = [f"{key} = {_toml_scalar(value, key)}" for key, value in data.items()
             if value is not None and not isinstance(value, dict)]
    for key, value in data.items():
        if isinstance(value, dict):
            name = f"{prefix}.{key}" if prefix else key
            lines += ["", f"[{name}]", *_toml_lines(value, name)]
    return lines


def _to_toml(data: dict[str, Any]) -> str:
    """TOML text of a dict of scalars and nested dicts (None values are left out)."""
    text = "\n".join(_toml_lines(data, "")).strip("\n")
    return text + "\n"


def _from_toml(text: object) -> dict[str, Any]:
    """The table of a TOML text; errors name what is wrong with the text."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a TOML string; got {type(text).__name__}")
    try:
        return tomllib.loads(text)
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ValueError("text: the TOML nests arrays or inline tables too deeply for a spec "
                         "(a spec nests tables at most three levels)") from None


# ---- Cast ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cast:
    """One rounding of every element to a format.

    Args:
        fmt: a format object or name; or a block format (refsim.formats.block_format: a BlockFormat
            or a name such as "mxfp8_e4m3"), whose elements always saturate (refsim.blocks).
        rounding: rne, rna, rtz, rup, rdn, rto or sr.
        overflow: default, saturate, satfinite (saturate, and +-Inf to +-max too), or wrap
            (fixed point only).
        sr_bits: None (sr reads every discarded bit) or 1..64 random bits; sr only.
    """

    fmt: Format | BlockFormat
    rounding: str = "rne"
    overflow: str = "default"
    sr_bits: int | None = None

    if TYPE_CHECKING:  # the signature as called (the generated __init__ takes fields as stored)
        def __init__(self, fmt: CastLike, rounding: str = ..., overflow: str = ...,
                     sr_bits: int | None = ...) -> None: ...

    def __post_init__(self) -> None:
        fmt = (get_block_format(self.fmt) if is_block_format(self.fmt)
               else _format(self.fmt, "Cast.fmt"))
        object.__setattr__(self, "fmt", fmt)
        check_rounding(self.rounding)
        check_overflow(self.overflow)
        object.__setattr__(self, "sr_bits", check_sr_bits(self.sr_bits, self.rounding))
        if self.overflow == "wrap" and isinstance(fmt, (FloatFormat, BlockFormat)):
            raise ValueError(f"Cast.overflow='wrap' applies to fixed-point formats only; "
                             f"{_short(fmt)} is a floating-point or block format")

    @classmethod
    def of(cls, value: object, name: str) -> Cast:
        """`value` as a Cast: a Cast, a format (rounding rne) or a dict."""
        if isinstance(value, Cast):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        return cls(get_block_format(value) if is_block_format(value) else _format(value, name))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"fmt": _format_to_data(self.fmt), "rounding": self.rounding,
                                "overflow": self.overflow}
        if self.sr_bits is not None:
            data["sr_bits"] = self.sr_bits
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cast:
        data = _check_keys(data, ("fmt", "rounding", "overflow", "sr_bits"), "Cast")
        if "fmt" not in data:
            raise ValueError("Cast: fmt is required")
        if is_block_format(data["fmt"]):
            data["fmt"] = get_block_format(data["fmt"])
        else:
            data["fmt"] = _format_from_data(data["fmt"], "Cast.fmt")
        return cls(**data)

    def to_toml(self) -> str:
        return _to_toml(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> Cast:
        return cls.from_dict(_from_toml(text))

    def __str__(self) -> str:
        text = f"{_short(self.fmt)}/{self.rounding}"
        if self.sr_bits is not None:
            text += f"{self.sr_bits}"
        if self.overflow != "default":
            text += f"/{self.overflow}"
        return text


# ---- AccumSpec ----------------------------------------------------------------------------------
_ACCUM_KEYS = ("fmt", "rounding", "order", "chunk", "outer", "product", "sr_bits", "overflow",
               "group", "width", "variant", "align", "truncation", "operands", "subnormals",
               "c_entry", "chunk_order", "late_bits", "late_norm_bits", "late_truncation",
               "c_cutoff", "interleave", "group_run")
# Defaults filled in for order multiterm (c_entry: chunked and multiterm) and left out of to_dict.
_MULTITERM_DEFAULTS = {"align": "normalized", "truncation": "toward-zero", "subnormals": "keep"}


@dataclass(frozen=True)
class AccumSpec:
    """How a sum of terms (or products) is accumulated.

    Args:
        fmt: the accumulator's float format (object or name); every partial sum is rounded to it.
        rounding: rounding of every partial sum (rne, rna, rtz, rup, rdn, rto, sr).
        order: sequential, pairwise, chunked, kahan or multiterm (docs/accumulation.md).
        chunk: terms per inner sum (chunked, required; multiterm: products between promotions,
            a multiple of group, None: no promotion but one at the end).
        outer: chunked/multiterm: the accumulator the chunk results are added into, an AccumSpec
            (order sequential) or a format (rounding rne); None: the same as fmt/rounding.
        product: None: products are exact; else a Cast (or format, rounding rne) each product
            is rounded to before it is added. Its values must be values of fmt.
        sr_bits: for rounding='sr': None or 1..64.
        overflow: default, saturate or satfinite (the accumulator format's policy,
            docs/rounding.md).
        group: multiterm: products per aligned group.
        width: multiterm: significand bits kept after alignment (lower bits truncated toward
            zero); width + group.bit_length() <= 62.
        variant: multiterm: 'acc-excluded' (default: the running sum is added to the group's
            exact aligned sum with one rounding) or 'acc-aligned' (it joins the alignment).
        align: multiterm: 'normalized' (default) or 'product' (a product's alignment exponent is
            ea + eb; docs/accumulation.md).
        truncation: multiterm: 'toward-zero' (default) or 'floor' (two's complement).
        operands: multiterm: the operands' format (object or name): a subnormal operand's
            exponent is its emin (align='product'), and subnormals='flush' flushes its
            subnormals. None: operands are taken as float64 values.
        subnormals: multiterm: 'keep' (default) or 'flush' (needs operands).
        c_entry: chunked/multiterm: where matmul's initial value C enters, 'inner' (default: the
            first chunk's running sum) or 'outer' (the outer accumulator).
        chunk_order: chunked: 'sequential' (default) or 'pairwise' (each chunk summed by the
            pairwise tree; AMD CDNA 2).
        late_bits: multiterm acc-aligned: the accumulator joins *late* (AMD CDNA 3,
            docs/accumulation.md): the products are aligned among themselves; an accumulator
            no larger than them joins their grid (truncated by late_truncation); a larger one
            takes the product sum, rounded (late_truncation) to late_bits fraction bits below
            the accumulator's exponent, and the sum is then renormalized to late_norm_bits.
            None: the accumulator joins the alignment as one more term (default).
        late_norm_bits: with late_bits: fraction bits kept (late_truncation) after the
            renormalization of a sum with a larger accumulator.
        late_truncation: with late_bits: 'toward-zero' or 'floor' (None: truncation).
        c_cutoff: with late_bits: an accumulator more than c_cutoff binades below the products
            is dropped (adds 0). None: never.
        interleave: with late_bits: the group's products split into this many interleaved
            subsets (by position modulo interleave), each aligned and truncated to its own
            largest exponent; the subset sums are moved to the group's (late_truncation).
        group_run: multiterm with chunk: interleaved groups. A chunk's positions are dealt to
            its chunk // group groups round robin in runs of group_run consecutive positions
            (position p of the chunk goes to group (p // group_run) % (chunk // group)); the
            groups then run in order. None: consecutive groups (runs of group). A partial last
            chunk is dealt as if padded with zeros; its groups that get no position are
            skipped. (Hopper's FP8 MMA with an fp16 output: docs/hardware.md.)
    """

    fmt: FloatFormat
    rounding: str = "rne"
    order: str = "sequential"
    chunk: int | None = None
    outer: AccumSpec | None = None
    product: Cast | None = None
    sr_bits: int | None = None
    overflow: str = "default"
    group: int | None = None
    width: int | None = None
    variant: str | None = None
    align: str | None = None
    truncation: str | None = None
    operands: FloatFormat | None = None
    subnormals: str | None = None
    c_entry: str | None = None
    chunk_order: str | None = None
    late_bits: int | None = None
    late_norm_bits: int | None = None
    late_truncation: str | None = None
    c_cutoff: int | None = None
    interleave: int | None = None
    group_run: int | None = None

    if TYPE_CHECKING:  # the signature as called (the generated __init__ takes fields as stored)
        def __init__(self, fmt: FormatLike, rounding: str = ..., order: str = ...,
                     chunk: int | None = ..., outer: AccumSpec | FormatLike | dict[str, Any]
                     | None = ..., product: Cast | CastLike | None = ...,
                     sr_bits: int | None = ..., overflow: str = ..., group: int | None = ...,
                     width: int | None = ..., variant: str | None = ..., align: str | None = ...,
                     truncation: str | None = ..., operands: FormatLike | None = ...,
                     subnormals: str | None = ..., c_entry: str | None = ...,
                     chunk_order: str | None = ..., late_bits: int | None = ...,
                     late_norm_bits: int | None = ..., late_truncation: str | None = ...,
                     c_cutoff: int | None = ..., interleave: int | None = ...,
                     group_run: int | None = ...) -> None: ...

    def __post_init__(self) -> None:
        fmt = _format(self.fmt, "AccumSpec.fmt")
        object.__setattr__(self, "fmt", fmt)
        if not isinstance(fmt, FloatFormat):
            raise ValueError(f"AccumSpec.fmt must be a floating-point format; {_short(fmt)} is "
                             "fixed point (fixed-point accumulators are not supported yet)")
        check_rounding(self.rounding)
        check_overflow(self.overflow)
        if self.overflow == "wrap":
            raise ValueError("AccumSpec.overflow='wrap' applies to fixed-point formats only; use "
                             "'default', 'saturate' or 'satfinite'")
        object.__setattr__(self, "sr_bits", check_sr_bits(self.sr_bits, self.rounding))
        if not isinstance(self.order, str) or self.order not in ORDERS:
            raise ValueError(f"AccumSpec.order must be one of {', '.join(ORDERS)}; "
                             f"got {self.order!r}")
        for key in ("chunk", "group", "width", "late_bits", "late_norm_bits",
                    "interleave", "group_run"):  # stored as Python ints (np.int64 accepted)
            object.__setattr__(self, key, _check_positive_int(getattr(self, key),
                                                              f"AccumSpec.{key}"))
        blocked = self.order in ("chunked", "multiterm")
        if self.order == "chunked" and self.chunk is None:
            raise ValueError("AccumSpec.order='chunked' needs chunk, the number of terms per "
                             "inner sum (e.g. chunk=128)")
        if self.chunk is not None and not blocked:
            raise ValueError(f"AccumSpec.chunk applies to order='chunked' or 'multiterm' only; "
                             f"got order={self.order!r} with chunk={self.chunk}")
        if self.outer is not None:
            if not blocked:
                raise ValueError(f"AccumSpec.outer applies to order='chunked' or 'multiterm' "
                                 f"only; got order={self.order!r}")
            outer = self.outer
            if isinstance(outer, dict):
                outer = AccumSpec.from_dict(outer)
            elif not isinstance(outer, AccumSpec):
                outer = AccumSpec(_format(outer, "AccumSpec.outer"))
            if (outer.order != "sequential" or outer.chunk is not None or outer.outer is not None
                    or outer.product is not None):
                raise ValueError(f"AccumSpec.outer must be a plain sequential accumulator (no "
                                 f"chunk, outer or product); got {outer}")
            if not format_fits(fmt, outer.fmt):
                raise ValueError(f"AccumSpec.outer ({_short(outer.fmt)}) is narrower than fmt "
                                 f"({_short(fmt)}): it cannot hold every chunk result")
            object.__setattr__(self, "outer", outer)
        if self.product is not None:
            product = Cast.of(self.product, "AccumSpec.product")
            if isinstance(product.fmt, BlockFormat):
                raise ValueError(f"AccumSpec.product must be an element format; the block format "
                                 f"{product.fmt.name} applies to GemmSpec operands a and b only")
            if isinstance(product.fmt, FixedFormat):
                raise ValueError(f"AccumSpec.product ({_short(product.fmt)}): fixed-point "
                                 "product Casts are not supported (the kernels round products "
                                 "to floating-point formats only); use a float format, or Cast "
                                 "the operands (GemmSpec a and b) to the fixed-point format")
            if not format_fits(product.fmt, fmt):
                raise ValueError(f"AccumSpec.product ({_short(product.fmt)}) is wider than the "
                                 f"accumulator fmt ({_short(fmt)}): a rounded product must be a "
                                 "value of fmt")
            object.__setattr__(self, "product", product)
        multi = (self.group, self.width, self.variant)
        if self.order == "multiterm":
            if self.group is None or self.width is None:
                raise ValueError("AccumSpec.order='multiterm' needs group (products per aligned "
                                 "group) and width (significand bits kept)")
            _check_multiterm_options(self)
            extra = 1 if self.align == "product" else 0
            if self.width + self.group.bit_length() + extra > MULTITERM_MAX_BITS:
                raise ValueError(f"AccumSpec.width ({self.width}) plus the bit length of group "
                                 f"({self.group.bit_length()}){' plus 1 (align=product)' * extra}"
                                 f" must be at most {MULTITERM_MAX_BITS} (the group sum is exact "
                                 "in 64 bits)")
            if self.variant is None:
                object.__setattr__(self, "variant", "acc-excluded")
            elif self.variant not in MULTITERM_VARIANTS:
                raise ValueError(f"AccumSpec.variant must be one of "
                                 f"{', '.join(MULTITERM_VARIANTS)}; got {self.variant!r}")
            if self.chunk is not None and self.chunk % self.group != 0:
                raise ValueError(f"AccumSpec.chunk ({self.chunk}) must be a multiple of group "
                                 f"({self.group}) for order='multiterm'")
            if self.group_run is not None:
                if self.chunk is None:
                    raise ValueError("AccumSpec.group_run deals a chunk's positions to its "
                                     "groups: it needs chunk (a multiple of group)")
                if self.group % self.group_run != 0:
                    raise ValueError(f"AccumSpec.group_run ({self.group_run}) must divide group "
                                     f"({self.group})")
                if self.group_run == self.group:  # consecutive groups: the default
                    object.__setattr__(self, "group_run", None)
        elif any(value is not None for value in (*multi, self.group_run)):
            raise ValueError(f"AccumSpec.group, width, variant and group_run apply to "
                             f"order='multiterm' only; got order={self.order!r}")
        else:
            for key in ("align", "truncation", "operands", "subnormals"):
                if getattr(self, key) is not None:
                    raise ValueError(f"AccumSpec.{key} applies to order='multiterm' only; got "
                                     f"order={self.order!r}")
        _check_late(self)
        if blocked:
            _check_choice(self, "c_entry", C_ENTRIES)
        elif self.c_entry is not None:
            raise ValueError(f"AccumSpec.c_entry applies to order='chunked' or 'multiterm' only; "
                             f"got order={self.order!r}")

    def _options(self) -> dict[str, Any]:
        """align, truncation, subnormals and c_entry where they differ from their defaults,
        and the late-accumulator and chunk_order fields that are set."""
        options: dict[str, Any] = {key: getattr(self, key)
                                   for key, default in _MULTITERM_DEFAULTS.items()
                                   if getattr(self, key) not in (None, default)}
        if self.c_entry not in (None, "inner"):
            options["c_entry"] = self.c_entry
        options.update({key: getattr(self, key) for key in _LATE_KEYS
                        if getattr(self, key) is not None})
        return options

    @classmethod
    def of(cls, value: object, name: str) -> AccumSpec:
        """`value` as an AccumSpec: an AccumSpec, a format (rne, sequential) or a dict."""
        if isinstance(value, AccumSpec):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        return cls(_format(value, name))

    @property
    def outer_spec(self) -> AccumSpec:
        """The accumulator chunk results go into (outer, or fmt/rounding themselves)."""
        if self.outer is not None:
            return self.outer
        return AccumSpec(self.fmt, self.rounding, sr_bits=self.sr_bits, overflow=self.overflow)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"fmt": _format_to_data(self.fmt), "rounding": self.rounding,
                                "order": self.order, "overflow": self.overflow}
        for key in ("chunk", "sr_bits", "group", "width", "variant"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        data.update(self._options())
        if self.operands is not None:
            data["operands"] = _format_to_data(self.operands)
        if self.outer is not None:
            data["outer"] = self.outer.to_dict()
        if self.product is not None:
            data["product"] = self.product.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccumSpec:
        data = _check_keys(data, _ACCUM_KEYS, "AccumSpec")
        if "fmt" not in data:
            raise ValueError("AccumSpec: fmt is required")
        data["fmt"] = _format_from_data(data["fmt"], "AccumSpec.fmt")
        if data.get("operands") is not None:
            data["operands"] = _format_from_data(data["operands"], "AccumSpec.operands")
        if isinstance(data.get("outer"), dict):
            data["outer"] = cls.from_dict(data["outer"])
        if isinstance(data.get("product"), dict):
            data["product"] = Cast.from_dict(data["product"])
        return cls(**data)

    def to_toml(self) -> str:
        return _to_toml(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> AccumSpec:
        return cls.from_dict(_from_toml(text))

    def __str__(self) -> str:
        parts = [_short(self.fmt), self.rounding + ("" if self.sr_bits is None
                                                    else str(self.sr_bits)), self.order]
        if self.overflow != "default":
            parts.append(f"overflow={self.overflow}")
        parts.extend(f"{key}={getattr(self, key)}" for key in ("chunk", "group", "width", "variant")
                     if getattr(self, key) is not None)
        parts.extend(f"{key}={value}" for key, value in self._options().items())
        if self.operands is not None:
            parts.append(f"operands={_short(self.operands)}")
        if self.outer is not None:
            parts.append(f"outer={_short(self.outer.fmt)}/{self.outer.rounding}")
        if self.product is not None:
            parts.append(f"product={self.product}")
        return f"AccumSpec({', '.join(parts)})"


def _check_choice(spec: AccumSpec, key: str, allowed: tuple[str, ...]) -> None:
    """spec.<key>: one of `allowed`; None becomes allowed[0] (the default)."""
    value = getattr(spec, key)
    if value is None:
        object.__setattr__(spec, key, allowed[0])
    elif not isinstance(value, str) or value not in allowed:
        raise ValueError(f"AccumSpec.{key} must be one of {', '.join(allowed)}; got {value!r}")


_LATE_KEYS = ("chunk_order", "late_bits", "late_norm_bits", "late_truncation", "c_cutoff",
              "interleave", "group_run")


def _check_late(spec: AccumSpec) -> None:
    """chunk_order (chunked) and the late-accumulator fields (multiterm acc-aligned)."""
    if spec.chunk_order is not None:
        if spec.order != "chunked":
            raise ValueError(f"AccumSpec.chunk_order applies to order='chunked' only; got "
                             f"order={spec.order!r}")
        if spec.chunk_order not in CHUNK_ORDERS:
            raise ValueError(f"AccumSpec.chunk_order must be one of {', '.join(CHUNK_ORDERS)}; "
                             f"got {spec.chunk_order!r}")
        if spec.chunk_order == "sequential":  # the default, stored as None
            object.__setattr__(spec, "chunk_order", None)
    if spec.c_cutoff is not None:
        cutoff = check_int(spec.c_cutoff, "AccumSpec.c_cutoff", allowed="an int >= 0 or None")
        if cutoff < 0:
            raise ValueError(f"AccumSpec.c_cutoff must be an int >= 0; got {cutoff}")
        object.__setattr__(spec, "c_cutoff", cutoff)
    late = ("late_norm_bits", "late_truncation", "c_cutoff", "interleave")
    if spec.late_bits is None:
        for key in late:
            if getattr(spec, key) is not None:
                raise ValueError(f"AccumSpec.{key} needs late_bits (the late accumulator of "
                                 "order='multiterm', variant='acc-aligned')")
        return
    if spec.order != "multiterm" or spec.variant != "acc-aligned":
        raise ValueError(f"AccumSpec.late_bits applies to order='multiterm' with "
                         f"variant='acc-aligned' only; got order={spec.order!r}, "
                         f"variant={spec.variant!r}")
    if spec.late_bits < spec.fmt.man_bits:
        raise ValueError(f"AccumSpec.late_bits ({spec.late_bits}) must be at least fmt's "
                         f"mantissa bits ({spec.fmt.man_bits}): the accumulator joins exactly")
    assert spec.group is not None
    if spec.late_bits + spec.group.bit_length() + 2 > MULTITERM_MAX_BITS:
        raise ValueError(f"AccumSpec.late_bits ({spec.late_bits}) plus the bit length of group "
                         f"({spec.group.bit_length()}) plus 2 must be at most "
                         f"{MULTITERM_MAX_BITS} (the late sum is exact in 64 bits)")
    if spec.late_norm_bits is None:
        raise ValueError("AccumSpec.late_bits needs late_norm_bits, the fraction bits kept "
                         "after the late sum is renormalized (e.g. late_bits - 1)")
    if spec.late_norm_bits > spec.late_bits:
        raise ValueError(f"AccumSpec.late_norm_bits ({spec.late_norm_bits}) must be at most "
                         f"late_bits ({spec.late_bits})")
    if spec.late_truncation is None:
        object.__setattr__(spec, "late_truncation", spec.truncation)
    elif spec.late_truncation not in MULTITERM_TRUNCATIONS:
        raise ValueError(f"AccumSpec.late_truncation must be one of "
                         f"{', '.join(MULTITERM_TRUNCATIONS)}; got {spec.late_truncation!r}")
    if spec.interleave is not None and spec.group % spec.interleave != 0:
        raise ValueError(f"AccumSpec.interleave ({spec.interleave}) must divide group "
                         f"({spec.group})")


def _check_multiterm_options(spec: AccumSpec) -> None:
    """align, truncation, operands and subnormals of a multiterm AccumSpec (defaults filled)."""
    _check_choice(spec, "align", MULTITERM_ALIGNS)
    _check_choice(spec, "truncation", MULTITERM_TRUNCATIONS)
    _check_choice(spec, "subnormals", SUBNORMAL_INPUTS)
    if spec.operands is not None:
        operands = _format(spec.operands, "AccumSpec.operands")
        if not isinstance(operands, FloatFormat):
            raise ValueError(f"AccumSpec.operands must be a floating-point format; got "
                             f"{_short(operands)}")
        object.__setattr__(spec, "operands", operands)
    elif spec.subnormals == "flush":
        raise ValueError("AccumSpec.subnormals='flush' needs operands, the operands' format "
                         "(whose subnormals are flushed), e.g. operands='fp16'")
    if spec.align == "product" and spec.product is not None:
        raise ValueError("AccumSpec.align='product' aligns exact products by their operands' "
                         "exponents; it cannot be combined with a product Cast")


# ---- transforms of the operands ------------------------------------------------------------------
class Transform:
    """What GemmSpec.transform holds: a transform of both operands along K (refsim.transforms
    defines them, e.g. RandomHadamard, and registers each kind with register_transform; this
    module describes GemmSpec and needs none of their code)."""

    kind: ClassVar[str]  # the "kind" of its dict
    block: int  # K must be a multiple of it

    def apply(self, x: Any, axis: int = -1) -> Any:
        """x transformed along `axis`."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transform:
        raise NotImplementedError


TRANSFORM_KINDS: dict[str, type[Transform]] = {}
"""Transform kind -> its class, filled by register_transform (refsim.transforms, which the
package imports with refsim)."""
DEFAULT_TRANSFORM_KIND = "hadamard"  # a transform dict without "kind"


def register_transform(cls: type[Transform]) -> type[Transform]:
    """Class decorator: GemmSpec.from_dict then reads dicts of kind cls.kind as cls."""
    TRANSFORM_KINDS[cls.kind] = cls
    return cls


def _transform_of(data: dict[str, Any]) -> Transform:
    kind = data.get("kind", DEFAULT_TRANSFORM_KIND)
    if kind not in TRANSFORM_KINDS:
        raise ValueError(f"GemmSpec.transform: kind must be one of "
                         f"{', '.join(map(repr, TRANSFORM_KINDS)) or '(none registered)'}; "
                         f"got {kind!r}")
    return TRANSFORM_KINDS[kind].from_dict(data)


# ---- GemmSpec -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class GemmSpec:
    """One matrix product: cast a and b, multiply, accumulate with `acc`, cast the result.

    Args:
        a, b: Casts applied to the operands first (a format means rounding rne); None takes the
            operands exactly as given.
        acc: the AccumSpec (or a format: rne, sequential).
        out: the Cast applied to each accumulated result; None returns the accumulator's value.
        transform: None, or a refsim.transforms.RandomHadamard (or its dict) applied along K to
            both operands before their Casts (docs/transforms.md).
    """

    a: Cast | None = None
    b: Cast | None = None
    acc: AccumSpec = None  # type: ignore[assignment]  # required; the default only lets a, b come first
    out: Cast | None = None
    transform: Transform | None = None

    if TYPE_CHECKING:  # the signature as called (the generated __init__ takes fields as stored)
        def __init__(self, a: Cast | CastLike | None = ..., b: Cast | CastLike | None = ...,
                     acc: AccumSpec | FormatLike | dict[str, Any] | None = ...,
                     out: Cast | CastLike | None = ...,
                     transform: Transform | dict[str, Any] | None = ...) -> None: ...

    def __post_init__(self) -> None:
        if isinstance(self.transform, dict):
            object.__setattr__(self, "transform", _transform_of(self.transform))
        elif self.transform is not None and not isinstance(self.transform, Transform):
            raise TypeError(f"GemmSpec.transform must be None, a RandomHadamard or its dict; got "
                            f"{type(self.transform).__name__}")
        if self.acc is None:
            raise ValueError("GemmSpec.acc is required: the accumulator (an AccumSpec or format)")
        object.__setattr__(self, "acc", AccumSpec.of(self.acc, "GemmSpec.acc"))
        for key in ("a", "b", "out"):
            value = getattr(self, key)
            if value is not None:
                cast = Cast.of(value, f"GemmSpec.{key}")
                if key == "out" and isinstance(cast.fmt, BlockFormat):
                    raise ValueError(f"GemmSpec.out must be an element format; the block format "
                                     f"{cast.fmt.name} applies to operands a and b only")
                object.__setattr__(self, key, cast)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for key in ("a", "b", "acc", "out", "transform"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GemmSpec:
        data = _check_keys(data, ("a", "b", "acc", "out", "transform"), "GemmSpec")
        return cls(**data)

    def to_toml(self) -> str:
        return _to_toml(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> GemmSpec:
        return cls.from_dict(_from_toml(text))

    def __str__(self) -> str:
        def cast(value: Cast | None) -> str:
            return "exact" if value is None else str(value)

        transform = "" if self.transform is None else f", transform={self.transform}"
        return (f"GemmSpec(a={cast(self.a)}, b={cast(self.b)}, acc={self.acc}, "
                f"out={cast(self.out)}{transform})")
