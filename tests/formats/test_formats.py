"""FloatFormat, FixedFormat and the registry: construction, names, encode/decode, ml_dtypes."""

from __future__ import annotations

import itertools
import math

import ml_dtypes
import numpy as np
import pytest

from refsim.formats import ALIASES, NAMED, FixedFormat, FloatFormat, get_format
from refsim.formats.registry import name_of

# ---- construction errors name the parameter -----------------------------------------------------
FLOAT_ERRORS = [
    ({"exp_bits": 0, "man_bits": 3}, ValueError, "exp_bits"),
    ({"exp_bits": -2, "man_bits": 3}, ValueError, "exp_bits"),
    ({"exp_bits": 4, "man_bits": -1}, ValueError, "man_bits"),
    ({"exp_bits": 2.0, "man_bits": 3}, TypeError, "exp_bits"),
    ({"exp_bits": True, "man_bits": 3}, TypeError, "exp_bits"),
    ({"exp_bits": 4, "man_bits": "3"}, TypeError, "man_bits"),
    ({"exp_bits": 4, "man_bits": 3, "specials": "ocp"}, ValueError, "specials"),
    ({"exp_bits": 4, "man_bits": 3, "specials": None}, ValueError, "specials"),
    ({"exp_bits": 4, "man_bits": 3, "bias": 2000}, ValueError, "bias"),
    ({"exp_bits": 4, "man_bits": 3, "bias": -1020}, ValueError, "bias"),
    ({"exp_bits": 11, "man_bits": 52, "bias": 1022}, ValueError, "bias"),
    ({"exp_bits": 4, "man_bits": 3, "bias": 7.0}, TypeError, "bias"),
    ({"exp_bits": 4, "man_bits": 3, "specials": "fnuz", "signed": False}, ValueError, "signed"),
    ({"exp_bits": 4, "man_bits": 3, "zero": False}, ValueError, "subnormals"),
    ({"exp_bits": 4, "man_bits": 3, "subnormals": False, "zero": False}, None, None),
    ({"exp_bits": 4, "man_bits": 3, "subnormals": 1}, TypeError, "subnormals"),
    ({"exp_bits": 4, "man_bits": 3, "signed": "yes"}, TypeError, "signed"),
    ({"exp_bits": 4, "man_bits": 3, "zero": None}, TypeError, "zero"),
    ({"exp_bits": 1, "man_bits": 3}, ValueError, "exp_bits"),  # ieee needs a top field
    ({"exp_bits": 2, "man_bits": 53, "specials": "none"}, ValueError, "man_bits"),
    ({"exp_bits": 12, "man_bits": 52}, ValueError, "bits"),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "word"),
    FLOAT_ERRORS,
    ids=[",".join(f"{k}={v!r}" for k, v in kw.items()) for kw, _, _ in FLOAT_ERRORS],
)
def test_float_format_construction_errors(kwargs: dict, error: type | None, word: str) -> None:
    if error is None:
        FloatFormat(**kwargs)
        return
    with pytest.raises(error, match=word):
        FloatFormat(**kwargs)


FIXED_ERRORS = [
    ({"bits": 1}, ValueError, "bits"),
    ({"bits": 0, "signed": False}, ValueError, "bits"),
    ({"bits": 65}, ValueError, "bits"),
    ({"bits": 8.0}, TypeError, "bits"),
    ({"bits": 8, "frac_bits": 1.5}, TypeError, "frac_bits"),
    ({"bits": 8, "signed": 1}, TypeError, "signed"),
    ({"bits": 8, "frac_bits": 1075}, ValueError, "frac_bits"),
    ({"bits": 8, "frac_bits": -1017}, ValueError, "frac_bits"),  # values reach 2^1024
    ({"bits": 8, "frac_bits": -2000}, ValueError, "frac_bits"),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "word"),
    FIXED_ERRORS,
    ids=[",".join(f"{k}={v!r}" for k, v in kw.items()) for kw, _, _ in FIXED_ERRORS],
)
def test_fixed_format_construction_errors(kwargs: dict, error: type, word: str) -> None:
    with pytest.raises(error, match=word):
        FixedFormat(**kwargs)


