"""Users' own models and data files, from YAML through all four stages of the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from fine_cli.artifacts import load_signals
from fine_cli.cli import app

runner = CliRunner()

MODEL_FILE = """
import math
from torch import nn


def make_net(input_shape, n_classes, width=12):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
        nn.Linear(width, n_classes),
    )
"""


def _clusters(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centres = rng.normal(scale=3.0, size=(k, d))
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y.astype(np.int64)


def _npz(tmp: Path) -> dict:
    x, y = _clusters(150, 6, 3, 0)
    np.savez(tmp / "data.npz", x_train=x, y_train=y)
    return {"dataset": "npz", "path": str(tmp / "data.npz")}


def _csv(tmp: Path) -> dict:
    x, y = _clusters(150, 4, 3, 1)
    names = np.array(["setosa", "versicolor", "virginica"])
    rows = ["f0,f1,f2,f3,species"] + [
        ",".join(f"{v:.4f}" for v in xi) + f",{names[yi]}" for xi, yi in zip(x, y)
    ]
    (tmp / "table.csv").write_text("\n".join(rows) + "\n")
    return {"dataset": "csv", "path": str(tmp / "table.csv"), "label_column": "species"}


def _folder(tmp: Path) -> dict:
    rng = np.random.default_rng(2)
    for c, name in enumerate(("circle", "square")):
        (tmp / "images" / name).mkdir(parents=True)
        for i in range(30):
            img = rng.integers(0, 60, (8, 8)).astype(np.uint8)
            img[2:6, 2:6] += 150 if c else 0  # class 1: a bright centre
            Image.fromarray(img).save(tmp / "images" / name / f"{i}.png")
    return {"dataset": "folder", "root": str(tmp / "images")}


def _config(tmp: Path, data: dict, train: dict | None = None) -> Path:
    (tmp / "net.py").write_text(MODEL_FILE)
    cfg = {
        "name": "user",
        "data": {**data, "label_noise": 0.2, "test_fraction": 0.2},
        "model": {"arch": f"{tmp / 'net.py'}:make_net", "kwargs": {"width": 10}},
        "train": {"epochs": 3, "batch_size": 20, "lr": 0.01, "device": "cpu", **(train or {})},
        "collect": {"mode": "self"},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _invoke(*args: str) -> str:
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("make_data", [_npz, _csv, _folder], ids=["npz", "csv", "folder"])
def test_own_model_and_data_through_every_stage(tmp_path: Path, make_data) -> None:
    cfg = _config(tmp_path, make_data(tmp_path))
    sig, inf, rk = (str(tmp_path / f) for f in ("s.npz", "i.npz", "r.npz"))
    _invoke("train-collect", str(cfg), "-o", sig, "-q")
    _invoke("estimate", sig, "-o", inf)
    _invoke("rank", inf, "-o", rk, "--format", "json")
    report = json.loads(_invoke("evaluate", "recall", rk, "--json"))
    auroc = report["rankings"][0]["auroc"]
    assert 0.0 <= auroc <= 1.0
    assert load_signals(sig)["flip_mask"].sum() > 0


def test_augment_and_schedule_reach_training(tmp_path: Path) -> None:
    from fine_cli.config import load_config
    from fine_cli.schedules import lr_at

    train = {"schedule": "cosine", "augment": ["RandomHorizontalFlip"]}
    cfg_path = _config(tmp_path, _folder(tmp_path), train)
    sig = tmp_path / "s.npz"
    _invoke("train-collect", str(cfg_path), "-o", str(sig), "-q")
    cfg = load_config(cfg_path)
    want = [lr_at(cfg.train, e) for e in range(cfg.train.epochs)]
    np.testing.assert_allclose(load_signals(str(sig))["lr"], want)
    # augmentation changes training: the signals differ from those of the same config without
    plain = _config(
        tmp_path, {"dataset": "folder", "root": str(tmp_path / "images")}, train | {"augment": []}
    )
    _invoke("train-collect", str(plain), "-o", str(tmp_path / "p.npz"), "-q")
    assert not np.array_equal(
        load_signals(str(sig))["loss"], load_signals(str(tmp_path / "p.npz"))["loss"]
    )
