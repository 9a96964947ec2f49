"""``build_model``: a built-in architecture (``config.ARCHS``) or a user's factory
(``fine_cli.models.user``), seeded, checked against the data."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fine_cli.config import ModelConfig
from fine_cli.errors import ConfigError
from fine_cli.models.mlp import mlp
from fine_cli.models.resnet import resnet18_cifar
from fine_cli.models.small_cnn import small_cnn
from fine_cli.models.user import build_user_model


def _image_channels(arch: str, input_shape: tuple[int, ...]) -> int:
    if len(input_shape) != 3:
        raise ConfigError(
            f"model.arch={arch} needs image inputs of shape (channels, height, width), but the "
            f"dataset's inputs have shape {input_shape}; use model.arch=mlp for this dataset."
        )
    return input_shape[0]


def _check_widths(key: str, widths: list[int], allow_empty: bool) -> None:
    if not allow_empty and not widths:
        raise ConfigError(f"{key} is empty; give at least one width, e.g. [8, 16].")
    bad = [w for w in widths if w < 1]
    if bad:
        raise ConfigError(f"{key} must hold positive widths; got {widths}.")


def _build_mlp(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    _check_widths("model.hidden", cfg.hidden, allow_empty=True)
    return mlp(input_shape, cfg.hidden, n_classes)


def _build_small_cnn(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    _check_widths("model.channels", cfg.channels, allow_empty=False)
    return small_cnn(_image_channels("small_cnn", input_shape), cfg.channels, n_classes)


def _build_resnet18(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    return resnet18_cifar(n_classes, in_channels=_image_channels("resnet18_cifar", input_shape))


MODELS: dict[str, Callable[[ModelConfig, tuple[int, ...], int], nn.Module]] = {
    "mlp": _build_mlp,
    "small_cnn": _build_small_cnn,
    "resnet18_cifar": _build_resnet18,
}


def _check_forward(
    model: nn.Module, arch: str, input_shape: tuple[int, ...], n_classes: int
) -> None:
    """One eval-mode forward pass on zeros (leaves BatchNorm statistics untouched)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape))
    except Exception as err:  # a user's model can raise anything on a wrong shape
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"model.arch={arch} cannot take inputs of shape {input_shape} ({detail}); "
            "choose another architecture or dataset."
        ) from err
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(
            f"model.arch={arch} returns a {type(out).__name__} in eval mode, not a tensor of "
            "logits; make its forward return the logits alone."
        )
    if tuple(out.shape) != (1, n_classes):
        raise ConfigError(
            f"model.arch={arch} gives outputs of shape {tuple(out.shape[1:])} for inputs of "
            f"shape {input_shape}, not ({n_classes},); choose another architecture."
        )


def build_model(
    cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int, seed: int
) -> nn.Module:
    """A freshly initialised ``cfg.arch`` for (B, *input_shape) inputs -> (B, n_classes) logits.

    ``cfg.arch`` is a built-in name or a factory (``fine_cli.models.user``), built the same way:
    the initial weights depend on ``seed`` alone (for factories: as far as they draw from
    torch's RNG); the global torch RNG is left as it was.
    """
    if n_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes; the dataset has {n_classes}.")
    input_shape = tuple(int(d) for d in input_shape)
    if not input_shape or min(input_shape) < 1:
        raise ConfigError(f"input shape {input_shape} has an empty dimension; check the dataset.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.arch in MODELS:
            model = MODELS[cfg.arch](cfg, input_shape, n_classes)
        else:
            model = build_user_model(cfg.arch, input_shape, n_classes, cfg.kwargs)
    _check_forward(model, cfg.arch, input_shape, n_classes)
    return model
