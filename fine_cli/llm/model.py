"""Causal language models and their LoRA adapters.

A base model is a Hugging Face causal LM loaded by name or local path, or a tiny GPT-2- or
Llama-style model built from a config (the offline demo's). :func:`add_lora` wraps a copy
with peft's LoRA so that only the adapters' ``A`` and ``B`` are trainable: two
``nn.Linear`` maps per target module, which the gradient engine covers with its exact
outer-product formula, the sequence positions being the formula's positions.

:class:`CausalLM` is what training and collection call: ``tokens (n, T) -> logits (n, T, V)``
in float32, without an attention mask (right padding; see :mod:`.data`).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from fine_cli.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class CausalLM(nn.Module):
    """``tokens (n, T) -> logits (n, T, V)`` float32 of a Hugging Face causal LM."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor) -> Tensor:
        out = self.model(input_ids=tokens, use_cache=False)
        return out.logits.float()


def tiny_model(
    arch: str,
    vocab_size: int,
    layers: int,
    dim: int,
    heads: int,
    max_length: int,
    ids: dict[str, Any] | None = None,
) -> nn.Module:
    """A randomly initialised GPT-2 (ReLU MLP: cheaper on a CPU than GELU) or Llama model;
    ``ids``: special token ids of the config (``bos_token_id``, ``eos_token_id``)."""
    ids = ids or {}
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if dim % heads:
        raise ConfigError(f"llm.model.tiny: dim={dim} must be a multiple of heads={heads}.")
    if arch == "gpt2":
        cfg: Any = GPT2Config(
            vocab_size=vocab_size,
            n_positions=max_length,
            n_embd=dim,
            n_layer=layers,
            n_head=heads,
            activation_function="relu",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **ids,
        )
        return GPT2LMHeadModel(cfg)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_length,
        **ids,
    )
    return LlamaForCausalLM(cfg)


def load_pretrained(name_or_path: str, dtype: str, attn_implementation: str | None) -> nn.Module:
    """A Hugging Face causal LM from a local path or the cache (no download offline)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"cannot load the model '{name_or_path}' ({str(err).splitlines()[0]}); give a local "
            "model directory or a name in the Hugging Face cache (HF_HUB_OFFLINE=1 forbids "
            "downloads)."
        ) from None


def add_lora(
    base: nn.Module,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: list[str],
    seed: int,
) -> CausalLM:
    """A copy of ``base`` with LoRA adapters on ``target_modules``, the only trainable
    parameters; ``seed`` draws the adapters' initial ``A`` (``B`` starts at zero)."""
    from peft import LoraConfig, get_peft_model

    model = copy.deepcopy(base)
    is_gpt2 = getattr(getattr(model, "config", None), "model_type", "") == "gpt2"
    lora = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        fan_in_fan_out=is_gpt2,  # GPT-2's Conv1D stores weights as (in, out)
        bias="none",
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # peft calls a transformers API deprecated in v5; nothing for a user to change
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        torch.manual_seed(seed)
        try:
            peft_model = get_peft_model(model, lora)
        except ValueError as err:
            raise ConfigError(
                f"llm.lora.target_modules={target_modules}: {str(err).splitlines()[0]}; name "
                "modules of the model (GPT-2: c_attn, c_proj; Llama: q_proj, k_proj, v_proj, "
                "o_proj)."
            ) from None
    return CausalLM(peft_model)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
