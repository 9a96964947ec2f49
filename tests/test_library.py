"""The library under the CLI: typed results, the collector, tasks, the method registry,
the documented API, and the golden signals made before the library existed."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fine_cli
from fine_cli.artifacts import load_signals
from fine_cli.grads import GradEngine
from fine_cli.tasks import IGNORE_INDEX, SequenceTask
from tests.conftest import write_config

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# a float64 model's quantities, returned as float32, against float64 autograd loops
OUT_RTOL, OUT_ATOL = 1e-6, 1e-9

# The configs the golden files were made with (one thread), before the library redesign:
# fine train-collect configs/quickstart.yaml --set ... -o tests/fixtures/<name>.npz
# PAPER_COLLECTION pins what was collected then, before the defaults left out what the
# default estimator does not read (the auxiliary model) and added rb's moments and the
# held-out loss (docs/statistics.md, section 7).
PAPER_COLLECTION = ["collect.auxiliary=true", "collect.moments=false", "collect.heldout=false"]
GOLDEN = {
    "golden_self": ["data.n_train=400", "train.epochs=3", "name=golden", *PAPER_COLLECTION],
    "golden_test": [
        "data.n_train=300",
        "train.epochs=2",
        "collect.mode=test",
        "collect.test_points.n=5",
        "name=golden_test",
        *PAPER_COLLECTION,
    ],
    "golden_features": [
        "data.n_train=300",
        "train.epochs=2",
        "experiment.methods=[fine,trak,if]",
        "collect.features.proj_dim=64",
        "name=golden_features",
        *PAPER_COLLECTION,
    ],
}


def _assert_same_arrays(a: fine_cli.Signals, b: fine_cli.Signals) -> None:
    assert set(a.arrays) == set(b.arrays)
    for k in a.arrays:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_train_collect_reproduces_the_golden_signals_array_for_array(name: str) -> None:
    golden = load_signals(str(FIXTURES / f"{name}.npz"))
    new = fine_cli.train_collect(ROOT / "configs" / "quickstart.yaml", GOLDEN[name])
    _assert_same_arrays(golden, new)


# ---- the user's own loop -----------------------------------------------------------------


def test_own_loop_example_gives_the_signals_of_train_collect() -> None:
    example = runpy.run_path(str(ROOT / "examples" / "own_loop.py"))
    cfg = fine_cli.load_config(example["CONFIG"], ["train.epochs=3"])
    _assert_same_arrays(example["train_and_collect"](cfg), fine_cli.train_collect(cfg))


def test_own_loop_example_finds_the_flipped_labels(capsys: pytest.CaptureFixture[str]) -> None:
    aurocs = runpy.run_path(str(ROOT / "examples" / "own_loop.py"))["main"]()
    assert aurocs["fine"] > 0.8 and aurocs["tracin"] > 0.8
    assert "AUROC" in capsys.readouterr().out


def test_collector_test_mode_equals_the_engine_gram_and_self_mode_diagonal() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
    main, aux = (nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double() for _ in "ab")
    data = fine_cli.TensorPairs(x, y)
    queries = fine_cli.TensorPairs(x[:5], y[:5])
    test = fine_cli.Collector(
        main, aux, data, probe_batch_size=7, seed=3, chunk_size=8, test_set=queries
    )
    own = fine_cli.Collector(main, aux, data, probe_batch_size=7, seed=3, chunk_size=11)
    test.checkpoint(lr=0.1)
    own.checkpoint(lr=0.1)
    t, s = test.signals(), own.signals()
    want = GradEngine(main).gram(x[:5], y[:5], x, y).numpy()
    np.testing.assert_allclose(t["gram"][0, 0], want, rtol=1e-5, atol=1e-7)
    # the same probe draws (same seed) whatever the chunk size; self mode = the diagonal
    np.testing.assert_array_equal(t["probe_idx"], s["probe_idx"])
    np.testing.assert_allclose(
        np.diagonal(t["gram"][:, 0, :, :5], axis1=1, axis2=2), s["sqnorm"][:, 0, :5], rtol=1e-5
    )
    np.testing.assert_allclose(t["test_ip"][:, 0, ..., :5], s["ip"][:, 0, ..., :5], rtol=1e-5)


def test_collector_refuses_what_it_cannot_use() -> None:
    data = fine_cli.TensorPairs(torch.randn(1, 2), torch.zeros(1, dtype=torch.long))
    with pytest.raises(fine_cli.ConfigError, match="at least 2"):
        fine_cli.Collector(nn.Linear(2, 2), nn.Linear(2, 2), data)
    big = fine_cli.TensorPairs(torch.randn(6, 2), torch.zeros(6, dtype=torch.long))
    col = fine_cli.Collector(nn.Linear(2, 2), nn.Linear(2, 2), big, probe_batch_size=2)
    with pytest.raises(fine_cli.RunError, match="no checkpoint"):
        col.signals()


# ---- tasks ---------------------------------------------------------------------------------


class _TinyLM(nn.Module):
    def __init__(self, vocab: int = 11, dim: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(tokens))))


def _sequence_setting() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    model = _TinyLM().double()
    tokens = torch.randint(0, 11, (9, 7))
    targets = tokens.clone()
    targets[:, :3] = IGNORE_INDEX
    targets[4, :] = IGNORE_INDEX  # a sample with no scored token: loss 0, gradient 0
    return model, tokens, targets


def _loop_grads(model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(n, d) per-sample gradients of the mean token loss, one autograd call per sample,
    the loss written out by hand: shifted logits, masked mean of -log softmax."""
    rows = []
    for i in range(tokens.shape[0]):
        logits = model(tokens[i : i + 1])[0, :-1]  # (T-1, V) predicts targets[1:]
        tgt = targets[i, 1:]
        keep = tgt != IGNORE_INDEX
        nll = -torch.log_softmax(logits, -1)[keep, tgt[keep]]
        loss = nll.mean() if keep.any() else logits.sum() * 0.0
        grads = torch.autograd.grad(loss, list(model.parameters()))
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def test_sequence_task_per_sample_quantities_equal_an_autograd_loop() -> None:
    model, tokens, targets = _sequence_setting()
    g = _loop_grads(model, tokens, targets)
    engine = GradEngine(model, chunk_size=4, task=SequenceTask())
    batch_sum = [t.detach() for t in engine.batch_grad_sum(tokens[:3], targets[:3])]
    res = engine.per_sample(tokens, targets, [batch_sum], batches=[(tokens[5:], targets[5:])])
    tol = {"rtol": OUT_RTOL, "atol": OUT_ATOL}
    torch.testing.assert_close(res.sqnorm.double(), (g * g).sum(1), **tol)
    torch.testing.assert_close(res.ips[0].double(), g @ g[:3].sum(0), **tol)
    torch.testing.assert_close(res.ips[1].double(), g @ g[5:].sum(0), **tol)
    gram = engine.gram(tokens[:2], targets[:2], tokens, targets)
    torch.testing.assert_close(gram.double(), g[:2] @ g.T, **tol)
    assert res.loss[4] == 0 and res.sqnorm[4] == 0


