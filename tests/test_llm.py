"""Language models with LoRA: the gradients against a per-sample autograd loop, the LoRA
collector against the Collector, LESS against its formula, and a reduced `fine run`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import Tensor, nn

from fine_cli.batches import TensorPairs
from fine_cli.collector import Collector
from fine_cli.errors import ConfigError
from fine_cli.grads import GradEngine
from fine_cli.grads.sketch import Sketcher
from fine_cli.tasks import IGNORE_INDEX, SequenceTask

pytest.importorskip("transformers")
pytest.importorskip("peft")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fine_cli.llm.collect import LoraCollector
from fine_cli.llm.model import add_lora, tiny_model

# float32 models: the factored formulas and autograd sum in different orders.
TOL = 2e-5
TASK = SequenceTask()
VOCAB, T = 40, 9


def _models(arch: str = "gpt2", seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A tiny base with two LoRA copies whose B is non-zero (a trained adapter)."""
    torch.manual_seed(seed)
    base = tiny_model(arch, VOCAB, 2, 16, 2, 16)
    targets = ["c_attn", "c_proj"] if arch == "gpt2" else ["q_proj", "v_proj", "o_proj"]
    pair = []
    for s in (seed, seed + 1):
        m = add_lora(base, 4, 8, 0.0, targets, s)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        pair.append(m)
    return pair[0], pair[1]


def _data(n: int, seed: int = 0, t: int = T) -> tuple[Tensor, Tensor]:
    """Right-padded sequences of several lengths; the first 3 tokens are the prompt."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, VOCAB, (n, t), generator=g)
    y = x.clone()
    y[:, :3] = IGNORE_INDEX
    lengths = torch.randint(5, t + 1, (n,), generator=g)
    for i, length in enumerate(lengths.tolist()):
        x[i, length:] = 0
        y[i, length:] = IGNORE_INDEX
    return x, y


def loop_grads(model: nn.Module, x: Tensor, y: Tensor) -> list[list[Tensor]]:
    """The slow twin: per sample, one autograd call on that sample alone (eval mode)."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    out = []
    for i in range(x.shape[0]):
        loss = TASK.loss(model(x[i : i + 1]), y[i : i + 1]).sum()
        out.append(list(torch.autograd.grad(loss, params)))
    return out


def _flat(rows: list[list[Tensor]]) -> Tensor:
    return torch.stack([torch.cat([g.reshape(-1) for g in r]) for r in rows])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lora_gradients_match_the_autograd_loop(arch: str) -> None:
    """Only the adapters are trainable; the engine's Gram block (Linear formula over the
    sequence positions) and its built gradients equal one autograd call per sample."""
    main, _ = _models(arch)
    names = [k for k, p in main.named_parameters() if p.requires_grad]
    assert names and all("lora_" in k for k in names)
    x, y = _data(7)
    xq, yq = _data(3, seed=1)
    ref, ref_q = _flat(loop_grads(main, x, y)), _flat(loop_grads(main, xq, yq))
    engine = GradEngine(main, task=TASK)
    assert engine._fallback_unit is None  # every adapter is an nn.Linear: exact formula
    gram = engine.gram(xq, yq, x, y)
    assert torch.allclose(gram, ref_q @ ref.T, atol=TOL)
    rows = loop_grads(main, x, y)
    for u in engine.materialise(x, y).units():
        laid_out = torch.stack([u.layout(r) for r in rows])
        assert torch.allclose(u.grads, laid_out, atol=TOL)


def test_padding_changes_no_loss_or_gradient() -> None:
    """Right padding with IGNORE_INDEX targets: a sample's loss and gradient do not depend
    on how long its batch is padded (no attention mask needed)."""
    main, _ = _models()
    x, y = _data(4, t=8)
    pad = (torch.nn.functional.pad(x, (0, 5)), torch.nn.functional.pad(y, (0, 5), value=-100))
    engine = GradEngine(main, task=TASK)
    a, b = engine.per_sample(x, y), engine.per_sample(*pad)
    assert torch.allclose(a.loss, b.loss, atol=1e-6)
    assert torch.allclose(a.sqnorm, b.sqnorm, rtol=1e-5)


