"""Convolutions of any spatial rank as matrix products (im2col), for refsim.torch_emulate.

Usage rules:
  - Every function takes a `gemm(role, a, b, c)` callable that computes a @ b (+ c) for one
    role (refsim.torch_emulate runs it under the plan); the rest is data movement: padding,
    zero-stuffing, im2col windows, reshapes. No sum is taken here: every reduction of a
    convolution, forward, input gradient or weight gradient, is one product's K.
  - im2col rows hold one output position each ((N, *out) in C order), columns in (c, k1.. kd)
    order, c slowest (refsim.conv2d's and refsim.nn's order); groups are a batch of G products.
  - The input gradient (and the forward of a transposed convolution) is a direct convolution of
    the output gradient, zero-stuffed by the stride and padded by d(k-1)-p on the left, with the
    kernel flipped and its channel axes swapped: one product of K = C_out/G * prod(k) per input
    position, as implicit-GEMM dgrad kernels compute it (the stuffed zeros are terms of the sum;
    an exact zero product changes no partial sum). Weight gradients reduce over N * prod(out).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["conv_backward", "conv_forward", "conv_transpose_forward"]

Gemm = Callable[[str, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _pad(x: torch.Tensor, pads: Sequence[tuple[int, int]]) -> torch.Tensor:
    """x zero-padded (negative: cropped) by (left, right) per spatial axis."""
    if all(p == (0, 0) for p in pads):
        return x
    flat: list[int] = []
    for left, right in reversed(pads):  # F.pad takes the last axis first
        flat += [left, right]
    return F.pad(x, flat)


def _im2col(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int],
            pads: Sequence[tuple[int, int]], dilation: Sequence[int]
            ) -> tuple[torch.Tensor, list[int]]:
    """x (N, C, *S) -> rows (N * prod(out), C * prod(kernel)) and the output sizes."""
    d = len(kernel)
    x = _pad(x, pads)
    for i in range(d):  # each unfold appends one window axis at the end
        x = x.unfold(2 + i, dilation[i] * (kernel[i] - 1) + 1, stride[i])
        if dilation[i] > 1:
            x = x[..., ::dilation[i]]
    n = x.shape[0]
    out = list(x.shape[2:2 + d])
    x = x.permute(0, *range(2, 2 + d), 1, *range(2 + d, 2 + 2 * d))  # N, *out, C, *kernel
    count = 1
    for o in out:
        count *= o
    return x.reshape(n * count, -1), out


def _grouped(rows: torch.Tensor, groups: int) -> torch.Tensor:
    """(P, G*K) -> (G, P, K); unchanged (P, K) for one group."""
    if groups == 1:
        return rows
    p = rows.shape[0]
    return rows.reshape(p, groups, -1).transpose(0, 1)


def _ungrouped(y: torch.Tensor, groups: int) -> torch.Tensor:
    """(G, P, O) -> (P, G*O); unchanged (P, O) for one group."""
    if groups == 1:
        return y
    return y.transpose(0, 1).reshape(y.shape[1], -1)


def _to_nchw(y_rows: torch.Tensor, n: int, out: list[int]) -> torch.Tensor:
    """(N * prod(out), O) -> (N, O, *out), contiguous."""
    y = y_rows.reshape(n, *out, y_rows.shape[-1])
    return y.permute(0, len(out) + 1, *range(1, len(out) + 1)).contiguous()


def _rows_of_grad(gy: torch.Tensor) -> torch.Tensor:
    """(N, O, *out) -> (N * prod(out), O)."""
    d = gy.dim() - 2
    return gy.permute(0, *range(2, 2 + d), 1).reshape(-1, gy.shape[1])


def conv_forward(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                 stride: Sequence[int], pads: Sequence[tuple[int, int]],
                 dilation: Sequence[int], groups: int, gemm: Gemm, role: str = "forward"
                 ) -> torch.Tensor:
    """Convolution (cross-correlation) of x (N, C, *S) with w (O, C/G, *k): rows @ W^T, the bias
    as C (the gemm decides where it enters)."""
    kernel = list(w.shape[2:])
    rows, out = _im2col(x, kernel, stride, pads, dilation)
    o = w.shape[0]
    if groups == 1:
        wm = w.reshape(o, -1).t()                                   # (K, O)
        c = None if bias is None else bias
    else:
        wm = w.reshape(groups, o // groups, -1).transpose(1, 2)     # (G, K, O/G)
        c = None if bias is None else bias.reshape(groups, 1, o // groups)
    y = gemm(role, _grouped(rows, groups), wm, c)
    return _to_nchw(_ungrouped(y, groups), x.shape[0], out)


def _input_grad(gy: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                in_sizes: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], groups: int, gemm: Gemm, role: str) -> torch.Tensor:
    """The input gradient of a convolution y = conv(x, w) (w: (O, C/G, *k)) at gy (N, O, *out),
    of spatial sizes in_sizes: a direct convolution (module docstring)."""
    d = len(in_sizes)
    kernel = list(w.shape[2:])
    if any(s > 1 for s in stride):
        shape = [(n - 1) * s + 1 for n, s in zip(gy.shape[2:], stride, strict=True)]
        stuffed = gy.new_zeros((*gy.shape[:2], *shape))
        stuffed[(slice(None), slice(None), *(slice(None, None, s) for s in stride))] = gy
        gy = stuffed
    pads = []
    for i in range(d):
        left = dilation[i] * (kernel[i] - 1) - padding[i]
        pads.append((left, in_sizes[i] - gy.shape[2 + i] - left + dilation[i] * (kernel[i] - 1)))
    o, cg = w.shape[:2]
    # wf[g*cg + c, o', j] = w[g*og + o', c, k-1-j]: per group, channels swapped, kernel flipped
    wf = w.flip(list(range(2, 2 + d))).reshape(groups, o // groups, cg, *kernel)
    wf = wf.transpose(1, 2).reshape(groups * cg, o // groups, *kernel)
    return conv_forward(gy, wf, bias, [1] * d, pads, dilation, groups, gemm, role)


def conv_transpose_forward(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                           stride: Sequence[int], padding: Sequence[int],
                           output_padding: Sequence[int], dilation: Sequence[int], groups: int,
                           gemm: Gemm) -> torch.Tensor:
    """Transposed convolution of x (N, C, *S) with w (C, O/G, *k): the input gradient of the
    convolution whose weight is w, at x."""
    kernel = list(w.shape[2:])
    sizes = [(n - 1) * s - 2 * p + dl * (k - 1) + op + 1 for n, s, p, dl, k, op in
             zip(x.shape[2:], stride, padding, dilation, kernel, output_padding, strict=True)]
    return _input_grad(x, w, bias, sizes, stride, padding, dilation, groups, gemm, "forward")


def _weight_grad(x: torch.Tensor, gy: torch.Tensor, kernel: Sequence[int],
                 stride: Sequence[int], pads: Sequence[tuple[int, int]],
                 dilation: Sequence[int], groups: int, gemm: Gemm) -> torch.Tensor:
    """dW (O, C/G, *k) of y = conv(x, w) at gy: rows(x)^T @ gy_rows, K = N * prod(out)."""
    rows, _ = _im2col(x, kernel, stride, pads, dilation)
    g_rows = _rows_of_grad(gy)
    o = gy.shape[1]
    if groups == 1:
        dw = gemm("backward-weight", rows.t(), g_rows, None)        # (K, O)
        return dw.t().reshape(o, -1, *kernel).contiguous()
    a = _grouped(rows, groups).transpose(1, 2)                      # (G, K, P)
    b = _grouped(g_rows, groups)                                    # (G, P, O/G)
    dw = gemm("backward-weight", a, b, None)                        # (G, K, O/G)
    return dw.transpose(1, 2).reshape(o, -1, *kernel).contiguous()


def conv_backward(gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, stride: Sequence[int],
                  padding: Sequence[int], dilation: Sequence[int], transposed: bool,
                  output_padding: Sequence[int], groups: int, mask: Sequence[bool], gemm: Gemm
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """aten.convolution_backward: (grad_input, grad_weight, grad_bias) as `mask` asks. The bias
    gradient is a plain torch sum (not a product)."""
    d = x.dim() - 2
    kernel = list(w.shape[2:])
    sym = [(p, p) for p in padding]
    gx = gw = gb = None
    if not transposed:
        if mask[0]:
            gx = _input_grad(gy, w, None, list(x.shape[2:]), stride, padding, dilation, groups,
                             gemm, "backward-input")
        if mask[1]:
            gw = _weight_grad(x, gy, kernel, stride, sym, dilation, groups, gemm)
    else:
        # y = convT(x, w) is conv(z, wf) with z = x stuffed and padded, wf = w flipped and
        # swapped (_input_grad): dx is the plain convolution of gy with w; dw comes from
        # d(wf) = rows(z)^T gy, flipped and swapped back.
        if mask[0]:
            gx = conv_forward(gy, w, None, stride, sym, dilation, groups, gemm,
                              "backward-input")
        if mask[1]:
            z = x
            if any(s > 1 for s in stride):
                shape = [(n - 1) * s + 1 for n, s in zip(x.shape[2:], stride, strict=True)]
                z = x.new_zeros((*x.shape[:2], *shape))
                z[(slice(None), slice(None), *(slice(None, None, s) for s in stride))] = x
            pads = []
            for i in range(d):
                left = dilation[i] * (kernel[i] - 1) - padding[i]
                pads.append((left, gy.shape[2 + i] - z.shape[2 + i] - left
                             + dilation[i] * (kernel[i] - 1)))
            dwf = _weight_grad(z, gy, kernel, [1] * d, pads, dilation, groups, gemm)
            c, og = w.shape[:2]
            dw = dwf.reshape(groups, og, c // groups, *kernel).transpose(1, 2)
            gw = dw.reshape(c, og, *kernel).flip(list(range(2, 2 + d))).contiguous()
    if mask[2]:
        gb = gy.sum(dim=[0, *range(2, 2 + d)])
    return gx, gw, gb
