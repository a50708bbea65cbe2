"""Per-GEMM factor profile of a refsim.nn model: reduction length, element usage, depth.

Usage rules:
  - `profile(model, sample_input)` runs one forward and one backward pass (loss = the sum of the
    logits) under the `numpy` preset with a trace, and returns one row per matrix product that
    ran: every role of every layer (the first layer's backward-input GEMM does not run, because
    the model input needs no gradient, so it has no row).
  - For C = A B with A (M x K) and B (K x N) (batched over P), the roles compute
    forward C = A B, backward-input dA = dC B^T and backward-weight dB = A^T dC. A row gives the
    GEMM's own M, N, K (K is the reduction length, the "accumulation"), and `uses_a`, `uses_b`:
    how many outputs of that GEMM each element of its first and second operand feeds, on
    average. An element of an (M x K) operand feeds N outputs and one of a (K x N) operand feeds
    M, times the batch count it is broadcast over.
  - Convolutions: the im2col operand repeats each input pixel once per window that covers it,
    so the uses of an input element are N times the mean number of im2col entries it fills
    (zero padding is not an input element): about C_out * k^2 / s^2 away from the borders.
  - Depth: `depth_input` is the product's 1-based position in the model's forward order
    (`gemm_names()`), `depth_loss` its position counted back from the loss (the last product
    is 1), for every role.
  - The conv geometry (input size, kernel, stride, padding) comes from the traced Context
    (refsim.nn.Context.geometry), next to the GEMM shapes of its trace.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Profile", "ProfileRow", "conv_input_repeats", "profile"]

OPERANDS = {"forward": ("A", "B"), "backward-input": ("dC", "B^T"),
            "backward-weight": ("A^T", "dC")}
"""What the two operands of each role are, for C = A B (A activations, B weights)."""


@dataclass(frozen=True)
class ProfileRow:
    """One GEMM of one layer and role.

    Args:
        layer, role: the product name and role (refsim.nn.ROLES).
        kind: linear, conv or attention.
        batch: P, the number of independent (M x K)(K x N) products (attention: B*heads).
        m, n, k: the GEMM's sizes; k is the reduction length.
        uses_a, uses_b: mean number of outputs each element of operand a / b feeds.
        depth_input, depth_loss: position from the input and from the loss (1-based).
        macs: multiply-adds, batch * m * n * k.
    """

    layer: str
    role: str
    kind: str
    batch: int
    m: int
    n: int
    k: int
    uses_a: float
    uses_b: float
    depth_input: int
    depth_loss: int
    macs: int

    @property
    def frequency(self) -> float:
        """Usage frequency of the GEMM: the geometric mean of uses_a and uses_b."""
        return math.sqrt(self.uses_a * self.uses_b)


class Profile:
    """The rows of a profile, with printing and CSV / JSON output."""

    def __init__(self, rows: list[ProfileRow]) -> None:
        self.rows = list(rows)

    def __iter__(self) -> Iterator[ProfileRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, layer: str, role: str) -> ProfileRow:
        """The row of (layer, role); KeyError if that GEMM did not run."""
        for r in self.rows:
            if r.layer == layer and r.role == role:
                return r
        raise KeyError(f"no GEMM {layer!r} / {role!r} in the profile (layers: "
                       f"{', '.join(dict.fromkeys(r.layer for r in self.rows))})")

    def layers(self) -> list[str]:
        return list(dict.fromkeys(r.layer for r in self.rows))

    def to_dicts(self) -> list[dict[str, Any]]:
        return [{**asdict(r), "frequency": r.frequency} for r in self.rows]

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dicts(), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_csv(self, path: str | Path | None = None) -> str:
        buf = io.StringIO()
        names = [f.name for f in fields(ProfileRow)] + ["frequency"]
        writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.to_dicts())
        if path is not None:
            Path(path).write_text(buf.getvalue())
        return buf.getvalue()

    def table(self) -> str:
        """A fixed-width text table, one line per row."""
        head = (f"{'layer':<18} {'role':<16} {'kind':<9} {'P':>4} {'M':>6} {'N':>6} {'K':>6} "
                f"{'uses_a':>8} {'uses_b':>8} {'d_in':>4} {'d_loss':>6}")
        lines = [head, "-" * len(head)]
        lines += [f"{r.layer:<18} {r.role:<16} {r.kind:<9} {r.batch:>4} {r.m:>6} "
                  f"{r.n:>6} {r.k:>6} {r.uses_a:>8.4g} {r.uses_b:>8.4g} "
                  f"{r.depth_input:>4} {r.depth_loss:>6}" for r in self.rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def conv_input_repeats(shape: tuple[int, int], k: int, stride: int, padding: int) -> float:
    """Mean number of im2col entries each input pixel fills (padding excluded).

    Args:
        shape: (H, W) of the input, in pixels.
        k, stride, padding: the square kernel size, stride and zero padding, in pixels.
    """
    h, w = shape
    return _axis_repeats(h, k, stride, padding) * _axis_repeats(w, k, stride, padding)


def _axis_repeats(size: int, k: int, stride: int, padding: int) -> float:
    # The 2-D count factorizes: a pixel (i, j) is covered by (windows over i) x (windows over
    # j), so the mean over pixels is the product of the per-axis means.
    out = (size + 2 * padding - k) // stride + 1
    hits = np.zeros(size, np.int64)
    for o in range(out):
        lo = o * stride - padding
        for t in range(k):
            if 0 <= lo + t < size:
                hits[lo + t] += 1
    return float(hits.sum()) / size


def profile(model, sample_input: np.ndarray) -> Profile:
    """One row per GEMM role of every layer of `model` on `sample_input` (module docstring).

    Args:
        model: a refsim.nn model (MLP, CNN, Transformer, or any Module called as model(x, ctx)
            whose products go through refsim.nn.ops).
        sample_input: one batch as the model takes it (its batch size sets M and the uses).
    """
    from refsim.nn.numerics import Context, preset

    names = list(model.gemm_names())
    if not names:
        raise ValueError("profile: the model lists no matrix products (gemm_names() is empty)")
    trace: list[dict[str, Any]] = []
    ctx = Context(preset("numpy"), seed=0, trace=trace)
    logits = model(sample_input, ctx)
    logits.sum().backward()
    convs = ctx.geometry
    depth = {name: i + 1 for i, name in enumerate(names)}
    rows = []
    seen = set()
    for entry in trace:
        layer, role = entry["layer"], entry["role"]
        if (layer, role) in seen:
            continue
        seen.add((layer, role))
        rows.append(_row(layer, role, entry["a"], entry["b"], convs.get(layer), depth, len(names)))
    order = {"forward": 0, "backward-input": 1, "backward-weight": 2}
    rows.sort(key=lambda r: (r.depth_input, order[r.role]))
    return Profile(rows)


def _row(layer: str, role: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...],
         conv: dict[str, Any] | None, depth: dict[str, int], total: int) -> ProfileRow:
    m, k = a_shape[-2:]
    n = b_shape[-1]
    a_batch = int(np.prod(a_shape[:-2], dtype=np.int64))
    b_batch = int(np.prod(b_shape[:-2], dtype=np.int64))
    batch = int(np.prod(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]), dtype=np.int64))
    # An operand broadcast over the batch feeds every batch's outputs.
    uses_a = float(n * batch // a_batch)
    uses_b = float(m * batch // b_batch)
    kind = "linear"
    if conv is not None:
        kind = "conv"
        if role in ("forward", "backward-weight"):  # a is the im2col matrix (or its transpose)
            uses_a *= conv_input_repeats(conv["hw"], conv["k"], conv["stride"], conv["padding"])
    elif layer.endswith((".qk", ".av")):
        kind = "attention"
    d = depth.get(layer, 0)
    return ProfileRow(layer=layer, role=role, kind=kind, batch=batch, m=int(m), n=int(n),
                      k=int(k), uses_a=uses_a, uses_b=uses_b, depth_input=d,
                      depth_loss=total - d + 1 if d else 0, macs=int(batch * m * n * k))
