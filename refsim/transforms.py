"""Random Hadamard transforms of GEMM operands along K (docs/transforms.md).

Usage rules:
  - RandomHadamard(block, seed, fmt, rounding, overflow) is a frozen spec; GemmSpec(transform=...)
    applies it to both operands along K before their Casts (refsim.matmul, refsim.torch_ops).
  - Each block of `block` consecutive values x along K becomes y = round(c * H (s * x)): H the
    Sylvester Hadamard matrix (H[j, i] = (-1)^popcount(i & j)), s the seeded sign vector (one
    vector for every block), c = scale(block), and each y_j is computed exactly and rounded ONCE
    to `fmt` with `rounding` and `overflow`. An exactly zero sum is +0, whatever the signs of the
    zero terms (as an MMA whose accumulator starts at +0 gives); a NaN term, or +Inf and -Inf
    terms, give NaN; otherwise an infinite term gives that infinity.
  - apply() returns the input's dtype when it holds every value of `fmt`, else float64.

How it is fast and exact: the fast Walsh-Hadamard butterfly in float64 (log2(block) stages of
u + v, u - v) is exact while every partial sum fits 53 bits: each one is a signed sum of at most
`block` inputs, so it is a multiple of 2^low (the lowest set bit of any input of the block) of
magnitude below block * 2^top (2^top above every input), i.e. at most top + log2(block) - low
bits. For block 16, 64, 256, a block with up to 93 - log2(block) bits splits each x at 2^(top - 40)
into x_hi + x_lo, two exact butterflies, and TwoSum gives their sum exactly as s + t. The others
(wider, or near float64's range ends) take Python integers.
Then c * S: for block 16, 64, 256, c is a power of two and the product is exact; for 32 and 128,
c has 24 bits and Dekker's product (Veltkamp split of S, no FMA needed) gives p + e = c * S
exactly. Making p's last bit odd when e != 0 is round-to-odd at 53 bits, and rounding that
once more to a format of at most 51 significand bits (man_bits <= 50) and subnormal quantum
at least 2^-1072 gives the same bits as rounding c * S directly, in every deterministic mode
(Boldo and Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using
rounding to odd", IEEE TC 57(4), 2008). So `fmt` must meet those bounds, and sr is refused (it
would need the discarded fraction, which round-to-odd does not keep).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numba import njit, prange

from refsim.backends.cpu_quantize import quantize
from refsim.formats import FloatFormat, Format, get_format
from refsim.formats.policy import check_int, check_overflow, check_rounding, check_seed
from refsim.formats.registry import name_of
from refsim.kernels.core import bit_length
from refsim.kernels.rng import philox4x64_10
from refsim.params import carrier_holds, check_array
from refsim.specs import Transform, register_transform

__all__ = ["BLOCKS", "SIGN_KEY", "RandomHadamard", "scale"]

BLOCKS: tuple[int, ...] = (16, 32, 64, 128, 256)
"""Block sizes b a RandomHadamard accepts (powers of two; NVFP4 training uses 16)."""

SIGN_KEY = 0x524854
"""Key word k1 of the sign stream ("RHT" in ASCII). Every other stream of refsim (quantize, the
accumulation families, block Casts) keys Philox with k1 = 0, so the sign words never coincide
with them for any seed."""

# 1/sqrt(b): a power of two for b = 16, 64, 256; for 32 and 128 the float32 nearest of
# sqrt(2)/8 and sqrt(2)/16 (sqrt(2) = 0x1.6a09e667f3bc..., and bit 24 onward, 0x0.00000067f...,
# is below half an ulp of float32), the constant a float32 `scale` argument of a kernel holds.
# formats/exact_transform.py derives these independently with integer square roots.
_SCALES = {16: 2.0**-2, 32: float.fromhex("0x1.6a09e6p-3"), 64: 2.0**-3,
           128: float.fromhex("0x1.6a09e6p-4"), 256: 2.0**-4}
_MAN_MAX = 50  # round-to-odd at 53 bits then one rounding: at most 51 significand bits
_QUANTUM_MIN = -1072  # ... and a quantum at least 4 times float64's smallest subnormal
_SPLIT = 2.0**27 + 1.0  # Veltkamp: splits a float64 into two halves of at most 26 bits
_FAST_TOP = 990  # fast blocks: partial sums and Veltkamp's factor * S stay below 2^1018
_FAST_LOW = -1040  # ... and c * S_lo (c down to 2^-27 quanta) has no bit below 2^-1074
_HI_BITS = 40  # two-level blocks: x_hi keeps the bits of the top 40 binades
_SPLIT_SPAN = 93  # ... and x_lo's butterfly is exact while top - low <= 93 - log2(b)
_MASK52 = np.uint64((1 << 52) - 1)
_IMPLICIT = np.uint64(1 << 52)
_ABS = np.uint64((1 << 63) - 1)
_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U52 = np.uint64(52)


def scale(block: int) -> float:
    """The normalisation c of a block size: 1/sqrt(block), or its float32 nearest (32, 128)."""
    return _SCALES[_check_block(block)]


def _check_block(block: object) -> int:
    value = check_int(block, "RandomHadamard.block", allowed=f"one of {BLOCKS}")
    if value not in BLOCKS:
        raise ValueError(f"RandomHadamard.block must be one of {', '.join(map(str, BLOCKS))} "
                         f"(a power of two); got {value}")
    return value


@functools.lru_cache(maxsize=64)
def _signs(seed: int, block: int) -> np.ndarray:
    """+-1.0 per position: word i of Philox4x64-10 under key (seed, SIGN_KEY), counter
    (i // 4 + 1, 0, 0, 0), output i % 4; negative when its top bit is set."""
    out = np.empty(block, np.float64)
    for n in range(block // 4):
        words = philox4x64_10(n + 1, 0, 0, 0, np.uint64(seed), np.uint64(SIGN_KEY))
        for lane, word in enumerate(words):
            out[4 * n + lane] = -1.0 if int(word) >> 63 else 1.0
    out.setflags(write=False)
    return out


def _format_data(fmt: FloatFormat) -> str | dict[str, Any]:
    name = name_of(fmt)
    try:
        if get_format(name) == fmt:
            return name
    except ValueError:
        pass
    return {"kind": "float", **dataclasses.asdict(fmt)}


_KEYS = ("kind", "block", "seed", "fmt", "rounding", "overflow")


@register_transform
@dataclass(frozen=True)
class RandomHadamard(Transform):
    """A random Hadamard transform along K, computed in `fmt` (module docstring).

    Args:
        block: b, values per block along K: 16, 32, 64, 128 or 256; K must be a multiple.
        seed: 0..2^64-1, the key of the sign vector (one vector of b signs for every block).
        fmt: the float format each transformed value is rounded to once (object or name), at
            most 50 mantissa bits and a smallest quantum of at least 2^-1072 (fp32, bf16, ...).
        rounding: rne, rna, rtz, rup, rdn or rto (not sr).
        overflow: default, saturate or satfinite (the format's policy, docs/rounding.md).
    """

    kind: ClassVar[str] = "hadamard"
    block: int = 16
    seed: int = 0
    fmt: FloatFormat = "fp32"  # type: ignore[assignment]  # a name is stored as its FloatFormat
    rounding: str = "rne"
    overflow: str = "default"

    if TYPE_CHECKING:  # the signature as called (the generated __init__ takes fields as stored)
        def __init__(self, block: int = ..., seed: int = ..., fmt: Format | str = ...,
                     rounding: str = ..., overflow: str = ...) -> None: ...

    def __post_init__(self) -> None:
        object.__setattr__(self, "block", _check_block(self.block))
        try:
            object.__setattr__(self, "seed", check_seed(self.seed))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"RandomHadamard.{exc}") from None
        try:
            fmt = get_format(self.fmt)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"RandomHadamard.fmt: {exc}") from None
        if not isinstance(fmt, FloatFormat):
            raise ValueError(f"RandomHadamard.fmt must be a floating-point format; got "
                             f"{name_of(fmt)}")
        if not (fmt.signed and fmt.zero):  # H (s * x) holds values of both signs, and zeros
            raise ValueError(f"RandomHadamard.fmt must be a signed format with a zero (the "
                             f"transformed values take both signs); got {name_of(fmt)}, which "
                             f"has {'no sign' if not fmt.signed else 'no zero'}")
        if fmt.man_bits > _MAN_MAX or fmt.emin - (fmt.man_bits if fmt.subnormals else 0) \
                < _QUANTUM_MIN or fmt.emax > 1023:
            raise ValueError(f"RandomHadamard.fmt ({name_of(fmt)}) must have at most {_MAN_MAX} "
                             f"mantissa bits, a smallest quantum of at least 2^{_QUANTUM_MIN} "
                             "and emax at most 1023 (values are rounded once through "
                             "round-to-odd float64; fp32, tf32, bf16, fp16 and fp8 qualify)")
        object.__setattr__(self, "fmt", fmt)
        for key, check in (("rounding", check_rounding), ("overflow", check_overflow)):
            try:
                check(getattr(self, key))
            except ValueError as exc:
                raise ValueError(f"RandomHadamard.{exc}") from None
        if self.rounding == "sr":
            raise ValueError("RandomHadamard.rounding must be rne, rna, rtz, rup, rdn or rto; "
                             "sr is not supported (the transform rounds through round-to-odd, "
                             "which does not keep the discarded fraction)")
        if self.overflow == "wrap":
            raise ValueError("RandomHadamard.overflow must be default, saturate or satfinite "
                             "(wrap is for fixed-point formats)")

    @property
    def scale(self) -> float:
        """The normalisation c (scale(block))."""
        return _SCALES[self.block]

    def signs(self) -> np.ndarray:
        """The sign vector s: a read-only float64 array of block values +-1.0."""
        return _signs(self.seed, self.block)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "hadamard", "block": self.block, "seed": self.seed,
                "fmt": _format_data(self.fmt), "rounding": self.rounding,
                "overflow": self.overflow}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RandomHadamard:
        if not isinstance(data, dict):
            raise TypeError(f"RandomHadamard must be a dict; got {type(data).__name__}")
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise ValueError(f"RandomHadamard: unknown keys {', '.join(unknown)} (allowed: "
                             f"{', '.join(_KEYS)})")
        fields = dict(data)
        kind = fields.pop("kind", "hadamard")
        if kind != "hadamard":
            raise ValueError(f"RandomHadamard.kind must be 'hadamard'; got {kind!r}")
        fmt = fields.get("fmt")
        if isinstance(fmt, dict):
            table = dict(fmt)
            if table.pop("kind", "float") != "float":
                raise ValueError("RandomHadamard.fmt must be a floating-point format")
            try:
                fields["fmt"] = FloatFormat(**table)
            except TypeError as exc:
                raise ValueError(f"RandomHadamard.fmt: {exc}") from None
        return cls(**fields)

    def __str__(self) -> str:
        text = f"{name_of(self.fmt)}/{self.rounding}"
        if self.overflow != "default":
            text += f"/{self.overflow}"
        return f"RandomHadamard({self.block}, seed={self.seed}, {text})"

    def apply(self, x, axis: int = -1) -> np.ndarray:
        """x transformed along `axis`, each block of `block` values (module docstring).

        Args:
            x: a NumPy float32/float64 array; its length along axis must be a multiple of block.
            axis: the axis of K (matmul: a's last, b's second-to-last).

        Returns:
            An array of x's shape: x's dtype when it holds every value of fmt, else float64.
        """
        x = check_array(x, "x")
        if x.ndim == 0:
            raise ValueError("x must have at least one dimension (the axis of K)")
        axis = check_int(axis, "axis")
        if not -x.ndim <= axis < x.ndim:
            raise ValueError(f"axis {axis} is out of range for x of shape {x.shape}")
        k = x.shape[axis]
        if k % self.block:
            raise ValueError(f"RandomHadamard: K = {k} (x's axis {axis}) is not a multiple of "
                             f"the block size b = {self.block}; pad K with zeros to a multiple "
                             "of b or choose a block size that divides it")
        moved = np.moveaxis(x, axis, -1)
        rows = np.ascontiguousarray(moved, dtype=np.float64).reshape(-1, self.block)
        y = _transform_rows(rows * self.signs(), self.block)
        y = quantize(y, self.fmt, self.rounding, overflow=self.overflow)
        dtype = x.dtype if carrier_holds(self.fmt, x.dtype) else np.dtype(np.float64)
        result = np.moveaxis(y.reshape(moved.shape), -1, axis)
        return np.ascontiguousarray(result).astype(dtype, copy=False)


