"""Stage 1 (Algorithm 1): train the main and auxiliary models side by side and collect,
at each checkpoint, the components of the f-INE signals (docs/ARTIFACTS.md).

Per checkpoint c and model m (eval mode, so BatchNorm uses running statistics):
R probe-batch pairs (B, B') are drawn once for all subsets; the engine returns every
training point's squared gradient norm and inner products with the 2R probe-batch
gradient sums, plus loss and margin; test mode adds the test points' quantities and
the (test x train) Gram block. Exclusion of S from the batches happens in Stage 2.

When the config lists trak or if (``experiment.methods`` or ``estimate.method``), the
projected features of fine_cli/features.py are collected after the last epoch as well,
for main, auxiliary and ``collect.features.extra_models`` more models trained alongside
(TRAK's ensemble); otherwise nothing of them is computed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fine_cli.artifacts import make_meta
from fine_cli.config import Config, config_to_dict
from fine_cli.data import LoadedData, load_data
from fine_cli.errors import ConfigError, RunError
from fine_cli.features import FEATURE_METHODS, FeatureRequest, collect, describe
from fine_cli.grads import GradEngine
from fine_cli.models import build_model

# progress(phase, epochs_done, epochs_total)
Progress = Callable[[str, int, int], None]
# on_checkpoint(c, epoch, [main, aux]) after checkpoint c's signals: lets tests and
# notebooks see the models whose gradients were collected.
CheckpointHook = Callable[[int, int, list[nn.Module]], None]


@dataclass
class Seeds:
    main: int
    aux: int
    probe: int
    test_points: int
    extra: list[int] = field(default_factory=list)  # TRAK-only ensemble members


def derive_seeds(cfg: Config) -> Seeds:
    """Independent streams from the one training seed (no global RNG state); the first
    three do not depend on how many extra models there are."""
    n_extra = cfg.collect.features.extra_models if feature_methods(cfg) else 0
    main, aux, probe, *extra = (
        int(s.generate_state(1)[0]) for s in np.random.SeedSequence(cfg.seed).spawn(3 + n_extra)
    )
    return Seeds(
        main=main, aux=aux, probe=probe, test_points=cfg.collect.test_points.seed, extra=extra
    )


def feature_methods(cfg: Config) -> set[str]:
    """The methods listed in the config that need projected features."""
    listed: set[str] = {*cfg.experiment.methods, cfg.estimate.method}
    return listed & set(FEATURE_METHODS)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"train.device '{name}' is not a device; use auto, cpu or cuda."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device is '{name}' but no CUDA device is available; use auto or cpu."
        )
    return dev


def checkpoint_epochs(epochs: int, n_checkpoints: int | None) -> np.ndarray:
    """(C,) 1-based epochs after which signals are collected, evenly spaced, ending at the last."""
    if n_checkpoints is None:
        return np.arange(1, epochs + 1, dtype=np.int64)
    if n_checkpoints > epochs:
        raise ConfigError(
            f"collect.checkpoints is {n_checkpoints} but train.epochs is only {epochs}; "
            "ask for at most one checkpoint per epoch."
        )
    return np.round(np.linspace(epochs / n_checkpoints, epochs, n_checkpoints)).astype(np.int64)


def make_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay
        )
    return torch.optim.SGD(
        model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay
    )


def train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int,
    gen: torch.Generator,
) -> None:
    model.train()
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    for start in range(0, x.shape[0], batch):
        idx = perm[start : start + batch]
        opt.zero_grad(set_to_none=False)  # reusing grad buffers: fresh allocations are slow
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()


def _test_points(
    cfg: Config, data: LoadedData
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """Test-mode queries: (x (m, ...), y (m,), positions in the split, source indices)."""
    tp = cfg.collect.test_points
    split = data.test if tp.source == "test" else data.train
    size = split.x.shape[0]
    if tp.indices is not None:
        pos = np.asarray(tp.indices, dtype=np.int64)
        bad = pos[(pos < 0) | (pos >= size)]
        if bad.size:
            raise ConfigError(
                f"collect.test_points.indices holds {int(bad[0])}, outside the {tp.source} split "
                f"of {size} points; use positions 0..{size - 1}."
            )
    else:
        if tp.n > size:
            raise ConfigError(
                f"collect.test_points.n is {tp.n} but the {tp.source} split has {size} points; "
                "lower it."
            )
        pos = np.sort(np.random.default_rng(tp.seed).choice(size, tp.n, replace=False))
    sel = torch.as_tensor(pos)
    return split.x[sel], split.y[sel], pos, split.index[pos]


def read_groups(path: str, train_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groups file: JSON list of lists of source indices -> CSR (ptr, member positions)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"collect.groups_file '{path}' does not exist; give a JSON list of lists."
        )
    try:
        groups = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(
            f"collect.groups_file '{path}' is not valid JSON; give a list of lists."
        ) from None
    if (
        not isinstance(groups, list)
        or not groups
        or not all(isinstance(g, list) and g and all(isinstance(i, int) for i in g) for g in groups)
    ):
        raise ConfigError(
            f"collect.groups_file '{path}' must be a non-empty JSON list of non-empty lists of "
            "integer training indices, e.g. [[0, 5], [7]]."
        )
    where = {int(s): i for i, s in enumerate(train_index)}
    missing = [i for g in groups for i in g if i not in where]
    if missing:
        raise ConfigError(
            f"collect.groups_file '{path}' names training index {missing[0]}, which is not in "
            "the training set used (check data.n_train)."
        )
    members = np.array([where[i] for g in groups for i in g], dtype=np.int64)
    ptr = np.cumsum([0] + [len(g) for g in groups]).astype(np.int64)
    return ptr, members


def run(
    cfg: Config, progress: Progress | None = None, on_checkpoint: CheckpointHook | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Train both models, collect the signals; returns (arrays, meta) of a signals artifact."""
    device = resolve_device(cfg.train.device)
    seeds = derive_seeds(cfg)
    data = load_data(cfg.data)
    x, y = data.train.x.to(device), data.train.y.to(device)
    n = x.shape[0]
    b = min(cfg.collect.probe_batch_size or cfg.train.batch_size, n)
    epochs = checkpoint_epochs(cfg.train.epochs, cfg.collect.checkpoints)
    test_mode = cfg.collect.mode == "test"
    arrays: dict[str, np.ndarray] = {}
    if test_mode:
        xq, yq, _, q_index = _test_points(cfg, data)
        xq, yq = xq.to(device), yq.to(device)
        arrays.update(test_index=q_index.astype(np.int64), test_labels=yq.cpu().numpy())
        if cfg.collect.groups_file:
            arrays["group_ptr"], arrays["group_members"] = read_groups(
                cfg.collect.groups_file, data.train.index
            )

    model_seeds = [seeds.main, seeds.aux, *seeds.extra]
    models = [
        build_model(cfg.model, data.input_shape, data.n_classes, s).to(device) for s in model_seeds
    ]
    opts = [make_optimizer(cfg, m) for m in models]
    gens = [torch.Generator().manual_seed(s) for s in model_seeds]
    probe_rng = np.random.default_rng(seeds.probe)
    buf = _Buffers(len(epochs), cfg.collect.probe_repeats, b, n, xq.shape[0] if test_mode else 0)
    train_s = collect_s = extra_s = 0.0
    c = 0
    for epoch in range(1, cfg.train.epochs + 1):
        if progress:
            progress("training", epoch - 1, cfg.train.epochs)
        t0 = time.perf_counter()
        for model, opt, gen in zip(models[:2], opts, gens):
            train_epoch(model, opt, x, y, cfg.train.batch_size, gen)
        _sync(device)
        t1 = time.perf_counter()
        train_s += t1 - t0
        # the extra models serve TRAK alone: their time is counted apart
        for model, opt, gen in zip(models[2:], opts[2:], gens[2:]):
            train_epoch(model, opt, x, y, cfg.train.batch_size, gen)
        _sync(device)
        extra_s += time.perf_counter() - t1
        if c < len(epochs) and epoch == epochs[c]:
            if progress:
                progress("collecting", epoch - 1, cfg.train.epochs)
            t0 = time.perf_counter()
            probe = np.stack(
                [
                    [np.sort(probe_rng.choice(n, b, replace=False)) for _ in range(2)]
                    for _ in range(cfg.collect.probe_repeats)
                ]
            )  # (R, 2, b)
            buf.probe_idx[c] = probe
            buf.lr[c] = opts[0].param_groups[0]["lr"]
            for mi, model in enumerate(models[:2]):
                engine = GradEngine(model, chunk_size=cfg.collect.chunk_size)
                _collect(engine, buf, mi, c, x, y, probe, (xq, yq) if test_mode else None)
            _sync(device)
            collect_s += time.perf_counter() - t0
            if on_checkpoint:
                on_checkpoint(c, epoch, models[:2])
            c += 1
    _check_finite(buf)
    arrays.update(buf.arrays(test_mode))
    req = FeatureRequest(
        methods=feature_methods(cfg),
        proj_dim=cfg.collect.features.proj_dim,
        seed=cfg.collect.features.seed,
        chunk_size=cfg.collect.chunk_size,
        n_classes=data.n_classes,
        input_shape=data.input_shape,
    )
    if req.wanted:
        if progress:
            progress("features", cfg.train.epochs, cfg.train.epochs)
        t0 = time.perf_counter()
        arrays.update(collect(req, models, x, y, (xq, yq) if test_mode else None))
        _sync(device)
        req.timing["total_s"] = round(time.perf_counter() - t0, 3)
    if progress:
        progress("done", cfg.train.epochs, cfg.train.epochs)
    arrays.update(
        train_index=data.train.index.astype(np.int64),
        labels=data.train.y.numpy().astype(np.int64),
        clean_labels=data.clean_train_y.numpy().astype(np.int64),
        flip_mask=data.flip_mask.astype(bool),
        checkpoint_epoch=epochs,
    )
    meta = make_meta(
        "signals",
        config=config_to_dict(cfg),
        mode=cfg.collect.mode,
        seeds=vars(seeds),
        dataset=data.name,
        n_classes=data.n_classes,
        input_shape=list(data.input_shape),
        test_source=cfg.collect.test_points.source if test_mode else None,
        device=str(device),
        timing={
            "train_s": round(train_s, 3),
            "collect_s": round(collect_s, 3),
            "train_extra_s": round(extra_s, 3),
        },
        features=describe(req, len(models), cfg.train.epochs) if req.wanted else None,
    )
    return arrays, meta


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Buffers:
    """Preallocated outputs, filled checkpoint by checkpoint (shapes in docs/ARTIFACTS.md)."""

    def __init__(self, n_ckpt: int, r: int, b: int, n: int, m: int) -> None:
        f32 = np.float32
        self.lr = np.zeros(n_ckpt, np.float64)
        self.probe_idx = np.zeros((n_ckpt, r, 2, b), np.int64)
        self.sqnorm = np.zeros((2, n_ckpt, n), f32)
        self.ip = np.zeros((2, n_ckpt, r, 2, n), f32)
        self.probe_sqnorm = np.zeros((2, n_ckpt, r, 2), f32)
        self.loss = np.zeros((2, n_ckpt, n), f32)
        self.margin = np.zeros((2, n_ckpt, n), f32)
        self.test_sqnorm = np.zeros((2, n_ckpt, m), f32)
        self.test_ip = np.zeros((2, n_ckpt, r, 2, m), f32)
        self.test_loss = np.zeros((2, n_ckpt, m), f32)
        self.test_margin = np.zeros((2, n_ckpt, m), f32)
        self.gram = np.zeros((2, n_ckpt, m, n), f32)

    def arrays(self, test_mode: bool) -> dict[str, np.ndarray]:
        out = {
            k: getattr(self, k)
            for k in ("lr", "probe_idx", "sqnorm", "ip", "probe_sqnorm", "loss", "margin")
        }
        if test_mode:
            for k in ("test_sqnorm", "test_ip", "test_loss", "test_margin", "gram"):
                out[k] = getattr(self, k)
        return out