def test_fixed_format_range_limits_are_inclusive() -> None:
    assert FixedFormat(8, 1074).quantum == 2.0**-1074
    assert FixedFormat(8, -1016).max == 127 * 2.0**1016
    assert FixedFormat(1, signed=False).max == 1.0


def test_default_bias() -> None:
    assert FloatFormat(4, 3).bias == 7
    assert FloatFormat(4, 3, specials="fn").bias == 7
    assert FloatFormat(4, 3, specials="fnuz").bias == 8
    assert FloatFormat(4, 3, bias=np.int64(5)).bias == 5
    assert type(FloatFormat(4, 3, bias=np.int64(5)).bias) is int


# ---- the registry -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(NAMED))
def test_named_formats_resolve_to_themselves(name: str) -> None:
    fmt = NAMED[name]
    assert get_format(name) is fmt
    assert get_format(name.upper()) is fmt
    assert get_format(fmt) is fmt
    assert fmt.name == name == str(fmt)
    assert name_of(fmt) == name


@pytest.mark.parametrize("alias", list(ALIASES))
def test_aliases(alias: str) -> None:
    assert get_format(alias) is NAMED[ALIASES[alias]]


CUSTOM = [
    ("e5m10", FloatFormat(5, 10), "fp16"),
    ("E8M23", FloatFormat(8, 23), "fp32"),
    ("e4m3b11fnuz", FloatFormat(4, 3, bias=11, specials="fnuz"), "e4m3b11fnuz"),
    ("e2m1fin", FloatFormat(2, 1, specials="none"), "e2m1fn"),
    ("e6m9", FloatFormat(6, 9), "e6m9"),
    ("e5m10b30", FloatFormat(5, 10, bias=30), "e5m10b30"),
    ("e4m3b-2", FloatFormat(4, 3, bias=-2), "e4m3b-2"),
    ("e3m3fn", FloatFormat(3, 3, specials="fn"), "e3m3fn"),
    ("e3m3fnuz", FloatFormat(3, 3, specials="fnuz"), "e3m3fnuz"),
    ("e3m3b3fnuz", FloatFormat(3, 3, bias=3, specials="fnuz"), "e3m3b3fnuz"),
    ("e4m3fnu", FloatFormat(4, 3, specials="fn", signed=False), "e4m3fnu"),
    ("e1m2fin", FloatFormat(1, 2, specials="none"), "e1m2fin"),
    ("int12", FixedFormat(12), "int12"),
    ("uint3", FixedFormat(3, signed=False), "uint3"),
    ("fx8.4", FixedFormat(8, 4), "fx8.4"),
    ("ufx8.8", FixedFormat(8, 8, signed=False), "ufx8.8"),
    ("fx16.-2", FixedFormat(16, -2), "fx16.-2"),
    ("fx8.0", FixedFormat(8), "int8"),
]


@pytest.mark.parametrize(("spelling", "expected", "name"), CUSTOM, ids=[c[0] for c in CUSTOM])
def test_custom_spellings(spelling: str, expected: FloatFormat | FixedFormat, name: str) -> None:
    fmt = get_format(spelling)
    assert fmt == expected
    assert fmt.name == name
    assert get_format(fmt.name) == fmt  # the printed name parses back


def test_names_of_formats_no_spelling_reaches() -> None:
    fmt = FloatFormat(4, 3, subnormals=False)
    assert fmt.name == "e4m3(subnormals=False,zero=True,signed=True)"
    unsigned_ieee = FloatFormat(4, 3, signed=False)
    assert "signed=False" in unsigned_ieee.name


