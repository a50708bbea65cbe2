"""Numerics plans: which GemmSpec every matrix product of a model uses, per layer and role.

Usage rules:
  - A model's matrix products are named: `fc1`, `conv2`, `block0.attn.qk`, ... Each has three
    roles (ROLES): for C = A B, `forward` computes C, `backward-input` computes dA = dC B^T and
    `backward-weight` computes dB = A^T dC. In a linear or conv layer A holds the activations and
    B the weights; in attention (QK^T, AV) the "weight" is the second activation (K^T, V).
  - A role's `Product` is a GemmSpec plus a scaling rule: "none" (operands go to refsim.matmul as
    they are), "tensor" (per-tensor scaling, below) or "blocks" (refsim.scaled_matmul: block
    scales applied at promotion or folded into the elements, tensor scales in the epilogue, as
    scaled GEMM kernels apply them).
  - A GemmSpec with a transform (a random Hadamard transform along K) needs K to be a multiple
    of its block; where it is not (the last, short batch of an epoch in a backward-weight
    product), both operands are zero-padded along K to the next multiple first, as kernels pad
    the token dimension. In exact arithmetic the product is unchanged.
  - The layer pattern LAST ("@last") names the model's last product (its output layer); the
    training loop binds it (`Numerics.bind`). `plan.only(roles, rest)` keeps some roles and
    takes the others from another plan (the recipes study quantizes one role at a time).
  - `Numerics(default, layers)`: `default` gives all three roles; `layers` maps glob patterns
    (fnmatch, case-sensitive) to some roles. For a product, the LAST pattern that matches its
    name and defines the role wins, else the default. `check(names)` raises if a pattern matches
    no product of the model (the training loop calls it), so a typo is never silently ignored.
  - Per-tensor scaling ("tensor"): with s_a = amax|A| / max(a.fmt) (1 if amax is 0), likewise
    s_b, the product computed is s_a s_b * matmul(A / s_a, B / s_b, gemm): the divisions and the
    final multiplications are float64 (one rounding each), the result is rounded once to the
    operands' dtype. A NaN or Inf in A makes s_a, and so every output, non-finite, as in a real
    scaled kernel: a finite result is never made from a non-finite operand. It needs Casts a
    and b and no out Cast. The int8 preset uses it with an e11m50 accumulator (51 significant
    bits): every partial sum of int8 x int8 products is an integer below 2^51, so it is exact,
    as an int32 accumulator would be (for K < 2^31 / 127^2). Not fp64: refsim.matmul's fast
    path takes accumulators of at most 50 mantissa bits, and the exact core is about 25x slower.
  - Seeds: the GEMM of (layer, role) at training step `step` under run seed `seed` gets the seed
    `gemm_seed(seed, step, layer, role)`: the first uint64 word of NumPy's
    SeedSequence([seed, step, crc32(layer), role index]). refsim.matmul then uses that seed for
    A's Cast and +1 for B's Cast (docs/accumulation.md). So SR bits never depend on call order.
  - The `numpy` preset is not a simulation: np.matmul in the operands' dtype. It exists for the
    float64 gradient checks and as a speed baseline; every other preset goes through
    refsim.matmul.
  - TOML plans (`Numerics.from_toml`, `load_numerics`): see docs/nn.md for the format.
"""

from __future__ import annotations

import fnmatch
import time
import tomllib
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from refsim.accumulate import matmul
from refsim.formats.block_format import BlockFormat
from refsim.nn.recipes import RECIPES, recipe
from refsim.scaled_gemm import check_scaled_spec, scaled_matmul
from refsim.specs import AccumSpec, Cast, GemmSpec

__all__ = ["LAST", "PRESETS", "RECIPES", "ROLES", "SCALINGS", "Context", "Numerics", "Product",
           "gemm_seed", "load_numerics", "preset", "run_product"]

ROLES: tuple[str, ...] = ("forward", "backward-input", "backward-weight")
SCALINGS: tuple[str, ...] = ("none", "tensor", "blocks")
LAST = "@last"
"""The layer pattern that names a model's last matrix product (its output layer): `bind`."""