def _collect(
    engine: GradEngine,
    buf: _Buffers,
    mi: int,
    c: int,
    x: torch.Tensor,
    y: torch.Tensor,
    probe: np.ndarray,
    queries: tuple[torch.Tensor, torch.Tensor] | None,
) -> None:
    r = probe.shape[0]
    batches = []
    for ri in range(r):
        for k in range(2):
            idx = torch.as_tensor(probe[ri, k], device=x.device)
            batches.append((x[idx], y[idx]))
            vec = engine.batch_grad_sum(x[idx], y[idx])
            buf.probe_sqnorm[mi, c, ri, k] = float(sum((v.double() ** 2).sum() for v in vec))
    # Inner products with the probe sums; the engine picks per layer the cheaper exact route.
    res = engine.per_sample(x, y, batches=batches)
    buf.sqnorm[mi, c] = res.sqnorm.cpu().numpy()
    buf.ip[mi, c] = res.ips.reshape(r, 2, -1).cpu().numpy()
    buf.loss[mi, c] = res.loss.cpu().numpy()
    buf.margin[mi, c] = res.margin.cpu().numpy()
    if queries is not None:
        xq, yq = queries
        tres = engine.per_sample(xq, yq, batches=batches)
        buf.test_sqnorm[mi, c] = tres.sqnorm.cpu().numpy()
        buf.test_ip[mi, c] = tres.ips.reshape(r, 2, -1).cpu().numpy()
        buf.test_loss[mi, c] = tres.loss.cpu().numpy()
        buf.test_margin[mi, c] = tres.margin.cpu().numpy()
        buf.gram[mi, c] = engine.gram(xq, yq, x, y).cpu().numpy()


def _check_finite(buf: _Buffers) -> None:
    for k in ("sqnorm", "ip", "loss"):
        if not np.all(np.isfinite(getattr(buf, k))):
            raise RunError(
                f"training diverged: non-finite values in the collected '{k}'; lower train.lr."
            )
