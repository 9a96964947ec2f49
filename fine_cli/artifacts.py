"""Saving and loading results (:mod:`fine_cli.results`) as ``.npz`` files: the one place
that touches them.

An artifact is an ``.npz`` file with plain numeric/string arrays and one JSON metadata
string (``__meta__``) that says what made it: its kind and schema version, the resolved
config, seeds, package versions and the hash of the artifact it was made from. Files are
written to a temporary name and renamed, so a failure never leaves a partial output;
``-`` means standard input / standard output, so stages compose in shell pipelines.
Nothing is ever unpickled.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np

from fine_cli.errors import FineError, InputFileError, RunError
from fine_cli.results import (
    MADE_BY,
    RESULT_TYPES,
    SCHEMA_VERSIONS,
    Influence,
    Ranking,
    Result,
    Signals,
    Truth,
)

META_KEY = "__meta__"


def _to_bytes(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in payload.items():
        if v.dtype == object:
            raise TypeError(f"array '{k}' has dtype object; artifacts hold plain arrays only")
    payload[META_KEY] = np.array(json.dumps(meta, sort_keys=True))
    np.savez_compressed(buf, **payload)  # type: ignore[arg-type]
    return buf.getvalue()


def save(result: Result, path: str) -> None:
    """Write a result atomically to ``path`` (``-`` = standard output)."""
    if result.meta.get("kind") != result.kind:
        raise ValueError(f"meta kind {result.meta.get('kind')!r} != {result.kind!r}")
    data = _to_bytes(result.arrays, result.meta)
    if path == "-":
        write_stdout(data)
        return
    atomic_write(path, lambda fh: fh.write(data))


def save_artifact(
    path: str, kind: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]
) -> None:
    """Write arrays and metadata as a result of ``kind`` (see :func:`save`)."""
    save(RESULT_TYPES[kind](arrays=arrays, meta=meta), path)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write a file through a temporary name in the same directory, then rename it: a
    failure (or Ctrl-C) never leaves a partial file at ``path``."""
    target = Path(path)
    parent = target.parent
    if not parent.is_dir():
        raise RunError(f"cannot write '{path}': directory '{parent}' does not exist; create it.")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_stdout(data: bytes) -> None:
    """Write bytes to stdout; a closed pipe (``| head``) ends quietly."""
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        _silence_stdout()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _silence_stdout() -> None:
    # Python would complain at exit when flushing a closed pipe; point stdout at devnull.
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _read_bytes(path: str, kind: str) -> bytes:
    if path == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise InputFileError(
                f"'-' reads a {kind} file from standard input, but nothing is piped in; "
                f"pipe in the output of {MADE_BY[kind]} or pass a file path.",
            )
        data = sys.stdin.buffer.read()
        if not data:
            raise InputFileError(
                f"standard input is empty; expected a {kind} file from {MADE_BY[kind]} "
                "(did the previous stage fail?).",
            )
        return data
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{kind} file '{path}' does not exist; make it with {MADE_BY[kind]}.")
    if not p.is_file():
        raise InputFileError(f"'{path}' is not a file; pass the path of a {kind} .npz file.")
    return p.read_bytes()


def load(path: str, kind: str | None = None, required: tuple[str, ...] | None = None) -> Result:
    """Load a result of ``kind`` (``-`` = standard input; None = whatever kind the file
    says) and validate it: its own schema (shapes, finiteness) and ``required`` arrays
    (default: the kind's); raise InputFileError with one sentence on any problem."""
    data = _read_bytes(path, kind or "result")
    name = "standard input" if path == "-" else f"'{path}'"
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise InputFileError(
                    f"{name} is a bare .npy array, not a {kind or 'result'} .npz file."
                )
            files = list(npz.files)
            if META_KEY not in files:
                raise InputFileError(
                    f"{name} is an .npz file but not one written by fine (no metadata); "
                    f"pass a {kind or 'fine'} file made by {MADE_BY[kind or 'result']}."
                )
            arrays = {k: npz[k] for k in files if k != META_KEY}
            meta = json.loads(str(npz[META_KEY]))
    except FineError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, json.JSONDecodeError):
        raise InputFileError(
            f"{name} is not a readable .npz file (truncated or corrupt?); "
            f"re-create it with {MADE_BY[kind or 'result']}."
        ) from None
    if not isinstance(meta, dict):
        raise InputFileError(
            f"{name} has metadata that is not a mapping; "
            f"re-create it with {MADE_BY[kind or 'result']}."
        )
    got_kind = meta.get("kind")
    if kind is None and got_kind in RESULT_TYPES:
        kind = str(got_kind)
    if kind is None:
        raise InputFileError(
            f"{name} is a fine file of unknown kind {got_kind!r}; pass a signals, influence, "
            "ranking or truth file."
        )
    if got_kind != kind:
        hint = f" (it was made by {MADE_BY[got_kind]})" if got_kind in MADE_BY else ""
        raise InputFileError(
            f"{name} is a {got_kind or 'unknown'} file{hint}, but a {kind} file is needed; "
            f"pass the output of {MADE_BY[kind]}."
        )
    want = SCHEMA_VERSIONS[kind]
    if meta.get("schema_version") != want:
        raise InputFileError(
            f"{name} has {kind} schema version {meta.get('schema_version')}, this fine reads "
            f"version {want}; re-create it with this version's {MADE_BY[kind]}."
        )
    result = RESULT_TYPES[kind](arrays=arrays, meta=meta, source=path)
    result.validate(required)
    return result


def load_signals(path: str) -> Signals:
    """A signals file (``-`` = standard input), validated."""
    return cast(Signals, load(path, "signals"))


def load_influence(path: str) -> Influence:
    """An influence file, validated."""
    return cast(Influence, load(path, "influence"))


def load_ranking(path: str) -> Ranking:
    """A ranking file, validated."""
    return cast(Ranking, load(path, "ranking"))


def load_truth(path: str) -> Truth:
    """A ground-truth file of ``fine validate --save-truth``, validated."""
    return cast(Truth, load(path, "truth"))


def load_artifact(path: str, kind: str, required: tuple[str, ...] = ()) -> Result:
    """:func:`load` with only the kind's own checks plus ``required``."""
    return load(path, kind, tuple(dict.fromkeys(RESULT_TYPES[kind].REQUIRED + required)))
