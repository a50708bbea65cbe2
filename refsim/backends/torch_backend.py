"""The torch path of refsim.quantize: the same rounding, in torch integer ops on bit patterns.

Usage rules: `quantize(x, ...)` takes a torch float32, float64 or bfloat16 tensor on any device
(CPU, CUDA) and returns a tensor of the same dtype, shape and device, bit-identical to the Numba
reference (kernels.core; semantics in docs/rounding.md). refsim.quantize dispatches here for torch
tensors; torch is imported only then.

How it works. Every element's carrier bit pattern is read as an int64 (a float32 pattern
zero-extended, a float64 pattern as is), split into (sign, integer significand, exponent),
rounded once on the integer significand and written back as a pattern of the same carrier, in
whole-tensor ops that mirror kernels.core.quantize_bits step for step. bfloat16 input is widened
to float32 (exact), rounded there, and narrowed back (exact: the format must fit in bfloat16).
Random bits reach the rounding as one top-aligned 64-bit word per element, as in kernels.core:
the stream's first 32-bit word H_0 (kernels.rng) as H_0 << 32, later words H_j drawn only for the
lanes whose 32-bit chunks tie; caller-given random bits (rbits, a torch unsigned integer tensor on
x's device) as R << (64 - sr_bits) (refsim.backends.cpu.given_word), nothing drawn.
The fast path (_fast_kernel) reads H_0 itself and leaves the lanes where H_1 decides to the
general one.

torch has no full uint64 arithmetic, so unsigned 64-bit words live in int64 tensors as their
two's-complement bit patterns: + and * wrap modulo 2^64 as for uint64, and a logical right shift
is an arithmetic shift followed by a mask (_shr). The Philox4x64-10 stream of kernels.rng is
rebuilt on that basis, its 64x64 -> 128-bit multiplies from 32-bit halves (_mulhilo). Random
words are compared 32 bits at a time, as non-negative int64 values, so no unsigned comparison
is needed.
"""

from __future__ import annotations

import numpy as np
import torch

from refsim.backends import cpu_quantize
from refsim.formats import FixedFormat, FloatFormat, Format
from refsim.formats.policy import check_rbits_array, check_rbits_request, check_sr_variant
from refsim.kernels import core
from refsim.kernels.rng import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1
from refsim.params import check_out, float_holds, kernel_sr_bits, resolve

__all__ = ["ROUTES", "philox4x64_10", "quantize", "random_words", "use_compiled"]

_M32 = 0xFFFFFFFF


def _signed(value: int) -> int:
    """A uint64 value as the int64 with the same bit pattern."""
    value = int(value) & ((1 << 64) - 1)
    return value - (1 << 64) if value >= 1 << 63 else value


_M0, _M1 = _signed(int(PHILOX_M0)), _signed(int(PHILOX_M1))
_W0, _W1 = int(PHILOX_W0), int(PHILOX_W1)


# ---- uint64 arithmetic in int64 tensors ---------------------------------------------------------
def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of uint64 patterns by a constant 0 <= s <= 63."""
    if s == 0:
        return x
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) words of the 128-bit product of the constant a and the words b (uint64).

    Schoolbook multiplication from 32-bit halves: each partial product is below 2^64 and its
    int64 pattern wraps exactly as a uint64 would; `mid` stays below 2^34. The low word is the
    plain wrapping product.
    """
    a_lo, a_hi = a & _M32, (a >> 32) & _M32
    b_lo, b_hi = b & _M32, _shr(b, 32)
    p_ll = b_lo * a_lo
    p_lh = b_hi * a_lo
    p_hl = b_lo * a_hi
    p_hh = b_hi * a_hi
    mid = _shr(p_ll, 32) + (p_lh & _M32) + (p_hl & _M32)
    hi = p_hh + _shr(p_lh, 32) + _shr(p_hl, 32) + _shr(mid, 32)
    return hi, b * _signed(a)


def philox4x64_10(c0: torch.Tensor, c1: torch.Tensor | int, c2: int, c3: int, k0: int,
                  k1: int = 0) -> tuple[torch.Tensor, ...]:
    """Philox4x64-10 blocks of counters (c0, c1, c2, c3) under key (k0, k1), as int64 patterns.

    c0 (and c1 if a tensor) are int64 tensors of uint64 patterns; the rest are Python ints in
    0..2^64-1. Same function as refsim.kernels.rng.philox4x64_10.
    """
    x0 = c0
    x1 = c1 if isinstance(c1, torch.Tensor) else torch.full_like(c0, _signed(c1))
    x2 = torch.full_like(c0, _signed(c2))
    x3 = torch.full_like(c0, _signed(c3))
    key0, key1 = int(k0), int(k1)
    for r in range(10):
        if r:
            key0 = (key0 + _W0) & ((1 << 64) - 1)
            key1 = (key1 + _W1) & ((1 << 64) - 1)
        hi0, lo0 = _mulhilo(_M0, x0)
        hi1, lo1 = _mulhilo(_M1, x2)
        x0, x1, x2, x3 = hi1 ^ x1 ^ _signed(key0), lo1, hi0 ^ x3 ^ _signed(key1), lo0
    return x0, x1, x2, x3


