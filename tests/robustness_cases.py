"""Hostile but realistic inputs to every subcommand, each with the exit code and the words
of the one-sentence refusal it must get (docs/ROBUSTNESS.md lists them; tests/test_robustness.py
runs them; scripts/robustness_table.py writes the table from this file).

A case's ``args`` name files by placeholders: ``{cfg}`` a tiny config, ``{sig}`` self-mode
signals, ``{tsig}`` test-mode signals, ``{inf}`` an influence file, ``{rank}`` a ranking,
``{truth}`` a ground truth, ``{dir}`` the case's own directory, ``{bad}`` the file its
``prep`` made. Every case fails before any training, so the whole set runs in seconds.
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fine_cli.artifacts import _to_bytes, load, save_artifact
from fine_cli.results import make_meta

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass
class Env:
    """The files a case reads: placeholders -> paths, and the case's own directory."""

    dir: Path
    paths: dict[str, str] = field(default_factory=dict)

    def fill(self, args: tuple[str, ...]) -> list[str]:
        """Placeholders replaced; other braces (YAML flow mappings) left as they are."""
        known = {**self.paths, "dir": str(self.dir)}
        return [re.sub(r"\{(\w+)\}", lambda m: known.get(m[1], m[0]), a) for a in args]


Prep = Callable[[Env], None]


@dataclass(frozen=True)
class Case:
    category: str
    name: str
    what: str  # the input, in words (the table's first column)
    args: tuple[str, ...]
    code: int
    needle: str  # words the message must hold
    prep: Prep | None = None


# ---- base files --------------------------------------------------------------------------


def build_env(root: Path, signals: Path, config: Path) -> Env:
    """Base files in ``root``: the given tiny signals and config, an influence file and a
    ranking made from them, a synthetic truth of the same training points, test-mode
    signals (the golden fixture) and two RUN directories."""
    import fine_cli

    root.mkdir(parents=True, exist_ok=True)
    sig_path = root / "signals.npz"
    shutil.copyfile(signals, sig_path)
    cfg_path = root / "tiny.yaml"
    shutil.copyfile(config, cfg_path)
    sig = load(str(sig_path))
    influence = fine_cli.estimate(sig, "fine", estimator="paired", bootstrap=20, permutations=19)
    inf_path = root / "influence.npz"
    fine_cli.save(influence, str(inf_path))
    ranking = fine_cli.rank(influence)
    rank_path = root / "ranking.npz"
    fine_cli.save(ranking, str(rank_path))
    truth_path = root / "truth.npz"
    _synthetic_truth(sig.arrays, truth_path)
    tsig = root / "test_signals.npz"
    shutil.copyfile(FIXTURES / "golden_test.npz", tsig)
    for seed in (0, 1):
        run = root / f"run{seed}"
        run.mkdir(exist_ok=True)
        r = fine_cli.rank(influence)
        r.meta["seeds"] = {"main": seed}
        fine_cli.save(r, str(run / "ranking-fine.npz"))
    return Env(
        dir=root,
        paths={
            "cfg": str(cfg_path),
            "sig": str(sig_path),
            "inf": str(inf_path),
            "rank": str(rank_path),
            "truth": str(truth_path),
            "tsig": str(tsig),
            "run0": str(root / "run0"),
            "run1": str(root / "run1"),
        },
    )


def _synthetic_truth(sig: dict[str, np.ndarray], path: Path) -> None:
    n, m = sig["train_index"].shape[0], 8
    rng = np.random.default_rng(0)
    in_mask = np.argsort(rng.random((m, n)), axis=0) < m // 2
    arrays = {
        "in_mask": in_mask,
        "loss": rng.random((m, n)).astype(np.float32),
        "confidence": rng.normal(size=(m, n)).astype(np.float32),
        "mu_true": rng.normal(size=n),
        "mean_diff": rng.normal(size=n),
        "mu_lira": rng.normal(size=n),
        "train_index": sig["train_index"],
        "labels": sig["labels"],
        "flip_mask": sig["flip_mask"],
    }
    save_artifact(str(path), "truth", arrays, make_meta("truth", n_models=m))


# ---- preparations ------------------------------------------------------------------------

Change = Any  # an array, None (remove), or a function of the base array


def edited(base: str, **changes: Change) -> Prep:
    """``{bad}`` = the base file with arrays changed; ``meta__k`` changes metadata k."""

    def prep(env: Env) -> None:
        res = load(env.paths[base], validate=False)
        arrays, meta = dict(res.arrays), dict(res.meta)
        for key, value in changes.items():
            target, k = (meta, key[6:]) if key.startswith("meta__") else (arrays, key)
            if value is None:
                target.pop(k, None)
            else:
                target[k] = value(target[k]) if callable(value) else value
        path = env.dir / "bad.npz"
        path.write_bytes(_to_bytes(arrays, meta))  # as saved, whatever the kind says
        env.paths["bad"] = str(path)

    return prep


def raw_npz(members: dict[str, bytes | np.ndarray]) -> Prep:
    """``{bad}`` = a zip of the given members (.npy arrays or raw bytes)."""

    def prep(env: Env) -> None:
        path = env.dir / "bad.npz"
        with zipfile.ZipFile(path, "w") as zf:
            for name, value in members.items():
                if isinstance(value, bytes):
                    zf.writestr(name, value)
                else:
                    import io

                    buf = io.BytesIO()
                    np.save(buf, value, allow_pickle=True)
                    zf.writestr(name, buf.getvalue())
        env.paths["bad"] = str(path)

    return prep


def meta_json(text: str) -> Prep:
    """``{bad}`` = the signals' arrays with ``__meta__`` replaced by ``text``."""

    def prep(env: Env) -> None:
        res = load(env.paths["sig"])
        path = env.dir / "bad.npz"
        np.savez(path, **res.arrays, __meta__=np.array(text))  # type: ignore[arg-type]
        env.paths["bad"] = str(path)

    return prep


def text_file(content: str | bytes, name: str = "bad.yaml") -> Prep:
    def prep(env: Env) -> None:
        path = env.dir / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        env.paths["bad"] = str(path)

    return prep


def fifo(name: str = "fifo") -> Prep:
    def prep(env: Env) -> None:
        os.mkfifo(env.dir / name)
        env.paths["bad"] = str(env.dir / name)

    return prep


def symlink(target: str, name: str = "link.npz") -> Prep:
    def prep(env: Env) -> None:
        (env.dir / name).symlink_to(env.paths[target])
        env.paths["bad"] = str(env.dir / name)

    return prep


