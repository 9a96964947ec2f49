"""`make bench`: the engine's speed and memory targets, as ratios measured side by side.

Every row repeats its measurement: the two things a ratio compares run interleaved
(A, B, A, B, ...), REPEATS times unless the row says otherwise, each repetition a few
seconds long, and the row reports the median ratio with its range (min - max) and the
spread (max - min) / median, flagged above SPREAD_MAX. Absolute times vary between runs on
shared machines; ratios of interleaved measurements hold still.

Writes docs/performance.md (with the machine's description) and prints the table.
`python benchmarks/bench.py --quick` runs smaller sizes and writes nothing (a smoke run);
`--rows ooc` runs some groups of rows, and rewrites the blocks whose rows all ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "performance.md"

# Repetitions of each row's measurement, and the largest spread (max - min) / median that
# counts as holding still.
REPEATS = 5
SPREAD_MAX = 0.10
# Row groups, in the order they run (--rows picks some).
GROUPS = ("noise", "collection", "engine", "stage2", "resnet", "ooc")


# ---- ratios and rows ----------------------------------------------------------------------


@dataclass
class Ratio:
    """Repeated measurements of one ratio."""

    values: list[float]

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def spread(self) -> float:
        """(max - min) / median."""
        return (max(self.values) - min(self.values)) / abs(self.median)

    def text(self, digits: int = 2, suffix: str = "") -> str:
        """``median [min - max]``."""
        lo, hi = min(self.values), max(self.values)
        return f"{self.median:.{digits}f}{suffix} [{lo:.{digits}f} - {hi:.{digits}f}]"


@dataclass
class Row:
    figure: str
    ratio: Ratio
    measured: str  # the ratio's text and what it was made of
    target: str
    met: bool | None  # None: no target


def alternate(
    steps: Sequence[tuple[str, Callable[[], Any]]], repeats: int
) -> dict[str, list[float]]:
    """Per repetition, the summed seconds of each name's steps. The steps run in the given
    order, then reversed at the next repetition (A B A B, then B A B A): short steps of
    both sides, taken in turn, share whatever the machine does meanwhile, and a drift of
    its speed weighs on both sides alike."""
    out: dict[str, list[float]] = {name: [] for name, _ in steps}
    for r in range(repeats):
        total = dict.fromkeys(out, 0.0)
        for name, fn in steps if r % 2 == 0 else steps[::-1]:
            t0 = time.perf_counter()
            fn()
            total[name] += time.perf_counter() - t0
        for name, seconds in total.items():
            out[name].append(seconds)
    return out


def interleaved(
    a: Callable[[], Any], b: Callable[[], Any], repeats: int
) -> tuple[list[float], list[float]]:
    """Seconds of ``a`` and of ``b``, run alternately ``repeats`` times each."""
    out = alternate([("a", a), ("b", b)], repeats)
    return out["a"], out["b"]


# ---- the machine's own noise: fixed work under the rows' protocol -------------------------

# Seconds of each control side per repetition, in pieces of about NOISE_PIECE seconds.
NOISE_SECONDS, NOISE_PIECE = 3.0, 0.25


def _calls_per_piece(fn: Callable[[], Any], seconds: float) -> int:
    """How many calls of ``fn`` take about ``seconds`` (from the quickest of 3 timed calls)."""
    best = min(_seconds(fn) for _ in range(3))
    return max(1, round(seconds / max(best, 1e-6)))


def _seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_noise(repeats: int, seconds: float) -> dict[str, Any]:
    """Two controls timed as the rows are (pieces of A and B in turn, the order reversed
    each repetition, ``seconds`` per side per repetition): a fixed matrix product against
    itself, and a fixed memory sweep through fresh arrays (as numpy's temporaries are)
    against the product. Their spreads are what the machine allows a row: the same work
    on both sides, and two kinds of work, as most rows compare."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2048, 785, generator=gen), torch.randn(785, 2000, generator=gen)
    x = np.random.default_rng(0).random(3_000_000)

    def product() -> None:
        a @ b

    def sweep() -> None:
        z = x * 2.0
        z += 1.0

    n_product = _calls_per_piece(product, NOISE_PIECE)
    n_sweep = _calls_per_piece(sweep, NOISE_PIECE)

    def times(fn: Callable[[], None], k: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(k):
                fn()

        return run

    pieces = max(1, round(seconds / NOISE_PIECE))
    steps = [
        ("product", times(product, n_product)),
        ("product again", times(product, n_product)),
        ("sweep", times(sweep, n_sweep)),
    ] * pieces
    t = alternate(steps, repeats)
    return {
        "same": Ratio([b / a for a, b in zip(t["product"], t["product again"])]),
        "kinds": Ratio([b / a for a, b in zip(t["product"], t["sweep"])]),
        "seconds": statistics.median(t["product"]),
        "sweep_seconds": statistics.median(t["sweep"]),
    }


def noise_rows(quick: bool) -> list[Row]:
    r = bench_noise(2 if quick else REPEATS, 0.5 if quick else NOISE_SECONDS)
    rows = [
        Row(
            "control: a fixed matrix product (2048x785 by 785x2000) / the same product, "
            "in turn: the same work on both sides",
            r["same"],
            f"{r['same'].text()} ({r['seconds']:.1f} s a side per repetition)",
            "-",
            None,
        ),
        Row(
            "control: a fixed memory sweep through fresh arrays (24 MB) / the product: two "
            "kinds of work, as the rows below compare",
            r["kinds"],
            f"{r['kinds'].text()} ({r['sweep_seconds']:.1f} s vs {r['seconds']:.1f} s a side "
            "per repetition)",
            "-",
            None,
        ),
    ]
    for row in rows:
        print(row, flush=True)
    return rows


# ---- collection: train-collect with the defaults -------------------------------------------


def mnist_sized_config(
    n_train: int, epochs: int, arch: str = "mlp", device: str = "cpu", **collect: Any
) -> Any:
    """Synthetic 784-feature points shaped like MNIST: the paper's MLP and optimiser, the
    defaults otherwise (``collect`` overrides keys of the collect section)."""
    from fine_cli.config import config_from_dict

    return config_from_dict(
        {
            "name": "bench",
            "data": {
                "dataset": "synthetic",
                "test_fraction": 0.2,
                "label_noise": 0.2,
                "synthetic": {
                    "n_samples": int(n_train / 0.8) + 1,
                    "n_features": 784,
                    "n_classes": 10,
                    "separation": 3.0,
                },
            },
            "model": {"arch": arch, "hidden": [500]},
            "train": {"epochs": epochs, "batch_size": 100, "device": device},
            "collect": {"mode": "self", **collect},
        }
    )


def phase_seconds(marks: Sequence[tuple[str, float]]) -> tuple[list[float], list[float]]:
    """Per epoch, the seconds of training and of the checkpoint's collection, from the
    (phase, time) marks of train-collect's progress calls (``training`` before an epoch,
    ``collecting`` before its checkpoint) and ``recorded`` after each checkpoint."""
    train, collect = [], []
    start = 0.0
    for phase, t in marks:
        if phase == "training":
            start = t
        elif phase == "collecting":
            train.append(t - start)
            start = t
        elif phase == "recorded":
            collect.append(t - start)
    return train, collect


def collect_marked(cfg: Any) -> tuple[list[float], list[float], Any]:
    """train-collect ``cfg``; per epoch, the seconds of training and of the checkpoint's
    collection (:func:`phase_seconds`), and the signals."""
    from fine_cli.stages import train_collect

    marks: list[tuple[str, float]] = []
    signals = train_collect.run(
        cfg,
        lambda phase, done, total: marks.append((phase, time.perf_counter())),
        lambda c, epoch, models: marks.append(("recorded", time.perf_counter())),
    )
    train, collect = phase_seconds(marks)
    return train, collect, signals


def default_checkpoints(heldout_loss: Sequence[float], patience: int) -> int | None:
    """Checkpoints the collector records before ``patience`` stops it, given the held-out
    losses of a run that never stopped (Collector.stopped's rule); None: not within them."""
    for c in range(patience + 1, len(heldout_loss) + 1):
        if c - 1 - int(np.argmin(heldout_loss[:c])) >= patience:
            return c
    return None


def _child(kind: str, n_train: int, epochs: int) -> None:
    """Run in a fresh process, so that peak memory (:func:`peak_mib`) belongs to one job.

    ``collect``: train-collect with the defaults, a checkpoint every epoch and no early stop
    (collect.patience=null); prints each epoch's training and checkpoint seconds.
    ``train``: the same models trained alone, no collection."""
    import fine_cli
    from fine_cli import training
    from fine_cli.needs import needs_auxiliary

    if kind == "collect":
        train, collect, signals = collect_marked(mnist_sized_config(n_train, epochs, patience=None))
        out: dict[str, Any] = {
            "train_s": train,
            "collect_s": collect,
            "heldout_loss": signals["heldout_loss"].tolist(),
            "models": signals.meta["timing"]["models"],
        }
    else:  # the models train-collect trains, the same loop, no collection
        cfg = mnist_sized_config(n_train, epochs)
        data = fine_cli.load_data(cfg.data)
        seeds = training.derive_seeds(cfg)
        model_seeds = [seeds.main, seeds.aux][: 2 if needs_auxiliary(cfg) else 1]
        models = [
            fine_cli.build_model(cfg.model, data.input_shape, data.n_classes, s)
            for s in model_seeds
        ]
        opts = [training.make_optimizer(cfg, m) for m in models]
        gens = [torch.Generator().manual_seed(s) for s in model_seeds]
        train_set = fine_cli.TensorPairs(data.train.x, data.train.y)
        t0 = time.perf_counter()
        for _ in range(epochs):
            for m, o, g in zip(models, opts, gens):
                training.train_epoch(m, o, train_set, cfg.train.batch_size, g)
        out = {"train_s": [time.perf_counter() - t0]}
    out["peak_mib"] = peak_mib()
    print(json.dumps(out))


def peak_mib() -> float:
    """This process's peak resident memory: VmHWM where Linux gives it. ``ru_maxrss`` also
    counts the parent's memory at the moment it started this process (exec keeps the larger
    of the two), so a child of a large bench process would read the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_collection(n_train: int, epochs: int, group: int) -> dict[str, Any]:
    """One train-collect run of ``epochs`` epochs, a checkpoint after each; the first pair
    (warm-up) left out, the rest in consecutive groups of ``group`` epochs: per group,
    (training + collection) / training, and the same under the defaults' schedule
    (train.epochs epochs, collection stopped by collect.patience) from the group's mean
    epoch and checkpoint times and the checkpoints that patience would have kept."""
    from fine_cli.config import CollectConfig, TrainConfig

    res = _run_child("collect", "--n", str(n_train), "--epochs", str(epochs))
    train, collect = np.array(res["train_s"][1:]), np.array(res["collect_s"][1:])
    spans = [slice(s, s + group) for s in range(0, len(train) - group + 1, group)]
    every = [(train[s].sum() + collect[s].sum()) / train[s].sum() for s in spans]
    full_epochs, patience = TrainConfig().epochs, CollectConfig().patience
    assert patience is not None
    kept = default_checkpoints(res["heldout_loss"], patience)
    schedule = None
    if kept is not None:
        schedule = [1.0 + kept * collect[s].mean() / (full_epochs * train[s].mean()) for s in spans]
    return {
        "n": n_train,
        "every": Ratio(every),
        "schedule": None if schedule is None else Ratio(schedule),
        "epoch_s": float(np.median(train)),
        "checkpoint_s": float(np.median(collect)),
        "kept": kept,
        "full_epochs": full_epochs,
        "patience": patience,
        "groups": len(spans),
        "group": group,
        "models": res["models"],
        "peak_mib": res["peak_mib"],
    }


def collection_rows(quick: bool) -> list[Row]:
    """(training + collection) / training at 5,000 and 60,000 points, and peak memory."""
    sizes = ((2_000, 11, 2), (6_000, 6, 1)) if quick else ((5_000, 61, 12), (60_000, 11, 2))
    rows = []
    big = None
    for n, epochs, group in sizes:
        c = bench_collection(n, epochs, group)
        big = c
        what = (
            f"{n:,} MNIST-sized points, MLP 784-500-10, train-collect with the defaults "
            f"({c['models']} model, ip2, held-out loss)"
        )
        made = (
            f"{c['epoch_s']:.2f} s an epoch, {c['checkpoint_s']:.2f} s a checkpoint; "
            f"{c['groups']} groups of {c['group']} epochs"
        )
        rows.append(
            Row(
                f"collection: (training + collection) / training, a checkpoint every epoch "
                f"(collect.patience=null), {what}",
                c["every"],
                f"{c['every'].text()} ({made})",
                "<= 1.2",
                c["every"].median <= 1.2,
            )
        )
        print(rows[-1], flush=True)
        if c["schedule"] is not None:
            rows.append(
                Row(
                    f"the same under the defaults' schedule ({c['full_epochs']} epochs, "
                    f"collection stopped {c['patience']} checkpoints after the held-out "
                    f"minimum: {c['kept']} checkpoints here), from the epoch and checkpoint "
                    "times above",
                    c["schedule"],
                    f"{c['schedule'].text()} ({c['kept']} checkpoints / {c['full_epochs']} epochs)",
                    "<= 1.2",
                    c["schedule"].median <= 1.2,
                )
            )
            print(rows[-1], flush=True)
    assert big is not None
    # peak memory: the collection run above against training-only processes
    n = big["n"]
    alone = [_run_child("train", "--n", str(n), "--epochs", "1")["peak_mib"] for _ in range(3)]
    mem = Ratio([big["peak_mib"] / a for a in alone])
    rows.append(
        Row(
            f"peak memory of the {n:,}-point collection run / training alone (3 processes)",
            mem,
            f"{mem.text()} ({big['peak_mib']:.0f} MiB vs {statistics.median(alone):.0f} MiB)",
            "<= 2",
            mem.median <= 2,
        )
    )
    print(rows[-1], flush=True)
    return rows


# ---- the engine against materialising per-sample gradients --------------------------------


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 10))


def bench_engine_vs_vmap(n: int, n_vmap: int, repeats: int) -> dict[str, Any]:
    """Squared norms + 2 inner products: the engine on n points vs vmap materialisation on
    n_vmap points (scaled to n: its cost is linear in n), interleaved."""
    from torch.func import functional_call, grad, vmap

    from fine_cli.grads import GradEngine

    model = _mlp().eval()
    x, y = torch.randn(n, 784), torch.randint(0, 10, (n,))
    engine = GradEngine(model)
    vecs = [[torch.randn_like(p) for p in model.parameters()] for _ in range(2)]
    params = {k: p.detach() for k, p in model.named_parameters()}
    flat_v = torch.stack([torch.cat([t.reshape(-1) for t in v]) for v in vecs])

    def loss_fn(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (xi[None],))
        return nn.functional.cross_entropy(out, yi[None])

    per_sample_grad = vmap(grad(loss_fn), in_dims=(None, 0, 0))

    def by_vmap(lo: int, hi: int) -> None:
        g = per_sample_grad(params, x[lo:hi], y[lo:hi])
        flat = torch.cat([g[k].reshape(g[k].shape[0], -1) for k in params], 1)
        (flat * flat).sum(1)
        flat @ flat_v.T

    def by_engine(lo: int, hi: int) -> None:
        engine.per_sample(x[lo:hi], y[lo:hi], vecs)

    # each side in ENGINE_PARTS parts, taken in turn: all n points by the engine, n_vmap
    # by vmap (at most 125 gradients of 397,510 floats at once: 200 MB)
    steps: list[tuple[str, Callable[[], Any]]] = []
    for k in range(ENGINE_PARTS):
        lo, hi = k * n // ENGINE_PARTS, (k + 1) * n // ENGINE_PARTS
        vlo, vhi = k * n_vmap // ENGINE_PARTS, (k + 1) * n_vmap // ENGINE_PARTS
        steps += [
            ("engine", partial(by_engine, lo, hi)),
            ("vmap", partial(by_vmap, vlo, vhi)),
        ]
    by_engine(0, 1000)  # warm-up
    by_vmap(0, 10)
    t = alternate(steps, repeats)
    scale = n / n_vmap
    return {
        "ratio": Ratio([b * scale / a for a, b in zip(t["engine"], t["vmap"])]),
        "engine_s": statistics.median(t["engine"]),
        "vmap_s": statistics.median(t["vmap"]) * scale,
        "n_vmap": n_vmap,
    }


ENGINE_PARTS = 4


def engine_rows(quick: bool) -> list[Row]:
    n = 6_000 if quick else 60_000
    e = bench_engine_vs_vmap(n, 200 if quick else 500, 2 if quick else REPEATS)
    row = Row(
        "engine vs torch.func vmap materialisation, squared norms + 2 inner products, "
        f"{n:,} MLP gradients",
        e["ratio"],
        f"{e['ratio'].text(0, 'x')} faster ({e['engine_s']:.2f} s vs {e['vmap_s']:.0f} s, "
        f"vmap timed on {e['n_vmap']:,} points and scaled)",
        ">= 50x",
        e["ratio"].median >= 50,
    )
    print(row, flush=True)
    return [row]


# ---- Stage 2 ----------------------------------------------------------------------------


def fake_signals(n: int, n_ckpt: int, b: int = 100) -> Any:
    """Self-mode signals of random components, both models and the probe batches' second
    moments, so that every estimator can run: n points, C checkpoints, R = 1."""
    from fine_cli.results import Signals, make_meta

    rng = np.random.default_rng(0)
    f32 = np.float32
    probe = np.stack([[rng.choice(n, b, replace=False) for _ in range(2)] for _ in range(n_ckpt)])
    arrays = {
        "train_index": np.arange(n),
        "labels": np.zeros(n, np.int64),
        "flip_mask": np.zeros(n, bool),
        "lr": np.full(n_ckpt, 0.005),
        "probe_idx": probe[:, None],
        "sqnorm": rng.gamma(2.0, 1.0, (2, n_ckpt, n)).astype(f32),
        "ip": rng.normal(size=(2, n_ckpt, 1, 2, n)).astype(f32),
        "ip2": (b * rng.gamma(2.0, 1.0, (n_ckpt, 1, 2, n))).astype(f32),
        "probe_sqnorm": np.ones((2, n_ckpt, 1, 2), f32),
        "loss": np.ones((2, n_ckpt, n), f32),
        "margin": np.ones((2, n_ckpt, n), f32),
        "checkpoint_epoch": np.arange(1, n_ckpt + 1),
    }
    return Signals(arrays=arrays, meta=make_meta("signals", mode="self", config=None))


PERMUTATIONS = 999


def bench_stage2(n: int, repeats: int) -> dict[str, Any]:
    """`fine estimate --method fine` on n points x 100 checkpoints (100 + 100 samples per
    point): the paper's Algorithm 2, the defaults, and the defaults with p-values, each
    against one MLP training epoch on n points. Per repetition the epoch runs as two
    half-epochs (300 steps each at 60,000 points), each followed by one Algorithm 2, two
    default estimates and one with p-values."""
    import fine_cli
    from fine_cli import training
    from fine_cli.stages import estimate

    art = fake_signals(n, 100)
    cfg = mnist_sized_config(n, 1)
    model = _mlp()
    opt = training.make_optimizer(cfg, model)
    x, y = torch.randn(n, 784), torch.randint(0, 10, (n,))
    halves = [
        fine_cli.TensorPairs(x[: n // 2], y[: n // 2]),
        fine_cli.TensorPairs(x[n // 2 :], y[n // 2 :]),
    ]
    gen = torch.Generator().manual_seed(0)
    defaults = estimate.EstimateOptions()
    alg2 = estimate.EstimateOptions(estimator="alg2", bootstrap=0, permutations=0)
    pvalues = estimate.EstimateOptions(permutations=PERMUTATIONS)
    steps: list[tuple[str, Callable[[], Any]]] = []
    for half in halves:
        steps += [
            ("epoch", partial(training.train_epoch, model, opt, half, 100, gen)),
            ("alg2", lambda: estimate.run(art, "fine", alg2)),
            ("default", lambda: estimate.run(art, "fine", defaults)),
            ("default", lambda: estimate.run(art, "fine", defaults)),
            ("pvalues", lambda: estimate.run(art, "fine", pvalues)),
        ]
    for fn in {name: fn for name, fn in steps if name != "epoch"}.values():
        fn()  # warm-up, each estimate once: tables built, memory mapped once
    times = alternate(steps, repeats)
    runs = {"epoch": 1, "alg2": 2, "default": 4, "pvalues": 2}  # per repetition
    per_run = {k: [t / runs[k] for t in v] for k, v in times.items()}
    epoch = per_run["epoch"]
    if os.environ.get("FINE_BENCH_VERBOSE"):
        print(json.dumps(per_run), flush=True)
    return {
        "defaults": defaults,
        **{f"{k}_s": statistics.median(v) for k, v in per_run.items()},
        **{
            k: Ratio([t / e for t, e in zip(per_run[k], epoch)])
            for k in ("alg2", "default", "pvalues")
        },
    }


def stage2_rows(quick: bool) -> list[Row]:
    n = 6_000 if quick else 60_000
    s = bench_stage2(n, 2 if quick else REPEATS)
    d = s["defaults"]
    rows = [
        Row(
            f"Stage 2 (`fine estimate --method fine --estimator alg2`) on {n:,} points x 100 "
            "checkpoints (100 + 100 samples each) / one MLP training epoch",
            s["alg2"],
            f"{s['alg2'].text()} ({s['alg2_s']:.2f} s vs {s['epoch_s']:.2f} s)",
            "<= 1",
            s["alg2"].median <= 1,
        ),
        Row(
            f"the same with the defaults (estimator {d.estimator}, {d.bootstrap} bootstrap "
            f"draws for standard errors, p-values only on request: permutations "
            f"{d.permutations})",
            s["default"],
            f"{s['default'].text()} ({s['default_s']:.2f} s vs {s['epoch_s']:.2f} s)",
            "<= 1",
            s["default"].median <= 1,
        ),
        Row(
            f"the defaults with p-values (`--permutations {PERMUTATIONS}`, what "
            "`rank --fdr --null zero` needs)",
            s["pvalues"],
            f"{s['pvalues'].text()} ({s['pvalues_s']:.2f} s vs {s['epoch_s']:.2f} s)",
            "-",
            None,
        ),
    ]
    for row in rows:
        print(row, flush=True)
    return rows


# ---- ResNet-18 ---------------------------------------------------------------------------


def bench_resnet(n: int, batch: int, repeats: int) -> dict[str, Any]:
    """ResNet-18 (CIFAR form): self-mode quantities (norm + 2 probe inner products) per
    image vs training per image, interleaved. The probe batches are captured once, outside
    the timing, as a checkpoint captures them once for all its chunks."""
    from fine_cli.grads import GradEngine
    from fine_cli.models.resnet import resnet18_cifar

    torch.manual_seed(0)
    model = resnet18_cifar(10)
    opt = torch.optim.Adam(model.parameters(), lr=0.005, betas=(0.9, 0.99))
    x, y = torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))
    xp, yp = torch.randn(2 * batch, 3, 32, 32), torch.randint(0, 10, (2 * batch,))
    engine = GradEngine(model, chunk_size=32)

    def train(s: int) -> None:
        model.train()
        opt.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(model(x[s : s + batch]), y[s : s + batch]).backward()
        opt.step()

    probes = engine.probe_batches([(xp[:batch], yp[:batch]), (xp[batch:], yp[batch:])])

    def collect(s: int) -> None:
        engine.per_sample(x[s : s + batch], y[s : s + batch], batches=probes)

    steps: list[tuple[str, Callable[[], Any]]] = []
    for s in range(0, n, batch):  # a training step, then the same images' collection
        steps += [
            ("train", partial(train, s)),
            ("collect", partial(collect, s)),
        ]
    for _, fn in steps[:2]:  # warm-up
        fn()
    t = alternate(steps, repeats)
    return {
        # collect img/s / train img/s, the same images on both sides
        "ratio": Ratio([a / b for a, b in zip(t["train"], t["collect"])]),
        "train_img_s": n / statistics.median(t["train"]),
        "collect_img_s": n / statistics.median(t["collect"]),
    }


def resnet_rows(quick: bool) -> list[Row]:
    r = bench_resnet(16 if quick else 64, 16 if quick else 32, 2 if quick else REPEATS)
    row = Row(
        "ResNet-18 (CIFAR form) self-mode quantities (norm + 2 probe inner products), img/s / "
        "training img/s",
        r["ratio"],
        f"{r['ratio'].text()} ({r['collect_img_s']:.1f} vs {r['train_img_s']:.1f} img/s)",
        ">= 0.25",
        r["ratio"].median >= 0.25,
    )
    print(row, flush=True)
    return [row]


# ---- out of core: 2,000,000 points ------------------------------------------------------

# The out-of-core rows: linear models on hashed synthetic points, a few checkpoints;
# peak memory hardly varies between runs, so fewer repetitions than the timed rows.
OOC_FEATURES, OOC_CLASSES, OOC_EPOCHS, OOC_BATCH, OOC_CHUNK = 32, 10, 2, 1000, 16_384
OOC_REPEATS = 2


def _splitmix(keys: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each key (splitmix64's finaliser), vectorised."""
    z = keys.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class HashedPoints(torch.utils.data.Dataset):
    """n synthetic points computed from their index, nothing stored: label and unit-variance
    noise are hashes of the index, x = class mean + noise. A training set of any size in
    constant memory, read through the same DataLoader path as any dataset."""

    def __init__(self, n: int, d: int = OOC_FEATURES, k: int = OOC_CLASSES) -> None:
        self.n, self.d, self.k = n, d, k
        self.means = torch.randn(k, d, generator=torch.Generator().manual_seed(0)) * 1.5

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, indices: Any) -> Any:
        from fine_cli.batches import Batch

        i = np.asarray(indices, dtype=np.uint64)
        y = (_splitmix(i * np.uint64(self.d + 1)) % np.uint64(self.k)).astype(np.int64)
        keys = i[:, None] * np.uint64(self.d + 1) + np.arange(1, self.d + 1, dtype=np.uint64)
        u = (_splitmix(keys) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        noise = torch.from_numpy(((u - 0.5) * np.sqrt(12.0)).astype(np.float32))
        yt = torch.from_numpy(y)
        return Batch((self.means[yt] + noise, yt))

    def __getitem__(self, i: int) -> Any:
        x, y = self.__getitems__([i])
        return x[0], y[0]


def _ooc_child(kind: str, n: int, work: str) -> None:
    """``collect``: train two linear models and collect self-mode signals into a directory;
    ``estimate``: stream f-INE over that directory. Prints the peak resident memory."""
    from fine_cli import outofcore

    t0 = time.perf_counter()
    if kind == "ooc-collect":
        from fine_cli.batches import ShuffledBatches  # noqa: F401 (the built-in batches)
        from fine_cli.collector import Collector
        from fine_cli.training import train_epoch

        data = HashedPoints(n)
        models = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            models.append(nn.Linear(OOC_FEATURES, OOC_CLASSES))
        opts = [torch.optim.Adam(m.parameters(), lr=0.005, betas=(0.9, 0.99)) for m in models]
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        col = Collector(
            models[0],
            models[1],
            data,
            probe_batch_size=100,
            seed=3,
            chunk_size=OOC_CHUNK,
            out_dir=work,
            n_checkpoints=OOC_EPOCHS,
        )
        for epoch in range(1, OOC_EPOCHS + 1):
            for m, o, g in zip(models, opts, gens):
                train_epoch(m, o, data, OOC_BATCH, g)
            col.checkpoint(optimizer=opts[0], epoch=epoch)
        outofcore.save_dir(col.signals(dataset="hashed-synthetic"), work)
    else:
        from fine_cli.stages import estimate

        signals = outofcore.load_dir(work, "signals")
        options = estimate.EstimateOptions(bootstrap=0, permutations=0)
        inf = estimate.run(signals, "fine", options, out_dir=f"{work}-influence")  # type: ignore[arg-type]
        outofcore.save_dir(inf, f"{work}-influence")
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mib": peak_mib()}))


def bench_out_of_core(sizes: tuple[int, int], repeats: int) -> dict[str, Any]:
    """Peak memory of collection into a directory and of the streamed estimate, each in a
    fresh process, at two training-set sizes, ``repeats`` times (small and large in turn):
    per repetition, the large size's peak over the small one's."""
    import shutil
    import tempfile

    peaks: dict[tuple[str, int], list[float]] = {}
    seconds: dict[tuple[str, int], list[float]] = {}
    for _ in range(repeats):
        for n in sizes:
            work = tempfile.mkdtemp(prefix="fine-bench-ooc-")
            try:
                for kind in ("ooc-collect", "ooc-estimate"):
                    res = _run_child(kind, "--n", str(n), "--work", work)
                    peaks.setdefault((kind, n), []).append(res["peak_mib"])
                    seconds.setdefault((kind, n), []).append(res["seconds"])
            finally:
                shutil.rmtree(work, ignore_errors=True)
                shutil.rmtree(f"{work}-influence", ignore_errors=True)
    small, big = sizes
    out: dict[str, Any] = {"sizes": sizes}
    for kind in ("ooc-collect", "ooc-estimate"):
        out[kind] = {
            "ratio": Ratio([b / s for b, s in zip(peaks[(kind, big)], peaks[(kind, small)])]),
            "big_mib": statistics.median(peaks[(kind, big)]),
            "small_mib": statistics.median(peaks[(kind, small)]),
            "big_s": statistics.median(seconds[(kind, big)]),
        }
    return out


def out_of_core_rows(quick: bool) -> list[Row]:
    from fine_cli.estimators.options import EstimateOptions

    small, big = (20_000, 200_000) if quick else (200_000, 2_000_000)
    estimator = f"{EstimateOptions().estimator}, no bootstrap or permutations"
    o = bench_out_of_core((small, big), 1 if quick else OOC_REPEATS)
    rows = []
    for kind, what in (
        (
            "ooc-collect",
            "train-collect with collect.storage=directory (2 linear models, "
            f"{OOC_EPOCHS} checkpoints, chunks of {OOC_CHUNK:,})",
        ),
        ("ooc-estimate", f"streamed `fine estimate` of that directory ({estimator})"),
    ):
        r = o[kind]
        rows.append(
            Row(
                f"out of core: peak memory of {what} at {big:,} points / at {small:,} "
                f"({len(r['ratio'].values)} pairs of processes)",
                r["ratio"],
                f"{r['ratio'].text()} ({r['big_mib']:.0f} MiB vs {r['small_mib']:.0f} MiB; "
                f"{r['big_s']:.0f} s at {big:,})",
                "<= 1.2",
                r["ratio"].median <= 1.2,
            )
        )
        print(rows[-1], flush=True)
    return rows


# ---- GPU: the CIFAR ResNet-18 config and the MNIST ratio -----------------------------------


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_gpu_resnet(n: int, repeats: int, device: str = "cuda") -> dict[str, Any]:
    """configs/cifar_resnet18.yaml's model, optimiser, batch and chunk size on n random
    CIFAR-shaped images: training img/s of the models it trains (fp32 and bf16 autocast)
    and (one epoch + one checkpoint's collection) / one epoch, interleaved."""
    import fine_cli
    from fine_cli import training
    from fine_cli.collector import Collector
    from fine_cli.needs import needs_auxiliary, needs_moments

    cfg = fine_cli.load_config(ROOT / "configs" / "cifar_resnet18.yaml", [f"train.device={device}"])
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=gen).to(dev)
    y = torch.randint(0, 10, (n,), generator=gen).to(dev)
    data = fine_cli.TensorPairs(x, y)
    n_models = 2 if needs_auxiliary(cfg) else 1
    models = [fine_cli.build_model(cfg.model, (3, 32, 32), 10, s).to(dev) for s in range(n_models)]
    opts = [training.make_optimizer(cfg, m) for m in models]
    gens = [torch.Generator().manual_seed(s) for s in range(n_models)]

    def epoch(precision: str = "fp32") -> None:
        for m, o, g in zip(models, opts, gens):
            training.train_epoch(m, o, data, cfg.train.batch_size, g, precision=precision)
        _sync(dev)

    col = Collector(
        models[0],
        models[1] if n_models == 2 else None,
        data,
        probe_batch_size=cfg.train.batch_size,
        chunk_size=cfg.collect.chunk_size,
        moments=needs_moments(cfg),
    )

    def checkpoint() -> None:
        col.checkpoint(lr=cfg.train.lr)
        _sync(dev)

    epoch()  # warm-up: kernels chosen, memory pooled
    checkpoint()
    ta, tb = interleaved(epoch, checkpoint, repeats)
    bf16, _ = interleaved(lambda: epoch("bf16"), lambda: None, 2)
    return {
        "n": n,
        "models": n_models,
        "train_img_s": n_models * n / statistics.median(ta),
        "bf16_img_s": n_models * n / statistics.median(bf16),
        "ratio": Ratio([(a + b) / a for a, b in zip(ta, tb)]),
        "train_s": statistics.median(ta),
        "collect_s": statistics.median(tb),
    }


def bench_gpu_mnist(n: int, epochs: int, device: str = "cuda") -> dict[str, Any]:
    """The collection row on the GPU: train-collect on MNIST-sized points with the defaults
    and a checkpoint every epoch; per epoch after the first, (training + collection) /
    training."""
    train, collect, _ = collect_marked(mnist_sized_config(n, epochs, device=device, patience=None))
    return {
        "ratio": Ratio([(t + c) / t for t, c in zip(train[1:], collect[1:])]),
        "train_s": statistics.median(train[1:]),
        "collect_s": statistics.median(collect[1:]),
    }


def gpu_rows(quick: bool, device: str = "cuda") -> list[Row]:
    name = torch.cuda.get_device_name(0) if device == "cuda" else device
    repeats = 2 if quick else REPEATS
    r = bench_gpu_resnet(64 if quick else 10_000, repeats, device)
    n = 6_000 if quick else 60_000
    m = bench_gpu_mnist(n, repeats + 1, device)
    rows = [
        Row(
            f"{name}: CIFAR ResNet-18 config, training throughput of the {r['models']} "
            f"model(s), fp32 / bf16 autocast ({r['n']:,} random CIFAR-shaped images)",
            Ratio([r["bf16_img_s"] / r["train_img_s"]]),
            f"{r['train_img_s']:.0f} / {r['bf16_img_s']:.0f} img/s",
            "-",
            None,
        ),
        Row(
            f"{name}: CIFAR ResNet-18 config, (one epoch + one checkpoint's collection) / "
            "one epoch",
            r["ratio"],
            f"{r['ratio'].text()} ({r['train_s']:.1f} s + {r['collect_s']:.1f} s)",
            "<= 1.5",
            r["ratio"].median <= 1.5,
        ),
        Row(
            f"{name}: the collection row (train-collect on {n:,} MNIST-sized points, a "
            "checkpoint every epoch) / training",
            m["ratio"],
            f"{m['ratio'].text()} ({m['train_s']:.1f} s an epoch + {m['collect_s']:.1f} s "
            "a checkpoint)",
            "<= 1.5",
            m["ratio"].median <= 1.5,
        ),
    ]
    for row in rows:
        print(row, flush=True)
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {mem:.0f} GiB RAM, {gpu}; "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; "
        f"Python {platform.python_version()}"
    )