def _check_role(role: object) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    return role  # type: ignore[return-value]


# ---- one role's product ------------------------------------------------------------------------
@dataclass(frozen=True)
class Product:
    """How one matrix product is computed.

    Args:
        gemm: the GemmSpec given to refsim.matmul; None means np.matmul (the `numpy` preset).
        scaling: "none", "tensor" (per-tensor scaling) or "blocks" (scaled GEMM; see the
            module docstring).
    """

    gemm: GemmSpec | None
    scaling: str = "none"

    def __post_init__(self) -> None:
        if self.gemm is not None and not isinstance(self.gemm, GemmSpec):
            raise TypeError(f"Product.gemm must be a GemmSpec or None; got "
                            f"{type(self.gemm).__name__}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"Product.scaling must be one of {', '.join(SCALINGS)}; got "
                             f"{self.scaling!r}")
        if self.scaling == "blocks" and (self.gemm is None or not any(
                c is not None and isinstance(c.fmt, BlockFormat)
                for c in (self.gemm.a, self.gemm.b))):
            raise ValueError("Product.scaling='blocks' needs a GemmSpec with a block-format "
                             "Cast a or b (refsim.scaled_matmul applies its scales)")
        if self.scaling == "blocks":
            assert self.gemm is not None
            check_scaled_spec(self.gemm)  # what scaled_matmul refuses, refused at load time
        if self.scaling == "tensor":
            if self.gemm is None or self.gemm.a is None or self.gemm.b is None:
                raise ValueError("Product.scaling='tensor' needs a GemmSpec with Casts a and b "
                                 "(their formats' max sets the scales)")
            if self.gemm.out is not None:
                raise ValueError("Product.scaling='tensor' needs out=None (the result is "
                                 "rescaled after the accumulator)")
            if any(isinstance(c.fmt, BlockFormat) for c in (self.gemm.a, self.gemm.b)):
                raise ValueError("Product.scaling='tensor' needs element formats a and b; a "
                                 "block format scales its own blocks")

    def to_dict(self) -> dict[str, Any]:
        if self.gemm is None:
            return {"numpy": True}
        data = self.gemm.to_dict()
        if self.scaling != "none":
            data["scaling"] = self.scaling
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Product:
        if not isinstance(data, Mapping):
            raise TypeError(f"{where} must be a table; got {type(data).__name__}")
        data = dict(data)
        if "numpy" in data:
            numpy = data.pop("numpy")
            if not isinstance(numpy, bool):
                raise TypeError(f"{where}: numpy must be true or false; got {numpy!r}")
            if numpy:
                if data:
                    raise ValueError(f"{where}: numpy = true means np.matmul (not simulated) and "
                                     f"takes no other keys; got {', '.join(map(repr, data))}")
                return cls(None)
            # numpy = false: simulated, as the other keys say
        scaling = data.pop("scaling", "none")
        try:
            return cls(GemmSpec.from_dict(data), scaling)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where}: {exc}") from None

    def __str__(self) -> str:
        if self.gemm is None:
            return "np.matmul"
        text = str(self.gemm)
        return text if self.scaling == "none" else f"{text} scaling={self.scaling}"


def _tensor_scale(x: np.ndarray, fmt_max: float) -> float:
    amax = float(np.max(np.abs(x))) if x.size else 0.0
    return 1.0 if amax == 0.0 else amax / fmt_max  # NaN or Inf when x holds one


