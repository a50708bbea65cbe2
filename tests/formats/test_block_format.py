"""BlockFormat: validation (errors name the parameter and what is allowed), derived constants,
names and the to_dict round trip, the named registry."""

from __future__ import annotations

import pytest

from refsim.formats import NAMED_BLOCKS, BlockFormat, FixedFormat, get_block_format, get_format
from refsim.formats.block_format import POW2_RULES, VALUE_RULES, is_block_format

E8M0 = get_format("e8m0fnu")


@pytest.mark.parametrize("name", list(NAMED_BLOCKS))
def test_named_round_trip(name):
    fmt = NAMED_BLOCKS[name]
    assert fmt.name == name and str(fmt) == name
    assert get_block_format(name) is fmt and get_block_format(name.upper()) is fmt
    assert BlockFormat.from_dict(fmt.to_dict()) == fmt
    assert is_block_format(name) and is_block_format(fmt) and is_block_format(fmt.to_dict())


def test_derived_constants():
    assert NAMED_BLOCKS["mxfp8_e4m3"].elem_precision == 4
    assert NAMED_BLOCKS["mxint8"].elem_precision == 7
    assert NAMED_BLOCKS["bfp8"].elem_max == 127.0
    assert NAMED_BLOCKS["nvfp4"].pow2_scale is False
    custom = BlockFormat("e4m3fn", 16, scale_rule="rceil", axis=0)
    assert custom.scale == E8M0 and custom.name == "block(e4m3fn,16,e8m0fnu,rceil,axis=0)"
    assert NAMED_BLOCKS["mxfp4_e2m1"].with_axis(0).name == "mxfp4_e2m1(axis=0)"
    assert BlockFormat.from_dict(custom.to_dict()) == custom


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"block_size": 0}, r"block_size must be a positive int; got 0"),
    ({"block_size": -3}, r"block_size must be a positive int"),
    ({"element": "uint8"}, r"element must be signed"),
    ({"element": "e8m0fnu"}, r"element must be a signed format with a zero"),
    ({"element": "e9m99"}, r"BlockFormat.element: .*man_bits"),
    ({"scale": "int8"}, r"scale must be a floating-point format"),
    ({"scale_rule": "nearest"}, r"scale_rule must be one of floor, ceil, even, rceil"),
    ({"scale": "e4m3fn", "scale_rule": "floor"}, r"scale_rule must be one of nearest, rceil"),
    ({"tensor_scale": True}, r"tensor_scale applies to non-power-of-two scale formats"),
    ({"element": "fp64"}, r"cannot serve element fp64"),
    ({"element": "fp16", "scale": "e4m3fn", "scale_rule": "nearest"},
     r"the element may have at most 8 significant bits .*got fp16 with 11"),
    ({"scale": "fp32", "scale_rule": "nearest", "tensor_scale": True},
     r"at most 28 significant bits .*got scale=fp32 \(24 bits\) with tensor_scale"),
    ({"scale": "e4m3fn", "scale_rule": "4over6"}, r"'4over6' needs e2m1 elements"),
    ({"block_rows": 0}, r"block_rows must be a positive int \(1: 1-D blocks\); got 0"),
])
def test_bad_fields_name_the_parameter(kwargs, match):
    fields = {"element": "e4m3fn", **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        BlockFormat(**fields)


def test_type_errors_and_unknowns():
    with pytest.raises(TypeError, match="block_size must be an int"):
        BlockFormat("e4m3fn", 2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="block_rows must be an int"):
        BlockFormat("e4m3fn", 16, block_rows=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="axis must be an int"):
        BlockFormat("e4m3fn", axis="0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown block format"):
        get_block_format("mxfp3")
    with pytest.raises(ValueError, match="unknown keys"):
        BlockFormat.from_dict({"element": "e4m3fn", "size": 3})
    assert set(POW2_RULES) == {"floor", "ceil", "even", "rceil"} and "nearest" in VALUE_RULES
    assert BlockFormat(FixedFormat(4, 2), 8).elem_emax == 0


def test_tiles_and_scale_formats():
    """2-D tiles: the name spells rows x columns, to_dict adds block_rows only for tiles (1-D
    dicts stay as they were), with_axis keeps the tile; fp32 scales and 4over6 are accepted."""
    tile = BlockFormat("e4m3fn", 32, "fp32", "nearest", block_rows=4)
    assert tile.tile == (4, 32) and tile.name == "block(e4m3fn,4x32,fp32,nearest)"
    assert tile.to_dict()["block_rows"] == 4 and BlockFormat.from_dict(tile.to_dict()) == tile
    assert "block_rows" not in NAMED_BLOCKS["nvfp4"].to_dict()
    assert tile.with_axis(-2).block_rows == 4
    assert NAMED_BLOCKS["nvfp4_16x16"].with_axis(-2).name == "nvfp4_16x16(axis=-2)"
    assert NAMED_BLOCKS["deepseek_128x128"].tile == (128, 128)
    assert NAMED_BLOCKS["deepseek_1x128"].tile == (1, 128)
    assert BlockFormat("e2m1fn", 16, "e4m3fn", "4over6").tensor_scale is False
    assert BlockFormat("int8", 32, "fp32", "rceil").elem_max == 127.0
