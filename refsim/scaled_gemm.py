"""Block-scaled matrix products as scaled GEMM kernels compute them: the products are taken on the
element values, the block scales join when a chunk of K is promoted, the tensor scales in the
epilogue.

refsim.matmul with a block-format Cast multiplies the dequantized values (element x scale): that is
what a tensor core with block scales inside the MMA computes (MX on Blackwell), and it is exact
whenever element x scale is. Fine-grained scaling kernels in the style of DeepSeek-V3's FP8 GEMM
(DeepGEMM) do something else: the tensor core sums the products of the *elements* of one K-block
(128 products, in its own accumulator), and the CUDA cores then multiply that partial sum by the two
blocks' scales and add it into an fp32 accumulator ("promotion"). With fp32 scales the two differ
in their last bits, which is what `scaled_matmul` models.

Semantics of scaled_matmul(a, b, spec, c): D (..., M, N)
  - spec.a, spec.b: Casts to block formats whose blocks along K have the same length L (a's along
    its last axis, b's along its axis -2; 1-D groups or 2-D tiles), or element formats / None
    (scale 1). The Casts run as refsim.blocks.quantize_blocks / refsim.quantize with the keys of
    refsim.matmul (a: seed, b: seed + 1), so the element codes are the ones matmul would use.
  - Per-tensor scales (NVFP4's fp32 tensor scale) never enter the products: the GEMM runs on
    element x block scale, and the epilogue multiplies the result by alpha = fl32(ta * tb), one
    rounding to the result format (cuBLAS's alpha).
  - Scales at promotion: when spec.acc has order chunked or multiterm with chunk == L, chunk j of
    K (products j*L .. j*L + L - 1) is summed on the ELEMENT values by spec.acc's inner
    accumulation from +0 (group, width, ... as declared; the chunk's own running sum), giving
    P_j in spec.acc.fmt; then S_j = fl_O(sa_j * sb_j) (one rounding of the exact product of the
    two block scales to the outer format O = spec.acc.outer_spec.fmt, rne) and
    D = O-sequential sum over j of S_j * P_j with each step one fused multiply-add
    (acc = round_O(acc + S_j * P_j), the exact product, one rounding: nvcc contracts the
    promotion's `acc += s * p` to an FMA), starting from C when there is no tensor scale (else
    from -0/+0 as refsim.matmul starts).
  - Otherwise the block scales are folded into the values (element x scale) and the product is
    refsim.matmul's (with C as its initial value when there is no tensor scale).
  - Where C enters: D = A·B + C with C unscaled, as cuBLAS's alpha·(A·B) + beta·C with beta = 1.
    Without a tensor scale (alpha = 1) C is the initial value of the accumulation as in
    refsim.matmul (the fold path: as spec.acc's c_entry says; the promotion path: the outer
    accumulator's start, since the chunk sums are in element units). With one, the epilogue
    computes round_R(alpha * P + C), one rounding of the exact value (an FMA) to the result
    format R, where P is the accumulated A·B.
  - spec.transform (a random Hadamard transform along K) runs first, as in refsim.matmul.
  - spec.out then rounds each result exactly as refsim.matmul's output Cast does (its own
    random words, family OUT, keyed by seed and the flat output index).
  - Inputs are checked as refsim.matmul checks them, before any work: arrays, K, batch
    dimensions, C's type, dtype and shape. K = 0 gives round(C) (or +0) as matmul does.
Stochastic rounding of the accumulation is not taken here (its stream is defined per output and
step of one matmul call; a chunked re-run would key it differently): ValueError.
"""

from __future__ import annotations

import numpy as np

from refsim.accumulate import matmul
from refsim.backends.kernel_args import (
    EXACT_PRODUCT_BITS,
    batch_shape,
    initial_values,
    max_significant_bits,
    result_format,
)
from refsim.blocks import quantize_blocks
from refsim.formats.block_format import BlockFormat
from refsim.params import check_array, check_seed
from refsim.quantize import quantize
from refsim.specs import AccumSpec, Cast, GemmSpec

__all__ = ["check_scaled_spec", "scaled_matmul"]

_UINT64_MAX = (1 << 64) - 1


