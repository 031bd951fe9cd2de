"""Layer groups and freezing (fastai 0.7's ``freeze_to``, ``bn_freeze``): the checks on the groups a learner
is given, freezing the first n groups, and the callback that keeps the BatchNorm statistics of frozen groups
fixed while training (their layers run in eval mode). The callback is installed by default."""
from __future__ import annotations

from typing import List, Optional, Sequence

from torch import nn

from ..checks import is_int
from ..core import Callback

__all__ = ["FreezeBatchNorm", "check_layer_groups", "freeze_groups", "freeze_to", "freeze", "unfreeze", "bn_freeze"]


def check_layer_groups(model: nn.Module, groups: Optional[Sequence[nn.Module]]) -> List[nn.Module]:
    """The layer groups of `model`: `groups` when every one is a sub-module of the model and together they
    hold every parameter, ``[model]`` when none are given; clear errors otherwise."""
    if not groups:
        return [model]
    groups = list(groups)
    for i, g in enumerate(groups):
        if not isinstance(g, nn.Module):
            raise TypeError(f"layer_groups[{i}] must be an nn.Module, got {type(g).__name__}")
    names = {id(p): n for n, p in model.named_parameters()}
    covered = {id(p) for g in groups for p in g.parameters()}
    if any(i not in names for i in covered):
        raise ValueError("layer_groups hold parameters that are not in the model; pass sub-modules of the model")
    missing = [n for i, n in names.items() if i not in covered]
    if missing:
        raise ValueError(f"layer_groups leave {len(missing)} model parameter(s) out, e.g. {missing[:3]}: "
                         "every parameter must belong to a group (or it would never be trained)")
    return groups


def freeze_groups(groups: Sequence[nn.Module], n: int) -> List[int]:
    """Freeze the groups before group `n` (``requires_grad=False``) and unfreeze the others; negative `n`
    counts from the end. Returns the indices of the frozen groups."""
    n_groups = len(groups)
    if not is_int(n) or not -n_groups <= n <= n_groups:
        raise ValueError(f"freeze_to takes a group index in [-{n_groups}, {n_groups}] "
                         f"(this learner has {n_groups} layer group(s)), got {n!r}")
    frozen = list(range(n_groups))[:n]
    for i, g in enumerate(groups):
        for p in g.parameters():
            p.requires_grad_(i not in frozen)
    return frozen


def freeze_to(learn, n: int) -> None:
    """Freeze the layer groups before group `n` (no gradient, no update, BatchNorm statistics fixed) and
    unfreeze the others; negative `n` counts from the end."""
    learn.frozen_groups = freeze_groups(learn.layer_groups, n)


def freeze(learn) -> None:
    """Freeze every layer group but the last (fastai 0.7: train only the head)."""
    learn.freeze_to(-1)


def unfreeze(learn) -> None:
    """Make every layer group trainable."""
    learn.freeze_to(0)


def bn_freeze(learn, flag: bool = True) -> None:
    """With `flag`, every BatchNorm layer keeps its running statistics fixed while training (fastai 0.7)."""
    learn.bn_frozen = bool(flag)


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