# ---- the transform of rows of signed values: round-to-odd float64 of c * H x --------------------
@njit(cache=True)
def _butterfly_row(o, r, b):
    """o[r, :] <- H o[r, :] in place: the Sylvester-ordered fast Walsh-Hadamard transform."""
    h = 1
    while h < b:
        for start in range(0, b, 2 * h):
            for i in range(start, start + h):
                u = o[r, i]
                w = o[r, i + h]
                o[r, i] = u + w
                o[r, i + h] = u - w
        h *= 2


@njit(cache=True, parallel=True)
def _fast_rows(v, v_bits, c, dekker, log_b, out, out_bits, slow):
    """out[r] = round_to_odd_float64(c * H v[r]) for every row the float64 butterfly holds
    exactly (module docstring); slow[r] = True for the others (out[r] left unset).

    v_bits and out_bits are uint64 views of v and out (the bit fields are read and the last bit
    made odd with integer operations)."""
    rows, b = v.shape
    for r in prange(rows):
        special = False
        top = np.int64(-2000)  # every nonzero |v| < 2^top ...
        low = np.int64(2000)  # ... and a multiple of 2^low
        for i in range(b):
            word = v_bits[r, i] & _ABS
            field = np.int64(word >> _U52)
            if field == 2047:
                special = True
                continue
            sig = word & _MASK52
            e0 = np.int64(-1074)
            if field > 0:
                sig |= _IMPLICIT
                e0 = field - 1075
            if sig != _U0:
                top = max(top, e0 + bit_length(sig))
                low = min(low, e0 + bit_length(sig & (~sig + _U1)) - 1)
        slow[r] = False
        if special:  # a non-finite term dominates every output: NaN, or the Inf's sign
            for i in range(b):
                out[r, i] = v[r, i] if not np.isfinite(v[r, i]) else 0.0
            _butterfly_row(out, r, b)
            for i in range(b):
                out[r, i] *= c
            continue
        if top != -2000 and (top + log_b > _FAST_TOP or low < _FAST_LOW):
            slow[r] = True
            continue
        if top != -2000 and top + log_b - low > 53:
            # Two exact butterflies: x = x_hi + x_lo, x_hi on the grid 2^(top - 40).
            if dekker or top - low > _SPLIT_SPAN - log_b:
                slow[r] = True
                continue
            _two_level_row(v, out, out_bits, r, b, c, top - _HI_BITS)
            continue
        for i in range(b):
            out[r, i] = v[r, i]
        _butterfly_row(out, r, b)
        for i in range(b):
            s = out[r, i]
            if s == 0.0:
                out[r, i] = 0.0  # an exactly zero sum is +0 (the butterfly's signs are its own)
                continue
            p = s * c  # exact for a power-of-two c (low - 4 >= -1074)
            out[r, i] = p
            if dekker:  # c has 24 bits: Dekker's exact error of p (Veltkamp split of s)
                t = _SPLIT * s
                s_hi = t - (t - s)
                s_lo = s - s_hi
                e = (c * s_hi - p) + c * s_lo
                if e != 0.0:  # round to odd: the odd one of the two floats around p + e
                    bits = out_bits[r, i]
                    if (e < 0.0) != (p < 0.0):
                        bits -= _U1  # |p + e| < |p|: one step toward zero first
                    if bits & _U1 == _U0:
                        bits += _U1
                    out_bits[r, i] = bits


