"""docs/formats.md, the hand-written spec cards, checked against the code.

The cards are written from the standards, not generated, so each side checks the other: a wrong
constant in FloatFormat/FixedFormat, or a typo on a card, fails here.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from refsim.formats import NAMED, P3109, FixedFormat, FloatFormat, get_format

DOC = Path(__file__).resolve().parents[2] / "docs" / "formats.md"
NONE = "—"


def table_rows(lines: list[str]) -> list[list[str]]:
    """Cells of the markdown table rows in `lines` (header and separator dropped)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return [r for r in rows[2:] if r]


def first_table(block: str) -> list[list[str]]:
    """Rows of the first markdown table in `block`."""
    lines: list[str] = []
    for line in block.splitlines():
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break
    return table_rows(lines)


def parse_doc() -> tuple[list[list[str]], dict[str, dict[str, str]]]:
    """(overview rows, {name: {field: value}}) from docs/formats.md."""
    text = DOC.read_text(encoding="utf-8")
    overview = first_table(text.split("## Overview", 1)[1])
    cards: dict[str, dict[str, str]] = {}
    for match in re.finditer(r"^### (\S+)\n\n((?:\|.*\n)+)", text, flags=re.MULTILINE):
        name = match.group(1)
        assert name not in cards, f"two cards for {name}"
        cards[name] = dict(table_rows(match.group(2).splitlines()))
    return overview, cards


OVERVIEW, CARDS = parse_doc()
# The P3109 formats of gfloat 0.5.2's sample have cards too (docs/formats.md, "IEEE P3109").
P3109_CARDS = ("p3109_k3p2sf", "p3109_k4p2sf", "p3109_k6p3sf", "p3109_k6p4sf", "p3109_k8p1se",
               "p3109_k8p1ue", "p3109_k8p3se", "p3109_k8p3sf", "p3109_k8p3ue", "p3109_k8p3uf",
               "p3109_k8p4se", "p3109_k8p4sf", "p3109_k8p4ue", "p3109_k8p4uf", "p3109_k8p7sf",
               "p3109_k8p8uf")
CARDED = {**NAMED, **{n: P3109[n] for n in P3109_CARDS}}
FLOAT_NAMES = [n for n, f in CARDED.items() if isinstance(f, FloatFormat)]
FIXED_NAMES = [n for n, f in NAMED.items() if isinstance(f, FixedFormat)]


def number(text: str) -> float:
    """A decimal or hex-float literal."""
    text = text.strip()
    return float.fromhex(text) if "0x" in text.lower() else float(text)


def yes_no(text: str) -> bool:
    assert text in ("yes", "no"), text
    return text == "yes"


def code_set(text: str) -> list[tuple[int, int]]:
    """Inclusive code ranges from '0x7C01..0x7FFF, 0xFC01..0xFFFF', or [] for '—'."""
    if text == NONE:
        return []
    ranges = []
    for item in text.split(","):
        low, _, high = item.strip().partition("..")
        ranges.append((int(low, 16), int(high or low, 16)))
    return ranges


def decode_one(fmt: FloatFormat | FixedFormat, code: int) -> float:
    return float(fmt.decode(np.array([code], dtype=np.uint64))[0])


def test_every_named_format_has_a_card_and_an_overview_row() -> None:
    assert set(CARDS) == set(CARDED)
    assert [row[0] for row in OVERVIEW] == list(NAMED)


@pytest.mark.parametrize("row", OVERVIEW, ids=lambda r: r[0])
def test_overview_row(row: list[str]) -> None:
    name, kind, bits, exp_bits, man_bits, bias, specials, max_text = row
    fmt = NAMED[name]
    assert int(bits) == fmt.bits
    assert number(max_text) == fmt.max
    if kind == "fixed":
        assert isinstance(fmt, FixedFormat)
        assert (exp_bits, man_bits, bias, specials) == (NONE,) * 4
        return
    assert kind == "float" and isinstance(fmt, FloatFormat)
    assert (int(exp_bits), int(man_bits), int(bias), specials) == (
        fmt.exp_bits, fmt.man_bits, fmt.bias, fmt.specials,
    )


@pytest.mark.parametrize("name", FLOAT_NAMES)
def test_float_card(name: str) -> None:
    card = CARDS[name]
    fmt = CARDED[name]
    assert isinstance(fmt, FloatFormat)
    assert int(card["bits"]) == fmt.bits
    assert int(card["exponent bits"]) == fmt.exp_bits
    assert int(card["mantissa bits"]) == fmt.man_bits
    assert int(card["bias"]) == fmt.bias
    assert card["specials"] == fmt.specials
    assert yes_no(card["signed"]) == fmt.signed
    assert yes_no(card["subnormals"]) == fmt.subnormals
    assert yes_no(card["zero"]) == fmt.zero
    assert yes_no(card.get("p3109", "no")) == fmt.p3109
    assert number(card["max"]) == number(card["max (hex)"]) == fmt.max
    for field, value in (("min normal", fmt.min_normal), ("min subnormal", fmt.min_subnormal)):
        decimal, hexa = card[field].split(" = ")
        assert number(decimal) == number(hexa) == value, field
    # max decodes from its code, and the next magnitude code is not finite.
    max_code = int(fmt.encode(fmt.max))
    assert decode_one(fmt, max_code) == fmt.max
    if max_code + 1 < fmt.n_codes and (max_code + 1) & fmt.magnitude_mask:
        assert not math.isfinite(decode_one(fmt, max_code + 1))
    if fmt.bits <= 16:
        values = fmt.all_values()
        assert np.max(values[np.isfinite(values)]) == fmt.max
        assert np.min(values[values > 0]) == fmt.min_subnormal


