"""Translate formats and policy names into the integer parameters of the scalar core."""

from __future__ import annotations

from typing import Any

import numpy as np

from refsim.formats import FixedFormat, FloatFormat, Format, get_format
from refsim.formats.policy import (
    OVERFLOWS,
    ROUNDINGS,
    check_int,
    check_overflow,
    check_rounding,
    check_seed,
    check_sr_bits,
)
from refsim.kernels import core

CARRIERS: dict[np.dtype, tuple[int, int, type[np.unsignedinteger[Any]]]] = {
    np.dtype(np.float32): (23, 127, np.uint32),
    np.dtype(np.float64): (52, 1023, np.uint64),
}
"""Input dtypes: (mantissa bits, exponent bias, unsigned type of the same width)."""

_SPECIALS_CODE = {
    "ieee": core.SPECIALS_IEEE, "fn": core.SPECIALS_FN, "fnuz": core.SPECIALS_FNUZ,
    "none": core.SPECIALS_NONE, "ext": core.SPECIALS_EXT,
}


def specials_code(fmt: FloatFormat) -> int:
    """The kernels' specials code of `fmt` (refsim.kernels.core.SPECIALS_*): its specials, or
    for a p3109 format its P3109 domain (finite, extended signed, extended unsigned)."""
    if not fmt.p3109:
        return _SPECIALS_CODE[fmt.specials]
    if fmt.specials != "ext":
        return core.SPECIALS_P3109_FINITE
    return core.SPECIALS_P3109_EXT if fmt.signed else core.SPECIALS_P3109_EXT_U


def format_params(fmt: Format) -> tuple[int, ...]:
    """The int64 parameter tuple of `fmt` (layout: refsim.kernels.core.P_*)."""
    if isinstance(fmt, FloatFormat):
        return (core.KIND_FLOAT, fmt.man_bits, fmt.emin, fmt.emax, int(fmt.subnormals),
                int(fmt.zero), int(fmt.signed), specials_code(fmt), fmt.max_significand)
    return (core.KIND_FIXED, fmt.frac_bits, fmt.bits, 0, 0, 1, int(fmt.signed), core.SPECIALS_NONE,
            fmt.k_max)


def type_name(x: object) -> str:
    """What x is, for an error message: its type with its module (numpy.float32, a NumPy scalar,
    is not an array of dtype float32), and the dtype of an array or tensor."""
    kind = type(x)
    module = kind.__module__
    qualified = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
    if isinstance(x, np.generic):
        return f"the NumPy scalar {qualified}"
    dtype = getattr(x, "dtype", None)
    return qualified if dtype is None else f"{qualified} of dtype {dtype}"


def check_array(x: object, name: str = "x") -> np.ndarray:
    """x itself if it is a NumPy float32/float64 array, else an error naming `name`.

    Subclasses whose meaning the kernels would drop are refused: a masked array (the kernels
    read every element, masked or not, and return no mask) and np.matrix (always 2-D, so the
    reductions' reshapes fail on it).
    """
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a plain NumPy array; got a masked array, whose mask "
                        f"would be ignored (pass {name}.filled(value) or {name}.compressed())")
    if isinstance(x, np.matrix):
        raise TypeError(f"{name} must be a plain NumPy array; got np.matrix (pass "
                        f"np.asarray({name}))")
    if not isinstance(x, np.ndarray):
        hint = f" (wrap a scalar: np.asarray({name}))" if isinstance(x, np.generic | float) else ""
        raise TypeError(f"{name} must be a NumPy float32/float64 array; got {type_name(x)}{hint}")
    if x.dtype not in CARRIERS:
        raise TypeError(f"{name} must have dtype float32 or float64; got {x.dtype} (nothing is "
                        "cast implicitly)")
    return x


def check_out(out: Any, x: Any, name: str = "out", *, kind: str = "NumPy array") -> Any:
    """None, or `out` if it is an array of x's kind, dtype and shape to write into; else a
    ValueError naming `name` (nothing is written until every check has passed).

    kind: "NumPy array" (a plain, writeable NumPy array), "device array" (a CUDA device array,
    as refsim.backends.cuda has taken out already) or "tensor" (a torch tensor, on x's device
    too).
    """
    if out is None:
        return None
    if kind == "NumPy array":
        plain = isinstance(out, np.ndarray) and not isinstance(out, (np.ma.MaskedArray,
                                                                     np.matrix))
    else:
        plain = hasattr(out, "dtype") and hasattr(out, "shape") and not isinstance(out,
                                                                                   np.ndarray)
    device = getattr(x, "device", None) if kind == "tensor" else None
    if (not plain or out.dtype != x.dtype or tuple(out.shape) != tuple(x.shape)
            or (device is not None and out.device != device)):
        if kind == "NumPy array":
            got = (f"{type(out).__name__} {out.dtype} {out.shape}"
                   if isinstance(out, np.ndarray) else type(out).__name__)
        elif plain:
            got = f"{out.dtype} {tuple(out.shape)}"
            if device is not None:
                got += f" on {out.device}"
        else:
            got = type(out).__name__
        like = f"x's dtype {x.dtype} and shape {tuple(x.shape)}"
        if device is not None:
            like = f"x's dtype {x.dtype}, shape {tuple(x.shape)} and device {device}"
        raise ValueError(f"{name} must be a {kind} of {like}; got {got}")
    if kind == "NumPy array" and not out.flags.writeable:
        raise ValueError(f"{name} must be writeable; got a read-only array")
    return out