def hardlink(target: str, name: str = "hard.npz") -> Prep:
    def prep(env: Env) -> None:
        os.link(env.paths[target], env.dir / name)
        env.paths["bad"] = str(env.dir / name)

    return prep


def directory(name: str = "adir") -> Prep:
    def prep(env: Env) -> None:
        (env.dir / name).mkdir()
        env.paths["bad"] = str(env.dir / name)

    return prep


def stale_ranking(env: Env) -> None:
    """A RUN whose ranking was made from another influence file than the one beside it."""
    import fine_cli

    run = env.dir / "stale"
    shutil.copytree(env.paths["run1"], run)
    other = fine_cli.estimate(load(env.paths["sig"]), "tracin")
    fine_cli.save(other, str(run / "influence-fine.npz"))
    env.paths["bad"] = str(run)


def both(*preps: Prep) -> Prep:
    def prep(env: Env) -> None:
        for p in preps:
            p(env)

    return prep


def _bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    lines.append("name: *i")
    return "\n".join(lines) + "\n"


ALIAS_BOMB = _bomb()
# The same through --set: 10^6 values from six aliases.
SET_BOMB = (
    "model.kwargs=[&a [1,1,1,1,1,1,1,1,1,1], "
    + ", ".join(f"&{b} [{', '.join([f'*{a}'] * 10)}]" for a, b in zip("abcd", "bcde"))
    + ", ["
    + ", ".join(["*e"] * 10)
    + "]]"
)


def _tc(*extra: str) -> tuple[str, ...]:
    return ("train-collect", "{cfg}", "-o", "{dir}/out.npz", "-q", *extra)


def _set(*items: str) -> tuple[str, ...]:
    out: list[str] = []
    for s in items:
        out += ["--set", s]
    return _tc(*out)


def _est(path: str = "{bad}", *extra: str) -> tuple[str, ...]:
    return (
        "estimate",
        path,
        "-o",
        "{dir}/out.npz",
        "--bootstrap",
        "0",
        "--permutations",
        "0",
        *extra,
    )


def _rank(path: str = "{bad}", *extra: str) -> tuple[str, ...]:
    return ("rank", path, *extra)


def _recall(path: str = "{bad}") -> tuple[str, ...]:
    return ("evaluate", "recall", path)


def _val_truth(path: str = "{bad}") -> tuple[str, ...]:
    return ("validate", "{cfg}", "--truth", path, "--signals", "{sig}", "-q")


C = Case
# ---- the cases ---------------------------------------------------------------------------

