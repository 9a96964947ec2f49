"""The findings of a hostile user's session (issue 10), one test each: outputs that are
special files, links or inputs; concurrent writers; stale temporary files; markup in
messages; exit codes of malformed files, I/O errors and config values; dtypes; atomic
reports; confined report names; undefined standard errors; input hashes; threads and
determinism; ``fine inspect``. tests/test_robustness.py runs the whole table of cases."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fine_cli import artifacts
from fine_cli.artifacts import check_made_from, load, save_artifact
from fine_cli.cli import app
from fine_cli.errors import InputFileError
from fine_cli.estimators import null
from fine_cli.estimators.fine import ESTIMATOR_FNS
from tests.conftest import write_config
from tests.robustness_cases import ALIAS_BOMB

runner = CliRunner()
FINE = [sys.executable, "-m", "fine_cli.cli"]
# Standard errors above this are the collapsed-scale artefact of issue 10 (about 7e11).
ABSURD_SE = 1e6


def _run(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args))
    assert "Traceback" not in res.output and "internal error" not in res.output, res.output
    return res.exit_code, res.output


def _estimate(signals: Path, out: Path, *extra: str) -> tuple[int, str]:
    return _run(
        "estimate", str(signals), "--bootstrap", "0", "--permutations", "0", "-o", str(out), *extra
    )


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".lock")))


# ---- -o: special files, links, the input -------------------------------------------------


def test_special_files_and_links_at_o_are_refused_and_kept(
    tiny_signals: Path, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    target = tmp_path / "target.npz"
    target.write_bytes(b"keep me")
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    for out, words in ((fifo, "FIFO"), (link, "symbolic link")):
        code, text = _estimate(tiny_signals, out)
        assert code == 2 and words in text, text
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still a FIFO, not a regular file
    assert link.is_symlink() and target.read_bytes() == b"keep me"
    if os.geteuid() == 0:  # a device like /dev/null, made here so the real one is never at risk
        dev = tmp_path / "null"
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        code, text = _estimate(tiny_signals, dev)
        assert code == 2 and "device" in text and stat.S_ISCHR(os.lstat(dev).st_mode)
    assert _leftovers(tmp_path) == []


def test_o_equal_to_the_input_is_refused_and_the_input_kept(
    tiny_signals: Path, tmp_path: Path
) -> None:
    sig = tmp_path / "signals.npz"
    sig.write_bytes(tiny_signals.read_bytes())
    before = sig.read_bytes()
    code, text = _estimate(sig, sig)
    assert code == 2 and "input" in text, text
    code, text = _estimate(sig, tmp_path / "sub" / ".." / "signals.npz")
    assert code == 2  # (sub does not exist: refused either way, never written)
    inf = tmp_path / "inf.npz"
    assert _estimate(sig, inf)[0] == 0
    inf_bytes = inf.read_bytes()
    code, text = _run("rank", str(inf), "-o", str(inf))  # rank's own -o: the generic guard
    assert code == 2 and "inputs" in text, text
    assert sig.read_bytes() == before and inf.read_bytes() == inf_bytes


# ---- concurrency and stale files -----------------------------------------------------------

HOLD_LOCK = """
import sys, time
from fine_cli import artifacts
artifacts.claim_output(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_writer_of_one_output_is_refused(tiny_signals: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.npz"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code, text = _estimate(tiny_signals, out)
        assert code == 4 and f"pid {holder.pid}" in text and "another fine process" in text
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert _estimate(tiny_signals, out)[0] == 0  # the dead holder's lock is taken over
    assert out.is_file() and _leftovers(tmp_path) == []


def test_stale_temporary_files_are_removed_by_the_next_writer(
    tiny_signals: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.npz"
    stale = tmp_path / ".out.npz.ab12_xyz.tmp"  # what a killed writer leaves
    other = tmp_path / ".out.npz.more.ab12_xyz.tmp"  # another output's: not ours to remove
    stale.write_bytes(b"half")
    other.write_bytes(b"half")
    (tmp_path / ".out.npz.lock").write_text("99999\n")  # a dead writer's (unlocked) lock
    assert _estimate(tiny_signals, out)[0] == 0
    assert not stale.exists() and other.exists()
    assert _leftovers(tmp_path) == [other.name]


def test_sigterm_removes_the_lock_and_writes_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", {"train.epochs": 100000})
    out = tmp_path / "s.npz"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([*FINE, "train-collect", str(cfg), "-o", str(out), "-q"], env=env)
    lock = tmp_path / ".s.npz.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert lock.exists(), "train-collect did not start"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert not out.exists() and _leftovers(tmp_path) == []


# ---- messages: markup, exit codes -----------------------------------------------------------


def test_markup_in_file_names_is_printed_as_it_is(tmp_path: Path) -> None:
    for name in ("[/]x.npz", "[bold red]y.npz", ":smile:.npz"):
        code, text = _run("rank", str(tmp_path / name))
        assert code == 3 and name in text, text


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"probe_idx": np.arange(3)}, "'probe_idx' has 1 dimension"),
        ({"train_index": np.array(5)}, "'train_index' has 0 dimension"),
        ({"flip_mask": "text"}, "'flip_mask' has dtype"),
        ({"meta__config": [1, 2]}, "'config'"),
    ],
)
def test_malformed_arrays_and_metadata_are_exit_3(
    tiny_signals: Path, tmp_path: Path, change: dict, words: str
) -> None:
    sig = load(str(tiny_signals))
    arrays, meta = dict(sig.arrays), dict(sig.meta)
    for k, v in change.items():
        if k.startswith("meta__"):
            meta[k[6:]] = v
        else:
            arrays[k] = np.array(["x"] * sig.n_train) if isinstance(v, str) else v
    bad = tmp_path / "bad.npz"
    bad.write_bytes(artifacts._to_bytes(arrays, meta))
    code, text = _estimate(bad, tmp_path / "o.npz")
    assert code == 3 and words in text, text


