"""Layers the model builders share."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["AdaptiveConcatPool2d"]


class AdaptiveConcatPool2d(nn.Module):
    """Adaptive average and max pooling to `size`, concatenated on the channel axis (2x the channels)."""

    def __init__(self, size: int = 1):
        super().__init__()
        self.avg, self.max = nn.AdaptiveAvgPool2d(size), nn.AdaptiveMaxPool2d(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.max(x), self.avg(x)], dim=1)