ROWS: dict[str, Callable[[bool], list[Row]]] = {
    "noise": noise_rows,
    "collection": collection_rows,
    "engine": engine_rows,
    "stage2": stage2_rows,
    "resnet": resnet_rows,
    "ooc": out_of_core_rows,
}


# The generated block of docs/performance.md that each group's rows go to.
BLOCK_OF = {**dict.fromkeys(GROUPS, "bench"), "ooc": "bench-ooc", "gpu": "bench-gpu"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="Smaller sizes (a smoke run).")
    ap.add_argument(
        "--child",
        choices=["train", "collect", "ooc-collect", "ooc-estimate"],
        help=argparse.SUPPRESS,
    )
    ap.add_argument("--n", type=int, default=60_000, help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--work", default="", help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true", help="Print only; keep docs/ as is.")
    ap.add_argument(
        "--rows",
        default=",".join(GROUPS),
        help=f"Groups of rows to run, comma-separated: {', '.join(GROUPS)} (and gpu); a "
        "block of docs/performance.md is rewritten when all the groups of its rows ran.",
    )
    ap.add_argument(
        "--gpu", action="store_true", help="GPU rows only (make bench-gpu); needs CUDA."
    )
    args = ap.parse_args()
    if args.child in ("ooc-collect", "ooc-estimate"):
        _ooc_child(args.child, args.n, args.work)
        return
    if args.child:
        _child(args.child, args.n, args.epochs)
        return
    groups = ["gpu"] if args.gpu else [g.strip() for g in args.rows.split(",") if g.strip()]
    unknown = [g for g in groups if g not in (*GROUPS, "gpu")]
    if unknown:
        sys.exit(f"bench --rows: unknown group(s) {', '.join(unknown)}; use {', '.join(GROUPS)}.")
    if "gpu" in groups and not torch.cuda.is_available():
        sys.exit("bench --gpu: no CUDA device here; run it on a machine with a GPU.")
    if args.gpu or (set(groups) == set(GROUPS) and torch.cuda.is_available()):
        groups = [*[g for g in groups if g != "gpu"], "gpu"]  # on a GPU machine, those too
    write = not (args.no_write or args.quick)
    print(f"machine: {machine()}", flush=True)
    t0 = time.perf_counter()
    blocks: dict[str, list[Row]] = {}
    for group in groups:
        rows = gpu_rows(args.quick) if group == "gpu" else ROWS[group](args.quick)
        blocks.setdefault(BLOCK_OF[group], []).extend(rows)
    minutes = (time.perf_counter() - t0) / 60
    for block, rows in blocks.items():
        # a block is rewritten only when every group of its rows ran, in one sitting
        whole = all(g in groups for g, b in BLOCK_OF.items() if b == block)
        finish(rows, block, write and whole, minutes if block in ("bench", "bench-gpu") else None)
    print(f"bench: {minutes:.1f} minutes")