def test_sequence_task_loss_is_the_masked_token_mean() -> None:
    logits = torch.randn(2, 4, 6)
    targets = torch.tensor([[0, 1, 2, 3], [IGNORE_INDEX, IGNORE_INDEX, 5, IGNORE_INDEX]])
    got = SequenceTask().loss(logits, targets)
    lp = torch.log_softmax(logits, -1)
    want0 = -(lp[0, 0, 1] + lp[0, 1, 2] + lp[0, 2, 3]) / 3
    want1 = -lp[1, 1, 5]
    torch.testing.assert_close(got, torch.stack([want0, want1]))


# ---- results and files ---------------------------------------------------------------------


def test_results_keep_their_content_hash_through_a_file(tmp_path: Path) -> None:
    signals = load_signals(str(FIXTURES / "golden_self.npz"))
    influence = fine_cli.estimate(signals, "tracin")
    assert influence.meta["signals_sha256"] == signals.sha256
    fine_cli.save(influence, tmp_path / "inf.npz")
    again = fine_cli.load(tmp_path / "inf.npz")
    assert isinstance(again, fine_cli.Influence) and again.sha256 == influence.sha256
    ranking = fine_cli.rank(again)
    assert ranking.meta["influence_sha256"] == influence.sha256
    with pytest.raises(fine_cli.InputFileError, match="influence file"):
        fine_cli.load(tmp_path / "inf.npz", "signals")


