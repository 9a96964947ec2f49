"""Run directories: what a long command keeps so that ``--resume`` continues it after a
crash or a ``kill -9`` exactly where it stopped.

``fine train-collect`` keeps, after every checkpoint, everything its loop needs to go on
(models, optimisers, the torch Generators of the shuffles, the global torch RNG, the
collector's probe RNG and the arrays recorded so far); ``fine validate`` keeps each
retrained model's results. Every file is written to a temporary name and renamed
(:func:`fine_cli.artifacts.atomic_write`), so a kill at any moment leaves the state of
the last completed step, never a torn one.

A run directory is bound to the config and the data that made it: ``run.json`` holds the
resolved config and a hash of the data, and a resume with anything else is refused in
one sentence that names the first differing key. Layout: docs/ARTIFACTS.md, "Run
directories".
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fine_cli.artifacts import atomic_write
from fine_cli.errors import ConfigError, FineError, RunError

RUN_FILE = "run.json"
STATE_FILE = "state.pt"
# Files of a run directory that remove() deletes; nothing else there is touched.
OWN_PATTERNS = (RUN_FILE, STATE_FILE, "step-*.npz", "model-*.npz", "signals-*.npz", ".*.tmp")
# Bump when what a state file holds changes; an older state is refused, not misread.
STATE_VERSION = 1


def data_hash(parts: Iterable[Any]) -> str:
    """sha256 of arrays and tensors (dtype, shape, bytes), in order; None counts too."""
    h = hashlib.sha256()
    for part in parts:
        if part is None:
            h.update(b"none")
            continue
        a = part.detach().cpu().numpy() if isinstance(part, torch.Tensor) else np.asarray(part)
        a = np.ascontiguousarray(a)
        h.update(json.dumps([a.dtype.str, list(a.shape)]).encode())
        h.update(a.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def _first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """The dotted key path where two JSON values first differ, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            where = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                return where
            found = _first_difference(old[key], new[key], where)
            if found is not None:
                return found
        return None
    return None if old == new else (path or "(top level)")