@pytest.mark.parametrize(
    ("name", "error", "word"),
    [
        ("fp7", ValueError, "unknown format"),
        ("e4m3xyz", ValueError, "unknown format"),
        ("float8", ValueError, "unknown format"),
        ("", ValueError, "unknown format"),
        ("e0m3", ValueError, "exp_bits"),
        ("e4m3fnuzfn", ValueError, "unknown format"),
        ("int1", ValueError, "bits"),
        ("e4m3b2000", ValueError, "bias"),
        (8, TypeError, "fmt"),
        (None, TypeError, "fmt"),
    ],
    ids=repr,
)
def test_get_format_errors(name: object, error: type, word: str) -> None:
    with pytest.raises(error, match=word):
        get_format(name)  # type: ignore[arg-type]


# ---- decode -> encode round trips -------------------------------------------------------------
def assert_round_trip(fmt: FloatFormat | FixedFormat) -> None:
    """encode(decode(c)) == c for every canonical finite code; and for Inf and the NaN code."""
    codes = fmt.codes()
    values = fmt.decode(codes)
    finite = np.isfinite(values)
    again = fmt.encode(values[finite])
    bad = np.flatnonzero(again != codes[finite])
    assert bad.size == 0, (
        f"{fmt.name}: code {int(codes[finite][bad[0]]):#x} -> {values[finite][bad[0]]!r}"
        f" -> {int(again[bad[0]]):#x}"
    )
    # Distinct canonical codes have distinct values (zeros by sign).
    keyed = {(float(v), math.copysign(1.0, v)) for v in values[finite]}
    assert len(keyed) == int(finite.sum())
    if isinstance(fmt, FloatFormat):
        if fmt.has_inf:
            assert int(fmt.encode(math.inf)) == fmt.inf_code
            if fmt.signed:
                assert int(fmt.encode(-math.inf)) == fmt.inf_code | fmt.sign_mask
        nan_codes = []
        if fmt.has_nan:
            assert fmt.nan_code is not None
            assert int(fmt.encode(math.nan)) == fmt.nan_code
            nan_codes = [fmt.nan_code]
            if fmt.signed and fmt.specials != "fnuz":  # -NaN keeps its sign bit
                nan_codes.append(fmt.nan_code | fmt.sign_mask)
            assert int(fmt.encode(-math.nan)) == nan_codes[-1]
        # codes() holds exactly the NaN codes that encode() writes
        assert sorted(int(c) for c in codes[np.isnan(values)]) == nan_codes


SMALL_NAMED = [n for n, f in NAMED.items() if f.bits <= 16]


@pytest.mark.parametrize("name", SMALL_NAMED)
def test_named_round_trip(name: str) -> None:
    assert_round_trip(NAMED[name])


def variants(exp_bits: int, man_bits: int) -> list[FloatFormat]:
    """Every FloatFormat(exp_bits, man_bits, ...) that constructs, over all specials/flags."""
    out = []
    for specials, signed, subnormals, zero in itertools.product(
        ("ieee", "fn", "fnuz", "none"), (True, False), (True, False), (True, False)
    ):
        fields = {"specials": specials, "signed": signed, "subnormals": subnormals, "zero": zero}
        fmt = _try_format(exp_bits, man_bits, fields)
        if fmt is not None:
            out.append(fmt)
    return out


def _try_format(exp_bits: int, man_bits: int, fields: dict) -> FloatFormat | None:
    try:
        return FloatFormat(exp_bits, man_bits, **fields)
    except ValueError:
        return None


@pytest.mark.parametrize(
    ("exp_bits", "man_bits"),
    list(itertools.product(range(1, 6), range(6))),
    ids=lambda v: str(v),
)
def test_custom_round_trip(exp_bits: int, man_bits: int) -> None:
    formats = variants(exp_bits, man_bits)
    assert formats, "at least specials='none' constructs"
    for fmt in formats:
        assert_round_trip(fmt)


