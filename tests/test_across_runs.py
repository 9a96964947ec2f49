"""`fine evaluate consistency` and `variability` on RUN directories: hand-computed values,
the CLI end to end, and one-sentence refusals of runs that cannot be compared."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fine_cli.artifacts import save_artifact
from fine_cli.cli import app
from fine_cli.results import make_meta
from fine_cli.stages.evaluate import load_runs, run_consistency, run_variability

runner = CliRunner()
TOL = 1e-12
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Scores of subsets 0..4 in three runs; rankings follow them (ties none).
SCORES = {
    "a": [5.0, 4.0, 3.0, 2.0, 1.0],  # order 0 1 2 3 4
    "b": [4.0, 5.0, 1.0, 3.0, 2.0],  # order 1 0 3 4 2
    "c": [1.0, 2.0, 3.0, 4.0, 5.0],  # order 4 3 2 1 0
}
TRAIN_INDEX = np.array([10, 11, 12, 13, 14])


def _write(run: Path, method: str, scores: list[float], seed: int, tidx: np.ndarray) -> None:
    run.mkdir(parents=True, exist_ok=True)
    s = np.asarray(scores)
    order = np.argsort(-s, kind="stable")
    arrays = {
        "order": order,
        "score": s[order],
        "train_index": tidx[order],
        "is_flipped": np.isin(order, [0, 2]),
        "label": np.zeros(len(s), np.int64),
    }
    meta = make_meta(
        "ranking",
        method=method,
        query="self",
        seeds={"main": seed, "aux": seed + 100},
        config={"evaluate": {"p_grid": [0, 40, 60, 100]}},
    )
    save_artifact(str(run / f"ranking-{method}.npz"), "ranking", arrays, meta)


@pytest.fixture
def runs(tmp_path: Path) -> list[str]:
    out = []
    for i, (name, scores) in enumerate(SCORES.items()):
        run = tmp_path / f"seed-{name}"
        _write(run, "tracin", scores, i, TRAIN_INDEX)
        _write(run, "loss", scores[::-1], i, TRAIN_INDEX)  # another method beside it
        out.append(str(run))
    return out


def test_consistency_equals_hand_computed_jaccard(runs: list[str]) -> None:
    report = run_consistency(load_runs(runs, ["tracin"]), [40, 60], runs)
    (m,) = report.methods
    # top-40% (2 of 5): {0,1}, {0,1}, {3,4} -> pairs 1, 0, 0
    # top-60% (3 of 5): {0,1,2}, {0,1,3}, {2,3,4} -> pairs 2/4, 1/5, 1/5
    assert m.values == pytest.approx([1 / 3, (0.5 + 0.2 + 0.2) / 3], abs=TOL)
    assert m.runs == 3 and m.n == 5


def test_variability_equals_hand_computed_cv(runs: list[str]) -> None:
    report = run_variability(load_runs(runs, ["tracin"]), [40, 100], runs)
    (m,) = report.methods
    # mean scores 10/3, 11/3, 7/3, 3, 8/3: the top-40% are subsets 1 and 0, with
    # population sd sqrt(14)/3 and sqrt(26)/3 around means 11/3 and 10/3.
    top40 = (math.sqrt(14) / 11 + math.sqrt(26) / 10) / 2
    s = np.array(list(SCORES.values()))
    every = float(np.mean(s.std(axis=0) / np.abs(s.mean(axis=0))))
    assert m.values == pytest.approx([top40, every], abs=TOL)


def test_methods_default_to_those_in_every_run(runs: list[str], tmp_path: Path) -> None:
    assert list(load_runs(runs)) == ["tracin", "loss"]  # the registry's order
    _write(tmp_path / "seed-d", "tracin", SCORES["a"], 9, TRAIN_INDEX)  # no loss there
    assert list(load_runs([*runs, str(tmp_path / "seed-d")])) == ["tracin"]


def test_cli_end_to_end(runs: list[str], tmp_path: Path) -> None:
    plot = tmp_path / "c.png"
    res = runner.invoke(
        app, ["evaluate", "consistency", *runs, "--p-grid", "40,60", "--json", "--plot", str(plot)]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    tracin = next(m for m in report["methods"] if m["method"] == "tracin")
    assert tracin["values"] == pytest.approx([1 / 3, 0.3], abs=TOL)
    assert report["runs"] == runs and plot.read_bytes()[:8] == PNG_SIGNATURE
    res = runner.invoke(app, ["evaluate", "variability", *runs, "--method", "loss"])
    assert res.exit_code == 0, res.output
    assert "loss" in res.stdout and "tracin" not in res.stdout
    # the config's grid (0 dropped) when no --p-grid is given
    res = runner.invoke(app, ["evaluate", "consistency", *runs, "--json"])
    assert json.loads(res.stdout)["methods"][0]["p_grid"] == [40, 60, 100]


def _fails(args: list[str], code: int, words: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output and words in res.output
    assert res.output.strip().startswith("error:")


def test_refusals_are_one_sentence(runs: list[str], tmp_path: Path) -> None:
    _fails(["evaluate", "consistency", runs[0]], 2, "at least two")
    _fails(["evaluate", "consistency", runs[0], str(tmp_path / "nope")], 3, "does not exist")
    _fails(["evaluate", "variability", runs[0], runs[0]], 2, "given twice")
    _fails(["evaluate", "consistency", *runs, "--method", "trak"], 3, "ranking-trak.npz")
    _fails(["evaluate", "consistency", *runs, "--p-grid", "0"], 2, "only 0")
    same = tmp_path / "same-seed"
    _write(same, "tracin", SCORES["c"], 0, TRAIN_INDEX)  # seed of run a
    _fails(["evaluate", "consistency", runs[0], str(same)], 3, "same training seeds")
    other = tmp_path / "other-data"
    _write(other, "tracin", SCORES["c"], 7, TRAIN_INDEX + 100)
    _fails(["evaluate", "variability", runs[0], str(other)], 3, "other training points")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(["evaluate", "consistency", runs[0], str(empty)], 3, "in common")