class _Operand:
    """One operand quantized: element values (float64), per-element block scale (float64), the
    tensor scale, and the block extent along K (None: not a block format)."""

    def __init__(self, x: np.ndarray, cast: Cast | None, seed: int, operand: str) -> None:
        k_axis = x.ndim - 1 if operand == "a" else x.ndim - 2
        self.k_len: int | None = None
        self.tensor_scale = 1.0
        fmt = None if cast is None else cast.fmt
        if not isinstance(fmt, BlockFormat):
            values = x if cast is None or fmt is None else quantize(
                x, fmt, cast.rounding, overflow=cast.overflow, sr_bits=cast.sr_bits, seed=seed)
            self.elements = np.asarray(values, np.float64)
            self.scales = np.ones(x.shape, np.float64)
            return
        assert cast is not None
        q = quantize_blocks(np.asarray(x, np.float64), fmt, cast.rounding, axis=k_axis,
                            sr_bits=cast.sr_bits, seed=seed, return_codes=True)
        self.elements = np.asarray(fmt.element.decode(q.codes), np.float64)
        other = x.ndim - 2 if operand == "a" else x.ndim - 1
        extents = {k_axis: fmt.block_size, other: fmt.block_rows}
        self.scales = _expand(np.asarray(q.scales, np.float64), x.shape, extents)
        nan = np.isnan(self.scales)  # a NaN block: NaN elements (docs/blocks.md)
        self.elements = np.where(nan, np.nan, self.elements)
        self.tensor_scale = float(q.tensor_scale)
        self.k_len = fmt.block_size


def _expand(scales: np.ndarray, shape: tuple[int, ...], extents: dict[int, int]) -> np.ndarray:
    """Per-block scales (the operand's shape with each blocked axis holding one entry per block)
    repeated back to one per element: `extents[axis]` elements per block along a blocked axis,
    the last block of an axis holding what is left."""
    out = scales
    for ax, n in enumerate(shape):
        if out.shape[ax] != n:
            out = np.repeat(out, extents[ax], axis=ax)[(slice(None),) * ax + (slice(0, n),)]
    return out


def check_scaled_spec(spec: GemmSpec) -> None:
    """A TypeError or ValueError unless scaled_matmul accepts `spec` (a GemmSpec with no 'sr'
    accumulator): refsim.nn checks plans with it when they load."""
    if not isinstance(spec, GemmSpec):
        raise TypeError(f"spec must be a GemmSpec; got {type(spec).__name__}")
    accs = [spec.acc, spec.acc.outer_spec]
    if any(acc.rounding == "sr" for acc in accs):
        raise ValueError("scaled_matmul: spec.acc must not round with 'sr' (the random words "
                         "are keyed per output and step of one matmul call); use "
                         "refsim.matmul with the scales folded into the operands")


def _inner(acc: AccumSpec) -> AccumSpec:
    """The chunk's own accumulation: acc without its promotion."""
    data = acc.to_dict()
    for key in ("chunk", "outer", "c_entry"):
        data.pop(key, None)
    if data.get("order") == "chunked":
        data["order"] = "sequential"
    return AccumSpec.from_dict(data)


def scaled_matmul(a, b, spec: GemmSpec, c=None, *, seed: int = 0) -> np.ndarray:
    """a @ b (+ C) with block scales applied as scaled GEMM kernels apply them (module docstring).

    Args:
        a: (..., M, K) float32/float64 array; b: (..., K, N); batch dimensions broadcast.
        spec: a GemmSpec whose Casts a and b are block formats (or element formats / None).
        c: None or the initial value C, a float32/float64 array that broadcasts to (..., M, N);
            it joins unscaled (module docstring, "Where C enters").
        seed: 0..2^64-1; the Casts use seed (a) and seed + 1 (b), the output Cast seed, as
            refsim.matmul.

    Returns:
        float64 array (..., M, N) holding values of the result format.
    """
    check_scaled_spec(spec)
    a = check_array(a, "a")
    b = check_array(b, "b")
    seed = check_seed(seed)
    out_shape = (*batch_shape(a.shape, b.shape), a.shape[-2], b.shape[-1])
    if c is not None:  # matmul's entry check: the type, the dtype and the shape, before any work
        initial_values(c, out_shape)
    if spec.transform is not None:  # along K on both operands, before their Casts (matmul's)
        a = spec.transform.apply(a, axis=-1)
        b = spec.transform.apply(b, axis=-2)
    qa = _Operand(a, spec.a, seed, "a")
    qb = _Operand(b, spec.b, (seed + 1) & _UINT64_MAX, "b")
    k = a.shape[-1]
    acc = spec.acc
    alpha = float(np.float32(qa.tensor_scale * qb.tensor_scale))  # ta, tb are fp32 values: the
    # product is exact in float64 and np.float32 rounds it to nearest even, once (cuBLAS's alpha)
    c_in = c if alpha == 1.0 else None  # with an epilogue, C joins there (after alpha)
    lengths = {q.k_len for q in (qa, qb) if q.k_len is not None}
    promote = (k > 0 and acc.order in ("chunked", "multiterm") and acc.chunk is not None
               and len(lengths) == 1 and acc.chunk == lengths.pop())
    if promote:
        d = _promoted(qa, qb, acc, c_in, k)
    else:
        out = spec.out if alpha == 1.0 else None  # matmul's own output rounding, same stream
        d = np.asarray(matmul(qa.elements * qa.scales, qb.elements * qb.scales,
                              GemmSpec(acc=acc, out=out), c=c_in, seed=seed), np.float64)
        if alpha == 1.0:
            return d
    if alpha == 1.0 and spec.out is None:
        return d
    return _epilogue(d, alpha, c if alpha != 1.0 else None, result_format(acc, None),
                     spec.out, seed)


