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
      markov:   x_1..x_n from a second-order Markov chain (answer: every token from x_3 on,
                                              each predicted from all before it)
    Tokens x are uniform in [0, vocab) (markov: x_1, x_2 uniform, then x_t drawn from
    MARKOV_ALPHA-Dirichlet rows P(. | x_{t-2}, x_{t-1}) of a table that depends on vocab only,
    `markov_table`); SEP is the token `vocab`, so the model needs vocab + 1 token ids. The draws
    are a pure function of the seed. markov never saturates: its test loss is bounded below by
    the chain's conditional entropy (`markov_entropy`), so a model still learning at the end of
    a short run has room to be damaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MARKOV_ALPHA", "TASKS", "Split", "digits", "markov_entropy", "markov_table",
           "sequence_task"]

TASKS = ("copy", "reversal", "modadd", "markov")
MARKOV_ALPHA = 0.3
"""Dirichlet concentration of the markov rows: small, so each context has a few likely next
tokens (a learnable table whose entropy is well below log(vocab))."""


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


def markov_table(vocab: int) -> np.ndarray:
    """(vocab, vocab, vocab) float64: [a, b] is the distribution of the token after a, b."""
    rng = np.random.default_rng([TASKS.index("markov"), vocab])  # the task, not the run seed
    return rng.dirichlet(np.full(vocab, MARKOV_ALPHA), size=(vocab, vocab))


def markov_entropy(vocab: int) -> float:
    """The chain's conditional entropy in nats (uniform contexts): the least test loss any model
    can reach on markov when every context is equally likely."""
    p = markov_table(vocab)
    return float(-(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1).mean())


def _markov(rng: np.random.Generator, n: int, length: int, vocab: int) -> np.ndarray:
    cum = np.cumsum(markov_table(vocab), axis=-1)
    x = np.empty((n, length), np.int64)
    x[:, :2] = rng.integers(0, vocab, size=(n, 2))
    for t in range(2, x.shape[1]):
        u = rng.random(n)
        # inverse CDF; min() guards against a cumulative sum that ends a hair below 1
        x[:, t] = np.minimum((cum[x[:, t - 2], x[:, t - 1]] < u[:, None]).sum(axis=1),
                             vocab - 1)
    return x


def _pack(name: str, x: np.ndarray, vocab: int):
    """(inputs, targets, mask) of the sequences built from the draws x."""
    n = len(x)
    if name == "markov":
        inputs, targets = x[:, :-1], x[:, 1:]
        mask = np.zeros(targets.shape, bool)
        mask[:, 1:] = True  # targets[:, j] = x_{j+2} (1-based), after both of its context
        return inputs, targets, mask
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
    """A synthetic task (TASKS); `length` is n for copy, reversal and markov (at least 3 for
    markov; ignored by modadd)."""
    if name not in TASKS:
        raise ValueError(f"unknown sequence task {name!r} (allowed: {', '.join(TASKS)})")
    if vocab < 2 or length < 1:
        raise ValueError(f"sequence_task: need vocab >= 2 and length >= 1; got vocab={vocab}, "
                         f"length={length}")
    if name == "markov" and length < 3:
        raise ValueError(f"sequence_task: markov needs length >= 3 (two context tokens and an "
                         f"answer); got length={length}")
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
    elif name == "markov":
        x = _markov(rng, n_train + n_test, length, vocab)
    else:
        x = rng.integers(0, vocab, size=(n_train + n_test, length))
    xi, yi, mi = _pack(name, x, vocab)  # the test set is the rows after n_train
    return Split(xi[:n_train], yi[:n_train], xi[n_train:], yi[n_train:], mi[:n_train],
                 mi[n_train:])
