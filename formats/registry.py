"""The named formats, and parsing of custom names.

Names follow ml_dtypes/LLVM: fp64 fp32 tf32 bf16 fp16 e5m2 e4m3fn ... Custom spellings:
  eXmY[bZ][fn|fnuz|fnu|fin]   X exponent bits, Y mantissa bits, optional bias Z; no suffix is
                              'ieee', fn/fnuz as in OCP/ml_dtypes, fnu unsigned fn, fin all-finite
  int<B>, uint<B>             integers (FixedFormat with frac_bits=0)
  fx<B>.<F>, ufx<B>.<F>       fixed point: B bits in all, F of them after the binary point
  p3109_k<K>p<P><s|u><e|f>    IEEE P3109 formats: K bits, precision P, signed or unsigned,
                              extended (+-Inf) or finite domain (formats.float_format.p3109_format;
                              every K in P3109_KS is in P3109, the others parse as well)
Note the ml_dtypes names e3m2fn, e2m3fn and e2m1fn denote formats with no NaN ('none').
"""

from __future__ import annotations

import re

from refsim.formats.fixed_format import FixedFormat
from refsim.formats.float_format import FloatFormat, p3109_format
from refsim.formats.names import FIXED_FIELDS, FLOAT_FIELDS, P3109_KS

Format = FloatFormat | FixedFormat

NAMED: dict[str, Format] = {
    **{name: FloatFormat(**fields) for name, fields in FLOAT_FIELDS.items()},  # type: ignore[arg-type]
    **{name: FixedFormat(**fields) for name, fields in FIXED_FIELDS.items()},  # type: ignore[arg-type]
}
"""Every registered format by name (the table itself is refsim.formats.names)."""

P3109: dict[str, FloatFormat] = {
    fmt.name: fmt
    for k in P3109_KS for signed in (True, False) for p in range(1, k + (0 if signed else 1))
    for fmt in (p3109_format(k, p, signed, True), p3109_format(k, p, signed, False))
}
"""Every IEEE P3109 format of K bits, K in P3109_KS, by its P3109 name (p3109_k8p4se ...). Kept
apart from NAMED, whose every format the registry-wide tests sweep; get_format knows both."""

ALIASES: dict[str, str] = {
    "float64": "fp64", "double": "fp64",
    "float32": "fp32", "float": "fp32", "single": "fp32",
    "float16": "fp16", "half": "fp16",
    "bfloat16": "bf16",
    "float8_e5m2": "e5m2", "float8_e4m3": "e4m3", "float8_e3m4": "e3m4",
    "float8_e4m3fn": "e4m3fn", "float8_e4m3fnuz": "e4m3fnuz", "float8_e5m2fnuz": "e5m2fnuz",
    "float8_e4m3b11fnuz": "e4m3b11fnuz", "float6_e3m2fn": "e3m2fn", "float6_e2m3fn": "e2m3fn",
    "float4_e2m1fn": "e2m1fn", "float8_e8m0fnu": "e8m0fnu", "e8m0": "e8m0fnu",
}

_FLOAT_RE = re.compile(r"^e(\d+)m(\d+)(?:b(-?\d+))?(fnuz|fnu|fn|fin|extu|ext)?$")
_INT_RE = re.compile(r"^(u?)int(\d+)$")
_FIXED_RE = re.compile(r"^(u?)fx(\d+)\.(-?\d+)$")
_P3109_RE = re.compile(r"^p3109_k(\d+)p(\d+)([su])([ef])$")
_SUFFIX_SPECIALS = {None: "ieee", "fn": "fn", "fnuz": "fnuz", "fnu": "fn", "fin": "none",
                    "ext": "ext", "extu": "ext"}


def get_format(name: str | Format) -> Format:
    """The format called `name` (a registry name, alias or custom spelling), or `name` itself."""
    if isinstance(name, (FloatFormat, FixedFormat)):
        return name
    if not isinstance(name, str):
        raise TypeError(f"fmt must be a format name or a FloatFormat/FixedFormat; got {name!r}")
    key = ALIASES.get(name.lower(), name.lower())
    if key in NAMED:
        return NAMED[key]
    if key in P3109:
        return P3109[key]
    if match := _P3109_RE.match(key):
        k, p, sign, domain = match.groups()
        return p3109_format(int(k), int(p), sign == "s", domain == "e")
    if match := _FLOAT_RE.match(key):
        exp_bits, man_bits, bias, suffix = match.groups()
        return FloatFormat(
            int(exp_bits), int(man_bits), bias=None if bias is None else int(bias),
            specials=_SUFFIX_SPECIALS[suffix], signed=suffix not in ("fnu", "extu"),
        )
    if match := _INT_RE.match(key):
        return FixedFormat(int(match.group(2)), 0, signed=match.group(1) != "u")
    if match := _FIXED_RE.match(key):
        return FixedFormat(int(match.group(2)), int(match.group(3)), signed=match.group(1) != "u")
    raise ValueError(
        f"unknown format {name!r}: use a registry name ({', '.join(NAMED)}), or eXmY[bZ][fn|fnuz"
        "|fnu|fin|ext|extu], int<B>, uint<B>, fx<B>.<F>, p3109_k<K>p<P><s|u><e|f>"
    )


def name_of(fmt: Format) -> str:
    """The registry name of `fmt` if it has one, else its custom spelling."""
    return fmt.name
