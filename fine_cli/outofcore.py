"""Results as directories of ``.npy`` files, for training sets beyond memory.

A result directory holds one ``<array>.npy`` per array and ``meta.json`` (the metadata,
written last: a directory without it is incomplete). The collector writes the per-point
arrays into preallocated ``.npy`` files chunk by chunk as it computes them
(:class:`ArrayFile`), so that no ``(M, C, n)`` array is ever in memory; readers map them
(``numpy.load(mmap_mode="r")``) or read slabs of points (:func:`read_points`).

Mapped pages that a process has touched count in its resident memory until they are
unmapped, so every write and every slab read here maps the file, copies, and unmaps at
once: the page cache holds the data, the process holds one chunk.

Layout: docs/ARTIFACTS.md, "Result directories".
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fine_cli.artifacts import atomic_write
from fine_cli.errors import ConfigError, InputFileError, RunError
from fine_cli.results import MADE_BY, RESULT_TYPES, SCHEMA_VERSIONS, Result

META_FILE = "meta.json"
# Bytes per read when hashing a directory's arrays.
HASH_BLOCK = 1 << 22


def is_result_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory (complete or not) rather than a file."""
    return str(path) != "-" and Path(path).is_dir()


def wants_dir(path: str | Path) -> bool:
    """Whether an output path names a directory: it ends with ``/`` or is one already."""
    return str(path) != "-" and (str(path).endswith(os.sep) or Path(path).is_dir())


def claim_dir(path: str | Path, *inputs: str | Path) -> None:
    """Before any work: refuse a directory output that cannot be written, and lock it
    against a second writer (:func:`fine_cli.artifacts.claim_output`)."""
    from fine_cli import artifacts

    if str(path) == "-":
        raise ConfigError(
            "collect.storage=directory writes a directory of .npy files, not a stream; pass "
            "-o DIR/ instead of -o -."
        )
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ConfigError(
            f"-o '{path}' is a file, but the signals go to a directory here; pass a directory "
            "path, e.g. -o signals/."
        )
    if any(str(i) != "-" and Path(i).resolve() == target.resolve() for i in inputs):
        raise ConfigError(f"-o '{path}' is an input of this command; pass another output path.")
    parent = target.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise RunError(f"cannot write '{path}': directory '{parent}' is missing or not writable.")
    artifacts.claim_output(target)


