"""Resume: a train-collect killed at any moment (SIGKILL) and run again with --resume gives
the signals of an uninterrupted run, array for array; a changed config or data is refused;
fine run and fine validate resume at the seed and model level."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fine_cli
from fine_cli.artifacts import load_signals
from fine_cli.runstate import STATE_FILE
from fine_cli.stages import train_collect
from tests.conftest import write_config

FINE = [sys.executable, "-c", "from fine_cli.cli import main; main()"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# Random kills of the subprocess; the moments are drawn from a seeded generator.
KILLS = 3
KILL_SEED = 0
# A run long enough that kills land in training, collection and state writes.
LONGER = {
    "train.epochs": 8,
    "data.synthetic.n_samples": 1500,
    "model.hidden": [32],
    "experiment.methods": ["fine", "tracin", "trak"],
}


def _same_arrays(a: fine_cli.Signals, b: fine_cli.Signals) -> None:
    assert set(a.arrays) == set(b.arrays)
    for k in a.arrays:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _start(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [*FINE, "train-collect", str(cfg), "-o", str(out), "-q", *extra]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_run_killed_at_random_moments_resumes_to_the_same_signals(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", LONGER)
    ref = tmp_path / "ref.npz"
    t0 = time.monotonic()
    done = _start(cfg, ref)
    assert done.wait(timeout=600) == 0, done.stderr.read() if done.stderr else ""
    full_s = time.monotonic() - t0
    assert not (tmp_path / "ref.npz.run").exists()  # removed on success

    out, run_dir = tmp_path / "out.npz", tmp_path / "out.npz.run"
    rng = random.Random(KILL_SEED)
    killed_with_state = 0
    for i in range(KILLS):
        proc = _start(cfg, out, "--resume")
        if i % 2:  # right after a state write: mid-training, or while the next one is written
            seen = _state_mtime(run_dir)
            deadline = time.monotonic() + full_s * 2
            while _state_mtime(run_dir) == seen and proc.poll() is None:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
        else:  # anywhere from start-up to the end
            time.sleep(rng.uniform(0.0, full_s))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        killed_with_state += (run_dir / STATE_FILE).is_file()
    final = _start(cfg, out, "--resume")
    assert final.wait(timeout=600) == 0, final.stderr.read() if final.stderr else ""
    assert killed_with_state >= 1  # at least one kill interrupted a run that had progressed
    _same_arrays(load_signals(str(ref)), load_signals(str(out)))
    assert not run_dir.exists()


def _state_mtime(run_dir: Path) -> float:
    try:
        return (run_dir / STATE_FILE).stat().st_mtime_ns
    except FileNotFoundError:
        return 0.0


class _Crash(Exception):
    pass


def _crash_at(c_crash: int):  # type: ignore[no-untyped-def]
    def hook(c: int, epoch: int, models: list) -> None:  # type: ignore[type-arg]
        if c == c_crash:
            raise _Crash

    return hook


def test_resume_refuses_another_config_or_other_data_in_one_sentence(tmp_path: Path) -> None:
    data = tmp_path / "points.npz"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    np.savez(data, x_train=x, y_train=(x[:, 0] > 0).astype(np.int64))
    cfg = fine_cli.load_config(
        write_config(
            tmp_path / "c.yaml",
            {"data.dataset": "npz", "data.path": str(data), "train.epochs": 3},
        )
    )
    run_dir = tmp_path / "run"
    with pytest.raises(_Crash):
        train_collect.run(cfg, on_checkpoint=_crash_at(1), run_dir=run_dir)
    other = fine_cli.load_config(cfg, ["train.lr=0.02"])
    with pytest.raises(fine_cli.ConfigError, match=r"config's 'train.lr' differs") as err:
        train_collect.run(other, run_dir=run_dir, resume=True)
    assert str(err.value).count(". ") == 0  # one sentence
    np.savez(data, x_train=x + 1.0, y_train=(x[:, 0] > 0).astype(np.int64))
    with pytest.raises(fine_cli.ConfigError, match="data differ"):
        train_collect.run(cfg, run_dir=run_dir, resume=True)
    # without --resume the run starts over, and gives the uninterrupted signals
    fresh = train_collect.run(cfg, run_dir=run_dir)
    _same_arrays(fresh, train_collect.run(cfg))


def test_directory_storage_resumes_to_the_same_signals(tmp_path: Path) -> None:
    from fine_cli import outofcore

    cfg = fine_cli.load_config(
        write_config(tmp_path / "c.yaml", {"train.epochs": 4, "collect.storage": "directory"})
    )
    out, run_dir = tmp_path / "sig", tmp_path / "sig.run"
    with pytest.raises(_Crash):
        train_collect.run(cfg, on_checkpoint=_crash_at(2), run_dir=run_dir, out_dir=out)
    with pytest.raises(fine_cli.InputFileError, match="did not finish"):
        outofcore.load_dir(out)
    resumed = train_collect.run(cfg, run_dir=run_dir, resume=True, out_dir=out)
    outofcore.save_dir(resumed, out)
    in_memory = train_collect.run(fine_cli.load_config(cfg, ["collect.storage=memory"]))
    _same_arrays(in_memory, outofcore.load_dir(out, "signals"))  # type: ignore[arg-type]


# ---- fine run and fine validate: the seed and model level --------------------------------


def test_fine_run_resumes_at_the_seed_level(tmp_path: Path) -> None:
    from fine_cli.stages import experiment

    cfg = fine_cli.load_config(
        write_config(
            tmp_path / "c.yaml",
            {"experiment.seeds": [0, 1], "experiment.methods": ["fine", "tracin"]},
        )
    )
    whole = experiment.run(cfg, tmp_path / "whole")
    seen: list[tuple[str, int]] = []

    def crash_in_second_seed(phase: str, done: int, total: int) -> None:
        seen.append((phase, done))
        if phase == "collecting" and seen.count(("training", 0)) == 2 and done == 2:
            raise _Crash

    with pytest.raises(_Crash):
        experiment.run(cfg, tmp_path / "part", epoch_progress=crash_in_second_seed)
    assert (tmp_path / "part" / "seed-1" / "signals.npz.run" / STATE_FILE).is_file()
    resumed = experiment.run(cfg, tmp_path / "part", resume=True)
    assert [r.reused for r in resumed.runs] == [True, False]
    assert not (tmp_path / "part" / "seed-1" / "signals.npz.run").exists()
    for seed in (0, 1):
        a = load_signals(str(tmp_path / "whole" / f"seed-{seed}" / "signals.npz"))
        b = load_signals(str(tmp_path / "part" / f"seed-{seed}" / "signals.npz"))
        _same_arrays(a, b)
    for got, want in zip(resumed.recall, whole.recall, strict=True):
        assert [r.auroc for r in got.rankings] == [r.auroc for r in want.rankings]


def test_fine_validate_resumes_at_the_model_and_seed_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fine_cli.runstate import open_run
    from fine_cli.stages import validate

    cfg = fine_cli.load_config(
        write_config(tmp_path / "c.yaml", {"validation.models": 8, "train.epochs": 2})
    )
    whole = validate.run_truth(cfg)
    trained: list[int] = []
    real = validate._train_on

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        trained.append(1)
        if len(trained) == 5:
            raise _Crash
        return real(*args, **kwargs)

    monkeypatch.setattr(validate, "_train_on", counting)
    run = open_run("validate", cfg, tmp_path / "v", resume=True)
    with pytest.raises(_Crash):
        validate.run_truth(cfg, run=run)
    trained.clear()
    monkeypatch.setattr(validate, "_train_on", real)
    run = open_run("validate", cfg, tmp_path / "v", resume=True)
    monkeypatch.setattr(validate, "_train_on", counting)
    resumed = validate.run_truth(cfg, run=run)
    assert len(trained) == 4  # the 4 models finished before the crash are not trained again
    for k in whole.arrays:
        np.testing.assert_array_equal(whole[k], resumed[k], err_msg=k)
    signals = validate.collect_signals(cfg, run=run)
    again = validate.collect_signals(cfg, run=run)  # read back from the run directory
    for a, b in zip(signals, again, strict=True):
        _same_arrays(a, b)
    other = fine_cli.load_config(cfg, ["train.lr=0.02"])
    with pytest.raises(fine_cli.ConfigError, match=r"'train\.lr' differs"):
        open_run("validate", other, tmp_path / "v", resume=True)
    run.remove()
    assert not (tmp_path / "v").exists()
