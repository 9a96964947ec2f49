"""ResNet-18 in its CIFAR form: 3x3 stride-1 stem, no max-pool (He et al. 2016; the layout
of the widely used CIFAR ResNet-18, 11,173,962 parameters for 10 classes).

Every ReLU is its own non-in-place module and the residual sum allocates a new tensor, so
forward hooks on any layer see that layer's own input and output.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv3x3(c_in: int, c_out: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm; identity or 1x1-conv shortcut. (B, c_in, H, W) ->
    (B, c_out, H / stride, W / stride)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = _conv3x3(c_out, c_out, 1)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out),
            )
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """Stem conv, four stages of BasicBlocks (widths 64..512, strides 1, 2, 2, 2), average
    pool, Linear head. (B, in_channels, H, W) -> (B, n_classes)."""

    def __init__(self, blocks: tuple[int, ...], n_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, 64, 1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=False)
        stages: list[nn.Module] = []
        c_in = 64
        for i, n_blocks in enumerate(blocks):
            c_out = 64 * 2**i
            stride = 1 if i == 0 else 2
            layers = [
                BasicBlock(c_in if j == 0 else c_out, c_out, stride if j == 0 else 1)
                for j in range(n_blocks)
            ]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(self.flatten(self.pool(out)))


def resnet18_cifar(n_classes: int, in_channels: int = 3) -> ResNetCifar:
    """ResNet-18, CIFAR form: BasicBlocks [2, 2, 2, 2]."""
    return ResNetCifar((2, 2, 2, 2), n_classes, in_channels)