CONFIG = [
    C(
        "config",
        "missing",
        "config path that does not exist",
        ("train-collect", "{dir}/no.yaml"),
        2,
        "does not exist",
    ),
    C(
        "config",
        "dir",
        "a directory as the config",
        ("train-collect", "{bad}"),
        2,
        "not a regular file",
        directory(),
    ),
    C(
        "config",
        "fifo",
        "a FIFO as the config (would block)",
        ("train-collect", "{bad}"),
        2,
        "not a regular file",
        fifo(),
    ),
    C(
        "config",
        "devzero",
        "/dev/zero as the config (endless)",
        ("train-collect", "/dev/zero"),
        2,
        "not a regular file",
    ),
    C(
        "config",
        "binary",
        "binary bytes (\\xff\\xfe\\x00)",
        ("train-collect", "{bad}"),
        2,
        "not a text file",
        text_file(b"\xff\xfe\x00\x01"),
    ),
    C(
        "config",
        "huge",
        "a 2 MB config file",
        ("train-collect", "{bad}"),
        2,
        "bytes",
        text_file("#" * 2_000_000 + "\n"),
    ),
    C(
        "config",
        "list",
        "a YAML list at the top",
        ("train-collect", "{bad}"),
        2,
        "mapping",
        text_file("- 1\n- 2\n"),
    ),
    C(
        "config",
        "scalar",
        "a YAML scalar at the top",
        ("train-collect", "{bad}"),
        2,
        "mapping",
        text_file("hello\n"),
    ),
    C(
        "config",
        "syntax",
        "unclosed bracket",
        ("train-collect", "{bad}"),
        2,
        "not valid YAML",
        text_file("train: [1\n"),
    ),
    C(
        "config",
        "unknown-key",
        "train.epoch (typo)",
        _set("train.epoch=3"),
        2,
        "unknown key 'train.epoch'",
    ),
    C(
        "config",
        "int-key",
        "a non-string key (1: x)",
        ("train-collect", "{bad}"),
        2,
        "keys should be strings",
        text_file("1: x\n"),
    ),
    C(
        "config",
        "null-section",
        "data: null",
        ("train-collect", "{bad}"),
        2,
        "data",
        text_file("data: null\n"),
    ),
    C(
        "config",
        "list-section",
        "train: [1, 2]",
        ("train-collect", "{bad}"),
        2,
        "train",
        text_file("train: [1, 2]\n"),
    ),
    C(
        "config",
        "wrong-type",
        "train.batch_size=many",
        _set("train.batch_size=many"),
        2,
        "train.batch_size",
    ),
    C("config", "seed-neg", "seed=-1", _set("seed=-1"), 2, "'seed'"),
    C("config", "seed-huge", "seed=2**64", _set("seed=18446744073709551616"), 2, "'seed'"),
    C("config", "seed-float", "seed=1.5", _set("seed=1.5"), 2, "'seed'"),
    C(
        "config",
        "noise-seed-neg",
        "data.noise_seed=-3",
        _set("data.noise_seed=-3"),
        2,
        "data.noise_seed",
    ),
    C(
        "config",
        "exp-seeds-neg",
        "experiment.seeds=[-1, 0]",
        _set("experiment.seeds=[-1,0]"),
        2,
        "experiment.seeds",
    ),
    C("config", "betas", "train.betas=[2,3]", _set("train.betas=[2,3]"), 2, "train.betas"),
    C("config", "betas-short", "train.betas=[0.9]", _set("train.betas=[0.9]"), 2, "train.betas"),
    C("config", "device-meta", "train.device=meta", _set("train.device=meta"), 2, "train.device"),
    C(
        "config",
        "device-junk",
        "train.device='cuda:x'",
        _set("train.device=cuda:x"),
        2,
        "train.device",
    ),
    C("config", "lr-inf", "train.lr=.inf", _set("train.lr=.inf"), 2, "train.lr"),
    C("config", "lr-nan", "train.lr=.nan", _set("train.lr=.nan"), 2, "train.lr"),
    C("config", "lr-neg", "train.lr=-1", _set("train.lr=-1"), 2, "train.lr"),
    C("config", "epochs-0", "train.epochs=0", _set("train.epochs=0"), 2, "train.epochs"),
    C("config", "batch-0", "train.batch_size=0", _set("train.batch_size=0"), 2, "train.batch_size"),
    C(
        "config",
        "noise-1.5",
        "data.label_noise=1.5",
        _set("data.label_noise=1.5"),
        2,
        "data.label_noise",
    ),
    C(
        "config",
        "noise-inf",
        "data.label_noise=.inf",
        _set("data.label_noise=.inf"),
        2,
        "data.label_noise",
    ),
    C(
        "config",
        "dataset",
        "data.dataset=imagenet",
        _set("data.dataset=imagenet"),
        2,
        "data.dataset",
    ),
    C(
        "config",
        "npz-no-path",
        "data.dataset=npz without data.path",
        _set("data.dataset=npz"),
        2,
        "data.path",
    ),
    C("config", "n-train-1", "data.n_train=1", _set("data.n_train=1"), 2, "data.n_train"),
    C(
        "config",
        "n-train-big",
        "data.n_train=100000 (more than there are)",
        _set("data.n_train=100000"),
        2,
        "data.n_train",
    ),
    C("config", "n-test-big", "data.n_test=100000", _set("data.n_test=100000"), 2, "data.n_test"),
    C("config", "arch", "model.arch=transformer", _set("model.arch=transformer"), 2, "model.arch"),
    C(
        "config",
        "arch-file",
        "model.arch=missing.py:make",
        _set("model.arch=missing.py:make"),
        2,
        "model.arch",
    ),
    C("config", "hidden-0", "model.hidden=[0]", _set("model.hidden=[0]"), 2, "model.hidden"),
    C(
        "config",
        "kwargs-builtin",
        "model.kwargs={a: 1} with mlp",
        _set("model.kwargs={a: 1}"),
        2,
        "model.kwargs",
    ),
    C("config", "mode", "collect.mode=both", _set("collect.mode=both"), 2, "collect.mode"),
    C(
        "config",
        "checkpoints",
        "collect.checkpoints=99 > epochs",
        _set("collect.checkpoints=99"),
        2,
        "collect.checkpoints",
    ),
    C(
        "config",
        "test-n",
        "collect.test_points.n=100000",
        _set("collect.mode=test", "collect.test_points.n=100000"),
        2,
        "test_points.n",
    ),
    C(
        "config",
        "test-idx",
        "collect.test_points.indices=[-5]",
        _set("collect.mode=test", "collect.test_points.indices=[-5]"),
        2,
        "indices",
    ),
    C(
        "config",
        "groups-missing",
        "collect.groups_file=nope.json",
        _set("collect.mode=test", "collect.groups_file=nope.json"),
        2,
        "groups_file",
    ),
    C(
        "config",
        "groups-bad",
        "groups file holding {}",
        _set("collect.mode=test", "collect.groups_file={bad}"),
        2,
        "groups_file",
        text_file("{}", "g.json"),
    ),
    C("config", "p-grid", "evaluate.p_grid=[150]", _set("evaluate.p_grid=[150]"), 2, "p_grid"),
    C(
        "config",
        "augment",
        "train.augment=[NoSuchTransform]",
        _set("train.augment=[NoSuchTransform]"),
        2,
        "augment",
    ),
    C(
        "config",
        "synthetic-3",
        "data.synthetic.n_samples=3",
        _set("data.synthetic.n_samples=3"),
        2,
        "n_samples",
    ),
    C(
        "config",
        "method",
        "experiment.methods=[nope]",
        _set("experiment.methods=[nope]"),
        2,
        "unknown method",
    ),
    C("config", "name-dots", "name=../../x", _set("name=../../x"), 2, "plain name"),
    C("config", "name-empty", "name=''", _set("name=''"), 2, "plain name"),
    C("config", "name-slash", "name=a/b", _set("name=a/b"), 2, "plain name"),
    C("config", "set-no-eq", "--set train.lr", _set("train.lr"), 2, "key.path=value"),
    C("config", "set-empty-key", "--set =3", _set("=3"), 2, "empty key"),
    C("config", "set-not-section", "--set seed.x=1", _set("seed.x=1"), 2, "not a section"),
    C("config", "set-huge", "--set with a 100 kB value", _set("name=" + "x" * 100_000), 2, "..."),
]

YAML = [
    C(
        "yaml",
        "alias-bomb",
        "billion laughs, 461 bytes (10^8 values)",
        ("train-collect", "{bad}"),
        2,
        "aliases",
        text_file(ALIAS_BOMB),
    ),
    C(
        "yaml",
        "alias-bomb-set",
        "alias bomb through --set",
        _set(SET_BOMB),
        2,
        "aliases",
    ),
    C(
        "yaml",
        "deep",
        "10000 nested lists",
        ("train-collect", "{bad}"),
        2,
        "config",
        text_file("a: " + "[" * 10000 + "]" * 10000 + "\n"),
    ),
    C(
        "yaml",
        "python-object",
        "!!python/object/apply:os.system",
        ("train-collect", "{bad}"),
        2,
        "not valid YAML",
        text_file("name: !!python/object/apply:os.system ['echo pwned']\n"),
    ),
    C(
        "yaml",
        "python-name",
        "!!python/name:os.system",
        ("train-collect", "{bad}"),
        2,
        "not valid YAML",
        text_file("name: !!python/name:os.system\n"),
    ),
    C(
        "yaml",
        "python-module",
        "!!python/module:os",
        ("train-collect", "{bad}"),
        2,
        "not valid YAML",
        text_file("name: !!python/module:os\n"),
    ),
    C(
        "yaml",
        "unknown-tag",
        "!custom tag",
        ("train-collect", "{bad}"),
        2,
        "not valid YAML",
        text_file("name: !custom x\n"),
    ),
    C(
        "yaml",
        "timestamp",
        "seed: 2020-01-01 (a date)",
        ("train-collect", "{bad}"),
        2,
        "seed",
        text_file("seed: 2020-01-01\n"),
    ),
    C(
        "yaml",
        "bad-date",
        "seed: 2020-13-45 (impossible date)",
        ("train-collect", "{bad}"),
        2,
        "date",
        text_file("seed: 2020-13-45\n"),
    ),
    C(
        "yaml",
        "binary-tag",
        "seed: !!binary aGk= (bytes)",
        ("train-collect", "{bad}"),
        2,
        "seed",
        text_file("seed: !!binary aGk=\n"),
    ),
    C(
        "yaml",
        "set-tag",
        "seed: !!set {1: null}",
        ("train-collect", "{bad}"),
        2,
        "seed",
        text_file("seed: !!set {1: null}\n"),
    ),
    C(
        "yaml",
        "nan-float",
        "train.lr: .NaN",
        ("train-collect", "{bad}"),
        2,
        "train.lr",
        text_file("train: {lr: .NaN}\n"),
    ),
    C(
        "yaml",
        "merge-key",
        "merge key into a closed section",
        ("train-collect", "{bad}"),
        2,
        "unknown key",
        text_file("base: &b {epochs: 2}\ntrain:\n  <<: *b\n  bogus: 1\n"),
    ),
]

