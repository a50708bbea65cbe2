"""matmul on torch tensors under a GemmSpec: "fast" (what FP8 hardware does) or "exact".

Usage rules:
  - mode="fast": the operands are cast (refsim.quantize on tensors, bit-exact), multiplied with
    torch.matmul in float32 (fp32 accumulation, order unspecified: torch's), and the result is
    cast with spec.out. Fast and close to hardware, not bit-reproducible across backends.
  - mode="exact": bit-identical to refsim.matmul. The loop runs over k (the declared order),
    each step vectorized over the (batch, M, N) outputs. Supported: orders sequential, chunked,
    pairwise and kahan, every rounding but sr in the accumulator (and in acc.product), every
    Cast of the operands and of the output (sr included); anything else (sr accumulation,
    multiterm) raises NotImplementedError naming it.
  - Seeds as refsim.matmul: a's Cast uses seed, b's seed + 1, the accumulation and output cast
    seed (the output cast reads the accumulation family TAG_OUT of refsim.accum_core).

How "exact" rounds each partial sum once from the exact value (Boldo and Melquiond, "Emulation of
FMA and correctly rounded sums: proved algorithms using rounding to odd", IEEE TC 57(4), 2008):
the float64 sum s = fl(x + y) and its exact error e (TwoSum, Knuth) give the exact x + y; making
s's last bit odd when e != 0 gives round-to-odd(x + y) at 53 bits, and rounding that once more
to a format of at most 51 significand bits (man_bits <= 50) gives the same result as rounding
x + y directly, in every deterministic mode. A finite x + y beyond float64's range is at least
2^1024 - 2^970, an overflow of every such accumulator in every mode, and is rounded as float64's
max (an overflow the same way). Products are exact in float64 when the operands' significands
total at most 53 bits and no product has a bit below 2^-1074 or reaches 2^1024 (all checked;
refused with a ValueError otherwise: refsim.matmul takes such products exactly). Stochastic
rounding would need the exact discarded fraction, which round-to-odd does not keep: accumulation
in sr raises NotImplementedError.
"""

from __future__ import annotations

import numpy as np
import torch

from formats import FloatFormat
from formats.policy import check_seed
from refsim.accum_core import TAG_OUT
from refsim.backends import torch_backend as tb
from refsim.params import carrier_holds, resolve
from refsim.specs import AccumSpec, Cast, GemmSpec

__all__ = ["matmul"]

_UINT64_MAX = (1 << 64) - 1
_FLOAT64_MAX = float(np.finfo(np.float64).max)
_NO_BIT = 1 << 20  # "no set bit": above every exponent, and sums of two stay in int64
MODES = ("fast", "exact")


def cast(x: torch.Tensor, c: Cast | None, seed: int, axis: int = -1) -> torch.Tensor:
    """x rounded by the Cast c (None: unchanged); block formats go through refsim.blocks."""
    if c is None:
        return x
    if not isinstance(c.fmt, FloatFormat) and not hasattr(c.fmt, "frac_bits"):
        from refsim.blocks import cast_operand  # a block format (MX): the NumPy path, on CPU

        values = cast_operand(x.detach().cpu().numpy(), c, seed, axis=axis)
        return torch.from_numpy(np.ascontiguousarray(values)).to(x.device)
    return tb.quantize(x, c.fmt, c.rounding, overflow=c.overflow, sr_bits=c.sr_bits, seed=seed)


