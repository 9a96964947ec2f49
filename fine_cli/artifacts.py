"""Saving and loading results (:mod:`fine_cli.results`) as ``.npz`` files: the one place
that touches them.

An artifact is an ``.npz`` file with plain numeric/string arrays and one JSON metadata
string (``__meta__``) that says what made it: its kind and schema version, the resolved
config, seeds, package versions and the hash of the artifact it was made from. Files are
written to a temporary name and renamed, so a failure never leaves a partial output;
``-`` means standard input / standard output, so stages compose in shell pipelines.
Nothing is ever unpickled.

Outputs (docs/ROBUSTNESS.md): an output path must be a regular file (or not exist yet) or
``-``; a device, FIFO, directory or symbolic link, or one of the command's own inputs, is
refused before any work (:func:`check_output`). A writer holds a lock beside its output
(``.<name>.lock``, an advisory ``flock``) from :func:`claim_output` until
:func:`release_outputs`, or for the write alone in :func:`atomic_write`: a second writer of
the same path is refused, and the holder removes the temporary files that killed writers
left (``.<name>.XXXXXXXX.tmp``).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import stat
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np

try:  # advisory locks; on a system without them, writers are not serialised
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from fine_cli.errors import ConfigError, FineError, InputFileError, RunError, echo
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
# Largest metadata string read (bytes, uncompressed); real metadata is a few kilobytes.
MAX_META_BYTES = 16 * 2**20
# Fixes that an output error's errno suggests.
_IO_HINTS = {
    errno.ENOSPC: "the disk is full; free space or write elsewhere",
    errno.EDQUOT: "the disk quota is exceeded; free space or write elsewhere",
    errno.EFBIG: "the file-size limit (ulimit -f) is reached; raise it or write elsewhere",
    errno.EACCES: "no permission to write there; choose another path",
    errno.EPERM: "no permission to write there; choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter one",
}


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
    failure (or Ctrl-C) never leaves a partial file at ``path``. A special file or a
    symbolic link at ``path`` is refused; an I/O error is a RunError naming the fix."""
    target = Path(path)
    parent = target.parent
    if not parent.is_dir():
        raise RunError(f"cannot write '{path}': directory '{parent}' does not exist; create it.")
    _refuse_special(target, "output")
    _refuse_input(target)
    took_lock = claim_output(target)
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        _refuse_special(target, "output")  # nothing became a link or a device meanwhile
        os.replace(tmp, target)
    except OSError as err:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise io_error(path, err) from None
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        if took_lock:
            release_outputs([target])
    return target


def io_error(path: str | Path, err: OSError) -> RunError:
    """A RunError for an OSError while writing ``path``: the system's words and the fix."""
    hint = _IO_HINTS.get(err.errno or 0, "check the path and the disk")
    return RunError(f"cannot write '{path}': {err.strerror or err}; {hint}.")


def write_stdout(data: bytes) -> None:
    """Write bytes to stdout; a closed pipe (``| head``) ends quietly."""
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        _silence_stdout()
    except OSError as err:
        raise io_error("standard output", err) from None


# ---- outputs: what may be written, and one writer at a time ------------------------------


def check_output(path: str | Path, inputs: Iterable[str | Path] = (), option: str = "-o") -> None:
    """Refuse, before any work, an output that fine would not write safely: a special file
    (device, FIFO, socket), a directory, a symbolic link, one of ``inputs``, or a path in
    a directory that does not exist or cannot be written. ``-`` (stdout) is always fine."""
    if str(path) == "-":
        return
    target = Path(path)
    _refuse_special(target, option)
    for inp in inputs:
        if str(inp) != "-" and _same_file(target, Path(inp)):
            raise ConfigError(
                f"{option} '{path}' is the input '{inp}' itself, which writing would replace; "
                "pass another output path."
            )
    parent = target.parent
    if not parent.is_dir():
        raise RunError(f"cannot write '{path}': directory '{parent}' does not exist; create it.")
    if not os.access(parent, os.W_OK):
        raise RunError(
            f"cannot write '{path}': directory '{parent}' is not writable (read-only or no "
            f"permission); choose another {option}."
        )


