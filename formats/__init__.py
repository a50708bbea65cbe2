"""What a number format is: FloatFormat, FixedFormat, the named registry, encode/decode, and
`formats.exact`, the executable specification of rounding. Pure Python + NumPy (no Numba)."""

from formats.block_format import NAMED_BLOCKS, BlockFormat, get_block_format
from formats.fixed_format import FixedFormat
from formats.float_format import SPECIALS, FloatFormat
from formats.policy import OVERFLOWS, ROUNDINGS
from formats.registry import ALIASES, NAMED, Format, get_format

__all__ = [
    "ALIASES",
    "NAMED",
    "NAMED_BLOCKS",
    "OVERFLOWS",
    "ROUNDINGS",
    "SPECIALS",
    "BlockFormat",
    "FixedFormat",
    "FloatFormat",
    "Format",
    "get_block_format",
    "get_format",
]
