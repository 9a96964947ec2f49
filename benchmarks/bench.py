"""`make bench`: the engine's speed and memory targets, as ratios measured in one run.

Writes docs/performance.md (with the machine's description) and prints the table.
Absolute times vary between runs on shared machines; ratios measured side by side are
what the targets are about. `python benchmarks/bench.py --quick` runs smaller sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "performance.md"


def mnist_sized_config(n_train: int, epochs: int, arch: str = "mlp") -> Any:
    """Synthetic 784-feature points shaped like MNIST: the paper's MLP and optimiser."""
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
            "train": {"epochs": epochs, "batch_size": 100, "device": "cpu"},
            "collect": {"mode": "self"},
        }
    )


def _child(kind: str, n_train: int, epochs: int) -> None:
    """Run in a fresh process so that peak memory (ru_maxrss) belongs to one job."""
    import fine_cli
    from fine_cli import training

    cfg = mnist_sized_config(n_train, epochs)
    if kind == "collect":
        t0 = time.perf_counter()
        signals = fine_cli.train_collect(cfg)
        wall = time.perf_counter() - t0
        timing = dict(signals.meta["timing"], wall_s=wall)
    else:  # the same two models, the same training loop, no collection
        data = fine_cli.load_data(cfg.data)
        seeds = training.derive_seeds(cfg)
        models = [
            fine_cli.build_model(cfg.model, data.input_shape, data.n_classes, s)
            for s in (seeds.main, seeds.aux)
        ]
        opts = [training.make_optimizer(cfg, m) for m in models]
        gens = [torch.Generator().manual_seed(s) for s in (seeds.main, seeds.aux)]
        train_set = fine_cli.TensorPairs(data.train.x, data.train.y)
        t0 = time.perf_counter()
        for _ in range(epochs):
            for m, o, g in zip(models, opts, gens):
                training.train_epoch(m, o, train_set, cfg.train.batch_size, g)
        timing = {"train_s": time.perf_counter() - t0}
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"timing": timing, "peak_mib": peak_kib / 1024}))


def _run_child(kind: str, n_train: int, epochs: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--n", str(n_train), "--epochs", str(epochs)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_collection(n_train: int, epochs: int) -> dict[str, Any]:
    train_only = _run_child("train", n_train, epochs)
    collect = _run_child("collect", n_train, epochs)
    t = collect["timing"]
    return {
        "train_s": t["train_s"],
        "collect_s": t["collect_s"],
        "train_only_s": train_only["timing"]["train_s"],
        # both measures of "training alone": inside the same run, and a separate process
        "ratio": (t["train_s"] + t["collect_s"]) / t["train_s"],
        "ratio_vs_separate": (t["train_s"] + t["collect_s"]) / train_only["timing"]["train_s"],
        "peak_collect_mib": collect["peak_mib"],
        "peak_train_mib": train_only["peak_mib"],
        "memory_ratio": collect["peak_mib"] / train_only["peak_mib"],
    }


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 10))


def bench_engine_vs_vmap(n: int, n_vmap: int) -> dict[str, Any]:
    """Squared norms + 2 inner products: engine on n points vs vmap materialisation."""
    from torch.func import functional_call, grad, vmap

    from fine_cli.grads import GradEngine

    model = _mlp().eval()
    x, y = torch.randn(n, 784), torch.randint(0, 10, (n,))
    engine = GradEngine(model)
    vecs = [[torch.randn_like(p) for p in model.parameters()] for _ in range(2)]
    t0 = time.perf_counter()
    engine.per_sample(x, y, vecs)
    engine_s = time.perf_counter() - t0

    params = {k: p.detach() for k, p in model.named_parameters()}
    flat_v = torch.stack([torch.cat([t.reshape(-1) for t in v]) for v in vecs])

    def loss_fn(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (xi[None],))
        return nn.functional.cross_entropy(out, yi[None])

    per_sample_grad = vmap(grad(loss_fn), in_dims=(None, 0, 0))
    t0 = time.perf_counter()
    for s in range(0, n_vmap, 1000):
        g = per_sample_grad(params, x[s : s + 1000], y[s : s + 1000])
        flat = torch.cat([g[k].reshape(g[k].shape[0], -1) for k in params], 1)
        (flat * flat).sum(1)
        flat @ flat_v.T
    vmap_s = (time.perf_counter() - t0) * n / n_vmap  # linear in n: scaled from n_vmap
    return {"engine_s": engine_s, "vmap_s": vmap_s, "n_vmap": n_vmap, "speedup": vmap_s / engine_s}