def test_influence_members_out_of_range_are_exit_3(tiny_signals: Path, tmp_path: Path) -> None:
    inf = tmp_path / "inf.npz"
    assert _estimate(tiny_signals, inf)[0] == 0
    res = load(str(inf))
    save_artifact(
        str(inf), "influence", {**res.arrays, "group_members": res["group_members"] + 999}, res.meta
    )
    code, text = _run("rank", str(inf))
    assert code == 3 and "groups" in text


def test_a_text_flip_mask_is_refused_not_read_as_all_flipped(
    tiny_signals: Path, tmp_path: Path
) -> None:
    sig = load(str(tiny_signals))
    bad = tmp_path / "text-flips.npz"
    save_artifact(
        str(bad), "signals", {**sig.arrays, "flip_mask": np.array(["no"] * sig.n_train)}, sig.meta
    )
    with pytest.raises(InputFileError, match=r"'flip_mask' has dtype <U2 \(text\), expected bool"):
        load(str(bad))


@pytest.mark.parametrize(
    ("err", "words"),
    [
        (errno.ENOSPC, "disk is full"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "no permission"),
        (errno.EFBIG, "file-size limit"),
    ],
)
def test_output_io_errors_are_exit_4(
    tiny_signals: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int, words: str
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(artifacts.tempfile, "mkstemp", fail)
    out = tmp_path / "o.npz"
    code, text = _estimate(tiny_signals, out)
    assert code == 4 and words in text, text
    assert not out.exists() and _leftovers(tmp_path) == []


def test_a_real_file_size_limit_and_a_full_stdout_are_exit_4(
    tiny_signals: Path, tmp_path: Path
) -> None:
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))

    out = tmp_path / "o.npz"
    args = [*FINE, "estimate", str(tiny_signals), "--bootstrap", "0", "--permutations", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(
        [*args, "-o", str(out)], env=env, preexec_fn=limit, capture_output=True, text=True
    )
    assert run.returncode == 4 and "file-size limit" in run.stderr, run.stderr
    assert not out.exists() and _leftovers(tmp_path) == []
    if Path("/dev/full").exists():
        with open("/dev/full", "wb") as full:
            run = subprocess.run(
                [*args, "-o", "-"], env=env, stdout=full, stderr=subprocess.PIPE, text=True
            )
        assert run.returncode == 4 and "standard output" in run.stderr, run.stderr


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("train.betas=[2,3]", "train.betas"),
        ("seed=-1", "seed"),
        ("train.device=meta", "train.device"),
    ],
)
def test_config_values_that_crashed_in_training_are_refused_at_load(
    tiny_config: Path, tmp_path: Path, setting: str, key: str
) -> None:
    code, text = _run(
        "train-collect", str(tiny_config), "--set", setting, "-o", str(tmp_path / "s.npz")
    )
    assert code == 2 and f"'{key}" in text, text


def test_the_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 500
    t0 = time.perf_counter()
    code, text = _run("train-collect", str(bomb))
    assert code == 2 and "aliases" in text
    assert time.perf_counter() - t0 < 2.0 and len(text) < 1000


