"""The executable specification of rounding: slow, exact, obviously right.

Every rule of docs/rounding.md is written here once, over `fractions.Fraction` and Python ints,
and nowhere else: this module shares no code with any kernel and uses no bit tricks. The binade of
a value is found by exact comparison with powers of two, never with float log2/floor. The format
limits it needs (emin, max, k_min, k_max) are re-derived here from the format's fields, so a wrong
cached constant in FloatFormat/FixedFormat shows up as a disagreement instead of being inherited.

Usage rules:
  - `round_value` rounds one scalar (a Python float, a NumPy float scalar, an int or a Fraction;
    float32 values are taken at their exact value). It returns a Python float that is exactly the
    format's value (-0.0, inf and nan where the contract says).
  - `quantize_exact` loops `round_value` over an array in flat C order; element i under seed s
    takes its stochastic-rounding number from `sr_uniform(s, i, ...)`, or, with caller-given
    random bits, its integer R from rbits (`round_value_rbits`).
  - NumPy is used only for numpy.random.Philox and array plumbing.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from refsim.formats.fixed_format import FixedFormat
from refsim.formats.float_format import FloatFormat
from refsim.formats.policy import (
    check_overflow,
    check_rbits_array,
    check_rbits_request,
    check_rounding,
    check_seed,
    check_sr_bits,
    check_sr_variant,
)
from refsim.formats.registry import Format, get_format

__all__ = [
    "candidates",
    "float_max",
    "p3109_code_odd",
    "pow2",
    "quantize_exact",
    "round_integer",
    "round_value",
    "round_value_rbits",
    "split_at_quantum",
    "sr_bits_needed",
    "sr_probability",
    "sr_uniform",
    "stream_half",
]

_WORD_BITS = 32  # bits per word of the rounding stream (half a Philox output word)


# ---- exact helpers ------------------------------------------------------------------------------
def pow2(e: int) -> Fraction:
    """2^e exactly, for any integer e."""
    return Fraction(1 << e) if e >= 0 else Fraction(1, 1 << -e)


def _binade(a: Fraction) -> int:
    """The e with 2^e <= a < 2^(e+1), for a > 0.

    With a = p/q, 2^(P-1) <= p < 2^P and 2^(Q-1) <= q < 2^Q (P, Q the bit lengths), a lies in
    (2^(P-Q-1), 2^(P-Q+1)); one exact comparison with 2^(P-Q) decides between P-Q and P-Q-1.
    """
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if a < pow2(e):
        e -= 1
    return e


def _parse(x: object) -> tuple[str, bool, Fraction]:
    """(kind, negative, magnitude) of x; kind is 'nan', 'inf' or 'finite'.

    `negative` is the sign bit for floats (so -0.0 is negative) and x < 0 for ints and Fractions.
    """
    if isinstance(x, Fraction):
        return "finite", x < 0, abs(x)
    if isinstance(x, bool):
        raise TypeError("x must be a float, an int or a Fraction; got a bool")
    if isinstance(x, (int, np.integer)):
        value = int(x)
        return "finite", value < 0, Fraction(abs(value))
    if isinstance(x, np.floating):
        if x.dtype.itemsize > 8:
            raise TypeError(f"x of dtype {x.dtype} has no exact Python float; pass a Fraction")
        x = float(x)  # exact for float16/32/64
    if not isinstance(x, float):
        raise TypeError(f"x must be a float, an int or a Fraction; got {type(x).__name__}")
    if math.isnan(x):
        return "nan", False, Fraction(0)
    negative = math.copysign(1.0, x) < 0
    if math.isinf(x):
        return "inf", negative, Fraction(0)
    return "finite", negative, abs(Fraction(x))


def _to_float(value: Fraction) -> float:
    """value as a Python float; raises if float64 cannot hold it exactly (the carrier)."""
    result = float(value)
    if Fraction(result) != value:
        raise ValueError(f"{value} is not an exact float64; the format is too wide for a float")
    return result


# ---- the format limits, from the fields ---------------------------------------------------------
def _float_emin(fmt: FloatFormat) -> int:
    """Exponent of the smallest normal binade: field 1, or field 0 when there is no zero."""
    assert fmt.bias is not None
    return (1 if fmt.zero else 0) - fmt.bias


def float_max(fmt: FloatFormat) -> Fraction:
    """Largest finite value, from the encoding rules of each `specials` variant."""
    assert fmt.bias is not None
    m = fmt.man_bits
    top_field = (1 << fmt.exp_bits) - 1
    top_mantissa = (1 << m) - 1
    # How many of the top magnitude codes are specials: fn one (NaN), ext one signed (Inf; NaN
    # is the sign-only code) and two unsigned (Inf, then NaN); fnuz and none: none.
    taken = {"fn": 1, "ext": 1 if fmt.signed else 2}.get(fmt.specials, 0)
    if fmt.specials == "ieee":
        top_field -= 1  # the all-ones field is Inf/NaN
    elif taken:
        # Step down `taken` codes from the all-ones magnitude, borrowing from the field.
        while taken:
            if top_mantissa == 0:
                top_field -= 1
                top_mantissa = (1 << m) - 1
            else:
                top_mantissa -= 1
            taken -= 1
    return (Fraction(1 << m) + top_mantissa) * pow2(top_field - fmt.bias - m)


def _fixed_range(fmt: FixedFormat) -> tuple[int, int]:
    """(k_min, k_max): the integers a code holds, two's complement or unsigned."""
    if fmt.signed:
        return -(1 << (fmt.bits - 1)), (1 << (fmt.bits - 1)) - 1
    return 0, (1 << fmt.bits) - 1


