"""Small networks for the notebooks and tests.

ImageNet-scale models come from torchvision (and timm for MixNet) by name in the
training engine; these are the toy ones a laptop CPU trains in seconds.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["mlp", "small_cnn"]


def mlp(in_features: int = 64, hidden: Sequence[int] = (256, 128), num_classes: int = 10,
        batch_norm: bool = False) -> nn.Sequential:
    """Linear -> [BatchNorm1d] -> ReLU blocks, then a Linear head. Input (N, in_features)."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers.append(nn.Linear(width, h, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(nn.ReLU())
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def small_cnn(in_channels: int = 1, channels: Sequence[int] = (16, 32), num_classes: int = 10,
              batch_norm: bool = True) -> nn.Sequential:
    """3x3 Conv -> [BatchNorm2d] -> ReLU blocks (the second onwards with stride 2), global
    average pooling and a Linear head. Input (N, in_channels, H, W), e.g. 8x8 digits."""
    layers: list[nn.Module] = []
    width = in_channels
    for i, c in enumerate(channels):
        layers.append(nn.Conv2d(width, c, 3, stride=1 if i == 0 else 2, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c))
        layers.append(nn.ReLU())
        width = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)
