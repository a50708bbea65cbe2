"""The CPU host launch of quantize: checks, carrier views, the kernel call, `out`.

refsim.quantize (the public dispatcher) sends NumPy arrays here, and so does the torch backend
for CPU tensors (through a zero-copy view); the kernels themselves are refsim.backends.cpu.
"""

from __future__ import annotations

import numpy as np

from refsim.backends import cpu
from refsim.backends.threads import NS_PER_QUANTIZE, threads_for
from refsim.formats import Format
from refsim.formats.policy import check_rbits_array, check_rbits_request, check_sr_variant
from refsim.kernels import lane
from refsim.params import CARRIERS, check_array, check_out, kernel_sr_bits, readonly, resolve

_NO_WORDS = np.empty(0, np.uint8)  # the kernels' `given` argument when the stream is used


def quantize(x: np.ndarray, fmt: Format | str, rounding: str = "rne", *,
             overflow: str = "default", sr_bits: int | None = None, seed: int | None = None,
             rbits: np.ndarray | None = None, out: np.ndarray | None = None,
             sr_variant: str = "floor") -> np.ndarray:
    """refsim.quantize for a NumPy float32/float64 array (the arguments are refsim.quantize's)."""
    x = check_array(x)
    given = _NO_WORDS
    if rbits is not None:
        sr_bits = check_rbits_request(rounding, sr_bits, seed)
        if not isinstance(rbits, np.ndarray) or isinstance(rbits, (np.ma.MaskedArray,
                                                                   np.matrix)):
            raise TypeError(f"rbits must be a plain NumPy array for a NumPy x; got "
                            f"{type(rbits).__name__}")
        check_rbits_array(rbits.dtype, rbits.shape, x.shape, sr_bits)
    _, params, mode, ovf, bits, seed_value = resolve(fmt, x.dtype, rounding, overflow, sr_bits,
                                                     0 if seed is None else seed)
    variant = check_sr_variant(sr_variant, rounding, sr_bits)
    out = check_out(out, x)
    given_width = 1
    if rbits is not None:
        # The kernels read rbits' own bytes (cpu.given_word): no words built here, so no
        # temporaries of 8 bytes per element (two of them cost 3-8 ns per element in page faults
        # once the allocator had returned its heap top to the system).
        words = np.ascontiguousarray(rbits).reshape(-1)
        if not words.dtype.isnative:  # a byte-swapped dtype has the same name (uint16, ...)
            words = words.astype(words.dtype.newbyteorder("="))
        given, given_width = words.view(np.uint8), words.itemsize
    c_man, c_bias, utype = CARRIERS[x.dtype]
    src = np.ascontiguousarray(x).reshape(-1).view(utype)
    if out is not None and out.flags.c_contiguous and not np.shares_memory(out, x):
        dst_array = out
    else:
        dst_array = np.empty(x.shape, x.dtype)
    dst = dst_array.reshape(-1).view(utype)
    fast = lane.fast_constants(params, c_man, c_bias, mode, ovf)
    if variant:  # the lanes add the random bits to floor(f 2^N): the variants take the core
        fast = tuple(type(v)(0) for v in fast)
    with threads_for(src.size * NS_PER_QUANTIZE):
        cpu.quantize_flat(mode, readonly(src), dst, c_man, c_bias, params, fast, ovf,
                          kernel_sr_bits(bits, variant), np.uint64(seed_value), readonly(given),
                          given_width)
    if out is None:
        return dst_array
    if dst_array is not out:
        out[...] = dst_array
    return out
