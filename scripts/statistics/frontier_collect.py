"""Scores and costs of the retraining-free baselines at several training lengths, from one
training per model: TRAK (ensembles of 2 and 8 models), influence functions (main model)
and confident learning (K folds), for docs/statistics.md's cost-quality frontier.

With a constant learning rate a model trained for E epochs passes through the state that a
shorter training of the same seed ends in, so features (or out-of-fold predictions) taken
at epochs 5, 10, 30, 100 of one training are those of four trainings of those lengths.
Costs are measured in seconds and converted to epochs of one model on the whole training
set by the measured seconds of such an epoch (``epoch_s``).

    python scripts/statistics/frontier_collect.py trak CONFIG SEED OUT.npz --models 8 \
        --at 5 10 30 100
    python scripts/statistics/frontier_collect.py confident CONFIG SEED OUT.npz --at 1 2 5 10 30
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fine_cli.batches import TensorPairs
from fine_cli.config import load_config
from fine_cli.crossval import CROSSVAL_STREAM, stratified_folds
from fine_cli.data import load_data
from fine_cli.estimators.confident import label_quality
from fine_cli.estimators.influence_functions import if_scores, loss_grads
from fine_cli.estimators.trak import trak_scores
from fine_cli.features import FeatureRequest, collect
from fine_cli.models import build_model
from fine_cli.training import make_optimizer, train_epoch

# A stream of the seed apart from train-collect's, for the ensembles' models.
ENSEMBLE_STREAM = 0x7A4


def trak_run(args: argparse.Namespace) -> dict[str, np.ndarray]:
    cfg = load_config(args.config, args.sets)
    data = load_data(cfg.data)
    train = TensorPairs(data.train.x, data.train.y)
    seeds = [
        int(s.generate_state(1)[0])
        for s in np.random.SeedSequence([args.seed, ENSEMBLE_STREAM]).spawn(args.models)
    ]
    models = [build_model(cfg.model, data.input_shape, data.n_classes, s) for s in seeds]
    opts = [make_optimizer(cfg, m) for m in models]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    out: dict[str, np.ndarray] = {}
    train_s = 0.0
    n_epochs = 0
    for epoch in range(1, max(args.at) + 1):
        t0 = time.perf_counter()
        for m, o, g in zip(models, opts, gens):
            train_epoch(m, o, train, cfg.train.batch_size, g)
        train_s += time.perf_counter() - t0
        n_epochs += len(models)
        if epoch not in args.at:
            continue
        req = FeatureRequest({"trak", "if"}, cfg.collect.features.proj_dim, 0, 2048, 10)
        feats = collect(req, models, train)
        proj = [req.timing[f"proj_model{i}_s"] for i in range(len(models))]
        for e in (2, args.models):
            out[f"trak{e}@{epoch}"] = trak_scores(feats["proj_grad"][:e], feats["one_minus_p"][:e])[
                0
            ]
            out[f"trak{e}_feat_s@{epoch}"] = np.float64(sum(proj[:e]))
        grads = loss_grads(feats["proj_grad"][0], feats["one_minus_p"][0])
        out[f"if@{epoch}"] = if_scores(grads, feats["ggn"])[0]
        out[f"if_feat_s@{epoch}"] = np.float64(proj[0] + req.timing["ggn_s"])
        print(f"epoch {epoch}: features {req.timing}", flush=True)
    out["epoch_s"] = np.float64(train_s / n_epochs)  # one model, one epoch, all points
    return out


def confident_run(args: argparse.Namespace) -> dict[str, np.ndarray]:
    cfg = load_config(args.config, args.sets)
    data = load_data(cfg.data)
    x, y = data.train.x, data.train.y
    labels = y.numpy().astype(np.int64)
    k = cfg.collect.crossval.folds
    seqs = np.random.SeedSequence([args.seed, CROSSVAL_STREAM]).spawn(k + 1)
    fold = stratified_folds(labels, k, np.random.default_rng(seqs[-1]))
    probs = {e: np.zeros((x.shape[0], data.n_classes)) for e in args.at}
    train_s = pred_s = 0.0
    point_epochs = 0
    for f in range(k):
        seed = int(seqs[f].generate_state(1)[0])
        held = torch.as_tensor(np.flatnonzero(fold == f))
        rest = torch.as_tensor(np.flatnonzero(fold != f))
        model = build_model(cfg.model, data.input_shape, data.n_classes, seed)
        opt = make_optimizer(cfg, model)
        gen = torch.Generator().manual_seed(seed)
        part = TensorPairs(x[rest], y[rest])
        for epoch in range(1, max(args.at) + 1):
            t0 = time.perf_counter()
            train_epoch(model, opt, part, cfg.train.batch_size, gen)
            train_s += time.perf_counter() - t0
            point_epochs += rest.numel()
            if epoch in args.at:
                t0 = time.perf_counter()
                model.eval()
                with torch.no_grad():
                    probs[epoch][held.numpy()] = torch.softmax(model(x[held]).double(), 1).numpy()
                pred_s += time.perf_counter() - t0
    out: dict[str, np.ndarray] = {}
    for e in args.at:
        for method in ("self_confidence", "normalized_margin", "confidence_weighted_entropy"):
            import fine_cli.estimators.confident as conf

            conf.QUALITY_METHOD = method
            out[f"confident-{method}@{e}"] = 1.0 - label_quality(labels, probs[e])
    # seconds of one epoch of one model over all n points
    out["epoch_s"] = np.float64(train_s / point_epochs * x.shape[0])
    out["pred_s"] = np.float64(pred_s / len(args.at))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["trak", "confident"])
    ap.add_argument("config")
    ap.add_argument("seed", type=int)
    ap.add_argument("out")
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--at", type=int, nargs="+", required=True)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    out = trak_run(args) if args.kind == "trak" else confident_run(args)
    np.savez(args.out, **out)
    print(f"{args.out}: epoch {float(out['epoch_s']):.3f} s", flush=True)


if __name__ == "__main__":
    main()