@pytest.mark.parametrize("chunk", [64, 5])
def test_lora_collector_equals_the_collector(chunk: int) -> None:
    """One capture per chunk (one capture of everything when it fits) gives the
    Collector's test-mode arrays; the probe batches are drawn identically."""
    main, aux = _models()
    x, y = _data(20)
    xq, yq = _data(4, seed=2)
    opt = torch.optim.AdamW([p for p in main.parameters() if p.requires_grad], lr=1e-3)
    main.train()
    TASK.loss(main(x), y).mean().backward()
    opt.step()
    kw = {"probe_batch_size": 6, "probe_repeats": 2, "seed": 5, "chunk_size": chunk}
    fast = LoraCollector(main, aux, TensorPairs(x, y), (xq, yq), **kw)
    slow = Collector(main, aux, TensorPairs(x, y), TASK, test_set=TensorPairs(xq, yq), **kw)
    fast.checkpoint(lr=0.1, optimizer=opt)
    slow.checkpoint(lr=0.1)
    a, b = fast.arrays(), slow.arrays()
    for k in ("sqnorm", "ip", "probe_sqnorm", "loss", "margin", "gram", "test_ip", "test_sqnorm"):
        np.testing.assert_allclose(a[k], b[k], atol=5e-5, rtol=1e-4, err_msg=k)
    np.testing.assert_array_equal(a["probe_idx"], b["probe_idx"])


def test_query_sets_are_means_of_their_prompts() -> None:
    """A query set's gradient is the mean of its prompts': its Gram row is the mean row."""
    main, aux = _models()
    x, y = _data(12)
    xq, yq = _data(5, seed=3)
    per_prompt = LoraCollector(main, aux, TensorPairs(x, y), (xq, yq), precondition="none")
    grouped = LoraCollector(
        main, aux, TensorPairs(x, y), (xq, yq), [[0, 2], [1, 3, 4]], precondition="none"
    )
    for c in (per_prompt, grouped):
        c.checkpoint(lr=1.0)
    g1, g2 = per_prompt.arrays()["gram"], grouped.arrays()["gram"]
    np.testing.assert_allclose(g2[:, :, 0], g1[:, :, [0, 2]].mean(2), atol=1e-6)
    np.testing.assert_allclose(g2[:, :, 1], g1[:, :, [1, 3, 4]].mean(2), atol=1e-6)
    np.testing.assert_array_equal(grouped.arrays()["less_query"], [0, 1, 0, 1, 1])