# ---- the grid -----------------------------------------------------------------------------------
def _quantum_exponent(a: Fraction, fmt: Format) -> int:
    """q with quantum 2^q for magnitude a >= 0 (the grid table of docs/rounding.md).

    For a = 0 the grid is that of the smallest binade (only candidates() uses it).
    """
    if isinstance(fmt, FixedFormat):
        return -fmt.frac_bits
    emin = _float_emin(fmt)
    m = fmt.man_bits
    if a != 0 and _binade(a) >= emin:
        return _binade(a) - m
    return emin - m if fmt.subnormals else emin


def split_at_quantum(a: Fraction, fmt: Format) -> tuple[int, Fraction, int]:
    """(n, f, q): a = (n + f) * 2^q with n = floor(a / 2^q) and 0 <= f < 1."""
    q = _quantum_exponent(a, fmt)
    k = a / pow2(q)
    n = math.floor(k)
    return n, k - n, q


def _finite_magnitude(x: object) -> tuple[bool, Fraction]:
    kind, negative, a = _parse(x)
    if kind != "finite":
        raise ValueError(f"x must be finite; got {x!r}")
    return negative, a


def candidates(x: object, fmt: Format | str) -> tuple[Fraction, Fraction, Fraction]:
    """(lo, hi, f): the magnitudes n * 2^q and (n + 1) * 2^q around |x|, and the fraction f.

    hi is computed as if the exponent range were unbounded above: it may be 2^(e+1) or exceed
    the format's max. x must be finite.
    """
    fmt = get_format(fmt)
    _, a = _finite_magnitude(x)
    n, f, q = split_at_quantum(a, fmt)
    return n * pow2(q), (n + 1) * pow2(q), f


def _check_u(u: object, rounding: str) -> Fraction | None:
    if rounding != "sr":
        if u is not None:
            raise ValueError(f"u applies only to rounding='sr'; got rounding={rounding!r}")
        return None
    if u is None:
        raise ValueError("rounding='sr' needs u, a Fraction in [0, 1)")
    if isinstance(u, bool) or not isinstance(u, (Fraction, int)):
        raise TypeError(f"u must be a Fraction in [0, 1); got {type(u).__name__}")
    u = Fraction(u)
    if not 0 <= u < 1:
        raise ValueError(f"u must lie in [0, 1); got {u}")
    return u


def _sr_fraction(scaled: Fraction, sr_variant: str) -> int:
    """F, the integer the random bits are added to, from f * 2^N: floor, or to nearest with
    ties up, to even or to odd (refsim.formats.policy.SR_VARIANTS)."""
    low = math.floor(scaled)
    rest = scaled - low
    if sr_variant == "floor" or rest < Fraction(1, 2):
        return low
    if rest > Fraction(1, 2) or sr_variant == "half-up":
        return low + 1
    if sr_variant == "half-even":
        return low + (low % 2)
    return low + (1 - low % 2)  # half-odd


