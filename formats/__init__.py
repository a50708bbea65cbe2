"""What a number format is: FloatFormat, FixedFormat, the named registry, encode/decode, and
`formats.exact`, the executable specification of rounding. Pure Python + NumPy (no Numba)."""

from formats.fixed_format import FixedFormat
from formats.float_format import SPECIALS, FloatFormat
from formats.policy import OVERFLOWS, ROUNDINGS
from formats.registry import ALIASES, NAMED, Format, get_format

__all__ = [
    "ALIASES",
    "NAMED",
    "OVERFLOWS",
    "ROUNDINGS",
    "SPECIALS",
    "FixedFormat",
    "FloatFormat",
    "Format",
    "get_format",
]
