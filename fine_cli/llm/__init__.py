"""Language models: instruction data, LoRA fine-tuning and the paper's poisoning experiment
(Sections 4.3-4.5; docs/LLM.md).

- :mod:`.data`: instructions and test prompts as JSONL, encoded for :class:`SequenceTask`;
- :mod:`.synthetic`: the offline demo's poisoning task (a synthetic instruction corpus);
- :mod:`.tokenizer`, :mod:`.model`: a tokenizer and a causal LM by name or local path, or
  tiny ones built here; LoRA through peft;
- :mod:`.train`: pre-training of tiny models (cached), LoRA fine-tuning side by side with
  evenly spaced checkpoints;
- :mod:`.collect`: the signals of LoRA models from one capture per chunk (exact inner
  products, LESS's Adam-preconditioned gradients, count sketches);
- :mod:`.steering`: the rate of target answers (the poison's effect);
- :mod:`.experiment`, :mod:`.report`: ``fine run`` on an ``llm:`` config.

Needs the optional extra (``pip install -e ".[llm]"``: transformers, peft, tokenizers).
Nothing outside this package imports them, so the core install works without.
"""

from __future__ import annotations

import importlib.util

from fine_cli.errors import ConfigError

EXTRA_PACKAGES = ("transformers", "peft", "tokenizers")


def require() -> None:
    """ConfigError, with the install command, when the llm extra is missing."""
    missing = [p for p in EXTRA_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(
            f"language-model runs need {', '.join(missing)}, which are not installed; "
            'install the extra with pip install -e ".[llm]" (or make install).'
        )