def table(rows: list[Row]) -> str:
    head = [
        "| figure | measured: median [min - max] | spread | target | met |",
        "|---|---|---|---|---|",
    ]
    met = {True: "yes", False: "no", None: "-"}
    lines = []
    for r in rows:
        flag = "" if r.ratio.spread <= SPREAD_MAX else " (over 10%)"
        lines.append(
            f"| {r.figure} | {r.measured} | {100 * r.ratio.spread:.0f}%{flag} | {r.target} | "
            f"{met[r.met]} |"
        )
    return "\n".join(head + lines)


def finish(rows: list[Row], block: str, write: bool, minutes: float | None) -> None:
    text = table(rows)
    print(text)
    if write:
        write_doc(text, block, minutes)


def write_doc(table: str, block: str = "bench", minutes: float | None = None) -> None:
    """Replace one generated section of docs/performance.md (``bench``: the CPU rows,
    ``bench-ooc``: out of core, ``bench-gpu``: the GPU rows), keep the rest."""
    marker_a, marker_b = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    took = f" The run took {minutes:.1f} minutes." if minutes is not None else ""
    text = f"{marker_a}\nMeasured {stamp} on: {machine()}.{took}\n\n{table}\n{marker_b}"
    old = OUT.read_text() if OUT.exists() else "# Performance\n"
    if marker_a in old and marker_b in old:
        head, rest = old.split(marker_a, 1)
        tail = rest.split(marker_b, 1)[1]
        new = head + text + tail
    else:
        new = old.rstrip() + "\n\n" + text + "\n"
    OUT.write_text(new)
    print(f"-> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
