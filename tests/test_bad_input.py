"""Bad input: one clear sentence, a non-zero exit code, no traceback, no partial output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fine_cli.artifacts import load_artifact, save_artifact
from fine_cli.cli import app
from fine_cli.results import make_meta
from tests.conftest import write_config

runner = CliRunner()


def _fails(args: list[str], code: int, *needles: str) -> str:
    res = runner.invoke(app, args)
    out = res.output
    assert res.exit_code == code, out
    assert "Traceback" not in out
    assert "error:" in out
    for n in needles:
        assert n in out, out
    return out


def test_missing_config(tmp_path: Path) -> None:
    out = tmp_path / "s.npz"
    _fails(["train-collect", str(tmp_path / "nope.yaml"), "-o", str(out)], 2, "does not exist")
    assert not out.exists()


def test_unknown_key_names_its_path(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", {"train.epoch": 3})
    _fails(["train-collect", str(cfg)], 2, "train.epoch", "unknown key")


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", {"train.batch_size": "many"})
    _fails(["train-collect", str(cfg)], 2, "train.batch_size", "many")


def test_bad_set_override(tiny_config: Path) -> None:
    _fails(["train-collect", str(tiny_config), "--set", "train.lr"], 2, "key.path=value")
    _fails(["train-collect", str(tiny_config), "--set", "model.arch=transformer"], 2, "model.arch")
    _fails(["train-collect", str(tiny_config), "--set", "seed.x=1"], 2, "seed")


def test_invalid_yaml(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train: [unclosed\n")
    _fails(["train-collect", str(p)], 2, "not valid YAML")


def test_signals_of_another_kind(tiny_signals: Path, tmp_path: Path) -> None:
    inf = tmp_path / "inf.npz"
    assert runner.invoke(app, ["estimate", str(tiny_signals), "-o", str(inf)]).exit_code == 0
    out = tmp_path / "x.npz"
    _fails(["estimate", str(inf), "-o", str(out)], 3, "influence file", "train-collect")
    assert not out.exists()
    _fails(["rank", str(tiny_signals)], 3, "signals file", "fine estimate")


def test_random_npz_and_non_npz(tmp_path: Path) -> None:
    p = tmp_path / "random.npz"
    np.savez(p, a=np.arange(3))
    _fails(["estimate", str(p)], 3, "not one written by fine")
    q = tmp_path / "text.npz"
    q.write_text("hello")
    _fails(["estimate", str(q)], 3, "not a readable .npz")
    _fails(["estimate", str(tmp_path / "missing.npz")], 3, "does not exist")


def test_truncated_file(tiny_signals: Path, tmp_path: Path) -> None:
    data = tiny_signals.read_bytes()
    p = tmp_path / "trunc.npz"
    p.write_bytes(data[: len(data) // 2])
    out = tmp_path / "o.npz"
    _fails(["estimate", str(p), "-o", str(out)], 3, "truncated or corrupt")
    assert not out.exists()


def test_other_schema_version(tiny_signals: Path, tmp_path: Path) -> None:
    art = load_artifact(str(tiny_signals), "signals")
    meta = dict(art.meta, schema_version=99)
    p = tmp_path / "v99.npz"
    save_artifact(str(p), "signals", art.arrays, meta)
    _fails(["estimate", str(p)], 3, "schema version 99")


def test_nan_and_shape_mismatch(tiny_signals: Path, tmp_path: Path) -> None:
    art = load_artifact(str(tiny_signals), "signals")
    bad = dict(art.arrays)
    bad["ip"] = bad["ip"].copy()
    bad["ip"][0, 0, 0, 0, 3] = np.nan
    p = tmp_path / "nan.npz"
    save_artifact(str(p), "signals", bad, art.meta)
    _fails(["estimate", str(p)], 3, "'ip'", "NaN")
    bad = dict(art.arrays, sqnorm=art["sqnorm"][:, :, :-1])
    save_artifact(str(p), "signals", bad, art.meta)
    _fails(["estimate", str(p)], 3, "'sqnorm'", "shape")
    bad = {k: v for k, v in art.arrays.items() if k != "lr"}
    save_artifact(str(p), "signals", bad, art.meta)
    _fails(["estimate", str(p)], 3, "lr")


def test_unwritable_output_directory(tiny_signals: Path, tmp_path: Path) -> None:
    _fails(
        ["estimate", str(tiny_signals), "-o", str(tmp_path / "no" / "dir.npz")], 4, "does not exist"
    )


def test_rank_query_out_of_range(tiny_signals: Path, tmp_path: Path) -> None:
    inf = tmp_path / "inf.npz"
    assert runner.invoke(app, ["estimate", str(tiny_signals), "-o", str(inf)]).exit_code == 0
    _fails(["rank", str(inf), "--query", "3"], 2, "--query 3")


def test_recall_without_flips(tmp_path: Path, tiny_signals: Path) -> None:
    art = load_artifact(str(tiny_signals), "signals")
    n = art["flip_mask"].shape[0]
    arrays = {
        "order": np.arange(n),
        "score": np.linspace(1, 0, n),
        "train_index": np.arange(n),
        "is_flipped": np.zeros(n, bool),
        "label": np.zeros(n, np.int64),
    }
    p = tmp_path / "r.npz"
    save_artifact(str(p), "ranking", arrays, make_meta("ranking", method="fine", config=None))
    _fails(["evaluate", "recall", str(p)], 3, "label_noise")


@pytest.mark.parametrize("arg", ["--p-grid=abc", "--p-grid=150"])
def test_bad_p_grid(arg: str, tiny_signals: Path) -> None:
    _fails(["evaluate", "recall", str(tiny_signals), arg], 2, "--p-grid")


def test_outputs_get_the_usual_file_mode(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        p = tmp_path / "r.npz"
        save_artifact(str(p), "ranking", {"order": np.arange(3)}, make_meta("ranking"))
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644  # not the private 0600 of a temporary file
