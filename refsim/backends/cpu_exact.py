"""The exact core on the CPU: kernels.accum_core's order functions in one parallel kernel per order.

Usage rules:
  - refsim.accumulate calls `run` for the outputs no fast route computed (every output under
    route="exact"); its arguments come from refsim.backends.kernel_args, as refsim.backends.cuda's
    do, so both backends reduce with the same arguments and give the same bits.
  - Parallel over outputs only: each output is one call of accum_core.order_<order>, so a
    result never depends on the number of threads.
  - One kernel per order, made (and compiled, then cached on disk) on first use of that order.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.core import types
from numba.extending import overload

from refsim.backends.kernel_args import events, exact_args
from refsim.backends.threads import NS_PER_EXACT_MAC, threads_for
from refsim.kernels import accum_core as ac
from refsim.specs import ORDERS, AccumSpec, Cast

__all__ = ["run"]


# The closure of _make_kernel holds the order's index only (a plain int): Numba's on-disk cache
# keys a closure by its pickled cells, and a dispatcher there would differ in every process. The
# order function itself is chosen at compile time by _order (an overload on the literal index).
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


_ORDER_FUNCTIONS = tuple(getattr(ac, "order_" + order) for order in ORDERS)


def _order(order, a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec, prod_on, pspec, mt,
           seed, index):
    """accum_core.order_<ORDERS[order]>(a, ...) for a compile-time `order`; Numba code only."""
    raise NotImplementedError("refsim.backends.cpu_exact._order runs inside Numba kernels only")


@overload(_order, prefer_literal=True)
def _order_overload(order, a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec, prod_on, pspec,
                    mt, seed, index):
    if not isinstance(order, types.IntegerLiteral):
        return None
    function = _ORDER_FUNCTIONS[order.literal_value]

    def impl(order, a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec, prod_on, pspec, mt,
             seed, index):
        return function(a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec, prod_on, pspec,
                        mt, seed, index)

    return impl


def _make_kernel(order: int):
    @njit(parallel=True, cache=True)
    def reduce_outputs(a, b, has_b, c, has_c, todo, out, counts, count_on, chunk, spec, ospec,
                       prod_on, pspec, cast_on, cspec, mt, seed):
        """The outputs whose flat indices are listed in todo (out[i] is output todo[i]) in the
        order ORDERS[order], parallel over outputs only; c[flat] holds output flat's initial
        value C (float64 bits) when has_c."""
        n_cols = b.shape[1] if has_b else 1
        for i in prange(todo.shape[0]):
            flat = todo[i]
            p, m, n = _locate(flat, a.shape[1] * n_cols, n_cols)
            cbits = c[flat] if has_c else np.uint64(0)
            bits, cnt = _order(order, a, b, has_b, p, m, n, has_c, cbits, chunk, spec, ospec,
                               prod_on, pspec, mt, seed, flat)
            _store(out, counts, count_on, i, flat, bits, cnt, cast_on, cspec, seed)

    return reduce_outputs


_KERNELS: dict[str, object] = {}


def _kernel(order: str):
    """The kernel of `order`, made on first use."""
    if order not in _KERNELS:
        _KERNELS[order] = _make_kernel(ORDERS.index(order))
    return _KERNELS[order]


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
    with threads_for(todo.size * a3.shape[2] * NS_PER_EXACT_MAC):
        _kernel(acc.order)(a_bits, b_bits, has_b, c_bits, has_c, todo, out, counts, count_on,
                            *args, np.uint64(seed))
    return out.view(np.float64), events(counts.sum(axis=0))