def test_variant_sweep_covers_every_specials() -> None:
    built = {(f.specials, f.signed, f.subnormals, f.zero) for f in variants(3, 2)}
    assert {s for s, *_ in built} == {"ieee", "fn", "fnuz", "none"}
    assert ("fn", False, False, False) in built  # the e8m0fnu shape
    assert ("fnuz", False, True, True) not in built
    assert ("ieee", True, True, False) not in built


# ---- encode refuses what the format cannot hold ----------------------------------------------
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("e2m1fn", math.nan),
        ("e3m2fn", math.inf),
        ("e2m3fn", -math.inf),
        ("e4m3fn", math.inf),
        ("e4m3fnuz", -math.inf),
        ("e8m0fnu", 0.0),
        ("e8m0fnu", -1.0),
        ("e8m0fnu", math.inf),
        ("e4m3fnu", -1.0),
        ("e4m3fnu", -math.inf),
        ("int8", math.nan),
        ("int8", math.inf),
        ("uint8", -math.inf),
    ],
    ids=repr,
)
def test_encode_of_missing_specials_raises(name: str, value: float) -> None:
    with pytest.raises(ValueError, match="no code"):
        get_format(name).encode(value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("e4m3fn", 449.0),
        ("e4m3fn", 480.0),  # the NaN code's magnitude
        ("e4m3fn", 0.3),
        ("e4m3fn", 2.0**-10),  # below the smallest subnormal
        ("e4m3fn", 1e300),
        ("e5m2", 1.125),  # needs a third mantissa bit
        ("e5m2", 65536.0),
        ("fp16", 2.0**-25),
        ("fp16", 1 + 2.0**-11),
        ("bf16", 1 + 2.0**-8),
        ("fp32", 1 + 2.0**-24),
        ("fp32", 2.0**-150),
        ("e2m1fn", 2.5),
        ("e8m0fnu", 3.0),
        ("e8m0fnu", 2.0**-128),
        ("e8m0fnu", 2.0**128),
        ("int8", 128.0),
        ("int8", -129.0),
        ("int8", 0.5),
        ("uint8", -1.0),
        ("fx8.4", 1 / 32),
    ],
    ids=repr,
)
def test_encode_of_non_representable_raises(name: str, value: float) -> None:
    with pytest.raises(ValueError, match="no code"):
        get_format(name).encode(value)


def test_encode_without_subnormals() -> None:
    fmt = FloatFormat(4, 3, subnormals=False)
    with pytest.raises(ValueError, match="no code"):
        fmt.encode(2.0**-7)
    assert int(fmt.encode(2.0**-6)) == 0x08


def test_encode_signs_and_zeros() -> None:
    assert int(NAMED["fp16"].encode(-0.0)) == 0x8000
    assert int(NAMED["e4m3fnuz"].encode(-0.0)) == 0x00  # no -0 code
    assert int(NAMED["e4m3fnuz"].encode(-1.0)) == 0x80 | 0x40
    assert int(NAMED["e4m3fnuz"].encode(math.nan)) == 0x80
    assert int(NAMED["e4m3fn"].encode(-math.nan)) == 0xFF  # NaN keeps its sign where it can
    assert int(NAMED["e8m0fnu"].encode(1.0)) == 127
    assert int(NAMED["e8m0fnu"].encode(2.0**-127)) == 0
    assert int(NAMED["int8"].encode(-1.0)) == 0xFF
    assert NAMED["fp64"].encode(np.array([1.0, -2.0])).tolist() == [
        0x3FF0000000000000, 0xC000000000000000,
    ]


def test_encode_and_decode_reject_bad_arguments() -> None:
    fmt = NAMED["e4m3fn"]
    with pytest.raises(TypeError, match="float"):
        fmt.encode(np.array([1, 2]))
    with pytest.raises(TypeError, match="integer"):
        fmt.decode(np.array([1.0]))
    with pytest.raises(ValueError, match=r"0\.\.255"):
        fmt.decode(256)
    with pytest.raises(ValueError, match=r"0\.\.255"):
        NAMED["int8"].decode(np.array([-1]))


