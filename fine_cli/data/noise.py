"""Symmetric label noise: a fixed share of training labels moved to another class."""

from __future__ import annotations

import numpy as np

from fine_cli.data.rng import STREAM_FLIP, stream_rng
from fine_cli.errors import ConfigError


def flip_labels(
    y: np.ndarray, n_classes: int, rate: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly ``round(rate * n)`` labels, each to a class drawn uniformly from the others.

    y: (n,) integer labels in [0, n_classes). Returns (noisy labels (n,) int64, flip mask (n,)
    bool). Which points flip and the offsets they get depend only on (seed, n, rate), so
    the flips are independent of every other seed of an experiment.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ConfigError(f"labels to flip must be one-dimensional; got shape {y.shape}.")
    if n_classes < 2:
        raise ConfigError(f"label noise needs at least 2 classes; got n_classes={n_classes}.")
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"data.label_noise must lie in [0, 1]; got {rate}.")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ConfigError(
            f"labels must lie in [0, {n_classes}); got values in [{y.min()}, {y.max()}]."
        )
    n = y.shape[0]
    n_flip = round(rate * n)
    rng = stream_rng(seed, STREAM_FLIP)
    flipped = rng.choice(n, size=n_flip, replace=False)
    # An offset in 1..K-1 modulo K is uniform over the K-1 other classes.
    offsets = rng.integers(1, n_classes, size=n_flip)
    noisy = y.astype(np.int64, copy=True)
    noisy[flipped] = (noisy[flipped] + offsets) % n_classes
    mask = np.zeros(n, dtype=bool)
    mask[flipped] = True
    return noisy, mask
