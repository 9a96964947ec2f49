"""fine: which training examples matter, reliably under training randomness (f-INE).

The public API (docs/API.md); names are imported on first use, so ``import fine_cli``
stays light:

- stages on typed results: :func:`train_collect`, :func:`estimate`, :func:`rank`,
  :func:`evaluate_recall`; :func:`save` and :func:`load` for files; :func:`load_config`;
- results: :class:`Signals`, :class:`Influence`, :class:`Ranking`, :class:`Truth`;
- your own training loop: :class:`Collector`, tasks :class:`ClassificationTask`,
  :class:`SequenceTask` (or any :class:`Task`), and the helpers of the built-in loop;
- methods: :class:`Method`, :func:`register_method`, :func:`methods`;
- errors: :class:`FineError` and its subclasses.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> (module, attribute)
_EXPORTS = {
    "train_collect": ("fine_cli.api", "train_collect"),
    "estimate": ("fine_cli.api", "estimate"),
    "rank": ("fine_cli.api", "rank"),
    "evaluate_recall": ("fine_cli.api", "evaluate_recall"),
    "save": ("fine_cli.api", "save"),
    "load": ("fine_cli.api", "load"),
    "load_config": ("fine_cli.api", "load_config"),
    "Config": ("fine_cli.config", "Config"),
    "EstimateOptions": ("fine_cli.estimators.options", "EstimateOptions"),
    "Signals": ("fine_cli.results", "Signals"),
    "Influence": ("fine_cli.results", "Influence"),
    "Ranking": ("fine_cli.results", "Ranking"),
    "Truth": ("fine_cli.results", "Truth"),
    "Collector": ("fine_cli.collector", "Collector"),
    "Task": ("fine_cli.tasks", "Task"),
    "ClassificationTask": ("fine_cli.tasks", "ClassificationTask"),
    "SequenceTask": ("fine_cli.tasks", "SequenceTask"),
    "TensorPairs": ("fine_cli.batches", "TensorPairs"),
    "ShuffledBatches": ("fine_cli.batches", "ShuffledBatches"),
    "train_epoch": ("fine_cli.training", "train_epoch"),
    "make_optimizer": ("fine_cli.training", "make_optimizer"),
    "derive_seeds": ("fine_cli.training", "derive_seeds"),
    "load_data": ("fine_cli.data", "load_data"),
    "build_model": ("fine_cli.models", "build_model"),
    "Method": ("fine_cli.registry", "Method"),
    "register_method": ("fine_cli.registry", "register"),
    "methods": ("fine_cli.registry", "methods"),
    "FineError": ("fine_cli.errors", "FineError"),
    "ConfigError": ("fine_cli.errors", "ConfigError"),
    "InputFileError": ("fine_cli.errors", "InputFileError"),
    "RunError": ("fine_cli.errors", "RunError"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fine_cli' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
