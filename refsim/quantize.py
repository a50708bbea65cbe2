"""refsim.quantize: round every element of an array to a number format, once, exactly.

Usage rules: the input is a NumPy float32 or float64 array (any shape, any strides) or a Python
float; the result has the input's dtype and shape. Semantics: docs/rounding.md. Stochastic
rounding draws element i's bits from the counter-based stream under `seed` (docs/rng.md), so a
result never depends on thread count, chunking or memory layout; or, with `rbits`, from the
caller: the low sr_bits bits of element i of rbits (flat C order), the random operand that
hardware stochastic rounding (PTX cvt.rs) takes.
"""

from __future__ import annotations

import sys
from typing import Any, cast

import numpy as np

from refsim.backends import cpu_quantize, cuda
from refsim.formats import Format


def quantize(x, fmt: Format | str, rounding: str = "rne", *, overflow: str = "default",
             sr_bits: int | None = None, seed: int | None = None,
             rbits: np.ndarray | None = None, out: np.ndarray | None = None,
             sr_variant: str = "floor", route: str = "auto"):
    """Round `x` to `fmt`.

    Args:
        x: NumPy float32/float64 array, NumPy float scalar, or Python float; or a CUDA device
            array (then the CUDA backend rounds it, and the result is a device array); or a
            torch float32/float64/bfloat16 tensor (refsim.backends.torch_backend; a tensor).
        fmt: a FloatFormat/FixedFormat or a format name ("e4m3fn", "bf16", "int8", "e5m10", ...).
        rounding: rne, rna, rtz, rup, rdn, rto or sr.
        overflow: "default" (the format's policy), "saturate", "satfinite" (saturate, and +-Inf
            to +-max too), or "wrap" (fixed point only).
        sr_bits: for rounding="sr": None uses every discarded bit; r in 1..64 adds r random bits.
        seed: 0..2^64-1, the key of the random stream (rounding="sr" only reads it); None
            means 0.
        rbits: caller-given random bits instead of the stream (rounding="sr" only; needs
            sr_bits, excludes seed): an unsigned integer array (uint8/16/32/64, at least
            sr_bits wide) of x's shape, of the same kind as x (NumPy; CUDA device or NumPy for
            a device x; torch on x's device for a tensor); element i's random bits R are the
            low sr_bits bits of rbits' element i in flat C order, higher bits ignored
            (docs/rounding.md).
        out: optional writeable array of x's shape and dtype to write into (may be x
            itself); for a scalar x, a 0-d array of float64 (Python float) or of the scalar's
            dtype.
        sr_variant: with rounding="sr" and sr_bits=N, how the discarded fraction f becomes the
            N-bit integer F the random bits are added to: "floor" (default; IEEE P3109's
            StochasticA), "half-up" (StochasticB), "half-even" (StochasticC), "half-odd"
            (refsim.formats.policy.SR_VARIANTS; docs/formats.md, "IEEE P3109 formats").
        route: which kernels round a torch tensor, one of refsim.backends.torch_backend.ROUTES
            ("auto", "numba", "torch", "torch-general"; the same bits on every route); any
            other x takes "auto" only.

    Returns:
        An array of x's dtype and shape (out, if given); a float for a Python float input (a
        NumPy scalar for a NumPy scalar), or out when given.
    """
    torch = sys.modules.get("torch")  # no tensor can exist unless torch is imported already
    if torch is not None and torch.is_tensor(x):
        from refsim.backends import torch_backend
        # With a tensor x, rbits and out are tensors too (the signature names NumPy's types).
        return torch_backend.quantize(x, fmt, rounding, overflow=overflow, sr_bits=sr_bits,
                                      seed=seed, rbits=cast(Any, rbits), out=cast(Any, out),
                                      sr_variant=sr_variant, route=route)
    if route != "auto":
        raise ValueError(f"route applies to torch tensors only (a NumPy array or a device "
                         f"array takes 'auto'); got {route!r}")
    if cuda.is_device_array(x):  # numba device array or __cuda_array_interface__: on the GPU
        return cuda.quantize(x, fmt, rounding, overflow=overflow, sr_bits=sr_bits, seed=seed,
                             rbits=rbits, out=out, sr_variant=sr_variant)
    if isinstance(x, (float, np.floating)):  # np.float64 is a float subclass: test both at once
        # out, when given, must be a 0-d array of the scalar's dtype (checked by the array call).
        if isinstance(rbits, np.unsignedinteger):
            rbits = np.asarray(rbits)  # a NumPy scalar's bits for a scalar x
        result = quantize(np.asarray(x), fmt, rounding, overflow=overflow, sr_bits=sr_bits,
                          seed=seed, rbits=rbits, out=out, sr_variant=sr_variant)
        if out is not None:
            return result
        return result[()] if isinstance(x, np.floating) else float(result[()])
    if not isinstance(x, np.ndarray):
        raise TypeError(
            f"x must be a NumPy float32/float64 array or a float; got {type(x).__name__}"
        )
    return cpu_quantize.quantize(x, fmt, rounding, overflow=overflow, sr_bits=sr_bits, seed=seed,
                                 rbits=rbits, out=out, sr_variant=sr_variant)
