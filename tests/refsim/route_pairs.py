"""The one comparison the GEMM route tests make: a route against the exact core, same inputs."""

from __future__ import annotations

import numpy as np

from refsim.accumulate import matmul
from refsim.specs import GemmSpec


def routes(a, b, acc, cast=None, route="fast"):
    """refsim.matmul of a (P, M, K) with b (P, N, K) on `route` and on the exact core alone
    (route="exact"), both flat."""
    spec = GemmSpec(acc=acc, out=cast)
    bt = np.swapaxes(b, 1, 2)
    return (matmul(a, bt, spec, route=route).reshape(-1),
            matmul(a, bt, spec, route="exact").reshape(-1))