def _refuse_special(target: Path, option: str) -> None:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    except OSError as err:  # a name too long, a file where a directory should be
        raise io_error(target, err) from None
    if stat.S_ISREG(st.st_mode):
        return
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(
            f"{option} '{target}' is a symbolic link, which fine does not write through; "
            "pass the path of a regular file (the link's target, or a new name)."
        )
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(
            f"{option} '{target}' is a directory; pass the path of a file (in it, or beside it)."
        )
    what = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket"}.get(stat.S_IFMT(st.st_mode), "device")
    raise ConfigError(
        f"{option} '{target}' is a {what}, not a regular file, which fine would replace; "
        "pass the path of a regular file, or '-' for standard output."
    )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.abspath(a) == os.path.abspath(b)


# Locks held by this process: lock path -> open descriptor.
_HELD: dict[str, int] = {}
# Files (device, inode) read by the running CLI command, which its outputs must not
# replace (``fine rank r.npz -o r.npz``); None outside a command (library use).
_INPUTS: set[tuple[int, int]] | None = None


def begin_command() -> None:
    """From now on, remember the files read, and refuse to write over one of them."""
    global _INPUTS
    _INPUTS = set()


def end_command() -> None:
    """Release every output lock and forget the files read."""
    global _INPUTS
    release_outputs()
    _INPUTS = None


def note_input(path: str | Path) -> None:
    """Record ``path`` as read by the running command (nothing outside a command)."""
    if _INPUTS is not None and str(path) != "-":
        try:
            st = os.stat(path)
        except OSError:
            return
        _INPUTS.add((st.st_dev, st.st_ino))


def may_replace(path: str | Path) -> None:
    """Let the running command replace ``path`` although it read it (``fine run --reuse``
    replacing signals made by another config in its own RUN directory)."""
    if _INPUTS is None:
        return
    try:
        st = os.stat(path)
    except OSError:
        return
    _INPUTS.discard((st.st_dev, st.st_ino))


def _refuse_input(target: Path) -> None:
    if not _INPUTS:
        return
    try:
        st = os.stat(target)
    except OSError:
        return
    if (st.st_dev, st.st_ino) in _INPUTS:
        raise ConfigError(
            f"output '{target}' is one of this command's inputs, which writing would "
            "replace; pass another output path."
        )


def _lock_path(target: Path) -> str:
    return os.path.join(os.path.abspath(target.parent), f".{target.name}.lock")


def claim_output(path: str | Path, option: str = "-o") -> bool:
    """Lock ``path`` for this process until :func:`release_outputs` (True), or do nothing
    if it holds it already (False); refuse it if another process holds it; then remove the
    temporary files of writers that died before renaming theirs."""
    if str(path) == "-" or fcntl is None:
        return False
    target = Path(path)
    lock = _lock_path(target)
    if lock in _HELD:
        return False
    _HELD[lock] = _acquire(lock, path, option)
    _remove_stale_temps(target)
    return True


def _acquire(lock: str, path: str | Path, option: str) -> int:
    assert fcntl is not None
    for _ in range(8):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise io_error(path, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise RunError(
                f"another fine process{pid} is writing '{path}'; wait for it to finish or "
                f"choose another {option}."
            ) from None
        # the previous holder removes the lock file on release: ours must still be there
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise RunError(f"cannot lock '{path}': its lock file keeps changing; try again.")


def release_outputs(paths: Iterable[str | Path] | None = None) -> None:
    """Release the locks of ``paths`` (default: all that this process holds)."""
    locks = list(_HELD) if paths is None else [_lock_path(Path(p)) for p in paths]
    for lock in locks:
        fd = _HELD.pop(lock, None)
        if fd is None:
            continue
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)


def _remove_stale_temps(target: Path) -> None:
    """Remove ``.<name>.XXXXXXXX.tmp`` beside ``target``: with its lock held, no live
    writer owns one (the pattern is exact, so another output's temporaries never match)."""
    pattern = re.compile(re.escape(f".{target.name}.") + r"[A-Za-z0-9_]{8}\.tmp")
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        if pattern.fullmatch(name):
            stale = target.parent / name
            if stat.S_ISREG(os.lstat(stale).st_mode):
                stale.unlink(missing_ok=True)


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
    note_input(p)
    try:
        return p.read_bytes()
    except OSError as err:
        raise InputFileError(f"{kind} file '{path}' cannot be read: {err.strerror}.") from None


