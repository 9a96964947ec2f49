"""Stage 2 over signals that do not fit in memory: a signals directory
(:mod:`fine_cli.outofcore`) read a slab of training points at a time.

In self mode a point's score needs only that point's own arrays (its squared norms,
inner products with the probe sums, losses) and the small shared ones (probe batches,
learning rates), so the points are scored in blocks of ``STREAM_CHUNK``: each block is
a :class:`PointSlice` view that the methods read as they read whole signals, and the
scores go straight to ``.npy`` files when an output directory is given. Memory then
holds one block, whatever n is. The result equals :func:`fine_cli.stages.estimate.run`
on the same signals in memory, array for array (tests/test_out_of_core.py).

Methods that need every point at once (TRAK and influence functions: a curvature over
all points; confident learning: per-class thresholds) and test mode (every test point
against every training point) are not streamed: they read the arrays whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fine_cli import outofcore, registry
from fine_cli.errors import InputFileError, RunError
from fine_cli.estimators.options import EstimateOptions
from fine_cli.estimators.samples import SignalView, resolve_window
from fine_cli.results import Influence, Signals, make_meta, require_finite

# Training points per block: bounds the (block, C*R) float64 sample arrays.
STREAM_CHUNK = 65_536
# Methods whose self-mode score of a point reads only that point's arrays.
POINTWISE = ("fine", "tracin", "grad-cos", "loss", "margin")
# Per-point signals arrays (last axis n) that the pointwise methods read.
POINT_KEYS = ("sqnorm", "ip", "loss", "margin", "ip2")
# Arrays checked for NaN/inf block by block.
FINITE = ("sqnorm", "ip", "loss", "margin", "ip2")


@dataclass
class PointSlice(SignalView):
    """The signals of training points ``offset .. offset + n_train - 1`` of a set of
    ``n_total`` points: the probe batches keep their positions in the whole set."""

    offset: int = 0
    n_total: int = 0

    @property
    def population(self) -> int:
        return self.n_total

    def probe_slots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The probe-batch slots that hold this slice's points, positions within the slice."""
        rel: np.ndarray = np.asarray(self.probe_idx, np.int64) - self.offset
        inside = (rel >= 0) & (rel < self.n_train)
        ci, ri, ki = (axis[inside] for axis in np.indices(rel.shape)[:3])
        return ci, ri, ki, rel[inside]


def streams(signals: Signals, method: str) -> bool:
    """Whether ``method`` on ``signals`` is scored block by block: self-mode signals
    mapped from a directory, and a pointwise method."""
    return (
        signals.mode == "self"
        and method in POINTWISE
        and outofcore.is_result_dir(signals.source)
        and all(outofcore.file_of(signals[k]) is not None for k in POINT_KEYS if k in signals)
    )


def _check(signals: Signals) -> tuple[int, int]:
    """Shapes of the arrays read here (no value is read): (n, C)."""
    missing = [k for k in signals.REQUIRED if k not in signals]
    if missing:
        raise InputFileError(
            f"signals '{signals.source}' lack {', '.join(missing)}; re-create them with "
            "fine train-collect."
        )
    n, c = signals.n_train, signals.n_checkpoints
    pr = signals["probe_idx"]
    m, r = signals["sqnorm"].shape[0], pr.shape[1]
    signals.check_shape("probe_idx", (c, r, 2, pr.shape[3]))
    for k in ("sqnorm", "loss", "margin"):
        signals.check_shape(k, (m, c, n))
    signals.check_shape("ip", (m, c, r, 2, n))
    signals.check_shape("probe_sqnorm", (m, c, r, 2))
    if "ip2" in signals:
        signals.check_shape("ip2", (c, r, 2, n))
    if "heldout_loss" in signals:
        signals.check_shape("heldout_loss", (c,))
    if pr.size and (pr.min() < 0 or pr.max() >= n):
        raise InputFileError(
            f"signals '{signals.source}' 'probe_idx' points outside the training set; the "
            "directory is damaged."
        )
    require_finite(signals, ("lr", "probe_sqnorm", "heldout_loss"))
    return n, c


def _slice(signals: Signals, start: int, stop: int, window: int | None) -> PointSlice:
    """The view of points ``start:stop``, its arrays read from the files (first ``window``
    checkpoints only, when given)."""
    c = slice(0, window)
    read = {k: _points(signals, k, start, stop) for k in POINT_KEYS if k in signals}
    part = Signals(arrays=read, meta={}, source=signals.source)
    require_finite(part, FINITE)
    ip2 = read.get("ip2")
    heldout = signals.get("heldout_loss")
    return PointSlice(
        mode="self",
        lr=np.asarray(signals["lr"])[c],
        probe_idx=np.asarray(signals["probe_idx"])[c],
        sqnorm=read["sqnorm"][:, c],
        ip=read["ip"][:, c],
        probe_sqnorm=np.asarray(signals["probe_sqnorm"])[:, c],
        loss=read["loss"][:, c],
        margin=read["margin"][:, c],
        labels=_points(signals, "labels", start, stop),
        heldout_loss=None if heldout is None else np.asarray(heldout)[c],
        ip2=None if ip2 is None else ip2[c],
        offset=start,
        n_total=signals.n_train,
    )