SIG_N = 199  # training points of the tiny signals (conftest.TINY)
SIGNALS = [
    C(
        "npz-signals",
        "probe-1d",
        "probe_idx 1-D",
        _est(),
        3,
        "'probe_idx' has 1 dimension",
        edited("sig", probe_idx=np.arange(3)),
    ),
    C(
        "npz-signals",
        "train-0d",
        "train_index 0-d",
        _est(),
        3,
        "'train_index' has 0 dimension",
        edited("sig", train_index=np.array(5)),
    ),
    C(
        "npz-signals",
        "flip-text",
        "flip_mask of strings",
        _est(),
        3,
        "'flip_mask' has dtype",
        edited("sig", flip_mask=np.array(["x"] * SIG_N)),
    ),
    C(
        "npz-signals",
        "flip-int",
        "flip_mask of int 0/1",
        _est(),
        3,
        "expected bool",
        edited("sig", flip_mask=lambda a: a.astype(np.int64)),
    ),
    C(
        "npz-signals",
        "labels-float",
        "labels of floats",
        _est(),
        3,
        "'labels' has dtype",
        edited("sig", labels=lambda a: a.astype(float)),
    ),
    C(
        "npz-signals",
        "sqnorm-text",
        "sqnorm of strings",
        _est(),
        3,
        "'sqnorm' has dtype",
        edited("sig", sqnorm=lambda a: a.astype(str)),
    ),
    C(
        "npz-signals",
        "ip-complex",
        "ip complex",
        _est(),
        3,
        "'ip' has dtype",
        edited("sig", ip=lambda a: a.astype(np.complex64)),
    ),
    C(
        "npz-signals",
        "lr-2d",
        "lr 2-D",
        _est(),
        3,
        "'lr' has 2 dimension",
        edited("sig", lr=np.zeros((2, 2))),
    ),
    C(
        "npz-signals",
        "lr-missing",
        "lr removed",
        _est(),
        3,
        "lacks the array(s) lr",
        edited("sig", lr=None),
    ),
    C(
        "npz-signals",
        "ip-nan",
        "a NaN in ip",
        _est(),
        3,
        "NaN",
        edited("sig", ip=lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, np.nan, a)),
    ),
    C(
        "npz-signals",
        "sqnorm-inf",
        "an inf in sqnorm",
        _est(),
        3,
        "NaN/inf",
        edited(
            "sig", sqnorm=lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.inf, a)
        ),
    ),
    C(
        "npz-signals",
        "sqnorm-short",
        "sqnorm one point short",
        _est(),
        3,
        "'sqnorm' has shape",
        edited("sig", sqnorm=lambda a: a[..., :-1]),
    ),
    C(
        "npz-signals",
        "probe-range",
        "probe_idx beyond n",
        _est(),
        3,
        "outside the training set",
        edited("sig", probe_idx=lambda a: a + 10_000),
    ),
    C(
        "npz-signals",
        "probe-neg",
        "probe_idx negative",
        _est(),
        3,
        "outside the training set",
        edited("sig", probe_idx=lambda a: a - 10_000),
    ),
    C(
        "npz-signals",
        "empty",
        "zero training points",
        _est(),
        3,
        "",
        edited("sig", train_index=np.zeros(0, np.int64)),
    ),
    C("npz-signals", "zero-ckpt", "zero checkpoints", _est(), 3, "", edited("sig", lr=np.zeros(0))),
    C(
        "npz-signals",
        "schema",
        "schema_version 99",
        _est(),
        3,
        "schema version 99",
        edited("sig", meta__schema_version=99),
    ),
    C(
        "npz-signals",
        "kind",
        "kind 'banana'",
        _est(),
        3,
        "unknown kind 'banana'",
        edited("sig", meta__kind="banana"),
    ),
    C(
        "npz-signals",
        "kind-list",
        "kind a list",
        _est(),
        3,
        "unknown kind [1]",
        edited("sig", meta__kind=[1]),
    ),
    C(
        "npz-signals",
        "mode",
        "mode 'other'",
        _est(),
        3,
        "unknown mode",
        edited("sig", meta__mode="other"),
    ),
    C(
        "npz-signals",
        "mode-huge",
        "mode a 1 MB string",
        _est(),
        3,
        "...",
        edited("sig", meta__mode="x" * 1_000_000),
    ),
    C(
        "npz-signals",
        "config-list",
        "meta.config a list",
        _est(),
        3,
        "'config'",
        edited("sig", meta__config=[1, 2]),
    ),
    C(
        "npz-signals",
        "seeds-list",
        "meta.seeds a list",
        _est(),
        3,
        "'seeds'",
        edited("sig", meta__seeds=[1]),
    ),
    C(
        "npz-signals",
        "timing-text",
        "meta.timing.train_s text",
        _est(),
        3,
        "timing.train_s",
        edited("sig", meta__timing={"train_s": "soon"}),
    ),
    C(
        "npz-signals",
        "runtime-text",
        "meta.runtime.threads text",
        _est(),
        3,
        "runtime.threads",
        edited("sig", meta__runtime={"threads": "many"}),
    ),
    C(
        "npz-signals",
        "meta-list",
        "__meta__ a JSON list",
        _est(),
        3,
        "not a mapping",
        meta_json("[1, 2]"),
    ),
    C(
        "npz-signals",
        "meta-notjson",
        "__meta__ not JSON",
        _est(),
        3,
        "truncated or corrupt",
        meta_json("{nope"),
    ),
    C(
        "npz-signals",
        "meta-deep",
        "__meta__ 100000 nested lists",
        _est(),
        3,
        "truncated or corrupt",
        meta_json("[" * 100_000 + "]" * 100_000),
    ),
    C(
        "npz-signals",
        "meta-huge",
        "__meta__ of 17 MB",
        _est(),
        3,
        "bytes of metadata",
        meta_json('{"kind": "signals", "pad": "' + "x" * (17 * 2**20) + '"}'),
    ),
    C(
        "npz-signals",
        "object",
        "an object array (pickle)",
        _est(),
        3,
        "truncated or corrupt",
        raw_npz(
            {
                "__meta__.npy": np.array('{"kind": "signals"}'),
                "a.npy": np.array([{"x": 1}], dtype=object),
            }
        ),
    ),
    C(
        "npz-signals",
        "no-meta",
        "an npz without metadata",
        _est(),
        3,
        "not one written by fine",
        raw_npz({"a.npy": np.arange(3)}),
    ),
    C(
        "npz-signals",
        "text",
        "a text file named .npz",
        _est(),
        3,
        "not a readable .npz",
        text_file("hello", "t.npz"),
    ),
    C(
        "npz-signals",
        "empty-file",
        "an empty file",
        _est(),
        3,
        "not a readable .npz",
        text_file("", "e.npz"),
    ),
    C(
        "npz-signals",
        "truncated",
        "half of a signals file",
        _est(),
        3,
        "truncated or corrupt",
        lambda env: _truncate(env),
    ),
    C("npz-signals", "npy", "a bare .npy array", _est(), 3, "", lambda env: _npy(env)),
    C(
        "npz-signals",
        "missing",
        "a path that does not exist",
        _est("{dir}/nope.npz"),
        3,
        "does not exist",
    ),
    C("npz-signals", "dir", "an empty directory as input", _est(), 3, "meta.json", directory()),
    C("npz-signals", "fifo", "a FIFO as input", _est(), 3, "not a file", fifo()),
    C("npz-signals", "devzero", "/dev/zero as input", _est("/dev/zero"), 3, "not a file"),
    C(
        "npz-signals",
        "influence",
        "an influence file given to estimate",
        _est("{inf}"),
        3,
        "influence file",
    ),
    C(
        "npz-signals",
        "test-groups",
        "test mode: group_ptr reversed",
        _est(),
        3,
        "groups",
        edited("tsig", group_ptr=np.array([5, 0], np.int64), group_members=np.arange(5)),
    ),
    C(
        "npz-signals",
        "test-members",
        "test mode: group_members beyond n",
        _est(),
        3,
        "groups",
        edited("tsig", group_ptr=np.array([0, 2], np.int64), group_members=np.array([0, 10_000])),
    ),
    C(
        "npz-signals",
        "test-gram",
        "test mode: gram of the wrong shape",
        _est(),
        3,
        "'gram' has shape",
        edited("tsig", gram=lambda a: a[:, :, :, :-1]),
    ),
    C(
        "npz-signals",
        "test-no-index",
        "test mode without test_index",
        _est(),
        3,
        "test_index",
        edited("tsig", test_index=None),
    ),
    C(
        "npz-signals",
        "tradeoff-subset",
        "evaluate tradeoff --subset 100000",
        ("evaluate", "tradeoff", "{sig}", "--subset", "100000", "--plot", "{dir}/t.png"),
        2,
        "subset",
    ),
]