# ---- atomic text outputs, confined and early report paths -----------------------------------


def test_validate_report_is_written_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fine_cli import cli

    out = tmp_path / "report.json"
    out.write_text('{"old": true}\n')

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts.os, "replace", broken_replace)
    with pytest.raises(Exception, match="disk is full"):
        cli._write_text(str(out), json.dumps({"new": list(range(1000))}))
    assert out.read_text() == '{"old": true}\n' and _leftovers(tmp_path) == []


def test_report_files_are_written_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fine_cli import report

    md = tmp_path / "x.md"
    md.write_text("old report\n")
    monkeypatch.setattr(report, "summarize", lambda result: {})

    def fail(*args: object) -> str:
        raise RuntimeError("figure failed")

    monkeypatch.setattr(report, "recall_figure", fail)

    class Result:
        name = "x"

    with pytest.raises(RuntimeError):
        report.write(Result(), tmp_path)  # type: ignore[arg-type]
    assert md.read_text() == "old report\n" and _leftovers(tmp_path) == []


def test_run_refuses_bad_report_paths_before_training(
    tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fine_cli.stages import experiment

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(experiment, "run", no_training)
    base = ["run", str(tiny_config), "--out-dir", str(tmp_path / "runs"), "-q"]
    code, text = _run(*base, "--set", "name=../../x", "--report-dir", str(tmp_path / "rep"))
    assert code == 2 and "plain name" in text
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, text = _run(*base, "--report-dir", str(afile))
    assert code == 4 and "report directory" in text
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "tiny.md").symlink_to(afile)
    code, text = _run(*base, "--report-dir", str(tmp_path / "rep"))
    assert code == 2 and "symbolic link" in text
    assert not (tmp_path / "x.md").exists() and not (tmp_path.parent / "x.md").exists()


def test_report_names_cannot_leave_their_directory(tmp_path: Path) -> None:
    from fine_cli.errors import ConfigError
    from fine_cli.report import report_paths

    with pytest.raises(ConfigError, match="outside"):
        report_paths(tmp_path, "../../x")
    assert all(p.parent == tmp_path for p in report_paths(tmp_path, "ok-name"))


# ---- statistics: too few samples, collapsing scale -----------------------------------------


def test_too_few_samples_give_nan_stderr_a_warning_and_a_refused_fdr(
    tiny_signals: Path, tmp_path: Path
) -> None:
    inf = tmp_path / "inf.npz"
    code, text = _run(
        "estimate", str(tiny_signals), "--estimator", "paired", "--checkpoints", "1",
        "--bootstrap", "50", "--permutations", "19", "-o", str(inf),
    )  # fmt: skip
    assert code == 0 and "warning:" in text and "samples" in text, text
    res = load(str(inf))
    assert np.isnan(res["stderr"]).all()
    assert "at least 10" in res.meta["undefined"]["stderr"]
    assert _run("rank", str(inf))[0] == 0  # ranked, stderr shown as nan
    code, text = _run("rank", str(inf), "--fdr", "0.05")
    assert code == 2 and "undefined" in text and "at least 10" in text, text
    assert _run("rank", str(inf), "--fdr", "0.05", "--null", "zero")[0] == 0


@pytest.mark.parametrize("name", ["paired", "std"])
def test_a_collapsing_scale_gives_nan_never_1e11(name: str) -> None:
    rng = np.random.default_rng(0)
    n_ckpt, r = 12, 1
    y = rng.normal(size=(3, n_ckpt))
    x = y + rng.normal(1.0, 0.5, size=(3, n_ckpt))
    x[0] = y[0] + 0.7  # D constant: no spread at all
    x[1, :] = 5.0  # std: X constant and Y constant
    y[1, :] = 1.0
    fn = ESTIMATOR_FNS[name]
    cols = null.bootstrap_columns(n_ckpt, r, 100, np.random.default_rng(1))
    se = null.bootstrap_se(x, y, fn, r, cols)
    # paired looks at D alone (row 0 collapses); std at X and Y apart (row 1 only)
    assert np.isnan(se[1]) and np.isfinite(se[2]) and np.isnan(se[0]) == (name == "paired")
    assert np.nanmax(se) < ABSURD_SE


