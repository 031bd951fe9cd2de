"""A learner's model and data, the fastai 0.7 way: `from_model_data` wraps any `nn.Module`, `set_data` swaps
the data between fits (progressive resizing: later fits train on larger images)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data.core import check_data
from .distributed import distribute_data, is_distributed, rank, world_size

__all__ = ["from_model_data", "set_data", "LogProbNLLLoss", "default_loss"]


class LogProbNLLLoss(nn.NLLLoss):
    """``nll_loss(log_probs, targets)``, fastai 0.7's loss for a model ending in ``log_softmax``. Its first call
    checks (one read back) that the outputs are log-probabilities, ``logsumexp`` of each row = 0: raw scores
    would make the loss unbounded below, so they are a clear error instead of a silent divergence."""

    checked = False

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self.checked:
            rows = input.detach().float().reshape(input.shape[0], input.shape[1], -1)
            worst = (rows.logsumexp(dim=1).abs().max() if rows.numel() else torch.zeros(())).item()
            if not worst <= 1e-2:
                raise ValueError(f"the loss is nll_loss, which takes log-probabilities, but the model's outputs are "
                                 f"not (a row's exp sums to {torch.tensor(worst).exp().item():.3g}, not 1): end the "
                                 "model with F.log_softmax(x, dim=1) as fastai's course models do, or train raw "
                                 "scores with learn.crit = nn.CrossEntropyLoss()")
            self.checked = True
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)

    def __repr__(self) -> str:
        return "NLLLoss()"


def default_loss(data) -> nn.Module:
    """The loss fastai 0.7 gave a custom model on `data`: the data's own ``data.loss_func`` (image data picks L1
    for regression, binary cross-entropy for multi-label), except that cross-entropy becomes `LogProbNLLLoss`
    (fastai 0.7's course models end in log_softmax)."""
    loss = getattr(data, "loss_func", None)
    return LogProbNLLLoss() if isinstance(loss, nn.CrossEntropyLoss) else loss


def from_model_data(cls, model: nn.Module, data, **kwargs):
    """``cls(model, data, **kwargs)`` (fastai 0.7's constructor name): any `nn.Module` trained on `data`, with the
    loss fastai 0.7 chose (`default_loss`: nll_loss for classes, the course models ending in log_softmax; binary
    cross-entropy for multi-label; L1 for regression) unless ``loss_func=`` says otherwise."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"from_model_data needs an nn.Module, got {type(model).__name__}")
    if kwargs.get("loss_func") is None:
        kwargs["loss_func"] = default_loss(data)
    return cls(model, data, **kwargs)


def set_data(learn, data: Any) -> None:
    """Train later fits on `data` (e.g. the same images at a larger size): their schedule follows its loaders'
    lengths. Under torchrun each rank gets its shard, as at construction."""
    data = check_data(data)
    learn.data = distribute_data(data, rank(), world_size()) if is_distributed() else data