@njit(cache=True)
def _two_level_row(v, out, out_bits, r, b, c, q):
    """out[r] = c * round_to_odd_float64(H v[r]) for a power-of-two c, the block split at 2^q.

    x_hi = trunc(x / 2^q) * 2^q and x_lo = x - x_hi are exact; H x_hi is a multiple of 2^q below
    2^(q + 40 + log2 b) (at most 48 bits) and H x_lo a multiple of 2^low below 2^(q + log2 b)
    (at most 53 bits when top - low <= 93 - log2 b): both butterflies are exact, and TwoSum of
    the two gives s + t = H x exactly with |t| <= ulp(s) / 2."""
    lo = np.empty(b, np.float64)
    unit = math.ldexp(1.0, q)
    for i in range(b):
        x = v[r, i]
        hi = float(math.trunc(x / unit)) * unit  # |x / unit| < 2^40: exact in an int64
        out[r, i] = hi
        lo[i] = x - hi
    _butterfly_row(out, r, b)
    h = 1
    while h < b:
        for start in range(0, b, 2 * h):
            for i in range(start, start + h):
                u = lo[i]
                w = lo[i + h]
                lo[i] = u + w
                lo[i + h] = u - w
        h *= 2
    for i in range(b):
        x_hi = out[r, i]
        x_lo = lo[i]
        total = x_hi + x_lo
        if total == 0.0:  # then the exact sum is 0 too (TwoSum's error would be 0): +0
            out[r, i] = 0.0
            continue
        back = total - x_hi
        err = (x_hi - (total - back)) + (x_lo - back)  # TwoSum (Knuth): exact
        out[r, i] = total
        if err != 0.0:  # round to odd, as in _fast_rows
            bits = out_bits[r, i]
            if (err < 0.0) != (total < 0.0):
                bits -= _U1
            if bits & _U1 == _U0:
                bits += _U1
            out_bits[r, i] = bits
        out[r, i] *= c  # a power of two, no underflow (low - 4 >= -1074): exact


