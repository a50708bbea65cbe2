"""Optimizers: SGD (momentum, weight decay) and Adam, on float32 master weights.

Usage rules:
  - Parameters are float32 ("master weights") and are updated in float32 NumPy arithmetic; the
    low-precision copies the matrix products use are the GemmSpec Casts of the plan.
  - storage (optional Cast, e.g. Cast("bf16", "sr")): the weights are instead STORED in that
    format, with no float32 master: every update is computed in float64 as w + delta and rounded
    once to the format with the Cast's rounding; at construction the weights are rounded to it
    (rne). With rounding "sr", parameter i at step s uses the seed of
    SeedSequence([seed, s, i, 0x5354]) (0x5354: "ST", storage), so updates too small for the
    format survive in expectation instead of stagnating.
  - Optimizer state (momentum, Adam moments) is float32.
  - `step()` skips parameters whose grad is None; it raises if no parameter has a gradient.
  - schedule: "constant" (lr at every step) or "cosine" (lr * (1 + cos(pi * s / total_steps))
    / 2 at step s = 0, 1, ...: the rate falls to 0 at total_steps, so a run ends on a plateau
    whose end point does not depend on where a large step happened to land).
"""

from __future__ import annotations

import math

import numpy as np

from refsim.formats.block_format import BlockFormat
from refsim.nn.tensor import Tensor
from refsim.quantize import quantize
from refsim.specs import Cast

__all__ = ["SCHEDULES", "SGD", "Adam", "Optimizer"]

SCHEDULES = ("constant", "cosine")


class Optimizer:
    """Shared parts: the parameter list, the step counter and the (optional) storage rounding."""

    def __init__(self, params: list[Tensor], lr: float, storage: Cast | None = None,
                 seed: int = 0, schedule: str = "constant", total_steps: int | None = None
                 ) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer: the parameter list is empty")
        if not lr > 0:
            raise ValueError(f"optimizer: lr must be positive; got {lr}")
        if storage is not None and not isinstance(storage, Cast):
            raise TypeError(f"optimizer: storage must be a Cast or None; got "
                            f"{type(storage).__name__}")
        if storage is not None and isinstance(storage.fmt, BlockFormat):
            raise TypeError(f"optimizer: storage must be a Cast to an element format; got the "
                            f"block format {storage.fmt.name}")
        if schedule not in SCHEDULES:
            raise ValueError(f"optimizer: schedule must be one of {', '.join(SCHEDULES)}; got "
                             f"{schedule!r}")
        if schedule == "cosine" and not (isinstance(total_steps, int) and total_steps >= 1):
            raise ValueError(f"optimizer: the cosine schedule needs total_steps, a positive int; "
                             f"got {total_steps!r}")
        self.lr, self.storage, self.seed = lr, storage, seed
        self.schedule, self.total_steps = schedule, total_steps
        self.steps = 0
        if storage is not None:
            assert not isinstance(storage.fmt, BlockFormat)  # checked above
            for p in self.params:
                p.data = quantize(p.data, storage.fmt, "rne", overflow=storage.overflow)

    def lr_now(self) -> float:
        """The learning rate of the current step (module docstring: schedule)."""
        if self.schedule == "constant":
            return self.lr
        assert self.total_steps is not None  # __init__ checks
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(self.steps, self.total_steps)
                                              / self.total_steps))

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _apply(self, i: int, p: Tensor, delta: np.ndarray) -> None:
        if self.storage is None:
            p.data = (p.data + delta).astype(np.float32)
            return
        words = [self.seed, self.steps, i, 0x5354]
        seed = int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])
        wide = p.data.astype(np.float64) + delta.astype(np.float64)
        s = self.storage
        assert not isinstance(s.fmt, BlockFormat)  # __init__ checks
        p.data = quantize(wide, s.fmt, s.rounding, overflow=s.overflow, sr_bits=s.sr_bits,
                          seed=seed).astype(np.float32)

    def _update(self, i: int, p: Tensor, g: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step(self) -> None:
        if all(p.grad is None for p in self.params):
            raise ValueError("optimizer step: no parameter has a gradient (call backward first)")
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self._apply(i, p, self._update(i, p, p.grad.astype(np.float32)))
        self.steps += 1


class SGD(Optimizer):
    """v = momentum v + (g + weight_decay w); w -= lr v (torch's SGD without dampening)."""

    def __init__(self, params: list[Tensor], lr: float = 0.1, momentum: float = 0.0,
                 weight_decay: float = 0.0, storage: Cast | None = None, seed: int = 0,
                 schedule: str = "constant", total_steps: int | None = None) -> None:
        super().__init__(params, lr, storage, seed, schedule, total_steps)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.velocity = [np.zeros_like(p.data) for p in self.params]

    def _update(self, i: int, p: Tensor, g: np.ndarray) -> np.ndarray:
        if self.weight_decay:
            g = g + np.float32(self.weight_decay) * p.data
        if self.momentum:
            self.velocity[i] = np.float32(self.momentum) * self.velocity[i] + g
            g = self.velocity[i]
        return -np.float32(self.lr_now()) * g


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; weight_decay is added to the gradient (L2, as
    torch.optim.Adam)."""

    def __init__(self, params: list[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9,
                 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 storage: Cast | None = None, seed: int = 0, schedule: str = "constant",
                 total_steps: int | None = None) -> None:
        super().__init__(params, lr, storage, seed, schedule, total_steps)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]

    def _update(self, i: int, p: Tensor, g: np.ndarray) -> np.ndarray:
        b1, b2 = self.betas
        if self.weight_decay:
            g = g + np.float32(self.weight_decay) * p.data
        self.m[i] = np.float32(b1) * self.m[i] + np.float32(1 - b1) * g
        self.v[i] = np.float32(b2) * self.v[i] + np.float32(1 - b2) * g * g
        t = self.steps + 1
        m_hat = self.m[i] / np.float32(1 - b1**t)
        v_hat = self.v[i] / np.float32(1 - b2**t)
        return -np.float32(self.lr_now()) * m_hat / (np.sqrt(v_hat) + np.float32(self.eps))