def fake_signals(n: int, n_ckpt: int, b: int = 100) -> Any:
    """Self-mode signals of random components: n points, C checkpoints, R = 1."""
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
        "probe_sqnorm": np.ones((2, n_ckpt, 1, 2), f32),
        "loss": np.ones((2, n_ckpt, n), f32),
        "margin": np.ones((2, n_ckpt, n), f32),
        "checkpoint_epoch": np.arange(1, n_ckpt + 1),
    }
    return Signals(arrays=arrays, meta=make_meta("signals", mode="self", config=None))


def bench_stage2(n_pairs: int) -> dict[str, Any]:
    """`fine estimate --method fine` on n_pairs points x 100 checkpoints (100 + 100 samples
    per pair), with the paper's Algorithm 2 and with the defaults, vs one MLP epoch."""
    import fine_cli
    from fine_cli import training
    from fine_cli.stages import estimate

    art = fake_signals(n_pairs, 100)
    times = {}
    for name, opts in (
        ("alg2", estimate.EstimateOptions(estimator="alg2", bootstrap=0, permutations=0)),
        ("default", estimate.EstimateOptions()),
    ):
        t0 = time.perf_counter()
        estimate.run(art, "fine", opts)
        times[name] = time.perf_counter() - t0
    cfg = mnist_sized_config(n_pairs, 1)
    model = _mlp()
    opt = training.make_optimizer(cfg, model)
    xs, ys = torch.randn(n_pairs, 784), torch.randint(0, 10, (n_pairs,))
    t0 = time.perf_counter()
    training.train_epoch(
        model, opt, fine_cli.TensorPairs(xs, ys), 100, torch.Generator().manual_seed(0)
    )
    epoch_s = time.perf_counter() - t0
    return {
        "alg2_s": times["alg2"],
        "default_s": times["default"],
        "default": str(estimate.EstimateOptions()),
        "epoch_s": epoch_s,
        "ratio": times["alg2"] / epoch_s,
        "ratio_default": times["default"] / epoch_s,
    }


def bench_resnet(n: int, batch: int) -> dict[str, Any]:
    """ResNet-18 (CIFAR form): self-mode quantities per image vs training per image."""
    from fine_cli.grads import GradEngine
    from fine_cli.models.resnet import resnet18_cifar

    torch.manual_seed(0)
    model = resnet18_cifar(10)
    opt = torch.optim.Adam(model.parameters(), lr=0.005, betas=(0.9, 0.99))
    x, y = torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))
    model.train()
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        opt.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(model(x[s : s + batch]), y[s : s + batch]).backward()
        opt.step()
    train_ips = n / (time.perf_counter() - t0)
    engine = GradEngine(model, chunk_size=32)
    probes = [(x[:batch], y[:batch]), (x[batch : 2 * batch], y[batch : 2 * batch])]
    t0 = time.perf_counter()
    engine.per_sample(x, y, batches=probes)  # squared norms + 2 probe inner products
    collect_ips = n / (time.perf_counter() - t0)
    return {
        "train_img_s": train_ips,
        "collect_img_s": collect_ips,
        "ratio": collect_ips / train_ips,
    }


# ---- out of core: 2,000,000 points ------------------------------------------------------

# The out-of-core row: a linear model on hashed synthetic points, a few checkpoints.
OOC_FEATURES, OOC_CLASSES, OOC_EPOCHS, OOC_BATCH, OOC_CHUNK = 32, 10, 3, 1000, 16_384


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
        opts = estimate.EstimateOptions(bootstrap=0, permutations=0)
        inf = estimate.run(signals, "fine", opts, out_dir=f"{work}-influence")  # type: ignore[arg-type]
        outofcore.save_dir(inf, f"{work}-influence")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mib": peak_kib / 1024}))