def _transform_rows(v: np.ndarray, block: int) -> np.ndarray:
    """round_to_odd_float64(c * H v_r) for every row v_r of the signed values v (R, b)."""
    out = np.empty_like(v)
    slow = np.empty(v.shape[0], np.bool_)
    _fast_rows(v, v.view(np.uint64), _SCALES[block], block in (32, 128),
               block.bit_length() - 1, out, out.view(np.uint64), slow)
    for r in np.flatnonzero(slow):
        out[r] = _transform_row_int(v[r], block)
    return out


def _transform_row_int(v: np.ndarray, block: int) -> np.ndarray:
    """One finite row the float64 butterfly cannot hold: Python integers, then round-to-odd."""
    terms = [float(value).as_integer_ratio() for value in v]
    shift = max(den.bit_length() - 1 for _, den in terms)  # every denominator is a power of 2
    ints = [num << (shift - (den.bit_length() - 1)) for num, den in terms]
    h = 1
    while h < block:
        for start in range(0, block, 2 * h):
            for i in range(start, start + h):
                ints[i], ints[i + h] = ints[i] + ints[i + h], ints[i] - ints[i + h]
        h *= 2
    c_num, c_den = _SCALES[block].as_integer_ratio()
    out = np.zeros(block, np.float64)  # an exactly zero sum is +0
    for j, total in enumerate(ints):
        if total != 0:
            out[j] = _odd_float64(total * c_num, -shift - (c_den.bit_length() - 1))
    return out


def _odd_float64(num: int, exp: int) -> float:
    """num * 2^exp (num != 0) rounded to odd at float64's precision; beyond float64's range
    +-max (an overflow of every format RandomHadamard accepts, in every mode)."""
    magnitude = abs(num)
    top = exp + magnitude.bit_length() - 1  # 2^top <= |value| < 2^(top + 1)
    if top > 1023:
        result = float(np.finfo(np.float64).max)
    else:
        quantum = max(top - 52, -1074)
        drop = quantum - exp
        if drop > 0:
            kept = magnitude >> drop
            if magnitude & ((1 << drop) - 1):
                kept |= 1
        else:
            kept = magnitude << -drop
        result = float(np.ldexp(float(kept), quantum))  # kept < 2^53: exact
    return -result if num < 0 else result
