"""The scalar and vector kernels, written once and compiled by Numba for every backend.

core: the integer rounding of one value (CPU njit and CUDA); accum_core: the exact accumulator
(every order, in 128-bit integer windows); rng: the counter-based Philox stream; lane: the
branch-free vector rounding of the CPU fast paths; tile: one register tile of a GEMM in LLVM
vector IR. Nothing here imports a backend or the public API.
"""
