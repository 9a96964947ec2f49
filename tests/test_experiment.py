"""`fine run`: every seed and method of a config, its RUN directories and its report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fine_cli.cli import app
from tests.conftest import write_config

runner = CliRunner()
TOL = 1e-12
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, str]:
    d = tmp_path_factory.mktemp("exp")
    cfg = write_config(
        d / "tiny.yaml",
        {"experiment.seeds": SEEDS, "collect.features.extra_models": 1, "train.epochs": 3},
    )
    runs, report = d / "runs", d / "report"
    args = ["run", str(cfg), "--out-dir", str(runs), "--report-dir", str(report), "-q"]
    res = runner.invoke(app, [*args, "--set", "estimate.permutations=20"])
    assert res.exit_code == 0, res.output
    return cfg, runs, report, res.stdout


def test_run_writes_runs_and_report(experiment: tuple[Path, Path, Path, str]) -> None:
    _, runs, report, stdout = experiment
    methods = ["fine", "tracin", "grad-cos", "loss", "margin", "trak", "if"]
    for seed in SEEDS:
        have = {p.name for p in (runs / f"seed-{seed}").iterdir()}
        assert "signals.npz" in have
        assert {f"ranking-{m}.npz" for m in methods} <= have
    for suffix in ("recall", "consistency", "variability"):
        assert (report / f"tiny-{suffix}.png").read_bytes()[:8] == PNG_SIGNATURE
    text = (report / "tiny.md").read_text()
    for heading in ("Fig. 6", "Fig. 2", "Fig. 8", "Time per method", "paper's claims"):
        assert heading in text
    summary = json.loads((report / "tiny.json").read_text())
    assert list(summary["methods"]) == methods and summary["seeds"] == SEEDS
    assert "AUROC" in stdout and "trak" in stdout


def test_report_numbers_equal_the_evaluate_commands(
    experiment: tuple[Path, Path, Path, str],
) -> None:
    _, runs, report, _ = experiment
    summary = json.loads((report / "tiny.json").read_text())["methods"]
    dirs = [str(runs / f"seed-{s}") for s in SEEDS]
    for measure in ("consistency", "variability"):
        res = runner.invoke(app, ["evaluate", measure, *dirs, "--json"])
        assert res.exit_code == 0, res.output
        for m in json.loads(res.stdout)["methods"]:
            want = [None if v is None else pytest.approx(v, abs=TOL) for v in m["values"]]
            assert summary[m["method"]][measure]["values"] == want, (measure, m["method"])
    rankings = [str(runs / "seed-1" / f"ranking-{m}.npz") for m in summary]
    res = runner.invoke(app, ["evaluate", "recall", *rankings, "--json"])
    for r in json.loads(res.stdout)["rankings"]:
        assert summary[r["label"]]["auroc_per_seed"][1] == pytest.approx(r["auroc"], abs=TOL)


def test_reuse_skips_training(experiment: tuple[Path, Path, Path, str], tmp_path: Path) -> None:
    cfg, runs, _, _ = experiment
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    args = ["run", str(cfg), "--out-dir", str(copy), "--report-dir", str(tmp_path), "--reuse"]
    res = runner.invoke(app, [*args, "--set", "estimate.permutations=20"])
    assert res.exit_code == 0 and res.stderr.count("reusing") == len(SEEDS), res.output
    # the name is part of the config: signals made under another one are not reused
    res = runner.invoke(app, [*args, "--set", "estimate.permutations=20", "--set", "name=again"])
    assert res.exit_code == 0, res.output
    assert "another config" in res.stderr and "reusing" not in res.stderr


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("experiment.seeds=[0]", "at least two different seeds"),
        ("collect.mode=test", "collect.mode=self"),
        ("data.label_noise=0", "label_noise"),
    ],
)
def test_run_refuses_with_one_sentence(tmp_path: Path, override: str, words: str) -> None:
    cfg = write_config(tmp_path / "c.yaml")
    res = runner.invoke(app, ["run", str(cfg), "--set", override, "--out-dir", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and words in res.output