def _truncate(env: Env) -> None:
    data = Path(env.paths["sig"]).read_bytes()
    (env.dir / "bad.npz").write_bytes(data[: len(data) // 2])
    env.paths["bad"] = str(env.dir / "bad.npz")


def _npy(env: Env) -> None:
    np.save(env.dir / "bad.npz", np.arange(3))  # np.save appends .npy
    os.replace(env.dir / "bad.npz.npy", env.dir / "bad.npz")
    env.paths["bad"] = str(env.dir / "bad.npz")


INFLUENCE = [
    C(
        "npz-influence",
        "scores-1d",
        "scores 1-D",
        _rank(),
        3,
        "'scores' has 1 dimension",
        edited("inf", scores=lambda a: a[0]),
    ),
    C(
        "npz-influence",
        "scores-text",
        "scores of strings",
        _rank(),
        3,
        "'scores' has dtype",
        edited("inf", scores=lambda a: a.astype(str)),
    ),
    C(
        "npz-influence",
        "scores-nan",
        "a NaN score",
        _rank(),
        3,
        "NaN",
        edited(
            "inf", scores=lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.nan, a)
        ),
    ),
    C(
        "npz-influence",
        "scores-empty",
        "no queries (0, G)",
        _rank(),
        3,
        "no scores",
        edited(
            "inf",
            scores=lambda a: a[:0],
            query_index=np.zeros(0, np.int64),
            stderr=None,
            pvalue=None,
        ),
    ),
    C(
        "npz-influence",
        "stderr-text",
        "stderr of strings",
        _rank(),
        3,
        "'stderr' has dtype",
        edited("inf", stderr=lambda a: a.astype(str)),
    ),
    C(
        "npz-influence",
        "stderr-neg",
        "a negative stderr",
        _rank(),
        3,
        "'stderr' holds values outside",
        edited("inf", stderr=lambda a: np.full(a.shape, -1.0), meta__undefined=None),
    ),
    C(
        "npz-influence",
        "pvalue-2",
        "a p-value of 2",
        _rank(),
        3,
        "'pvalue' holds values outside",
        edited("inf", pvalue=lambda a: a + 2),
    ),
    C(
        "npz-influence",
        "pvalue-shape",
        "pvalue of 3 entries",
        _rank(),
        3,
        "'pvalue' has 1 dimension",
        edited("inf", pvalue=np.zeros(3)),
    ),
    C(
        "npz-influence",
        "query-0d",
        "query_index 0-d",
        _rank(),
        3,
        "'query_index' has 0 dimension",
        edited("inf", query_index=np.array(1)),
    ),
    C(
        "npz-influence",
        "members-range",
        "group_members beyond n",
        _rank(),
        3,
        "groups",
        edited("inf", group_members=lambda a: a + 1000),
    ),
    C(
        "npz-influence",
        "ptr-reversed",
        "group_ptr reversed",
        _rank(),
        3,
        "groups",
        edited("inf", group_ptr=lambda a: a[::-1].copy()),
    ),
    C(
        "npz-influence",
        "ptr-empty",
        "group_ptr empty",
        _rank(),
        3,
        "groups",
        edited("inf", group_ptr=np.zeros(0, np.int64)),
    ),
    C(
        "npz-influence",
        "ptr-float",
        "group_ptr of floats",
        _rank(),
        3,
        "'group_ptr' has dtype",
        edited("inf", group_ptr=lambda a: a.astype(float)),
    ),
    C(
        "npz-influence",
        "flip-text",
        "flip_mask of strings",
        _rank(),
        3,
        "'flip_mask' has dtype",
        edited("inf", flip_mask=np.array(["x"] * SIG_N)),
    ),
    C(
        "npz-influence",
        "labels-short",
        "labels one short",
        _rank(),
        3,
        "'labels' has shape",
        edited("inf", labels=lambda a: a[:-1]),
    ),
    C(
        "npz-influence",
        "perm-list",
        "meta.permutations a list",
        _rank(),
        3,
        "'permutations'",
        edited("inf", meta__permutations=[1]),
    ),
    C(
        "npz-influence",
        "perm-draws",
        "meta.permutations.draws text",
        _rank(),
        3,
        "permutations.draws",
        edited("inf", meta__permutations={"draws": "x"}),
    ),
    C(
        "npz-influence",
        "method-list",
        "meta.method a list",
        _rank(),
        3,
        "'method'",
        edited("inf", meta__method=["fine"]),
    ),
    C(
        "npz-influence",
        "undefined-list",
        "meta.undefined a list",
        _rank(),
        3,
        "'undefined'",
        edited("inf", meta__undefined=["stderr"]),
    ),
    C("npz-influence", "dir", "a directory as rank's input", _rank(), 3, "", directory()),
    C(
        "npz-influence",
        "signals",
        "a signals file given to rank",
        _rank("{sig}"),
        3,
        "signals file",
    ),
    C(
        "npz-influence",
        "query-range",
        "rank --query 5 of a self-mode file",
        _rank("{inf}", "--query", "5"),
        2,
        "--query 5",
    ),
    C("npz-influence", "fdr-range", "rank --fdr 2", _rank("{inf}", "--fdr", "2"), 2, "--fdr"),
    C(
        "npz-influence",
        "fdr-nan-se",
        "rank --fdr on undefined standard errors",
        _rank("{bad}", "--fdr", "0.1"),
        2,
        "undefined",
        edited("inf", stderr=lambda a: a * np.nan, meta__undefined={"stderr": "only 2 samples"}),
    ),
]

RANKING = [
    C(
        "npz-ranking",
        "order-text",
        "order of strings",
        _recall(),
        3,
        "'order' has dtype",
        edited("rank", order=lambda a: a.astype(str)),
    ),
    C(
        "npz-ranking",
        "order-range",
        "order beyond G",
        _recall(),
        3,
        "'order' holds values outside",
        edited("rank", order=lambda a: a + 10_000),
    ),
    C(
        "npz-ranking",
        "score-2d",
        "score 2-D",
        _recall(),
        3,
        "'score' has 2 dimension",
        edited("rank", score=np.zeros((2, 2))),
    ),
    C(
        "npz-ranking",
        "score-nan",
        "a NaN score",
        _recall(),
        3,
        "NaN",
        edited("rank", score=lambda a: np.where(np.arange(a.size) == 5, np.nan, a)),
    ),
    C(
        "npz-ranking",
        "flipped-text",
        "is_flipped of strings",
        _recall(),
        3,
        "'is_flipped' has dtype",
        edited("rank", is_flipped=lambda a: a.astype(str)),
    ),
    C(
        "npz-ranking",
        "flipped-int",
        "is_flipped of int 0/1",
        _recall(),
        3,
        "expected bool",
        edited("rank", is_flipped=lambda a: a.astype(np.int64)),
    ),
    C(
        "npz-ranking",
        "label-short",
        "label one short",
        _recall(),
        3,
        "'label' has shape",
        edited("rank", label=lambda a: a[:-1]),
    ),
    C(
        "npz-ranking",
        "config-list",
        "meta.config a list",
        _recall(),
        3,
        "'config'",
        edited("rank", meta__config=[1]),
    ),
    C(
        "npz-ranking",
        "grid-text",
        "meta.config.evaluate.p_grid text",
        _recall(),
        2,
        "p_grid",
        edited("rank", meta__config={"evaluate": {"p_grid": "abc"}}),
    ),
    C(
        "npz-ranking",
        "no-flips",
        "no flipped points",
        _recall(),
        3,
        "label_noise",
        edited("rank", is_flipped=lambda a: np.zeros_like(a)),
    ),
    C("npz-ranking", "stdin-twice", "'-' given twice", ("evaluate", "recall", "-", "-"), 2, "once"),
    C(
        "npz-ranking",
        "p-grid",
        "--p-grid abc",
        ("evaluate", "recall", "{rank}", "--p-grid", "abc"),
        2,
        "--p-grid",
    ),
]

TRUTH = [
    C(
        "npz-truth",
        "mask-1d",
        "in_mask 1-D",
        _val_truth(),
        3,
        "'in_mask' has 1 dimension",
        edited("truth", in_mask=lambda a: a[0]),
    ),
    C(
        "npz-truth",
        "mask-float",
        "in_mask of floats",
        _val_truth(),
        3,
        "'in_mask' has dtype",
        edited("truth", in_mask=lambda a: a.astype(float)),
    ),
    C(
        "npz-truth",
        "loss-shape",
        "loss of the wrong shape",
        _val_truth(),
        3,
        "'loss' has shape",
        edited("truth", loss=lambda a: a[:, :-1]),
    ),
    C(
        "npz-truth",
        "mu-nan",
        "a NaN in mu_true",
        _val_truth(),
        3,
        "NaN",
        edited("truth", mu_true=lambda a: a * np.nan),
    ),
    C(
        "npz-truth",
        "one-model",
        "one model",
        _val_truth(),
        3,
        "model",
        edited("truth", in_mask=lambda a: a[:1], loss=lambda a: a[:1], confidence=lambda a: a[:1]),
    ),
    C(
        "npz-truth",
        "other-data",
        "truth of other training points",
        _val_truth(),
        3,
        "other training data",
        edited("truth", flip_mask=lambda a: ~a),
    ),
    C("npz-truth", "kind", "a ranking given as the truth", _val_truth("{rank}"), 3, "ranking file"),
    C(
        "npz-truth",
        "test-mode",
        "test-mode meta on self arrays",
        _val_truth(),
        3,
        "lacks",
        edited("truth", meta__mode="test"),
    ),
]

RUNS = [
    C("runs", "one", "one RUN directory", ("evaluate", "consistency", "{run0}"), 2, "at least two"),
    C(
        "runs",
        "twice",
        "the same RUN twice",
        ("evaluate", "consistency", "{run0}", "{run0}"),
        2,
        "twice",
    ),
    C(
        "runs",
        "missing",
        "a RUN that does not exist",
        ("evaluate", "consistency", "{run0}", "{dir}/nope"),
        3,
        "does not exist",
    ),
    C(
        "runs",
        "file",
        "a file as a RUN",
        ("evaluate", "variability", "{run0}", "{rank}"),
        3,
        "not a directory",
    ),
    C(
        "runs",
        "method",
        "--method absent from the runs",
        ("evaluate", "consistency", "{run0}", "{run1}", "--method", "trak"),
        3,
        "ranking-trak.npz",
    ),
    C(
        "runs",
        "stale",
        "a ranking made from another influence file than the one beside it",
        ("evaluate", "consistency", "{run0}", "{bad}"),
        3,
        "made from another influence file",
        stale_ranking,
    ),
    C(
        "runs",
        "same-seed",
        "two runs of the same seed",
        ("evaluate", "consistency", "{run0}", "{bad}"),
        3,
        "same training seeds",
        lambda env: _copy_run(env),
    ),
]


def _copy_run(env: Env) -> None:
    shutil.copytree(env.paths["run0"], env.dir / "copy")
    env.paths["bad"] = str(env.dir / "copy")


OUT = ("estimate", "{sig}", "--bootstrap", "0", "--permutations", "0", "-o")
OUTPUTS = [
    C("paths", "out-fifo", "-o a FIFO", (*OUT, "{bad}"), 2, "FIFO", fifo("out.npz")),
    C(
        "paths",
        "out-symlink",
        "-o a symbolic link to a file",
        (*OUT, "{bad}"),
        2,
        "symbolic link",
        symlink("rank"),
    ),
    C(
        "paths",
        "out-dangling",
        "-o a dangling symbolic link",
        (*OUT, "{bad}"),
        2,
        "symbolic link",
        lambda env: _dangling(env),
    ),
    C(
        "paths",
        "out-dir",
        "rank -o a directory",
        ("rank", "{inf}", "-o", "{bad}"),
        2,
        "directory",
        directory(),
    ),
    C(
        "paths",
        "out-device",
        "-o a character device (/dev/null's twin)",
        (*OUT, "{bad}"),
        2,
        "device",
        lambda env: _chardev(env),
    ),
    C("paths", "out-input", "-o the input itself", (*OUT, "{sig}"), 2, "input"),
    C(
        "paths",
        "out-input-hard",
        "-o a hard link to the input",
        (*OUT, "{bad}"),
        2,
        "input",
        hardlink("sig"),
    ),
    C(
        "paths",
        "out-input-dots",
        "-o the input as sub/../name",
        (*OUT, "{bad}"),
        2,
        "input",
        lambda env: _dots(env),
    ),
    C(
        "paths",
        "rank-input",
        "rank -o its own input",
        ("rank", "{inf}", "-o", "{inf}"),
        2,
        "inputs",
    ),
    C(
        "paths",
        "tc-config",
        "train-collect -o its config",
        ("train-collect", "{cfg}", "-o", "{cfg}"),
        2,
        "input",
    ),
    C(
        "paths",
        "out-nodir",
        "-o in a directory that does not exist",
        (*OUT, "{dir}/no/out.npz"),
        4,
        "does not exist",
    ),
    C(
        "paths",
        "out-notdir",
        "-o below a file (file.npz/out.npz)",
        (*OUT, "{rank}/out.npz"),
        4,
        "cannot write",
    ),
    C(
        "paths",
        "out-long",
        "-o a 300-character name",
        (*OUT, "{dir}/" + "x" * 300 + ".npz"),
        4,
        "too long",
    ),
    C(
        "paths",
        "plot-fifo",
        "--plot a FIFO",
        ("evaluate", "recall", "{rank}", "--plot", "{bad}"),
        2,
        "FIFO",
        fifo("p.png"),
    ),
    C(
        "paths",
        "plot-input",
        "--plot the ranking itself",
        ("evaluate", "recall", "{rank}", "--plot", "{rank}"),
        2,
        "input",
    ),
    C(
        "paths",
        "tradeoff-plot",
        "tradeoff --plot a directory",
        ("evaluate", "tradeoff", "{sig}", "--subset", "0", "--plot", "{bad}"),
        2,
        "directory",
        directory(),
    ),
    C(
        "paths",
        "val-out-fifo",
        "validate -o a FIFO (refused before training)",
        ("validate", "{cfg}", "-o", "{bad}", "-q"),
        2,
        "FIFO",
        fifo("v.json"),
    ),
    C(
        "paths",
        "val-truth-input",
        "validate --save-truth the config",
        ("validate", "{cfg}", "--save-truth", "{cfg}", "-q"),
        2,
        "input",
    ),
    C(
        "paths",
        "val-same",
        "validate -o and --save-truth the same",
        ("validate", "{cfg}", "-o", "{dir}/x", "--save-truth", "{dir}/x", "-q"),
        2,
        "both",
    ),
    C(
        "paths",
        "run-name",
        "fine run --set name=../../x (before training)",
        (
            "run",
            "{cfg}",
            "--set",
            "name=../../x",
            "--report-dir",
            "{dir}/rep",
            "--out-dir",
            "{dir}/runs",
            "-q",
        ),
        2,
        "plain name",
    ),
    C(
        "paths",
        "run-report-file",
        "fine run --report-dir a file",
        ("run", "{cfg}", "--report-dir", "{rank}", "--out-dir", "{dir}/runs", "-q"),
        4,
        "report directory",
    ),
    C(
        "paths",
        "run-report-link",
        "fine run: the report .md a symlink",
        ("run", "{cfg}", "--report-dir", "{dir}", "--out-dir", "{dir}/runs", "-q"),
        2,
        "symbolic link",
        symlink("rank", "tiny.md"),
    ),
    C(
        "paths",
        "run-out-file",
        "fine run --out-dir a file",
        ("run", "{cfg}", "--report-dir", "{dir}/rep", "--out-dir", "{rank}", "-q"),
        4,
        "run directory",
    ),
    C(
        "paths",
        "locked",
        "-o locked by another writer",
        (*OUT, "{dir}/locked.npz"),
        4,
        "another fine process",
        lambda env: _lock(env),
    ),
]


def _chardev(env: Env) -> None:
    """A character device like /dev/null; made in the case's directory when root (so a
    regression could never replace the real /dev/null), else /dev/null itself (which a
    non-root regression cannot replace)."""
    import stat

    if os.geteuid() != 0:
        env.paths["bad"] = "/dev/null"
        return
    dev = env.dir / "null"
    os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    env.paths["bad"] = str(dev)


def _dangling(env: Env) -> None:
    (env.dir / "dangling.npz").symlink_to(env.dir / "nowhere.npz")
    env.paths["bad"] = str(env.dir / "dangling.npz")


def _dots(env: Env) -> None:
    sub = Path(env.paths["sig"]).parent / "sub"
    sub.mkdir(exist_ok=True)
    env.paths["bad"] = str(sub / ".." / Path(env.paths["sig"]).name)


# Locks held by _lock (as another writer would), released by release_locks() after the case.
HELD: list[tuple[int, Path]] = []


def _lock(env: Env) -> None:
    import fcntl

    path = env.dir / ".locked.npz.lock"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"4242\n")
    HELD.append((fd, path))


