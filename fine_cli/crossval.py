"""Out-of-fold predicted probabilities: what confident learning (method ``confident``,
:mod:`fine_cli.estimators.confident`) scores.

The training set is dealt into ``K`` folds, stratified by the observed label; for each
fold a fresh model of the config's architecture and training is trained on the other
``K - 1`` folds and predicts the softmax probabilities of the held-out fold (eval mode).
Every point gets one probability vector from a model that never saw it: cleanlab's
``estimate_cv_predicted_probabilities``, with the run's own network in place of a
scikit-learn classifier. Train-collect calls :func:`out_of_fold` when the config lists a
method that needs it (``Method.crossval``), as it collects TRAK's features.

Seeds: one stream of the run's training seed (``cfg.seed``) deals the folds and seeds each
fold's model, so the probabilities are reproducible and independent of the main and
auxiliary models' seeds. Dimension names: n training points, K classes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fine_cli.batches import TensorPairs
from fine_cli.config import Config
from fine_cli.errors import ConfigError
from fine_cli.models import build_model
from fine_cli.needs import crossval_methods
from fine_cli.training import apply_schedule, config_augment, make_optimizer, train_epoch

# A SeedSequence stream of the training seed that no other part of train-collect uses.
CROSSVAL_STREAM = 0x0C1
# Points per forward pass when the held-out folds are predicted.
PREDICT_CHUNK = 4096
# progress(folds_done, folds_total)
FoldProgress = Callable[[int, int], None]


def stratified_folds(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) fold of each point in 0..k-1: each label's points are shuffled and dealt round
    the folds in turn (after a random start), so every fold holds about 1/k of each label."""
    fold = np.empty(labels.shape[0], np.int64)
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        fold[rng.permutation(pos)] = (np.arange(pos.size) + rng.integers(k)) % k
    return fold


def out_of_fold(
    cfg: Config,
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    input_shape: tuple[int, ...],
    progress: FoldProgress | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Train ``cfg.collect.crossval.folds`` models on all folds but one each.

    Args:
        x: ``(n, ...)`` training inputs, on the training device.
        y: ``(n,)`` observed (possibly flipped) integer labels, on the same device.

    Returns:
        arrays ``oof_probs`` ``(n, K)`` float32 and ``oof_fold`` ``(n,)`` int64, and the
        metadata (folds, epochs, seconds).
    """
    cv = cfg.collect.crossval
    n = int(x.shape[0])
    if y.ndim != 1:
        raise ConfigError(
            "confident learning needs one class label per training point; this task's "
            "targets are not (n,) labels. Remove 'confident' from experiment.methods."
        )
    labels = y.cpu().numpy().astype(np.int64)
    if n < 2 * cv.folds:
        raise ConfigError(
            f"collect.crossval.folds is {cv.folds} but the training set has {n} points; lower it."
        )
    epochs = cv.epochs if cv.epochs is not None else cfg.train.epochs
    seqs = np.random.SeedSequence([cfg.seed, CROSSVAL_STREAM]).spawn(cv.folds + 1)
    fold = stratified_folds(labels, cv.folds, np.random.default_rng(seqs[-1]))
    probs = np.zeros((n, n_classes), np.float32)
    augment = config_augment(cfg)
    t0 = time.perf_counter()
    for k in range(cv.folds):
        if progress:
            progress(k, cv.folds)
        seed = int(seqs[k].generate_state(1)[0])
        held = np.flatnonzero(fold == k)
        rest = torch.as_tensor(np.flatnonzero(fold != k), device=x.device)
        model = build_model(cfg.model, input_shape, n_classes, seed).to(x.device)
        opt = make_optimizer(cfg, model)
        gen = torch.Generator().manual_seed(seed)
        part = TensorPairs(x[rest], y[rest])
        for epoch0 in range(epochs):
            apply_schedule(cfg, [opt], epoch0)
            train_epoch(model, opt, part, cfg.train.batch_size, gen, augment=augment)
        probs[held] = _predict(model, x[torch.as_tensor(held, device=x.device)])
    if progress:
        progress(cv.folds, cv.folds)
    seconds = time.perf_counter() - t0
    meta = {"folds": cv.folds, "epochs": epochs, "seconds": round(seconds, 3)}
    return {"oof_probs": probs, "oof_fold": fold}, meta


def _predict(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """(h, K) float32 softmax probabilities in eval mode."""
    model.eval()
    with torch.no_grad():
        out = [
            torch.softmax(model(x[s : s + PREDICT_CHUNK]).double(), dim=1)
            for s in range(0, x.shape[0], PREDICT_CHUNK)
        ]
    return torch.cat(out).cpu().numpy().astype(np.float32)


__all__ = ["crossval_methods", "out_of_fold", "stratified_folds"]
