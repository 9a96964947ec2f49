"""Data parallelism for ``torchrun --nproc_per_node=P fine train-collect ...``.

Training: every model is wrapped in ``DistributedDataParallel``; every rank draws the same
global batches in the same order as one process would (the same torch Generator) and
trains on its own part of each (:func:`fine_cli.training.train_epoch`, ``shard=``).
Collection: the training set's chunks are split into P contiguous blocks, one per rank
(:func:`shard_range`); each rank computes its points' quantities, the probe-batch
gradient sums are all-reduced, and the per-point arrays are summed onto rank 0 (every
rank leaves zeros outside its block, so the sum is exact). Rank 0 writes the output.

The backend is NCCL when CUDA is present and ``train.device`` is not ``cpu``, gloo
otherwise. Where the hostname does not resolve, give torchrun ``--master-addr=127.0.0.1``
(or ``--local-addr 127.0.0.1``), or it retries forever.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
from torch import nn

from fine_cli.errors import ConfigError
from fine_cli.training import part_bounds

# How long a rank waits for the others at a collective before failing.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Dist:
    """This process's place in the group."""

    rank: int
    world: int
    local_rank: int
    backend: str

    @property
    def root(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world


def from_env(device_name: str) -> Dist | None:
    """Join the group that torchrun describes in the environment (``WORLD_SIZE`` > 1);
    None for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_available():
        raise ConfigError(
            "WORLD_SIZE is set but this torch has no torch.distributed; run one process."
        )
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device_name), timeout=TIMEOUT)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return Dist(dist.get_rank(), dist.get_world_size(), local, str(dist.get_backend()))


def backend_for(device_name: str) -> str:
    """NCCL when CUDA is present and ``train.device`` is not the CPU; gloo otherwise."""
    return "nccl" if torch.cuda.is_available() and device_name != "cpu" else "gloo"


def device_for(group: Dist, device: torch.device) -> torch.device:
    """Each rank its own GPU (``cuda:LOCAL_RANK``); the CPU is shared."""
    if device.type != "cuda":
        return device
    torch.cuda.set_device(group.local_rank)
    return torch.device("cuda", group.local_rank)


def wrap(model: nn.Module, group: Dist | None) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` for training (itself for one process).

    BatchNorm layers normalise each rank's part of a batch by that part's statistics, as
    under DDP everywhere (running statistics come from rank 0): models with BatchNorm
    train slightly differently from one process. They are not converted to SyncBatchNorm,
    which would replace the modules that the collector's hooks hold.
    """
    if group is None:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if next(model.parameters()).is_cuda:
        return DistributedDataParallel(model, device_ids=[group.local_rank])
    return DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def active() -> tuple[int, int] | None:
    """``(rank, world)`` of an initialised group of more than one process, else None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return dist.get_rank(), dist.get_world_size()


def is_root() -> bool:
    """True outside a group and on rank 0."""
    here = active()
    return here is None or here[0] == 0


def shard_range(n: int, chunk: int, rank: int, world: int) -> range:
    """This rank's contiguous block of points: whole chunks of ``chunk`` points, the
    chunks split as evenly as possible, so that each chunk is the one a single process
    would compute."""
    n_chunks = -(-n // chunk)
    bounds = part_bounds(n_chunks, world)
    return range(min(n, bounds[rank] * chunk), min(n, bounds[rank + 1] * chunk))


def _device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_to_root(a: np.ndarray) -> np.ndarray:
    """The sum of ``a`` over the ranks, on rank 0 (other ranks get their input back)."""
    import torch.distributed as dist

    t = torch.from_numpy(np.ascontiguousarray(a)).to(_device())
    dist.reduce(t, dst=0, op=dist.ReduceOp.SUM)
    return t.cpu().numpy()


def all_reduce_(tensors: list[torch.Tensor]) -> None:
    """Sum every tensor over the ranks, in place."""
    import torch.distributed as dist

    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    import torch.distributed as dist

    if active() is not None:
        dist.barrier()


def close() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "Dist",
    "active",
    "all_reduce_",
    "backend_for",
    "barrier",
    "broadcast_object",
    "close",
    "device_for",
    "from_env",
    "is_root",
    "reduce_to_root",
    "shard_range",
    "unwrap",
    "wrap",
]