@pytest.mark.parametrize("name", FLOAT_NAMES)
def test_float_card_codes(name: str) -> None:
    card = CARDS[name]
    fmt = CARDED[name]
    assert isinstance(fmt, FloatFormat)
    inf = code_set(card["Inf code"])
    if inf:
        # +Inf, then -Inf where the card lists it (P3109 cards list both; an unsigned format
        # has no -Inf)
        assert inf[0] == (fmt.inf_code, fmt.inf_code)
        assert decode_one(fmt, fmt.inf_code) == math.inf
        if fmt.signed:
            assert decode_one(fmt, fmt.inf_code | fmt.sign_mask) == -math.inf
        assert inf[1:] in ([], [(fmt.inf_code | fmt.sign_mask,) * 2])
    else:
        assert fmt.inf_code is None and not fmt.has_inf
    nan = code_set(card["NaN code"])
    nan_ranges = code_set(card["NaN codes"])
    if nan:
        assert nan == [(fmt.nan_code, fmt.nan_code)]
        assert any(lo <= fmt.nan_code <= hi for lo, hi in nan_ranges)
    else:
        assert fmt.nan_code is None and not nan_ranges
    zeros = code_set(card["zero codes"])
    for lo, hi in zeros:
        assert lo == hi
        value = decode_one(fmt, lo)
        assert value == 0 and (math.copysign(1.0, value) < 0) == bool(lo & fmt.sign_mask)
    if fmt.bits <= 16:
        # Every code decodes as the card says: NaN exactly on the listed codes, zero likewise.
        values = fmt.decode(np.arange(fmt.n_codes, dtype=np.uint64))
        listed_nan = np.zeros(fmt.n_codes, bool)
        for lo, hi in nan_ranges:
            listed_nan[lo : hi + 1] = True
        assert np.array_equal(np.isnan(values), listed_nan)
        listed_zero = np.zeros(fmt.n_codes, bool)
        for lo, _ in zeros:
            listed_zero[lo] = True
        if fmt.subnormals or not fmt.zero:
            assert np.array_equal(values == 0, listed_zero)
        infinities = 2 if fmt.signed else 1
        assert np.count_nonzero(np.isinf(values)) == (infinities if inf else 0)
    else:
        # Too many codes to walk: each range's ends and middle are NaN, the codes beside it not.
        for lo, hi in nan_ranges:
            for code in (lo, (lo + hi) // 2, hi):
                assert math.isnan(decode_one(fmt, code)), hex(code)
            for code in (lo - 1, hi + 1):
                if 0 <= code < fmt.n_codes and not any(a <= code <= b for a, b in nan_ranges):
                    assert not math.isnan(decode_one(fmt, code)), hex(code)
    # The hex width of every listed code is that of the format.
    width = -(-fmt.bits // 4)
    for field in ("Inf code", "NaN code", "NaN codes", "zero codes"):
        for token in re.findall(r"0x[0-9A-Fa-f]+", card[field]):
            assert len(token) - 2 == width, f"{field}: {token} is not {width} hex digits"


@pytest.mark.parametrize("name", FIXED_NAMES)
def test_fixed_card(name: str) -> None:
    card = CARDS[name]
    fmt = NAMED[name]
    assert isinstance(fmt, FixedFormat)
    assert int(card["bits"]) == fmt.bits
    assert int(card["frac bits"]) == fmt.frac_bits
    assert yes_no(card["signed"]) == fmt.signed
    assert number(card["min"]) == fmt.min
    assert number(card["max"]) == fmt.max
    assert number(card["quantum"]) == fmt.quantum
    assert decode_one(fmt, int(card["min code"], 16)) == fmt.min
    assert decode_one(fmt, int(card["max code"], 16)) == fmt.max
    assert int(fmt.encode(fmt.min)) == int(card["min code"], 16)
    assert int(fmt.encode(fmt.max)) == int(card["max code"], 16)


def test_custom_spellings_section_examples() -> None:
    """The examples in the custom-spellings section mean what the section says."""
    assert get_format("e5m10") == NAMED["fp16"]
    assert get_format("e5m10").name == "fp16"
    assert get_format("e4m3b11fnuz") is NAMED["e4m3b11fnuz"]
    assert get_format("e2m1fin") == NAMED["e2m1fn"]
    e6m9 = get_format("e6m9")
    assert isinstance(e6m9, FloatFormat) and e6m9.bits == 16 and e6m9.max > NAMED["fp16"].max
    fx = get_format("fx8.4")
    assert isinstance(fx, FixedFormat)
    assert (fx.quantum, fx.min, fx.max) == (1 / 16, -8.0, 7.9375)
    for alias in ("half", "float", "double", "e8m0", "float8_e4m3fn", "bfloat16", "float4_e2m1fn"):
        assert get_format(alias).name in CARDS
    assert get_format("e4m3ext") == FloatFormat(4, 3, specials="ext")
    assert get_format("e5m3extu").signed is False
    assert get_format("p3109_k8p4se").name in CARDS
