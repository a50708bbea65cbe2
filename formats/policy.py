"""Names of rounding modes and overflow policies, and their validation.

One name per mode, used unchanged by formats.exact, the Numba core, CUDA, torch, the CLI and the
docs (docs/rounding.md has the one-line definition of each).
"""

from __future__ import annotations

ROUNDINGS: tuple[str, ...] = ("rne", "rna", "rtz", "rup", "rdn", "rto", "sr")
"""rne: nearest, ties to even; rna: nearest, ties away from zero; rtz: toward zero;
rup: toward +inf; rdn: toward -inf; rto: round to odd (toward zero, then set the last bit if
inexact); sr: stochastic (away from zero with probability equal to the discarded fraction)."""

OVERFLOWS: tuple[str, ...] = ("default", "saturate", "wrap")
"""default: the format's own policy (see docs/rounding.md); saturate: clamp to +-max;
wrap: two's-complement wrap-around (fixed-point formats only)."""

SR_BITS_MAX = 64
"""Largest sr_bits accepted: one 64-bit random word per element."""

UINT64_MAX = (1 << 64) - 1


def check_rounding(rounding: object) -> str:
    """Return `rounding` if it names a mode, else raise ValueError naming the allowed ones."""
    if not isinstance(rounding, str) or rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}; got {rounding!r}")
    return rounding


def check_overflow(overflow: object) -> str:
    """Return `overflow` if it names a policy, else raise ValueError naming the allowed ones."""
    if not isinstance(overflow, str) or overflow not in OVERFLOWS:
        raise ValueError(f"overflow must be one of {', '.join(OVERFLOWS)}; got {overflow!r}")
    return overflow


def check_sr_bits(sr_bits: object, rounding: str) -> int | None:
    """Validate sr_bits: None (use every discarded bit) or an int in 1..64, only with 'sr'."""
    if sr_bits is None:
        return None
    if isinstance(sr_bits, bool) or not isinstance(sr_bits, int):
        raise TypeError(f"sr_bits must be None or an int in 1..{SR_BITS_MAX}; got {sr_bits!r}")
    if not 1 <= sr_bits <= SR_BITS_MAX:
        raise ValueError(f"sr_bits must be None or an int in 1..{SR_BITS_MAX}; got {sr_bits}")
    if rounding != "sr":
        raise ValueError(f"sr_bits applies only to rounding='sr'; got rounding={rounding!r}")
    return sr_bits


def check_seed(seed: object) -> int:
    """Validate a seed: a Python or NumPy integer in 0..2^64-1."""
    import numpy as np

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int in 0..2^64-1; got {type(seed).__name__}")
    value = int(seed)
    if not 0 <= value <= UINT64_MAX:
        raise ValueError(f"seed must be an int in 0..2^64-1; got {value}")
    return value