def test_rb_from_two_checkpoints_has_no_standard_error(tiny_signals: Path, tmp_path: Path) -> None:
    inf = tmp_path / "inf.npz"
    code, text = _run(
        "estimate", str(tiny_signals), "--estimator", "rb", "--checkpoints", "2",
        "--bootstrap", "50", "--permutations", "0", "-o", str(inf),
    )  # fmt: skip
    assert code == 0 and "warning:" in text, text
    res = load(str(inf))
    assert np.isnan(res["stderr"]).all() and "2 checkpoint" in res.meta["undefined"]["stderr"]


def test_two_samples_per_pair_give_nan_for_every_estimator() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(4, 2)), rng.normal(size=(4, 2))
    cols = null.bootstrap_columns(2, 1, 50, rng)
    for fn in ESTIMATOR_FNS.values():
        assert np.isnan(null.bootstrap_se(x, y, fn, 1, cols)).all()


# ---- provenance: the recorded input hash ----------------------------------------------------


def test_recorded_input_hash_is_checked(tiny_signals: Path, tmp_path: Path) -> None:
    inf, other = tmp_path / "inf.npz", tmp_path / "other.npz"
    assert _estimate(tiny_signals, inf)[0] == 0
    sig = load(str(tiny_signals))
    save_artifact(str(other), "signals", sig.arrays, {**sig.meta, "name": "edited"})
    code, text = _run("inspect", str(inf), "--input", str(tiny_signals))
    assert code == 0 and "matches" in text
    code, text = _run("inspect", str(inf), "--input", str(other))
    assert code == 3 and "made from another signals file" in text and "re-run fine estimate" in text
    # files of before 0.2 recorded the sha256 of the input file's bytes: still accepted
    import hashlib

    res = load(str(inf))
    res.meta["signals_sha256"] = hashlib.sha256(tiny_signals.read_bytes()).hexdigest()
    check_made_from(res, load(str(tiny_signals)))


def test_a_stale_ranking_in_a_run_directory_is_refused(tiny_signals: Path, tmp_path: Path) -> None:
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"seed-{seed}"
        run.mkdir()
        inf, rk = run / "influence-fine.npz", run / "ranking-fine.npz"
        assert _estimate(tiny_signals, inf)[0] == 0
        assert _run("rank", str(inf), "-o", str(rk))[0] == 0
        res = load(str(rk))
        save_artifact(str(rk), "ranking", res.arrays, {**res.meta, "seeds": {"main": seed}})
        runs.append(str(run))
    # the rewrite changed the ranking, not its input: the runs are consistent
    assert _run("evaluate", "consistency", *runs)[0] == 0
    assert (
        _estimate(tiny_signals, Path(runs[1]) / "influence-fine.npz", "--method", "tracin")[0] == 0
    )
    code, text = _run("evaluate", "consistency", *runs)
    assert code == 3 and "made from another influence file" in text and "re-run fine rank" in text


# ---- threads and determinism -----------------------------------------------------------------


def test_threads_are_recorded_and_deterministic_mode_ignores_them(
    tiny_config: Path, tmp_path: Path
) -> None:
    import torch

    base = ["train-collect", str(tiny_config), "-q", "--set", "train.epochs=2"]
    assert _run(*base, "-o", str(tmp_path / "plain.npz"))[0] == 0
    plain = load(str(tmp_path / "plain.npz"))
    assert plain.meta["runtime"] == {
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "deterministic": False,
    }
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out = tmp_path / f"det{threads}.npz"
        assert _run(*base, "--deterministic", "-o", str(out))[0] == 0
        assert torch.get_num_threads() == threads  # restored afterwards
        outs.append(load(str(out)))
    torch.set_num_threads(1)
    for res in outs:
        assert res.meta["runtime"]["threads"] == 1 and res.meta["runtime"]["deterministic"]
    for key, a in outs[0].arrays.items():
        np.testing.assert_array_equal(a, outs[1][key], err_msg=key)


# ---- fine inspect ----------------------------------------------------------------------------


def test_inspect_prints_what_made_a_file(tiny_signals: Path) -> None:
    code, text = _run("inspect", str(tiny_signals))
    assert code == 0
    for words in ("signals version 1", "sha256", "seeds", "versions", "runtime", "timing", "ip"):
        assert words in text, (words, text)
    res = runner.invoke(app, ["inspect", str(tiny_signals), "--json"])
    d = json.loads(res.stdout)
    assert d["kind"] == "signals" and d["valid"] and d["config"]["name"] == "tiny"
    shapes = {a["name"]: tuple(a["shape"]) for a in d["arrays"]}
    assert shapes["sqnorm"] == load(str(tiny_signals))["sqnorm"].shape
    assert d["runtime"]["threads"] >= 1 and "train_s" in d["timing"]
