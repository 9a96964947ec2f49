"""Seconds of each piece of work that the methods of the cost-quality frontier are made of,
in one process, as multiples of one training epoch of one model on the whole training set
(docs/statistics.md, section 8). Medians over repeats, so that a loaded machine's hiccups
do not decide a ratio.

    python scripts/statistics/cost_units.py CONFIG OUT.json [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import torch

from fine_cli.batches import TensorPairs
from fine_cli.collector import Collector
from fine_cli.config import load_config
from fine_cli.data import load_data
from fine_cli.features import gauss_newton, margin_grads, one_minus_p
from fine_cli.grads import GradEngine
from fine_cli.models import build_model
from fine_cli.training import make_optimizer, train_epoch


def timed(fn: Callable[[], object], repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return float(np.median(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("out")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cfg = load_config(args.config)
    data = load_data(cfg.data)
    train = TensorPairs(data.train.x, data.train.y)
    held = TensorPairs(data.test.x, data.test.y)
    model = build_model(cfg.model, data.input_shape, data.n_classes, 0)
    opt = make_optimizer(cfg, model)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # away from the initial weights
        train_epoch(model, opt, train, cfg.train.batch_size, gen)
    b = cfg.train.batch_size
    rep = args.repeats
    sec = {"epoch": timed(lambda: train_epoch(model, opt, train, b, gen), rep)}

    def checkpoint(**kw: object) -> Callable[[], None]:
        def run() -> None:
            Collector(model, None, train, probe_batch_size=b, seed=0, **kw).checkpoint(lr=1.0)

        return run

    # the collector's passes: what TracIn needs (per-sample squared norms) is the same pass
    sec["checkpoint_probes"] = timed(checkpoint(moments=False), rep)  # sqnorm + probe ips
    sec["checkpoint_rb"] = timed(checkpoint(moments=True, heldout=held), rep)  # + ip2, held-out
    eng = GradEngine(model, chunk_size=cfg.collect.chunk_size)
    sec["sqnorm_pass"] = timed(lambda: eng.per_sample(train.x, train.y), rep)
    sec["forward"] = timed(lambda: model(train.x), rep)
    k = cfg.collect.features.proj_dim
    sec["trak_features_per_model"] = timed(
        lambda: (margin_grads(model, train, k, 0, 2048), one_minus_p(model, train, 2048)), rep
    )
    sec["ggn"] = timed(lambda: gauss_newton(model, train, data.n_classes, k, 0, 2048), 2)
    units = {key: v / sec["epoch"] for key, v in sec.items()}
    with open(args.out, "w") as f:
        json.dump({"seconds": sec, "epochs": units}, f, indent=2)
    print(json.dumps(units, indent=2))


if __name__ == "__main__":
    main()
