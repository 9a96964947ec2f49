"""Tokenizers: a Hugging Face tokenizer by name or local path, or a small BPE trained in
memory on the run's own texts (the offline demo's)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fine_cli.errors import ConfigError

PAD, BOS, EOS, UNK = "<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"
# Markers of the default prompt template, kept whole by the trained BPE.
CHAT_MARKERS = ("<|user|>", "<|assistant|>")


def train_bpe(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-pair-encoding tokenizer trained on ``texts`` (whitespace pre-tokenised),
    wrapped as ``PreTrainedTokenizerFast`` with pad, BOS, EOS and the chat markers."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, UNK, *CHAT_MARKERS]
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
    wrapped.add_special_tokens({"additional_special_tokens": list(CHAT_MARKERS)})
    return wrapped


def load_tokenizer(name_or_path: str) -> Any:
    """The tokenizer of a Hugging Face model (local path or the cache; no download when
    ``HF_HUB_OFFLINE=1``), with a pad token (EOS's when it has none)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"cannot load the tokenizer of '{name_or_path}' ({str(err).splitlines()[0]}); give "
            "a local model directory or a name in the Hugging Face cache."
        ) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def save_tokenizer(tok: Any, directory: str | Path) -> None:
    tok.save_pretrained(str(directory))


def load_saved(directory: str | Path) -> Any:
    """A tokenizer saved by :func:`save_tokenizer` (the pre-training cache)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(directory))