def release_locks() -> None:
    while HELD:
        fd, path = HELD.pop()
        path.unlink(missing_ok=True)
        os.close(fd)


MARKUP = [
    C(
        "markup",
        "option-value",
        "rank --format '[/]'",
        ("rank", "{inf}", "--format", "[/]"),
        2,
        "'[/]' is not one of",
    ),
    C("markup", "command", "a command named '[/]'", ("[/]",), 2, "No such command '[/]'"),
    C("markup", "path-close", "a file named '[/]x.npz'", _est("{dir}/[/]x.npz"), 3, "[/]x.npz"),
    C(
        "markup",
        "path-style",
        "a file named '[bold red]x.npz'",
        _est("{dir}/[bold red]x.npz"),
        3,
        "[bold red]x.npz",
    ),
    C(
        "markup",
        "path-emoji",
        "a file named ':smile:.npz'",
        _est("{dir}/:smile:.npz"),
        3,
        ":smile:.npz",
    ),
    C(
        "markup",
        "config-close",
        "a config named '[/].yaml'",
        ("train-collect", "{dir}/[/].yaml"),
        2,
        "[/].yaml",
    ),
    C("markup", "set-value", "--set name='[/]'", _set("name=[/]x"), 2, "name"),
    C(
        "markup",
        "method-meta",
        "a ranking whose method is '[/]' (table)",
        _recall(),
        3,
        "label_noise",
        edited("rank", meta__method="[/]", is_flipped=lambda a: np.zeros_like(a)),
    ),
]

