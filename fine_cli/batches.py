"""Reading a ``torch.utils.data.Dataset`` of ``(x, y)`` pairs in batches and chunks.

Training and collection read the training set through a ``DataLoader``, so that it need
not sit in memory as one tensor. Datasets that can return a whole batch at once (a
``__getitems__`` method, as :class:`TensorPairs` has) skip the per-item Python loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from fine_cli.errors import ConfigError


def size(dataset: Dataset) -> int:
    """``len(dataset)``; a dataset without a length is refused (points are indexed 0..n-1)."""
    if not hasattr(dataset, "__len__"):
        raise ConfigError(
            f"the dataset ({type(dataset).__name__}) has no len(); give a map-style "
            "torch.utils.data.Dataset with __len__ and __getitem__."
        )
    return len(dataset)


class Batch(tuple):
    """An already collated ``(x, y)`` batch (what ``__getitems__`` returns)."""


class TensorPairs(Dataset):
    """``(x[i], y[i])`` pairs of two tensors with a common first dimension; a batch of
    indices is one indexing operation, not one Python call per item."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}.")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.x.device)
        return Batch((self.x[idx], self.y[idx]))


def collate(items: Any) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of a batch: passed through when already collated, else stacked."""
    if isinstance(items, Batch):
        return items[0], items[1]
    x, y = default_collate(items)
    return x, y


class ShuffledBatches(Sampler[list[int]]):
    """Batches of one random permutation per pass, drawn from ``generator``:
    ``torch.randperm(n, generator=generator)`` cut into batches of ``batch_size`` (the last
    one may be smaller). The batches of the built-in training; a loop of your own that
    uses it sees the same batches in the same order."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __iter__(self) -> Iterator[list[int]]:
        perm = torch.randperm(self.n, generator=self.generator)
        # one batch at a time to a list: a list of all n positions costs ~36 bytes a point
        for start in range(0, self.n, self.batch_size):
            yield perm[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


class _Spans(Sampler[list[int]]):
    def __init__(self, indices: Sequence[int], size: int) -> None:
        # a range stays a range: listing millions of positions up front costs memory
        self.indices = indices if isinstance(indices, range) else list(indices)
        self.size = size

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, len(self.indices), self.size):
            yield list(self.indices[start : start + self.size])

    def __len__(self) -> int:
        return -(-len(self.indices) // self.size)


def loader(dataset: Dataset, batch_sampler: Sampler[list[int]], **kwargs: Any) -> DataLoader:
    """A ``DataLoader`` over ``batch_sampler`` that keeps pre-collated batches as they are."""
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate, **kwargs)


def chunks(
    dataset: Dataset,
    chunk_size: int,
    indices: Sequence[int] | None = None,
    **kwargs: Any,
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """``(start, x, y)`` for consecutive chunks of ``chunk_size`` points, in index order;
    ``start`` counts from 0 within ``indices`` (default: every point)."""
    idx = range(size(dataset)) if indices is None else indices
    start = 0
    for x, y in loader(dataset, _Spans(idx, chunk_size), **kwargs):
        yield start, x, y
        start += int(x.shape[0])


def fetch(dataset: Dataset, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of the given positions, as one batch."""
    idx = [int(i) for i in indices]
    getitems = getattr(dataset, "__getitems__", None)
    if getitems is not None:
        return collate(getitems(idx))
    return collate([dataset[i] for i in idx])
