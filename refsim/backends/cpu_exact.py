"""The exact core on the CPU: kernels.accum_core's order functions in one parallel kernel.

Usage rules:
  - refsim.accumulate calls `run` for the outputs no fast route computed (every output under
    route="exact"); its arguments come from refsim.backends.kernel_args, as refsim.backends.cuda's
    do, so both backends reduce with the same arguments and give the same bits.
  - Parallel over outputs only: each output is one call of accum_core.order_<order>, so a
    result never depends on the number of threads.
  - One kernel for every order: the order is a run-time argument (one branch per output, noise
    next to the output's K steps; measured equal speed). Measured on an empty cache (2 cores):
    the merged kernel's own compile takes 12 s where each per-order kernel took 6-7 s, and the
    first call compiles all five orders' code in 65 s where the five per-order kernels took
    90 s; it is cached on disk after that. Its inputs arrive read-only (kernel_args.readonly),
    so a read-only caller (torch's tensors, a broadcast C) shares the one compiled signature
    instead of compiling the core again.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from refsim.backends.kernel_args import events, exact_args
from refsim.backends.threads import NS_PER_EXACT_MAC, threads_for
from refsim.kernels import accum_core as ac
from refsim.params import readonly
from refsim.specs import ORDERS, AccumSpec, Cast

__all__ = ["run"]

_SEQUENTIAL, _PAIRWISE, _CHUNKED, _KAHAN, _MULTITERM = (
    ORDERS.index(order) for order in ("sequential", "pairwise", "chunked", "kahan", "multiterm"))


@njit(cache=True)
def _locate(flat, per_batch, n_cols):
    p = flat // per_batch
    rest = flat - p * per_batch
    m = rest // n_cols
    return p, m, rest - m * n_cols


@njit(cache=True)
def _store(out, counts, count_on, i, flat, bits, cnt, cast_on, cspec, seed):
    """out[i] = the cast value of output `flat`; counts[i] = its events when count_on."""
    out[i] = ac.cast_output(bits, cast_on, cspec, seed, flat)
    if count_on:
        counts[i, 0] = cnt[0]
        counts[i, 1] = cnt[1]
        counts[i, 2] = cnt[2]


@njit(parallel=True, cache=True)
def _reduce_outputs(order, a, b, has_b, c, has_c, todo, out, counts, count_on, chunk, spec, ospec,
                    prod_on, pspec, cast_on, cspec, mt, seed):
    """The outputs whose flat indices are listed in todo (out[i] is output todo[i]) in the order
    ORDERS[order], parallel over outputs only; c[flat] holds output flat's initial value C
    (float64 bits) when has_c."""
    n_cols = b.shape[1] if has_b else 1
    for i in prange(todo.shape[0]):
        flat = todo[i]
        p, m, n = _locate(flat, a.shape[1] * n_cols, n_cols)
        cbits = c[flat] if has_c else np.uint64(0)
        if order == _SEQUENTIAL:
            bits, cnt = ac.order_sequential(a, b, has_b, p, m, n, has_c, cbits, chunk, spec,
                                            ospec, prod_on, pspec, mt, seed, flat)
        elif order == _PAIRWISE:
            bits, cnt = ac.order_pairwise(a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec,
                                          prod_on, pspec, mt, seed, flat)
        elif order == _CHUNKED:
            bits, cnt = ac.order_chunked(a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec,
                                         prod_on, pspec, mt, seed, flat)
        elif order == _KAHAN:
            bits, cnt = ac.order_kahan(a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec,
                                       prod_on, pspec, mt, seed, flat)
        else:
            bits, cnt = ac.order_multiterm(a, b, has_b, p, m, n, has_c, cbits, chunk, spec,
                                           ospec, prod_on, pspec, mt, seed, flat)
        _store(out, counts, count_on, i, flat, bits, cnt, cast_on, cspec, seed)


def run(a3: np.ndarray, b3: np.ndarray | None, acc: AccumSpec, cast: Cast | None, seed: int,
        count_on: bool, todo: np.ndarray, c: np.ndarray | None = None
        ) -> tuple[np.ndarray, dict[str, int]]:
    """The exact core on the outputs of a (P, M, K) with b (P, N, K) (or of a alone) whose flat
    indices are `todo`: their float64 values and the event counts summed over them (zeros
    unless count_on). c: None, or the initial values C as flat float64 bits, one per output
    (kernel_args.initial_values)."""
    args = exact_args(acc, cast)
    a_bits = np.ascontiguousarray(a3, dtype=np.float64).view(np.uint64)
    has_b = b3 is not None
    if b3 is None:
        b_bits = np.zeros((1, 1, 1), np.uint64)
    else:
        b_bits = np.ascontiguousarray(b3, dtype=np.float64).view(np.uint64)
    out = np.empty(todo.size, np.uint64)
    counts = np.zeros((todo.size if count_on else 0, 3), np.int64)
    has_c = c is not None
    c_bits = c if c is not None else np.zeros(1, np.uint64)
    todo = np.ascontiguousarray(todo, dtype=np.int64)
    with threads_for(todo.size * a3.shape[2] * NS_PER_EXACT_MAC):
        _reduce_outputs(np.int64(ORDERS.index(acc.order)), readonly(a_bits), readonly(b_bits),
                        has_b, readonly(c_bits), has_c, readonly(todo), out, counts, count_on,
                        *args, np.uint64(seed))
    return out.view(np.float64), events(counts.sum(axis=0))
