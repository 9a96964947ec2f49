"""A few-layer CNN for tests and quick demos on images."""

from __future__ import annotations

from torch import nn


def small_cnn(in_channels: int, channels: list[int], n_classes: int) -> nn.Sequential:
    """Per width: 3x3 stride-2 conv + BatchNorm + ReLU; global average pool; Linear head.

    Input: (B, in_channels, H, W) with any H, W >= 1 (each block halves them, rounding up).
    """
    layers: list[nn.Module] = []
    width = in_channels
    for c in channels:
        # No conv bias: BatchNorm's shift makes it redundant.
        layers += [
            nn.Conv2d(width, c, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
        ]
        width = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, n_classes)]
    return nn.Sequential(*layers)
