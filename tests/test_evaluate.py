"""The recall stage on ranking files written through the artifact contract, and its plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fine_cli.artifacts import save_artifact
from fine_cli.errors import ConfigError, FineError, InputFileError
from fine_cli.plots import plot_recall
from fine_cli.results import make_meta
from fine_cli.stages.evaluate import DEFAULT_P_GRID, RecallReport, load_rankings, run_recall

N = 2000
NOISE = 0.2
# Recall of a random ranking at p is hypergeometric with mean p/100; its sd at N = 2000
# and 400 flipped is at most 0.022, so 0.07 is about 3 sd.
RANDOM_TOL = 0.07
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _flip_mask(n: int = N, rate: float = NOISE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=round(rate * n), replace=False)] = True
    return mask


def _write_ranking(
    path: Path,
    method: str,
    flip_mask: np.ndarray,
    order: np.ndarray,
    config: dict[str, Any] | None = None,
    train_index: np.ndarray | None = None,
) -> str:
    """Save a ranking artifact ordering the points of ``flip_mask`` by ``order``."""
    g = order.size
    arrays = {
        "order": order.astype(np.int64),
        "score": np.linspace(1.0, 0.0, g),  # decreasing: most influential first
        "train_index": order.astype(np.int64) if train_index is None else train_index,
        "is_flipped": flip_mask[order],
        "label": np.zeros(g, dtype=np.int64),
    }
    cfg = config if config is not None else {"evaluate": {"p_grid": DEFAULT_P_GRID}}
    meta = make_meta("ranking", method=method, query="self", config=cfg)
    save_artifact(str(path), "ranking", arrays, meta)
    return str(path)


def _perfect_order(mask: np.ndarray) -> np.ndarray:
    return np.concatenate([np.flatnonzero(mask), np.flatnonzero(~mask)])


@pytest.fixture
def report(tmp_path: Path) -> RecallReport:
    mask = _flip_mask()
    perfect = _write_ranking(tmp_path / "perfect.npz", "fine", mask, _perfect_order(mask))
    rand_order = np.random.default_rng(1).permutation(N)
    rand = _write_ranking(tmp_path / "random.npz", "tracin", mask, rand_order)
    return run_recall(load_rankings([perfect, rand]))


def test_perfect_ranking(report: RecallReport) -> None:
    r = report.rankings[0]
    assert (r.label, r.method, r.n, r.n_flipped) == ("fine", "fine", N, round(NOISE * N))
    assert r.p_grid == DEFAULT_P_GRID
    for p, rec in zip(r.p_grid, r.recall, strict=True):
        assert rec == pytest.approx(min(1.0, p / (100 * NOISE)))
        if p >= 100 * NOISE:
            assert rec == 1.0
    assert r.auroc == 1.0
    assert r.auprc == pytest.approx(1.0)
    assert r.area == pytest.approx(1 - NOISE / 2)
    assert r.area == pytest.approx(r.ideal_area)
    assert r.recall == pytest.approx(r.ideal_recall)


def test_random_ranking(report: RecallReport) -> None:
    r = report.rankings[1]
    assert r.label == "tracin"
    for p, rec in zip(r.p_grid, r.recall, strict=True):
        assert abs(rec - p / 100) < RANDOM_TOL, (p, rec)
    assert abs(r.area - 0.5) < RANDOM_TOL
    assert abs(r.auroc - 0.5) < RANDOM_TOL
    assert abs(r.auprc - NOISE) < RANDOM_TOL


def test_reversed_ranking_and_ascending_scores(tmp_path: Path) -> None:
    # A ranking whose scores ascend along the order is read as "higher = ranked later".
    mask = _flip_mask(n=200)
    order = _perfect_order(mask)[::-1].copy()
    path = _write_ranking(tmp_path / "rev.npz", "loss", mask, order)
    r = run_recall(load_rankings([path])).rankings[0]
    assert r.auroc == 0.0
    assert r.recall[r.p_grid.index(50.0)] == 0.0
    art = load_rankings([path])[0]
    art.arrays["score"] = art.arrays["score"][::-1].copy()
    assert run_recall([art]).rankings[0].auroc == 0.0


def test_report_dict_is_json(report: RecallReport) -> None:
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert [r["label"] for r in d["rankings"]] == ["fine", "tracin"]
    assert d["rankings"][0]["noise_rate"] == pytest.approx(NOISE)
    assert len(d["rankings"][0]["recall"]) == len(DEFAULT_P_GRID)


def test_p_grid_from_argument_config_and_default(tmp_path: Path) -> None:
    mask = _flip_mask(n=100)
    order = _perfect_order(mask)
    own = _write_ranking(tmp_path / "a.npz", "fine", mask, order, {"evaluate": {"p_grid": [0, 50]}})
    bare = _write_ranking(tmp_path / "b.npz", "fine", mask, order, {})
    arts = load_rankings([own, bare])
    r_own, r_bare = run_recall(arts).rankings
    assert r_own.p_grid == [0.0, 50.0] and r_own.recall == [0.0, 1.0]
    assert r_bare.p_grid == DEFAULT_P_GRID
    # Repeated methods are told apart by file name.
    assert (r_own.label, r_bare.label) == ("fine (a.npz)", "fine (b.npz)")
    forced = run_recall(arts, p_grid=[10, 100]).rankings
    assert all(r.p_grid == [10.0, 100.0] for r in forced)
    with pytest.raises(FineError, match="p_grid") as err:
        run_recall(arts, p_grid=[10, 120])
    assert isinstance(err.value, ConfigError)


def test_clean_data_is_refused(tmp_path: Path) -> None:
    mask = np.zeros(50, dtype=bool)
    path = _write_ranking(tmp_path / "clean.npz", "fine", mask, np.arange(50))
    with pytest.raises(FineError, match=r"label_noise > 0") as err:
        run_recall(load_rankings([path]))
    assert isinstance(err.value, InputFileError)


def test_groups_are_refused(tmp_path: Path) -> None:
    mask = _flip_mask(n=50)
    groups = np.full(50, -1, dtype=np.int64)
    path = _write_ranking(tmp_path / "g.npz", "fine", mask, np.arange(50), train_index=groups)
    with pytest.raises(FineError, match="single training points") as err:
        run_recall(load_rankings([path]))
    assert isinstance(err.value, InputFileError)


def test_bad_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FineError, match="does not exist"):
        load_rankings([str(tmp_path / "missing.npz")])
    with pytest.raises(FineError, match="no ranking file"):
        load_rankings([])
    mask = _flip_mask(n=50)
    path = _write_ranking(tmp_path / "r.npz", "fine", mask, np.arange(50))
    art = load_rankings([path])[0]
    art.arrays["score"] = np.random.default_rng(0).normal(size=50)
    with pytest.raises(FineError, match="not sorted"):
        run_recall([art])
    art.arrays["is_flipped"] = mask[:10]
    with pytest.raises(FineError, match="shape"):
        run_recall([art])
    # An artifact of another kind is refused by the loader.
    other = tmp_path / "infl.npz"
    save_artifact(str(other), "influence", {"scores": np.zeros((1, 3))}, make_meta("influence"))
    with pytest.raises(FineError, match="ranking file is needed"):
        load_rankings([str(other)])


def test_plot_recall_writes_png(report: RecallReport, tmp_path: Path) -> None:
    out = tmp_path / "recall.png"
    assert plot_recall(report, out) == out
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
    with pytest.raises(FineError, match="does not exist"):
        plot_recall(report, tmp_path / "nodir" / "x.png")


def test_plot_handles_nan_auroc(report: RecallReport, tmp_path: Path) -> None:
    report.rankings[1].auroc = math.nan
    plot_recall(report, tmp_path / "nan.png")
    assert (tmp_path / "nan.png").stat().st_size > 0


def test_repeated_method_is_told_apart_by_estimator(tmp_path: Path) -> None:
    mask = _flip_mask(n=100)
    order = _perfect_order(mask)
    paths = [_write_ranking(tmp_path / f"{e}.npz", "fine", mask, order) for e in ("p", "a", "b")]
    arts = load_rankings(paths)
    arts[0].meta["estimator"], arts[1].meta["estimator"] = "paired", "alg2"
    arts[2].meta["estimator"] = "alg2"  # same estimator twice: file names decide
    labels = [r.label for r in run_recall(arts).rankings]
    assert labels == ["fine (paired)", "fine (a.npz)", "fine (b.npz)"]