def _rounds_up(
    n: int, f: Fraction, negative: bool, rounding: str, sr_bits: int | None, u: Fraction | None,
    sr_variant: str = "floor",
) -> bool:
    """Whether the magnitude goes to (n + 1) * 2^q (the mode table; rto is handled apart)."""
    if f == 0:
        return False
    half = Fraction(1, 2)
    if rounding == "rne":
        return f > half or (f == half and n % 2 == 1)
    if rounding == "rna":
        return f >= half
    if rounding == "rtz":
        return False
    if rounding == "rup":
        return not negative
    if rounding == "rdn":
        return negative
    if rounding == "sr":
        assert u is not None
        if sr_bits is None:
            return u + f >= 1
        scale = 1 << sr_bits
        return math.floor(u * scale) + _sr_fraction(f * scale, sr_variant) >= scale
    raise AssertionError(f"unhandled rounding {rounding!r}")


def round_integer(
    n: int, f: Fraction, negative: bool, rounding: str, sr_bits: int | None, u: Fraction | None,
    odd: bool | None = None, sr_variant: str = "floor",
) -> int:
    """The chosen magnitude as an integer multiple of the quantum.

    odd: whether the code of n * 2^q is odd, for rne's ties and rto; None means n's last bit
    (a P3109 format of precision 1 passes its exponent field's, p3109_code_odd). sr_variant:
    how sr with sr_bits makes f an integer (refsim.formats.policy.SR_VARIANTS).
    """
    if odd is None:
        odd = n % 2 == 1
    if rounding == "rto":
        return n + 1 if f > 0 and not odd else n
    if rounding == "rne" and f == Fraction(1, 2):
        return n + 1 if odd else n
    return n + 1 if _rounds_up(n, f, negative, rounding, sr_bits, u, sr_variant) else n


def p3109_code_odd(n: int, q: int, fmt: FloatFormat) -> bool | None:
    """P3109's CodeIsEven, negated, for precision 1 (no mantissa bits): the candidate n * 2^q
    is 0 (even) or 2^q, whose code is its exponent field q + bias. None for other formats (n's
    last bit decides)."""
    if not fmt.p3109 or fmt.man_bits != 0:
        return None
    assert fmt.bias is not None
    return n != 0 and (q + fmt.bias) % 2 == 1


def _toward_zero(rounding: str, negative: bool) -> bool:
    """Whether the mode rounds toward zero for this sign (these saturate on overflow)."""
    return (
        rounding in ("rtz", "rto")
        or (rounding == "rup" and negative)
        or (rounding == "rdn" and not negative)
    )


# ---- rounding -----------------------------------------------------------------------------------
def _signed(negative: bool, magnitude: float) -> float:
    return -magnitude if negative else magnitude


def _float_overflow(fmt: FloatFormat, negative: bool, rounding: str, overflow: str) -> float:
    """The value of an overflow (|v| > max, or an infinite input in a format without Inf or
    under satfinite)."""
    if fmt.p3109:
        return _p3109_overflow(fmt, negative, rounding, overflow)
    if (overflow in ("saturate", "satfinite") or fmt.specials == "none"
            or _toward_zero(rounding, negative)):
        return _signed(negative, _to_float(float_max(fmt)))
    if fmt.specials in ("ieee", "ext"):
        return _signed(negative, math.inf)
    return math.nan  # fn, fnuz: no Inf


def _p3109_overflow(fmt: FloatFormat, negative: bool, rounding: str, overflow: str) -> float:
    """P3109's Saturate for a finite |v| > max (negative values of unsigned formats are not
    sent here: they are 0). overflow default is OvfInf, saturate SatPropagate, satfinite
    SatFinite. The finite domain has no Inf: every overflow is +-max. OvfInf keeps +-max for
    the modes that round toward zero for the sign and, unsigned, for round-to-odd."""
    top = _signed(negative, _to_float(float_max(fmt)))
    if fmt.specials != "ext" or overflow in ("saturate", "satfinite"):
        return top
    if rounding in ("rtz",) or (rounding == "rup" and negative) or (
            rounding == "rdn" and not negative) or (rounding == "rto" and not fmt.signed):
        return top
    return _signed(negative, math.inf)


