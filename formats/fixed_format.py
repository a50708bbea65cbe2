"""FixedFormat: two's-complement (or unsigned) fixed point; integers are frac_bits=0."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np

from refsim.formats.float_format import MAX_CODE_BITS_FOR_TABLES
from refsim.formats.names import FIXED_FIELDS


@dataclass(frozen=True)
class FixedFormat:
    """A fixed-point format: value = k * 2^-frac_bits for an integer k held in `bits` bits.

    Args:
        bits: width of a code, bits (1..64; 2..64 when signed).
        frac_bits: bits after the binary point (may be negative or exceed `bits`).
        signed: two's complement if True (k in -2^(bits-1)..2^(bits-1)-1), else k in 0..2^bits-1.
    """

    bits: int
    frac_bits: int = 0
    signed: bool = True

    def __post_init__(self) -> None:
        for field_name in ("bits", "frac_bits"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{field_name} must be an int; got {value!r}")
        if not isinstance(self.signed, bool):
            raise TypeError(f"signed must be a bool; got {self.signed!r}")
        low = 2 if self.signed else 1
        if not low <= self.bits <= 64:
            raise ValueError(f"bits must be in {low}..64 for signed={self.signed}; got {self.bits}")
        # Every value must be an exact float64 (the carrier of decode() and of the kernels).
        if not (-1074 <= -self.frac_bits and self.bits - self.frac_bits <= 1024):
            raise ValueError(f"frac_bits={self.frac_bits} puts the format outside float64")

    @cached_property
    def n_codes(self) -> int:
        return 1 << self.bits

    @cached_property
    def k_min(self) -> int:
        """Smallest integer k (value k * 2^-frac_bits)."""
        return -(1 << (self.bits - 1)) if self.signed else 0

    @cached_property
    def k_max(self) -> int:
        """Largest integer k."""
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @cached_property
    def quantum(self) -> float:
        """Distance between neighbouring values, 2^-frac_bits."""
        return float(np.ldexp(1.0, -self.frac_bits))

    @cached_property
    def max(self) -> float:
        """Largest value."""
        return float(np.ldexp(float(self.k_max), -self.frac_bits))

    @cached_property
    def min(self) -> float:
        """Smallest (most negative) value."""
        return float(np.ldexp(float(self.k_min), -self.frac_bits))

    @property
    def has_inf(self) -> bool:
        return False

    @property
    def has_nan(self) -> bool:
        return False

    @property
    def has_negative_zero(self) -> bool:
        return False

    @cached_property
    def name(self) -> str:
        """The registry name of this format, or its custom spelling (refsim.formats.registry)."""
        return _registered_names().get(self) or self.spelling()

    def spelling(self) -> str:
        """The custom spelling [u]int<B> or [u]fx<B>.<F> (refsim.formats.registry parses it)."""
        prefix = "" if self.signed else "u"
        if self.frac_bits == 0:
            return f"{prefix}int{self.bits}"
        return f"{prefix}fx{self.bits}.{self.frac_bits}"

    def __str__(self) -> str:
        return self.name

    def codes(self) -> np.ndarray:
        """Every code, 0..2^bits-1 (uint64)."""
        if self.bits > MAX_CODE_BITS_FOR_TABLES:
            raise ValueError(f"{self.name} has 2^{self.bits} codes; too many to tabulate")
        return np.arange(self.n_codes, dtype=np.uint64)

    def all_values(self) -> np.ndarray:
        """decode(codes()) as float64."""
        return self.decode(self.codes())

    def decode(self, codes: np.ndarray | int) -> np.ndarray:
        """Values of `codes` (unsigned ints < 2^bits) as float64."""
        c = np.asarray(codes)
        if c.dtype.kind not in "ui":
            raise TypeError(f"codes must be an integer array; got dtype {c.dtype}")
        if c.size and (int(c.min()) < 0 or int(c.max()) >= self.n_codes):
            raise ValueError(f"codes must lie in 0..{self.n_codes - 1} for {self.name}")
        k = [int(code) for code in c.astype(np.uint64).ravel()]
        if self.signed:
            k = [code - self.n_codes if code > self.k_max else code for code in k]
        # k fits float64 exactly whenever bits <= 53; wider formats are only built, not decoded.
        values = np.array([float(np.ldexp(float(v), -self.frac_bits)) for v in k], np.float64)
        return values.reshape(c.shape)

    def encode(self, values: np.ndarray | float) -> np.ndarray:
        """Codes (uint64) of values the format holds exactly; others raise ValueError."""
        v = np.asarray(values)
        if v.dtype.kind != "f":
            raise TypeError(f"values must be a float array; got dtype {v.dtype}")
        v = v.astype(np.float64)
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{self.name} has no code for NaN or Inf")
        k = np.ldexp(v, self.frac_bits)  # exact scaling by a power of two
        bad = (k != np.round(k)) | (k < self.k_min) | (k > self.k_max)
        if np.any(bad):
            raise ValueError(
                f"{self.name} has no code for {v[bad].flat[0]!r}; round it with refsim.quantize"
            )
        return np.array([int(x) % self.n_codes for x in k.ravel()], np.uint64).reshape(v.shape)


@cache
def _registered_names() -> dict[FixedFormat, str]:
    """Each named fixed-point format (refsim.formats.names) mapped to its name."""
    return {FixedFormat(**fields): name for name, fields in FIXED_FIELDS.items()}  # type: ignore[arg-type]
