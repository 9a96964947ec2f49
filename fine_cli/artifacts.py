"""The .npz contracts between stages: save/load, schema version, provenance, validation.

An artifact is an ``.npz`` file with plain numeric/string arrays and one JSON metadata
string (``__meta__``) that says what made it: its kind and schema version, the resolved
config, seeds, package versions and the hash of the artifact it was made from. Files are
written to a temporary name and renamed, so a failure never leaves a partial output;
``-`` means standard input / standard output, so stages compose in shell pipelines.
Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from fine_cli.errors import FineError, InputFileError, RunError

# Bump a kind's version whenever its arrays change meaning; readers refuse other versions.
SCHEMA_VERSIONS = {"signals": 1, "influence": 1, "ranking": 1, "truth": 1}
META_KEY = "__meta__"
# Which stage makes each kind, for error messages that say what to run.
MADE_BY = {
    "signals": "fine train-collect",
    "influence": "fine estimate",
    "ranking": "fine rank",
    "truth": "fine validate --save-truth",
}


@dataclass
class Artifact:
    """Arrays plus metadata of one loaded artifact."""

    kind: str
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    sha256: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def __contains__(self, key: str) -> bool:
        return key in self.arrays


def versions() -> dict[str, str]:
    """Package versions worth recording for reproducibility."""
    out = {"python": platform.python_version()}
    for name in ("numpy", "torch", "scipy", "fine_cli"):
        mod = sys.modules.get(name)
        if mod is None and name != "fine_cli":
            try:
                mod = __import__(name)
            except ImportError:
                continue
        if name == "fine_cli":
            from importlib.metadata import PackageNotFoundError, version

            try:
                out[name] = version("fine-cli")
            except PackageNotFoundError:
                out[name] = "unknown"
        elif mod is not None:
            out[name] = str(getattr(mod, "__version__", "unknown"))
    return out


def make_meta(kind: str, **fields: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "kind": kind,
        "schema_version": SCHEMA_VERSIONS[kind],
        "versions": versions(),
    }
    meta.update(fields)
    return meta


def _to_bytes(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in payload.items():
        if v.dtype == object:
            raise TypeError(f"array '{k}' has dtype object; artifacts hold plain arrays only")
    payload[META_KEY] = np.array(json.dumps(meta, sort_keys=True))
    np.savez_compressed(buf, **payload)  # type: ignore[arg-type]
    return buf.getvalue()


def save_artifact(path: str, kind: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """Write an artifact atomically (``-`` = stdout); returns its sha256."""
    if meta.get("kind") != kind:
        raise ValueError(f"meta kind {meta.get('kind')!r} != {kind!r}")
    data = _to_bytes(arrays, meta)
    digest = hashlib.sha256(data).hexdigest()
    if path == "-":
        write_stdout(data)
        return digest
    atomic_write(path, lambda fh: fh.write(data))
    return digest


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


def load_artifact(path: str, kind: str, required: tuple[str, ...] = ()) -> Artifact:
    """Load and validate an artifact of the given kind, or raise FineError with one sentence."""
    data = _read_bytes(path, kind)
    name = "standard input" if path == "-" else f"'{path}'"
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise InputFileError(f"{name} is a bare .npy array, not a {kind} .npz file.")
            files = list(npz.files)
            if META_KEY not in files:
                raise InputFileError(
                    f"{name} is an .npz file but not one written by fine (no metadata); "
                    f"pass a {kind} file made by {MADE_BY[kind]}.",
                )
            arrays = {k: npz[k] for k in files if k != META_KEY}
            meta = json.loads(str(npz[META_KEY]))
    except FineError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, json.JSONDecodeError):
        raise InputFileError(
            f"{name} is not a readable .npz file (truncated or corrupt?); "
            f"re-create it with {MADE_BY[kind]}.",
        ) from None
    got_kind = meta.get("kind")
    if got_kind != kind:
        hint = f" (it was made by {MADE_BY[got_kind]})" if got_kind in MADE_BY else ""
        raise InputFileError(
            f"{name} is a {got_kind or 'unknown'} file{hint}, but a {kind} file is needed; "
            f"pass the output of {MADE_BY[kind]}.",
        )
    want = SCHEMA_VERSIONS[kind]
    if meta.get("schema_version") != want:
        raise InputFileError(
            f"{name} has {kind} schema version {meta.get('schema_version')}, this fine reads "
            f"version {want}; re-create it with this version's {MADE_BY[kind]}.",
        )
    missing = [k for k in required if k not in arrays]
    if missing:
        raise InputFileError(
            f"{name} lacks the array(s) {', '.join(missing)}; it is damaged or was edited; "
            f"re-create it with {MADE_BY[kind]}.",
        )
    return Artifact(
        kind=kind,
        arrays=arrays,
        meta=meta,
        sha256=hashlib.sha256(data).hexdigest(),
        source=path,
    )


def require_finite(art: Artifact, keys: tuple[str, ...]) -> None:
    """Refuse NaN/inf in the named float arrays with a sentence naming the array."""
    for k in keys:
        a = art.arrays.get(k)
        if a is not None and a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
            raise InputFileError(
                f"{art.kind} array '{k}' holds {bad} NaN/inf value(s) (training diverged?); "
                "lower train.lr or re-run train-collect.",
            )


def check_shape(art: Artifact, key: str, shape: tuple[int | None, ...]) -> None:
    a = art.arrays[key]
    ok = a.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, a.shape))
    if not ok:
        raise InputFileError(
            f"{art.kind} array '{key}' has shape {a.shape}, expected {shape} "
            f"(None = any); the file is inconsistent; re-create it with {MADE_BY[art.kind]}.",
        )