def bench_out_of_core(sizes: tuple[int, int]) -> dict[str, Any]:
    """Peak memory of collection into a directory and of the streamed estimate, each in a
    fresh process, at two training-set sizes."""
    import shutil
    import tempfile

    out: dict[str, Any] = {}
    for n in sizes:
        work = tempfile.mkdtemp(prefix="fine-bench-ooc-")
        try:
            for kind in ("ooc-collect", "ooc-estimate"):
                res = subprocess.run(
                    [sys.executable, __file__, "--child", kind, "--n", str(n), "--work", work],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                out[(kind, n)] = json.loads(res.stdout.strip().splitlines()[-1])
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(f"{work}-influence", ignore_errors=True)
    small, big = sizes
    return {
        "sizes": sizes,
        **{
            f"{kind}_{n}": out[(kind, n)] for kind in ("ooc-collect", "ooc-estimate") for n in sizes
        },
        "collect_ratio": out[("ooc-collect", big)]["peak_mib"]
        / out[("ooc-collect", small)]["peak_mib"],
        "estimate_ratio": out[("ooc-estimate", big)]["peak_mib"]
        / out[("ooc-estimate", small)]["peak_mib"],
    }


# ---- GPU: the CIFAR ResNet-18 config and the MNIST ratio -----------------------------------


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_gpu_resnet(n: int, device: str = "cuda") -> dict[str, Any]:
    """configs/cifar_resnet18.yaml's model, optimiser, batch and chunk size on n random
    CIFAR-shaped images: training img/s of the two models (fp32 and bf16 autocast) and
    (training + one checkpoint's collection) / training for one epoch."""
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

    def epoch(precision: str) -> float:
        _sync(dev)
        t0 = time.perf_counter()
        for m, o, g in zip(models, opts, gens):
            training.train_epoch(m, o, data, cfg.train.batch_size, g, precision=precision)
        _sync(dev)
        return time.perf_counter() - t0

    epoch("fp32")  # warm-up: kernels chosen, memory pooled
    train_s, bf16_s = epoch("fp32"), epoch("bf16")
    col = Collector(
        models[0],
        models[1] if n_models == 2 else None,
        data,
        probe_batch_size=cfg.train.batch_size,
        chunk_size=cfg.collect.chunk_size,
        moments=needs_moments(cfg),
    )
    col.checkpoint(lr=cfg.train.lr)  # warm-up
    _sync(dev)
    t0 = time.perf_counter()
    col.checkpoint(lr=cfg.train.lr)
    _sync(dev)
    collect_s = time.perf_counter() - t0
    return {
        "n": n,
        "models": n_models,
        "train_img_s": n_models * n / train_s,
        "bf16_img_s": n_models * n / bf16_s,
        "ratio": (train_s + collect_s) / train_s,
        "train_s": train_s,
        "collect_s": collect_s,
    }


def bench_gpu_mnist(n: int, device: str = "cuda") -> dict[str, Any]:
    """The first CPU row on the GPU: train-collect on MNIST-sized points, 2 epochs."""
    import fine_cli

    cfg = fine_cli.load_config(mnist_sized_config(n, 2), [f"train.device={device}"])
    t = fine_cli.train_collect(cfg).meta["timing"]
    return {"ratio": (t["train_s"] + t["collect_s"]) / t["train_s"], **t}


def gpu_rows(quick: bool, device: str = "cuda") -> list[tuple[str, str, str, bool | None]]:
    name = torch.cuda.get_device_name(0) if device == "cuda" else device
    r = bench_gpu_resnet(1_000 if quick else 10_000, device)
    n = 6_000 if quick else 60_000
    m = bench_gpu_mnist(n, device)
    return [
        (
            f"{name}: CIFAR ResNet-18 config, training throughput of the {r['models']} "
            f"model(s), fp32 / bf16 autocast ({r['n']:,} random CIFAR-shaped images)",
            f"{r['train_img_s']:.0f} / {r['bf16_img_s']:.0f} img/s",
            "-",
            None,
        ),
        (
            f"{name}: CIFAR ResNet-18 config, (one epoch + one checkpoint's collection) / "
            "one epoch",
            f"{r['ratio']:.2f} ({r['train_s']:.1f} s + {r['collect_s']:.1f} s)",
            "<= 1.5",
            r["ratio"] <= 1.5,
        ),
        (
            f"{name}: the first row (train-collect on {n:,} MNIST-sized points) / training",
            f"{m['ratio']:.2f} ({m['train_s']:.1f} s training + {m['collect_s']:.1f} s collection)",
            "<= 1.5",
            m["ratio"] <= 1.5,
        ),
    ]


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
        "--gpu", action="store_true", help="GPU rows only (make bench-gpu); needs CUDA."
    )
    ap.add_argument(
        "--out-of-core",
        action="store_true",
        help="The out-of-core rows only (2,000,000 vs 200,000 points); other rows are kept.",
    )
    args = ap.parse_args()
    if args.child in ("ooc-collect", "ooc-estimate"):
        _ooc_child(args.child, args.n, args.work)
        return
    if args.child:
        _child(args.child, args.n, args.epochs)
        return
    print(f"machine: {machine()}", flush=True)
    if args.gpu:
        if not torch.cuda.is_available():
            sys.exit("bench --gpu: no CUDA device here; run it on a machine with a GPU.")
        finish(gpu_rows(args.quick), args, "bench-gpu")
        return
    if args.out_of_core:
        finish(out_of_core_rows(args.quick), args, "bench-ooc")
        return
    n = 6_000 if args.quick else 60_000
    rows: list[tuple[str, str, str, bool | None]] = []
    c = bench_collection(n, 1 if args.quick else 2)
    rows.append(
        (
            f"train-collect (self mode, checkpoint every epoch) on {n:,} MNIST-sized points / "
            "training the two models alone",
            f"{c['ratio']:.2f} ({c['train_s']:.1f} s training + {c['collect_s']:.1f} s "
            f"collection; separate training-only process: {c['train_only_s']:.1f} s, "
            f"ratio {c['ratio_vs_separate']:.2f})",
            "<= 1.5",
            c["ratio"] <= 1.5,
        )
    )
    print(rows[-1], flush=True)
    e = bench_engine_vs_vmap(n, 2_000 if args.quick else 5_000)
    rows.append(
        (
            "engine vs torch.func vmap materialisation, squared norms + 2 inner products, "
            f"{n:,} MLP gradients",
            f"{e['speedup']:.0f}x faster ({e['engine_s']:.2f} s vs {e['vmap_s']:.0f} s, vmap "
            f"timed on {e['n_vmap']:,} points and scaled)",
            ">= 50x",
            e["speedup"] >= 50,
        )
    )
    print(rows[-1], flush=True)
    s = bench_stage2(n)
    rows.append(
        (
            f"Stage 2 (`fine estimate --method fine --estimator alg2`) on {n:,} pairs of "
            "100 + 100 samples / one MLP training epoch",
            f"{s['ratio']:.2f} ({s['alg2_s']:.2f} s vs {s['epoch_s']:.2f} s)",
            "<= 1",
            s["ratio"] <= 1,
        )
    )
    rows.append(
        (
            "the same with the defaults (paired estimator, 200 bootstrap draws for standard "
            "errors, 999 permutations for p-values)",
            f"{s['ratio_default']:.2f} ({s['default_s']:.2f} s vs {s['epoch_s']:.2f} s)",
            "<= 1",
            s["ratio_default"] <= 1,
        )
    )
    print(rows[-2:], flush=True)
    r = bench_resnet(64 if args.quick else 256, 32)
    rows.append(
        (
            "ResNet-18 (CIFAR form) self-mode quantities (norm + 2 probe inner products), img/s / "
            "training img/s",
            f"{r['ratio']:.2f} ({r['collect_img_s']:.1f} vs {r['train_img_s']:.1f} img/s)",
            ">= 0.25",
            r["ratio"] >= 0.25,
        )
    )
    print(rows[-1], flush=True)
    rows.append(
        (
            "peak memory of the first row / training alone",
            f"{c['memory_ratio']:.2f} ({c['peak_collect_mib']:.0f} MiB vs "
            f"{c['peak_train_mib']:.0f} MiB)",
            "<= 2",
            c["memory_ratio"] <= 2,
        )
    )
    print(rows[-1], flush=True)
    finish(rows, args, "bench")
    finish(out_of_core_rows(args.quick), args, "bench-ooc")
    if torch.cuda.is_available():  # make bench on a GPU machine measures the GPU rows too
        finish(gpu_rows(args.quick), args, "bench-gpu")


