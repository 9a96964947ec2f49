"""train-collect plus the extra per-checkpoint quantities that variance-reduced f-INE
estimators need, measured apart (docs/statistics.md, section 3b).

At every checkpoint, for the main model (and the auxiliary one with --aux):
- ``fullip`` (C, n), with --full: <g(z), sum_j g(z_j)> with the whole training set's
  gradient sum;
- ``ref_s1``, ``ref_s2``, ``ref_n`` (C, n): sums over a fresh random reference set of
  ``--ref`` points of <g(z), g(z_j)> and of its square, and their number (z itself is left
  out of its own sums); ``ref_s1_25`` etc.: the same over the first 25, 50, 100 points;
- ``test_loss`` (C,) mean loss on the held-out test split, ``train_loss`` (C,) on the
  training set (the observed labels); ``test_acc`` (C,);
- ``time_*`` seconds of each extra.

    python scripts/statistics/vr_collect.py CONFIG OUT_SIGNALS.npz OUT_EXTRA.npz [--set k=v]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fine_cli.artifacts import save
from fine_cli.config import load_config
from fine_cli.data import load_data
from fine_cli.grads import GradEngine
from fine_cli.stages import train_collect
from fine_cli.tasks import ClassificationTask

TASK = ClassificationTask()
# Nested reference sets (prefixes of one random draw): how many points the moments need.
PREFIXES = (25, 50, 100, 200)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("signals_out")
    ap.add_argument("extra_out")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--ref", type=int, default=200)
    ap.add_argument("--full", action="store_true", help="also the full-gradient inner product")
    args = ap.parse_args()
    cfg = load_config(args.config, args.sets)
    data = load_data(cfg.data)
    x, y = data.train.x, data.train.y
    xt, yt = data.test.x, data.test.y
    n = x.shape[0]
    rng = np.random.default_rng([7, cfg.seed])
    out: dict[str, list] = {
        k: []
        for k in ("fullip", "ref_s1", "ref_s2", "test_loss", "train_loss", "test_acc", "ref_n")
    }
    times = {"full": 0.0, "ref": 0.0, "heldout": 0.0}

    def hook(c: int, epoch: int, models: list[torch.nn.Module]) -> None:
        main_model = models[0]
        eng = GradEngine(main_model, chunk_size=cfg.collect.chunk_size)
        t0 = time.perf_counter()
        if args.full:
            gsum = eng.batch_grad_sum(x, y)
            out["fullip"].append(eng.per_sample(x, y, vectors=[gsum]).ips[0].double().numpy())
        t1 = time.perf_counter()
        ref = rng.choice(n, args.ref, replace=False)  # random order: prefixes are random too
        gram = eng.gram(x, y, x[ref], y[ref]).double().numpy()  # (n, ref)
        gram[ref, np.arange(args.ref)] = 0.0  # z out of its own reference sums
        t2 = time.perf_counter()
        main_model.eval()
        with torch.no_grad():
            lt = TASK.loss(main_model(xt), yt)
            acc = (main_model(xt).argmax(1) == yt).double().mean()
            ltr = TASK.loss(main_model(x), y)
        t3 = time.perf_counter()
        times["full"] += t1 - t0
        times["ref"] += t2 - t1
        times["heldout"] += t3 - t2
        for size in PREFIXES:
            if size > args.ref:
                continue
            tag = "" if size == args.ref else f"_{size}"
            out.setdefault(f"ref_s1{tag}", []).append(gram[:, :size].sum(1))
            out.setdefault(f"ref_s2{tag}", []).append((gram[:, :size] ** 2).sum(1))
            out.setdefault(f"ref_n{tag}", []).append(size - np.isin(np.arange(n), ref[:size]))
        out["test_loss"].append(float(lt.mean()))
        out["train_loss"].append(float(ltr.mean()))
        out["test_acc"].append(float(acc))

    t0 = time.perf_counter()
    sig = train_collect.run(cfg, on_checkpoint=hook)
    total = time.perf_counter() - t0
    save(sig, args.signals_out)
    arrays = {k: np.asarray(v) for k, v in out.items() if v}
    np.savez(
        args.extra_out,
        **arrays,
        time_full=times["full"],
        time_ref=times["ref"],
        time_heldout=times["heldout"],
        time_total=total,
        train_s=sig.meta["timing"]["train_s"],
        collect_s=sig.meta["timing"]["collect_s"],
    )
    print(sig.meta["timing"], times, f"total {total:.1f}")


if __name__ == "__main__":
    main()