def load(
    path: str,
    kind: str | None = None,
    required: tuple[str, ...] | None = None,
    validate: bool = True,
) -> Result:
    """Load a result of ``kind`` (``-`` = standard input; None = whatever kind the file
    says) and validate it: its own schema (dtypes, shapes, finiteness, metadata types)
    and ``required`` arrays (default: the kind's); raise InputFileError with one sentence
    on any problem. ``validate=False`` checks only the kind and schema version (for
    ``fine inspect``, which shows a damaged file too)."""
    data = _read_bytes(path, kind or "result")
    name = "standard input" if path == "-" else f"'{path}'"
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise InputFileError(
                f"{name} is a bare .npy array, not a {kind or 'result'} .npz file."
            )
        with loaded as npz:
            files = list(npz.files)
            if META_KEY not in files:
                raise InputFileError(
                    f"{name} is an .npz file but not one written by fine (no metadata); "
                    f"pass a {kind or 'fine'} file made by {MADE_BY[kind or 'result']}."
                )
            meta_size = npz.zip.getinfo(f"{META_KEY}.npy").file_size if npz.zip else 0
            if meta_size > MAX_META_BYTES:
                raise InputFileError(
                    f"{name} has {meta_size} bytes of metadata, more than fine ever writes; "
                    f"re-create it with {MADE_BY[kind or 'result']}."
                )
            arrays = {k: npz[k] for k in files if k != META_KEY}
            meta = json.loads(str(npz[META_KEY]))
    except FineError:
        raise
    except (
        zipfile.BadZipFile,
        EOFError,
        OSError,
        ValueError,
        KeyError,
        RecursionError,
        json.JSONDecodeError,
    ):
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
            f"{name} is a fine file of unknown kind {echo(got_kind)}; pass a signals, "
            "influence, ranking or truth file."
        )
    if got_kind != kind:
        known = got_kind if isinstance(got_kind, str) and got_kind in MADE_BY else ""
        hint = f" (it was made by {MADE_BY[known]})" if known else ""
        what = (
            f"{_article(known)} {known} file"
            if known
            else f"a file of unknown kind {echo(got_kind)}"
        )
        raise InputFileError(
            f"{name} is {what}{hint}, but {_article(kind)} {kind} file is needed; "
            f"pass the output of {MADE_BY[kind]}."
        )
    want = SCHEMA_VERSIONS[kind]
    if meta.get("schema_version") != want:
        raise InputFileError(
            f"{name} has {kind} schema version {echo(meta.get('schema_version'))}, this fine reads "
            f"version {want}; re-create it with this version's {MADE_BY[kind]}."
        )
    result = RESULT_TYPES[kind](arrays=arrays, meta=meta, source=path)
    if validate:
        result.validate(required)
    return result


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


# The metadata field in which each kind records the content hash of its input.
INPUT_HASH = {
    "influence": ("signals", "signals_sha256"),
    "ranking": ("influence", "influence_sha256"),
}


def check_made_from(result: Result, source: Result) -> None:
    """Refuse, in one sentence with the fix, a ``result`` whose recorded input hash
    (``signals_sha256`` of an influence file, ``influence_sha256`` of a ranking) is not
    ``source``'s content hash. Files without a recorded hash pass; so do files of before
    version 0.2, which recorded the sha256 of the input file's bytes."""
    kind, key = INPUT_HASH.get(result.kind, ("", ""))
    if not kind:
        raise ConfigError(f"a {result.kind} file records no input file; nothing to check.")
    if source.kind != kind:
        raise ConfigError(
            f"{_article(result.kind)} {result.kind} file is made from a {kind} file, not "
            f"{_article(source.kind)} {source.kind} file; "
            f"pass the {kind} file it was made from."
        )
    recorded = result.meta.get(key)
    if not recorded or recorded == source.sha256:
        return
    path = Path(source.source) if source.source not in ("", "-") else None
    if path is not None and path.is_file():
        if hashlib.sha256(path.read_bytes()).hexdigest() == recorded:
            return
    raise InputFileError(
        f"{result.kind} {result.name} was made from another {kind} file than "
        f"{source.name} (it records {key} {str(recorded)[:12]}..., that file is "
        f"{source.sha256[:12]}...); re-run {MADE_BY[result.kind]} on {source.name}, or pass "
        f"the {kind} file it was made from."
    )


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
