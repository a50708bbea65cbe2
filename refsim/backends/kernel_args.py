"""Specs to kernel arguments: the one step between a GemmSpec and the accumulation kernels.

Usage rules:
  - Every backend that reduces with kernels.accum_core (the CPU exact core, refsim.backends.cuda)
    takes its spec arguments from `exact_args`, its initial values from `initial_values` and its
    counts dict from `events`; every route (the CPU fast routes, torch's exact mode included)
    names its result format and dtype with `result_format` / `result_dtype`, and checks shapes
    with `batch_shape` and exact products with `check_products`. So a field added to AccumSpec
    (a hardware-model option, say) is packed here once, and no backend repacks by hand.
  - Host-side Python only: NumPy in, tuples of int64 and uint64 arrays out. Imports point down
    only (refsim.specs, refsim.params, the scalar cores); nothing here imports a public API
    module.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refsim.backends.operands import OperandRange
from refsim.formats import BlockFormat, FloatFormat, Format
from refsim.formats.policy import OVERFLOWS, ROUNDINGS
from refsim.kernels import accum_core as ac
from refsim.params import carrier_holds, check_array, format_params
from refsim.specs import (
    MULTITERM_ALIGNS,
    MULTITERM_TRUNCATIONS,
    MULTITERM_VARIANTS,
    AccumSpec,
    Cast,
)

__all__ = ["COUNT_KEYS", "EXACT_PRODUCT_BITS", "NO_SPEC", "ExactArgs", "batch_shape",
           "check_products", "events", "exact_args", "initial_values", "max_significant_bits",
           "order_params", "result_dtype", "result_format", "spec_tuple"]

COUNT_KEYS = ("overflow", "underflow", "saturation")
"""Keys of the counts dict (the order of refsim.kernels.accum_core.CNT_*)."""

EXACT_PRODUCT_BITS = 64
"""The exact core's products are exact when the operands' significands (trailing zeros removed)
total at most this many bits (refsim.kernels.accum_core.mul_exact)."""


def spec_tuple(fmt: Format, rounding: str, overflow: str, sr_bits: int | None) -> tuple:
    """The rounding spec the scalar cores take: format params, mode, overflow, sr_bits (the
    refsim.kernels.accum_core.S_* layout)."""
    return (*format_params(fmt), ROUNDINGS.index(rounding), OVERFLOWS.index(overflow),
            sr_bits or 0)


NO_SPEC = spec_tuple(FloatFormat(8, 23), "rne", "default", None)
"""The spec passed where a kernel's flag says "no such rounding" (never read)."""


def _spec_of(spec: Cast | AccumSpec | None) -> tuple[bool, tuple]:
    """(present, rounding spec) of a Cast or AccumSpec; (False, NO_SPEC) for None."""
    if spec is None:
        return False, NO_SPEC
    # Block-format Casts are applied before the kernels (refsim.blocks), never packed here.
    assert not isinstance(spec.fmt, BlockFormat), "block Casts are not kernel arguments"
    return True, spec_tuple(spec.fmt, spec.rounding, spec.overflow, spec.sr_bits)


def order_params(acc: AccumSpec) -> tuple:
    """The int64 tuple of order parameters the kernels take (refsim.kernels.accum_core.MT_* layout):
    multiterm's group, width, variant, alignment, truncation, operand flushing and operand
    emin, where C enters (chunked and multiterm), the late accumulator (late_bits or 0,
    late_norm_bits, late_truncation, c_cutoff or -1, interleave or 1) and pairwise chunks."""
    flush = acc.subnormals == "flush"
    emin = ac.NO_EMIN if acc.operands is None else acc.operands.emin
    return tuple(np.int64(v) for v in (
        acc.group or 1, acc.width or 1,
        MULTITERM_VARIANTS.index(acc.variant) if acc.variant else 0,
        MULTITERM_ALIGNS.index(acc.align) if acc.align else 0,
        MULTITERM_TRUNCATIONS.index(acc.truncation) if acc.truncation else 0,
        flush, emin, acc.c_entry == "outer",
        acc.late_bits or 0, acc.late_norm_bits or 0,
        MULTITERM_TRUNCATIONS.index(acc.late_truncation) if acc.late_truncation else 0,
        -1 if acc.c_cutoff is None else acc.c_cutoff, acc.interleave or 1,
        acc.chunk_order == "pairwise"))