def test_decode_of_fp64_specials_and_extremes() -> None:
    fp64 = NAMED["fp64"]
    codes = np.array(
        [0x7FF0000000000000, 0xFFF0000000000000, 0x7FF8000000000000, 0x7FEFFFFFFFFFFFFF, 1],
        dtype=np.uint64,
    )
    assert fp64.decode(codes).view(np.uint64).tolist()[:2] == codes[:2].tolist()
    values = fp64.decode(codes)
    assert math.isnan(values[2])
    assert values[3] == np.finfo(np.float64).max
    assert values[4] == 2.0**-1074


def test_codes_and_all_values() -> None:
    assert NAMED["e2m1fn"].all_values().tolist() == [
        0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6,
    ]
    assert NAMED["e5m2"].codes().size == 256 - 2 * 3 + 2  # one NaN of three per sign
    assert NAMED["e8m0fnu"].codes().size == 256
    # per sign: 7 field-0 codes decode to zero like code 0; 6 of the 7 NaNs are not canonical
    assert FloatFormat(4, 3, subnormals=False).codes().size == 256 - 2 * 7 - 2 * 6
    with pytest.raises(ValueError, match="tables"):
        NAMED["fp32"].codes()


# ---- decode agrees with ml_dtypes ---------------------------------------------------------------
ML_DTYPES = {
    "float8_e5m2": "e5m2",
    "float8_e4m3fn": "e4m3fn",
    "float8_e4m3fnuz": "e4m3fnuz",
    "float8_e5m2fnuz": "e5m2fnuz",
    "float8_e4m3b11fnuz": "e4m3b11fnuz",
    "float8_e4m3": "e4m3",
    "float8_e3m4": "e3m4",
    "float6_e3m2fn": "e3m2fn",
    "float6_e2m3fn": "e2m3fn",
    "float4_e2m1fn": "e2m1fn",
    "float8_e8m0fnu": "e8m0fnu",
    "bfloat16": "bf16",
}


@pytest.mark.parametrize("ml_name", list(ML_DTYPES))
def test_decode_matches_ml_dtypes(ml_name: str) -> None:
    fmt = get_format(ml_name)
    assert fmt is NAMED[ML_DTYPES[ml_name]]
    ml_type = np.dtype(getattr(ml_dtypes, ml_name))
    storage = np.uint16 if ml_type.itemsize == 2 else np.uint8
    codes = np.arange(fmt.n_codes, dtype=storage)
    with np.errstate(invalid="ignore"):  # signalling NaN codes raise the invalid flag
        theirs = codes.view(ml_type).astype(np.float64)
    ours = fmt.decode(codes)
    assert np.array_equal(np.isnan(ours), np.isnan(theirs))
    both = ~np.isnan(ours)
    mismatch = np.flatnonzero(
        (ours[both] != theirs[both]) | (np.signbit(ours[both]) != np.signbit(theirs[both]))
    )
    assert mismatch.size == 0, f"code {int(codes[both][mismatch[0]]):#x}"
    # Encoding goes back to the same bits wherever the code is canonical.
    canonical = fmt.codes()
    values = fmt.decode(canonical)
    finite = np.isfinite(values)
    theirs_codes = values[finite].astype(ml_type).view(storage)
    assert np.array_equal(theirs_codes.astype(np.uint64), fmt.encode(values[finite]))


def test_float16_decode_matches_numpy() -> None:
    codes = np.arange(1 << 16, dtype=np.uint16)
    theirs = codes.view(np.float16).astype(np.float64)
    ours = NAMED["fp16"].decode(codes)
    assert np.array_equal(ours, theirs, equal_nan=True)
    numbers = ~np.isnan(ours)
    assert np.array_equal(np.signbit(ours[numbers]), np.signbit(theirs[numbers]))