def test_less_preconditioning_matches_its_formula() -> None:
    """less_gram = <g(q'), Gamma(z)> with LESS's Adam map of each loop gradient."""
    main, aux = _models()
    x, y = _data(10)
    xq, yq = _data(3, seed=4)
    params = [p for p in main.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.99))
    for _ in range(3):
        opt.zero_grad()
        main.train()
        TASK.loss(main(x), y).mean().backward()
        opt.step()
    col = LoraCollector(main, aux, TensorPairs(x, y), (xq, yq), probe_batch_size=4)
    col.checkpoint(optimizer=opt)
    g, gq = loop_grads(main, x, y), _flat(loop_grads(main, xq, yq))
    m = torch.cat([opt.state[p]["exp_avg"].reshape(-1) for p in params])
    v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in params])
    flat = _flat(g)
    gamma = (0.9 * m + 0.1 * flat) / torch.sqrt(0.99 * v + 0.01 * flat**2 + 1e-8)
    arrays = col.arrays()
    np.testing.assert_allclose(arrays["less_gram"][0], (gq @ gamma.T).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(arrays["less_sqnorm"][0], (gamma**2).sum(1).numpy(), rtol=1e-4)
    assert arrays["lr"][0] == pytest.approx(1e-2)


def test_dense_sketch_is_the_engines_sketch() -> None:
    """Sketching built gradients hashes them exactly as engine.project does (so plain and
    preconditioned gradients share coordinates)."""
    main, _ = _models()
    x, y = _data(6)
    engine = GradEngine(main, task=TASK)
    sk = Sketcher(128, 7)
    dense = sum(sk.sketch_dense(u.key, u.factor, u.grads) for u in engine.materialise(x, y).units())
    assert torch.allclose(dense, engine.project(x, y, 128, 7), atol=1e-5)


def test_sketched_signals_fold_and_estimate_the_exact_ones() -> None:
    """Signals at the largest d come from the unfolded sketch; a fold keeps them unbiased
    estimates (here: close to the exact Gram at d well above the gradient width)."""
    main, aux = _models()
    x, y = _data(16)
    xq, yq = _data(3, seed=6)
    col = LoraCollector(
        main, aux, TensorPairs(x, y), (xq, yq), precondition="none", sketch_dims=[512, 16384]
    )
    col.checkpoint(lr=1.0)
    exact, wide, narrow = col.arrays(), col.arrays(16384), col.arrays(512)
    scale = np.abs(exact["gram"]).max()
    assert np.abs(wide["gram"] - exact["gram"]).max() < 0.1 * scale
    assert np.abs(narrow["gram"] - exact["gram"]).max() > np.abs(wide["gram"] - exact["gram"]).max()
    with pytest.raises(ConfigError, match="divisor"):
        LoraCollector(main, aux, TensorPairs(x, y), (xq, yq), sketch_dims=[300, 1024])


def test_less_method_is_the_lr_weighted_mean_cosine() -> None:
    from fine_cli.estimators.less import less
    from fine_cli.estimators.view import signal_view

    main, aux = _models()
    x, y = _data(9)
    xq, yq = _data(4, seed=8)
    col = LoraCollector(
        main, aux, TensorPairs(x, y), (xq, yq), [[0, 1], [2, 3]], precondition="none"
    )
    for lr in (0.5, 0.25):
        col.checkpoint(lr=lr)
    sig = col.signals()
    got = less(signal_view(sig), None, None)
    a = sig.arrays
    want = np.zeros((2, 9))
    for c, lr in enumerate(a["lr"]):
        for p, q in enumerate(a["less_query"]):
            for i in range(9):
                cos = a["less_gram"][c, p, i] / np.sqrt(
                    a["less_test_sqnorm"][c, p] * a["less_sqnorm"][c, i]
                )
                want[q, i] += lr * cos / 2  # two prompts per query
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # without LESS's arrays (train-collect's signals): plain gradients, grad-cos's cosines
    from dataclasses import replace

    from fine_cli.estimators.baselines import grad_cos

    plain = replace(signal_view(sig), less_gram=None)
    np.testing.assert_allclose(less(plain, None, None), grad_cos(plain) * a["lr"].sum())


def test_checkpoint_subsets_and_the_distribution_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fine_cli.artifacts import save
    from fine_cli.cli import app
    from fine_cli.llm.experiment import select_checkpoints
    from fine_cli.stages import estimate

    main, aux = _models()
    x, y = _data(12)
    xq, yq = _data(2, seed=9)
    col = LoraCollector(
        main, aux, TensorPairs(x, y), (xq, yq), probe_batch_size=4, precondition="none"
    )
    for lr in (1.0, 0.5, 0.25, 0.125):
        col.checkpoint(lr=lr)
    sig = col.signals()
    sub = select_checkpoints(sig, np.array([0, 2]))
    sub.validate()
    assert sub["lr"].tolist() == [1.0, 0.25] and sub["less_gram"].shape[0] == 2
    for method in ("fine", "less", "tracin"):
        assert estimate.run(sub, method).scores.shape == (2, 12)
    path = tmp_path / "signals.npz"
    save(sig, str(path))
    png = tmp_path / "dist.png"
    args = ["evaluate", "distribution", str(path), "--subset", "3", "--query", "1", "--json"]
    res = CliRunner().invoke(app, [*args, "--plot", str(png)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert len(out["o"]) == len(out["o_prime"]) == 4 and png.stat().st_size > 0
    assert {"alg2", "paired", "rb"} <= set(out["influence"])
    bad = CliRunner().invoke(app, ["evaluate", "distribution", str(path), "--subset", "3"])
    assert bad.exit_code == 2 and "--query" in bad.output


def test_llm_extra_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from fine_cli import llm

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "peft" else real(name)
    )
    with pytest.raises(ConfigError, match=r"\.\[llm\]"):
        llm.require()


def test_the_configs_load() -> None:
    from fine_cli.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    demo = load_config(root / "llm_poison.yaml")
    assert demo.llm is not None and demo.llm.collect.checkpoints == 100
    gpu = load_config(root / "llm_poison_llama.yaml")
    assert gpu.llm is not None and gpu.llm.model.name_or_path and gpu.llm.model.dtype == "bfloat16"


def test_llm_configs_refuse_the_image_sections_and_train_collect(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fine_cli.cli import app
    from fine_cli.config import load_config
    from fine_cli.llm import experiment

    root = Path(__file__).resolve().parents[1] / "configs"
    with pytest.raises(ConfigError, match="train"):
        experiment.run(load_config(root / "llm_poison.yaml", ["train.epochs=3"]), tmp_path)
    res = CliRunner().invoke(app, ["train-collect", str(root / "llm_poison.yaml"), "-o", "-"])
    assert res.exit_code == 2 and "fine run" in res.output


# ---- the experiment, reduced ---------------------------------------------------------------

REDUCED = {
    "name": "llm_tiny",
    "experiment": {"seeds": [0, 1], "methods": ["fine", "less", "tracin"]},
    "estimate": {"bootstrap": 0, "permutations": 0, "checkpoints": None},
    "llm": {
        "model": {"tiny": {"layers": 1, "dim": 32, "heads": 2, "vocab_size": 160}},
        "lora": {"r": 4, "alpha": 8},
        "data": {
            "synthetic": {
                "n_pretrain": 400,
                "n_clean": 60,
                "poison_per_entity": 8,
                "test_per_entity": 4,
                "clean_per_target": 1,
            }
        },
        "pretrain": {"epochs": 3},
        "train": {"epochs": 3, "lr": 0.004},
        "collect": {"checkpoints": 10, "sketch_dims": [256, 1024]},
        "evaluate": {
            "checkpoint_subsets": [6],
            "p_grid": [0, 10, 20, 30, 50, 100],
            "table_p": [10, 20],
        },
    },
}


def test_fine_run_llm_reduced(tmp_path: Path) -> None:
    """The whole experiment through the CLI, reduced: files, report sections, and the
    pre-trained base taken from the cache the second time."""
    from typer.testing import CliRunner

    from fine_cli.cli import app

    cfg = json.loads(json.dumps(REDUCED))
    cfg["llm"]["pretrain"]["cache_dir"] = str(tmp_path / "cache")
    path = tmp_path / "llm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    args = [
        "run",
        str(path),
        "--out-dir",
        str(tmp_path / "run"),
        "--report-dir",
        str(tmp_path / "rep"),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "llm_tiny.md").read_text()
    for section in (
        "Steering check",
        "Fig. 7",
        "Fig. 8",
        "Fig. 9",
        "Fig. 10",
        "Fig. 11",
        "Time of each",
    ):
        assert section in md
    for fig in ("recall", "variability", "dims", "checkpoints", "distribution"):
        assert (tmp_path / "rep" / f"llm_tiny-{fig}.png").is_file()
    summary = json.loads((tmp_path / "rep" / "llm_tiny.json").read_text())
    assert set(summary["methods"]) == {"fine", "less", "tracin"}
    assert set(summary["methods"]["fine"]["dims"]) == {"exact", "256", "1024"}
    for seed in (0, 1):
        d = tmp_path / "run" / f"seed-{seed}"
        assert (d / "signals.npz").is_file() and (d / "signals-d256.npz").is_file()
        assert (d / "influence-less.npz").is_file()
    again = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "rep2")])
    assert again.exit_code == 0 and "cached" in again.output


