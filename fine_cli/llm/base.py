"""The data, tokenizer and base model that every seed of an LLM run shares.

Data come from the synthetic task (written out as JSONL under the run directory, then read
back like a user's files) or from the user's JSONL files. A named model is loaded with its
tokenizer; a tiny one is built, its BPE trained on the run's texts and the model
pre-trained on a clean corpus, both cached under ``pretrain.cache_dir`` by a hash of
everything that makes them (a second run loads them).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fine_cli.config import LLMConfig
from fine_cli.errors import ConfigError
from fine_cli.llm import data as llm_data
from fine_cli.llm import synthetic, tokenizer
from fine_cli.llm.model import CausalLM, load_pretrained, tiny_model
from fine_cli.llm.train import Run, Schedule, mean_loss, train

Message = Callable[[str], None]


@dataclass
class Prepared:
    """What every seed of a run shares (tensors on the CPU)."""

    train: list[llm_data.Instruction]
    test: list[llm_data.TestPrompt]
    entities: list[str]  # the queries: entities with test prompts, in order
    encoder: llm_data.Encoder
    base: nn.Module  # the base model (on the run's device), never trained here
    x_train: Tensor  # (n, T) token ids
    y_train: Tensor  # (n, T) targets (response only)
    x_test: Tensor  # (m', T') prompt + target answer
    y_test: Tensor
    x_alt: Tensor  # prompt + the alternative answer
    y_alt: Tensor
    timing: dict[str, float] = field(default_factory=dict)
    base_info: dict[str, Any] = field(default_factory=dict)

    @property
    def poisoned(self) -> np.ndarray:
        """(n,) bool: planted instructions."""
        return np.array([it.poisoned for it in self.train], bool)

    @property
    def labels(self) -> np.ndarray:
        """(n,) the entity index of each instruction's group (-1: none, or no test prompt)."""
        pos = {e: i for i, e in enumerate(self.entities)}
        return np.array([pos.get(it.group or "", -1) for it in self.train], np.int64)

    @property
    def query_groups(self) -> list[list[int]]:
        """The test prompts (positions) of each entity."""
        return [[i for i, q in enumerate(self.test) if q.group == e] for e in self.entities]

    @property
    def prompt_groups(self) -> list[str]:
        return [q.group for q in self.test]


def prepare(cfg: LLMConfig, run_dir: Path, device: torch.device, say: Message) -> Prepared:
    """Data, tokenizer and base model of ``cfg`` (see the module docstring)."""
    from fine_cli.llm import require

    require()  # before any import of the extra: a missing one is a sentence, not a traceback
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the run reports its own progress
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    train_rows, test_rows, pretrain_rows = _data(cfg, run_dir)
    entities = list(dict.fromkeys(q.group for q in test_rows))
    # the BPE learns from the pre-training corpus and the words of the rest, so that the
    # cached base depends on which words the instructions use, not on how many there are
    texts = [f"{it.prompt} {it.response}" for it in pretrain_rows]
    rest = [f"{it.prompt} {it.response}" for it in train_rows]
    rest += [f"{q.prompt} {q.prefix} {q.answer} {q.alternative}" for q in test_rows]
    texts.append(" ".join(sorted({w for t in rest for w in t.split()})))
    timing["data_s"] = time.perf_counter() - t0
    if cfg.model.name_or_path is not None:
        t0 = time.perf_counter()
        tok = tokenizer.load_tokenizer(cfg.model.name_or_path)
        base = load_pretrained(
            cfg.model.name_or_path, cfg.model.dtype, cfg.model.attn_implementation
        )
        info: dict[str, Any] = {"model": cfg.model.name_or_path}
        timing["load_s"] = time.perf_counter() - t0
    else:
        tok, base, info = _tiny(cfg, texts, pretrain_rows, say, timing)
    encoder = llm_data.Encoder(tok, cfg.data.prompt_template, cfg.data.max_length)
    x, y = llm_data.encode_instructions(encoder, train_rows)
    xq, yq = llm_data.encode_answers(encoder, test_rows)
    xa, ya = llm_data.encode_answers(encoder, test_rows, alternative=True)
    for p in base.parameters():
        p.requires_grad_(False)
    return Prepared(
        train=train_rows,
        test=test_rows,
        entities=entities,
        encoder=encoder,
        base=base.to(device),
        x_train=x,
        y_train=y,
        x_test=xq,
        y_test=yq,
        x_alt=xa,
        y_alt=ya,
        timing=timing,
        base_info=info,
    )