OPTIONS = [
    C(
        "options",
        "method",
        "--method nope",
        ("estimate", "{sig}", "--method", "nope"),
        2,
        "unknown method",
    ),
    C(
        "options",
        "estimator",
        "--estimator median",
        _est("{sig}", "--estimator", "median"),
        2,
        "estimator",
    ),
    C(
        "options",
        "checkpoints",
        "--checkpoints 99",
        _est("{sig}", "--checkpoints", "99"),
        2,
        "checkpoints",
    ),
    C(
        "options",
        "checkpoints-text",
        "--checkpoints lots",
        _est("{sig}", "--checkpoints", "lots"),
        2,
        "checkpoints",
    ),
    C(
        "options",
        "alternative",
        "--alternative both",
        ("estimate", "{sig}", "--alternative", "both", "-o", "{dir}/o.npz"),
        2,
        "alternative",
    ),
    C(
        "options",
        "bootstrap-1",
        "--bootstrap 1",
        ("estimate", "{sig}", "--bootstrap", "1", "-o", "{dir}/o.npz"),
        2,
        "bootstrap",
    ),
    C(
        "options",
        "bootstrap-neg",
        "--bootstrap -1",
        ("estimate", "{sig}", "--bootstrap", "-1"),
        2,
        "bootstrap",
    ),
    C("options", "top-0", "rank --top 0", ("rank", "{inf}", "--top", "0"), 2, "top"),
    C("options", "format", "rank --format xml", ("rank", "{inf}", "--format", "xml"), 2, "format"),
    C(
        "options",
        "models-3",
        "validate --models 3",
        ("validate", "{cfg}", "--models", "3"),
        2,
        "models",
    ),
    C("options", "stdin-tty", "'-' with nothing piped in", _est("-"), 3, "standard input"),
    C(
        "options",
        "inspect-input",
        "inspect --input of another signals file",
        ("inspect", "{inf}", "--input", "{tsig}"),
        3,
        "made from another signals file",
    ),
    C(
        "options",
        "inspect-kind",
        "inspect --input of the wrong kind",
        ("inspect", "{inf}", "--input", "{rank}"),
        2,
        "made from a signals file",
    ),
    C(
        "options",
        "inspect-damaged",
        "inspect a damaged file (shown, then refused)",
        ("inspect", "{bad}"),
        3,
        "'lr' has 2 dimension",
        edited("sig", lr=np.zeros((2, 2))),
    ),
    C(
        "options",
        "inspect-foreign",
        "inspect a foreign npz",
        ("inspect", "{bad}"),
        3,
        "not one written by fine",
        raw_npz({"a.npy": np.arange(3)}),
    ),
]

