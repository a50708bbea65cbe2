"""matmul on torch tensors under a GemmSpec: "fast" (what FP8 hardware does) or "exact".

Usage rules:
  - mode="fast": the operands are cast (refsim.quantize on tensors, bit-exact), multiplied with
    torch.matmul in float32 (fp32 accumulation, order unspecified: torch's), and the result is
    cast with spec.out. Fast and close to hardware, not bit-reproducible across backends.
  - mode="exact": bit-identical to refsim.matmul. The loop runs over k (the declared order),
    each step vectorized over the (batch, M, N) outputs. Supported: every order (multiterm: the
    tensor-core block model of docs/hardware.md, refsim.hardware's presets; acc-excluded with
    width + bitlen(group) at most 53, one less with align='product'), an initial accumulator
    c=, every rounding but sr in the accumulator (and in acc.product), every Cast of the
    operands and of the output (sr included); anything else (sr accumulation, wider
    acc-excluded groups) raises NotImplementedError naming it.
  - spec.transform (docs/transforms.md) is applied to both operands along K before their Casts,
    in both modes, by refsim.transforms on the CPU (the same bits as refsim.matmul).
  - Seeds as refsim.matmul: a's Cast uses seed, b's seed + 1, the accumulation and output cast
    seed (the output cast reads the accumulation family TAG_OUT of refsim.kernels.accum_core).

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

from refsim.backends import torch_backend as tb
from refsim.backends.kernel_args import batch_shape, result_format
from refsim.formats.block_format import BlockFormat
from refsim.formats.policy import check_seed
from refsim.kernels.accum_core import TAG_OUT
from refsim.params import carrier_holds, resolve, type_name
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
    if isinstance(c.fmt, BlockFormat):
        from refsim.blocks import cast_operand  # a block format (MX): the NumPy path, on CPU

        values = cast_operand(x.detach().cpu().numpy(), c, seed, axis=axis)
        return torch.from_numpy(np.ascontiguousarray(values)).to(x.device)
    return tb.quantize(x, c.fmt, c.rounding, overflow=c.overflow, sr_bits=c.sr_bits, seed=seed)


def _transformed(x: torch.Tensor, spec: GemmSpec, axis: int) -> torch.Tensor:
    """x transformed by spec.transform along `axis` (refsim.transforms, bit-identical)."""
    assert spec.transform is not None
    values = spec.transform.apply(x.detach().cpu().numpy(), axis=axis)
    return torch.from_numpy(np.ascontiguousarray(values)).to(x.device)


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
    trailing = tb.bit_length(sig & -sig) - 1
    count = torch.where(live, tb.bit_length(sig) - trailing, 0)
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
        assert not isinstance(prod.fmt, BlockFormat)  # AccumSpec.product: float formats only
        if prod.rounding == "sr":
            raise NotImplementedError("torch matmul mode='exact': product rounding 'sr' is "
                                      "not supported; use refsim.matmul")
        t = tb.quantize(t, prod.fmt, prod.rounding, overflow=prod.overflow,
                        sr_bits=prod.sr_bits)
    return t


def _reduce_sequential(a: torch.Tensor, b: torch.Tensor, k0: int, k1: int, acc: AccumSpec,
                       init: torch.Tensor | None = None) -> torch.Tensor:
    """s = round(t_k0); s = round(s + t_k) for k = k0+1 .. k1-1 (refsim.kernels.accum_core); from
    s = init (exact) for every k when init is given."""
    fmt, rounding, overflow = _acc_params(acc, "accumulator")
    if init is not None:
        s = init
        for k in range(k0, k1):
            s = _add_round(s, _term(a, b, k, acc), fmt, rounding, overflow)
        return s
    s = tb.quantize(_term(a, b, k0, acc), fmt, rounding, overflow=overflow)
    for k in range(k0 + 1, k1):
        s = _add_round(s, _term(a, b, k, acc), fmt, rounding, overflow)
    return s


def _reduce_pairwise(a: torch.Tensor, b: torch.Tensor, nk: int, acc: AccumSpec,
                     c: torch.Tensor | None = None, k0: int = 0) -> torch.Tensor:
    """kernels.accum_core.reduce_pairwise (pairwise_range) on terms k0 .. k0+nk-1: terms pushed
    unrounded on a binary counter; the two top entries merge (one rounding) while they hold
    equally many terms, and at the last term everything left merges from the top down. One
    term alone is round(t_k0). With C: round(C + root), the root unrounded for one term."""
    fmt, rounding, overflow = _acc_params(acc, "accumulator")
    if c is not None and nk == 1:
        return _add_round(c, _term(a, b, k0, acc), fmt, rounding, overflow)
    stack: list[tuple[torch.Tensor, int]] = []
    for k in range(nk):
        stack.append((_term(a, b, k0 + k, acc), 1))
        while len(stack) >= 2 and (stack[-1][1] == stack[-2][1] or k == nk - 1):
            (left, n_left), (right, n_right) = stack[-2], stack[-1]
            stack[-2:] = [(_add_round(left, right, fmt, rounding, overflow), n_left + n_right)]
    if nk == 1:
        return tb.quantize(stack[0][0], fmt, rounding, overflow=overflow)
    if c is not None:
        return _add_round(c, stack[0][0], fmt, rounding, overflow)
    return stack[0][0]


def _reduce_kahan(a: torch.Tensor, b: torch.Tensor, nk: int, acc: AccumSpec,
                  init: torch.Tensor | None = None) -> torch.Tensor:
    """refsim.kernels.accum_core.reduce_kahan: s = round(t_0), c = +0; then y = round(t_k - c),
    t = round(s + y), c = round(round(t - s) - y), s = t. With C: s = C, c = +0, every k."""
    fmt, rounding, overflow = _acc_params(acc, "accumulator")
    start = 0 if init is not None else 1
    s = init if init is not None else tb.quantize(_term(a, b, 0, acc), fmt, rounding,
                                                  overflow=overflow)
    c = torch.zeros_like(s)
    for k in range(start, nk):
        y = _add_round(_term(a, b, k, acc), -c, fmt, rounding, overflow)
        t = _add_round(s, y, fmt, rounding, overflow)
        d = _add_round(t, -s, fmt, rounding, overflow)
        c = _add_round(d, -y, fmt, rounding, overflow)
        s = t
    return s


def _exact(a: torch.Tensor, b: torch.Tensor, spec: GemmSpec, seed: int,
           c: torch.Tensor | None = None) -> torch.Tensor:
    acc = spec.acc
    assert acc is not None
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    _check_products(a, b)
    k_total = a.shape[-1]
    shape = torch.broadcast_shapes(a.shape[:-1][:-1], b.shape[:-2])
    out_shape = (*shape, a.shape[-2], b.shape[-1])
    if c is not None:
        c = c.to(device=a.device, dtype=torch.float64).expand(out_shape)
    blocked = acc.order in ("chunked", "multiterm")
    if k_total == 0:
        final = acc.outer_spec if blocked else acc
        start = c if c is not None else torch.zeros(out_shape, dtype=torch.float64,
                                                    device=a.device)
        result = tb.quantize(start, final.fmt, final.rounding, overflow=final.overflow)
    elif acc.order == "sequential":
        result = _reduce_sequential(a, b, 0, k_total, acc, c)
    elif acc.order == "pairwise":
        result = _reduce_pairwise(a, b, k_total, acc, c)
    elif acc.order == "kahan":
        result = _reduce_kahan(a, b, k_total, acc, c)
    elif acc.order == "multiterm":
        result = _reduce_multiterm(a, b, k_total, acc, c)
    else:
        outer = acc.outer_spec
        ofmt, orounding, ooverflow = _acc_params(outer, "outer accumulator")
        chunk = int(acc.chunk or k_total)
        total = c if (c is not None and acc.c_entry == "outer") else None
        for k0 in range(0, k_total, chunk):
            init = c if (c is not None and acc.c_entry != "outer" and k0 == 0) else None
            if acc.chunk_order == "pairwise":
                s = _reduce_pairwise(a, b, min(chunk, k_total - k0), acc, init, k0)
            else:
                s = _reduce_sequential(a, b, k0, min(k0 + chunk, k_total), acc, init)
            if total is None:
                total = tb.quantize(s, ofmt, orounding, overflow=ooverflow)
            else:
                total = _add_round(total, s, ofmt, orounding, ooverflow)
        assert total is not None
        result = total
    result = result.expand(out_shape).contiguous()
    out = spec.out
    if out is not None:
        result = _cast_output(result, out, seed)
    return result


# ---- multiterm (refsim.kernels.accum_core.multiterm_group, docs/accumulation.md) -----------------
# Every output's group sum is an int64 S with |S| < 2^63 (accum_core's width proof); S * 2^q goes
# to float64 rounded to odd at 53 bits (_from_units), which the accumulator format (at most 50
# mantissa bits, smallest quantum at least 2^-1072) then rounds as it would S * 2^q itself.
_EXP_NONE = -(1 << 40)


def _magnitude(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, e0) with |x| = M * 2^e0, M < 2^53 an int64, for finite float64 x (M = 0 for zeros)."""
    mantissa, exponent = torch.frexp(x.abs())
    return (mantissa * 2.0**53).to(torch.int64), exponent.to(torch.int64) - 53


