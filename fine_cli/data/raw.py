"""``RawData``, what every dataset source returns, and the per-class train/test split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fine_cli.config import DataConfig
from fine_cli.data.rng import STREAM_SPLIT, stream_rng
from fine_cli.errors import ConfigError


@dataclass(frozen=True)
class RawData:
    """One dataset as stored. ``x_*``: (n, ...) any dtype; ``y_*``: (n,) int64 in [0, K)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    # (k, ...) stored rows -> (k, *input_shape) float32, normalised.
    prepare: Callable[[np.ndarray], np.ndarray]
    # (n,) position of each point in its source split; None = 0..n-1.
    train_index: np.ndarray | None = None
    test_index: np.ndarray | None = None
    # Name of each class id, where the source has names (folders, CSV label strings).
    class_names: tuple[str, ...] | None = None


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per class, ``round(test_fraction * n_c)`` random points go to test.

    Returns (train positions, test positions), each sorted, int64.
    """
    rng = stream_rng(seed, STREAM_SPLIT)
    test_parts = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        n_test = round(test_fraction * members.size)
        test_parts.append(rng.permutation(members)[:n_test])
    test_idx = np.sort(np.concatenate(test_parts)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(y.size, dtype=np.int64), test_idx)
    return train_idx, test_idx


def split_raw(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    cfg: DataConfig,
    prepare: Callable[[np.ndarray], np.ndarray],
    class_names: tuple[str, ...] | None = None,
) -> RawData:
    """x: (n, ...), y: (n,) -> RawData split per class by data.test_fraction / subset_seed."""
    train_idx, test_idx = stratified_split(y, cfg.test_fraction, cfg.subset_seed)
    if train_idx.size < 2 or test_idx.size < 1:
        raise ConfigError(
            f"data.test_fraction={cfg.test_fraction} splits the {y.size} points of {name} into "
            f"{train_idx.size} train and {test_idx.size} test points; choose a fraction that "
            "leaves at least 2 and 1."
        )
    return RawData(
        x_train=x[train_idx],
        y_train=y[train_idx],
        x_test=x[test_idx],
        y_test=y[test_idx],
        n_classes=n_classes,
        prepare=prepare,
        train_index=train_idx,
        test_index=test_idx,
        class_names=class_names,
    )