class ExactArgs(NamedTuple):
    """The spec arguments of an exact-core kernel (kernels.accum_core.order_* and cast_output),
    in the order the kernels take them."""

    chunk: np.int64  # chunked/multiterm chunk length (0: none)
    spec: tuple  # the accumulator's rounding spec
    ospec: tuple  # the outer accumulator's (the accumulator's own when there is none)
    prod_on: bool  # products rounded to acc.product
    pspec: tuple
    cast_on: bool  # outputs rounded by the output Cast
    cspec: tuple
    mt: tuple  # order_params(acc)


def exact_args(acc: AccumSpec, cast: Cast | None) -> ExactArgs:
    """The kernel arguments of accumulator `acc` and output Cast `cast`."""
    _, spec = _spec_of(acc)
    _, ospec = _spec_of(acc.outer_spec)
    prod_on, pspec = _spec_of(acc.product)
    cast_on, cspec = _spec_of(cast)
    return ExactArgs(np.int64(acc.chunk or 0), spec, ospec, prod_on, pspec, cast_on, cspec,
                     order_params(acc))


def events(totals: np.ndarray | None) -> dict[str, int]:
    """The counts dict of the (overflow, underflow, saturation) totals; zeros for None."""
    if totals is None:
        return dict.fromkeys(COUNT_KEYS, 0)
    return {key: int(totals[i]) for i, key in enumerate(COUNT_KEYS)}


def initial_values(c: object, shape: tuple[int, ...]) -> np.ndarray:
    """C (matmul's and dot's c=) broadcast to the output shape, as flat float64 bits."""
    c = check_array(c, "c")
    try:
        full = np.broadcast_to(c, shape)
    except ValueError:
        raise ValueError(f"c of shape {c.shape} does not broadcast to the output shape "
                         f"{shape}") from None
    return np.ascontiguousarray(full, dtype=np.float64).reshape(-1).view(np.uint64)


def batch_shape(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The broadcast batch shape of matmul(a (..., M, K), b (..., K, N)); a ValueError naming
    both shapes when they do not fit."""
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise ValueError(f"matmul needs arrays of at least 2 dimensions; got a of shape {a_shape} "
                         f"and b of shape {b_shape}")
    if a_shape[-1] != b_shape[-2]:
        raise ValueError(f"matmul: a's last dimension must equal b's second-to-last; got a of "
                         f"shape {a_shape} and b of shape {b_shape}")
    try:
        return tuple(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]))
    except ValueError:
        raise ValueError(f"matmul: batch dimensions do not broadcast; got a of shape {a_shape} "
                         f"and b of shape {b_shape}") from None


def max_significant_bits(x: np.ndarray) -> int:
    """Largest number of significant bits (trailing zeros removed) among x's finite values
    (24 for any float32 array: enough for the product check, without a pass)."""
    if x.dtype == np.float32:
        return 24
    return OperandRange.of(np.asarray(x)).bits


def check_products(bits_a: int, bits_b: int, a_name: str = "a", b_name: str = "b") -> None:
    """A ValueError unless products of operands with bits_a and bits_b significant bits (see
    max_significant_bits) are exact in the exact core."""
    if bits_a + bits_b > EXACT_PRODUCT_BITS:
        raise ValueError(
            f"products of {a_name} and {b_name} need up to {bits_a} + {bits_b} significant bits, "
            f"more than the {EXACT_PRODUCT_BITS} an exact product may have: quantize the "
            "operands first (e.g. a GemmSpec with Casts to formats whose significands total at "
            f"most {EXACT_PRODUCT_BITS} bits)")


def result_format(acc: AccumSpec, cast: Cast | None) -> Format:
    """The format of a reduction's results: the output Cast's, else the outer accumulator's
    (chunked, multiterm), else the accumulator's."""
    if cast is not None:
        assert not isinstance(cast.fmt, BlockFormat), "GemmSpec refuses a block-format out Cast"
        return cast.fmt
    return acc.outer_spec.fmt if acc.order in ("chunked", "multiterm") else acc.fmt


def result_dtype(fmt: Format, dtypes: list[np.dtype]) -> np.dtype:
    """The inputs' common dtype when it holds every value of `fmt`, else float64."""
    dtype = np.result_type(*dtypes)
    return dtype if carrier_holds(fmt, dtype) else np.dtype(np.float64)