def out_of_core_rows(quick: bool) -> list[tuple[str, str, str, bool | None]]:
    from fine_cli.estimators.options import EstimateOptions

    small, big = (20_000, 200_000) if quick else (200_000, 2_000_000)
    estimator = f"{EstimateOptions().estimator}, no bootstrap or permutations"
    o = bench_out_of_core((small, big))
    rows: list[tuple[str, str, str, bool | None]] = []
    for kind, what in (
        (
            "ooc-collect",
            "train-collect with collect.storage=directory (2 linear models, "
            f"{OOC_EPOCHS} checkpoints, chunks of {OOC_CHUNK:,})",
        ),
        ("ooc-estimate", f"streamed `fine estimate` of that directory ({estimator})"),
    ):
        ratio = o[f"{kind}_{big}"]["peak_mib"] / o[f"{kind}_{small}"]["peak_mib"]
        rows.append(
            (
                f"out of core: peak memory of {what} at {big:,} points / at {small:,}",
                f"{ratio:.2f} ({o[f'{kind}_{big}']['peak_mib']:.0f} MiB vs "
                f"{o[f'{kind}_{small}']['peak_mib']:.0f} MiB; "
                f"{o[f'{kind}_{big}']['seconds']:.0f} s at {big:,})",
                "<= 1.2",
                ratio <= 1.2,
            )
        )
        print(rows[-1], flush=True)
    return rows


def finish(
    rows: list[tuple[str, str, str, bool | None]], args: argparse.Namespace, block: str
) -> None:
    met = {True: "yes", False: "no", None: "-"}
    lines = [f"| {a} | {b} | {t} | {met[ok]} |" for a, b, t, ok in rows]
    print("\n".join(lines))
    if not args.no_write and not args.quick:
        write_doc("\n".join(TABLE_HEAD + lines), block)


TABLE_HEAD = ["| figure | measured | target | met |", "|---|---|---|---|"]


def write_doc(table: str, block: str = "bench") -> None:
    """Replace one generated section of docs/performance.md (``bench``: the CPU rows,
    ``bench-ooc``: out of core, ``bench-gpu``: the GPU rows), keep the rest."""
    marker_a, marker_b = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = f"{marker_a}\nMeasured {stamp} on: {machine()}.\n\n{table}\n{marker_b}"
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