class _Output:
    """Where the influence arrays go: in memory, or ``.npy`` files of a directory."""

    def __init__(self, n: int, out_dir: str | Path | None) -> None:
        self.n, self.dir = n, None if out_dir is None else Path(out_dir)
        self.arrays: dict[str, Any] = {}
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / outofcore.META_FILE).unlink(missing_ok=True)

    def array(self, key: str, shape: tuple[int, ...], dtype: Any) -> Any:
        if key not in self.arrays:
            if self.dir is None:
                self.arrays[key] = np.zeros(shape, dtype)
            else:
                outofcore.create_array(self.dir / f"{key}.npy", shape, dtype)
                self.arrays[key] = outofcore.ArrayFile(self.dir / f"{key}.npy")
        return self.arrays[key]

    def finish(self) -> dict[str, np.ndarray]:
        if self.dir is None:
            return self.arrays
        return {k: outofcore.map_array(self.dir / f"{k}.npy") for k in self.arrays}


def run(
    signals: Signals,
    method: str,
    options: EstimateOptions | None = None,
    out_dir: str | Path | None = None,
    chunk: int = STREAM_CHUNK,
) -> Influence:
    """:func:`fine_cli.stages.estimate.run` block by block (see the module text); with
    ``out_dir`` the arrays are written there as ``.npy`` files (complete the directory
    with :func:`fine_cli.outofcore.save_dir`)."""
    from fine_cli.stages.estimate import _caveats, method_arrays

    opts = options or EstimateOptions()
    found = registry.get(method)
    n, c_all = _check(signals)
    opts.check(c_all)
    first = _slice(signals, 0, min(n, 1), None)
    window = resolve_window(first, opts.checkpoints)
    out = _Output(n, out_dir)
    nan_se = 0
    view: PointSlice = first
    for s0 in range(0, n, chunk):
        s1 = min(n, s0 + chunk)
        view = _slice(signals, s0, s1, window)
        stats = method_arrays(view, found, opts)
        if not np.all(np.isfinite(stats["scores"])):
            raise RunError(
                f"method '{method}' produced non-finite scores; the signals are degenerate."
            )
        for key, values in stats.items():
            out.array(key, (1, n), np.float64)[:, s0:s1] = values.astype(np.float64)
        if "stderr" in stats:
            nan_se += int(np.isnan(stats["stderr"]).sum())
        for key, src in (("train_index", "train_index"), ("labels", "labels")):
            out.array(key, (n,), np.int64)[s0:s1] = _points(signals, src, s0, s1)
        out.array("flip_mask", (n,), bool)[s0:s1] = _points(signals, "flip_mask", s0, s1)
        out.array("group_ptr", (n + 1,), np.int64)[s0 + 1 : s1 + 1] = np.arange(s0 + 1, s1 + 1)
        out.array("group_members", (n,), np.int64)[s0:s1] = np.arange(s0, s1)
    out.array("query_index", (1,), np.int64)[0] = -1
    arrays = out.finish()
    extra: dict[str, Any] = {
        "checkpoints_used": view.n_checkpoints,
        "checkpoints_total": c_all,
        "checkpoints_rule": opts.checkpoints if opts.checkpoints is not None else "all",
    }
    if found.meta is not None:
        extra.update(found.meta(view, opts))
    # the in-memory stage's caveats, on the whole stderr (read back only when it has nan)
    extra.update(_caveats(method, view, arrays if nan_se else {}, opts.estimator))
    meta = make_meta(
        "influence",
        method=method,
        mode="self",
        n_samples=view.n_samples,
        config=signals.meta.get("config"),
        signals_sha256=signals.sha256,
        seeds=signals.meta.get("seeds"),
        dataset=signals.meta.get("dataset"),
        **extra,
    )
    source = str(out_dir) if out_dir is not None else "memory"
    return Influence(arrays=arrays, meta=meta, source=source)


def _points(signals: Signals, key: str, start: int, stop: int) -> np.ndarray:
    f = outofcore.file_of(signals[key])
    if f is not None:
        return outofcore.read_points(f, start, stop)
    return np.asarray(signals[key][start:stop])


__all__ = ["POINTWISE", "STREAM_CHUNK", "PointSlice", "run", "streams"]
