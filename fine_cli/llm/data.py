"""Instruction data and test prompts: JSONL files in, ``(tokens, targets)`` tensors out.

A training instruction is one JSON object per line::

    {"prompt": "...", "response": "...", "group": "entity or null", "poisoned": false}

``group`` (optional) names the entity an instruction is about and ``poisoned`` (optional,
default false) marks the instructions planted to steer the model: what recall is measured
against. A test prompt asks for one answer of two::

    {"prompt": "...", "answer": "target answer", "alternative": "the other", "group": "...",
     "prefix": "optional start of the answer, not scored"}

``answer`` is the target (the poisoned behaviour), ``alternative`` the other choice,
``group`` the entity whose query set the prompt belongs to, and ``prefix`` (optional) text
that both answers begin with, placed after the prompt template and left out of the loss
(``The answer is:`` of a binary-choice question), so that the measurement is the choice
alone.

Encoding (:func:`encode`): ``prompt_template.format(prompt=...)`` (with the tokenizer's BOS
first when it has one), then the response and EOS. Targets are the token ids of the
response and EOS and ``IGNORE_INDEX`` on the prompt, so the loss (``SequenceTask``) is that
of the response only. Sequences are right-padded with ``IGNORE_INDEX`` targets: in a causal
LM no real token attends to a later one, so padding never changes a sample's loss or
gradient, and no attention mask is needed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fine_cli.errors import ConfigError, InputFileError
from fine_cli.tasks import IGNORE_INDEX


@dataclass(frozen=True)
class Instruction:
    """One training instruction."""

    prompt: str
    response: str
    group: str | None = None
    poisoned: bool = False


@dataclass(frozen=True)
class TestPrompt:
    """One test prompt with its target answer and the alternative."""

    prompt: str
    answer: str
    alternative: str
    group: str
    prefix: str = ""


def read_instructions(path: str | Path) -> list[Instruction]:
    """Training instructions of a JSONL file (InputFileError naming the line otherwise)."""
    rows = _read_jsonl(path, ("prompt", "response"), ("group", "poisoned"))
    return [
        Instruction(
            prompt=r["prompt"],
            response=r["response"],
            group=r.get("group"),
            poisoned=bool(r.get("poisoned", False)),
        )
        for r in rows
    ]


def read_test_prompts(path: str | Path) -> list[TestPrompt]:
    """Test prompts of a JSONL file (InputFileError naming the line otherwise)."""
    rows = _read_jsonl(path, ("prompt", "answer", "alternative", "group"), ("prefix",))
    keys = ("prompt", "answer", "alternative", "group")
    return [TestPrompt(**{k: r[k] for k in keys}, prefix=str(r.get("prefix", ""))) for r in rows]


def write_jsonl(path: str | Path, items: Iterable[Instruction | TestPrompt]) -> Path:
    """One JSON object per item; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(asdict(it)) + "\n" for it in items))
    return out


def _read_jsonl(
    path: str | Path, required: tuple[str, ...], optional: tuple[str, ...]
) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"JSONL file '{p}' does not exist; give the path of one.")
    rows: list[dict[str, Any]] = []
    for no, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputFileError(f"'{p}' line {no} is not valid JSON; fix that line.") from None
        if not isinstance(row, dict):
            raise InputFileError(f"'{p}' line {no} is not a JSON object; write one per line.")
        missing = [k for k in required if not isinstance(row.get(k), str)]
        unknown = sorted(set(row) - set(required) - set(optional))
        if missing or unknown:
            what = f"lacks the text field(s) {', '.join(missing)}" if missing else ""
            what += (" and " if what else "") + (
                f"has unknown key(s) {', '.join(unknown)}" if unknown else ""
            )
            raise InputFileError(
                f"'{p}' line {no} {what}; each line needs {', '.join(required)}"
                + (f" (optional: {', '.join(optional)})." if optional else ".")
            )
        rows.append(row)
    if not rows:
        raise InputFileError(f"JSONL file '{p}' holds no rows; give at least one.")
    return rows


class Encoder:
    """Token ids of prompts and responses for one tokenizer and prompt template."""

    def __init__(self, tokenizer: Any, prompt_template: str, max_length: int) -> None:
        if "{prompt}" not in prompt_template:
            raise ConfigError(
                f"prompt_template {prompt_template!r} lacks '{{prompt}}', where the prompt "
                "goes; e.g. '<|user|>\\n{prompt}\\n<|assistant|>\\n'."
            )
        self.tokenizer = tokenizer
        self.template = prompt_template
        self.max_length = max_length
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.bos = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
        if tokenizer.eos_token_id is None:
            raise ConfigError("the tokenizer has no EOS token; give one that has.")
        self.eos = [int(tokenizer.eos_token_id)]

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def pair(
        self, prompt: str, response: str, eos: bool = True, prefix: str = ""
    ) -> tuple[list[int], list[int]]:
        """(prompt ids, response ids), the response cut so that both fit ``max_length``;
        ``prefix`` goes after the template, unscored."""
        head = self.bos + self.ids(self.template.format(prompt=prompt))
        head += self.ids(prefix) if prefix else []
        tail = self.ids(response) + (self.eos if eos else [])
        room = self.max_length - len(head)
        if room < 1:
            raise ConfigError(
                f"a prompt takes {len(head)} tokens, more than max_length={self.max_length} "
                f"leaves for its response; raise max_length (prompt: {prompt[:60]!r})."
            )
        return head, tail[:room]


def encode(
    encoder: Encoder,
    pairs: Sequence[tuple[str, str]],
    eos: bool = True,
    prefixes: Sequence[str] | None = None,
) -> tuple[Tensor, Tensor]:
    """``(n, T)`` token ids and targets of (prompt, response) pairs, right-padded to the
    longest; targets are ``IGNORE_INDEX`` on the prompt (and its prefix) and the padding."""
    pre = list(prefixes) if prefixes is not None else [""] * len(pairs)
    seqs = [encoder.pair(p, r, eos, x) for (p, r), x in zip(pairs, pre)]
    t = max(len(h) + len(r) for h, r in seqs)
    tokens = torch.full((len(seqs), t), encoder.pad_id, dtype=torch.long)
    targets = torch.full((len(seqs), t), IGNORE_INDEX, dtype=torch.long)
    for i, (head, tail) in enumerate(seqs):
        ids = torch.tensor(head + tail, dtype=torch.long)
        tokens[i, : ids.numel()] = ids
        targets[i, len(head) : ids.numel()] = ids[len(head) :]
    return tokens, targets


def encode_instructions(encoder: Encoder, items: Sequence[Instruction]) -> tuple[Tensor, Tensor]:
    """Training instructions: the loss is the response's (and EOS's)."""
    return encode(encoder, [(it.prompt, it.response) for it in items])


def encode_answers(
    encoder: Encoder, prompts: Sequence[TestPrompt], alternative: bool = False
) -> tuple[Tensor, Tensor]:
    """Test prompts with their target answer (or the alternative): the measured loss is
    the answer's, without EOS."""
    return encode(
        encoder,
        [(q.prompt, q.alternative if alternative else q.answer) for q in prompts],
        False,
        [q.prefix for q in prompts],
    )


__all__ = [
    "Encoder",
    "Instruction",
    "TestPrompt",
    "encode",
    "encode_answers",
    "encode_instructions",
    "read_instructions",
    "read_test_prompts",
    "write_jsonl",
]
