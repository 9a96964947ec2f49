"""Run under torchrun by tests/test_distributed.py: the sharded collection alone, on models
that every rank builds the same way (no training), so that it can be compared with one
process on the same models. Rank 0 writes the arrays to the .npz named by argv[1];
argv[2] is a directory for the per-point files of the directory storage."""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from fine_cli.batches import TensorPairs
from fine_cli.collector import Collector

N, D, CLASSES, CHUNK = 230, 6, 3, 40  # 6 chunks, the last one short: uneven shards


def setting() -> tuple[list[nn.Module], TensorPairs, TensorPairs]:
    """Two models and the data, the same in every process (fixed seeds)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen)
    y = torch.randint(0, CLASSES, (N,), generator=gen)
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, CLASSES)))
    return models, TensorPairs(x, y), TensorPairs(x[:7], y[:7])


def collect(shard: bool, test_mode: bool, out_dir: str | None = None) -> dict[str, np.ndarray]:
    """Two checkpoints' arrays; with ``out_dir`` the per-point ones written to files there
    (each rank its own block)."""
    models, data, queries = setting()
    col = Collector(
        models[0],
        models[1],
        data,
        probe_batch_size=25,
        probe_repeats=2,
        seed=5,
        chunk_size=CHUNK,
        test_set=queries if test_mode else None,
        shard=shard,
        out_dir=out_dir,
        n_checkpoints=2,
    )
    for step in range(2):
        col.checkpoint(lr=0.1, epoch=step + 1)
        with torch.no_grad():  # a deterministic change of the weights between checkpoints
            for m in models:
                for p in m.parameters():
                    p.mul_(0.9).add_(0.01)
    return {k: np.array(v) for k, v in col.arrays().items()}


def main() -> None:
    dist.init_process_group("gloo")
    out = {}
    for test_mode in (False, True):
        arrays = collect(shard=True, test_mode=test_mode)
        out.update({f"{'test' if test_mode else 'self'}/{k}": v for k, v in arrays.items()})
    arrays = collect(shard=True, test_mode=False, out_dir=sys.argv[2])  # collect.storage=directory
    out.update({f"dir/{k}": v for k, v in arrays.items()})
    if dist.get_rank() == 0:
        np.savez(sys.argv[1], **out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
