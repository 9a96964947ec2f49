"""Models the user brings: ``model.arch`` as a factory or a torchvision builder.

Three forms besides the built-in names (``config.ARCHS``):

- ``package.module:factory`` -- imported with ``importlib.import_module``;
- ``path/to/model.py:factory`` -- the file is executed as a module (relative paths from the
  current directory). Like an import, this runs the file's code: use trusted configs only;
- ``torchvision:<name>`` -- ``torchvision.models.get_model(name, weights=None,
  num_classes=n_classes, **model.kwargs)``, never pretrained weights (no downloads).

A factory is called as ``factory(input_shape, n_classes, **model.kwargs)`` and must return
an ``nn.Module`` mapping (B, *input_shape) to (B, n_classes) logits.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from fine_cli.config import ARCHS
from fine_cli.errors import ConfigError

TORCHVISION_PREFIX = "torchvision"
FORMS = "package.module:factory, path/to/model.py:factory or torchvision:<name>"


def _first_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def split_arch(arch: str) -> tuple[str, str] | None:
    """'target:attr' -> ('target', 'attr'); None for anything else (e.g. a built-in name)."""
    target, sep, attr = arch.rpartition(":")
    if not sep or not target or not attr:
        return None
    return target, attr


def torchvision_models() -> list[str]:
    """Names of torchvision's classification model builders."""
    import torchvision.models

    return list(torchvision.models.list_models(module=torchvision.models))


def check_arch(arch: str) -> None:
    """Raise ValueError (for pydantic) unless ``arch`` is a built-in name or one of FORMS.

    Only the form is checked here (and torchvision names, which need no user code): files
    and modules are opened when the model is built, from the directory of that run.
    """
    if arch in ARCHS:
        return
    parts = split_arch(arch)
    if parts is None:
        raise ValueError(
            f"model.arch={arch!r} is neither a built-in ({', '.join(ARCHS)}) nor of "
            f"the form {FORMS}; fix its spelling"
        )
    target, attr = parts
    if target == TORCHVISION_PREFIX:
        if attr not in torchvision_models():
            raise ValueError(
                f"model.arch={arch!r}: torchvision has no classification model {attr!r}; "
                "choose one of torchvision.models.list_models(), e.g. torchvision:resnet18"
            )
        return
    if not all(p.isidentifier() for p in attr.split(".")):
        raise ValueError(
            f"model.arch={arch!r}: {attr!r} is not a Python name; give the factory after "
            f"the last ':', as in {FORMS}"
        )
    if not target.endswith(".py") and not all(p.isidentifier() for p in target.split(".")):
        raise ValueError(
            f"model.arch={arch!r}: {target!r} is neither a module path (package.module) nor "
            "a .py file; fix the part before the last ':'"
        )


def _import_module(arch: str, module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except Exception as err:  # a user's module can raise anything while it is imported
        raise ConfigError(
            f"model.arch={arch!r}: module {module!r} does not import ({_first_line(err)}); "
            "check its name and that it is installed or on PYTHONPATH."
        ) from err


def _load_file(arch: str, file: str) -> ModuleType:
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(
            f"model.arch={arch!r}: model file '{path}' does not exist; fix the path "
            "(relative paths start from the current directory)."
        )
    # A name unique per file, registered in sys.modules so that e.g. dataclasses work.
    name = "fine_user_model_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"model.arch={arch!r}: '{path}' cannot be loaded as Python; use a .py.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the file's own code can raise anything
        del sys.modules[name]
        raise ConfigError(
            f"model.arch={arch!r}: running model file '{path}' failed ({_first_line(err)}); "
            "fix the file."
        ) from err
    return module


def _attribute(arch: str, module: ModuleType, attr: str, where: str) -> Callable[..., Any]:
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(
                f"model.arch={arch!r}: {where} has no attribute {attr!r}; fix the name after "
                "the last ':'."
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(
            f"model.arch={arch!r}: {where}.{attr} is a {type(obj).__name__}, not a callable "
            "factory; name a function or class."
        )
    return obj


def _torchvision_factory(arch: str, name: str) -> Callable[..., nn.Module]:
    if name not in torchvision_models():
        raise ConfigError(
            f"model.arch={arch!r}: torchvision has no classification model {name!r}; choose "
            "one of torchvision.models.list_models(), e.g. torchvision:resnet18."
        )

    def build(input_shape: tuple[int, ...], n_classes: int, **kwargs: Any) -> nn.Module:
        import torchvision.models

        # weights=None: pretrained weights would need a download and a 1000-class head.
        return torchvision.models.get_model(
            name, **{"weights": None, "num_classes": n_classes, **kwargs}
        )

    return build


def resolve_factory(arch: str) -> Callable[..., nn.Module]:
    """The callable ``factory(input_shape, n_classes, **kwargs)`` that ``arch`` names."""
    parts = split_arch(arch)
    if parts is None:
        raise ConfigError(f"model.arch={arch!r} is not of the form {FORMS}; fix its spelling.")
    target, attr = parts
    if target == TORCHVISION_PREFIX:
        return _torchvision_factory(arch, attr)
    if target.endswith(".py"):
        return _attribute(arch, _load_file(arch, target), attr, f"file '{target}'")
    return _attribute(arch, _import_module(arch, target), attr, f"module {target!r}")


def build_user_model(
    arch: str, input_shape: tuple[int, ...], n_classes: int, kwargs: dict[str, Any]
) -> nn.Module:
    """Call the factory; every failure is a ConfigError naming ``arch``. Not seeded here."""
    factory = resolve_factory(arch)
    try:
        model = factory(input_shape, n_classes, **kwargs)
    except Exception as err:  # the user's factory can raise anything
        raise ConfigError(
            f"model.arch={arch!r}: the factory raised {_first_line(err)} for input shape "
            f"{input_shape}, {n_classes} classes and model.kwargs={kwargs}; fix the factory "
            "or model.kwargs."
        ) from err
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model.arch={arch!r}: the factory returned a {type(model).__name__}, not a "
            "torch.nn.Module; return the model itself."
        )
    return model