def carrier_holds(fmt: Format, dtype: np.dtype) -> bool:
    """Is every value of `fmt` an exact value of the float dtype?"""
    c_man, c_bias, _ = CARRIERS[np.dtype(dtype)]
    return float_holds(fmt, c_man, c_bias, 1 - c_bias - c_man)


def float_holds(fmt: Format, c_man: int, c_emax: int, c_min_exp: int) -> bool:
    """Is every value of `fmt` a value of the binary float with c_man mantissa bits, largest
    exponent c_emax and smallest subnormal 2^c_min_exp (subnormals included)?"""
    if isinstance(fmt, FloatFormat):
        return (fmt.man_bits <= c_man and fmt.emax <= c_emax
                and fmt.emin - (fmt.man_bits if fmt.subnormals else 0) >= c_min_exp)
    # Fixed point: k * 2^-frac_bits with |k| up to 2^(bits-1) (signed) or 2^bits - 1.
    magnitude_bits = fmt.bits - 1 if fmt.signed else fmt.bits
    return (magnitude_bits <= c_man + 1 and -fmt.frac_bits >= c_min_exp
            and magnitude_bits - fmt.frac_bits <= c_emax)


Resolved = tuple[Format, tuple[int, ...], int, int, int, int]


def resolve(fmt: Format | str, dtype: np.dtype, rounding: str, overflow: str,
            sr_bits: int | None, seed: object) -> Resolved:
    """Validate a quantize request; return (format, params, mode, overflow, sr_bits, seed).

    sr_bits is returned as 0 for None (every discarded bit).
    """
    fmt = get_format(fmt)
    check_rounding(rounding)
    check_overflow(overflow)
    bits = check_sr_bits(sr_bits, rounding)
    seed_value = check_seed(seed)
    if overflow == "wrap" and not isinstance(fmt, FixedFormat):
        raise ValueError(f"overflow='wrap' applies to fixed-point formats only; {fmt.name} is a"
                         " floating-point format (use 'default' or 'saturate')")
    if not carrier_holds(fmt, dtype):
        raise ValueError(
            f"fmt={fmt.name} does not fit in {np.dtype(dtype).name}: the result keeps the input's"
            f" dtype, and {np.dtype(dtype).name} cannot hold every {fmt.name} value"
            " (use float64 input)"
        )
    return (fmt, format_params(fmt), ROUNDINGS.index(rounding), OVERFLOWS.index(overflow),
            bits or 0, seed_value)


def kernel_sr_bits(sr_bits: int, variant: int) -> int:
    """The sr_bits argument of the quantize kernels: N | variant << core.SR_VARIANT_SHIFT (the
    variant: the index in refsim.formats.policy.SR_VARIANTS; 0 leaves sr_bits as it is)."""
    return sr_bits | (variant << core.SR_VARIANT_SHIFT)


def check_axis(axis: object, ndim: int, name: str = "axis") -> int | None:
    """axis as a non-negative int below ndim, or None; a ValueError/TypeError naming `name`."""
    if axis is None:
        return None
    axis = check_int(axis, name, allowed="an int or None")
    if ndim == 0:
        raise ValueError(f"{name} must be None for a 0-d array (it has no axis); got {axis}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name} {axis} is out of range for an array of {ndim} dimensions "
                         f"(allowed: {-ndim}..{ndim - 1})")
    return axis % ndim


def readonly(x: np.ndarray) -> np.ndarray:
    """A read-only view of x, for a kernel's input arrays. Numba types the writeable flag into a
    signature, so a kernel called with writable arrays by one caller and read-only ones by another
    (torch's tensors, broadcast views) compiled twice; inputs passed through here always read-only
    compile once. Outputs stay writable."""
    view = x.view()
    view.flags.writeable = False
    return view