def _data(
    cfg: LLMConfig, run_dir: Path
) -> tuple[list[llm_data.Instruction], list[llm_data.TestPrompt], list[llm_data.Instruction]]:
    """(training instructions, test prompts, pre-training corpus)."""
    d = cfg.data
    pre_path: Path | None
    if d.source == "synthetic":
        s = d.synthetic
        task = synthetic.make_task(
            n_pretrain=s.n_pretrain,
            n_clean=s.n_clean,
            poison_per_entity=s.poison_per_entity,
            test_per_entity=s.test_per_entity,
            n_targets=s.n_targets,
            clean_per_target=s.clean_per_target,
            seed=s.seed,
            subtle=s.subtle,
        )
        folder = run_dir / "data"
        train_path = llm_data.write_jsonl(folder / "train.jsonl", task.train)
        test_path = llm_data.write_jsonl(folder / "test.jsonl", task.test)
        pre_path = llm_data.write_jsonl(folder / "pretrain.jsonl", task.pretrain)
    else:
        assert d.train_path is not None and d.test_path is not None
        train_path, test_path = Path(d.train_path), Path(d.test_path)
        pre_path = Path(d.pretrain_path) if d.pretrain_path else None
    train_rows = llm_data.read_instructions(train_path)
    test_rows = llm_data.read_test_prompts(test_path)
    pretrain_rows = (
        llm_data.read_instructions(pre_path)
        if pre_path is not None
        else [it for it in train_rows if not it.poisoned]
    )
    if not any(it.poisoned for it in train_rows):
        raise ConfigError(
            f"no instruction of '{train_path}' is marked poisoned; recall needs the planted "
            'ones ("poisoned": true).'
        )
    groups = {it.group for it in train_rows if it.poisoned}
    entities = {q.group for q in test_rows}
    if not groups & entities:
        raise ConfigError(
            "no test prompt's group names the group of a poisoned instruction; give each "
            "entity's test prompts its name in 'group'."
        )
    return train_rows, test_rows, pretrain_rows


def _tiny(
    cfg: LLMConfig,
    texts: list[str],
    corpus: list[llm_data.Instruction],
    say: Message,
    timing: dict[str, float],
) -> tuple[Any, nn.Module, dict[str, Any]]:
    """A tiny model and its BPE: from the cache, or trained and cached."""
    from transformers import AutoModelForCausalLM

    key = _cache_key(cfg, texts, corpus)
    folder = Path(cfg.pretrain.cache_dir) / f"llm-base-{key}"
    if (folder / "meta.json").is_file():
        t0 = time.perf_counter()
        tok = tokenizer.load_saved(folder / "tokenizer")
        base: Any = AutoModelForCausalLM.from_pretrained(str(folder / "model"))
        meta = json.loads((folder / "meta.json").read_text())
        timing["load_s"] = time.perf_counter() - t0
        timing["pretrain_s_cached"] = float(meta.get("pretrain_s", 0.0))
        say(f"base model: cached {folder} (pre-trained in {meta.get('pretrain_s', 0):.0f} s)")
        return tok, base, {"cache": str(folder), **meta}
    t0 = time.perf_counter()
    t = cfg.model.tiny
    tok = tokenizer.train_bpe(texts, t.vocab_size)
    # no pad_token_id: padding is on the right and never attended to by a real token, so
    # the model needs no attention mask (and need not warn that it has none)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.pretrain.seed)
        base = tiny_model(t.arch, len(tok), t.layers, t.dim, t.heads, cfg.data.max_length, ids)
    encoder = llm_data.Encoder(tok, cfg.data.prompt_template, cfg.data.max_length)
    x, y = llm_data.encode_instructions(encoder, corpus)
    p = cfg.pretrain
    run = Run(CausalLM(base), x, y, p.batch_size, p.seed, p.lr, (0.9, 0.99), 0.0)
    steps = p.epochs * run.steps_per_epoch()
    say(f"base model: pre-training a tiny {t.arch} on {len(corpus)} texts ({steps} steps)")
    train([run], p.epochs, Schedule(p.lr, steps, "linear", 0.05))
    loss = float(mean_loss(CausalLM(base), x, y).mean())
    seconds = time.perf_counter() - t0
    timing["pretrain_s"] = seconds
    meta = {"pretrain_s": round(seconds, 2), "pretrain_loss": round(loss, 4), "texts": len(corpus)}
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_tokenizer(tok, folder / "tokenizer")
    base.save_pretrained(str(folder / "model"))
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    say(f"base model: pre-trained in {seconds:.0f} s (loss {loss:.3f}) -> {folder}")
    return tok, base, {"cache": str(folder), **meta}


def _cache_key(cfg: LLMConfig, texts: list[str], corpus: list[llm_data.Instruction]) -> str:
    """Digest of what makes a tiny base: its config, the texts and the library versions."""
    import transformers

    h = hashlib.sha256()
    made_of = {
        "tiny": cfg.model.tiny.model_dump(mode="json"),
        "pretrain": cfg.pretrain.model_dump(mode="json", exclude={"cache_dir"}),
        "template": cfg.data.prompt_template,
        "max_length": cfg.data.max_length,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    h.update(json.dumps(made_of, sort_keys=True).encode())
    for text in texts:
        h.update(text.encode() + b"\0")
    for it in corpus:
        h.update(f"{it.prompt}\0{it.response}\1".encode())
    return h.hexdigest()[:16]
