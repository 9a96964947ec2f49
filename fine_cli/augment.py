"""Training-time data augmentation from ``train.augment``: torchvision v2 transforms.

A spec is a transform name (``RandomHorizontalFlip``) or a one-key mapping from a name to
its keyword arguments (``{RandomCrop: {size: 28, padding: 2}}``); names are classes of
``torchvision.transforms.v2``.

The transforms see the normalised float tensors of ``fine_cli.data``, one sample
(C, H, W) at a time. Geometric transforms (flips, crops, rotations, affine, erasing) suit
them; colour transforms (ColorJitter, ...) assume pixels in [0, 1] and clamp, so they
distort normalised images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fine_cli.errors import ConfigError

# Seeds drawn from the caller's generator; below 2**62 so that any int64 holds them.
_SEED_BOUND = 2**62


def _first_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _parse_spec(spec: Any) -> tuple[str, dict[str, Any]]:
    """'Name' or {'Name': {kwargs}} -> ('Name', kwargs)."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and len(spec) == 1:
        name, kwargs = next(iter(spec.items()))
        if kwargs is None:
            kwargs = {}
        if isinstance(name, str) and isinstance(kwargs, Mapping):
            return name, dict(kwargs)
    raise ConfigError(
        f"train.augment entry {spec!r} is neither a transform name nor a one-key mapping "
        "name -> arguments; write e.g. RandomHorizontalFlip or {RandomCrop: {size: 28}}."
    )


def _make_transform(name: str, kwargs: dict[str, Any]) -> nn.Module:
    from torchvision.transforms import v2

    cls = getattr(v2, name, None) if not name.startswith("_") else None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(
            f"train.augment names {name!r}, which is not a transform of "
            "torchvision.transforms.v2; check its spelling, e.g. RandomHorizontalFlip."
        )
    try:
        return cls(**kwargs)
    except Exception as err:  # torchvision raises TypeError / ValueError for bad arguments
        raise ConfigError(
            f"train.augment {name} does not accept the arguments {kwargs} "
            f"({_first_line(err)}); fix them as torchvision documents."
        ) from err


@dataclass(frozen=True)
class Augment:
    """Random transforms applied to each sample of a batch independently."""

    names: tuple[str, ...]
    transforms: tuple[nn.Module, ...]

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """(b, *sample_shape) -> (b, *sample_shape), a function of ``x`` and ``gen`` alone.

        One seed is drawn from ``gen`` per batch (advancing it); the transforms run under a
        forked global RNG seeded with it, so the global RNG is left as it was.
        """
        seed = int(torch.randint(_SEED_BOUND, (1,), generator=gen, device=gen.device).item())
        # Every initialised CUDA device is forked too: manual_seed reseeds all of them.
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            return torch.stack([self._one(sample) for sample in x])

    def _one(self, sample: torch.Tensor) -> torch.Tensor:
        out = sample
        for name, transform in zip(self.names, self.transforms):
            try:
                out = transform(out)
            except Exception as err:  # any transform error means the input does not suit it
                raise ConfigError(
                    f"train.augment {name} failed on an input of shape "
                    f"{tuple(sample.shape)} ({_first_line(err)}); augmentations need image "
                    "inputs (channels, height, width), so remove it for this dataset."
                ) from err
        if out.shape != sample.shape:
            raise ConfigError(
                f"train.augment changes the input shape {tuple(sample.shape)} to "
                f"{tuple(out.shape)}; give crops and resizes the input's own size."
            )
        return out


def build_augment(specs: Sequence[Any]) -> Augment | None:
    """The transforms ``specs`` names (``train.augment``); None when there are none.

    ConfigError for an unknown name, a malformed entry or arguments the transform refuses.
    """
    parsed = [_parse_spec(spec) for spec in specs]
    if not parsed:
        return None
    transforms = tuple(_make_transform(name, kwargs) for name, kwargs in parsed)
    return Augment(names=tuple(name for name, _ in parsed), transforms=transforms)
