"""Names of rounding modes and overflow policies, and their validation.

One name per mode, used unchanged by refsim.formats.exact, the Numba core, CUDA, torch, the CLI
and the docs (docs/rounding.md has the one-line definition of each).
"""

from __future__ import annotations

import operator

import numpy as np

ROUNDINGS: tuple[str, ...] = ("rne", "rna", "rtz", "rup", "rdn", "rto", "sr")
"""rne: nearest, ties to even; rna: nearest, ties away from zero; rtz: toward zero;
rup: toward +inf; rdn: toward -inf; rto: round to odd (toward zero, then set the last bit if
inexact); sr: stochastic (away from zero with probability equal to the discarded fraction)."""

OVERFLOWS: tuple[str, ...] = ("default", "saturate", "wrap", "satfinite")
"""default: the format's own policy (see docs/rounding.md); saturate: clamp every finite overflow
to +-max (an infinite input stays infinite in ieee formats); wrap: two's-complement wrap-around
(fixed-point formats only); satfinite: as saturate, and +-Inf goes to +-max too (PTX cvt
.satfinite; NaN stays NaN). Appended last: the index is the policy's code in the kernels."""

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


SR_VARIANTS: tuple[str, ...] = ("floor", "half-up", "half-even", "half-odd")
"""How rounding='sr' with sr_bits=N turns the discarded fraction f into the N-bit integer F that
the random integer R is added to (up iff F + R >= 2^N): floor(f 2^N) (refsim's default, the
hardware rule; IEEE P3109's StochasticA, gfloat's StochasticFastest), f 2^N rounded half up
(StochasticB, gfloat's StochasticFast), half to even (StochasticC, gfloat's Stochastic), half to
odd (gfloat's StochasticOdd). A rounded F may reach 2^N: then the magnitude rounds up."""


def check_sr_variant(sr_variant: object, rounding: str, sr_bits: int | None) -> int:
    """The index of sr_variant in SR_VARIANTS; anything but 'floor' needs rounding='sr' and
    sr_bits (the fraction is rounded to sr_bits bits)."""
    if not isinstance(sr_variant, str) or sr_variant not in SR_VARIANTS:
        raise ValueError(f"sr_variant must be one of {', '.join(SR_VARIANTS)}; got "
                         f"{sr_variant!r}")
    if sr_variant != "floor" and (rounding != "sr" or sr_bits is None):
        raise ValueError(f"sr_variant={sr_variant!r} needs rounding='sr' and sr_bits (the "
                         f"fraction is rounded to sr_bits bits); got rounding={rounding!r}, "
                         f"sr_bits={sr_bits!r}")
    return SR_VARIANTS.index(sr_variant)


def check_seed(seed: object) -> int:
    """Validate a seed: an integer (Python or NumPy) in 0..2^64-1."""
    return check_int(seed, "seed", 0, UINT64_MAX, allowed="an int in 0..2^64-1")


RBITS_DTYPES: tuple[str, ...] = ("uint8", "uint16", "uint32", "uint64")
"""Element types accepted for caller-given random bits (rbits)."""


def check_rbits_request(rounding: str, sr_bits: object, seed: object) -> int:
    """Validate the scalar arguments that come with rbits; return sr_bits as an int.

    rbits replaces the seeded stream (so seed must be None), applies to rounding='sr' only, and
    needs sr_bits: how many low bits of each rbits word are the random bits (docs/rounding.md).
    """
    if rounding != "sr":
        raise ValueError(f"rbits applies only to rounding='sr'; got rounding={rounding!r}")
    if seed is not None:
        raise ValueError("give either rbits (the random bits themselves) or seed (the key of the "
                         f"Philox stream), not both; got seed={seed!r} with rbits")
    if sr_bits is None:
        raise ValueError(f"rbits needs sr_bits (an int in 1..{SR_BITS_MAX}): how many low bits "
                         "of each rbits word are the random bits")
    bits = check_sr_bits(sr_bits, rounding)
    assert bits is not None
    return bits


def check_rbits_array(dtype: np.dtype | str, shape: tuple[int, ...], x_shape: tuple[int, ...],
                      sr_bits: int, kind: str = "NumPy") -> None:
    """Raise unless an rbits array of `dtype` (a NumPy dtype, or its name) and `shape` fits x:
    an unsigned integer type (RBITS_DTYPES) at least sr_bits wide, and x's shape exactly.

    kind names the array type in the messages ("NumPy", "torch", "CUDA device").
    """
    name = dtype if isinstance(dtype, str) else dtype.name
    if name not in RBITS_DTYPES:
        raise TypeError(f"rbits must be a {kind} array of an unsigned integer type "
                        f"({', '.join(RBITS_DTYPES)}); got dtype {name}")
    width = 8 * np.dtype(name).itemsize
    if sr_bits > width:
        raise ValueError(f"rbits of dtype {name} holds {width} bits per element, fewer than "
                         f"sr_bits={sr_bits}; pass a wider unsigned type")
    if tuple(shape) != tuple(x_shape):
        raise ValueError(f"rbits must have x's shape {tuple(x_shape)}; got {tuple(shape)} (one "
                         "word per element, no broadcasting)")
