"""Adapters: every implementation the suite checks, as a function of a NumPy array.

Usage rules: an Adapter rounds a float32 or float64 array to one format with one rounding and
returns the values in the input's dtype; `reference` is refsim.quantize with the same request.
A peer's documented differences are facts about its versions: `KNOWN` is the table of them
(docs/validation.md shows it), each with the peer versions that have it, its reason, the mask
of (inputs, peer output, reference output) where it may show, and an example input on which it
does. An adapter takes the differences that apply to the INSTALLED version of its peer (an
unknown version takes them all); anything else that differs is a failure. A peer that cannot
be imported is listed by `adapters()` among the skipped, with the reason.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from refsim import quantize, quantize_blocks
from refsim.formats import P3109, BlockFormat, FloatFormat, get_block_format, get_format

__all__ = ["KNOWN", "PEER_PACKAGES", "Adapter", "Example", "KnownDifference", "adapters",
           "known_differences", "peer_version", "version_key"]

Known = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
NVFP4_SINGLE = BlockFormat(get_format("e2m1fn"), 16, FloatFormat(4, 3, specials="fn"), "nearest")
"""NVFP4 without its tensor scale (torchao's single-level nvfp4_quantize)."""
NVFP4_SINGLE_NAME = NVFP4_SINGLE.name
ROUNDINGS_ALL = ("rne", "rna", "rtz", "rup", "rdn", "rto", "sr")
SEED = 20240601


@dataclass(frozen=True)
class Adapter:
    """One implementation of one (format, rounding) request.

    peer: the implementation's name; fmt, rounding, overflow: the refsim request it is held to;
    dtypes: the input dtypes it takes; run: the implementation; known: documented differences
    (mask function) and known_reason their one-line explanation.
    """

    peer: str
    fmt: str
    rounding: str
    run: Callable[[np.ndarray], np.ndarray]
    dtypes: tuple[str, ...] = ("float32", "float64")
    overflow: str = "default"
    known: Known | None = None
    known_reason: str = ""
    seed: int = 0
    reference_run: Callable[[np.ndarray], np.ndarray] | None = None
    element: str | None = None  # a block format's element: the format of the input suites
    variant: str = ""  # tells apart adapters of one request (a peer's SR flavour)

    @property
    def suite_format(self) -> str:
        return self.element or self.fmt

    @property
    def name(self) -> str:
        extra = "".join(f"/{t}" for t in (self.overflow, self.variant)
                        if t and t != "default")
        return f"{self.peer} {self.fmt}/{self.rounding}{extra}"

    def reference(self, x: np.ndarray) -> np.ndarray:
        """refsim.quantize of the same request (the golden reference), or reference_run."""
        if self.reference_run is not None:
            return self.reference_run(x)
        return np.asarray(quantize(x, self.fmt, self.rounding, overflow=self.overflow,
                                   seed=self.seed))


# ---- masks: where a difference may show ---------------------------------------------------------
def _double_rounded(fmt: str) -> Known:
    """Where the peer gives refsim's result for the input first rounded to float32 (RNE): the
    peer converts float64 through float32."""
    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        if x.dtype != np.float64:
            return np.zeros(x.shape, bool)
        with np.errstate(over="ignore", invalid="ignore"):
            via32 = quantize(x.astype(np.float32), fmt)
        via = via32.astype(np.float64)
        return (via == got) | (np.isnan(via) & np.isnan(got))
    return mask


def _either(*masks: Known) -> Known:
    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        out = np.zeros(x.shape, bool)
        for each in masks:
            out |= each(x, got, expected)
        return out
    return mask


def _saturates(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """The peer gives +-max where refsim gives NaN or Inf for a non-NaN input (overflow)."""
    finite_max = np.nanmax(np.abs(np.where(np.isfinite(got), got, np.nan))) if got.size else 0
    return ~np.isnan(x) & ~np.isfinite(expected) & (np.abs(got) == finite_max)


def _nan_to_zero(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return np.isnan(x) & (got == 0)


def _e8m0_sign_zero(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """torch's e8m0fnu cast keeps the exponent of |x| and drops the sign; zero and values below
    2^-127 give 2^-127 (refsim: NaN for negatives and zero, as the format has neither)."""
    return (np.signbit(x) | (np.abs(x) < 2.0**-127)) & ~np.isnan(x)


def _e8m0_subnormal_up(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Float32 subnormals above 2^-127 (and float64 values there) go up to 2^-126."""
    return (np.abs(x) > 2.0**-127) & (np.abs(x) < 2.0**-126)


def _inf_to_nan(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return np.isinf(x) & np.isnan(got)


def _ties(fmt: str) -> Known:
    """Where rounding ties away from zero gives another result than ties to even."""
    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        away = quantize(x, fmt, "rna")
        return (away == got) & (away != expected)
    return mask


def _nan_to_finite(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return np.isnan(x) & np.isfinite(got)


def _unsigned_zero(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """The peer gives +0 where refsim gives -0 (negative zero and negative underflow)."""
    return (expected == 0) & np.signbit(expected) & (got == 0) & ~np.signbit(got)


def _subnormal_one_step(fmt: str) -> Known:
    """Where the input lies in the format's subnormal range and the peer is one step off."""
    fmt_obj = get_format(fmt)

    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        assert isinstance(fmt_obj, FloatFormat)
        step = fmt_obj.min_subnormal
        with np.errstate(invalid="ignore"):
            return (np.abs(x) < fmt_obj.min_normal) & (np.abs(got - expected) == step)
    return mask


def _mx_special_blocks(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Blocks of 32 that hold an Inf or NaN, where refsim gives NaN (the block's scale is NaN)."""
    padded = np.concatenate((x, np.zeros(-x.size % 32, x.dtype)))
    bad = ~np.isfinite(padded.reshape(-1, 32)).all(axis=1)
    return np.repeat(bad, 32)[:x.size] & np.isnan(expected)


def _nvfp4_blocks(x: np.ndarray) -> tuple[np.ndarray, int]:
    """x padded with zeros to whole blocks of 16 (zeros change no block's amax nor the tensor's)."""
    return np.concatenate((x, np.zeros(-x.size % 16, x.dtype))), x.size


def _nvfp4_format(fmt: str) -> BlockFormat:
    return NVFP4_SINGLE if fmt == NVFP4_SINGLE.name else get_block_format(fmt)


def _nvfp4_special_blocks(fmt: str) -> Known:
    """Blocks of 16 that hold an Inf or NaN, where refsim gives NaN."""
    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        padded, n = _nvfp4_blocks(x)
        bad = ~np.isfinite(padded.reshape(-1, 16)).all(axis=1)
        return np.repeat(bad, 16)[:n] & np.isnan(expected)
    return mask


def _nvfp4_small_scales(fmt: str) -> Known:
    """Blocks whose refsim block scale is an E4M3 subnormal (below 2^-6)."""
    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        padded, n = _nvfp4_blocks(x)
        with np.errstate(invalid="ignore"):
            scales = quantize_blocks(padded, _nvfp4_format(fmt), return_codes=True).scales
            return np.repeat(scales.reshape(-1) < 2.0**-6, 16)[:n]
    return mask


def _nvfp4_zero_tensor(fmt: str) -> Known:
    """Every element of a tensor whose finite values are all zeros (refsim: zeros)."""
    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        finite = x[np.isfinite(x)]
        return np.full(x.shape, not np.any(finite != 0))
    return mask


def _any_format(mask: Known) -> Callable[[str], Known]:
    return lambda fmt: mask


def _finite_domain_nan(fmt: str) -> Known:
    """A finite-domain P3109 format: the peer gives NaN where P3109's Saturate gives +-max
    (a finite overflow in a nearest mode, or +-Inf in any mode, without saturation)."""
    top = get_format(fmt).max

    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        return ~np.isnan(x) & np.isnan(got) & (np.abs(expected) == top)
    return mask


def _unsigned_negative_value(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """An unsigned format: the peer gives a negative value (or -Inf), which the format does not
    hold, where P3109's Saturate gives M_lo = 0."""
    return np.signbit(x) & ~np.isnan(x) & (got < 0) & (expected == 0)


def _unsigned_negative_nan(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """An unsigned format: the peer gives NaN for a negative input where P3109's Saturate gives
    M_lo = 0."""
    return np.signbit(x) & ~np.isnan(x) & np.isnan(got) & (expected == 0)


def _tiny_to_nan(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """float64 inputs below 2^-1000 (far below the format's range) give NaN."""
    with np.errstate(invalid="ignore"):  # float32 signaling NaNs
        return (np.abs(x.astype(np.float64)) < 2.0**-1000) & np.isnan(got) & ~np.isnan(x)


def _float_sum_rounds_up(fmt: str) -> Known:
    """The peer adds the random bits to the discarded fraction f in float64 (f + R/2^N >= 1):
    where f has bits below 2^-52 (an input less than two quanta above a multiple of the
    quantum, with 53 significant bits) the sum rounds to 1 and the magnitude goes one step up
    (exact: floor(f 2^N) + R >= 2^N)."""
    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", over="ignore"):
            f = _grid_fraction(fmt, x)
            fine = np.isfinite(f) & (np.mod(f * 2.0**52, 1.0) != 0)
            return fine & np.isfinite(got) & (np.abs(got) > np.abs(expected))
    return mask


def _rto_overflow_inf(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """A finite overflow gives +Inf where refsim (P3109 Saturate) gives max."""
    return np.isfinite(x) & np.isinf(got) & np.isfinite(expected) & (expected > 0)


def _ieee_top(fmt: str) -> tuple[float, float]:
    """(2^(emax+1), 2^(emax+2)) of an ieee format: the binade just above max, and the next."""
    f = get_format(fmt)
    assert isinstance(f, FloatFormat)
    return 2.0 ** (f.emax + 1), 2.0 ** (f.emax + 2)


def _binade_above_max_to_zero(fmt: str) -> Known:
    """Finite magnitudes above max give 0 (fp16 70000 -> 0: [2^(emax+1), 2^(emax+2)) in every
    mode, and a rounding past max that leaves the carrier): the peer's exponent wraps there
    (refsim: an overflow)."""
    top = get_format(fmt).max

    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.isfinite(x) & (np.abs(x) > top) & (got == 0)
    return mask


def _subnormal_underflow(fmt: str) -> Known:
    """Below the smallest normal the peer is one (rto: two) subnormal steps off, or gives 0
    where the mode
    gives a nonzero value: low bits are lost in the subnormal range."""
    f = get_format(fmt)
    assert isinstance(f, FloatFormat)

    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", over="ignore"):
            step = np.abs(got.astype(np.float64) - expected.astype(np.float64))
            return (np.abs(x) < f.min_normal) & ((step <= 2 * f.min_subnormal)
                                                 | ((got == 0) & (expected != 0)))
    return mask


def _rounds_past_max(fmt: str) -> Known:
    """Rounding up past max gives +-2^(emax+1), which the format does not hold (refsim: Inf,
    or max where the mode rounds toward zero)."""
    low, _ = _ieee_top(fmt)

    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        return np.abs(got.astype(np.float64)) == low  # 2^128 for bf16: compare in float64
    return mask


def _directed_inf(fmt: str) -> Known:
    """A finite overflow in a mode that rounds toward zero for the sign gives +-Inf (refsim and
    IEEE 754: +-max)."""
    top = get_format(fmt).max

    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        return np.isfinite(x) & np.isinf(got) & (np.abs(expected) == top)
    return mask


def _below_power_of_two(fmt: str) -> Known:
    """|x| just below a power of two, where the peer's floor(log2 |x|) in floating point rounds
    up to the next binade: the result is rounded at twice the quantum."""
    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            a = np.abs(x)
            log = np.log2(a)  # in x's dtype, as the peer computes it
            near = (np.isfinite(log) & (log == np.round(log))
                    & (np.exp2(np.round(log).astype(np.float64)) != a.astype(np.float64)))
            return near & (np.abs(got) < np.abs(expected))
    return mask


def _grid_fraction(fmt: str, x: np.ndarray) -> np.ndarray:
    """The discarded fraction f of |x| on fmt's grid (float64; exact for finite x)."""
    f = get_format(fmt)
    assert isinstance(f, FloatFormat)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a = np.abs(x.astype(np.float64))
        e = np.frexp(a)[1] - 1
        q = np.exp2(np.maximum(e, f.emin) - f.man_bits)
        k = a / q
        return k - np.floor(k)


def _near_tie(fmt: str) -> Known:
    """ties away: a fraction within 1e-6 of one half counts as a tie (rounds away), and a
    negative tie goes toward zero (refsim: exact halves only, away from zero for both signs)."""
    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.isfinite(x) & (np.abs(_grid_fraction(fmt, x) - 0.5) <= 1e-6)
    return mask


def _odd_on_exact(fmt: str) -> Known:
    """round to odd sets the last bit of values the format holds exactly (refsim and Boldo &
    Melquiond: an exact value is left alone)."""
    def mask(x: np.ndarray, got: np.ndarray, expected: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.isfinite(x) & (_grid_fraction(fmt, x) == 0) & (expected == x)
    return mask


# ---- peer versions -------------------------------------------------------------------------------
PEER_PACKAGES = {"refsim-torch-cpu": "torch", "refsim-torch-cuda": "torch", "torch-cast": "torch",
                 "ml_dtypes": "ml_dtypes", "gfloat": "gfloat", "gfloat-p3109": "gfloat",
                 "qtorch": "qtorch", "torchao-mx": "torchao", "torchao-nvfp4": "torchao",
                 "pychop": "pychop", "pychop-faultchop": "pychop", "pychop-p3109": "pychop"}
_PRE_RELEASE = re.compile(r"[-_.]?(a|b|c|rc|alpha|beta|pre|preview|dev)[-_.]?\d*")


def version_key(version: str) -> tuple[tuple[int, ...], int]:
    """A version string as a sortable key, without the packaging library.

    The release numbers with trailing zeros dropped (0.7 == 0.7.0), then 0 for a pre- or
    dev-release (0.7.0rc1 sorts below 0.7) and 1 otherwise; a local label (2.13.0+cpu) and a
    post-release (.post1) count as their release. Enough for the ranges of `KNOWN`.
    """
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)(.*)$", version)
    if match is None:
        raise ValueError(f"version must start with release numbers like 0.7.0; got {version!r}")
    release = [int(part) for part in match.group(1).split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    suffix = match.group(2).split("+")[0].lower()
    return tuple(release), 0 if _PRE_RELEASE.match(suffix) else 1


def peer_version(peer: str) -> str | None:
    """The installed version of the package behind `peer` (None: not installed)."""
    if peer not in PEER_PACKAGES:
        raise ValueError(f"peer must be one of {', '.join(PEER_PACKAGES)}; got {peer!r}")
    try:
        return importlib.metadata.version(PEER_PACKAGES[peer])
    except importlib.metadata.PackageNotFoundError:
        return None


# ---- the table of known differences -------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    """Inputs on which a difference shows: what a peer version that has it gives, what refsim
    gives (whatever the peer's version), both as values in the input dtype."""

    fmt: str
    dtype: str
    inputs: tuple[float, ...]
    peer: tuple[float, ...]
    refsim: tuple[float, ...]
    rounding: str = "rne"
    overflow: str = "default"
    variant: str = ""  # the adapter's variant (a stochastic flavour and its srnumbits)


@dataclass(frozen=True)
class KnownDifference:
    """One documented way a peer differs from refsim, and the peer versions that have it.

    peer: the adapter peer name; key: a short name, unique for the peer; formats: the adapter
    formats it concerns (None: all of the peer's); reason: one line; mask: format -> where it
    may show; since / fixed: the first version that has it / the first that no longer has it
    (None: no bound known); checked: the versions it was verified on by running `example`
    (docs/validation.md); example: inputs on which it shows.
    """

    peer: str
    key: str
    formats: tuple[str, ...] | None
    reason: str
    mask: Callable[[str], Known]
    example: Example
    since: str | None = None
    fixed: str | None = None
    checked: tuple[str, ...] = ()

    def applies_to(self, version: str) -> bool:
        """Whether `version` of the peer has this difference, by the table."""
        key = version_key(version)
        return ((self.since is None or key >= version_key(self.since))
                and (self.fixed is None or key < version_key(self.fixed)))

    @property
    def versions(self) -> str:
        """The version range as text: '< 0.7', '>= 2.0, < 2.5', or 'all versions' (no bound
        known)."""
        bounds = [f">= {self.since}" if self.since else "", f"< {self.fixed}" if self.fixed else ""]
        return ", ".join(b for b in bounds if b) or "all versions"

    def concerns(self, fmt: str) -> bool:
        return self.formats is None or fmt in self.formats


P3109_FINITE = tuple(n for n, f in P3109.items() if f.specials != "ext")
P3109_UNSIGNED = tuple(n for n, f in P3109.items() if not f.signed)
P3109_UNSIGNED_EXTENDED = tuple(n for n in P3109_UNSIGNED if P3109[n].specials == "ext")
_TINY = 1.1 * 2.0**-127  # a float32 subnormal between E8M0's two smallest values, nearer 2^-127
KNOWN: tuple[KnownDifference, ...] = (
    KnownDifference(
        "ml_dtypes", "double-rounding", None,
        "converts float64 through float32 (double rounding)", _double_rounded,
        Example("e4m3fn", "float64", (-431.99999999999994,), (-448.0,), (-416.0,)),
        fixed="0.7", checked=("0.5.4", "0.6.0", "0.7.0")),
    KnownDifference(
        "ml_dtypes", "nan-to-zero", ("e3m2fn", "e2m3fn", "e2m1fn"),
        "maps NaN to +-0 in FP6/FP4, which have no NaN (refsim: NaN)", _any_format(_nan_to_zero),
        Example("e2m1fn", "float32", (np.nan,), (-0.0,), (np.nan,)),
        checked=("0.5.4", "0.6.0", "0.7.0")),
    KnownDifference(
        "ml_dtypes", "e8m0-subnormal", ("e8m0fnu",),
        "rounds float32 subnormals above 2^-127 up to 2^-126 in e8m0fnu (refsim: to nearest, "
        "ties up)", _any_format(_e8m0_subnormal_up),
        Example("e8m0fnu", "float32", (_TINY,), (2.0**-126,), (2.0**-127,)),
        fixed="0.7", checked=("0.5.4", "0.6.0", "0.7.0")),
    KnownDifference(
        "torch-cast", "double-rounding", None,
        "converts float64 through float32 (double rounding)", _double_rounded,
        Example("e4m3fn", "float64", (-431.99999999999994,), (-448.0,), (-416.0,)),
        checked=("2.13.0",)),
    KnownDifference(
        "torch-cast", "e4m3fn-saturates", ("e4m3fn",),
        "saturates overflow and Inf to +-448 (refsim default: NaN)", _any_format(_saturates),
        Example("e4m3fn", "float32", (470.0, -np.inf), (448.0, -448.0), (np.nan, np.nan)),
        checked=("2.13.0",)),
    KnownDifference(
        "torch-cast", "e8m0-sign-zero", ("e8m0fnu",),
        "drops the sign and maps 0 and |x| < 2^-127 to 2^-127 in e8m0fnu (refsim: NaN for "
        "negatives and 0)", _any_format(_e8m0_sign_zero),
        Example("e8m0fnu", "float32", (-4.0, 0.0), (4.0, 2.0**-127), (np.nan, np.nan)),
        checked=("2.13.0",)),
    KnownDifference(
        "torch-cast", "e8m0-subnormal", ("e8m0fnu",),
        "rounds float32 subnormals above 2^-127 up to 2^-126 in e8m0fnu (refsim: to nearest, "
        "ties up)", _any_format(_e8m0_subnormal_up),
        Example("e8m0fnu", "float32", (_TINY,), (2.0**-126,), (2.0**-127,)),
        checked=("2.13.0",)),
    KnownDifference(
        "gfloat", "inf-to-nan", ("e4m3fn",),
        "an infinite input in a format without Inf gives NaN in every mode (refsim: an "
        "overflow, so +-max where the mode rounds toward zero)", _any_format(_inf_to_nan),
        Example("e4m3fn", "float64", (-np.inf,), (np.nan,), (-448.0,), rounding="rtz"),
        checked=("0.5.2",)),
    KnownDifference(
        "qtorch", "ties-away", ("e4m3fin",),
        "rounds ties away from zero (refsim: to even)", _ties,
        Example("e4m3fin", "float32", (1 + 2.0**-4,), (1.125,), (1.0,)),
        checked=("0.3.0",)),
    KnownDifference(
        "qtorch", "nan-to-finite", ("e4m3fin",),
        "maps NaN to a finite value (refsim: NaN)", _any_format(_nan_to_finite),
        Example("e4m3fin", "float32", (np.nan,), (480.0,), (np.nan,)),
        checked=("0.3.0",)),
    KnownDifference(
        "qtorch", "unsigned-zero", ("e4m3fin",),
        "gives +0 for -0 and for negative underflow (refsim: -0)", _any_format(_unsigned_zero),
        Example("e4m3fin", "float32", (-0.0,), (0.0,), (-0.0,)),
        checked=("0.3.0",)),
    KnownDifference(
        "qtorch", "subnormal-one-step", ("e4m3fin",),
        "rounds some inputs one float32 ulp below a tie up in the subnormal range",
        _subnormal_one_step,
        Example("e4m3fin", "float32", (float.fromhex("-0x1.dffffep-7"),), (-2.0**-6,),
                (float.fromhex("-0x1.cp-7"),)),
        checked=("0.3.0",)),
    KnownDifference(
        "torchao-mx", "special-blocks", ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp8_e4m3_rceil"),
        "a block holding Inf or NaN: Inf elements stay Inf, the others become 0 (refsim: the "
        "whole block is NaN, its scale NaN)", _any_format(_mx_special_blocks),
        Example("mxfp8_e4m3", "float32", (np.inf, 1.0), (np.inf, 0.0), (np.nan, np.nan)),
        checked=("0.18.0",)),
    KnownDifference(
        "torchao-nvfp4", "special-blocks", None,
        "a block holding Inf or NaN gets a finite (448) or NaN scale and saturated or zero "
        "elements (refsim: the whole block is NaN, its scale NaN)", _nvfp4_special_blocks,
        Example("nvfp4", "float32", (np.inf, 1.0), (1.0, 1.0), (np.nan, np.nan)),
        checked=("0.18.0",)),
    KnownDifference(
        "torchao-nvfp4", "e4m3-scale-floor", None,
        "clamps the E4M3 block scale to at least 2^-6, E4M3's smallest normal (refsim: E4M3 "
        "subnormal scales down to 2^-9, so small blocks keep a finer grid)", _nvfp4_small_scales,
        Example(NVFP4_SINGLE_NAME, "float32", (3 * 2.0**-9,), (2.0**-7,), (3 * 2.0**-9,)),
        checked=("0.18.0",)),
    KnownDifference(
        "torchao-nvfp4", "zero-tensor", ("nvfp4",),
        "a tensor of zeros has tensor scale 0 and NaN elements (refsim: tensor scale 1, zeros "
        "with their signs)", _nvfp4_zero_tensor,
        Example("nvfp4", "float32", (0.0, -0.0), (np.nan, np.nan), (0.0, -0.0)),
        checked=("0.18.0",)),
    # IEEE P3109 (docs/validation.md, "P3109"): refsim follows the draft's Saturate, in which a
    # finite-domain format has no overflow to NaN and an unsigned one clamps negatives to 0.
    KnownDifference(
        "gfloat-p3109", "finite-domain-nan", P3109_FINITE,
        "a finite-domain format without sat gives NaN for a nearest-mode overflow and for +-Inf "
        "in every mode (P3109 Saturate: +-max, as there is no Inf)", _finite_domain_nan,
        Example("p3109_k8p4sf", "float64", (300.0, -np.inf), (np.nan, np.nan), (240.0, -240.0)),
        checked=("0.5.2",)),
    KnownDifference(
        "gfloat-p3109", "unsigned-negative", P3109_UNSIGNED,
        "an unsigned format gives negative values (-x rounded, -Inf), which it does not hold "
        "(P3109 Saturate: M_lo = 0)", _any_format(_unsigned_negative_value),
        Example("p3109_k8p4ue", "float64", (-1.25, -np.inf), (-1.25, -np.inf), (0.0, 0.0)),
        checked=("0.5.2",)),
    KnownDifference(
        "gfloat-p3109", "sr-float-sum", None,
        "StochasticFastest/StochasticFast add the random bits to the fraction in float64, which "
        "rounds up when the fraction has bits below 2^-52 (exact rule: floor(f 2^N) + R >= 2^N)",
        _float_sum_rounds_up,
        Example("p3109_k3p1ue", "float64", (float.fromhex("0x1.fffffffffffffp-6"),), (0.125,),
                (0.0,), rounding="sr", variant="fastest2"),  # f = 1/4 - 2^-54, R = 3
        checked=("0.5.2",)),
    KnownDifference(
        "pychop-p3109", "finite-domain-nan", P3109_FINITE,
        "a finite-domain format without saturation gives NaN for a nearest-mode overflow and "
        "for +-Inf (P3109 Saturate: +-max)", _finite_domain_nan,
        Example("p3109_k8p4sf", "float64", (300.0, -np.inf), (np.nan, np.nan), (240.0, -240.0)),
        checked=("0.6.2",)),
    KnownDifference(
        "pychop-p3109", "unsigned-negative", P3109_UNSIGNED,
        "an unsigned format gives NaN for negative inputs in the modes that round away from "
        "the finite range (P3109 Saturate: M_lo = 0)", _any_format(_unsigned_negative_nan),
        Example("p3109_k8p4ue", "float64", (-1.25, -np.inf), (np.nan, np.nan), (0.0, 0.0)),
        checked=("0.6.2",)),
    KnownDifference(
        "pychop-p3109", "unsigned-rto-overflow-inf", P3109_UNSIGNED_EXTENDED,
        "round to odd overflows to +Inf in an unsigned extended format (P3109 Saturate, "
        "OvfInf: ToOdd keeps M_hi in unsigned formats)", _any_format(_rto_overflow_inf),
        Example("p3109_k8p4ue", "float64", (1e9,), (np.inf,), (53248.0,), rounding="rto"),
        checked=("0.6.2",)),
    *(KnownDifference(
        peer, "binade-above-max-to-zero", None,
        "magnitudes in [2^(emax+1), 2^(emax+2)) give 0 (refsim: an overflow, Inf in rne)",
        _binade_above_max_to_zero,
        Example("fp16", "float64", (70000.0, -100000.0), (0.0, 0.0), (np.inf, -np.inf)),
        checked=("0.6.2",)) for peer in ("pychop",)),
    *(KnownDifference(
        peer, "rounds-past-max", None,
        "rounding up past max gives +-2^(emax+1), which the format does not hold (refsim: Inf)",
        _rounds_past_max,
        Example("fp16", "float64", (65520.0,), (65536.0,), (np.inf,)),
        checked=("0.6.2",)) for peer in ("pychop",)),
    KnownDifference(
        "pychop", "directed-overflow-inf", None,
        "a finite overflow in a mode that rounds toward zero for its sign gives +-Inf (IEEE "
        "754 and refsim: +-max)", _directed_inf,
        Example("fp16", "float64", (1e6, -1e6), (np.inf, -np.inf), (65504.0, -65504.0),
                rounding="rtz"),
        checked=("0.6.2",)),
    KnownDifference(
        "pychop", "log2-binade", None,
        "takes the binade from floor(log2 |x|) in floating point, which rounds up just below a "
        "power of two: the result is rounded at twice the quantum",
        _below_power_of_two,
        Example("fp16", "float32", (float.fromhex("0x1.fffffep+9"),),
                (float.fromhex("0x1.ff8p+9"),), (float.fromhex("0x1.ffcp+9"),), rounding="rtz"),
        checked=("0.6.2",)),
    KnownDifference(
        "pychop", "rna-near-ties", None,
        "ties away treats a fraction within 1e-6 of one half as a tie and sends negative ties "
        "toward zero (refsim: exact halves, away from zero)", _near_tie,
        Example("fp16", "float64", (1 + 2.0**-11 - 2.0**-40, -(1 + 2.0**-11)),
                (1 + 2.0**-10, -1.0), (1.0, -(1 + 2.0**-10)), rounding="rna"),
        checked=("0.6.2",)),
    KnownDifference(
        "pychop", "rto-moves-exact", None,
        "round to odd changes values the format holds exactly (refsim: exact values stay)",
        _odd_on_exact,
        Example("fp16", "float64", (1.5, 3.0), (1.5 + 2.0**-10, 3.0 + 2.0**-9), (1.5, 3.0),
                rounding="rto"),
        checked=("0.6.2",)),
    *(KnownDifference(
        peer, "subnormal-underflow", None,
        "in the subnormal range results are a subnormal step or two off, or 0 where they should be "
        "nonzero (low bits lost)", _subnormal_underflow,
        Example("fp16", "float64", (float.fromhex(x),), (float.fromhex(p),), (float.fromhex(r),)),
        checked=("0.6.2",))
      for peer, x, p, r in (("pychop", "-0x1.ff7ffffffffffp-16", "-0x1p-15", "-0x1.ffp-16"),
                            ("pychop-faultchop", "-0x1.0000000000001p-25", "0x0p+0", "-0x1p-24"))),
    KnownDifference(
        "pychop-faultchop", "tiny-to-nan", None,
        "float64 inputs below about 2^-1000 give NaN (refsim: 0, or the smallest subnormal "
        "where the mode rounds away from zero)", _any_format(_tiny_to_nan),
        Example("fp16", "float64", (float.fromhex("0x1.3b4be2ceb43e3p-1022"),), (np.nan,),
                (0.0,)),
        checked=("0.6.2",)),
    *(KnownDifference(
        peer, "unsigned-zero", None,
        "gives +0 for -0 and for negative underflow (refsim: -0)", _any_format(_unsigned_zero),
        Example("fp16", "float64", (-0.0,), (0.0,), (-0.0,)),
        checked=("0.6.2",)) for peer in ("pychop", "pychop-faultchop")),
)


def known_differences(peer: str, fmt: str | None = None,
                      version: str | None = None) -> list[KnownDifference]:
    """The rows of `KNOWN` for `peer` (and `fmt`, if given) that apply to `version`: by
    default the installed one; every row of the peer when no version can be found."""
    version = version or peer_version(peer)
    return [d for d in KNOWN if d.peer == peer and (fmt is None or d.concerns(fmt))
            and (version is None or d.applies_to(version))]


def _known(peer: str, fmt: str, skip: tuple[str, ...] = ()) -> tuple[Known | None, str]:
    """The adapter's mask and reason from the differences of the installed peer version (but
    the keys in `skip`: differences of the peer's other modes)."""
    found = [d for d in known_differences(peer, fmt) if d.key not in skip]
    if not found:
        return None, ""
    package = PEER_PACKAGES[peer]
    return (_either(*(d.mask(fmt) for d in found)),
            "; ".join(f"{d.reason} [{package}: {d.versions}]" for d in found))


# ---- peers ---------------------------------------------------------------------------------------
def _quantize_torch_ops(x, fmt, rounding: str = "rne", **kwargs):
    """refsim's torch path in torch ops (route "torch", what every device but the CPU runs), on
    CPU tensors too, which would otherwise take the Numba kernels (they are the reference)."""
    return quantize(x, fmt, rounding, route="torch", **kwargs)  # the public API, its route


def _refsim_torch(device: str) -> list[Adapter]:
    import torch

    def make(fmt: str, rounding: str) -> Callable[[np.ndarray], np.ndarray]:
        def run(x: np.ndarray) -> np.ndarray:
            out = _quantize_torch_ops(torch.from_numpy(x).to(device), fmt, rounding, seed=SEED)
            return np.asarray(out.cpu().numpy())
        return run

    formats = ("e4m3fn", "e5m2", "e2m1fn", "e8m0fnu", "bf16", "fp16", "int8")
    return [Adapter(f"refsim-torch-{device}", fmt, rounding, make(fmt, rounding), seed=SEED)
            for fmt in formats for rounding in ROUNDINGS_ALL]


_TORCH_DTYPES = {"e4m3fn": "float8_e4m3fn", "e5m2": "float8_e5m2",
                 "e4m3fnuz": "float8_e4m3fnuz", "e5m2fnuz": "float8_e5m2fnuz",
                 "e8m0fnu": "float8_e8m0fnu", "bf16": "bfloat16", "fp16": "float16"}


def _torch_casts() -> list[Adapter]:
    import torch

    def make(dtype_name: str) -> Callable[[np.ndarray], np.ndarray]:
        dtype = getattr(torch, dtype_name)

        def run(x: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(x)
            return np.asarray(t.to(dtype).to(t.dtype).numpy())
        return run

    out = []
    for fmt, dtype_name in _TORCH_DTYPES.items():
        if hasattr(torch, dtype_name):
            known, reason = _known("torch-cast", fmt)
            out.append(Adapter("torch-cast", fmt, "rne", make(dtype_name), known=known,
                               known_reason=reason))
    return out


_ML_DTYPES = {"bf16": "bfloat16", "e5m2": "float8_e5m2", "e4m3": "float8_e4m3",
              "e3m4": "float8_e3m4", "e4m3fn": "float8_e4m3fn", "e4m3fnuz": "float8_e4m3fnuz",
              "e5m2fnuz": "float8_e5m2fnuz", "e4m3b11fnuz": "float8_e4m3b11fnuz",
              "e3m2fn": "float6_e3m2fn", "e2m3fn": "float6_e2m3fn", "e2m1fn": "float4_e2m1fn",
              "e8m0fnu": "float8_e8m0fnu"}


def _ml_dtypes() -> list[Adapter]:
    import ml_dtypes

    def make(type_name: str) -> Callable[[np.ndarray], np.ndarray]:
        dtype = getattr(ml_dtypes, type_name)

        def run(x: np.ndarray) -> np.ndarray:
            with np.errstate(over="ignore", invalid="ignore"):
                return np.asarray(x.astype(dtype).astype(x.dtype))
        return run

    out = []
    for fmt, type_name in _ML_DTYPES.items():
        if hasattr(ml_dtypes, type_name):
            known, reason = _known("ml_dtypes", fmt)
            out.append(Adapter("ml_dtypes", fmt, "rne", make(type_name), known=known,
                               known_reason=reason))
    return out


_GFLOAT_FORMATS = {"e4m3fn": "format_info_ocp_e4m3", "e5m2": "format_info_ocp_e5m2",
                   "e2m1fn": "format_info_ocp_e2m1", "e2m3fn": "format_info_ocp_e2m3",
                   "e3m2fn": "format_info_ocp_e3m2", "bf16": "format_info_bfloat16",
                   "fp16": "format_info_binary16"}


def _gfloat() -> list[Adapter]:
    import gfloat
    from gfloat import formats as gformats

    modes = {"rne": gfloat.RoundMode.TiesToEven, "rna": gfloat.RoundMode.TiesToAway,
             "rtz": gfloat.RoundMode.TowardZero, "rup": gfloat.RoundMode.TowardPositive,
             "rdn": gfloat.RoundMode.TowardNegative}

    def make(info: object, mode: object, finite: bool) -> Callable[[np.ndarray], np.ndarray]:
        def run(x: np.ndarray) -> np.ndarray:
            # gfloat refuses formats without Inf and NaN unless sat=True (refsim saturates
            # there too), and refuses NaN input then: NaN is passed through by the adapter.
            with np.errstate(over="ignore", invalid="ignore"):  # invalid: a float32 sNaN
                values = x.astype(np.float64)
                nan = np.isnan(values)
                rounded = np.asarray(gfloat.round_ndarray(info, np.where(nan, 0.0, values),
                                                          mode, sat=finite))
                return np.where(nan, values, rounded).astype(x.dtype)
        return run

    out: list[Adapter] = []
    for fmt, info_name in _GFLOAT_FORMATS.items():
        finite = not get_format(fmt).has_nan and not get_format(fmt).has_inf
        known, reason = _known("gfloat", fmt)
        out.extend(Adapter("gfloat", fmt, rounding,
                           make(getattr(gformats, info_name), mode, finite),
                           known=known, known_reason=reason)
                   for rounding, mode in modes.items())
    return out


def _qtorch() -> list[Adapter]:
    import torch
    from qtorch.quant import float_quantize

    def run(x: np.ndarray) -> np.ndarray:
        out = float_quantize(torch.from_numpy(x), 4, 3, rounding="nearest")
        return np.asarray(out.numpy())

    # QPyTorch reserves no code for Inf or NaN: e4m3 with max 480, which refsim spells
    # FloatFormat(4, 3, specials="none") ("e4m3fin"); that format always saturates.
    fmt = FloatFormat(4, 3, specials="none").name
    known, reason = _known("qtorch", fmt)
    return [Adapter("qtorch", fmt, "rne", run, dtypes=("float32",), known=known,
                    known_reason=reason)]


def _torchao_mx() -> list[Adapter]:
    import torch
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.mx_tensor import to_mx

    def blocks(x: np.ndarray) -> tuple[np.ndarray, int]:
        """x padded with zeros to whole blocks of 32 (a zero changes no block's scale, and
        refsim scales a short last block alone: the same thing)."""
        pad = -x.size % 32
        return np.concatenate((x, np.zeros(pad, x.dtype))), x.size

    def make(elem: object, mode: object) -> Callable[[np.ndarray], np.ndarray]:
        def run(x: np.ndarray) -> np.ndarray:
            padded, n = blocks(x)
            scale, data = to_mx(torch.from_numpy(padded), elem, 32, mode)
            values = data.float().reshape(-1, 32) * scale.float().reshape(-1, 1)
            return np.asarray(values.reshape(-1).numpy()[:n])
        return run

    def reference(name: str) -> Callable[[np.ndarray], np.ndarray]:
        def run(x: np.ndarray) -> np.ndarray:
            padded, n = blocks(x)
            return np.asarray(quantize_blocks(padded, name))[:n]
        return run

    out: list[Adapter] = []
    floor, rceil = ScaleCalculationMode.FLOOR, ScaleCalculationMode.RCEIL
    for name, elem, element, mode in (("mxfp8_e4m3", torch.float8_e4m3fn, "e4m3fn", floor),
                                      ("mxfp8_e5m2", torch.float8_e5m2, "e5m2", floor),
                                      ("mxfp8_e4m3_rceil", torch.float8_e4m3fn, "e4m3fn", rceil)):
        known, reason = _known("torchao-mx", name)
        out.append(Adapter("torchao-mx", name, "rne", make(elem, mode), dtypes=("float32",),
                           reference_run=reference(name), element=element, known=known,
                           known_reason=reason))
    return out


def _torchao_nvfp4() -> list[Adapter]:
    """torchao's NVFP4 conversion (nvfp4_quantize: the codes and E4M3 scales), two-level with
    the tensor scale torchao computes from the amax refsim defines (over the finite values:
    per_tensor_amax_to_scale), and single-level. The adapter dequantizes the codes itself,
    element * scale * tensor scale exact and rounded once to float32 (refsim's convention), so
    the conversion is compared, not torchao's fp32 dequantize arithmetic."""
    import torch
    from torchao.prototype.mx_formats.kernels import f4_unpacked_to_f32, unpack_uint4
    from torchao.prototype.mx_formats.nvfp4_tensor import (
        nvfp4_quantize,
        per_tensor_amax_to_scale,
    )

    def make(two_level: bool) -> Callable[[np.ndarray], np.ndarray]:
        def run(x: np.ndarray) -> np.ndarray:
            padded, n = _nvfp4_blocks(x)
            finite = padded[np.isfinite(padded)]
            amax = float(np.abs(finite).max()) if finite.size else 0.0
            tensor = (per_tensor_amax_to_scale(torch.tensor(amax, dtype=torch.float32))
                      if two_level else None)
            with np.errstate(all="ignore"):
                scales, data = nvfp4_quantize(torch.from_numpy(padded.reshape(1, -1)), 16,
                                              tensor)
            elements = f4_unpacked_to_f32(unpack_uint4(data)).double().numpy().reshape(-1, 16)
            t = 1.0 if tensor is None else float(tensor)
            values = elements * scales.double().numpy().reshape(-1, 1) * t  # exact in float64
            with np.errstate(all="ignore"):
                return np.asarray(values.reshape(-1)[:n].astype(x.dtype))
        return run

    def reference(fmt: BlockFormat) -> Callable[[np.ndarray], np.ndarray]:
        def run(x: np.ndarray) -> np.ndarray:
            padded, n = _nvfp4_blocks(x)
            with np.errstate(invalid="ignore"):  # signaling NaN inputs
                return np.asarray(quantize_blocks(padded, fmt))[:n]
        return run

    out: list[Adapter] = []
    for name, two_level in (("nvfp4", True), (NVFP4_SINGLE_NAME, False)):
        known, reason = _known("torchao-nvfp4", name)
        out.append(Adapter("torchao-nvfp4", name, "rne", make(two_level), dtypes=("float32",),
                           reference_run=reference(_nvfp4_format(name)), element="e2m1fn",
                           known=known, known_reason=reason))
    return out


GFLOAT_P3109_SR_BITS = (2, 8)
"""srnumbits of the gfloat-p3109 and pychop-p3109 stochastic adapters."""


def _random_bits(size: int, nbits: int) -> np.ndarray:
    """The caller-given random integers of the stochastic P3109 adapters: uint16 in
    0..2^nbits-1, one per element, the first `size` of one sequence per nbits."""
    rng = np.random.default_rng([SEED, nbits])
    return rng.integers(0, 1 << nbits, size).astype(np.uint16)


def _sr_reference(fmt: str, variant: str, nbits: int, overflow: str
                  ) -> Callable[[np.ndarray], np.ndarray]:
    """refsim's counterpart of a P3109 stochastic variant with random integer R of nbits bits:
    StochasticFastest (P3109's StochasticA) is sr with sr_bits=nbits and rbits=R, round up iff
    floor(f 2^N) + R >= 2^N; StochasticFast (B) is sr with sr_bits=nbits+1 and rbits=2R+1,
    round up iff floor(f 2^(N+1)) + 2R + 1 >= 2^(N+1); Stochastic (C) and StochasticOdd are
    sr_variant="half-even" and "half-odd" (docs/formats.md, "IEEE P3109 formats")."""
    def run(x: np.ndarray) -> np.ndarray:
        r = _random_bits(x.size, nbits).reshape(x.shape)
        if variant == "fast":
            return np.asarray(quantize(x, fmt, "sr", overflow=overflow, sr_bits=nbits + 1,
                                       rbits=(r << 1) | 1))
        return np.asarray(quantize(x, fmt, "sr", overflow=overflow, sr_bits=nbits, rbits=r,
                                   sr_variant=SR_VARIANT_OF[variant]))
    return run


SR_VARIANT_OF = {"fastest": "floor", "stochastic": "half-even", "stochasticodd": "half-odd"}
"""The refsim sr_variant of gfloat's StochasticFastest, Stochastic and StochasticOdd (its
StochasticFast goes through the rbits mapping: sr_bits=N+1, rbits=2R+1)."""


def _gfloat_p3109(names: tuple[str, ...] | None = None) -> list[Adapter]:
    """gfloat's round_ndarray on every P3109 format of refsim.formats.P3109 (or `names`): the
    five deterministic modes with sat off (refsim overflow="default", P3109 OvfInf) and on
    ("satfinite", SatFinite), and its four stochastic modes with srnumbits in
    GFLOAT_P3109_SR_BITS."""
    import gfloat
    from gfloat.formats import format_info_p3109
    from gfloat.types import Domain, Signedness

    mode = gfloat.RoundMode
    modes = {"rne": mode.TiesToEven, "rna": mode.TiesToAway, "rtz": mode.TowardZero,
             "rup": mode.TowardPositive, "rdn": mode.TowardNegative}
    sr_modes = {"fastest": mode.StochasticFastest, "fast": mode.StochasticFast,
                "stochastic": mode.Stochastic, "stochasticodd": mode.StochasticOdd}

    def make(info: object, rnd: object, sat: bool, nbits: int = 0
             ) -> Callable[[np.ndarray], np.ndarray]:
        def run(x: np.ndarray) -> np.ndarray:
            with np.errstate(over="ignore", invalid="ignore"):
                values = x.astype(np.float64)
                srbits = _random_bits(x.size, nbits).astype(np.int64) if nbits else None
                rounded = gfloat.round_ndarray(info, values, rnd, sat, srbits=srbits,
                                               srnumbits=nbits)
                return np.asarray(rounded).astype(x.dtype)
        return run

    out: list[Adapter] = []
    for name in names or tuple(P3109):
        fmt = get_format(name)
        assert isinstance(fmt, FloatFormat)
        info = format_info_p3109(fmt.bits, fmt.man_bits + 1,
                                 Signedness.Signed if fmt.signed else Signedness.Unsigned,
                                 Domain.Extended if fmt.specials == "ext" else Domain.Finite)
        known, reason = _known("gfloat-p3109", name, skip=("sr-float-sum",))
        sr_known, sr_reason = _known("gfloat-p3109", name)
        for sat, overflow in ((False, "default"), (True, "satfinite")):
            out.extend(Adapter("gfloat-p3109", name, rounding, make(info, rnd, sat),
                               overflow=overflow, known=known, known_reason=reason)
                       for rounding, rnd in modes.items())
            for variant, rnd in sr_modes.items():
                # only StochasticFastest/Fast sum in floating point (sr-float-sum)
                float_sum = variant in ("fastest", "fast")
                out.extend(Adapter(
                    "gfloat-p3109", name, "sr", make(info, rnd, sat, nbits),
                    overflow=overflow, variant=f"{variant}{nbits}",
                    known=sr_known if float_sum else known,
                    known_reason=sr_reason if float_sum else reason,
                    reference_run=_sr_reference(name, variant, nbits, overflow))
                    for nbits in GFLOAT_P3109_SR_BITS)
    return out


PYCHOP_FORMATS = {"fp16": (5, 10, "h"), "bf16": (8, 7, "b"), "e5m2": (5, 2, "q52"),
                  "e4m3": (4, 3, "q43")}
"""refsim name -> (exponent bits, trailing significand bits, FaultChop prec) of the pychop
setups: IEEE-style formats with Inf and NaN (pychop's e4m3 has max 240: refsim's e4m3)."""
_PYCHOP_MODES = {"rne": 1, "rup": 2, "rdn": 3, "rtz": 4, "rna": 8, "rto": 9}


def _pychop() -> list[Adapter]:
    """pychop's Chop (its fastest NumPy path), subnormals on, every deterministic mode."""
    from pychop import Chop

    def make(e: int, m: int, rmode: int) -> Callable[[np.ndarray], np.ndarray]:
        chop = Chop(e, m, rmode=rmode, subnormal=True)

        def run(x: np.ndarray) -> np.ndarray:
            with np.errstate(all="ignore"):
                return np.asarray(chop(x.copy())).astype(x.dtype)
        return run

    out: list[Adapter] = []
    for fmt, (e, m, _) in PYCHOP_FORMATS.items():
        known, reason = _known("pychop", fmt)
        out.extend(Adapter("pychop", fmt, rounding, make(e, m, rmode), known=known,
                           known_reason=reason) for rounding, rmode in _PYCHOP_MODES.items())
    return out


def _pychop_faultchop() -> list[Adapter]:
    """pychop's FaultChop (the classic chop interface, no faults), subnormals on, the four
    IEEE modes."""
    from pychop import FaultChop

    def make(prec: str, rmode: int) -> Callable[[np.ndarray], np.ndarray]:
        chop = FaultChop(prec, subnormal=True, rmode=rmode)

        def run(x: np.ndarray) -> np.ndarray:
            with np.errstate(all="ignore"):
                return np.asarray(chop(x.copy())).astype(x.dtype)
        return run

    out: list[Adapter] = []
    for fmt, (_, _, prec) in PYCHOP_FORMATS.items():
        known, reason = _known("pychop-faultchop", fmt)
        out.extend(Adapter("pychop-faultchop", fmt, rounding, make(prec, rmode), known=known,
                           known_reason=reason)
                   for rounding, rmode in _PYCHOP_MODES.items() if rmode <= 4)
    return out


GFLOAT_P3109_SAMPLE = ("p3109_k3p2sf", "p3109_k4p2sf", "p3109_k6p3sf", "p3109_k6p4sf",
                       "p3109_k8p1se", "p3109_k8p1ue", "p3109_k8p3se", "p3109_k8p3sf",
                       "p3109_k8p3ue", "p3109_k8p3uf", "p3109_k8p4se", "p3109_k8p4sf",
                       "p3109_k8p4ue", "p3109_k8p4uf", "p3109_k8p7sf", "p3109_k8p8uf")
"""The P3109 formats of gfloat 0.5.2's sample_formats (p3109_binary8_formats and the tiny
ones): the formats of the pychop-p3109 adapters."""


def _pychop_p3109() -> list[Adapter]:
    """pychop's p3109_quantize on GFLOAT_P3109_SAMPLE: six deterministic modes with saturation
    off and on (refsim "default" and "satfinite"), and stochastic_a / _b / _c (P3109's
    StochasticA/B/C) with srnumbits in GFLOAT_P3109_SR_BITS."""
    from pychop.p3109 import P3109Format, p3109_quantize

    modes = {"rne": "nearest_even", "rna": "nearest_away", "rtz": "toward_zero",
             "rup": "toward_positive", "rdn": "toward_negative", "rto": "to_odd"}

    def make(spec: object, rounding: str, sat: bool, nbits: int = 0
             ) -> Callable[[np.ndarray], np.ndarray]:
        def run(x: np.ndarray) -> np.ndarray:
            kwargs = {}
            if nbits:
                kwargs = {"srbits": _random_bits(x.size, nbits).astype(np.int64),
                          "srnumbits": nbits}
            with np.errstate(all="ignore"):
                out = p3109_quantize(x.astype(np.float64), spec, rounding=rounding,
                                     saturate=sat, **kwargs)
            return np.asarray(out).astype(x.dtype)
        return run

    out: list[Adapter] = []
    for name in GFLOAT_P3109_SAMPLE:
        fmt = get_format(name)
        assert isinstance(fmt, FloatFormat)
        spec = P3109Format(fmt.bits, fmt.man_bits + 1, fmt.signed,
                           "extended" if fmt.specials == "ext" else "finite")
        known, reason = _known("pychop-p3109", name)
        for sat, overflow in ((False, "default"), (True, "satfinite")):
            out.extend(Adapter("pychop-p3109", name, rounding, make(spec, mode, sat),
                               overflow=overflow, known=known, known_reason=reason)
                       for rounding, mode in modes.items())
            for variant, mode in (("fastest", "stochastic_a"), ("fast", "stochastic_b"),
                                  ("stochastic", "stochastic_c")):
                out.extend(Adapter(
                    "pychop-p3109", name, "sr", make(spec, mode, sat, nbits),
                    overflow=overflow, variant=f"{variant}{nbits}", known=known,
                    known_reason=reason,
                    reference_run=_sr_reference(name, variant, nbits, overflow))
                    for nbits in GFLOAT_P3109_SR_BITS)
    return out


PEERS: dict[str, Callable[[], list[Adapter]]] = {
    "refsim-torch-cpu": lambda: _refsim_torch("cpu"),
    "torch-cast": _torch_casts,
    "ml_dtypes": _ml_dtypes,
    "gfloat": _gfloat,
    "qtorch": _qtorch,
    "torchao-mx": _torchao_mx,
    "torchao-nvfp4": _torchao_nvfp4,
    "gfloat-p3109": _gfloat_p3109,
    "pychop": _pychop,
    "pychop-faultchop": _pychop_faultchop,
    "pychop-p3109": _pychop_p3109,
}


def adapters(peers: tuple[str, ...] | None = None) -> tuple[list[Adapter], dict[str, str]]:
    """The adapters of the installed peers, and {peer: reason} for those that cannot run."""
    found: list[Adapter] = []
    skipped: dict[str, str] = {}
    names = list(PEERS) if peers is None else list(peers)
    try:
        import torch
        if torch.cuda.is_available() and (peers is None or "refsim-torch-cuda" in names):
            found.extend(_refsim_torch("cuda"))
        elif peers is None:
            skipped["refsim-torch-cuda"] = "no CUDA device"
    except ImportError:
        pass
    for name in names:
        if name not in PEERS:
            if name != "refsim-torch-cuda":
                raise ValueError(f"peer must be one of {', '.join(PEERS)}; got {name!r}")
            continue
        try:
            found.extend(PEERS[name]())
        except Exception as exc:  # an import or build failure: report, do not hide
            skipped[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return found, skipped
