"""The collector's per-point arrays written straight to a signals directory
(``collect.storage: directory``; :mod:`fine_cli.outofcore`).

Every array whose last axis runs over the n training points is preallocated as
``<dir>/<key>.npy`` with its full shape, checkpoints included, and each chunk's values are
written into it as they are computed: collection holds one chunk in memory, whatever n
is. The small arrays (probe batches, test points) stay in memory until the end. Shapes
as in docs/ARTIFACTS.md; ``C`` here is the number of checkpoints planned, and a run that
records fewer (``collect.patience``) has its files cut to the recorded ones at the end.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fine_cli.errors import ConfigError
from fine_cli.outofcore import META_FILE, ArrayFile, create_array, map_array

# Per-point arrays a checkpoint may hold (point_shapes() says which are recorded).
_POINT = ("sqnorm", "ip", "loss", "margin", "ip2", "gram")
# Rows per write when a per-point default (train_index, flip_mask) is written.
WRITE_BLOCK = 1 << 20


def point_shapes(
    n_models: int, n_checkpoints: int, r: int, n: int, m: int, moments: bool
) -> dict[str, tuple[tuple[int, ...], int | None, Any]]:
    """key -> (full shape, checkpoint axis or None, dtype) of the per-point arrays."""
    f32 = np.float32
    mc = (n_models, n_checkpoints)
    out: dict[str, tuple[tuple[int, ...], int | None, Any]] = {
        "sqnorm": ((*mc, n), 1, f32),
        "ip": ((*mc, r, 2, n), 1, f32),
        "loss": ((*mc, n), 1, f32),
        "margin": ((*mc, n), 1, f32),
        "labels": ((n,), None, np.int64),
    }
    if moments:
        out["ip2"] = ((n_checkpoints, r, 2, n), 0, f32)
    if m:
        out["gram"] = ((*mc, m, n), 1, f32)
    return out


class SignalDirectory:
    """The preallocated per-point files of one collection run in ``path``."""

    def __init__(
        self,
        path: str | Path,
        shapes: dict[str, tuple[tuple[int, ...], int | None, Any]],
        create: bool = True,
    ) -> None:
        self.path = Path(path)
        self.shapes = shapes
        if not create:  # another process (rank 0) prepared the files
            return
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / META_FILE).unlink(missing_ok=True)  # incomplete until saved
        # Files of the right shape are kept (a resumed run continues in them): every
        # checkpoint that ends up in the output is written whole by this run.
        for key, (shape, _, dtype) in shapes.items():
            f = self.file(key)
            if _header(f) != (shape, np.dtype(dtype)):
                create_array(f, shape, dtype)

    def file(self, key: str) -> Path:
        return self.path / f"{key}.npy"

    def place(self, rec: dict[str, Any], c: int) -> dict[str, Any]:
        """``rec`` (one checkpoint's in-memory arrays) with writers into checkpoint ``c``
        of the files for the per-point arrays; per-point arrays that are not recorded
        (``ip2`` without moments) are dropped."""
        n = self.shapes["labels"][0][0]
        out = {
            k: v
            for k, v in rec.items()
            if not (isinstance(v, np.ndarray) and v.ndim and v.shape[-1] == n and k in _POINT)
        }
        for key, (_, axis, _) in self.shapes.items():
            if axis is not None:
                out[key] = ArrayFile(self.file(key), axis, c)
        return out

    def labels(self) -> ArrayFile:
        return ArrayFile(self.file("labels"))

    def recorded(self, key: str, n_recorded: int) -> np.ndarray:
        """The mapped array of ``key``, cut to ``n_recorded`` checkpoints when fewer than
        planned were recorded."""
        shape, axis, dtype = self.shapes[key]
        f = self.file(key)
        if axis is None or shape[axis] == n_recorded:
            return map_array(f)
        cut = list(shape)
        cut[axis] = n_recorded
        tmp = self.path / f".{key}.cut.npy"
        create_array(tmp, tuple(cut), dtype)
        src, dst = ArrayFile(f), ArrayFile(tmp)
        for lead in np.ndindex(*shape[:axis]):
            for c in range(n_recorded):
                dst[(*lead, c)] = src[(*lead, c)]
        tmp.replace(f)
        self.shapes[key] = (tuple(cut), axis, dtype)
        return map_array(f)

    def mapped_default(
        self,
        key: str,
        values: np.ndarray | None,
        fill: Callable[[int, int], np.ndarray] | None,
    ) -> np.ndarray:
        """``<key>.npy`` holding ``values`` or, when None, ``fill(start, stop)`` written
        block by block (``train_index``, ``flip_mask`` of n points), mapped."""
        f = self.file(key)
        if values is not None:
            np.save(f, np.asarray(values))
            return map_array(f)
        assert fill is not None
        first = fill(0, 0)
        n = self.shapes["labels"][0][0]
        create_array(f, (n,), first.dtype)
        writer = ArrayFile(f)
        for s in range(0, n, WRITE_BLOCK):
            writer[s : s + WRITE_BLOCK] = fill(s, min(n, s + WRITE_BLOCK))
        return map_array(f)


def _header(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """(shape, dtype) of an ``.npy`` file, or None when absent or unreadable."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(fh)
        return tuple(shape), np.dtype(dtype)
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _size(n_bytes: float) -> str:
    """Bytes in the largest binary unit that keeps the number at least 1."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{int(n_bytes)} bytes"


def check_gram_fits(
    n_models: int, n_checkpoints: int, m: int, n: int, out_dir: str | Path | None
) -> None:
    """Refuse, before any training, a test-mode run whose Gram block ``(M, C, m, n)``
    float32 would not fit: in memory (held twice while the checkpoints are stacked, once
    per process on this machine) or, with ``out_dir``, on its disk."""
    size = 4 * n_models * n_checkpoints * m * n
    shape = (
        f"{n_models} model(s) x {n_checkpoints} checkpoints x {m} test points x {n:,} "
        f"training points"
    )
    if out_dir is None:
        procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        need, have = 2 * size * procs, available_memory()
        where, fix = "memory available", ", or set collect.storage=directory to keep it on disk"
        extra = " (twice that while the checkpoints are stacked)"
    else:
        probe = Path(out_dir)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        need, have = size, shutil.disk_usage(probe).free
        where, fix, extra = f"free disk space under '{probe}'", "", ""
    if have is not None and need > have:
        raise ConfigError(
            f"collect.mode=test keeps a Gram block of {shape} in float32, {_size(size)}{extra}, "
            f"more than the {_size(have)} of {where}; lower collect.test_points.n, "
            f"collect.checkpoints or data.n_train{fix}."
        )


__all__ = ["SignalDirectory", "available_memory", "check_gram_fits", "point_shapes"]
