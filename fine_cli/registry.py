"""One registry of influence methods: the config's choices, the CLI's choices and help,
feature collection and the report's cost accounting all derive from it.

A method is one :class:`Method` object, registered by the module that defines it:

    register(Method(name="my-method", description="...", score=my_score))

``score(view, queries, options)`` maps a :class:`~fine_cli.estimators.samples.SignalView`
(and a slice of the test points, ``None`` in self mode) to a ``(q, G)`` array of scores,
larger = more influential. The built-in methods live in ``fine_cli/estimators/`` and are
found there by name; users' methods are loaded from the modules or ``.py`` files listed in
the environment variable ``FINE_PLUGINS`` (comma-separated), which run as code, like an
import.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fine_cli.errors import ConfigError

if TYPE_CHECKING:
    from fine_cli.estimators.samples import SignalView

# score(view, queries, options) -> (q, G) scores; options: fine_cli.stages.estimate's.
ScoreFn = Callable[["SignalView", "slice | None", Any], np.ndarray]
# full(view, options) -> {"scores": (q, G), optional "stderr"/"pvalue": (q, G)}
FullFn = Callable[["SignalView", Any], dict[str, np.ndarray]]
MetaFn = Callable[["SignalView", Any], dict[str, Any]]
# Which trained models and collected parts a method's cost includes (report's time table):
# "both": main + auxiliary training and collection (f-INE); "main": the main model's half
# of both; "main-train": the main model's training only (loss, margin); "ensemble": every
# model of TRAK's ensemble and its projected features; "main-features": the main model's
# training, its projected features and curvature (influence functions); "crossval": the K
# fold models of cross-validation (confident learning), nothing of the main run.
Cost = Literal["both", "main", "main-train", "ensemble", "main-features", "crossval"]
PLUGINS_ENV = "FINE_PLUGINS"


@dataclass(frozen=True)
class Method:
    """An influence method: what it is called, what it needs, how it scores."""

    name: str
    description: str  # one line, shown in --help and reports
    score: ScoreFn | None = None  # per query chunk; or give `full`
    full: FullFn | None = None  # all queries at once, with extra arrays (f-INE)
    features: bool = False  # needs projected gradients (train-collect collects them)
    curvature: bool = False  # needs the sketched Gauss-Newton matrix too
    crossval: bool = False  # needs out-of-fold probabilities (train-collect trains K folds)
    meta: MetaFn | None = None  # what made a score, for the influence file's metadata
    cost: Cost = "main"
    order: int = 100  # position in tables and help (built-ins first)

    def __post_init__(self) -> None:
        if (self.score is None) == (self.full is None):
            raise ValueError(f"method '{self.name}': give exactly one of score= or full=.")
        if not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"method name {self.name!r}: give a non-empty name without spaces.")


_METHODS: dict[str, Method] = {}
_loaded = False


def register(method: Method) -> Method:
    """Add ``method`` to the registry (a name registered twice: the later one wins)."""
    _METHODS[method.name] = method
    return method


def _discover() -> None:
    """Import the built-in method modules and the users' plugins, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import fine_cli.estimators as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")
    for entry in (e.strip() for e in os.environ.get(PLUGINS_ENV, "").split(",")):
        if entry:
            _load_plugin(entry)


def _load_plugin(entry: str) -> None:
    try:
        if entry.endswith(".py"):
            path = Path(entry)
            if not path.is_file():
                raise ConfigError(
                    f"{PLUGINS_ENV} names '{entry}', which is not a file; give a module name "
                    "or the path of a .py file."
                )
            spec = importlib.util.spec_from_file_location(f"fine_plugin_{path.stem}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(entry)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{PLUGINS_ENV} entry '{entry}' failed to load ({type(exc).__name__}: {exc}); "
            "fix it or remove it from the variable."
        ) from None


def methods() -> dict[str, Method]:
    """Every registered method by name, built-ins first."""
    _discover()
    return dict(sorted(_METHODS.items(), key=lambda kv: (kv[1].order, kv[0])))


def names() -> list[str]:
    return list(methods())


def get(name: str) -> Method:
    """The method called ``name``; ConfigError naming the choices otherwise."""
    found = methods().get(name)
    if found is None:
        raise ConfigError(f"unknown method '{name}'; choose one of {', '.join(names())}.")
    return found


def feature_methods() -> set[str]:
    """Names of the methods whose scores need projected features."""
    return {m.name for m in methods().values() if m.features}


def help_text() -> str:
    """One line per method, for --help."""
    return "; ".join(f"{m.name}: {m.description}" for m in methods().values())


__all__ = ["Method", "feature_methods", "get", "help_text", "methods", "names", "register"]
