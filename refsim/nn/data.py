"""Offline datasets: scikit-learn's bundled digits and seeded synthetic sequence tasks.

Usage rules:
  - `digits()`: the 1,797 8x8 images that ship inside scikit-learn (no download), pixels
    scaled from 0..16 to [0, 1] in float32; a fixed split (NumPy Generator seed 0, so every run
    and every training seed sees the same split) of 1,437 training and 360 test images.
  - `sequence_task(name, ...)`: integer token sequences for a decoder-only model, as
    (inputs, targets, mask): the model reads inputs (N, T) and is scored on targets (N, T)
    (the next token) where mask is True (the answer positions only).
      copy:     x_1..x_n SEP x_1..x_n         (answer: the second half)
      reversal: x_1..x_n SEP x_n..x_1
      modadd:   a b SEP (a + b) mod p         (answer: the last token; p = vocab; a quarter
                                              of the p^2 problems, at most n_test, is held
                                              out as the test set)
    Tokens x are uniform in [0, vocab); SEP is the token `vocab`, so the model needs vocab + 1
    token ids. The draws are a pure function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TASKS", "Split", "digits", "sequence_task"]

TASKS = ("copy", "reversal", "modadd")


@dataclass(frozen=True)
class Split:
    """Training and test arrays (x: inputs, y: targets, mask: scored positions or None)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mask_train: np.ndarray | None = None
    mask_test: np.ndarray | None = None


def digits(images: bool = False, n_test: int = 360) -> Split:
    """The digits split; x is (N, 64), or (N, 1, 8, 8) with images=True."""
    from sklearn.datasets import load_digits  # local: only the digits models need scikit-learn

    bunch = load_digits()
    x = (np.asarray(bunch.data, np.float64) / 16.0).astype(np.float32)
    y = np.asarray(bunch.target, np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    if images:
        x = x.reshape(-1, 1, 8, 8)
    return Split(x[n_test:], y[n_test:], x[:n_test], y[:n_test])


def _pack(name: str, x: np.ndarray, vocab: int):
    """(inputs, targets, mask) of the sequences built from the draws x."""
    n = len(x)
    sep = np.full((n, 1), vocab)
    if name == "modadd":
        seq = np.concatenate([x, sep, (x.sum(axis=1) % vocab)[:, None]], axis=1)
        answer_from = 3
    else:
        seq = np.concatenate([x, sep, x if name == "copy" else x[:, ::-1]], axis=1)
        answer_from = x.shape[1] + 1
    inputs, targets = seq[:, :-1], seq[:, 1:]
    mask = np.zeros(targets.shape, bool)
    mask[:, answer_from - 1:] = True  # targets[:, j] is seq[:, j + 1]
    return inputs, targets, mask


def sequence_task(name: str, n_train: int = 4096, n_test: int = 512, length: int = 6,
                  vocab: int = 8, seed: int = 0) -> Split:
    """A synthetic task (TASKS); `length` is n for copy and reversal (ignored by modadd)."""
    if name not in TASKS:
        raise ValueError(f"unknown sequence task {name!r} (allowed: {', '.join(TASKS)})")
    if vocab < 2 or length < 1:
        raise ValueError(f"sequence_task: need vocab >= 2 and length >= 1; got vocab={vocab}, "
                         f"length={length}")
    rng = np.random.default_rng([seed, TASKS.index(name)])
    if name == "modadd":
        # Only vocab^2 distinct problems: hold out a quarter of them, so the test set measures
        # generalization; training draws (with replacement) from the rest.
        pairs = rng.permutation(vocab * vocab)
        held = max(1, len(pairs) // 4)
        test = pairs[:min(held, n_test)]
        train = rng.choice(pairs[held:], size=n_train)
        draws = np.concatenate([train, test])
        x = np.column_stack([draws // vocab, draws % vocab])
    else:
        x = rng.integers(0, vocab, size=(n_train + n_test, length))
    xi, yi, mi = _pack(name, x, vocab)  # the test set is the rows after n_train
    return Split(xi[:n_train], yi[:n_train], xi[n_train:], yi[n_train:], mi[:n_train],
                 mi[n_train:])
