"""Shared fixtures: a tiny config and one train-collect run reused by the CLI tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

# Tests share 2 cores with whatever else runs; one thread per process avoids spinning.
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {
        "dataset": "synthetic",
        "label_noise": 0.2,
        "synthetic": {"n_samples": 250, "n_features": 10, "n_classes": 3, "separation": 3.0},
    },
    "model": {"arch": "mlp", "hidden": [16]},
    "train": {"epochs": 4, "batch_size": 25, "lr": 0.01, "device": "cpu"},
    # the auxiliary model too (Algorithm 1 whole, for the estimators that read O_hat)
    "collect": {
        "mode": "self",
        "probe_repeats": 2,
        "features": {"proj_dim": 16},
        "auxiliary": True,
    },
    "evaluate": {"p_grid": [0, 10, 20, 30, 50, 100]},
    # every method, so that the tiny signals carry trak / if features too
    "experiment": {"methods": ["fine", "tracin", "grad-cos", "loss", "margin", "trak", "if"]},
}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def write_config(path: Path, overrides: dict | None = None) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    for key, value in (overrides or {}).items():
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_signals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One self-mode train-collect run through the CLI, shared by the tests that read it."""
    from typer.testing import CliRunner

    from fine_cli.cli import app

    d = tmp_path_factory.mktemp("run")
    cfg = write_config(d / "tiny.yaml")
    out = d / "signals.npz"
    res = CliRunner().invoke(app, ["train-collect", str(cfg), "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    return out


def parts(result: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arrays, meta) of a typed result, for tests that read both."""
    return result.arrays, result.meta


# Methods whose inputs the generic test signals do not carry: they have tests of their own
# (confident learning's K-fold probabilities: test_confident.py; LESS's Adam-preconditioned
# LoRA gradients of LLM runs: test_llm.py).
ONLY_WITH_THEIR_OWN_SIGNALS = {"less"}


def _method_fns() -> dict[str, Any]:
    """name -> fn(view, queries) -> (q, G) of every registered method that scores generic
    signals, in registry order (f-INE with the default estimator, without bootstrap or
    p-values)."""
    from fine_cli import registry
    from fine_cli.estimators.fine_method import fine_scores

    out: dict[str, Any] = {}
    for name, m in registry.methods().items():
        if m.crossval or name in ONLY_WITH_THEIR_OWN_SIGNALS:
            continue
        if m.score is not None:
            out[name] = lambda sig, queries, _m=m: _m.score(sig, queries, None)
        else:
            out[name] = fine_scores
    return out


METHODS = _method_fns()
