"""``load_data``: a dataset from the registry, subsetted, normalised, with noisy labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fine_cli.config import DataConfig
from fine_cli.data.noise import flip_labels
from fine_cli.data.raw import RawData
from fine_cli.data.rng import STREAM_TEST_SUBSET, STREAM_TRAIN_SUBSET, stream_rng
from fine_cli.data.sources import DATASETS
from fine_cli.errors import ConfigError, InputFileError


@dataclass
class Split:
    """One split, ready for training or evaluation."""

    x: torch.Tensor  # (n, *input_shape) float32, normalised (see fine_cli.data.sources)
    y: torch.Tensor  # (n,) int64 labels as used; the training split's are after flipping
    index: np.ndarray  # (n,) int64 position of each point in its source split

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class LoadedData:
    name: str
    train: Split
    test: Split
    n_classes: int
    input_shape: tuple[int, ...]
    clean_train_y: torch.Tensor  # (n_train,) int64 labels before flipping
    flip_mask: np.ndarray  # (n_train,) bool, True where the label was flipped
    class_names: tuple[str, ...] | None = None  # name of each class id, where the set has names


def _subset(
    n_available: int, n_wanted: int | None, key: str, name: str, seed: int, stream: int
) -> np.ndarray:
    """Sorted positions of a random subset of n_wanted of n_available points (all if None)."""
    if n_wanted is None:
        return np.arange(n_available, dtype=np.int64)
    if n_wanted > n_available:
        raise ConfigError(
            f"{key}={n_wanted} is more than the {n_available} points available in {name}; "
            f"set it to at most {n_available}, or to null for all of them."
        )
    rng = stream_rng(seed, stream)
    return np.sort(rng.choice(n_available, size=n_wanted, replace=False)).astype(np.int64)


def _check_labels(y: np.ndarray, n_classes: int, name: str, split: str) -> None:
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise InputFileError(
            f"{name} {split} labels range over [{y.min()}, {y.max()}] but the set has "
            f"{n_classes} classes; replace the dataset files with the original ones."
        )


def _make_split(
    raw: RawData, train: bool, positions: np.ndarray, y: np.ndarray | None = None
) -> Split:
    x_all = raw.x_train if train else raw.x_test
    source = raw.train_index if train else raw.test_index
    labels = (raw.y_train if train else raw.y_test)[positions] if y is None else y
    index = positions if source is None else source[positions]
    return Split(
        x=torch.from_numpy(np.ascontiguousarray(raw.prepare(x_all[positions]))),
        y=torch.from_numpy(np.asarray(labels, dtype=np.int64).copy()),
        index=np.asarray(index, dtype=np.int64),
    )


def load_data(cfg: DataConfig) -> LoadedData:
    """Load ``cfg.dataset``; deterministic given ``cfg``.

    Order: the source's own split (or a per-class split by test_fraction), then the
    n_train / n_test subsets (subset_seed), then label flips on the training subset only
    (noise_seed).
    """
    raw = DATASETS[cfg.dataset](cfg)
    name = cfg.dataset
    _check_labels(raw.y_train, raw.n_classes, name, "training")
    _check_labels(raw.y_test, raw.n_classes, name, "test")

    train_pos = _subset(
        raw.y_train.size, cfg.n_train, "data.n_train", name, cfg.subset_seed, STREAM_TRAIN_SUBSET
    )
    test_pos = _subset(
        raw.y_test.size, cfg.n_test, "data.n_test", name, cfg.subset_seed, STREAM_TEST_SUBSET
    )
    clean_y = raw.y_train[train_pos].astype(np.int64)
    noisy_y, flip_mask = flip_labels(clean_y, raw.n_classes, cfg.label_noise, cfg.noise_seed)

    train = _make_split(raw, True, train_pos, noisy_y)
    test = _make_split(raw, False, test_pos)
    return LoadedData(
        name=name,
        train=train,
        test=test,
        n_classes=raw.n_classes,
        input_shape=tuple(int(d) for d in train.x.shape[1:]),
        clean_train_y=torch.from_numpy(clean_y.copy()),
        flip_mask=flip_mask,
        class_names=raw.class_names,
    )