def _bit_fields(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per element of the float64 tensor x: (finite and nonzero, significant bits with trailing
    zeros removed, exponent of the lowest set bit); bits 0 and exponent _NO_BIT elsewhere."""
    bits = x.detach().view(torch.int64)
    efield = (bits >> 52) & 0x7FF
    sig = bits & ((1 << 52) - 1)
    normal = (efield > 0) & (efield < 0x7FF)
    live = (efield < 0x7FF) & (normal | (sig != 0))
    sig = torch.where(normal, sig | (1 << 52), sig)
    exp0 = torch.where(normal, efield - 1075, torch.full_like(efield, -1074))  # of sig's bit 0
    trailing = tb._bitlen(sig & -sig) - 1
    count = torch.where(live, tb._bitlen(sig) - trailing, 0)
    low = torch.where(live, exp0 + trailing, _NO_BIT)
    return live, count, low


def _check_products(a: torch.Tensor, b: torch.Tensor) -> None:
    """Refuse operands (float64) whose products a[.., m, k] * b[.., k, n] are not all exact
    float64 values: the loop multiplies in float64, refsim.matmul exactly. A product of finite
    values is exact when the significands total at most 53 bits (checked over whole tensors),
    its lowest bit is not below 2^-1074 and it is below 2^1024; the last two are checked for
    each (batch, k), where every m meets every n: the lowest bits there are the two operands'
    lowest, and the largest product is the product of the largest magnitudes (exact in float64
    unless it overflows to Inf)."""
    if a.numel() == 0 or b.numel() == 0:
        return
    live_a, bits_a, low_a = _bit_fields(a)
    live_b, bits_b, low_b = _bit_fields(b)
    bits = int(bits_a.max()) + int(bits_b.max())
    if bits > 53:
        raise ValueError(f"torch matmul mode='exact': products need up to {bits} significant "
                         "bits, more than float64's 53: cast the operands to narrower formats")
    low = int((low_a.amin(dim=-2) + low_b.amin(dim=-1)).min())
    largest = (torch.where(live_a, a.abs(), 0).amax(dim=-2)
               * torch.where(live_b, b.abs(), 0).amax(dim=-1))
    if low < -1074:
        where = f"a bit at 2^{low}, below float64's smallest subnormal 2^-1074"
    elif bool(torch.isinf(largest).any()):
        where = "a magnitude of 2^1024 or more, beyond float64's range"
    else:
        return
    raise ValueError(f"torch matmul mode='exact': a product of a and b has {where}; products "
                     "outside float64's range are not supported on the torch path (it "
                     "multiplies in float64): use refsim.matmul on NumPy arrays, which computes "
                     "them exactly, or scale the operands")


def _acc_params(spec: AccumSpec, what: str) -> tuple:
    """Validate an accumulator for the exact mode; return (fmt, rounding, overflow)."""
    if spec.rounding == "sr":
        raise NotImplementedError(f"torch matmul mode='exact': {what} rounding 'sr' is not "
                                  "supported (round-to-odd keeps no exact fraction for SR); use "
                                  "refsim.matmul on NumPy arrays")
    if spec.fmt.man_bits > 50:
        raise NotImplementedError(f"torch matmul mode='exact': the {what} format "
                                  f"{spec.fmt.name} has {spec.fmt.man_bits} mantissa bits; "
                                  "at most 50 are supported (round-to-odd in float64)")
    return spec.fmt, spec.rounding, spec.overflow


def _add_round(x: torch.Tensor, y: torch.Tensor, fmt, rounding: str, overflow: str
               ) -> torch.Tensor:
    """round(x + y) to fmt, from the exact sum of two float64 tensors (module docstring)."""
    s = x + y
    # TwoSum: s + err == x + y exactly, unless s overflows (handled below).
    bp = s - x
    err = (x - (s - bp)) + (y - bp)
    bits = s.view(torch.int64)
    inexact = (err != 0) & torch.isfinite(s)
    # Round to odd: when inexact and s's last bit is even, step one ulp toward the exact value
    # (its magnitude grows iff err has s's sign).
    even = (bits & 1) == 0
    away = (err > 0) == (s > 0)
    bits = torch.where(inexact & even, bits + torch.where(away, 1, -1), bits)
    s = bits.view(torch.float64)
    # A float64 overflow of finite x + y: the exact sum is at least 2^1024 - 2^970, beyond every
    # accumulator's max + half an ulp (at most 50 mantissa bits, emax <= 1023), so every mode
    # rounds it as an overflow of fmt; float64's max (also beyond that point) rounds the same.
    overflowed = torch.isinf(s) & torch.isfinite(x) & torch.isfinite(y)
    s = torch.where(overflowed, torch.copysign(torch.full_like(s, _FLOAT64_MAX), s), s)
    if rounding == "rdn":  # an exact zero sum is -0 under rdn unless both zeros are +0
        plus_zeros = (x == 0) & ~torch.signbit(x) & (y == 0) & ~torch.signbit(y)
        s = torch.where((s == 0) & ~plus_zeros, torch.full_like(s, -0.0), s)
    return tb.quantize(s, fmt, rounding, overflow=overflow)


def _term(a: torch.Tensor, b: torch.Tensor, k: int, acc: AccumSpec) -> torch.Tensor:
    """Term k of every output: a[..., m, k] * b[..., k, n] exactly, or rounded to acc.product."""
    t = a[..., :, k:k + 1] * b[..., k:k + 1, :]  # exact in float64 (checked)
    prod = acc.product
    if prod is not None:
        if prod.rounding == "sr":
            raise NotImplementedError("torch matmul mode='exact': product rounding 'sr' is "
                                      "not supported; use refsim.matmul")
        t = tb.quantize(t, prod.fmt, prod.rounding, overflow=prod.overflow,
                        sr_bits=prod.sr_bits)
    return t


def _reduce_sequential(a: torch.Tensor, b: torch.Tensor, k0: int, k1: int, acc: AccumSpec
                       ) -> torch.Tensor:
    """s = round(t_k0); s = round(s + t_k) for k = k0+1 .. k1-1 (refsim.accum_core)."""
    fmt, rounding, overflow = _acc_params(acc, "accumulator")
    s = tb.quantize(_term(a, b, k0, acc), fmt, rounding, overflow=overflow)
    for k in range(k0 + 1, k1):
        s = _add_round(s, _term(a, b, k, acc), fmt, rounding, overflow)
    return s


def _reduce_pairwise(a: torch.Tensor, b: torch.Tensor, nk: int, acc: AccumSpec) -> torch.Tensor:
    """refsim.accum_core.reduce_pairwise: terms pushed unrounded on a binary counter; the two
    top entries merge (one rounding) while they hold equally many terms, and at the last term
    everything left merges from the top down. One term alone is round(t_0)."""
    fmt, rounding, overflow = _acc_params(acc, "accumulator")
    stack: list[tuple[torch.Tensor, int]] = []
    for k in range(nk):
        stack.append((_term(a, b, k, acc), 1))
        while len(stack) >= 2 and (stack[-1][1] == stack[-2][1] or k == nk - 1):
            (left, n_left), (right, n_right) = stack[-2], stack[-1]
            stack[-2:] = [(_add_round(left, right, fmt, rounding, overflow), n_left + n_right)]
    if nk == 1:
        return tb.quantize(stack[0][0], fmt, rounding, overflow=overflow)
    return stack[0][0]


def _reduce_kahan(a: torch.Tensor, b: torch.Tensor, nk: int, acc: AccumSpec) -> torch.Tensor:
    """refsim.accum_core.reduce_kahan: s = round(t_0), c = +0; then y = round(t_k - c),
    t = round(s + y), c = round(round(t - s) - y), s = t."""
    fmt, rounding, overflow = _acc_params(acc, "accumulator")
    s = tb.quantize(_term(a, b, 0, acc), fmt, rounding, overflow=overflow)
    c = torch.zeros_like(s)
    for k in range(1, nk):
        y = _add_round(_term(a, b, k, acc), -c, fmt, rounding, overflow)
        t = _add_round(s, y, fmt, rounding, overflow)
        d = _add_round(t, -s, fmt, rounding, overflow)
        c = _add_round(d, -y, fmt, rounding, overflow)
        s = t
    return s


def _exact(a: torch.Tensor, b: torch.Tensor, spec: GemmSpec, seed: int) -> torch.Tensor:
    acc = spec.acc
    assert acc is not None
    if acc.order not in ("sequential", "chunked", "pairwise", "kahan"):
        raise NotImplementedError(f"torch matmul mode='exact' supports orders sequential, "
                                  f"chunked, pairwise and kahan; got order={acc.order!r} (use "
                                  "refsim.matmul)")
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    _check_products(a, b)
    k_total = a.shape[-1]
    shape = torch.broadcast_shapes(a.shape[:-1][:-1], b.shape[:-2])
    out_shape = (*shape, a.shape[-2], b.shape[-1])
    if k_total == 0:
        zero = tb.quantize(torch.zeros(out_shape, dtype=torch.float64, device=a.device),
                           acc.outer_spec.fmt if acc.order == "chunked" else acc.fmt)
        result = zero
    elif acc.order == "sequential":
        result = _reduce_sequential(a, b, 0, k_total, acc)
    elif acc.order == "pairwise":
        result = _reduce_pairwise(a, b, k_total, acc)
    elif acc.order == "kahan":
        result = _reduce_kahan(a, b, k_total, acc)
    else:
        outer = acc.outer_spec
        ofmt, orounding, ooverflow = _acc_params(outer, "outer accumulator")
        chunk = int(acc.chunk or k_total)
        result = None
        for k0 in range(0, k_total, chunk):
            s = _reduce_sequential(a, b, k0, min(k0 + chunk, k_total), acc)
            if result is None:
                result = tb.quantize(s, ofmt, orounding, overflow=ooverflow)
            else:
                result = _add_round(result, s, ofmt, orounding, ooverflow)
        assert result is not None
    result = result.expand(out_shape).contiguous()
    out = spec.out
    if out is not None:
        result = _cast_output(result, out, seed)
    return result


def _cast_output(values: torch.Tensor, out: Cast, seed: int) -> torch.Tensor:
    """refsim.accum_core.cast_output: one rounding per output element; SR reads the words of
    family TAG_OUT, step 0, at the element's flat index."""
    if out.rounding != "sr":
        return tb.quantize(values, out.fmt, out.rounding, overflow=out.overflow)
    fmt, params, mode, ovf, sr_bits, seed_value = resolve(out.fmt, np.dtype(np.float64), "sr",
                                                          out.overflow, out.sr_bits, seed)
    flat = values.reshape(-1).view(torch.int64)
    carrier = tb._Carrier(52, 1023)
    bits = tb._quantize_bits(flat, carrier, fmt, params, mode, ovf, sr_bits, seed_value,
                             step=0, tag=TAG_OUT)
    return bits.view(torch.float64).reshape(values.shape)


def _result_dtype(spec: GemmSpec, a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    acc = spec.acc
    assert acc is not None
    fmt = spec.out.fmt if spec.out is not None else (
        acc.outer_spec.fmt if acc.order in ("chunked", "multiterm") else acc.fmt)
    dtype = torch.promote_types(a.dtype, b.dtype)
    if dtype == torch.float32 and carrier_holds(fmt, np.dtype(np.float32)):
        return torch.float32
    return torch.float64


def matmul(a: torch.Tensor, b: torch.Tensor, spec: GemmSpec, *, mode: str = "exact",
           seed: int = 0) -> torch.Tensor:
    """a @ b under `spec` on torch tensors (module docstring for the two modes).

    Args:
        a: (..., M, K) float32/float64 tensor; b: (..., K, N); batch dimensions broadcast.
        spec: a GemmSpec (operand Casts, AccumSpec, output Cast).
        mode: "exact" (bit-identical to refsim.matmul) or "fast" (fp32 torch.matmul).
        seed: 0..2^64-1 (a's Cast: seed; b's: seed + 1; the output cast: seed).

    Returns:
        exact: a tensor of the inputs' dtype when it holds the result format, else float64;
        fast: float32.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if not isinstance(spec, GemmSpec):
        raise TypeError(f"spec must be a GemmSpec; got {type(spec).__name__}")
    seed = check_seed(seed)  # any integer type in 0..2^64-1, as a Python int (seed + 1 wraps)
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} must be a float32 or float64 torch tensor; got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
        if t.dim() < 2:
            raise ValueError(f"matmul needs tensors of at least 2 dimensions; {name} has shape "
                             f"{tuple(t.shape)}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: a's last dimension must equal b's second-to-last; got a of "
                         f"shape {tuple(a.shape)} and b of shape {tuple(b.shape)}")
    try:
        torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except RuntimeError:
        raise ValueError(f"matmul: batch dimensions do not broadcast; got a of shape "
                         f"{tuple(a.shape)} and b of shape {tuple(b.shape)}") from None
    a = cast(a, spec.a, seed, axis=-1)
    b = cast(b, spec.b, (seed + 1) & _UINT64_MAX, axis=-2)
    if mode == "fast":
        for name, t, c in (("a", a, spec.a), ("b", b, spec.b)):
            if t.dtype == torch.float64 and (c is None or not carrier_holds(
                    c.fmt, np.dtype(np.float32))):
                raise ValueError(f"mode='fast' multiplies in float32: {name} is float64 and its "
                                 "Cast does not fit float32 (cast it to a format that does)")
        result = torch.matmul(a.float(), b.float())
        if spec.out is not None:
            result = tb.quantize(result, spec.out.fmt, spec.out.rounding,
                                 overflow=spec.out.overflow, sr_bits=spec.out.sr_bits, seed=seed)
        return result
    result = _exact(a, b, spec, seed)
    dtype = _result_dtype(spec, a, b)
    return result if dtype == torch.float64 else result.to(dtype)

