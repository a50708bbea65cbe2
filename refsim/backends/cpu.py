"""CPU kernels: Numba njit(parallel=True) loops around the scalar core.

Parallel over blocks of four elements: a block shares one Philox call (four 64-bit words), and
element i always takes word i % 4 of block i // 4, so the bits never depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from refsim import core
from refsim.rng import stream_block


@njit(parallel=True, cache=True)
def quantize_flat(src, dst, c_man, c_bias, params, mode, overflow, sr_bits, seed):
    """dst[i] = round(src[i]) for 1-D carrier bit arrays (uint32 or uint64), C order."""
    size = src.size
    n_blocks = (size + 3) // 4
    zero = np.uint64(0)
    for block in prange(n_blocks):
        w0 = zero
        w1 = zero
        w2 = zero
        w3 = zero
        if mode == core.SR:
            w0, w1, w2, w3 = stream_block(seed, block, 0)
        base = block * 4
        for lane in range(min(4, size - base)):
            i = base + lane
            word = w0 if lane == 0 else (w1 if lane == 1 else (w2 if lane == 2 else w3))
            out = core.quantize_bits(np.uint64(src[i]), c_man, c_bias, params, mode, overflow,
                                     sr_bits, word, seed, np.int64(i))
            dst[i] = out