def _pad_for_transform(gemm: GemmSpec, a: np.ndarray, b: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """a and b zero-padded along K to a multiple of the transform's block, as kernels pad the
    token dimension (module docstring); unchanged without a transform or when K is one."""
    if gemm.transform is None or a.shape[-1] % gemm.transform.block == 0:
        return a, b
    pad = -a.shape[-1] % gemm.transform.block
    a = np.concatenate([a, np.zeros((*a.shape[:-1], pad), a.dtype)], axis=-1)
    b = np.concatenate([b, np.zeros((*b.shape[:-2], pad, b.shape[-1]), b.dtype)], axis=-2)
    return a, b


def run_product(product: Product, a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """a @ b as `product` declares; the result has a's dtype."""
    if product.gemm is None:
        return np.matmul(a, b)
    a, b = _pad_for_transform(product.gemm, a, b)
    if product.scaling == "none":
        return np.asarray(matmul(a, b, product.gemm, seed=seed), dtype=a.dtype)
    if product.scaling == "blocks":
        return np.asarray(scaled_matmul(a, b, product.gemm, seed=seed), dtype=a.dtype)
    assert product.gemm.a is not None and product.gemm.b is not None
    fa, fb = product.gemm.a.fmt, product.gemm.b.fmt
    assert not isinstance(fa, BlockFormat) and not isinstance(fb, BlockFormat)  # Product checks
    sa = _tensor_scale(a, float(fa.max))
    sb = _tensor_scale(b, float(fb.max))
    with np.errstate(invalid="ignore"):  # a non-finite scale: NaN is the answer, not a warning
        a64 = np.asarray(a, np.float64) / sa
        b64 = np.asarray(b, np.float64) / sb
        y = np.asarray(matmul(a64, b64, product.gemm, seed=seed), np.float64)
        return (y * (sa * sb)).astype(a.dtype)


# ---- the plan -------------------------------------------------------------------------------
def _roles(value: Mapping[str, Product], where: str, complete: bool) -> dict[str, Product]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{where} must map roles to Products; got {type(value).__name__}")
    out = {}
    for role, product in value.items():
        if role not in ROLES:
            raise ValueError(f"{where}: unknown role {role!r} (allowed: {', '.join(ROLES)})")
        if not isinstance(product, Product):
            raise TypeError(f"{where}.{role} must be a Product; got {type(product).__name__}")
        out[role] = product
    missing = [role for role in ROLES if role not in out]
    if complete and missing:
        raise ValueError(f"{where} must define every role; missing {', '.join(missing)}")
    if not out:
        raise ValueError(f"{where} defines no role (allowed: {', '.join(ROLES)})")
    return out


class Numerics:
    """A plan: the Product of every (layer, role), from a default and glob-pattern overrides."""

    def __init__(self, default: Mapping[str, Product] | Product,
                 layers: Mapping[str, Mapping[str, Product] | Product] | None = None,
                 name: str = "custom", optional: Iterable[str] = ()) -> None:
        if isinstance(default, Product):
            default = dict.fromkeys(ROLES, default)
        self.default = _roles(default, "default", complete=True)
        self.layers: dict[str, dict[str, Product]] = {}
        for pattern, roles in (layers or {}).items():
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"layer patterns must be non-empty strings; got {pattern!r}")
            if isinstance(roles, Product):
                roles = dict.fromkeys(ROLES, roles)
            self.layers[pattern] = _roles(roles, f"layers[{pattern!r}]", complete=False)
        self.name = name
        # Patterns that may match no product of a model (a recipe's attention patterns on an
        # MLP); every other pattern must match one (check).
        self.optional = frozenset(p for p in optional if p in self.layers)

    def product(self, layer: str, role: str) -> Product:
        """The Product of `role` for the matrix product named `layer` (a LAST pattern counts
        only once the plan is bound to a model: `bind`)."""
        _check_role(role)
        chosen = self.default[role]
        for pattern, roles in self.layers.items():
            if role in roles and fnmatch.fnmatchcase(layer, pattern):
                chosen = roles[role]
        return chosen

    def bind(self, names: Iterable[str]) -> Numerics:
        """This plan for a model whose products are `names` (in model order): the pattern LAST
        becomes the name of the model's last product, in its place in the pattern order."""
        names = list(names)
        if LAST not in self.layers or not names:
            return self
        layers: dict[str, dict[str, Product]] = {}
        for pattern, roles in self.layers.items():
            key = names[-1] if pattern == LAST else pattern
            layers[key] = {**layers.pop(key, {}), **roles}  # as with_layers: moves to the end
        optional = {names[-1] if p == LAST else p for p in self.optional}
        return Numerics(self.default, layers, self.name, optional)

    def only(self, roles: Iterable[str], rest: Numerics) -> Numerics:
        """The plan that computes `roles` as this one does (default and layer patterns) and
        every other role as `rest` (its default and its patterns) does."""
        keep = [_check_role(role) for role in roles]
        if not keep:
            raise ValueError("roles must name at least one role (allowed: "
                             f"{', '.join(ROLES)})")
        default = {role: (self.default if role in keep else rest.default)[role]
                   for role in ROLES}
        layers: dict[str, dict[str, Product]] = {}
        for plan, mine in ((rest, False), (self, True)):
            for pattern, table in plan.layers.items():
                picked = {r: p for r, p in table.items() if (r in keep) == mine}
                if picked:
                    layers.setdefault(pattern, {}).update(picked)
        return Numerics(default, layers, f"{self.name}[{','.join(keep)}]",
                        self.optional | rest.optional)

    def check(self, names: Iterable[str]) -> None:
        """Raise if a layer pattern matches none of `names` (a model's product names)."""
        names = list(names)
        for pattern in self.layers:
            if (pattern == LAST and names) or pattern in self.optional:
                continue
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise ValueError(f"numerics {self.name!r}: layer pattern {pattern!r} matches no "
                                 f"matrix product of the model (its products: "
                                 f"{', '.join(names)})")

    def with_layers(self, layers: Mapping[str, Mapping[str, Product] | Product],
                    name: str | None = None) -> Numerics:
        """This plan with more layer patterns appended, so they win over existing ones (a
        pattern already present moves to the end, its roles updated by the new ones)."""
        merged: dict[str, Any] = {k: v for k, v in self.layers.items() if k not in layers}
        for pattern, roles in layers.items():
            if isinstance(roles, Product):
                roles = dict.fromkeys(ROLES, roles)
            merged[pattern] = {**self.layers.get(pattern, {}), **roles}
        return Numerics(self.default, merged, name or self.name, self.optional - set(layers))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "default": {role: p.to_dict() for role, p in self.default.items()},
            "layers": {pat: {role: p.to_dict() for role, p in roles.items()}
                       for pat, roles in self.layers.items()}}
        if self.optional:
            data["optional"] = sorted(self.optional)
        return data

    def describe(self, names: Iterable[str]) -> dict[str, dict[str, str]]:
        """{layer: {role: one-line spec}} for the given product names."""
        return {n: {role: str(self.product(n, role)) for role in ROLES} for n in names}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "custom") -> Numerics:
        """A plan from a dict as TOML gives it (docs/nn.md, "Numerics plans")."""
        _keys(data, ("name", "preset", "default", "layers", "roles", "rest", "optional"),
              "numerics plan")
        name = data.get("name", name)
        base = data.get("preset")
        if "roles" in data or "rest" in data:  # the plan for some roles, the rest from `rest`
            roles = data.get("roles")
            if not isinstance(roles, list) or not roles:
                raise ValueError(f"numerics plan: roles must be a non-empty list of "
                                 f"{', '.join(ROLES)}; got {roles!r}")
            inner = {k: v for k, v in data.items() if k not in ("roles", "rest")}
            return cls.from_dict(inner, name).only(roles, preset(data.get("rest", "fp32")))
        default: dict[str, Product] = {}
        layers: dict[str, dict[str, Product]] = {}
        optional = data.get("optional", [])
        if not isinstance(optional, list) or not all(isinstance(p, str) for p in optional):
            raise ValueError(f"numerics plan: optional must be a list of layer patterns; got "
                             f"{optional!r}")
        optional = set(optional)
        if base is not None:
            base_plan = preset(base)
            default, layers = dict(base_plan.default), dict(base_plan.layers)
            optional |= base_plan.optional
        default.update(_table_roles(data.get("default", {}), "default"))
        missing = [role for role in ROLES if role not in default]
        if missing:
            raise ValueError(f"numerics plan: the default lacks {', '.join(missing)}: give "
                             "preset = NAME or a [default.ROLE] table for every role")
        layers_data = data.get("layers", {})
        if not isinstance(layers_data, Mapping):
            raise TypeError("numerics plan: layers must be a table of layer patterns")
        for pattern, table in layers_data.items():
            roles = _table_roles(table, f"layers.{pattern!r}")
            if not roles:
                raise ValueError(f"numerics plan: layers.{pattern!r} defines no role (allowed: "
                                 f"preset, {', '.join(ROLES)})")
            layers[pattern] = {**layers.pop(pattern, {}), **roles}  # a plan's own patterns win
            if pattern not in data.get("optional", []):
                optional.discard(pattern)  # one the plan names itself must match
        return cls(default, layers, name, optional)

    @classmethod
    def from_toml(cls, text: str, name: str = "custom") -> Numerics:
        return cls.from_dict(tomllib.loads(text), name)

    def __repr__(self) -> str:
        return f"Numerics({self.name!r}, {len(self.layers)} layer patterns)"