CASES: list[Case] = [
    *CONFIG,
    *YAML,
    *SIGNALS,
    *INFLUENCE,
    *RANKING,
    *TRUTH,
    *RUNS,
    *OUTPUTS,
    *MARKUP,
    *OPTIONS,
]


def case_dir(case: Case, env: Env) -> Path:
    return env.dir / case.category / case.name


def run_case(case: Case, env: Env, stdin: str | None = None) -> tuple[int, str]:
    """Prepare and run one case through the CLI in this process, in its own directory
    (:func:`case_dir`): (exit code, output)."""
    from typer.testing import CliRunner

    from fine_cli.cli import app

    case_env = Env(dir=case_dir(case, env), paths=dict(env.paths))
    case_env.dir.mkdir(parents=True, exist_ok=True)
    try:
        if case.prep is not None:
            case.prep(case_env)
        res = CliRunner().invoke(app, case_env.fill(case.args), input=stdin)
    finally:
        release_locks()
    return res.exit_code, res.output


def first_message(output: str) -> str:
    """The refusal's text: the 'error:' line(s) joined, or the output's last line."""
    text = " ".join(re.sub("[\u2500-\u257f]", " ", output).split())  # no box drawing
    at = text.find("error:")
    if at < 0:
        at = text.find("Error")
    return text[at:] if at >= 0 else text[-200:]