def test_the_gpu_config_runs_with_a_tiny_llama(tmp_path: Path) -> None:
    """configs/llm_poison_llama.yaml's code path (a model and tokenizer loaded from a
    directory, bf16 base, q/k/v/o adapters with dropout, JSONL data, linear decay), with a
    tiny random LlamaConfig in place of Llama-3.1-8B and sizes cut down."""
    from fine_cli.config import load_config
    from fine_cli.llm import experiment
    from fine_cli.llm.data import write_jsonl
    from fine_cli.llm.synthetic import make_task
    from fine_cli.llm.tokenizer import train_bpe

    task = make_task(60, 40, 5, 3, 2, 1, seed=0)
    tok = train_bpe(task.texts(), 200)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    model = tiny_model("llama", len(tok), 1, 32, 2, 48, ids)
    model.save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    write_jsonl(tmp_path / "train.jsonl", task.train)
    write_jsonl(tmp_path / "test.jsonl", task.test)
    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config(
        root / "llm_poison_llama.yaml",
        [
            f"llm.model.name_or_path={tmp_path / 'llama'}",
            f"llm.data.train_path={tmp_path / 'train.jsonl'}",
            f"llm.data.test_path={tmp_path / 'test.jsonl'}",
            "llm.data.max_length=48",
            "llm.lora.r=4",
            "llm.train.device=cpu",
            "llm.train.epochs=2",
            "llm.train.batch_size=16",
            "llm.train.lr=0.001",
            "llm.collect.checkpoints=5",
            "llm.collect.probe_batch_size=8",
            "llm.collect.chunk_size=16",
            "llm.collect.sketch_dims=[128, 256]",
            "llm.evaluate.checkpoint_subsets=[3]",
            "experiment.seeds=[0, 1]",
        ],
    )
    assert cfg.llm is not None and cfg.llm.model.dtype == "bfloat16"
    result = experiment.run(cfg, tmp_path / "run")
    assert [r.seed for r in result.runs] == [0, 1]
    scores = result.runs[0].scores
    assert set(scores) == {"fine", "less", "tracin"}
    assert all(np.all(np.isfinite(s)) and s.shape == (2, 50) for s in scores.values())
