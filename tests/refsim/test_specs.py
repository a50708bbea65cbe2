"""refsim.specs: construction, validation errors that name the parameter, dict/TOML round trips."""

from __future__ import annotations

import pytest

from refsim.formats import FloatFormat, get_format
from refsim.specs import AccumSpec, Cast, GemmSpec, format_fits

SPECS = [
    pytest.param(Cast("e4m3fn"), id="cast-plain"),
    pytest.param(Cast("bf16", "sr", sr_bits=8), id="cast-sr"),
    pytest.param(Cast("int8", "rtz", overflow="wrap"), id="cast-fixed-wrap"),
    pytest.param(Cast(FloatFormat(5, 2, subnormals=False)), id="cast-custom-fields"),
    pytest.param(AccumSpec("fp16"), id="acc-plain"),
    pytest.param(AccumSpec("fp16", "sr", "pairwise", sr_bits=12, overflow="saturate"),
                 id="acc-pairwise-sr"),
    pytest.param(AccumSpec("e6m9", "rne", "chunked", chunk=128,
                           outer=AccumSpec("fp32", "rtz")), id="acc-chunked"),
    pytest.param(AccumSpec("fp32", order="kahan", product=Cast("bf16", "rna")), id="acc-kahan"),
    pytest.param(AccumSpec("fp32", order="multiterm", group=32, width=14, variant="acc-aligned",
                           chunk=128, outer="fp32"), id="acc-multiterm"),
    pytest.param(GemmSpec(a=Cast("e4m3fn"), b=Cast("e5m2", "sr"),
                          acc=AccumSpec("fp16", order="chunked", chunk=64, outer="fp32"),
                          out=Cast("bf16")), id="gemm"),
    pytest.param(GemmSpec(acc="fp32"), id="gemm-minimal"),
]


@pytest.mark.parametrize("spec", SPECS)
def test_dict_round_trip(spec):
    assert type(spec).from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("spec", SPECS)
def test_toml_round_trip(spec):
    text = spec.to_toml()
    assert type(spec).from_toml(text) == spec, text


@pytest.mark.parametrize("spec", SPECS)
def test_str_is_one_readable_line(spec):
    text = str(spec)
    assert "\n" not in text
    assert len(text) < 200


def test_names_become_formats():
    cast = Cast("float16")
    assert cast.fmt == get_format("fp16")
    acc = AccumSpec("e4m3", order="chunked", chunk=4, outer="fp32")
    assert acc.outer == AccumSpec("fp32")
    gemm = GemmSpec(a="e4m3fn", b="e4m3fn", acc="fp32", out="bf16")
    assert gemm.a == Cast("e4m3fn") and gemm.acc == AccumSpec("fp32")


def test_str_examples():
    acc = AccumSpec("fp16", "rne", "chunked", chunk=128, outer="fp32")
    assert str(acc) == "AccumSpec(fp16, rne, chunked, chunk=128, outer=fp32/rne)"
    assert str(Cast("bf16", "sr", sr_bits=8)) == "bf16/sr8"
    assert str(GemmSpec(acc="fp32")) == ("GemmSpec(a=exact, b=exact, acc=AccumSpec(fp32, rne, "
                                         "sequential), out=exact)")


def test_toml_text_is_plain_tables():
    text = GemmSpec(a="e4m3fn", acc=AccumSpec("fp16", order="chunked", chunk=8,
                                               outer="fp32")).to_toml()
    assert "[acc.outer]" in text and "[a]" in text
    assert 'fmt = "e4m3fn"' in text


def test_outer_defaults_to_the_accumulator():
    acc = AccumSpec("bf16", "sr", "chunked", chunk=16, sr_bits=5)
    assert acc.outer is None
    assert acc.outer_spec == AccumSpec("bf16", "sr", sr_bits=5)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"order": "tree"}, "AccumSpec.order must be one of"),
    ({"order": "chunked"}, "needs chunk"),
    ({"order": "chunked", "chunk": 0}, "AccumSpec.chunk must be a positive int; got 0"),
    ({"order": "chunked", "chunk": -3}, "AccumSpec.chunk must be a positive int"),
    ({"order": "sequential", "chunk": 4}, "chunk applies to order='chunked'"),
    ({"order": "pairwise", "outer": "fp32"}, "outer applies to order='chunked'"),
    ({"order": "chunked", "chunk": 4, "outer": "bf16"}, r"outer \(bf16\) is narrower than fmt"),
    ({"order": "chunked", "chunk": 4, "outer": AccumSpec("fp32", order="kahan")},
     "plain sequential"),
    ({"product": "fp32"}, r"product \(fp32\) is wider than the accumulator"),
    ({"order": "multiterm", "group": 4}, "needs group .* and width"),
    ({"order": "multiterm", "group": 4, "width": 10, "variant": "both"},
     "AccumSpec.variant must be one of"),
    ({"order": "multiterm", "group": 4, "width": 10, "chunk": 6}, "multiple of group"),
    ({"group": 4}, "apply to order='multiterm' only"),
    ({"sr_bits": 4}, "sr_bits applies only to rounding='sr'"),
    ({"rounding": "nearest"}, "rounding must be one of"),
    ({"overflow": "wrap"}, "overflow='wrap' applies to fixed-point"),
])
def test_accum_errors_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AccumSpec("fp16", **kwargs)