def _round_float(
    kind: str, negative: bool, a: Fraction, fmt: FloatFormat, rounding: str, overflow: str,
    sr_bits: int | None, u: Fraction | None, sr_variant: str = "floor",
) -> float:
    if kind == "nan":
        return math.nan
    if not fmt.signed and negative and (kind == "inf" or a != 0):
        # unsigned: a negative nonzero input has no value; P3109 saturates it to M_lo = 0
        return 0.0 if fmt.p3109 else math.nan
    # Only signed formats with a zero and no fnuz/ext rule keep -0.
    keeps_negative_zero = fmt.signed and fmt.specials not in ("fnuz", "ext")
    if kind == "inf":
        if fmt.specials in ("ieee", "ext") and overflow != "satfinite":
            return _signed(negative, math.inf)  # exact: no rounding, no overflow
        # satfinite sends +-Inf to +-max even where the format has an Inf (PTX cvt .satfinite);
        # a P3109 finite-domain format takes +-Inf to +-max under every saturation mode
        if fmt.p3109:
            return _signed(negative, _to_float(float_max(fmt)))
        return _float_overflow(fmt, negative, rounding, overflow)
    if a == 0:
        if not fmt.zero:
            return math.nan
        return _signed(negative and keeps_negative_zero, 0.0)
    n, f, q = split_at_quantum(a, fmt)
    odd = p3109_code_odd(n, q, fmt)
    magnitude = round_integer(n, f, negative, rounding, sr_bits, u, odd, sr_variant) * pow2(q)
    if magnitude > float_max(fmt):
        return _float_overflow(fmt, negative, rounding, overflow)
    if magnitude == 0:
        if not fmt.zero:
            magnitude = pow2(_float_emin(fmt))  # no zero: raise to the smallest value
        else:
            return _signed(negative and keeps_negative_zero, 0.0)
    return _signed(negative, _to_float(magnitude))


def _round_fixed(
    kind: str, negative: bool, a: Fraction, fmt: FixedFormat, rounding: str, overflow: str,
    sr_bits: int | None, u: Fraction | None, sr_variant: str = "floor",
) -> float:
    k_min, k_max = _fixed_range(fmt)
    if kind == "nan":
        return math.nan
    if kind == "inf":
        if overflow == "wrap":
            return math.nan
        k = k_min if negative else k_max
    else:
        n, f, _ = split_at_quantum(a, fmt)
        magnitude = round_integer(n, f, negative, rounding, sr_bits, u, None, sr_variant)
        k = -magnitude if negative else magnitude
        if not k_min <= k <= k_max:
            if overflow == "wrap":
                k = (k - k_min) % (1 << fmt.bits) + k_min
            else:  # default, saturate and satfinite: all clamp (Inf too, above)
                k = min(max(k, k_min), k_max)
    # k == 0 gives +0.0: fixed point has no -0.
    return _to_float(k * pow2(-fmt.frac_bits))


def round_value(
    x: object,
    fmt: Format | str,
    rounding: str = "rne",
    overflow: str = "default",
    sr_bits: int | None = None,
    u: Fraction | None = None,
    sr_variant: str = "floor",
) -> float:
    """x rounded once, from its exact value, to `fmt` (docs/rounding.md).

    Args:
        x: a Python float (float32 values at their exact value), NumPy float scalar, int or
            Fraction; +-inf and nan allowed.
        fmt: a FloatFormat, FixedFormat or a name get_format() knows.
        rounding: rne, rna, rtz, rup, rdn, rto or sr.
        overflow: default, saturate, satfinite, or wrap (fixed point only).
        sr_bits: None (sr reads every discarded bit) or 1..64 random bits (sr only).
        u: the element's uniform number in [0, 1) as a Fraction; required for sr, else None.
        sr_variant: with sr and sr_bits, how f becomes an integer (policy.SR_VARIANTS).

    Returns:
        The format's value as a Python float; nan for NaN results.
    """
    fmt = get_format(fmt)
    rounding = check_rounding(rounding)
    overflow = check_overflow(overflow)
    sr_bits = check_sr_bits(sr_bits, rounding)
    if overflow == "wrap" and isinstance(fmt, FloatFormat):
        raise ValueError(
            f"overflow='wrap' applies only to fixed-point formats; {fmt.name} is a float format"
        )
    u = _check_u(u, rounding)
    check_sr_variant(sr_variant, rounding, sr_bits)
    kind, negative, a = _parse(x)
    if isinstance(fmt, FixedFormat):
        return _round_fixed(kind, negative, a, fmt, rounding, overflow, sr_bits, u, sr_variant)
    return _round_float(kind, negative, a, fmt, rounding, overflow, sr_bits, u, sr_variant)