def _keys(data: object, allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(data, Mapping):
        raise TypeError(f"{where} must be a table; got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(map(repr, unknown))} (allowed: "
                         f"{', '.join(allowed)})")


def _table_roles(table: object, where: str) -> dict[str, Product]:
    """A [default] or [layers.PATTERN] table: optional preset, then role tables over it."""
    _keys(table, ("preset", *ROLES), where)
    assert isinstance(table, Mapping)
    roles: dict[str, Product] = {}
    if "preset" in table:
        roles.update(preset(table["preset"]).default)
    for role in ROLES:
        if role in table:
            roles[role] = Product.from_dict(table[role], f"{where}.{role}")
    return roles


# ---- presets ------------------------------------------------------------------------------------
def _fp8(acc: AccumSpec) -> dict[str, Product]:
    # Forward operands e4m3, gradients e5m2 (more range); casts saturate, as FP8 training
    # recipes do, instead of turning a large activation into NaN.
    e4m3 = Cast("e4m3fn", overflow="saturate")
    e5m2 = Cast("e5m2", overflow="saturate")
    return {"forward": Product(GemmSpec(a=e4m3, b=e4m3, acc=acc)),
            "backward-input": Product(GemmSpec(a=e5m2, b=e4m3, acc=acc)),
            "backward-weight": Product(GemmSpec(a=e4m3, b=e5m2, acc=acc))}


def _preset_table() -> dict[str, tuple[str, dict[str, Product], dict[str, dict[str, Product]]]]:
    fp32 = Product(GemmSpec(acc=AccumSpec("fp32")))
    bf16 = Product(GemmSpec(a=Cast("bf16"), b=Cast("bf16"), acc=AccumSpec("fp32"),
                            out=Cast("bf16")))
    int8 = Cast("int8", overflow="saturate")
    int8_product = Product(GemmSpec(a=int8, b=int8, acc=AccumSpec("e11m50")), scaling="tensor")
    table: dict[str, tuple[str, dict[str, Product], dict[str, dict[str, Product]]]] = {
        "fp32": ("float32 operands, exact products, fp32 sequential accumulation (rne)",
                 dict.fromkeys(ROLES, fp32), {}),
        "bf16": ("bf16 operands (rne), fp32 sequential accumulation, bf16 output",
                 dict.fromkeys(ROLES, bf16), {}),
        "fp8": ("e4m3fn forward operands, e5m2 gradients (saturating casts), fp32 accumulation",
                _fp8(AccumSpec("fp32")), {}),
        "fp8-fp16acc": ("fp8 operands as in fp8, fp16 sequential accumulation",
                        _fp8(AccumSpec("fp16")), {}),
        "fp8-chunk128": ("fp8 operands as in fp8, fp16 chunks of 128 promoted into fp32",
                         _fp8(AccumSpec("fp16", order="chunked", chunk=128, outer="fp32")), {}),
        "int8": ("int8 operands with per-tensor scales (rne, saturating), exact integer "
                 "accumulation (e11m50 accumulator)", dict.fromkeys(ROLES, int8_product), {}),
        "numpy": ("NOT simulated: np.matmul in the operands' dtype (gradient checks, baseline)",
                  dict.fromkeys(ROLES, Product(None)), {}),
    }
    for name in RECIPES:
        text, roles, layers = recipe(name)
        table[name] = (text, {r: Product(*p) for r, p in roles.items()},
                       {pat: {r: Product(*p) for r, p in rs.items()} for pat, rs in layers.items()})
    return table


PRESETS: dict[str, str] = {name: text for name, (text, _, _) in _preset_table().items()}
"""Preset names and one-line descriptions (the recipes among them: RECIPES)."""


def preset(name: object) -> Numerics:
    """The preset plan `name` (PRESETS)."""
    table = _preset_table()
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"unknown numerics preset {name!r} (allowed: {', '.join(table)})")
    _, default, layers = table[name]
    return Numerics(default, layers, name=name, optional=layers)