def test_other_errors():
    with pytest.raises(ValueError, match=r"fixed-point accumulators"):
        AccumSpec("int32")
    with pytest.raises(ValueError, match=r"AccumSpec.fmt: unknown format"):
        AccumSpec("fp17")
    with pytest.raises(TypeError, match=r"AccumSpec.chunk must be a positive int"):
        AccumSpec("fp16", order="chunked", chunk=2.5)
    with pytest.raises(ValueError, match=r"Cast.overflow='wrap'"):
        Cast("fp16", overflow="wrap")
    with pytest.raises(ValueError, match=r"GemmSpec.acc is required"):
        GemmSpec(a="fp16")
    with pytest.raises(ValueError, match=r"unknown keys colour"):
        AccumSpec.from_dict({"fmt": "fp16", "colour": "red"})
    with pytest.raises(ValueError, match=r"Cast: fmt is required"):
        Cast.from_dict({"rounding": "rne"})


def test_specs_are_frozen():
    acc = AccumSpec("fp16")
    with pytest.raises(AttributeError):
        acc.order = "kahan"  # type: ignore[misc]


@pytest.mark.parametrize(("inner", "outer", "fits"), [
    ("fp16", "fp32", True), ("bf16", "fp32", True), ("fp16", "bf16", False),
    ("bf16", "fp16", False), ("e4m3fn", "fp16", True), ("e5m2", "e4m3", False),
    ("fp32", "fp32", True), ("e4m3fn", "e4m3", False), ("e4m3", "e4m3fn", True),
])
def test_format_fits(inner, outer, fits):
    assert format_fits(get_format(inner), get_format(outer)) is fits


# ---- integers beyond what a kernel takes (int64) are refused when the spec is built ------------
def test_chunk_beyond_int64_is_refused_at_construction():
    """chunk=10**30 was accepted, then raised OverflowError when a kernel took it."""
    with pytest.raises(ValueError, match=r"AccumSpec.chunk must be at most 2\^63 - 1"):
        AccumSpec("fp16", order="chunked", chunk=10**30)
    with pytest.raises(ValueError, match=r"AccumSpec.group must be at most 2\^63 - 1"):
        AccumSpec("fp16", order="multiterm", group=1 << 63, width=10)
    assert AccumSpec("fp16", order="chunked", chunk=(1 << 63) - 1).chunk == (1 << 63) - 1


def test_numpy_integers_are_accepted_and_stored_as_ints_bools_refused():
    np = pytest.importorskip("numpy")
    acc = AccumSpec("fp16", "sr", order="chunked", chunk=np.int64(4), sr_bits=np.uint8(7))
    assert acc == AccumSpec("fp16", "sr", order="chunked", chunk=4, sr_bits=7)
    assert type(acc.chunk) is int and type(acc.sr_bits) is int
    assert AccumSpec.from_toml(acc.to_toml()) == acc
    multi = AccumSpec("fp32", order="multiterm", group=np.int32(4), width=np.int16(20),
                      chunk=np.int64(8))
    assert (multi.group, multi.width, multi.chunk) == (4, 20, 8)
    cast = Cast("e4m3fn", "sr", sr_bits=np.int64(5))
    assert type(cast.sr_bits) is int and Cast.from_toml(cast.to_toml()) == cast
    for kwargs, name in (({"chunk": True}, "AccumSpec.chunk"), ({"chunk": np.True_},
                                                                "AccumSpec.chunk"),
                         ({"chunk": 4.0}, "AccumSpec.chunk")):
        with pytest.raises(TypeError, match=f"{name} must be a positive int or None"):
            AccumSpec("fp16", order="chunked", **kwargs)
    with pytest.raises(TypeError, match=r"sr_bits must be None or an int in 1\.\.64; got the bool"):
        Cast("e4m3fn", "sr", sr_bits=True)


def test_from_toml_refuses_what_is_not_toml_text_and_deep_nesting():
    for spec_type in (Cast, AccumSpec, GemmSpec):
        with pytest.raises(TypeError, match="text must be a TOML string; got NoneType"):
            spec_type.from_toml(None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="text must be a TOML string; got bytes"):
            spec_type.from_toml(b"fmt = 'fp16'")  # type: ignore[arg-type]
        deep = "fmt = " + "[" * 5000 + "]" * 5000
        with pytest.raises(ValueError, match="nests arrays or inline tables too deeply"):
            spec_type.from_toml(deep)
        inline = "fmt = " + "{a = " * 5000 + "1" + "}" * 5000
        with pytest.raises(ValueError, match="nests arrays or inline tables too deeply"):
            spec_type.from_toml(inline)


def test_fixed_point_product_casts_are_refused_for_what_they_are():
    """AccumSpec("fp32", product="int8") was refused as "wider than fp32", which is false
    (every int8 value is an fp32 value): the kernels round products to float formats only."""
    for product in ("int8", Cast("int4", "rtz"), "int16"):
        with pytest.raises(ValueError, match=r"AccumSpec.product \(int\d+\): fixed-point product "
                                             "Casts are not supported"):
            AccumSpec("fp32", product=product)