class RunDir:
    """One run directory, bound to ``key``: ``{"command", "config", "data_sha256"}``.

    ``open(resume)``: with ``resume`` and a directory of the same key, its state is
    offered by :meth:`load_state`; with another key it is refused; without ``resume`` (or
    with nothing to resume) the run starts over, its old files removed.
    """

    def __init__(self, path: str | Path, key: dict[str, Any]) -> None:
        self.path = Path(path)
        self.key = json.loads(json.dumps(key, sort_keys=True, default=str))

    @property
    def started(self) -> bool:
        return (self.path / RUN_FILE).is_file()

    def open(self, resume: bool) -> bool:
        """Prepare the directory; True when there is a state to resume from."""
        if self.started and not resume:
            self.remove()
        if self.started:
            old = self._read_key()
            diff = _first_difference(old, self.key)
            if diff is not None:
                if diff.startswith("config."):
                    what = f"the config's '{diff.removeprefix('config.')}' differs"
                elif diff == "data_sha256":
                    what = "the training or test data differ"
                else:
                    what = f"its '{diff}' differs"
                raise ConfigError(
                    f"cannot resume from '{self.path}': {what} from the interrupted run's; "
                    "resume with the same config and data, or leave out --resume to start "
                    "over."
                )
            return (self.path / STATE_FILE).is_file()
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run directory '{self.path}' is a file; pass a directory path.")
        if not self.path.parent.is_dir():
            raise RunError(
                f"cannot create run directory '{self.path}': '{self.path.parent}' does not exist."
            )
        self.path.mkdir(exist_ok=True)
        text = json.dumps(self.key, sort_keys=True, indent=1).encode()
        atomic_write(self.path / RUN_FILE, lambda fh: fh.write(text))
        return False

    def _read_key(self) -> dict[str, Any]:
        try:
            key = json.loads((self.path / RUN_FILE).read_text())
        except (OSError, ValueError):
            raise ConfigError(
                f"run directory '{self.path}' has an unreadable {RUN_FILE}; run without "
                "--resume to start over."
            ) from None
        return key if isinstance(key, dict) else {}

    # ---- the loop's state ----------------------------------------------------------------

    def save_state(self, state: dict[str, Any]) -> None:
        """The state after a completed step (torch-serialisable: tensors, numbers, lists,
        dicts, strings), written atomically."""
        buf = io.BytesIO()
        torch.save({"version": STATE_VERSION, **state}, buf)
        data = buf.getvalue()
        atomic_write(self.path / STATE_FILE, lambda fh: fh.write(data))

    def load_state(self) -> dict[str, Any]:
        try:
            state = torch.load(self.path / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds on a damaged file
            raise RunError(
                f"the state in '{self.path}' cannot be read ({type(exc).__name__}); run without "
                "--resume to start over."
            ) from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise RunError(
                f"the state in '{self.path}' was written by another version of fine; run "
                "without --resume to start over."
            )
        return state

    # ---- arrays of one step ------------------------------------------------------------------

    def save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """``<name>.npz`` (uncompressed), atomically."""
        atomic_write(self.path / f"{name}.npz", lambda fh: np.savez(fh, **arrays))  # type: ignore[arg-type]

    def load_arrays(self, name: str) -> dict[str, np.ndarray] | None:
        """The arrays of ``<name>.npz``, or None when absent or unreadable (a step that
        never completed: it is computed again)."""
        p = self.path / f"{name}.npz"
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError):
            return None

    def remove(self) -> None:
        """Delete the run's own files (the key first: a half-removed directory is then not
        a run any more), and the directory when that leaves it empty."""
        if not self.path.is_dir():
            return
        (self.path / RUN_FILE).unlink(missing_ok=True)
        for pattern in OWN_PATTERNS:
            for p in self.path.glob(pattern):
                if p.is_file():
                    p.unlink(missing_ok=True)
        try:
            self.path.rmdir()
        except OSError:
            pass  # something else lives there: leave it


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The global torch RNG (CPU and, when used, CUDA): dropout and the like draw from it."""
    out: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def open_run(command: str, cfg: Any, path: str | Path, resume: bool) -> RunDir:
    """The run directory of ``command`` on ``cfg`` (a :class:`~fine_cli.config.Config`),
    bound to its resolved config and a hash of its data, opened (see :meth:`RunDir.open`)."""
    from fine_cli.config import config_to_dict
    from fine_cli.data import load_data

    data = load_data(cfg.data)
    parts = [data.train.x, data.train.y, data.clean_train_y, data.flip_mask, data.train.index]
    key = {
        "command": command,
        "config": config_to_dict(cfg),
        "data_sha256": data_hash([*parts, data.test.x, data.test.y]),
    }
    run = RunDir(path, key)
    run.open(resume)
    return run


def cached_step(
    run: RunDir | None,
    name: str,
    keys: tuple[str, ...],
    make: Callable[[], tuple[np.ndarray, ...]],
) -> tuple[np.ndarray, ...]:
    """The arrays ``keys`` of step ``name``: from the run directory when a previous run
    finished that step, else made now and kept there (``fine validate``'s models)."""
    if run is not None:
        got = run.load_arrays(name)
        if got is not None and all(k in got for k in keys):
            return tuple(got[k] for k in keys)
    values = make()
    if run is not None:
        run.save_arrays(name, dict(zip(keys, values, strict=True)))
    return values


def cached_signals(run: RunDir | None, name: str, make: Callable[[], Any]) -> Any:
    """A seed's :class:`~fine_cli.results.Signals`, kept as ``<name>.npz`` in the run
    directory (``fine validate``'s seeds)."""
    from fine_cli.artifacts import load_signals, save

    if run is None:
        return make()
    path = run.path / f"{name}.npz"
    if path.is_file():
        try:
            return load_signals(str(path))
        except FineError:
            pass  # a damaged file: made again
    signals = make()
    save(signals, str(path))
    return signals


class LoopState:
    """train-collect's loop in a run directory: :meth:`restore` before the first epoch,
    :meth:`save` after every checkpoint (rank 0 writes, every rank reads)."""

    def __init__(
        self,
        run: RunDir | None,
        models: list[torch.nn.Module],
        opts: list[torch.optim.Optimizer],
        gens: list[torch.Generator],
        collector: Any,
        device: torch.device,
        root: bool = True,
    ) -> None:
        self.run, self.models, self.opts, self.gens = run, models, opts, gens
        self.collector, self.device, self.root = collector, device, root
        self.saved_records = 0

    def restore(self, resume: bool) -> tuple[int, dict[str, float]]:
        """(epochs already done, timing so far); (0, {}) for a fresh start."""
        from fine_cli import distributed

        if self.run is None:
            return 0, {}
        has_state = self.run.open(resume) if self.root else False
        distributed.barrier()
        if not self.root:
            has_state = (self.run.path / STATE_FILE).is_file() and resume
        if not has_state:
            return 0, {}
        state = self.run.load_state()
        if len(state["models"]) != len(self.models):
            raise RunError(
                f"the state in '{self.run.path}' holds {len(state['models'])} models, this run "
                f"trains {len(self.models)}; run without --resume to start over."
            )
        for model, sd in zip(self.models, state["models"], strict=True):
            model.load_state_dict(sd)
        for opt, sd in zip(self.opts, state["opts"], strict=True):
            opt.load_state_dict(sd)
        for gen, st in zip(self.gens, state["gens"], strict=True):
            gen.set_state(st)
        set_rng_state(state["rng"], self.device)
        n_rec = int(state["collector"]["n_records"])
        records = [self.run.load_arrays(f"step-{c:05d}") for c in range(n_rec)]
        if any(r is None for r in records):
            raise RunError(
                f"the state in '{self.run.path}' lacks the arrays of a recorded checkpoint; "
                "run without --resume to start over."
            )
        self.collector.load_state_dict(state["collector"], records)
        self.saved_records = n_rec
        return int(state["epoch"]), {k: float(v) for k, v in state["timing"].items()}

    def save(self, epoch: int, timing: dict[str, float]) -> None:
        """The state after ``epoch``: new checkpoints' arrays first, then the state that
        counts them (a kill in between leaves the previous state, still whole)."""
        from fine_cli import distributed

        if self.run is not None and self.root:
            n_rec = len(self.collector.records)
            for c in range(self.saved_records, n_rec):
                self.run.save_arrays(f"step-{c:05d}", self.collector.record_arrays(c))
            self.run.save_state(
                {
                    "epoch": epoch,
                    "timing": dict(timing),
                    "models": [m.state_dict() for m in self.models],
                    "opts": [o.state_dict() for o in self.opts],
                    "gens": [g.get_state() for g in self.gens],
                    "rng": rng_state(self.device),
                    "collector": self.collector.state_dict(),
                }
            )
            self.saved_records = n_rec
        if self.run is not None:
            distributed.barrier()


__all__ = [
    "RUN_FILE",
    "STATE_FILE",
    "LoopState",
    "RunDir",
    "cached_signals",
    "cached_step",
    "data_hash",
    "open_run",
    "rng_state",
    "set_rng_state",
]
