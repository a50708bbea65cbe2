"""What a number format is: FloatFormat, FixedFormat, the named registry, encode/decode, and
`refsim.formats.exact`, the executable specification of rounding. Pure Python + NumPy (no Numba)."""

from refsim.formats.block_format import NAMED_BLOCKS, BlockFormat, get_block_format
from refsim.formats.fixed_format import FixedFormat
from refsim.formats.float_format import SPECIALS, FloatFormat, p3109_format
from refsim.formats.policy import OVERFLOWS, ROUNDINGS
from refsim.formats.registry import ALIASES, NAMED, P3109, Format, get_format

__all__ = [
    "ALIASES",
    "NAMED",
    "NAMED_BLOCKS",
    "OVERFLOWS",
    "P3109",
    "ROUNDINGS",
    "SPECIALS",
    "BlockFormat",
    "FixedFormat",
    "FloatFormat",
    "Format",
    "get_block_format",
    "get_format",
    "p3109_format",
]