def _floor_log2(x: torch.Tensor) -> torch.Tensor:
    """floor(log2|x|) of nonzero finite float64 values, int64 (anything elsewhere)."""
    return torch.frexp(x)[1].to(torch.int64) - 1


def _signed_result(result, total, n_pos, n_neg, n_live, rdn: bool, nan, pos_inf, neg_inf):
    """The group's value with the zero-sign rule applied to an exactly zero sum (-0 when every
    term was -0, or under rdn unless every term was +0) and the non-finite inputs on top:
    NaN for a NaN or both infinities, else the infinity."""
    all_neg = (n_live == 0) & (n_pos == 0)
    all_pos = (n_live == 0) & (n_neg == 0)
    zero_negative = all_neg | ~all_pos if rdn else all_neg
    result = torch.where(total == 0, torch.where(zero_negative, -0.0, 0.0), result)
    result = torch.where(neg_inf, float("-inf"), result)
    result = torch.where(pos_inf, float("inf"), result)
    return torch.where(nan | (pos_inf & neg_inf), float("nan"), result)


def _sum_units(values, q, floor: bool, n_pos, n_neg, n_live):
    """The exact sum, in units of 2^q, of the values truncated to multiples of 2^q (toward zero,
    or floor), non-finite values counted as 0; counts each value's sign when it truncates to
    zero (n_pos, n_neg) and the live ones (n_live), in place, for the zero-sign rule."""
    total = torch.zeros_like(q)
    for v in values:
        finite = torch.where(torch.isfinite(v), v, 0.0)
        units = _units(finite, q, floor)
        negative = torch.signbit(finite)
        zero = units == 0
        n_pos += zero & ~negative
        n_neg += zero & negative
        n_live += ~zero
        total += torch.where(negative, -units, units)
    return total


