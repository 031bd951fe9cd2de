"""Keeps the BatchNorm statistics of frozen layer groups fixed while training (and of every group after
``learn.bn_freeze(True)``), as fastai 0.7 did: their layers run in eval mode. Installed by default."""
from __future__ import annotations

from torch import nn

from ..core import Callback

__all__ = ["FreezeBatchNorm"]


class FreezeBatchNorm(Callback):
    """At the start of each training phase, put the BatchNorm layers of ``learn.frozen_groups`` (all groups
    when ``learn.bn_frozen``) in eval mode, so they normalise with, and do not update, their running stats."""

    order = -50

    def before_train(self, learn) -> None:
        groups = learn.layer_groups if learn.bn_frozen else [learn.layer_groups[i] for i in learn.frozen_groups]
        for g in groups:
            for m in g.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