def _halves(words: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Half index % 2 (low half first) of each 64-bit word: the 32-bit value in an int64."""
    return torch.where((index & 1) == 1, _shr(words, 32), words & _M32)


def _words_at(index: torch.Tensor, seed: int, j: int, step: int = 0,
              tag: int = 0) -> torch.Tensor:
    """Word H_j of the elements at flat indices `index` (int64 >= 0), 32-bit values in int64:
    half index % 2 of word (index // 2) % 4 of the block at counter (index // 8 + 1, j, step,
    tag) (kernels.rng.stream_word; step and tag are refsim.kernels.accum_core's families, 0 for
    refsim.quantize). One block per element: for the few lanes that need it."""
    blocks = (index >> 3) + 1
    words = torch.stack(philox4x64_10(blocks, j, step, tag, seed), dim=-1)
    word = torch.gather(words, -1, ((index >> 1) & 3).unsqueeze(-1)).squeeze(-1)
    return _halves(word, index)


TORCH_PHILOX_ON_CPU = False
"""On CPU, random_words reads the same stream from refsim.kernels.rng (Numba, about 100x faster than
whole-tensor int64 ops) unless this is True; tests set it to check the torch ops on CPU too."""


def random_words(seed: int, n: int, j: int = 0, device: torch.device | str = "cpu",
                 step: int = 0, tag: int = 0) -> torch.Tensor:
    """Words H_j of elements 0 .. n-1 under `seed`: an int64 tensor of 32-bit values (0 ..
    2^32 - 1; torch has no uint32 arithmetic to speak of, and the rounding works in int64).

    The values of kernels.rng.random_words (uint32); for j = 0 and no family,
    np.random.Philox(key=seed).random_raw((n + 1) // 2) split into 32-bit halves, low half
    first. step and tag fill counter words 2 and 3 (kernels.accum_core's families). Computed
    with torch integer ops on the tensor's device, one block per eight elements; on CPU from
    kernels.rng (or NumPy, for a family).
    """
    if torch.device(device).type == "cpu" and not TORCH_PHILOX_ON_CPU:
        if step == 0 and tag == 0:
            from refsim.kernels.rng import random_words as numba_words
            halves = numba_words(seed, n, j)
        else:  # NumPy's Philox with counter words 1..3 preset (docs/rng.md)
            counter = (j << 64) + (step << 128) + (tag << 192)
            raw = np.random.Philox(key=seed, counter=counter).random_raw((n + 1) // 2)
            halves = raw.astype("<u8").view("<u4")[:n]
        return torch.from_numpy(halves.astype(np.int64))
    n_blocks = (n + 7) // 8
    blocks = torch.arange(1, n_blocks + 1, dtype=torch.int64, device=device)
    words = torch.stack(philox4x64_10(blocks, j, step, tag, seed), dim=-1).reshape(-1)
    return torch.stack((words & _M32, _shr(words, 32)), dim=-1).reshape(-1)[:n]


# ---- carriers -----------------------------------------------------------------------------------
_CARRIER = {torch.float32: (23, 127, torch.int32), torch.float64: (52, 1023, torch.int64)}
_NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64, torch.bfloat16: np.float32}


def _bf16_holds(fmt: Format) -> bool:
    """Is every value of fmt a bfloat16 value (8 significand bits, emax 127, 2^-133)?"""
    return float_holds(fmt, 7, 127, -133)


def bit_length(n: torch.Tensor) -> torch.Tensor:
    """Bit length of non-negative int64 values (0 for 0), by binary search."""
    length = torch.zeros_like(n)
    for step in (32, 16, 8, 4, 2, 1):
        big = n >= (1 << step)
        n = torch.where(big, n >> step, n)
        length += big * step
    return length + (n > 0)


class Carrier:
    """Constants of a binary carrier (float32: 23, 127; float64: 52, 1023) as Python ints."""

    def __init__(self, c_man: int, c_bias: int):
        self.man = c_man
        self.bias = c_bias
        self.exp_bits = int(c_bias).bit_length() + 1
        self.sign_shift = c_man + self.exp_bits
        self.abs_mask = (1 << self.sign_shift) - 1
        self.mant = (1 << c_man) - 1
        self.efield_max = 2 * c_bias + 1
        self.nan = (self.efield_max << c_man) | (1 << (c_man - 1))
        self.inf = self.efield_max << c_man
        self.sign = 1 << self.sign_shift  # as a Python int; _signed() for int64 use

    def encode(self, negative: torch.Tensor, n: torch.Tensor, q: torch.Tensor,
               length: torch.Tensor | None = None) -> torch.Tensor:
        """Patterns of (-1)^negative * n * 2^q (exact in the carrier; n >= 0); `length` is
        n's bit length when the caller has it."""
        if length is None:
            length = bit_length(n)
        top = q + length - 1
        normal = top >= 1 - self.bias
        up = (self.man - length + 1).clamp(min=0)
        down = (length - self.man - 1).clamp(min=0)
        mant = ((n << up) >> down) & self.mant
        as_normal = ((top + self.bias).clamp(min=0) << self.man) | mant
        sub_shift = (q - (1 - self.bias - self.man)).clamp(0, 62)
        as_sub = n << sub_shift
        body = torch.where(normal, as_normal, as_sub)
        body = torch.where(n == 0, torch.zeros_like(body), body)
        return body | (negative.to(torch.int64) * _signed(self.sign))

    def encode_const(self, negative: bool, n: int, q: int) -> int:
        """One pattern, as a Python int (for constants)."""
        bits = int(core.encode_carrier(negative, np.int64(n), np.int64(q), self.man, self.bias))
        return _signed(bits)


# ---- rounding -----------------------------------------------------------------------------------
def _sr_up(rem: torch.Tensor, shift: torch.Tensor, sr_bits: int, word0: torch.Tensor,
           seed: int, index: torch.Tensor, step: int = 0, tag: int = 0) -> torch.Tensor:
    """kernels.core.sr_round_up for every lane (rem > 0, shift >= 1), vectorized.

    word0: each lane's first random bits from the top (H_0 << 32, or caller-given R << (64 -
    sr_bits) where index < 0). Up iff C < F, C the complement of the random bits over F's width
    (sr_bits, or every discarded bit), compared 32 bits at a time from the top. Only the lanes
    whose chunks all tie go on: with the stream's next word H_j << 32 (drawn for those lanes
    only), or the given word's next 32 bits.
    """
    carry = None
    if sr_bits > 0:
        variant, sr_bits = sr_bits >> core.SR_VARIANT_SHIFT, sr_bits & core.SR_BITS_MASK
        width = torch.full_like(shift, sr_bits)
        drop = (shift - sr_bits).clamp(min=0)
        big_f = torch.where(drop < 63, rem >> drop.clamp(max=62), torch.zeros_like(rem))
        if variant != core.SR_FLOOR:
            # kernels.core.sr_fraction_up: F rounded half up / to even / to odd (rem < 2^53)
            half = torch.ones_like(rem) << (drop - 1).clamp(0, 62)
            dropped = rem & ((half << 1) - 1)
            odd = (big_f & 1) == 1
            tie_up = {core.SR_HALF_UP: torch.ones_like(odd), core.SR_HALF_EVEN: odd,
                      core.SR_HALF_ODD: ~odd}[variant]
            round_f = (drop > 0) & (drop < 63) & ((dropped > half) | ((dropped == half)
                                                                       & tie_up))
            big_f = big_f + round_f.to(torch.int64)
            # F reached 2^sr_bits: up whatever R (rem < 2^53, so only for sr_bits <= 53)
            carry = (shift >= sr_bits) & ((big_f >> min(sr_bits, 62)) != 0)
        # shift < sr_bits <= 64: rem << (sr_bits - shift) < 2^64, an int64 pattern (sign bit
        # included), of which only 32-bit chunks are read below
        big_f = torch.where(shift >= sr_bits, big_f, rem << (sr_bits - shift).clamp(0, 63))
    else:
        width = shift
        big_f = rem  # < 2^53
    up = _sr_compare(big_f, width, word0, seed, index, step, tag)
    return up if carry is None else up | carry


def _sr_compare(big_f: torch.Tensor, width: torch.Tensor, word0: torch.Tensor, seed: int,
                index: torch.Tensor, step: int, tag: int) -> torch.Tensor:
    """C < F over each lane's `width` bits, 32 at a time from the top (kernels.core.sr_compare):
    the loop of _sr_up."""
    up = torch.zeros_like(big_f, dtype=torch.bool)
    lanes = torch.arange(big_f.numel(), device=big_f.device)  # the lanes still tied, in `up`
    word = word0
    j = 0
    while True:
        low = width - 32 * (j + 1)  # lowest bit of this chunk within F's width
        c_chunk = _shr(~word, 32)  # the complement of the chunk's 32 random bits
        # low >= 0: F's bits low .. low + 31 (low <= 32 when big_f has its sign bit set, so the
        # arithmetic shift's copies of it are masked off)
        f_full = torch.where(low < 63, big_f >> low.clamp(0, 62), torch.zeros_like(big_f)) & _M32
        take = (width - 32 * j).clamp(1, 32)  # low < 0: the 1..31 bits left
        c_chunk = torch.where(low >= 0, c_chunk, c_chunk >> (32 - take))
        f_chunk = torch.where(low >= 0, f_full, big_f & ((torch.ones_like(big_f) << take) - 1))
        up[lanes] = c_chunk < f_chunk  # both in 0 .. 2^32 - 1
        tied = (c_chunk == f_chunk) & (low > 0)
        if not bool(tied.any()):
            return up
        keep = tied.nonzero().squeeze(-1)
        lanes, width, big_f = lanes[keep], width[keep], big_f[keep]
        index, word0 = index[keep], word0[keep]
        j += 1
        drawn = _words_at(index.clamp(min=0), seed, j, step, tag) << 32
        word = torch.where(index < 0, word0 << 32, drawn)


def _round_magnitude(sig, shift, negative, mode, sr_bits, word0, seed, index, stream=(0, 0)):
    """refsim.kernels.core.round_magnitude on tensors: (n, inexact)."""
    left = (-shift).clamp(0, 62)
    s = shift.clamp(0, 62)
    exact_n = torch.where(-shift < 63, sig << left, torch.zeros_like(sig))
    n = sig >> s
    rem = sig & ((torch.ones_like(sig) << s) - 1)
    # For shift >= 63 (sig < 2^53) this gives n = 0 and rem = sig, and half = 2^61 > rem stands
    # in for 2^(shift-1): the same decisions as the exact half.
    half = torch.ones_like(sig) << (s - 1).clamp(min=0)
    positive = shift > 0
    n = torch.where(positive, n, exact_n)
    rem = torch.where(positive, rem, torch.zeros_like(rem))
    inexact = rem != 0
    if mode == core.RNE:
        up = (rem > half) | ((rem == half) & inexact & ((n & 1) == 1))
    elif mode == core.RNA:
        up = (rem >= half) & inexact
    elif mode == core.RTZ:
        up = torch.zeros_like(inexact)
    elif mode == core.RUP:
        up = inexact & ~negative
    elif mode == core.RDN:
        up = inexact & negative
    elif mode == core.RTO:
        return n | inexact.to(torch.int64), inexact
    else:
        up = torch.zeros_like(inexact)
        if bool(inexact.any()):
            lanes = inexact.nonzero().squeeze(-1)
            up[lanes] = _sr_up(rem[lanes], shift[lanes], sr_bits, word0[lanes], seed,
                               index[lanes], *stream)
    return n + up.to(torch.int64), inexact


def _round_float(carrier, negative, sig, lsb, top, fmt, params, mode, ovf, sr_bits, word0,
                 seed, index, stream=(0, 0)):
    """Finite nonzero inputs of a float format: refsim.kernels.core.quantize_bits's float branch."""
    man, emin, emax = fmt.man_bits, params[core.P_EMIN], params[core.P_EMAX]
    q_small = emin - man if fmt.subnormals else emin
    q = torch.where(top >= emin, top - man, torch.full_like(top, q_small))
    # refsim.kernels.core.quantize_bits_family's bump: P3109 precision 1 breaks rne's ties and
    # rto by the parity of 2^q's code (its exponent field q - emin + 1)
    bump = torch.zeros_like(sig)
    if (man == 0 and params[core.P_SPECIALS] >= core.SPECIALS_P3109_FINITE
            and mode in (core.RNE, core.RTO)):
        bump = ((top >= emin) & ((q - emin) % 2 == 1)).to(torch.int64)
        sig = sig + (bump << (q - lsb).clamp(0, 62))
    n, _ = _round_magnitude(sig, q - lsb, negative, mode, sr_bits, word0, seed, index, stream)
    n = n - bump
    zero = n == 0
    if fmt.zero:
        zero_bits = _zero_bits(carrier, negative, fmt)
    else:  # no zero: underflow is raised to the smallest value 2^emin
        n = torch.where(zero, torch.ones_like(n), n)
        q = torch.where(zero, torch.full_like(q, emin), q)
        zero = torch.zeros_like(zero)
        zero_bits = n
    carry = (n >> (man + 1)) != 0
    n = n >> carry.to(torch.int64)
    q = q + carry.to(torch.int64)
    # refsim.kernels.core.exceeds_max: compare binades, then significands at max's quantum.
    length = bit_length(n)
    top_n = q + length - 1
    aligned = n << (man + 1 - length).clamp(min=0)
    exceeds = ~zero & ((top_n > emax) | ((top_n == emax) & (aligned > params[core.P_MAX_N])))
    result = carrier.encode(negative, n, q, length)
    result = torch.where(zero, zero_bits, result)
    result = torch.where(exceeds, _overflow_bits(carrier, negative, fmt, params, mode, ovf), result)
    if not fmt.signed:
        result = torch.where(negative, torch.full_like(result, _unsigned_negative(carrier, fmt)),
                             result)
    return result


def _unsigned_negative(carrier, fmt) -> int:
    """refsim.kernels.core.unsigned_negative: NaN, or +0 in a P3109 format."""
    return 0 if fmt.p3109 else carrier.nan


def _zero_bits(carrier, negative, fmt):
    """refsim.kernels.core.zero_result: the format's zero for the sign of each input (NaN without a
    zero)."""
    if isinstance(fmt, FloatFormat) and not fmt.zero:
        return torch.full_like(negative, carrier.nan, dtype=torch.int64)
    keeps_sign = isinstance(fmt, FloatFormat) and fmt.has_negative_zero
    if not keeps_sign:
        return torch.zeros_like(negative, dtype=torch.int64)
    return negative.to(torch.int64) * _signed(carrier.sign)


def _overflow_bits(carrier, negative, fmt, params, mode, ovf):
    """refsim.kernels.core.overflow_result per sign: +-max, +-Inf or NaN."""
    values = []
    for neg in (False, True):
        if core.overflow_to_max(mode, neg, ovf, params[core.P_SPECIALS]):
            bits = carrier.encode_const(neg, params[core.P_MAX_N],
                                        params[core.P_EMAX] - fmt.man_bits)
        elif fmt.has_inf:
            bits = _signed(int(core.carrier_inf(neg, carrier.man, carrier.bias)))
        else:
            bits = carrier.nan
        values.append(bits)
    pos = torch.full_like(negative, values[0], dtype=torch.int64)
    return torch.where(negative, torch.full_like(pos, values[1]), pos)


def _fixed_limit(carrier, negative, fmt):
    """refsim.kernels.core._fixed_limit per sign."""
    k_neg = (1 << (fmt.bits - 1)) if fmt.signed else 0
    pos = carrier.encode_const(False, fmt.k_max, -fmt.frac_bits)
    neg = carrier.encode_const(k_neg != 0, k_neg, -fmt.frac_bits)
    return torch.where(negative, torch.full_like(negative, neg, dtype=torch.int64),
                       torch.full_like(negative, pos, dtype=torch.int64))


def _round_fixed(carrier, negative, sig, lsb, top, fmt, mode, ovf, sr_bits, word0, seed, index,
                 stream=(0, 0)):
    """Finite nonzero inputs of a fixed-point format: refsim.kernels.core._round_fixed."""
    width = fmt.bits
    q = -fmt.frac_bits
    shift = q - lsb
    huge = top - q >= width + 1
    q_t = torch.full_like(sig, q)
    limit_bits = _fixed_limit(carrier, negative, fmt)
    if ovf != core.OVF_WRAP:
        n, _ = _round_magnitude(sig, shift, negative, mode, sr_bits, word0, seed, index, stream)
        if fmt.signed:
            limit = torch.where(negative, torch.full_like(n, 1 << (width - 1)),
                                torch.full_like(n, fmt.k_max))
        else:
            limit = torch.where(negative, torch.zeros_like(n), torch.full_like(n, fmt.k_max))
        value = carrier.encode(negative & (n != 0), n, q_t)
        return torch.where(huge | (n > limit), limit_bits, value)
    n, _ = _round_magnitude(sig, shift, negative, mode, sr_bits, word0, seed, index, stream)
    left = -shift
    shifted = torch.where(left < 64, sig << left.clamp(0, 63), torch.zeros_like(sig))
    n_mod = torch.where(huge & (shift <= 0), shifted, n)
    k_mod = torch.where(negative, -n_mod, n_mod) & ((1 << width) - 1)
    if fmt.signed:
        wrapped = (k_mod >> (width - 1)) != 0
        magnitude = torch.where(wrapped, (1 << width) - k_mod, k_mod)
        return carrier.encode(wrapped, magnitude, q_t)
    return carrier.encode(torch.zeros_like(negative), k_mod, q_t)


def quantize_bits(bits: torch.Tensor, carrier: Carrier, fmt: Format, params, mode: int,
                  ovf: int, sr_bits: int, seed: int, step: int = 0, tag: int = 0,
                  index: torch.Tensor | None = None,
                  given: torch.Tensor | None = None) -> torch.Tensor:
    """refsim.kernels.core.quantize_bits for a flat int64 tensor of carrier patterns (all lanes).

    step and tag select the random family (counter words 2 and 3): 0, 0 for refsim.quantize,
    kernels.accum_core's (step, tag) for the roundings of an accumulation. given: caller-given
    words (_given_words) of every element, read instead of the stream (at `index` when given).
    """
    stream = (step, tag)
    negative = ((bits >> carrier.sign_shift) & 1) == 1
    a = bits & carrier.abs_mask
    efield = a >> carrier.man
    mfield = a & carrier.mant
    is_special = efield == carrier.efield_max
    is_nan = is_special & (mfield != 0)
    normal = efield > 0
    sig = torch.where(normal, mfield | (1 << carrier.man), mfield)
    lsb = torch.where(normal, efield, torch.ones_like(efield)) - carrier.bias - carrier.man
    top = torch.where(normal, efield - carrier.bias, lsb + bit_length(mfield) - 1)
    # word0: each element's first random bits from the top (kernels.core.quantize_bits); index
    # < 0 marks caller-given bits, from which nothing is drawn
    if mode != core.SR:
        word0 = index = torch.zeros_like(bits)  # not read
    elif given is not None:
        word0 = given if index is None else given[index]
        index = torch.full_like(bits, -1)
    elif index is None:
        word0 = random_words(seed, bits.numel(), 0, bits.device, step, tag) << 32
        index = torch.arange(bits.numel(), dtype=torch.int64, device=bits.device)
    else:
        word0 = _words_at(index, seed, 0, step, tag) << 32
    # Specials and zeros get a harmless finite stand-in (1.0) for the arithmetic below; their
    # results are selected afterwards.
    stand_in = is_special | (a == 0)
    sig = torch.where(stand_in, torch.ones_like(sig), sig)
    lsb = torch.where(stand_in, torch.zeros_like(lsb), lsb)
    top = torch.where(stand_in, torch.zeros_like(top), top)
    if isinstance(fmt, FixedFormat):
        result = _round_fixed(carrier, negative, sig, lsb, top, fmt, mode, ovf, sr_bits, word0,
                              seed, index, stream)
        if ovf == core.OVF_WRAP:
            infinite = torch.full_like(bits, carrier.nan)
        else:
            infinite = _fixed_limit(carrier, negative, fmt)
    else:
        result = _round_float(carrier, negative, sig, lsb, top, fmt, params, mode, ovf, sr_bits,
                              word0, seed, index, stream)
        if fmt.has_inf and ovf != core.OVF_SATFINITE:
            infinite = torch.where(negative, torch.full_like(bits, _signed(carrier.inf
                                                                          | carrier.sign)),
                                   torch.full_like(bits, carrier.inf))
        else:  # an overflow (P3109's finite domain: +-max in every mode)
            infinite = _overflow_bits(carrier, negative, fmt, params, mode, ovf)
        if not fmt.signed:
            infinite = torch.where(negative, torch.full_like(bits, _unsigned_negative(carrier,
                                                                                      fmt)),
                                   infinite)
    result = torch.where(a == 0, _zero_bits(carrier, negative, fmt), result)
    result = torch.where(is_special, infinite, result)
    return torch.where(is_nan, bits, result)


# ---- the fast path -------------------------------------------------------------------------------
ROUTES = ("auto", "numba", "torch", "torch-general")
"""How quantize computes (the same bits on every route):
  - auto: CPU tensors through refsim's Numba kernels, other devices through torch ops;
  - numba: refsim's Numba kernels on a zero-copy NumPy view (CPU tensors only; about 10-40x
    faster than eager torch ops, which make one pass over memory per op);
  - torch: the torch-op implementation below, fast path first (what every other device runs);
  - torch-general: torch ops, the general path on every lane (what the fast path is checked
    against)."""


def _widen(raw: torch.Tensor) -> torch.Tensor:
    """Carrier patterns (int32 or int64) as zero-extended int64."""
    if raw.dtype == torch.int32:
        return raw.to(torch.int64) & 0xFFFFFFFF
    return raw


def _to_carrier(bits: torch.Tensor, itype: torch.dtype) -> torch.Tensor:
    """Zero-extended int64 patterns back to the carrier's integer type."""
    if itype == torch.int32:
        return torch.where(bits >= 1 << 31, bits - (1 << 32), bits).to(torch.int32)
    return bits


def _fast_constants(carrier: Carrier, fmt: FloatFormat, params, mode: int, ovf: int,
                    itype: torch.dtype) -> tuple[int, ...]:
    """(d, a_lo, inf, abs_mask, sign_bit, max_bits, ovf_pos, ovf_neg) as the carrier's signed
    integers: the constants of _fast_kernel."""
    def narrow(v: int) -> int:
        return v - (1 << 32) if itype == torch.int32 and v >= 1 << 31 else v

    e_lo = max(params[core.P_EMIN] + carrier.bias, 1)  # carrier exponent field of 2^emin
    max_bits = carrier.encode_const(False, params[core.P_MAX_N],
                                    params[core.P_EMAX] - fmt.man_bits)
    over = _overflow_bits(carrier, torch.tensor([False, True]), fmt, params, mode, ovf).tolist()
    sign_bit = _signed(carrier.sign) if itype == torch.int64 else -(1 << 31)
    return (carrier.man - fmt.man_bits, e_lo << carrier.man, carrier.inf, carrier.abs_mask,
            sign_bit, max_bits, narrow(over[0]), narrow(over[1]))


def _fast_kernel(raw: torch.Tensor, rand: torch.Tensor, rand_bits: int, width: int, mode: int,
                 d: int, a_lo: int, inf: int, abs_mask: int, sign_bit: int, max_bits: int,
                 ovf_pos: int, ovf_neg: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Round the lanes a_lo <= |x| < inf in the carrier's width; returns (result, lane mask).

    There the quantum lies a constant d = c_man - man bits above the carrier's last bit, so
    rounding is "add an increment below the kept bits, clear them": a carry out of the
    significand runs into the exponent field by itself, and nothing underflows. Tensor ops
    only (no calls into Numba), so torch.compile can fuse it into one loop.

    SR (docs/rounding.md): with F the `width` = min(d, sr_bits) top discarded bits and R the
    top `width` random bits of the element, round up iff R + F >= 2^width:
    refsim.kernels.core.sr_round_up for a fraction of d <= 52 bits. `rand` holds the random
    bits from the top of a `rand_bits`-bit word (int64 patterns): 64 for caller-given words
    R << (64 - sr_bits), 32 for the stream's H_0. With H_0 alone and width > 32, R is H_0
    followed by zeros, which decides exactly unless the top 32 bits tie (H_0 + F's top 32 bits
    = 2^32 - 1, where H_1 decides): those lanes are left out of the lane mask, for the general
    path to draw H_1.
    """
    a = raw & abs_mask
    lane = (a >= a_lo) & (a < inf)
    negative = raw < 0
    mask = (1 << d) - 1
    if mode == core.RTO:
        magnitude = (a & ~mask) | (((a & mask) != 0).to(raw.dtype) << d)
    else:
        if mode == core.RNE:
            inc = ((a >> d) & 1) + (mask >> 1) if d > 0 else torch.zeros_like(a)
        elif mode == core.RNA:
            inc = torch.full_like(a, (1 << d) >> 1)
        elif mode == core.RTZ:
            inc = torch.zeros_like(a)
        elif mode == core.RUP:
            inc = torch.where(negative, 0, mask).to(raw.dtype)
        elif mode == core.RDN:
            inc = torch.where(negative, mask, 0).to(raw.dtype)
        else:  # SR
            frac = ((a & mask) >> (d - width)).to(torch.int64)
            if width <= rand_bits:
                top = ((rand >> (rand_bits - width)) & ((1 << width) - 1) if width
                       else torch.zeros_like(rand))
            else:  # rand_bits = 32 < width <= 52: H_1's bits as zeros, their ties left out
                top = rand << (width - rand_bits)
                lane = lane & ((rand + (frac >> (width - rand_bits))) != _M32)
            up = top > ((1 << width) - 1) - frac
            inc = torch.where(up, 1 << d, 0).to(raw.dtype)
        magnitude = (a + inc) & ~mask
    over = torch.where(negative, ovf_neg, ovf_pos).to(raw.dtype)
    return torch.where(magnitude > max_bits, over, magnitude | (raw & sign_bit)), lane


_KERNEL = _fast_kernel


def use_compiled(enabled: bool = True) -> None:
    """Run the fast path through torch.compile (fused into one loop; needs a C++ compiler on
    CPU; the first call per mode and size compiles, about a minute) or eagerly (default)."""
    global _KERNEL
    _KERNEL = torch.compile(_fast_kernel, dynamic=True) if enabled else _fast_kernel


def _fast_path(raw: torch.Tensor, carrier: Carrier, fmt: FloatFormat, params, mode: int,
               ovf: int, sr_bits: int = 0, seed: int = 0,
               given: torch.Tensor | None = None) -> torch.Tensor:
    """_fast_kernel where it applies; every other lane (zeros, the format's subnormal range,
    carrier subnormals, Inf, NaN) goes through quantize_bits. given: caller-given words."""
    consts = _fast_constants(carrier, fmt, params, mode, ovf, raw.dtype)
    # With man_bits = 0 every significand n is 1, odd already: round to odd truncates there
    # (setting "n's last bit" would set the exponent field's lowest bit instead).
    kernel_mode = core.RTZ if mode == core.RTO and fmt.man_bits == 0 else mode
    d = consts[0]
    width = min(d, sr_bits) if sr_bits else d
    rand_bits = 64 if given is not None else 32
    if mode == core.SR:
        rand = given if given is not None else random_words(seed, raw.numel(), 0, raw.device)
    else:  # not read
        rand = torch.zeros(1, dtype=torch.int64, device=raw.device).expand(raw.shape)
    result, lane = _KERNEL(raw, rand, rand_bits, width, kernel_mode, *consts)
    if not bool(lane.all()):
        rest = (~lane).nonzero().squeeze(-1)
        result[rest] = _to_carrier(quantize_bits(_widen(raw[rest]), carrier, fmt, params, mode,
                                                 ovf, sr_bits, seed, index=rest, given=given),
                                   raw.dtype)
    return result


_RBITS_DTYPES = {torch.uint8: "uint8", torch.uint16: "uint16", torch.uint32: "uint32",
                 torch.uint64: "uint64"}


def _check_rbits(rbits: object, x: torch.Tensor, sr_bits: int) -> torch.Tensor:
    """rbits itself if it is a torch unsigned integer tensor of x's shape on x's device, wide
    enough for sr_bits; else an error naming rbits."""
    if not isinstance(rbits, torch.Tensor):
        raise TypeError(f"rbits must be a torch tensor for a torch x; got {type(rbits).__name__}")
    name = _RBITS_DTYPES.get(rbits.dtype, str(rbits.dtype).removeprefix("torch."))
    check_rbits_array(name, tuple(rbits.shape), tuple(x.shape), sr_bits, kind="torch")
    if rbits.device != x.device:
        raise ValueError(f"rbits must be on x's device {x.device}; got {rbits.device}")
    return rbits


def _given_words(rbits: torch.Tensor, sr_bits: int) -> torch.Tensor:
    """cpu.given_word in torch: R << (64 - sr_bits), R the low sr_bits bits of each
    element, flat in C order, as int64 patterns."""
    flat = rbits.detach().contiguous().reshape(-1)
    if flat.dtype == torch.uint64:
        words = flat.view(torch.int64)  # the same 64 bits (a conversion would clamp)
    else:
        words = flat.to(torch.int64)  # zero-extended: narrower unsigned values fit
    if sr_bits == 64:
        return words
    return (words & ((1 << sr_bits) - 1)) << (64 - sr_bits)


# ---- public entry -------------------------------------------------------------------------------
def quantize(x: torch.Tensor, fmt: Format | str, rounding: str = "rne", *,
             overflow: str = "default", sr_bits: int | None = None, seed: int | None = None,
             rbits: torch.Tensor | None = None, out: torch.Tensor | None = None,
             route: str = "auto", sr_variant: str = "floor") -> torch.Tensor:
    """Round every element of the torch tensor `x` to `fmt`, bit-identical to refsim.quantize.

    Args:
        x: float32, float64 or bfloat16 tensor, any shape, strides and device.
        fmt, rounding, overflow, sr_bits, seed, sr_variant: as refsim.quantize
            (docs/rounding.md).
        rbits: as refsim.quantize: a torch uint8/16/32/64 tensor of x's shape on x's device;
            element i's random bits are the low sr_bits bits of its element i in flat C order.
        out: optional tensor of x's dtype, shape and device to write into (may be x).
        route: one of ROUTES ("auto": Numba kernels on CPU, torch ops elsewhere).

    Returns:
        A tensor of x's dtype, shape and device (out, if given). SR takes element i's random
        bits from its flat C-order index i, whatever the strides.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch tensor; got {type(x).__name__}")
    if route not in ROUTES:
        raise ValueError(f"route must be one of {', '.join(ROUTES)}; got {route!r}")
    if route == "numba" and x.device.type != "cpu":
        raise ValueError(f"route='numba' needs a CPU tensor; x is on {x.device}")
    if x.dtype not in _NP_DTYPE:
        raise TypeError(f"x must have dtype torch.float32, torch.float64 or torch.bfloat16; got "
                        f"{x.dtype} (nothing is cast implicitly)")
    if rbits is not None:
        sr_bits = check_rbits_request(rounding, sr_bits, seed)
        rbits = _check_rbits(rbits, x, sr_bits)
    fmt_obj, params, mode, ovf, bits_r, seed_value = resolve(
        fmt, np.dtype(_NP_DTYPE[x.dtype]), rounding, overflow, sr_bits,
        0 if seed is None else seed)
    if x.dtype == torch.bfloat16 and not _bf16_holds(fmt_obj):
        raise ValueError(f"fmt={fmt_obj.name} does not fit in bfloat16: the result keeps the "
                         f"input's dtype, and bfloat16 cannot hold every {fmt_obj.name} value "
                         "(use float32 or float64 input)")
    variant = check_sr_variant(sr_variant, rounding, sr_bits)
    check_out(out, x, kind="tensor")
    work = x.float() if x.dtype == torch.bfloat16 else x
    if route == "numba" or (route == "auto" and x.device.type == "cpu"):
        array = work.detach().contiguous().numpy()  # shares memory with work: no copy
        r_array = None if rbits is None else rbits.detach().contiguous().numpy()
        values = torch.from_numpy(cpu_quantize.quantize(
            array, fmt_obj, rounding, overflow=overflow, sr_bits=sr_bits, seed=seed, rbits=r_array,
            sr_variant=sr_variant))
        return _finish(values.reshape(x.shape), x, out)
    c_man, c_bias, itype = _CARRIER[work.dtype]
    carrier = Carrier(c_man, c_bias)
    raw = work.detach().contiguous().reshape(-1).view(itype)
    given = None if rbits is None else _given_words(rbits, bits_r)
    # _fast_path's branch-free rounding covers signed float formats (but P3109's precision 1,
    # whose rne and rto go by the code's parity); the rest take the general one.
    # The SR variants round the fraction first: only the general path does (kernel_sr_bits).
    if (route != "torch-general" and isinstance(fmt_obj, FloatFormat) and fmt_obj.signed
            and not (fmt_obj.p3109 and fmt_obj.man_bits == 0) and not variant):
        result = _fast_path(raw, carrier, fmt_obj, params, mode, ovf, bits_r, seed_value, given)
    else:
        result = _to_carrier(quantize_bits(_widen(raw), carrier, fmt_obj, params, mode, ovf,
                                           kernel_sr_bits(bits_r, variant), seed_value,
                                           given=given), itype)
    return _finish(result.view(work.dtype).reshape(x.shape), x, out)


def _finish(values: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """The rounded values in x's dtype (bfloat16 narrowed back, exactly), written to out if
    given."""
    if x.dtype == torch.bfloat16:
        values = values.to(torch.bfloat16)
    if out is None:
        return values
    out.copy_(values)
    return out