def _units(x: torch.Tensor, q: torch.Tensor, floor: bool) -> torch.Tensor:
    """|T| / 2^q (int64) for T = x truncated to a multiple of 2^q: toward zero, or toward -inf
    when `floor` (a negative x with bits below 2^q loses one unit more); x finite, |x| below
    2^(q + 62) (the width proof)."""
    m, e0 = _magnitude(x)
    shift = e0 - q
    right = torch.clamp(-shift, 0, 63)
    up = torch.bitwise_left_shift(m, torch.clamp(shift, 0, 62))
    down = torch.bitwise_right_shift(m, right)
    rest = (m & (torch.bitwise_left_shift(torch.ones_like(m), right) - 1)) != 0
    units = torch.where(shift >= 0, up, down)
    if floor:
        units = units + ((shift < 0) & rest & torch.signbit(x)).to(torch.int64)
    return units


def _from_units(s: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """s * 2^q (s int64, |s| < 2^63) as float64, rounded to odd at float64's precision (exact
    when it fits); beyond float64's range, +-float64 max (an overflow of every accumulator
    format here, as in _add_round)."""
    m = s.abs()
    top = q + tb.bit_length(m) - 1
    quantum = torch.clamp(top - 52, min=-1074)
    shift = quantum - q
    right = torch.clamp(shift, 0, 63)
    sticky = (m & (torch.bitwise_left_shift(torch.ones_like(m), right) - 1)) != 0
    down = torch.bitwise_right_shift(m, right) | sticky.to(torch.int64)
    t = torch.where(shift > 0, down, torch.bitwise_left_shift(m, torch.clamp(-shift, 0, 62)))
    normal = t >= (1 << 52)
    bits = torch.where(normal, ((quantum + 52 + 1023) << 52) | (t - (1 << 52)), t)
    value = torch.where(top > 1023, torch.full_like(s, 0x7FEFFFFFFFFFFFFF), bits)
    value = value.view(torch.float64)
    return torch.where(s < 0, -value, value)


def _aligned(entries: list[tuple[torch.Tensor, torch.Tensor]], acc: AccumSpec) -> torch.Tensor:
    """multiterm_group on (value, alignment exponent) tensors of one shape: specials by IEEE
    rules, else the exact sum of the values truncated to multiples of 2^(E - width + 1) (E the
    largest exponent of the nonzero values) as float64 rounded to odd, zeros signed as
    docs/accumulation.md says."""
    values = [v for v, _ in entries]
    nan = torch.zeros(values[0].shape, dtype=torch.bool, device=values[0].device)
    pos_inf, neg_inf = nan.clone(), nan.clone()
    e_max = torch.full(values[0].shape, _EXP_NONE, dtype=torch.int64, device=values[0].device)
    for v, e in entries:
        nan |= torch.isnan(v)
        pos_inf |= v == float("inf")
        neg_inf |= v == float("-inf")
        e_max = torch.where(torch.isfinite(v) & (v != 0), torch.maximum(e_max, e), e_max)
    q = e_max - int(acc.width or 1) + 1
    n_pos = torch.zeros_like(e_max)
    n_neg = torch.zeros_like(e_max)
    n_live = torch.zeros_like(e_max)
    total = _sum_units(values, q, acc.truncation == "floor", n_pos, n_neg, n_live)
    result = _from_units(total, q)
    return _signed_result(result, total, n_pos, n_neg, n_live, acc.rounding == "rdn", nan,
                          pos_inf, neg_inf)


def _move(x: torch.Tensor, shift: torch.Tensor, floor: bool) -> torch.Tensor:
    """accum_core.move_units: x * 2^-shift on the integer grid (toward -inf when `floor`, else
    toward zero; shift <= 0 multiplies exactly)."""
    left = torch.bitwise_left_shift(x, torch.clamp(-shift, 0, 62))
    right = torch.clamp(shift, 0, 63)
    if floor:
        down = torch.bitwise_right_shift(x, right)
    else:
        down = torch.bitwise_right_shift(x.abs(), right)
        down = torch.where(x < 0, -down, down)
    return torch.where(shift <= 0, left, down)


def _late(entries: list[tuple[torch.Tensor, torch.Tensor]], s: torch.Tensor, acc: AccumSpec
          ) -> torch.Tensor:
    """accum_core.late_group on tensors: the products of `entries` with the running sum s joining
    late (acc.late_bits; docs/accumulation.md), as float64 rounded to odd, zeros signed."""
    values = [v for v, _ in entries] + [s]
    shape = s.shape
    nan = torch.zeros(shape, dtype=torch.bool, device=s.device)
    pos_inf, neg_inf = nan.clone(), nan.clone()
    for v in values:
        nan |= torch.isnan(v)
        pos_inf |= v == float("inf")
        neg_inf |= v == float("-inf")
    frac = int(acc.width or 1) - 1
    late_floor = acc.late_truncation == "floor"
    stride = int(acc.interleave or 1)
    emin = acc.fmt.emin
    n_pos = torch.zeros(shape, dtype=torch.int64, device=s.device)
    n_neg, n_live = n_pos.clone(), n_pos.clone()
    parts = []
    for j in range(stride):
        e_j = torch.full(shape, _EXP_NONE, dtype=torch.int64, device=s.device)
        for v, e in entries[j::stride]:
            e_j = torch.where(torch.isfinite(v) & (v != 0), torch.maximum(e_j, e), e_j)
        q_j = e_j - frac
        s_j = _sum_units([v for v, _ in entries[j::stride]], q_j, acc.truncation == "floor",
                         n_pos, n_neg, n_live)
        parts.append((e_j, q_j, s_j))
    e_top = parts[0][0]
    for e_j, _, _ in parts[1:]:
        e_top = torch.maximum(e_top, e_j)
    s_finite = torch.where(torch.isfinite(s), s, 0.0)
    e_c = torch.where(s_finite != 0, torch.clamp(_floor_log2(s_finite), min=emin), emin)
    joins = (e_top > _EXP_NONE) & (e_c <= e_top)
    grid = torch.where(joins, e_top - frac, e_c - int(acc.late_bits or 0))
    total = torch.zeros_like(e_top)
    for e_j, q_j, s_j in parts:
        total += torch.where(e_j > _EXP_NONE, _move(s_j, grid - q_j, late_floor), 0)
    sc = _units(s_finite, grid, late_floor)
    if acc.c_cutoff is not None:
        sc = torch.where(joins & (e_top - e_c > acc.c_cutoff), 0, sc)
    s_negative = torch.signbit(s_finite)
    n_pos += (sc == 0) & ~s_negative
    n_neg += (sc == 0) & s_negative
    n_live += sc != 0
    total += torch.where(s_negative, -sc, sc)
    lead = grid + tb.bit_length(total.abs()) - 1
    cut = torch.clamp(lead, min=emin) - int(acc.late_norm_bits or 0)
    renorm = ~joins & (total != 0) & (cut > grid)
    total = torch.where(renorm, _move(total, cut - grid, late_floor), total)
    exp = torch.where(renorm, cut, grid)
    result = _from_units(total, exp)
    return _signed_result(result, total, n_pos, n_neg, n_live, acc.rounding == "rdn", nan,
                          pos_inf, neg_inf)


def _operand_exponent(x: torch.Tensor, emin: int | None) -> torch.Tensor:
    """The exponent of x in the operand format: floor(log2|x|), at least emin."""
    e = _floor_log2(x)
    return e if emin is None else torch.clamp(e, min=emin)


def _check_multiterm(acc: AccumSpec) -> None:
    fmt = acc.fmt
    if acc.group_run is not None:
        raise NotImplementedError(f"torch matmul mode='exact': multiterm group_run "
                                  f"({acc.group_run}, interleaved groups) runs in refsim.matmul "
                                  "only")
    if fmt.emin - (fmt.man_bits if fmt.subnormals else 0) < -1072:
        raise NotImplementedError(f"torch matmul mode='exact': multiterm needs an accumulator "
                                  f"whose smallest quantum is at least 2^-1072; {fmt.name} has "
                                  "a smaller one (use refsim.matmul)")
    extra = 1 if acc.align == "product" else 0
    if acc.variant == "acc-excluded" and (acc.width or 0) + (acc.group or 0).bit_length() \
            + extra > 53:
        raise NotImplementedError(f"torch matmul mode='exact': multiterm acc-excluded adds the "
                                  f"group sum to the accumulator in float64, so width + "
                                  f"bitlen(group){' + 1' * extra} must be at most 53; got "
                                  f"width {acc.width}, group {acc.group} (use refsim.matmul)")


def _reduce_multiterm(a: torch.Tensor, b: torch.Tensor, nk: int, acc: AccumSpec,
                      c: torch.Tensor | None) -> torch.Tensor:
    """kernels.accum_core.reduce_multiterm on every output at once (groups, chunks, C entry)."""
    fmt, rounding, overflow = _acc_params(acc, "accumulator")
    _check_multiterm(acc)
    ofmt, orounding, ooverflow = _acc_params(acc.outer_spec, "outer accumulator")
    operands = acc.operands
    emin = None if operands is None else operands.emin
    if acc.subnormals == "flush":
        assert emin is not None
        a = torch.where((a != 0) & (a.abs() < 2.0**emin), torch.copysign(torch.zeros_like(a), a),
                        a)
        b = torch.where((b != 0) & (b.abs() < 2.0**emin), torch.copysign(torch.zeros_like(b), b),
                        b)
    by_operands = acc.align == "product"
    if by_operands:
        ea = _operand_exponent(a, emin)
        eb = _operand_exponent(b, emin)
    group = int(acc.group or 1)
    chunk = int(acc.chunk or nk)
    into_outer = c is not None and acc.c_entry == "outer"
    outer = c if into_outer else None
    late = acc.late_bits is not None
    for c0 in range(0, nk, chunk):
        c1 = min(c0 + chunk, nk)
        s = c if (c is not None and not into_outer and c0 == 0) else None
        if late and s is None:  # the late accumulator starts at +0
            s = torch.zeros((*a.shape[:-2], a.shape[-2], b.shape[-1]), dtype=torch.float64,
                            device=a.device)
        for g0 in range(c0, c1, group):
            entries = []
            for k in range(g0, min(g0 + group, c1)):
                t = _term(a, b, k, acc)
                if by_operands:
                    e = ea[..., :, k:k + 1] + eb[..., k:k + 1, :]
                else:
                    e = _floor_log2(t)
                entries.append((t, e.expand(t.shape)))
            if late:
                assert s is not None
                shape = torch.broadcast_shapes(s.shape, entries[0][0].shape)
                s = tb.quantize(_late([(v.expand(shape), e.expand(shape)) for v, e in entries],
                                      s.expand(shape), acc), fmt, rounding, overflow=overflow)
            elif s is None:
                s = tb.quantize(_aligned(entries, acc), fmt, rounding, overflow=overflow)
            elif acc.variant == "acc-aligned":
                shape = torch.broadcast_shapes(s.shape, entries[0][0].shape)
                s = s.expand(shape)
                e_s = _floor_log2(s)
                if by_operands:
                    e_s = torch.clamp(e_s, min=fmt.emin)
                entries = [(s, e_s), *((v.expand(shape), e.expand(shape)) for v, e in entries)]
                s = tb.quantize(_aligned(entries, acc), fmt, rounding, overflow=overflow)
            else:
                s = _add_round(s, _aligned(entries, acc), fmt, rounding, overflow)
        assert s is not None
        if outer is None:
            outer = tb.quantize(s, ofmt, orounding, overflow=ooverflow)
        else:
            outer = _add_round(outer, s, ofmt, orounding, ooverflow)
    assert outer is not None
    return outer


def _cast_output(values: torch.Tensor, out: Cast, seed: int) -> torch.Tensor:
    """refsim.kernels.accum_core.cast_output: one rounding per output element; SR reads the words of
    family TAG_OUT, step 0, at the element's flat index."""
    assert not isinstance(out.fmt, BlockFormat)  # GemmSpec.out: element formats only
    if out.rounding != "sr":
        return tb.quantize(values, out.fmt, out.rounding, overflow=out.overflow)
    fmt, params, mode, ovf, sr_bits, seed_value = resolve(out.fmt, np.dtype(np.float64), "sr",
                                                          out.overflow, out.sr_bits, seed)
    flat = values.reshape(-1).view(torch.int64)
    carrier = tb.Carrier(52, 1023)
    bits = tb.quantize_bits(flat, carrier, fmt, params, mode, ovf, sr_bits, seed_value,
                             step=0, tag=TAG_OUT)
    return bits.view(torch.float64).reshape(values.shape)


def _result_dtype(spec: GemmSpec, a: torch.Tensor, b: torch.Tensor,
                  c: torch.Tensor | None = None) -> torch.dtype:
    """refsim.backends.kernel_args.result_dtype for tensors."""
    assert spec.acc is not None
    fmt = result_format(spec.acc, spec.out)
    dtype = torch.promote_types(a.dtype, b.dtype)
    if c is not None:
        dtype = torch.promote_types(dtype, c.dtype)
    if dtype == torch.float32 and carrier_holds(fmt, np.dtype(np.float32)):
        return torch.float32
    return torch.float64


def matmul(a: torch.Tensor, b: torch.Tensor, spec: GemmSpec, c: torch.Tensor | None = None, *,
           mode: str = "exact", seed: int = 0) -> torch.Tensor:
    """a @ b (+ C) under `spec` on torch tensors (module docstring for the two modes).

    Args:
        a: (..., M, K) float32/float64 tensor; b: (..., K, N); batch dimensions broadcast.
        spec: a GemmSpec (operand Casts, AccumSpec, output Cast).
        c: None, or the initial accumulator C, a float32/float64 tensor that broadcasts to the
            output shape, entering as in refsim.matmul (exact); fast mode adds it in float32.
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
                            f"{type_name(t)}")
        if t.dim() < 2:
            raise ValueError(f"matmul needs tensors of at least 2 dimensions; {name} has shape "
                             f"{tuple(t.shape)}")
    batch = batch_shape(tuple(a.shape), tuple(b.shape))
    if c is not None:
        if not isinstance(c, torch.Tensor) or c.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"c must be a float32 or float64 torch tensor; got {type_name(c)}")
        out_shape = (*batch, a.shape[-2], b.shape[-1])
        try:
            if torch.broadcast_shapes(c.shape, out_shape) != torch.Size(out_shape):
                raise RuntimeError
        except RuntimeError:
            raise ValueError(f"c of shape {tuple(c.shape)} does not broadcast to the output "
                             f"shape {out_shape}") from None
    initial = c
    if spec.transform is not None:  # along K, before the Casts: the NumPy path, on CPU
        a = _transformed(a, spec, -1)
        b = _transformed(b, spec, -2)
    a = cast(a, spec.a, seed, axis=-1)
    b = cast(b, spec.b, (seed + 1) & _UINT64_MAX, axis=-2)
    if mode == "fast":
        for name, t, op in (("a", a, spec.a), ("b", b, spec.b)):
            if t.dtype == torch.float64 and (op is None or isinstance(op.fmt, BlockFormat)
                                             or not carrier_holds(op.fmt, np.dtype(np.float32))):
                raise ValueError(f"mode='fast' multiplies in float32: {name} is float64 and its "
                                 "Cast does not fit float32 (cast it to a format that does)")
        result = torch.matmul(a.float(), b.float())
        if initial is not None:
            result = result + initial.float()
        if spec.out is not None:
            assert not isinstance(spec.out.fmt, BlockFormat)  # GemmSpec.out: element formats only
            result = tb.quantize(result, spec.out.fmt, spec.out.rounding,
                                 overflow=spec.out.overflow, sr_bits=spec.out.sr_bits, seed=seed)
        return result
    result = _exact(a, b, spec, seed, initial)
    dtype = _result_dtype(spec, a, b, initial)
    return result if dtype == torch.float64 else result.to(dtype)

