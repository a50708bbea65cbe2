"""Scaled quantization: per-tensor and per-channel scales from amax, delayed scaling, affine ints.

Usage rules (semantics: docs/blocks.md, "Scaled quantization"):
  - A scale is a positive fp32 *decode* scale d: the element is q = round(x / d) in the format,
    with saturation, and the dequantized value is q * d (rounded once to the input's dtype).
    x / d is the exact quotient, rounded once (never x * (1/d) in floating point).
  - Current scaling: d = amax * 2^margin / fmt.max rounded to nearest fp32, amax = max |x| over
    the tensor (axis=None) or over everything but `axis` (one scale per channel). amax 0 or not
    finite gives d = 1. power_of_two=True takes d = 2^ceil(log2(amax * 2^margin / fmt.max)).
  - DelayedScaling follows Transformer Engine's DelayedScaling recipe: the scale of step t comes
    from the amax history of steps before t (max or most recent of the last `history_len`).
  - Stochastic rounding needs sr_bits in 1..SCALED_SR_BITS_MAX when d is not a power of two (the
    discarded fraction of x / d is then not a finite binary fraction); element i uses the stream
    at its flat C-order index in x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from refsim.formats import FixedFormat, FloatFormat, Format, get_format
from refsim.formats.policy import check_int, check_rounding, check_seed, check_sr_bits
from refsim.params import carrier_holds, check_array, check_axis
from refsim.quantize import quantize

__all__ = [
    "SCALED_SR_BITS_MAX",
    "DelayedScaling",
    "ScaledResult",
    "check_scaled_sr_bits",
    "current_scale",
    "exact_quotient",
    "fp32_nearest",
    "quantize_affine",
    "quantize_scaled",
]

SCALED_SR_BITS_MAX = 16
"""Largest sr_bits with a non-power-of-two scale: exact_quotient keeps at least 17 fraction bits
below the quantum of any element of at most 8 significant bits."""

_EXP_CLAMP = 1000  # quotients are kept within 2^-1000 .. 2^1000 (see exact_quotient)


def fp32_nearest(value: Fraction) -> float:
    """The float32 value nearest `value` (ties to even), as a Python float; one rounding.

    Integer arithmetic on the exact fraction: value = k * 2^q with q the float32 quantum of its
    binade (2^-149 below the normal range), k rounded half to even from the exact remainder.
    (float(value) would round to float64 first: a double rounding.)
    """
    if value == 0:
        return 0.0
    num, den = abs(value.numerator), value.denominator
    exponent = num.bit_length() - den.bit_length()  # floor(log2(num/den)) or one more
    if num << max(-exponent, 0) < den << max(exponent, 0):
        exponent -= 1
    q = max(exponent - 23, -149)
    num, den = num << max(-q, 0), den << max(q, 0)  # value / 2^q = num / den
    k, rem = divmod(num, den)
    if 2 * rem > den or (2 * rem == den and k & 1):
        k += 1
    # At or beyond 2^128 (float32's largest finite value plus half an ulp) rne gives Inf.
    magnitude = math.inf if exponent >= 128 else math.ldexp(k, q)
    if magnitude >= 2.0**128:
        magnitude = math.inf
    return -magnitude if value < 0 else magnitude


def exact_quotient(x: np.ndarray, d: np.ndarray | float) -> np.ndarray:
    """A float64 stand-in for the exact quotient x / d that every later rounding respects.

    d must be positive and finite with at most 28 significant bits. The result v is x / d
    itself when that is exact; otherwise v is the quotient truncated to 24 or more significant
    bits with one extra 1 bit appended below them (a sticky bit), so v is never a rounding
    boundary. Rounding v to a format of at most 8 significant bits then gives the same result
    as rounding x / d, in every deterministic mode, and in 'sr' with sr_bits <= 16 (the fraction
    bits that decide it are exact). Quotients beyond 2^+-1000 keep their significand and are
    moved to 2^+-1000 (they saturate, or lie far below every element's smallest quantum,
    either way). NaN, +-Inf and +-0 pass through.
    """
    x = np.asarray(x, dtype=np.float64)
    d_full = np.broadcast_to(np.asarray(d, dtype=np.float64), x.shape)
    with np.errstate(all="ignore"):
        # right for NaN, Inf and zeros; the finite lanes are replaced below (asarray: a 0-d x
        # divides to a NumPy scalar, which cannot be assigned into)
        out = np.asarray(x / d_full)
    lanes = np.isfinite(x) & (x != 0)
    if not lanes.any():
        return out
    xs = x[lanes]
    ds = d_full[lanes]
    mx, ex = np.frexp(np.abs(xs))
    big_x = np.ldexp(mx, 53).astype(np.uint64)  # |x| = big_x * 2^(ex - 53), 2^52 <= big_x < 2^53
    md, ed = np.frexp(ds)
    d_sig = np.ldexp(md, 53).astype(np.uint64)
    low = d_sig & (~d_sig + np.uint64(1))  # lowest set bit: strip trailing zeros
    tz = np.frexp(low.astype(np.float64))[1] - 1
    big_d = d_sig >> tz.astype(np.uint64)  # odd; d = big_d * 2^(ed - 53 + tz)
    if int(big_d.max()) >= 1 << 28:
        raise ValueError("exact_quotient: d has more than 28 significant bits")
    quotient = big_x // big_d
    inexact = (big_x % big_d) != 0
    one = big_d == 1
    # With big_d >= 3 the quotient is below 2^52, so 2q + sticky fits float64's 53 bits.
    sig = np.where(one, big_x, 2 * quotient + inexact.astype(np.uint64))
    k = (ex - 53) - (ed - 53 + tz) - np.where(one, 0, 1)
    top = k + np.frexp(sig.astype(np.float64))[1] - 1
    k = k - np.maximum(top - _EXP_CLAMP, 0) + np.maximum(-_EXP_CLAMP - top, 0)
    out[lanes] = np.copysign(np.ldexp(sig.astype(np.float64), k), xs)
    return out


# ---- scales -------------------------------------------------------------------------------------
def _fmt_max(fmt: Format) -> Fraction:
    return Fraction(float(fmt.max))


def current_scale(amax: float, fmt: Format | str, margin: int = 0,
                  power_of_two: bool = False) -> float:
    """The fp32 decode scale of a tensor (or channel) with absolute maximum `amax`.

    d = amax * 2^margin / fmt.max rounded to nearest fp32, or with power_of_two the smallest
    power of two >= that ideal scale; 1.0 when amax is 0 or not finite. Returns a Python float.
    """
    fmt = get_format(fmt)
    margin = _check_margin(margin)
    amax = float(amax)
    if not np.isfinite(amax) or amax <= 0:
        return 1.0
    ideal = Fraction(amax) * Fraction(2) ** margin / _fmt_max(fmt)
    if power_of_two:
        e = ideal.numerator.bit_length() - ideal.denominator.bit_length()
        while Fraction(2) ** e < ideal:
            e += 1
        while Fraction(2) ** (e - 1) >= ideal:
            e -= 1
        scale = float(Fraction(2) ** max(min(e, 127), -149))
    else:
        scale = fp32_nearest(ideal)
    if scale == 0.0:
        scale = float(np.ldexp(1.0, -149))  # the smallest fp32: the scale is never zero
    if not np.isfinite(scale):
        raise ValueError(f"amax={amax} gives a scale beyond float32's range for {fmt.name}")
    return scale


def _check_margin(margin: object) -> int:
    return check_int(margin, "margin", allowed="an int (a power-of-two headroom)")


def check_scaled_sr_bits(rounding: str, sr_bits: int | None, exact_scales: bool) -> None:
    """Refuse sr with sr_bits beyond SCALED_SR_BITS_MAX when the scales are not powers of 2."""
    if rounding == "sr" and not exact_scales and (sr_bits is None
                                                  or sr_bits > SCALED_SR_BITS_MAX):
        raise ValueError(f"sr_bits must be in 1..{SCALED_SR_BITS_MAX} for rounding='sr' with a "
                         f"scale that is not a power of two (x / scale has no finite binary "
                         f"fraction); got sr_bits={sr_bits}")


def _channel_amax(x: np.ndarray, axis: int | None) -> np.ndarray:
    """max |x| over finite values: a 0-d array (axis None) or one per index along axis."""
    finite = np.where(np.isfinite(x), np.abs(x), 0).astype(np.float64)
    if axis is None:
        return np.asarray(finite.max() if finite.size else 0.0)
    others = tuple(i for i in range(x.ndim) if i != axis)
    return finite.max(axis=others) if finite.size else np.zeros(x.shape[axis])


def _expand(values: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    """Per-channel values shaped to broadcast against an ndim array."""
    if axis is None:
        return values.reshape((1,) * ndim)
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)


def _dequantize(q: np.ndarray, d: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """q * d rounded once to dtype (q has at most 8 and d 24 significant bits: exact in
    float64, so astype is the one rounding); overflow gives Inf."""
    with np.errstate(over="ignore"):
        return np.asarray(q * d).astype(dtype)  # asarray: 0-d x gives a 0-d array, not a scalar


@dataclass(frozen=True)
class ScaledResult:
    """A scaled quantization: values (x's dtype and shape), element codes, scales, zero points.

    scales: float64 decode scales, 0-d (per tensor) or 1-D (per channel); zero_points: int64
    (affine only, else None); codes: the format's codes of q (None unless requested).
    """

    values: np.ndarray
    scales: np.ndarray
    codes: np.ndarray | None = None
    zero_points: np.ndarray | None = None


def _scaled(x: np.ndarray, fmt: Format, d: np.ndarray, axis: int | None, rounding: str,
            sr_bits: int | None, seed: int, return_codes: bool):
    exact = bool(np.all(np.frexp(d)[0] == 0.5))
    check_scaled_sr_bits(rounding, sr_bits, exact)
    d_full = _expand(d, axis, x.ndim)
    q = quantize(exact_quotient(x, d_full), fmt, rounding, overflow="saturate",
                 sr_bits=sr_bits, seed=seed)
    values = _dequantize(q, d_full, x.dtype)
    if not return_codes:
        return values
    return ScaledResult(values, d.copy(), fmt.encode(q))


def quantize_scaled(x, fmt: Format | str, rounding: str = "rne", *, axis: int | None = None,
                    scale: float | np.ndarray | None = None, margin: int = 0,
                    power_of_two: bool = False, sr_bits: int | None = None, seed: int = 0,
                    return_codes: bool = False):
    """Quantize x to `fmt` with a per-tensor (axis=None) or per-channel (axis=k) scale.

    Args:
        x: NumPy float32/float64 array.
        fmt: the element format (e4m3fn, e5m2, int8 for symmetric integers, ...).
        rounding: rne, rna, rtz, rup, rdn, rto or sr.
        axis: None for one scale; k for one scale per index along axis k.
        scale: None (current scaling from amax) or given decode scales (positive fp32 values;
            a scalar, or one per channel).
        margin: power-of-two headroom: the scale is amax * 2^margin / fmt.max.
        power_of_two: round the scale up to a power of two.
        sr_bits, seed: as refsim.quantize (sr with a non-power-of-two scale needs sr_bits <= 16).
        return_codes: return a ScaledResult (values, scales, codes) instead of the values.

    Returns:
        The dequantized values in x's dtype and shape, or a ScaledResult.
    """
    x = check_array(x)
    fmt = get_format(fmt)
    check_rounding(rounding)
    check_sr_bits(sr_bits, rounding)
    seed = check_seed(seed)
    axis = check_axis(axis, x.ndim)
    margin = _check_margin(margin)
    if not carrier_holds(fmt, np.dtype(np.float64)) or (isinstance(fmt, FloatFormat)
                                                        and fmt.man_bits > 7):
        raise ValueError(f"fmt must have at most 8 significant bits for scaled quantization "
                         f"(FP8, FP6, FP4, int8); got {fmt.name}")
    if isinstance(fmt, FixedFormat) and (not fmt.signed or fmt.bits > 8):
        raise ValueError(f"fmt must be a signed integer of at most 8 bits for symmetric scaling "
                         f"(use quantize_affine for unsigned); got {fmt.name}")
    if scale is None:
        amax = _channel_amax(x, axis)
        d = np.array([current_scale(a, fmt, margin, power_of_two) for a in amax.ravel()],
                     np.float64).reshape(amax.shape)
    else:
        d = _given_scales(scale, x, axis)
    return _scaled(x, fmt, d, axis, rounding, sr_bits, seed, return_codes)


def _given_scales(scale: object, x: np.ndarray, axis: int | None) -> np.ndarray:
    d = np.asarray(scale, dtype=np.float64)
    want = () if axis is None else (x.shape[axis],)
    if d.shape != want:
        raise ValueError(f"scale must have shape {want} (one per channel along axis {axis}); "
                         f"got shape {d.shape}")
    if not (np.all(np.isfinite(d)) and np.all(d > 0)
            and np.array_equal(d.astype(np.float32).astype(np.float64), d)):
        raise ValueError("scale must hold positive finite float32 values")
    return d


def quantize_affine(x, bits: int = 8, rounding: str = "rne", *, axis: int | None = None,
                    sr_bits: int | None = None, seed: int = 0, return_codes: bool = False):
    """Asymmetric (affine) unsigned integers: q in 0..2^bits-1, x ~ (q - z) * d.

    lo = min(min x, 0), hi = max(max x, 0) over the tensor or channel (finite values);
    d = (hi - lo) / (2^bits - 1) rounded to nearest fp32 (1 when hi == lo); the zero point
    z = round_rne(-lo / d) clamped to 0..2^bits-1; q = clamp(round(x / d) + z, 0, 2^bits-1) with
    x / d exact and rounded once; the value (q - z) * d is rounded once to x's dtype.

    Returns:
        The values, or with return_codes a ScaledResult with codes q and zero_points z.
    """
    x = check_array(x)
    bits = check_int(bits, "bits", 2, 16)
    check_rounding(rounding)
    check_sr_bits(sr_bits, rounding)
    seed = check_seed(seed)
    axis = check_axis(axis, x.ndim)
    check_scaled_sr_bits(rounding, sr_bits, False)
    top = (1 << bits) - 1
    finite = np.isfinite(x)
    others = None if axis is None else tuple(i for i in range(x.ndim) if i != axis)
    lo = np.minimum(np.where(finite, x, 0).min(axis=others), 0).astype(np.float64)
    hi = np.maximum(np.where(finite, x, 0).max(axis=others), 0).astype(np.float64)
    d = np.empty(lo.shape, np.float64)
    z = np.empty(lo.shape, np.int64)
    for i, (low, high) in enumerate(zip(lo.ravel(), hi.ravel(), strict=True)):
        span = Fraction(float(high)) - Fraction(float(low))
        scale = fp32_nearest(span / top) if span > 0 else 1.0
        scale = scale or float(np.ldexp(1.0, -149))
        d.flat[i] = scale
        z.flat[i] = min(max(round(-Fraction(float(low)) / Fraction(scale)), 0), top)
    d_full = _expand(d, axis, x.ndim)
    z_full = _expand(z.astype(np.float64), axis, x.ndim)
    wide = FixedFormat(32)  # round to integers first; the clamp below is exact
    k = quantize(exact_quotient(x, d_full), wide, rounding, overflow="saturate",
                 sr_bits=sr_bits, seed=seed)
    k = np.where(np.isnan(x), np.nan, k)
    k = np.clip(k, -z_full, top - z_full)
    values = _dequantize(k, d_full, x.dtype)
    if not return_codes:
        return values
    codes = np.where(np.isnan(k), 0, k + z_full).astype(np.uint64)
    return ScaledResult(values, d, codes, z)


# ---- delayed scaling ----------------------------------------------------------------------------
@dataclass
class DelayedScaling:
    """Transformer Engine-style delayed scaling: scales from an amax history of past steps.

    Args:
        fmt: the element format (e4m3fn, e5m2, ...).
        margin: power-of-two headroom (scale = amax * 2^margin / fmt.max).
        history_len: how many past amaxes are kept (>= 1).
        algo: "max" (the largest in the history) or "most_recent".
        power_of_two: round scales up to powers of two.

    Each call quantizes with the current scale (1.0 before any history), then records the
    input's amax and recomputes the scale from the history: the largest amax in it ("max") or
    the last ("most_recent"). An amax is max |x| over x's finite values, as in current scaling:
    NaN and Inf elements are ignored wherever they sit, so the scale is a function of the finite
    amaxes in the window only (docs/blocks.md, "Non-finite values"); a history entry that is not
    finite (given by hand) is ignored too. A reference of 0 (nothing finite and nonzero) keeps
    the previous scale, as Transformer Engine does.
    """

    fmt: Format | str
    margin: int = 0
    history_len: int = 1024
    algo: str = "max"
    power_of_two: bool = False
    scale: float = 1.0
    history: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fmt = get_format(self.fmt)
        self.margin = _check_margin(self.margin)
        self.history_len = check_int(self.history_len, "history_len", 1,
                                     allowed="a positive int")
        if self.algo not in ("max", "most_recent"):
            raise ValueError(f"algo must be 'max' or 'most_recent'; got {self.algo!r}")

    def __call__(self, x, rounding: str = "rne", *, sr_bits: int | None = None, seed: int = 0):
        """Quantize x with the current scale, then update the history and the scale."""
        x = check_array(x)
        values = quantize_scaled(x, self.fmt, rounding, scale=self.scale, sr_bits=sr_bits,
                                 seed=seed)
        self.history.append(float(_channel_amax(x, None)))  # over finite values only
        del self.history[:-self.history_len]
        window = np.asarray(self.history[-1:] if self.algo == "most_recent" else self.history,
                            np.float64)
        # Finite entries only: Python's max would depend on where a NaN sits (max([2, nan]) is
        # 2, max([nan, 2]) is nan); np.max would let one NaN hold the scale for the whole window.
        reference = float(np.max(window[np.isfinite(window)], initial=0.0))
        if reference > 0:
            self.scale = current_scale(reference, self.fmt, self.margin, self.power_of_two)
        return values