def load_numerics(value: str | Path) -> Numerics:
    """A preset name, or the path of a TOML plan (a name ending in .toml)."""
    text = str(value)
    if text.endswith(".toml"):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"numerics plan {text!r} does not exist")
        return Numerics.from_toml(path.read_text(), name=path.stem)
    try:
        return preset(text)
    except ValueError as exc:
        raise ValueError(f"{exc}, or the path of a plan ending in .toml") from None


# ---- seeds and the run context ------------------------------------------------------------------
def gemm_seed(seed: int, step: int, layer: str, role: str) -> int:
    """The SR seed of (layer, role) at `step` under run seed `seed` (module docstring)."""
    words = [int(seed), int(step), zlib.crc32(layer.encode()), ROLES.index(_check_role(role))]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])


@dataclass
class Context:
    """The state one forward/backward pass reads: plan, run seed, step, training flag.

    Args:
        numerics: the plan.
        seed: the run seed (SR and dropout seeds derive from it, the step and the layer name).
        step: the training step (the training loop increments it).
        training: dropout is active only when True.
        trace: None, or a list that receives one dict per matrix product (layer, role, shapes,
            seconds): used by tests and the benchmark's profile.
        geometry: with trace, filled with each convolution's geometry by layer name (input
            height and width "hw", kernel size "k", "stride", "padding"): refsim.factors reads
            the element usage of its im2col operand from it.
        nonfinite: None, or the first product since it was last cleared whose result held a
            NaN or Inf: (layer, role, inputs_finite). The training loop clears it every step
            and reads it to say where a non-finite loss or gradient came from.
    """

    numerics: Numerics
    seed: int = 0
    step: int = 0
    training: bool = True
    trace: list[dict[str, Any]] | None = field(default=None)
    geometry: dict[str, dict[str, Any]] = field(default_factory=dict)
    nonfinite: tuple[str, str, bool] | None = None

    def note_conv(self, layer: str, hw: tuple[int, int], k: int, stride: int,
                  padding: int) -> None:
        """Record a convolution's geometry (only while tracing)."""
        if self.trace is not None:
            self.geometry[layer] = {"hw": hw, "k": k, "stride": stride, "padding": padding}

    def gemm(self, layer: str, role: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The (layer, role) product a @ b under the plan."""
        product = self.numerics.product(layer, role)
        seed = gemm_seed(self.seed, self.step, layer, role)
        start = time.perf_counter()
        out = run_product(product, a, b, seed)
        if self.trace is not None:
            self.trace.append({"layer": layer, "role": role, "a": a.shape, "b": b.shape,
                               "macs": int(np.prod(out.shape)) * a.shape[-1],
                               "seconds": time.perf_counter() - start})
        # One pass over the output (cheap beside the simulated product); the inputs are looked
        # at only when it is not finite, to tell a product that made the NaN or Inf from one
        # that was handed it.
        if self.nonfinite is None and not np.isfinite(out).all():
            self.nonfinite = (layer, role, bool(np.isfinite(a).all() and np.isfinite(b).all()))
        return out

    def stream_seed(self, name: str) -> int:
        """A seed for a non-GEMM random stream (dropout) of `name` at this step."""
        words = [int(self.seed), int(self.step), zlib.crc32(name.encode()), len(ROLES)]
        return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])