def round_value_rbits(
    x: object, fmt: Format | str, rbits: int, sr_bits: int, overflow: str = "default",
    sr_variant: str = "floor",
) -> float:
    """x rounded by sr with the caller-given random integer R = rbits (docs/rounding.md).

    The magnitude rounds up iff R + floor(f * 2^sr_bits) >= 2^sr_bits: round_value with
    u = R / 2^sr_bits, whose top sr_bits bits are exactly R (floor(u * 2^sr_bits) = R).

    Args:
        x, fmt, overflow: as round_value.
        rbits: R itself, an int in 0..2^sr_bits - 1 (no masking here: quantize_exact masks).
        sr_bits: r, 1..64.
    """
    bits = check_sr_bits(sr_bits, "sr")
    if bits is None:
        raise ValueError("round_value_rbits needs sr_bits, an int in 1..64")
    if isinstance(rbits, bool) or not isinstance(rbits, (int, np.integer)):
        raise TypeError(f"rbits must be an int in 0..2^{bits}-1; got {type(rbits).__name__}")
    if not 0 <= int(rbits) < 1 << bits:
        raise ValueError(f"rbits must be an int in 0..2^{bits}-1; got {int(rbits)}")
    return round_value(x, fmt, "sr", overflow, bits, Fraction(int(rbits), 1 << bits),
                       sr_variant)


# ---- stochastic rounding ------------------------------------------------------------------------
def sr_probability(x: object, fmt: Format | str, sr_bits: int | None = None) -> Fraction:
    """Probability that sr rounds |x| up: f, or floor(f * 2^r) / 2^r with sr_bits=r."""
    fmt = get_format(fmt)
    sr_bits = check_sr_bits(sr_bits, "sr")
    _, _, f = candidates(x, fmt)
    if sr_bits is None:
        return f
    return Fraction(math.floor(f * (1 << sr_bits)), 1 << sr_bits)


def sr_bits_needed(x: object, fmt: Format | str, sr_bits: int | None = None) -> int:
    """How many leading bits of u the sr decision for x reads.

    0 when no decision is made (x exact, zero, NaN or infinite); r with sr_bits=r; else d, where
    the fraction f is F / 2^d (F odd).
    """
    fmt = get_format(fmt)
    sr_bits = check_sr_bits(sr_bits, "sr")
    kind, _, a = _parse(x)
    if kind != "finite" or a == 0:
        return 0
    _, f, _ = split_at_quantum(a, fmt)
    if f == 0:
        return 0
    if sr_bits is not None:
        return sr_bits
    d = f.denominator.bit_length() - 1
    if f.denominator != 1 << d:
        raise ValueError(f"x={x!r} is not a dyadic rational: no finite number of bits decides sr")
    return d