def test_a_result_refuses_a_bad_shape_in_one_sentence() -> None:
    signals = load_signals(str(FIXTURES / "golden_self.npz"))
    arrays = dict(signals.arrays, sqnorm=signals["sqnorm"][:, :, :-1])
    bad = fine_cli.Signals(arrays=arrays, meta=signals.meta)
    with pytest.raises(fine_cli.InputFileError, match="'sqnorm' has shape"):
        fine_cli.estimate(bad, "fine")


# ---- the method registry -------------------------------------------------------------------

DUMMY = """
import numpy as np
from fine_cli.registry import Method, register


def _score(view, queries, options):
    return np.asarray(view.sqnorm[0].sum(axis=0), dtype=np.float64)[None, :]


register(Method(name="dummy", description="a test method: summed squared norms", score=_score))
"""


def _env_with_plugin(tmp_path: Path) -> dict[str, str]:
    plugin = tmp_path / "dummy_method.py"
    plugin.write_text(DUMMY)
    return {**os.environ, "FINE_PLUGINS": str(plugin), "OMP_NUM_THREADS": "1"}


def _fine(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    fine = [sys.executable, "-c", "from fine_cli.cli import main; main()"]
    return subprocess.run(
        [*fine, *args], env=env, capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_a_method_registered_in_one_file_reaches_help_config_and_report(tmp_path: Path) -> None:
    env = _env_with_plugin(tmp_path)
    helped = _fine(env, "estimate", "--help")
    assert helped.returncode == 0 and "dummy" in helped.stdout
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {"experiment.methods": ["fine", "dummy"], "experiment.seeds": [0, 1], "train.epochs": 2},
    )
    run = _fine(
        env,
        "run",
        str(cfg),
        "--out-dir",
        str(tmp_path / "runs"),
        "--report-dir",
        str(tmp_path / "report"),
        "-q",
    )
    assert run.returncode == 0, run.stderr
    report = (tmp_path / "report" / "tiny.md").read_text()
    assert re.search(r"\bdummy\b", report)
    # without the plugin the same config is refused at load, naming the key
    bare = _fine(
        {**os.environ, "OMP_NUM_THREADS": "1"},
        "train-collect",
        str(cfg),
        "-o",
        str(tmp_path / "s.npz"),
    )
    assert bare.returncode == 2 and "experiment.methods" in bare.stderr
    assert "unknown method 'dummy'" in bare.stderr


def test_a_plugin_that_fails_to_load_is_one_sentence(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    res = _fine({**os.environ, "FINE_PLUGINS": str(broken)}, "estimate", "--help")
    assert res.returncode == 2 and "boom" in res.stderr and "Traceback" not in res.stderr


# ---- the documented API ----------------------------------------------------------------------


def test_api_lists_the_public_names() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import fine_cli; print(fine_cli.__all__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in ("train_collect", "estimate", "rank", "evaluate_recall", "Collector", "Task"):
        assert f"'{name}'" in out


def test_the_examples_of_docs_api_run(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "API.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 5
    script = tmp_path / "api_examples.py"
    script.write_text("\n\n".join(blocks))
    res = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert "AUROC" in res.stdout and "lr-loss" not in res.stderr
    assert "unknown method 'no-such-method'" in res.stdout


def test_fdr_with_the_typical_null_takes_the_estimators_scale_and_warns_outside_it() -> None:
    from fine_cli.results import make_meta

    n = 400
    rng = np.random.default_rng(0)
    arrays = {
        "scores": rng.lognormal(size=(1, n)),
        "stderr": np.full((1, n), 0.5),
        "pvalue": rng.uniform(size=(1, n)),
        "query_index": np.array([-1]),
        "train_index": np.arange(n),
        "labels": np.zeros(n, np.int64),
        "flip_mask": np.zeros(n, bool),
        "group_ptr": np.arange(n + 1),
        "group_members": np.arange(n),
    }
    cases = (("self", "rb", None, "log", False), ("self", "paired", None, "linear", False))
    cases += (("self", "rb", "linear", "linear", True), ("self", "alg2", None, "linear", True))
    cases += (("test", "rb", None, "linear", True),)  # signed scores: not calibrated
    for mode, estimator, scale, on, warned in cases:
        meta = make_meta("influence", method="fine", mode=mode, estimator=estimator)
        influence = fine_cli.Influence(arrays=arrays, meta=meta)
        ranking = fine_cli.rank(influence, fdr=0.1, scale=scale)
        assert ranking.meta["fdr"]["scale_on"] == on, estimator
        assert ("warning" in ranking.meta["fdr"]) == warned, estimator
