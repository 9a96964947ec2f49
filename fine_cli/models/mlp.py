"""Fully connected classifier; the paper's MNIST model is 784-500-10."""

from __future__ import annotations

import math

from torch import nn


def mlp(input_shape: tuple[int, ...], hidden: list[int], n_classes: int) -> nn.Sequential:
    """Flatten, then Linear + ReLU per hidden width, then a Linear head.

    (B, *input_shape) -> (B, n_classes).
    """
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)