def sr_uniform(seed: int, index: int, nbits: int) -> Fraction:
    """u = 0.H_0 H_1 ... for element `index` under `seed`, with enough words for nbits bits.

    H_j = half (index % 2), low half first, of the 64-bit word
    Philox(key=seed, counter=(index // 8) + (j << 64)).random_raw(4)[(index // 2) % 4]; at least
    H_0 is always read, so u is a multiple of 2^-32 (or finer).
    """
    seed = check_seed(seed)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be an int >= 0; got {index!r}")
    if isinstance(nbits, bool) or not isinstance(nbits, (int, np.integer)) or nbits < 0:
        raise ValueError(f"nbits must be an int >= 0; got {nbits!r}")
    index = int(index)
    n_words = max(1, -(-int(nbits) // _WORD_BITS))
    u = Fraction(0)
    for j in range(n_words):
        u += Fraction(stream_half(seed, index, j << 64), 1 << (_WORD_BITS * (j + 1)))
    return u


def stream_half(seed: int, index: int, counter: int) -> int:
    """The 32-bit word of element `index` in the NumPy Philox block at `counter` + index // 8
    (refsim's stream layout, docs/rng.md): half index % 2 of 64-bit word (index // 2) % 4."""
    block = np.random.Philox(key=seed, counter=index // 8 + counter).random_raw(4)
    raw = int(block[(index // 2) % 4])
    return (raw >> (_WORD_BITS * (index % 2))) & ((1 << _WORD_BITS) - 1)


# ---- arrays -------------------------------------------------------------------------------------
def _check_dtype_holds(fmt: Format, dtype: np.dtype) -> None:
    """Raise unless every value of fmt is an exact value of dtype (quantize returns dtype)."""
    info = np.finfo(dtype)
    precision = info.nmant + 1  # significand bits, the implicit one included
    lowest = info.minexp - info.nmant  # exponent of the smallest subnormal
    if isinstance(fmt, FixedFormat):
        k_min, k_max = _fixed_range(fmt)
        width = max(k_max, -k_min).bit_length()  # |k| < 2^width, so values < 2^(width - f)
        fits = (
            max(k_max, -k_min - 1).bit_length() <= precision
            and -fmt.frac_bits >= lowest
            and width - fmt.frac_bits <= info.maxexp
        )
    else:
        emin = _float_emin(fmt)
        smallest = emin - fmt.man_bits if fmt.subnormals else emin
        fits = (
            fmt.man_bits <= info.nmant
            and _binade(float_max(fmt)) <= info.maxexp - 1
            and smallest >= lowest
        )
    if not fits:
        raise ValueError(
            f"{fmt.name} has values that {dtype} cannot hold exactly (quantize returns the input's"
            f" dtype); pass a wider input dtype"
        )


def quantize_exact(
    values: np.ndarray,
    fmt: Format | str,
    rounding: str = "rne",
    overflow: str = "default",
    sr_bits: int | None = None,
    seed: int | None = None,
    rbits: np.ndarray | None = None,
    sr_variant: str = "floor",
) -> np.ndarray:
    """round_value over `values` in flat C order; sr takes u = sr_uniform(seed, i, ...), or with
    rbits, R = (rbits element i in flat C order) & (2^sr_bits - 1): the low sr_bits bits.

    Args:
        values: a float32 or float64 array (any shape and memory layout).
        fmt, rounding, overflow, sr_bits: as round_value.
        seed: the stream's key, 0..2^64-1 (used by sr only); None means 0.
        rbits: None, or an unsigned integer array (uint8/16/32/64) of values' shape holding each
            element's random bits in its low sr_bits bits (sr only; needs sr_bits, excludes
            seed).

    Returns:
        An array of the input's dtype and shape.
    """
    fmt = get_format(fmt)
    rounding = check_rounding(rounding)
    overflow = check_overflow(overflow)
    arr = np.asarray(values)
    if rbits is not None:
        sr_bits = check_rbits_request(rounding, sr_bits, seed)
        if not isinstance(rbits, np.ndarray):
            raise TypeError(f"rbits must be a NumPy array; got {type(rbits).__name__}")
        check_rbits_array(rbits.dtype, rbits.shape, arr.shape, sr_bits)
    sr_bits = check_sr_bits(sr_bits, rounding)
    seed = check_seed(0 if seed is None else seed)
    if arr.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"values must be float32 or float64; got dtype {arr.dtype}")
    _check_dtype_holds(fmt, arr.dtype)
    out = np.empty(arr.shape, dtype=arr.dtype)
    for i, x in enumerate(arr.flat):  # .flat walks C order whatever the layout
        x_value = float(x)
        if rbits is not None:
            assert sr_bits is not None
            r_value = int(rbits.flat[i]) % (1 << sr_bits)  # the low sr_bits bits
            out.flat[i] = round_value_rbits(x_value, fmt, r_value, sr_bits, overflow,
                                            sr_variant)
            continue
        u = None
        if rounding == "sr":
            u = sr_uniform(seed, i, sr_bits_needed(x_value, fmt, sr_bits))
        out.flat[i] = round_value(x_value, fmt, rounding, overflow, sr_bits, u, sr_variant)
    return out
