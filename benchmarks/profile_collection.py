"""Where one checkpoint's collection spends its time, next to one training epoch.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_collection.py --n 60000

Builds the model and data of `make bench`'s collection row (MNIST-sized synthetic points,
MLP 784-500-10, the collector as train-collect's defaults build it: main model, ip2,
held-out loss), trains one epoch, then times REPEATS training epochs and checkpoints
interleaved and profiles one more checkpoint with cProfile. The table gives the
cumulative seconds of the engine's parts (a part may contain another: the forward and
backward passes of ``_capture`` contain those of the probe batches).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # benchmarks.bench

REPEATS = 3
# function name -> what it is, for the table
PARTS = {
    "checkpoint": "the whole checkpoint",
    "_capture": "forward + backward to the layer outputs (chunks and probe batches)",
    "linear": "Linear layers' forward matmuls, wherever they run (chunks, probes, held-out)",
    "combine": "Gram products of the layer factors with the probe points",
    "sqnorm_ips": "squared norms and inner products with vectors",
    "segment_sums": "sums of Gram columns per probe batch (and of squares: ip2)",
    "batch_grad_sum": "probe batches' gradient sums (their squared norms)",
    "_mean_loss": "held-out loss",
    "__getitems__": "reading the chunks",
    "_squared_ips": "ip2 by a second pass (before it was folded in)",
}


def main() -> None:
    import fine_cli
    from benchmarks.bench import mnist_sized_config
    from fine_cli import training
    from fine_cli.collector import Collector
    from fine_cli.needs import needs_heldout, needs_moments

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=60_000, help="Training points.")
    ap.add_argument("--probe-repeats", type=int, default=1, help="R, probe pairs.")
    args = ap.parse_args()
    cfg = mnist_sized_config(args.n, 1)
    data = fine_cli.load_data(cfg.data)
    seed = training.derive_seeds(cfg).main
    model = fine_cli.build_model(cfg.model, data.input_shape, data.n_classes, seed)
    opt = training.make_optimizer(cfg, model)
    gen = torch.Generator().manual_seed(0)
    train_set = fine_cli.TensorPairs(data.train.x, data.train.y)
    held = fine_cli.TensorPairs(data.test.x, data.test.y) if needs_heldout(cfg) else None
    col = Collector(
        model,
        None,
        train_set,
        probe_batch_size=cfg.train.batch_size,
        probe_repeats=args.probe_repeats,
        chunk_size=cfg.collect.chunk_size,
        moments=needs_moments(cfg),
        heldout=held,
    )
    training.train_epoch(model, opt, train_set, cfg.train.batch_size, gen)
    col.checkpoint(lr=cfg.train.lr)  # warm-up
    epochs, checkpoints = [], []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        training.train_epoch(model, opt, train_set, cfg.train.batch_size, gen)
        t1 = time.perf_counter()
        col.checkpoint(lr=cfg.train.lr)
        epochs.append(t1 - t0)
        checkpoints.append(time.perf_counter() - t1)
    epoch = statistics.median(epochs)
    print(
        f"n={args.n:,} R={args.probe_repeats} threads={torch.get_num_threads()}: "
        f"epoch {epoch:.2f} s, checkpoint {statistics.median(checkpoints):.2f} s, "
        f"checkpoint / epoch {statistics.median(c / e for c, e in zip(checkpoints, epochs)):.2f}"
    )
    prof = cProfile.Profile()
    prof.enable()
    col.checkpoint(lr=cfg.train.lr)
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    cumulative: dict[str, float] = {}
    for (_, _, name), (_, _, _, cum, _) in stats.items():
        for part in PARTS:
            if name == part or name.endswith(f".{part}}}") or name == f"<{part}>":
                cumulative[part] = cumulative.get(part, 0.0) + cum
    # builtins show as "<built-in method torch._C._nn.linear>"
    for (_, _, name), (_, _, _, cum, _) in stats.items():
        if name.startswith("<built-in method") and name.rstrip(">").endswith(".linear"):
            cumulative["linear"] = cumulative.get("linear", 0.0) + cum
    print(f"{'part':<16} {'s':>6} {'/ epoch':>8}  what")
    for part, what in PARTS.items():
        if part in cumulative:
            sec = cumulative[part]
            print(f"{part:<16} {sec:6.2f} {sec / epoch:8.2f}  {what}")


if __name__ == "__main__":
    main()
