"""FloatFormat: a binary floating-point format described by its encoding fields only.

A code is laid out as [sign][exp_bits exponent field][man_bits mantissa field]. How a value is
converted into the format (rounding, overflow, sr_bits) is not part of the format: see
refsim.formats.policy and refsim.quantize. Derived constants are cached properties, checked
against the spec cards in docs/formats.md by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np

from refsim.formats.names import FLOAT_FIELDS

SPECIALS: tuple[str, ...] = ("ieee", "fn", "fnuz", "none", "ext")
"""ieee: the top exponent field holds Inf (mantissa 0) and NaN; fn: no Inf, only the all-ones
magnitude code is NaN; fnuz: no Inf, no -0, NaN is the sign-only code; none: every code is
finite; ext: IEEE P3109's extended domain: no -0, one NaN (the sign-only code when signed, the
all-ones code when unsigned) and +-Inf at the largest magnitude code below it (0x7F/0xFF signed,
0xFE unsigned, for 8 bits)."""

P3109_SPECIALS: dict[tuple[bool, bool], str] = {
    (True, False): "fnuz", (True, True): "ext", (False, False): "fn", (False, True): "ext",
}
"""The specials of a P3109 format by (signed, extended): the finite domain is fnuz (signed) or
fn (unsigned), the extended domain is ext."""

MAX_CODE_BITS_FOR_TABLES = 24
"""all_values()/codes() refuse formats wider than this: the table would not fit in memory."""

_F64_MIN_EXP = -1074  # exponent of float64's smallest subnormal
_F64_MAX_EXP = 1023  # exponent of float64's largest binade


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format.

    Args:
        exp_bits: width of the exponent field, bits (>= 1).
        man_bits: width of the mantissa field, bits, excluding the implicit leading bit (>= 0).
        bias: exponent bias; None gives 2^(exp_bits-1) - 1, or 2^(exp_bits-1) for "fnuz".
        subnormals: whether exponent field 0 holds subnormals; if False, values below the
            smallest normal round to 0 or to the smallest normal (the quantum there is 2^emin).
        specials: "ieee", "fn", "fnuz" or "none" (see SPECIALS).
        signed: whether codes carry a sign bit.
        zero: whether the format has a zero. zero=False (OCP E8M0) makes exponent field 0 an
            ordinary binade; it requires subnormals=False.
        p3109: convert by IEEE P3109's rules instead of refsim's own (docs/rounding.md, "P3109
            formats"): a finite-domain format saturates every overflow and +-Inf, an unsigned
            one sends negative values to 0, precision 1 breaks ties by the code's parity. Set
            by the p3109_k<K>p<P><s|u><e|f> names; needs subnormals, a zero and the P3109
            specials (fnuz or ext signed, fn or ext unsigned).
    """

    exp_bits: int
    man_bits: int
    bias: int | None = None
    subnormals: bool = True
    specials: str = "ieee"
    signed: bool = True
    zero: bool = True
    p3109: bool = False

    def __post_init__(self) -> None:
        for field_name in ("exp_bits", "man_bits"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{field_name} must be an int; got {value!r}")
        if self.exp_bits < 1:
            raise ValueError(f"exp_bits must be >= 1; got {self.exp_bits}")
        if self.man_bits < 0:
            raise ValueError(f"man_bits must be >= 0; got {self.man_bits}")
        if self.specials not in SPECIALS:
            raise ValueError(
                f"specials must be one of {', '.join(SPECIALS)}; got {self.specials!r}"
            )
        for field_name in ("subnormals", "signed", "zero", "p3109"):
            if not isinstance(getattr(self, field_name), bool):
                raise TypeError(f"{field_name} must be a bool; got {getattr(self, field_name)!r}")
        if self.bits > 64:
            raise ValueError(
                f"a format has at most 64 bits; exp_bits={self.exp_bits}, man_bits={self.man_bits}"
                f" and signed={self.signed} make {self.bits}"
            )
        if self.specials == "fnuz" and not self.signed:
            raise ValueError("specials='fnuz' needs signed=True: its NaN is the sign-only code")
        if self.specials == "ieee" and self.exp_bits < 2:
            raise ValueError("specials='ieee' needs exp_bits >= 2: the top field holds Inf/NaN")
        if not self.zero and self.subnormals:
            raise ValueError("zero=False needs subnormals=False: field 0 is then a normal binade")
        if self.p3109 and (not self.subnormals or not self.zero or self.specials not in (
                ("fnuz", "ext") if self.signed else ("fn", "ext"))):
            raise ValueError(
                "p3109=True needs subnormals=True, zero=True and specials 'fnuz' or 'ext' (signed)"
                f" or 'fn' or 'ext' (unsigned); got subnormals={self.subnormals}, zero={self.zero},"
                f" specials={self.specials!r}, signed={self.signed}")
        bias = self.bias
        if bias is None:
            default = 1 << (self.exp_bits - 1)
            bias = default if self.specials in ("fnuz", "ext") else default - 1
        elif isinstance(bias, bool) or not isinstance(bias, (int, np.integer)):
            raise TypeError(f"bias must be an int or None; got {bias!r}")
        object.__setattr__(self, "bias", int(bias))
        if self.emax < self.emin:
            raise ValueError(
                f"exp_bits={self.exp_bits} with specials={self.specials!r} leaves no finite binade"
            )
        # Every value must be an exact float64: the carrier of decode() and of the kernels.
        if self.emax > _F64_MAX_EXP or self.emin - self.man_bits < _F64_MIN_EXP:
            raise ValueError(
                f"bias={self.bias} puts the format outside float64 (the carrier): its exponents"
                f" run {self.emin - self.man_bits}..{self.emax}, float64 holds"
                f" {_F64_MIN_EXP}..{_F64_MAX_EXP}"
            )
        if self.man_bits > 52:
            raise ValueError(
                f"man_bits must be <= 52 (float64 is the carrier); got {self.man_bits}"
            )

    # ---- layout -------------------------------------------------------------------------------
    @cached_property
    def bits(self) -> int:
        """Width of a code, bits."""
        return int(self.signed) + self.exp_bits + self.man_bits

    @cached_property
    def n_codes(self) -> int:
        """Number of distinct codes, 2^bits."""
        return 1 << self.bits

    @cached_property
    def sign_mask(self) -> int:
        """The sign bit of a code (0 for unsigned formats)."""
        return (1 << (self.bits - 1)) if self.signed else 0

    @cached_property
    def magnitude_mask(self) -> int:
        """The exponent and mantissa fields of a code."""
        return (1 << (self.exp_bits + self.man_bits)) - 1

    @property
    def exponent_bias(self) -> int:
        """The resolved bias (never None once constructed)."""
        assert self.bias is not None
        return self.bias

    # ---- derived constants ----------------------------------------------------------------------
    @cached_property
    def emin(self) -> int:
        """Exponent of the smallest normal binade (unbiased)."""
        return (1 if self.zero else 0) - self.exponent_bias

    @cached_property
    def max_code(self) -> int:
        """The code of the largest finite value: the magnitude codes above it are specials."""
        specials_on_top = {"ieee": 1 << self.man_bits, "fn": 1, "fnuz": 0, "none": 0,
                           "ext": 1 if self.signed else 2}[self.specials]
        return self.magnitude_mask - specials_on_top

    @cached_property
    def emax(self) -> int:
        """Exponent of the largest binade that holds a finite value (unbiased)."""
        return (self.max_code >> self.man_bits) - self.exponent_bias

    @cached_property
    def max_significand(self) -> int:
        """max = max_significand * 2^(emax - man_bits), an integer of man_bits + 1 bits."""
        return (1 << self.man_bits) | (self.max_code & ((1 << self.man_bits) - 1))

    @cached_property
    def max(self) -> float:
        """Largest finite value."""
        return float(np.ldexp(float(self.max_significand), self.emax - self.man_bits))

    @cached_property
    def min_normal(self) -> float:
        """Smallest positive normal value, 2^emin."""
        return float(np.ldexp(1.0, self.emin))

    @cached_property
    def min_subnormal(self) -> float:
        """Smallest positive value: 2^(emin - man_bits) with subnormals, else 2^emin."""
        if self.subnormals:
            return float(np.ldexp(1.0, self.emin - self.man_bits))
        return self.min_normal

    @cached_property
    def eps(self) -> float:
        """Distance from 1 to the next larger value, 2^-man_bits."""
        return float(np.ldexp(1.0, -self.man_bits))

    @property
    def has_inf(self) -> bool:
        return self.specials in ("ieee", "ext")

    @property
    def has_nan(self) -> bool:
        return self.nan_code is not None

    @property
    def has_negative_zero(self) -> bool:
        return self.signed and self.zero and self.specials not in ("fnuz", "ext")

    @cached_property
    def name(self) -> str:
        """The registry name of this format, or its custom spelling (refsim.formats.registry)."""
        return _registered_names().get(self) or self.spelling()

    def p3109_name(self) -> str | None:
        """The IEEE P3109 name p3109_k<K>p<P><s|u><e|f> of a p3109 format with P3109's bias
        2^(exp_bits-1), else None."""
        if not self.p3109 or self.bias != 1 << (self.exp_bits - 1):
            return None
        return (f"p3109_k{self.bits}p{self.man_bits + 1}{'s' if self.signed else 'u'}"
                f"{'e' if self.specials == 'ext' else 'f'}")

    def spelling(self) -> str:
        """The custom spelling eXmY[bZ][fn|fnuz|fnu|fin|ext|extu], or the P3109 name
        (refsim.formats.registry parses both)."""
        if (p3109 := self.p3109_name()) is not None:
            return p3109
        default_bias = (1 << (self.exp_bits - 1)) - (0 if self.specials in ("fnuz", "ext") else 1)
        text = f"e{self.exp_bits}m{self.man_bits}"
        if self.bias != default_bias:
            text += f"b{self.bias}"
        suffix = {"ieee": "", "fn": "fn", "fnuz": "fnuz", "none": "fin", "ext": "ext"}[
            self.specials]
        if not self.signed and suffix in ("fn", "ext"):
            suffix += "u"
        text += suffix
        # Fields the spelling cannot express are written out: distinct formats never share a name.
        if (not self.subnormals or not self.zero
                or (not self.signed and self.specials not in ("fn", "ext"))):
            text += f"(subnormals={self.subnormals},zero={self.zero},signed={self.signed})"
        if self.p3109:
            text += "(p3109=True)"
        return text

    def __str__(self) -> str:
        return self.name

    # ---- codes ----------------------------------------------------------------------------------
    @cached_property
    def nan_code(self) -> int | None:
        """The canonical (positive, quiet) NaN code, or None if the format has no NaN."""
        if self.specials == "ieee":
            if self.man_bits == 0:
                return None  # the top field holds only +-Inf
            quiet = 1 << (self.man_bits - 1)
            return (((1 << self.exp_bits) - 1) << self.man_bits) | quiet
        if self.specials == "fn":
            return self.magnitude_mask
        if self.specials == "fnuz":
            return self.sign_mask
        if self.specials == "ext":
            return self.sign_mask if self.signed else self.magnitude_mask
        return None

    @cached_property
    def inf_code(self) -> int | None:
        """The +Inf code, or None."""
        if self.specials == "ext":
            return self.max_code + 1
        if self.specials != "ieee":
            return None
        return ((1 << self.exp_bits) - 1) << self.man_bits

    def codes(self) -> np.ndarray:
        """Every canonical code in increasing order (uint64).

        Non-canonical codes are the nonzero-mantissa codes of field 0 in a format without
        subnormals (they decode to zero), and, in 'ieee' formats, every NaN but the canonical one
        and its negative twin (the code encode(-nan) writes).
        """
        self._check_tabulable()
        codes = np.arange(self.n_codes, dtype=np.uint64)
        keep = np.ones(self.n_codes, dtype=bool)
        magnitude = codes & np.uint64(self.magnitude_mask)
        efield = magnitude >> np.uint64(self.man_bits)
        mfield = magnitude & np.uint64((1 << self.man_bits) - 1)
        if not self.subnormals and self.zero:
            keep &= ~((efield == 0) & (mfield != 0))
        if self.specials == "ieee":
            is_nan = (efield == (1 << self.exp_bits) - 1) & (mfield != 0)
            keep &= ~is_nan | (magnitude == np.uint64(self.nan_code or 0))
        return codes[keep]

    def all_values(self) -> np.ndarray:
        """decode(codes()): the value of every canonical code, in code order (float64)."""
        return self.decode(self.codes())

    def _check_tabulable(self) -> None:
        if self.bits > MAX_CODE_BITS_FOR_TABLES:
            raise ValueError(
                f"{self.name} has 2^{self.bits} codes; tables are built for formats of at most"
                f" {MAX_CODE_BITS_FOR_TABLES} bits"
            )

    def decode(self, codes: np.ndarray | int) -> np.ndarray:
        """Values of `codes` (unsigned ints < 2^bits) as float64; NaN codes give NaN."""
        c = np.asarray(codes)
        if c.dtype.kind not in "ui":
            raise TypeError(f"codes must be an integer array; got dtype {c.dtype}")
        if c.size and (int(c.min()) < 0 or int(c.max()) >= self.n_codes):
            raise ValueError(f"codes must lie in 0..{self.n_codes - 1} for {self.name}")
        c = c.astype(np.uint64)
        negative = (c & np.uint64(self.sign_mask)) != 0 if self.signed else np.zeros(c.shape, bool)
        magnitude = c & np.uint64(self.magnitude_mask)
        efield = (magnitude >> np.uint64(self.man_bits)).astype(np.int64)
        mfield = (magnitude & np.uint64((1 << self.man_bits) - 1)).astype(np.int64)
        if self.zero:
            is_sub = efield == 0
            # Without subnormals, field 0 decodes to zero whatever its mantissa.
            sig = np.where(is_sub, mfield if self.subnormals else 0, mfield + (1 << self.man_bits))
            exp = np.where(is_sub, self.emin, efield - self.exponent_bias) - self.man_bits
        else:
            sig = mfield + (1 << self.man_bits)
            exp = efield - self.exponent_bias - self.man_bits
        top = efield == (1 << self.exp_bits) - 1
        # Codes above max hold only Inf/NaN (replaced below); 2^(top - bias) may exceed float64
        # (fp64: 2^1024), so keep ldexp in range there.
        exp = np.where(magnitude > np.uint64(self.max_code), 0, exp)
        # ldexp scales an exact integer by a power of two: no rounding happens.
        values = np.ldexp(sig.astype(np.float64), exp.astype(np.int32))
        values = np.where(negative, -values, values)
        if self.specials == "ieee":
            values = np.where(top & (mfield == 0), np.where(negative, -np.inf, np.inf), values)
            values = np.where(top & (mfield != 0), np.nan, values)
        elif self.specials == "fn":
            values = np.where(magnitude == np.uint64(self.magnitude_mask), np.nan, values)
        elif self.specials == "fnuz":
            values = np.where(c == np.uint64(self.sign_mask), np.nan, values)
        elif self.specials == "ext":
            values = np.where(magnitude == np.uint64(self.inf_code or 0),
                              np.where(negative, -np.inf, np.inf), values)
            values = np.where(c == np.uint64(self.nan_code or 0), np.nan, values)
        return values

    def encode(self, values: np.ndarray | float) -> np.ndarray:
        """Codes (uint64) of values that the format holds exactly.

        NaN gives the NaN code (sign kept where the format has one); a value the format does not
        hold, and NaN or Inf where the format has no such code, raise ValueError. Round first
        with refsim.quantize to encode arbitrary values.
        """
        v = np.asarray(values)
        if v.dtype.kind != "f":
            raise TypeError(f"values must be a float array; got dtype {v.dtype}")
        v = v.astype(np.float64)
        bits = v.view(np.uint64)
        negative = (bits >> np.uint64(63)) != 0
        fbits = bits & np.uint64((1 << 63) - 1)
        fexp = (fbits >> np.uint64(52)).astype(np.int64)
        fman = (fbits & np.uint64((1 << 52) - 1)).astype(np.uint64)
        is_nan = np.isnan(v)
        is_inf = np.isinf(v)
        is_zero = fbits == 0
        finite_nonzero = ~(is_nan | is_inf | is_zero)
        # Exact decomposition |v| = sig * 2^lsb with sig < 2^53 (float64 subnormals included).
        sig = np.where(fexp == 0, fman, fman | np.uint64(1 << 52))
        lsb = np.where(fexp == 0, -1074, fexp - 1075)
        top = np.where(fexp == 0, _bit_length(fman) - 1 - 1074, fexp - 1023)
        quantum = np.maximum(top, self.emin) - self.man_bits
        if not self.subnormals:
            quantum = np.where(top < self.emin, self.emin, quantum)
        shift = quantum - lsb
        # |v| = n * 2^quantum with n an integer: low `shift` bits of sig are zero.
        down = np.clip(shift, 0, 63).astype(np.uint64)
        exact = np.where(shift >= 0, (sig & ((np.uint64(1) << down) - np.uint64(1))) == 0, True)
        exact &= np.where(shift > 63, False, True)
        n = np.where(shift >= 0, sig >> down, sig << np.clip(-shift, 0, 63).astype(np.uint64))
        is_normal = top >= self.emin
        in_range = finite_nonzero & exact & (np.abs(np.where(finite_nonzero, v, 0.0)) <= self.max)
        in_range &= is_normal | self.subnormals
        if not self.signed:
            in_range &= ~negative
        bad = finite_nonzero & ~in_range
        if not self.has_nan:
            bad |= is_nan
        if not self.has_inf:
            bad |= is_inf
        if not self.zero:
            bad |= is_zero
        if not self.signed:
            bad |= is_inf & negative
        if np.any(bad):
            first = v[bad].flat[0]
            raise ValueError(
                f"{self.name} has no code for {first!r} ({int(bad.sum())} such values);"
                " round it with refsim.quantize first"
            )
        if self.zero:
            efield = np.where(is_normal, top + self.bias, 0)
            n64 = n.astype(np.int64)
            mfield = np.where(is_normal, n64 - (1 << self.man_bits), n64)
        else:
            efield = top + self.bias
            mfield = n.astype(np.int64) - (1 << self.man_bits)
        magnitude = np.where(finite_nonzero, efield, 0).astype(np.uint64) << np.uint64(
            self.man_bits
        )
        magnitude |= np.where(finite_nonzero, mfield, 0).astype(np.uint64)
        if self.has_inf:
            magnitude = np.where(is_inf, np.uint64(self.inf_code or 0), magnitude)
        sign = np.where(negative, np.uint64(self.sign_mask), np.uint64(0))
        if self.specials in ("fnuz", "ext"):
            # -0 has no code of its own (its code is NaN): it encodes as +0. So does NaN's sign.
            sign = np.where(is_zero | is_nan, np.uint64(0), sign)
        nan_code = np.uint64(self.nan_code if self.nan_code is not None else 0)
        return np.where(is_nan, nan_code, magnitude) | sign


def _bit_length(x: np.ndarray) -> np.ndarray:
    """Bit length of each uint64 (0 for 0), by integer binary search."""
    x = np.asarray(x, dtype=np.uint64).copy()
    length = np.zeros(x.shape, dtype=np.int64)
    for step in (32, 16, 8, 4, 2, 1):
        big = x >= (np.uint64(1) << np.uint64(step))
        length += np.where(big, step, 0)
        x = np.where(big, x >> np.uint64(step), x)
    return length + (x > 0)


@cache
def _registered_names() -> dict[FloatFormat, str]:
    """Each named float format (refsim.formats.names) mapped to its name."""
    return {FloatFormat(**fields): name for name, fields in FLOAT_FIELDS.items()}  # type: ignore[arg-type]


def p3109_format(k: int, p: int, signed: bool = True, extended: bool = True) -> FloatFormat:
    """The IEEE P3109 format K<k> P<p>: k bits, precision p (the implicit bit included), signed
    or unsigned, extended (+-Inf) or finite domain, bias 2^(k-p-1) signed and 2^(k-p) unsigned.

    Valid p: 1..k-1 signed, 1..k unsigned; k >= 3.
    """
    for name, value in (("k", k), ("p", p)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int; got {value!r}")
    top = k - 1 if signed else k
    if k < 3 or not 1 <= p <= top:
        kind = "signed" if signed else "unsigned"
        raise ValueError(f"a P3109 format needs k >= 3 and p in 1..{top} ({kind}); got k={k},"
                         f" p={p}")
    exp_bits = k - p + (0 if signed else 1)
    return FloatFormat(exp_bits, p - 1, bias=1 << (exp_bits - 1),
                       specials=P3109_SPECIALS[(signed, extended)], signed=signed, p3109=True)
