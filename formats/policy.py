"""Names of rounding modes and overflow policies, and their validation.

One name per mode, used unchanged by formats.exact, the Numba core, CUDA, torch, the CLI and the
docs (docs/rounding.md has the one-line definition of each).
"""

from __future__ import annotations

import operator

import numpy as np

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


def check_int(value: object, name: str, lo: int | None = None, hi: int | None = None,
              allowed: str | None = None) -> int:
    """`value` as a Python int, or an error naming `name` and what it accepts.

    Any integer is accepted (int, np.int64, ...: whatever operator.index takes), never a bool
    (True is not a count); lo and hi bound it (inclusive) when given. `allowed` describes the
    accepted values in the messages (default: "an int", with the bounds).
    """
    if allowed is None:
        bounds = ("" if lo is None and hi is None else f" in {'' if lo is None else lo}.."
                  f"{'' if hi is None else hi}")
        allowed = f"an int{bounds}"
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be {allowed}; got the bool {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be {allowed}; got {value!r} of type "
                        f"{type(value).__name__}") from None
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise ValueError(f"{name} must be {allowed}; got {number}")
    return number


def check_sr_bits(sr_bits: object, rounding: str) -> int | None:
    """Validate sr_bits: None (use every discarded bit) or an integer in 1..64, only with 'sr'."""
    if sr_bits is None:
        return None
    bits = check_int(sr_bits, "sr_bits", 1, SR_BITS_MAX,
                     allowed=f"None or an int in 1..{SR_BITS_MAX}")
    if rounding != "sr":
        raise ValueError(f"sr_bits applies only to rounding='sr'; got rounding={rounding!r}")
    return bits


def check_seed(seed: object) -> int:
    """Validate a seed: an integer (Python or NumPy) in 0..2^64-1."""
    return check_int(seed, "seed", 0, UINT64_MAX, allowed="an int in 0..2^64-1")
