"""emulate(): every matrix product of an ordinary torch model, forward and backward, under a
declared GemmSpec, Numerics plan or preset (docs/nn.md, "Emulating a torch model").

Usage rules:
  - `with emulate(spec_or_plan_or_preset, mode="exact") as em: loss = model(x); loss.backward()`.
    A GemmSpec gives every role that spec; a Numerics plan or a preset name (refsim.nn.numerics:
    "fp8", "mxfp8", "nvfp4", ...) gives each (product name, role) its Product.
  - Where: a TorchDispatchMode sees every aten product op after autograd, so products of the
    forward pass and the ones torch derives for the backward pass alike: mm, bmm, addmm,
    baddbmm, addbmm, mv, addmv, dot, addr (and their in-place / out= forms), convolution (1-3-D,
    transposed, groups, dilation) and convolution_backward. matmul / @, F.linear, einsum and
    tensordot reach it as what they lower to. A TorchFunctionMode replaces
    F.scaled_dot_product_attention by its two products (named `.qk`, `.av`) around an fp32
    softmax (the scale multiplies the fp32 scores, as FlashAttention-style FP8 kernels apply it).
    Global module hooks (torch.nn.modules.module) name the products. Nothing is monkey-patched.
  - Names: a product made in an nn.Linear / nn.Conv* / nn.ConvTranspose* module is named by the
    module's dotted path in the outermost module called (as named_modules() gives it), else
    `{path}.{op}{i}` (i counts that op within one call of the module) or `{path}.qk|av`; outside
    every module `{op}{i}` with i counted per step. The plan's LAST pattern binds to the last
    such layer of the outermost module (registration order).
  - Roles: a product that runs outside the backward pass is `forward`. In the backward pass the
    autograd node running it says which forward product it belongs to (its name is kept in the
    node's metadata); the operand that shares storage with the forward A (activations) makes
    it `backward-weight` (dB = A^T dC), with B `backward-input` (dA = dC B^T); when both or
    neither do, the order torch computes them in (A's gradient first). The operands are put in
    the role's order (a: dC for backward-input, A^T for backward-weight), transposing the
    product when torch computed the transposed one. A backward product of a node emulate() did
    not see forward (a custom autograd.Function, checkpointing) gets `default_role`.
  - bias / alpha / beta: with alpha = beta = 1 (nn.Linear's addmm, a conv's bias) the added
    tensor C enters in the epilogue by default (bias="epilogue": P + C in the result dtype, one
    rounding after the product, as cuBLASLt's bias epilogue and refsim.nn add it), or as
    refsim.matmul's initial accumulator (bias="accumulator": D = A B + C, C entering as spec.acc
    declares; refsim's fast routes take C only for multiterm specs, others run on its exact
    core, about 50x slower). Otherwise alpha * P + beta * input is taken in torch in the result
    dtype (beta = 0 ignores input, as torch does). With per-tensor scaling (the int8 preset)
    an accumulator C is added after the rescale, in torch.
  - Seeds: the product of (name, role) at `em.step` gets refsim.nn.gemm_seed(seed, step, name,
    role); the n-th repeat of a (name, role) in one step uses the name `name#n` (n >= 1). The
    training loop advances `em.step` (`em.next_step()`).
  - mode="exact": each product is what refsim.matmul (scaling "blocks": refsim.scaled_matmul;
    "tensor": refsim.nn's per-tensor rule) computes from the same operands, spec and seed,
    converted to the op's dtype. CPU tensors go to those functions as zero-copy NumPy views
    (refsim's Numba routes); CUDA tensors to refsim.matmul through __cuda_array_interface__
    (scaling "none"; other scalings through host copies). float16 / bfloat16 operands are
    widened exactly to float32 first. mode="fast": the same operand Casts (bit-exact), the
    product in float32 torch.matmul (refsim.torch_ops.matmul(mode="fast")).
  - A GemmSpec with a transform (NVFP4's Hadamard on backward-weight) pads K with zeros to a
    multiple of its block first, as refsim.nn does.
  - unsupported="raise": a product op that cannot be emulated (complex, integer or sparse
    operands, fused kernels such as aten._scaled_mm) raises NotImplementedError naming it;
    "native": it runs natively and is listed in em.products with native=True (as are products
    under a plan role without a GemmSpec: the `numpy` preset).
  - em.products lists every intercepted product (ProductRecord); with record=True each record
    also keeps copies of the operands, C and the result (for op-by-op checks; memory grows with
    every product).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from refsim.accumulate import matmul as refsim_matmul
from refsim.backends.threads import NS_PER_FAST_MAC, NS_PER_QUANTIZE, threads_for
from refsim.formats.block_format import BlockFormat
from refsim.nn.numerics import ROLES, Numerics, Product, gemm_seed, preset
from refsim.nn.numerics import run_product as numpy_product
from refsim.scaled_gemm import scaled_matmul
from refsim.specs import GemmSpec
from refsim.torch_emulate_conv import conv_backward, conv_forward, conv_transpose_forward
from refsim.torch_ops import cast as cast_tensor
from refsim.torch_ops import matmul as torch_matmul

__all__ = ["BIASES", "MODES", "UNSUPPORTED", "Emulation", "ProductRecord", "emulate"]

MODES = ("exact", "fast")
UNSUPPORTED = ("raise", "native")
BIASES = ("epilogue", "accumulator")
_LAYERS = (nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
           nn.ConvTranspose2d, nn.ConvTranspose3d)
# The order torch 2.13's backward formulas compute the two gradients in (observed; used only
# when storage and shapes leave the role open, as in x @ x^T).
_ORDER = {"MmBackward0": ("backward-weight", "backward-input"),
          "BmmBackward0": ("backward-weight", "backward-input"),
          "AddmmBackward0": ("backward-input", "backward-weight"),
          "BaddbmmBackward0": ("backward-input", "backward-weight")}
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

aten = torch.ops.aten
# Product ops emulate() cannot take: fused kernels whose internal numerics are their own.
_FUSED = {getattr(aten, name) for name in (
    "_scaled_mm", "_int_mm", "_addmm_activation", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention", "_flash_attention_forward",
    "_efficient_attention_forward", "_native_multi_head_attention",
    "_transformer_encoder_layer_fwd", "vdot", "_sparse_mm", "_sparse_addmm", "sparse_sampled_addmm",
    "_fused_rms_norm") if hasattr(aten, name)}


@dataclass
class ProductRecord:
    """One intercepted product.

    Attributes:
        op: the aten op ("mm", "addmm", "bmm", "convolution", "convolution_backward", ...).
        layer: the product's name ("" when emulate() could not name it).
        role: "forward", "backward-input" or "backward-weight".
        a_shape, b_shape: the operands as given to refsim ((..., M, K) and (..., K, N)).
        k: the reduction length K.
        product: the plan's Product (spec and scaling); None for a native op.
        native: True when the product ran in native torch (unsupported="native", or a plan
            role without a GemmSpec).
        seed: the product's seed; step: em.step when it ran; mode: "exact" or "fast".
        seconds: CPU time of the calling thread in the product (operand Casts, refsim,
            conversions; with more than one thread the workers are not counted).
        a, b, c, out: with record=True, copies of the operands, the initial accumulator and
            the result as refsim computed it (before the op's dtype conversion).
    """

    op: str
    layer: str
    role: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    k: int
    product: Product | None
    native: bool
    seed: int
    step: int
    mode: str
    seconds: float = 0.0
    a: torch.Tensor | None = field(default=None, repr=False)
    b: torch.Tensor | None = field(default=None, repr=False)
    c: torch.Tensor | None = field(default=None, repr=False)
    out: torch.Tensor | None = field(default=None, repr=False)

    @property
    def spec(self) -> GemmSpec | None:
        return None if self.product is None else self.product.gemm


@dataclass
class _Frame:
    module: nn.Module
    path: str
    counts: dict[str, int] = field(default_factory=dict)


def _plan(numerics: object) -> Numerics:
    if isinstance(numerics, Numerics):
        return numerics
    if isinstance(numerics, GemmSpec):
        return Numerics(Product(numerics), name=str(numerics))
    if isinstance(numerics, Product):
        return Numerics(numerics, name=str(numerics))
    if isinstance(numerics, str):
        return preset(numerics)
    raise TypeError(f"emulate: numerics must be a GemmSpec, a Product, a Numerics plan or a "
                    f"preset name; got {type(numerics).__name__}")


def _tensor_scale(x: torch.Tensor, fmt_max: float) -> float:
    """refsim.nn's per-tensor scale amax / max(format) (1 for an all-zero tensor)."""
    amax = float(x.detach().abs().max()) if x.numel() else 0.0
    return 1.0 if amax == 0.0 or not math.isfinite(amax) else amax / fmt_max


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class _AttentionMode(TorchFunctionMode):
    """Replaces F.scaled_dot_product_attention by its two products around an fp32 softmax."""

    def __init__(self, owner: Emulation) -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self.owner._attention(*args, **kwargs)
        return func(*args, **kwargs)


class Emulation(TorchDispatchMode):
    """The context emulate() returns; `products` lists what it intercepted."""

    def __init__(self, numerics: object, mode: str = "exact", record: bool = False,
                 unsupported: str = "raise", seed: int = 0, default_role: str = "forward",
                 bias: str = "epilogue") -> None:
        super().__init__()
        if bias not in BIASES:
            raise ValueError(f"emulate: bias must be one of {', '.join(BIASES)}; got {bias!r}")
        if mode not in MODES:
            raise ValueError(f"emulate: mode must be one of {', '.join(MODES)}; got {mode!r}")
        if unsupported not in UNSUPPORTED:
            raise ValueError(f"emulate: unsupported must be one of {', '.join(UNSUPPORTED)}; "
                             f"got {unsupported!r}")
        if default_role not in ROLES:
            raise ValueError(f"emulate: default_role must be one of {', '.join(ROLES)}; got "
                             f"{default_role!r}")
        if not isinstance(record, bool):
            raise TypeError(f"emulate: record must be True or False; got {record!r}")
        self.plan = _plan(numerics)
        self.mode = mode
        self.record = record
        self.unsupported = unsupported
        self.seed = int(seed)
        self.default_role = default_role
        self.bias = bias
        self.step = 0
        self.products: list[ProductRecord] = []
        self._stack: list[_Frame] = []
        self._paths: dict[int, str] = {}
        self._bound: dict[int, Numerics] = {}
        self._active = self.plan
        self._seen: dict[tuple[str, str], int] = {}
        self._seen_step = 0
        self._free: dict[str, int] = {}
        self._suffix: str | None = None
        self._pending: list[tuple[torch.Tensor, dict[str, Any]]] = []
        self._last = ("", "forward")
        self._node: Any = None
        self._node_count = 0
        self._hooks: list[Any] = []
        self._attention_mode = _AttentionMode(self)
        self._handlers: dict[Any, Callable[..., Any]] = {}
        for packet, handler in ((aten.mm, self._mm), (aten.bmm, self._mm),
                                (aten.addmm, self._addmm), (aten.baddbmm, self._addmm),
                                (aten.addbmm, self._addbmm), (aten.mv, self._mv),
                                (aten.addmv, self._addmv), (aten.dot, self._dot),
                                (aten.addr, self._addr), (aten.convolution, self._convolution),
                                (aten.convolution_backward, self._convolution_backward)):
            self._handlers[packet] = handler
        for name in ("addmm_", "baddbmm_", "addbmm_", "addmv_", "addr_"):
            self._handlers[getattr(aten, name)] = self._inplace

    # ---- context ----------------------------------------------------------------------------
    def __enter__(self) -> Emulation:
        self._hooks = [register_module_forward_pre_hook(self._pre_hook),
                       register_module_forward_hook(self._post_hook, always_call=True)]
        self._attention_mode.__enter__()
        try:
            super().__enter__()
        except BaseException:
            self._attention_mode.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._attention_mode.__exit__(*exc)
            for handle in self._hooks:
                handle.remove()
            self._hooks = []
            self._flush()
            self._stack.clear()

    def next_step(self) -> None:
        """Advance the step that keys the products' seeds."""
        self.step += 1

    # ---- names ------------------------------------------------------------------------------
    def _pre_hook(self, module: nn.Module, args: Any) -> None:
        if not self._stack:  # the outermost module: its named_modules() name everything inside
            self._paths = {id(m): name for name, m in module.named_modules()}
            key = id(module)
            if key not in self._bound:
                self._bound[key] = self.plan.bind(
                    name for name, m in module.named_modules() if isinstance(m, _LAYERS))
            self._active = self._bound[key]
        path = self._paths.get(id(module))
        if path is None:
            parent = self._stack[-1].path if self._stack else ""
            path = f"{parent}.<{type(module).__name__}>".lstrip(".")
        self._stack.append(_Frame(module, path))

    def _post_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack and self._stack[-1].module is module:
            self._stack.pop()

    def _sync_step(self) -> None:
        """Forget the repeat and op counts of the previous step."""
        if self._seen_step != self.step:
            self._seen.clear()
            self._free.clear()
            self._seen_step = self.step

    def _name(self, op: str) -> str:
        self._sync_step()
        frame = self._stack[-1] if self._stack else None
        if self._suffix is not None:
            return f"{frame.path}.{self._suffix}" if frame and frame.path else self._suffix
        if frame is not None and isinstance(frame.module, _LAYERS) and frame.path:
            return frame.path
        counts = frame.counts if frame is not None else self._free
        i = counts.get(op, 0)
        counts[op] = i + 1
        base = f"{op}{i}"
        return f"{frame.path}.{base}" if frame is not None and frame.path else base

    def _seed(self, name: str, role: str) -> int:
        self._sync_step()
        n = self._seen.get((name, role), 0)
        self._seen[(name, role)] = n + 1
        return gemm_seed(self.seed, self.step, name if n == 0 else f"{name}#{n}", role)

    # ---- dispatch ---------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._pending:
            self._flush()
        handler = self._handlers.get(func.overloadpacket)
        if handler is None:
            if func in _FUSED or func.overloadpacket in _FUSED:
                return self._unsupported(func, args, kwargs, "a fused kernel with numerics "
                                         "of its own")
            return func(*args, **kwargs)
        reason = self._cannot(args)
        if reason is not None:
            return self._unsupported(func, args, kwargs, reason)
        return handler(func, args, kwargs)

    def _cannot(self, args: Sequence[Any]) -> str | None:
        for t in args:
            if isinstance(t, torch.Tensor):
                if t.layout != torch.strided:
                    return f"a {t.layout} tensor (only dense strided tensors are emulated)"
                if t.dtype not in _FLOATS:
                    return (f"a {t.dtype} tensor (only float32, float64, float16 and bfloat16 "
                            "are emulated)")
        return None

    def _unsupported(self, func, args, kwargs, reason: str):
        name = str(func.overloadpacket.__name__)
        if self.unsupported == "raise":
            raise NotImplementedError(f"refsim emulate: aten.{name} cannot be emulated: {reason}"
                                      "; pass unsupported='native' to run it natively (it is "
                                      "then listed in em.products with native=True)")
        shapes = [tuple(t.shape) for t in args if isinstance(t, torch.Tensor)]
        self.products.append(ProductRecord(
            name, self._name(name), self._role_now(), shapes[0] if shapes else (),
            shapes[1] if len(shapes) > 1 else (), 0, None, True, 0, self.step, self.mode))
        return func(*args, **kwargs)

    def _role_now(self) -> str:
        return "forward" if torch._C._current_autograd_node() is None else self.default_role

    def _flush(self) -> None:
        """Tag the autograd nodes of the products computed since the last op (they exist only
        once the op returned) with the products' names, for their backward products."""
        for out, info in self._pending:
            node: Any = out.grad_fn  # its metadata is a dict (typed as a method)
            if node is not None:
                node.metadata["refsim"] = info
        self._pending.clear()

    # ---- one product --------------------------------------------------------------------------
    def _gemm(self, op: str, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None,
              role: str | None = None, name: str | None = None) -> torch.Tensor:
        """a @ b (+ c) under the plan: role and name from the context unless given."""
        swap = False
        if role is None:
            role, name, swap = self._context(op, a, b)
        elif name is None:
            name = self._current_name(op)
        assert name is not None
        if swap:  # torch computed the transposed product: compute the role's, transpose back
            assert c is None
            a, b = b.mT, a.mT
        out = self._compute(op, a, b, c, role, name)
        self._last = (name, role)
        return out.mT.contiguous() if swap else out

    def _tag(self, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, a_pos: int = 0
             ) -> torch.Tensor:
        """Remember a forward product's output, to name its autograd node (_flush); a_pos: the
        op's argument index of A (B follows it)."""
        name, role = self._last
        if role == "forward" and torch._C._current_autograd_node() is None:
            self._pending.append((out, {"name": name, "a": _storage(a), "b": _storage(b),
                                        "a_shape": tuple(a.shape[-2:]),
                                        "b_shape": tuple(b.shape[-2:]), "a_pos": a_pos,
                                        "b_pos": a_pos + 1}))
        return out

    def _current_name(self, op: str) -> str:
        node: Any = torch._C._current_autograd_node()
        if node is not None:
            info = node.metadata.get("refsim")
            return info["name"] if info else ""
        return self._name(op)

    def _context(self, op: str, a: torch.Tensor, b: torch.Tensor) -> tuple[str, str, bool]:
        """(role, name, swap) of a product from mm-like ops (module docstring, Roles)."""
        node: Any = torch._C._current_autograd_node()
        if node is None:
            return "forward", self._name(op), False
        info = node.metadata.get("refsim")
        if not info:
            return self.default_role, "", False
        if info.get("a") is None:
            return self.default_role, info["name"], False
        sa, sb = _storage(a), _storage(b)
        uses_a = info["a"] in (sa, sb)
        uses_b = info["b"] in (sa, sb)
        if uses_b and not uses_a:   # dA = dC B^T: B belongs second
            return "backward-input", info["name"], info["b"] == sa and info["b"] != sb
        if uses_a and not uses_b:   # dB = A^T dC: A belongs first
            return "backward-weight", info["name"], info["a"] == sb and info["a"] != sa
        # Both or neither operand shares storage with A or B (x @ x^T): the output's shape
        # tells when it matches one candidate only, else the order torch computes them in.
        m, kk = info["a_shape"]
        n = info["b_shape"][1]
        shape = (a.shape[-2], b.shape[-1])
        matches = [(r, sw) for r, sw, want in (("backward-input", False, (m, kk)),
                                                ("backward-input", True, (kk, m)),
                                                ("backward-weight", False, (kk, n)),
                                                ("backward-weight", True, (n, kk)))
                   if shape == want]
        if len(matches) == 1:
            return matches[0][0], info["name"], matches[0][1]
        role = self._by_order(node, info)
        for r, sw in matches:
            if r == role:
                return role, info["name"], sw
        return self.default_role, info["name"], False

    def _by_order(self, node: Any, info: dict[str, Any]) -> str | None:
        """The role of the current product from the order torch's backward formula computes
        the gradients in (_ORDER) and which inputs need one."""
        if node is not self._node:
            self._node, self._node_count = node, 0
        index = self._node_count
        self._node_count += 1
        order = _ORDER.get(node.name())
        if order is None:
            return None
        nexts = node.next_functions
        pos = {"backward-input": info["a_pos"], "backward-weight": info["b_pos"]}
        todo = [r for r in order if pos[r] < len(nexts) and nexts[pos[r]][0] is not None]
        return todo[index] if index < len(todo) else None

    def _compute(self, op: str, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None,
                 role: str, name: str) -> torch.Tensor:
        product = self._active.product(name, role)
        seed = self._seed(name, role)
        k = int(a.shape[-1])
        dtype = torch.promote_types(a.dtype, b.dtype)
        if product.gemm is None:  # the `numpy` preset: not simulated
            out = torch.matmul(a, b) if c is None else torch.matmul(a, b) + c
            self.products.append(ProductRecord(op, name, role, tuple(a.shape), tuple(b.shape),
                                               k, None, True, seed, self.step, self.mode))
            return out
        wide = torch.float64 if dtype == torch.float64 else torch.float32
        a, b = a.to(wide), b.to(wide)
        c = None if c is None else c.to(wide)
        if product.gemm.transform is not None and k % product.gemm.transform.block:
            pad = -k % product.gemm.transform.block  # zeros along K (module docstring)
            a = F.pad(a, (0, pad))
            b = F.pad(b, (0, 0, 0, pad))
        # Small products on one thread: a parallel launch costs more than their work
        # (refsim.backends.threads); the bits do not depend on it.
        work = (a.numel() * b.shape[-1] * NS_PER_FAST_MAC
                + (a.numel() + b.numel()) * NS_PER_QUANTIZE)
        start = time.thread_time()
        with threads_for(work):
            if self.mode == "exact":
                out = self._exact(product, a, b, c, seed)
            else:
                out = self._fast(product, a, b, c, seed)
        rec = ProductRecord(op, name, role, tuple(a.shape), tuple(b.shape), k, product, False,
                            seed, self.step, self.mode, time.thread_time() - start)
        if self.record:
            rec.a, rec.b = a.clone(), b.clone()
            rec.c = None if c is None else c.clone()
            rec.out = out.clone()
        self.products.append(rec)
        return out.to(dtype)

    def _exact(self, product: Product, a: torch.Tensor, b: torch.Tensor,
               c: torch.Tensor | None, seed: int) -> torch.Tensor:
        gemm = product.gemm
        assert gemm is not None
        if a.is_cuda and product.scaling == "none":  # refsim.backends.cuda via the interface
            result = refsim_matmul(a.detach().contiguous(), b.detach().contiguous(), gemm,
                                   c=None if c is None else c.detach().contiguous(), seed=seed)
            return torch.as_tensor(result, device=a.device)
        device = a.device
        an, bn = a.detach().cpu().numpy(), b.detach().cpu().numpy()
        cn = None if c is None else c.detach().cpu().numpy()
        if product.scaling == "none":
            r = np.asarray(refsim_matmul(an, bn, gemm, c=cn, seed=seed))
        elif product.scaling == "blocks":
            r = np.asarray(scaled_matmul(an, bn, gemm, c=cn, seed=seed))
        else:  # per-tensor scales: refsim.nn's rule, then the bias in torch
            r = numpy_product(product, an, bn, seed)
            if cn is not None:
                r = r + cn
        return torch.from_numpy(np.ascontiguousarray(r)).to(device)

    def _fast(self, product: Product, a: torch.Tensor, b: torch.Tensor,
              c: torch.Tensor | None, seed: int) -> torch.Tensor:
        if product.scaling == "tensor":  # refsim.nn's per-tensor rule, the product in fp32
            gemm = product.gemm
            assert gemm is not None and gemm.a is not None and gemm.b is not None
            fa, fb = gemm.a.fmt, gemm.b.fmt
            assert not isinstance(fa, BlockFormat) and not isinstance(fb, BlockFormat)
            sa = _tensor_scale(a, float(fa.max))
            sb = _tensor_scale(b, float(fb.max))
            y = torch_matmul(a.double() / sa, b.double() / sb, gemm, mode="fast", seed=seed)
            out = (y.double() * (sa * sb)).to(a.dtype)
            return out if c is None else out + c
        assert product.gemm is not None
        return torch_matmul(a.detach(), b.detach(), product.gemm,
                            c=None if c is None else c.detach(), mode="fast", seed=seed)

    # ---- aten handlers ------------------------------------------------------------------------
    def _mm(self, func, args, kwargs):
        a, b = args[0], args[1]
        out = self._gemm(func.overloadpacket.__name__, a, b, None)
        return self._finish(self._tag(out, a, b), kwargs)

    def _finish(self, out: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        target = kwargs.get("out")
        if target is not None:
            target.resize_(out.shape)
            target.copy_(out)
            return target
        return out

    def _combine(self, op: str, inp: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                 beta: Any, alpha: Any) -> torch.Tensor:
        """beta * inp + alpha * (a @ b): inp as C when both are 1 (module docstring)."""
        if alpha == 1 and beta == 1:
            return self._biased(op, a, b, inp)
        out = self._gemm(op, a, b, None)
        if alpha != 1:
            out = out * alpha
        if beta != 0:
            out = out + (inp if beta == 1 else inp * beta)
        return out

    def _biased(self, op: str, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                role: str | None = None, name: str | None = None) -> torch.Tensor:
        """a @ b + c, c in the accumulator or in the epilogue (module docstring)."""
        if self.bias == "accumulator":
            c = c.expand(*a.shape[:-2], a.shape[-2], b.shape[-1])
            return self._gemm(op, a, b, c, role, name)
        return self._gemm(op, a, b, None, role, name) + c

    def _addmm(self, func, args, kwargs):
        inp, a, b = args[:3]
        out = self._combine(func.overloadpacket.__name__, inp, a, b, kwargs.get("beta", 1),
                            kwargs.get("alpha", 1))
        return self._finish(self._tag(out, a, b, 1), kwargs)

    def _addbmm(self, func, args, kwargs):
        inp, b1, b2 = args[:3]
        n, m, k = b1.shape
        a = b1.permute(1, 0, 2).reshape(m, n * k)  # the sum over the batch: one K of n*k terms
        b = b2.reshape(n * k, b2.shape[-1])
        out = self._combine("addbmm", inp, a, b, kwargs.get("beta", 1), kwargs.get("alpha", 1))
        return self._finish(self._tag(out, a, b, 1), kwargs)

    def _mv(self, func, args, kwargs):
        a, v = args[0], args[1]
        out = self._gemm("mv", a, v.unsqueeze(-1), None)[..., 0].clone()
        return self._finish(self._tag(out, a, v.unsqueeze(-1)), kwargs)

    def _addmv(self, func, args, kwargs):
        inp, a, v = args[:3]
        out = self._combine("addmv", inp.unsqueeze(-1), a, v.unsqueeze(-1),
                            kwargs.get("beta", 1), kwargs.get("alpha", 1))[..., 0].clone()
        return self._finish(self._tag(out, a, v.unsqueeze(-1), 1), kwargs)

    def _dot(self, func, args, kwargs):
        x, y = args[0], args[1]
        out = self._gemm("dot", x.unsqueeze(0), y.unsqueeze(-1), None).reshape(()).clone()
        return self._finish(self._tag(out, x.unsqueeze(0), y.unsqueeze(-1)), kwargs)

    def _addr(self, func, args, kwargs):
        inp, x, y = args[:3]
        out = self._combine("addr", inp, x.unsqueeze(-1), y.unsqueeze(0), kwargs.get("beta", 1),
                            kwargs.get("alpha", 1))
        return self._finish(self._tag(out, x.unsqueeze(-1), y.unsqueeze(0), 1), kwargs)

    def _inplace(self, func, args, kwargs):
        plain = getattr(aten, func.overloadpacket.__name__.rstrip("_")).default
        out = self._handlers[plain.overloadpacket](plain, args, kwargs)
        args[0].copy_(out)
        return args[0]

    def _conv_gemm(self, op: str, layer: str | None) -> Callable[..., torch.Tensor]:
        def gemm(role: str, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None
                 ) -> torch.Tensor:
            if c is not None:
                return self._biased(op, a, b, c, role, layer)
            return self._gemm(op, a, b, None, role=role, name=layer)
        return gemm

    def _convolution(self, func, args, kwargs):
        x, w, bias, stride, padding, dilation, transposed, output_padding, groups = args[:9]
        name = self._current_name("convolution")
        direct = self._direct(name, "forward")
        if direct is not None:  # fast mode, element casts: torch's convolution on cast operands
            seed, start = self._seed(name, "forward"), time.thread_time()
            xa, wb = self._cast_pair(direct, x, w, seed)
            out = self._finish_direct(direct, aten.convolution.default(
                xa, wb, None, stride, padding, dilation, transposed, output_padding, groups),
                x.dtype)
            self._record_direct("convolution", name, "forward", direct, seed, start, x, w,
                                out.shape, transposed, groups)
            if bias is not None:
                out = out + bias.reshape(1, -1, *[1] * (x.dim() - 2))
        else:
            gemm = self._conv_gemm("convolution", name)
            if transposed:
                out = conv_transpose_forward(x, w, bias, stride, padding, output_padding,
                                             dilation, groups, gemm)
            else:
                out = conv_forward(x, w, bias, stride, [(p, p) for p in padding], dilation,
                                   groups, gemm)
        if torch._C._current_autograd_node() is None:
            self._pending.append((out, {"name": name}))
        return out

    def _convolution_backward(self, func, args, kwargs):
        (gy, x, w, _bias_sizes, stride, padding, dilation, transposed, output_padding, groups,
         mask) = args[:11]
        node: Any = torch._C._current_autograd_node()
        info = node.metadata.get("refsim") if node is not None else None
        name = info["name"] if info else ""
        grads: list[torch.Tensor | None] = [None, None, None]
        rest = list(mask)
        for i, role in ((0, "backward-input"), (1, "backward-weight")):
            direct = self._direct(name, role) if mask[i] else None
            if direct is None:
                continue
            # the role's operands: (gradient, weights) for the input gradient, (input,
            # gradient) for the weight gradient, as the im2col products take them
            first, second = (gy, w) if i == 0 else (x, gy)
            seed, start = self._seed(name, role), time.thread_time()
            fa, fb = self._cast_pair(direct, first, second, seed)
            cgy, cx, cw = (fa, x, fb) if i == 0 else (fb, fa, w)
            only = [i == 0, i == 1, False]
            got = aten.convolution_backward.default(cgy, cx, cw, None, stride, padding,
                                                    dilation, transposed, output_padding,
                                                    groups, only)[i]
            grads[i] = self._finish_direct(direct, got, (x if i == 0 else w).dtype)
            self._record_direct("convolution_backward", name, role, direct, seed, start, x, w,
                                gy.shape, transposed, groups)
            rest[i] = False
        if any(rest):
            got3 = conv_backward(gy, x, w, stride, padding, dilation, transposed, output_padding,
                                 groups, rest, self._conv_gemm("convolution_backward", name))
            grads = [g if g is not None else r for g, r in zip(grads, got3, strict=True)]
        return tuple(grads)

    def _direct(self, name: str, role: str) -> Product | None:
        """The role's Product when fast mode may run a convolution as torch's own on cast
        operands: element-format casts that round each element by itself (no sr, no blocks,
        no transform, no scaling), so casting the input equals casting its im2col copies; not
        with record=True (the records keep the im2col operands)."""
        if self.mode != "fast" or self.record:
            return None
        product = self._active.product(name, role)
        gemm = product.gemm
        if gemm is None or product.scaling != "none" or gemm.transform is not None:
            return None
        for c in (gemm.a, gemm.b):
            if c is not None and (isinstance(c.fmt, BlockFormat) or c.rounding == "sr"):
                return None
        return product

    def _cast_pair(self, product: Product, first: torch.Tensor, second: torch.Tensor,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """first and second cast by the product's Casts a (seed) and b (seed + 1)."""
        gemm = product.gemm
        assert gemm is not None
        wide = torch.float64 if first.dtype == torch.float64 else torch.float32
        return (cast_tensor(first.to(wide), gemm.a, seed),
                cast_tensor(second.to(wide), gemm.b, (seed + 1) & ((1 << 64) - 1)))

    def _record_direct(self, op: str, name: str, role: str, product: Product, seed: int,
                       start: float, x: torch.Tensor, w: torch.Tensor, y_shape: Sequence[int],
                       transposed: bool, groups: int) -> None:
        """The record of a convolution product run by torch (shapes of its im2col view)."""
        kp = math.prod(w.shape[2:])
        cin, cout = (w.shape[1], w.shape[0] // groups) if not transposed else \
            (w.shape[0] // groups, w.shape[1])
        py = y_shape[0] * math.prod(y_shape[2:])
        px = x.shape[0] * math.prod(x.shape[2:])
        a, b = {"forward": ((py, cin * kp), (cin * kp, cout)),
                "backward-input": ((px, cout * kp), (cout * kp, cin)),
                "backward-weight": ((cin * kp, py), (py, cout))}[role]
        lead = (groups,) if groups > 1 else ()
        self.products.append(ProductRecord(op, name, role, (*lead, *a), (*lead, *b), a[1],
                                           product, False, seed, self.step, self.mode,
                                           time.thread_time() - start))

    def _finish_direct(self, product: Product, y: torch.Tensor, dtype: torch.dtype
                       ) -> torch.Tensor:
        gemm = product.gemm
        assert gemm is not None
        if gemm.out is not None:
            y = cast_tensor(y.float(), gemm.out, 0)
        return y.to(dtype)

    # ---- attention ----------------------------------------------------------------------------
    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                   is_causal: bool = False, scale: float | None = None,
                   enable_gqa: bool = False) -> torch.Tensor:
        """softmax(scale * (q @ k^T) + mask) @ v with the two products under the plan."""
        length, source = q.shape[-2], k.shape[-2]
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        if enable_gqa and k.shape[-3] != q.shape[-3]:
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
            v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
        self._suffix = "qk"
        try:
            s = torch.matmul(q, k.transpose(-2, -1))
        finally:
            self._suffix = None
        s = s.float() * scale
        if is_causal:
            keep = torch.ones(length, source, dtype=torch.bool, device=q.device).tril()
            s = s.masked_fill(~keep, float("-inf"))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                s = s.masked_fill(~attn_mask, float("-inf"))
            else:
                s = s + attn_mask
        p = torch.softmax(s, dim=-1)
        if dropout_p > 0.0:
            p = F.dropout(p, dropout_p)
        p = p.to(v.dtype)
        self._suffix = "av"
        try:
            return torch.matmul(p, v)
        finally:
            self._suffix = None


def emulate(numerics: object, mode: str = "exact", record: bool = False,
            unsupported: str = "raise", seed: int = 0, default_role: str = "forward",
            bias: str = "epilogue") -> Emulation:
    """A context manager under which every matrix product of torch runs under `numerics`.

    Args:
        numerics: a GemmSpec (every product and role), a refsim.nn Product, a Numerics plan, or
            a preset name (refsim.nn.numerics.PRESETS: "fp8", "mxfp8", "nvfp4", ...).
        mode: "exact" (bit-identical to refsim.matmul per product) or "fast" (exact operand
            Casts, the product in float32 torch).
        record: keep copies of every product's operands and result in em.products.
        unsupported: "raise" (NotImplementedError naming the op) or "native" (run natively,
            listed as native).
        seed: the run seed of the products' seeds (refsim.nn.gemm_seed).
        default_role: the role of a backward product whose forward emulate() did not see.
        bias: where an added tensor (nn.Linear's and a conv's bias, addmm's input) enters:
            "epilogue" (added to the product's result in the result dtype, one rounding) or
            "accumulator" (refsim.matmul's initial accumulator C).

    Returns:
        The Emulation (use it in a with statement; `em.products`, `em.step`).
    """
    return Emulation(numerics, mode, record, unsupported, seed, default_role, bias)
