"""Small models for small images and tabular arrays. Classifiers end in ``LogSoftmax`` and so
output log-probabilities, as fastai 0.7's did (``np.exp(learn.predict())`` gives probabilities)."""
from __future__ import annotations

from typing import Sequence

from torch import nn

__all__ = ["simple_cnn", "mlp"]


def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def simple_cnn(n_classes: int, in_channels: int = 1, widths: Sequence[int] = (32, 64, 128)) -> nn.Sequential:
    """Conv-BN-ReLU blocks (the first at stride 1, the rest stride 2), global average pooling,
    a linear layer to `n_classes` and LogSoftmax."""
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    layers, c = [], in_channels
    for i, w in enumerate(widths):
        layers.append(_conv_block(c, w, 1 if i == 0 else 2))
        c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n_classes), nn.LogSoftmax(dim=1)]
    return nn.Sequential(*layers)


def mlp(n_in: int, n_out: int, hidden: Sequence[int] = (256, 256), log_softmax: bool = True) -> nn.Sequential:
    """Linear-ReLU layers of sizes `hidden`, a final Linear to `n_out`, then LogSoftmax for classifiers."""
    layers, c = [], n_in
    for h in hidden:
        layers += [nn.Linear(c, h), nn.ReLU(inplace=True)]
        c = h
    layers.append(nn.Linear(c, n_out))
    if log_softmax:
        layers.append(nn.LogSoftmax(dim=1))
    return nn.Sequential(*layers)