def create_array(path: Path, shape: tuple[int, ...], dtype: Any) -> None:
    """A zero-filled ``.npy`` file of ``shape`` (sparse on disk until written)."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=shape)
    del arr


class ArrayFile:
    """Writes into one checkpoint's slice of an ``.npy`` file, mapping it per write.

    ``view[index] = value`` writes ``full[index']`` where ``index'`` is ``index`` with the
    checkpoint ``c`` inserted at ``axis`` (0 or 1); ``axis=None``: no checkpoint axis.
    """

    def __init__(self, path: Path, axis: int | None = None, c: int = 0) -> None:
        self.path, self.axis, self.c = path, axis, c

    def at(self, c: int) -> ArrayFile:
        return ArrayFile(self.path, self.axis, c)

    def _index(self, index: Any) -> tuple[Any, ...]:
        idx = index if isinstance(index, tuple) else (index,)
        if self.axis is None:
            return idx
        if self.axis == 0:
            return (self.c, *idx)
        if not idx or idx[0] is Ellipsis:
            raise ValueError("index the model axis before the points of an ArrayFile")
        return (idx[0], self.c, *idx[1:])

    def __setitem__(self, index: Any, value: Any) -> None:
        arr = np.load(self.path, mmap_mode="r+")
        arr[self._index(index)] = value
        del arr  # unmap: the dirty pages stay in the page cache, not in this process

    def __getitem__(self, index: Any) -> np.ndarray:
        arr = np.load(self.path, mmap_mode="r")
        out = np.array(arr[self._index(index)])
        del arr
        return out


def read_points(path: Path, start: int, stop: int) -> np.ndarray:
    """``full[..., start:stop]`` of an ``.npy`` file, copied (the mapping is dropped)."""
    arr = np.load(path, mmap_mode="r")
    out = np.array(arr[..., start:stop])
    del arr
    return out


def map_array(path: Path) -> np.ndarray:
    """A read-only mapping of an ``.npy`` file (``numpy.memmap``)."""
    return np.load(path, mmap_mode="r")


def file_of(array: np.ndarray) -> Path | None:
    """The file a mapped array reads, or None for an array in memory."""
    name = getattr(array, "filename", None)
    return Path(name).resolve() if name else None


# ---- saving and loading ----------------------------------------------------------------


def save_dir(result: Result, path: str | Path) -> None:
    """Write ``result`` as a directory: every array not already mapped from
    ``<path>/<key>.npy`` is written there (atomically), then ``meta.json``."""
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    (target / META_FILE).unlink(missing_ok=True)  # incomplete until the end
    for key, value in result.arrays.items():
        dest = (target / f"{key}.npy").resolve()
        if file_of(value) == dest:
            continue
        _write_npy(dest, _plain(value))
    meta = json.dumps(result.meta, sort_keys=True, default=str)
    atomic_write(target / META_FILE, lambda fh: fh.write(meta.encode()))


def _write_npy(dest: Path, value: np.ndarray) -> None:
    atomic_write(dest, lambda fh: np.save(fh, value))


def _plain(value: Any) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype == object:
        raise TypeError("result arrays hold plain numbers only")
    return a


def load_dir(path: str | Path, kind: str | None = None) -> Result:
    """A result directory as a :class:`~fine_cli.results.Result` of mapped arrays, its
    content hash computed by streaming (the same as :func:`fine_cli.results.content_hash`).
    Only what needs no full read is checked here; streaming readers check the rest."""
    where = Path(path)
    meta_path = where / META_FILE
    want = kind or "result"
    if not meta_path.is_file():
        raise InputFileError(
            f"directory '{path}' holds no {META_FILE}: it is not a fine result, or the run "
            f"that writes it did not finish; re-run {MADE_BY[want]} (with --resume)."
        )
    try:
        meta = json.loads(meta_path.read_text())
        arrays = {p.stem: map_array(p) for p in sorted(where.glob("*.npy"))}
    except (OSError, ValueError):
        raise InputFileError(
            f"directory '{path}' has an unreadable {META_FILE} or .npy file (truncated or "
            f"corrupt?); re-create it with {MADE_BY[want]}."
        ) from None
    got = meta.get("kind") if isinstance(meta, dict) else None
    if got not in RESULT_TYPES or (kind is not None and got != kind):
        raise InputFileError(
            f"directory '{path}' holds a {got or 'unknown'} result, but a {want} is needed; "
            f"pass the output of {MADE_BY[want]}."
        )
    if meta.get("schema_version") != SCHEMA_VERSIONS[got]:
        raise InputFileError(
            f"directory '{path}' has {got} schema version {meta.get('schema_version')}, this "
            f"fine reads version {SCHEMA_VERSIONS[got]}; re-create it with {MADE_BY[got]}."
        )
    result = RESULT_TYPES[got](arrays=arrays, meta=meta, source=str(path))
    missing = [k for k in result.REQUIRED if k not in arrays]
    if missing:
        raise InputFileError(
            f"{got} directory '{path}' lacks {', '.join(missing)}.npy; it is damaged or was "
            f"edited; re-create it with {MADE_BY[got]}."
        )
    result._hash = streamed_hash(arrays, meta)
    return result


def open_result(path: str | Path, kind: str | None = None) -> Any:
    """A result from a directory (:func:`load_dir`) or a file
    (:func:`fine_cli.artifacts.load`, validated)."""
    from fine_cli import artifacts

    if is_result_dir(path):
        return load_dir(path, kind)
    return artifacts.load(str(path), kind)


def streamed_hash(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """:func:`fine_cli.results.content_hash` of mapped arrays, read in blocks."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = arrays[key]
        h.update(json.dumps([key, a.dtype.str, list(a.shape)]).encode())
        for block in _byte_blocks(a):
            h.update(block)
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _byte_blocks(a: np.ndarray) -> Iterator[bytes]:
    src = file_of(a)
    if src is None or not a.flags.c_contiguous:
        yield np.ascontiguousarray(a).tobytes()
        return
    offset = int(getattr(a, "offset", 0))
    left = a.nbytes
    with open(src, "rb") as fh:  # plain reads: the page cache, not this process, holds them
        fh.seek(offset)
        while left > 0:
            block = fh.read(min(HASH_BLOCK, left))
            if not block:
                raise RunError(f"'{src}' is shorter than its header says; it is truncated.")
            left -= len(block)
            yield block


__all__ = [
    "META_FILE",
    "ArrayFile",
    "claim_dir",
    "create_array",
    "file_of",
    "is_result_dir",
    "load_dir",
    "map_array",
    "open_result",
    "read_points",
    "save_dir",
    "streamed_hash",
    "wants_dir",
]