def _epilogue(d: np.ndarray, alpha: float, c, fmt, out: Cast | None, seed: int) -> np.ndarray:
    """round_fmt(alpha * D + C) (one rounding of the exact value: cuBLAS's epilogue with beta = 1),
    then the output Cast, as refsim.matmul rounds its output: one (X, 1) x (1, 1) matmul whose
    single product is alpha * D (exact), with C as its initial value and spec.out as its output
    Cast under the same seed. Output i keeps its flat index, so its words are matmul's (family
    OUT, step 0, docs/accumulation.md). With alpha == 1 and no C the accumulation is the identity
    (fmt holds D)."""
    shape = d.shape
    col = np.ascontiguousarray(d).reshape(-1, 1)
    bits = max_significant_bits(col) + max_significant_bits(np.array([alpha]))
    if bits > EXACT_PRODUCT_BITS:
        raise ValueError(f"scaled_matmul: alpha * D needs {bits} significant bits, more than the "
                         f"{EXACT_PRODUCT_BITS} of an exact product; the tensor-scale epilogue "
                         f"supports result formats of at most {EXACT_PRODUCT_BITS - 24} bits of "
                         f"precision (got {fmt})")
    scale = np.array([[alpha]], np.float64)
    c_col = None if c is None else np.ascontiguousarray(
        np.broadcast_to(c, shape), np.float64).reshape(-1, 1)
    r = matmul(col, scale, GemmSpec(acc=AccumSpec(fmt, "rne"), out=out), c=c_col, seed=seed)
    return np.asarray(r, np.float64).reshape(shape)


def _promoted(qa: _Operand, qb: _Operand, acc: AccumSpec, c, k: int) -> np.ndarray:
    """The chunk partial sums on elements, then the FMA promotion with the scales."""
    chunk = int(acc.chunk)  # type: ignore[arg-type]  # promote implies a chunk
    inner = GemmSpec(acc=_inner(acc))
    outer = acc.outer_spec
    starts = range(0, k, chunk)
    partials = []
    scales = []
    for j0 in starts:
        j1 = min(j0 + chunk, k)
        partials.append(np.asarray(matmul(qa.elements[..., j0:j1], qb.elements[..., j0:j1, :],
                                          inner), np.float64))
        sa = qa.scales[..., :, j0]          # (..., M): constant over the chunk
        sb = qb.scales[..., j0, :]          # (..., N)
        scales.append(sa[..., :, None] * sb[..., None, :])  # exact: two fp32 or pow2 values
    p = np.stack(partials, axis=-1)         # (..., M, N, chunks)
    s = np.stack(np.broadcast_arrays(*scales), axis=-1)
    s = np.asarray(quantize(s, outer.fmt, "rne"), np.float64)
    p, s = np.broadcast_arrays(p, s)
    # D[m, n] = sequential FMA over the chunks: a batched dot of s and p in the outer spec.
    c3 = None if c is None else np.broadcast_to(np.asarray(c), p.shape[:-1])[..., None, None]
    d = matmul(s[..., None, :], p[..., :, None], GemmSpec(acc=outer), c=c3)
    return np.asarray(d, np.float64)[..., 0, 0]
