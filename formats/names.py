"""The registered format names, as data: each name with the fields of the format it denotes.

This module sits below float_format, fixed_format and registry: the format classes look their own
name up here, and the registry builds its format objects from the same table, so the three import
one way (names <- float_format, fixed_format <- registry).
"""

from __future__ import annotations

FLOAT_FIELDS: dict[str, dict[str, object]] = {
    "fp64": {"exp_bits": 11, "man_bits": 52},
    "fp32": {"exp_bits": 8, "man_bits": 23},
    "tf32": {"exp_bits": 8, "man_bits": 10},
    "bf16": {"exp_bits": 8, "man_bits": 7},
    "fp16": {"exp_bits": 5, "man_bits": 10},
    "e5m2": {"exp_bits": 5, "man_bits": 2},
    "e4m3": {"exp_bits": 4, "man_bits": 3},
    "e3m4": {"exp_bits": 3, "man_bits": 4},
    "e4m3fn": {"exp_bits": 4, "man_bits": 3, "specials": "fn"},
    "e4m3fnuz": {"exp_bits": 4, "man_bits": 3, "specials": "fnuz"},
    "e5m2fnuz": {"exp_bits": 5, "man_bits": 2, "specials": "fnuz"},
    "e4m3b11fnuz": {"exp_bits": 4, "man_bits": 3, "bias": 11, "specials": "fnuz"},
    "e3m2fn": {"exp_bits": 3, "man_bits": 2, "specials": "none"},
    "e2m3fn": {"exp_bits": 2, "man_bits": 3, "specials": "none"},
    "e2m1fn": {"exp_bits": 2, "man_bits": 1, "specials": "none"},
    "e8m0fnu": {"exp_bits": 8, "man_bits": 0, "subnormals": False, "specials": "fn",
                "signed": False, "zero": False},
}
"""Floating-point names (ml_dtypes/LLVM spelling): keyword arguments of FloatFormat."""

P3109_KS: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
"""Widths K whose every IEEE P3109 format (each valid precision, signedness and domain) has its
name in refsim.formats.registry.P3109: p3109_k<K>p<P><s|u><e|f>."""

FIXED_FIELDS: dict[str, dict[str, object]] = {
    "int32": {"bits": 32},
    "int16": {"bits": 16},
    "int8": {"bits": 8},
    "int4": {"bits": 4},
    "uint8": {"bits": 8, "signed": False},
    "uint4": {"bits": 4, "signed": False},
}
"""Integer names: keyword arguments of FixedFormat."""
