"""Stochastic weight averaging (Izmailov et al. 2018; fastai 0.7's ``use_swa``) and BatchNorm
re-estimation.

`SWA` keeps a running average of the weights, updated at the end of chosen epochs:
``avg <- avg + (w - avg) / (n + 1)``, the rule of torch's ``AveragedModel``; at the end of the fit the
averaged model's BatchNorm statistics are recomputed over the training data (`update_bn`)."""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from ..batchnorm import update_bn
from ..checks import check_int
from ..core import Callback
from ..data.core import epoch_batches

__all__ = ["SWA", "update_bn"]


class SWA(Callback):
    """Average the model's parameters at the end of epochs ``start_epoch, start_epoch + freq, ...``
    (counted from 1, as fastai 0.7's ``swa_start``) into ``learn.swa_model``; at the end of the fit
    re-estimate its BatchNorm statistics on the training data (`update_bn=True`)."""

    order = 75
    state_key = "swa"

    def __init__(self, start_epoch: int = 1, freq: int = 1, update_bn: bool = True):
        self.start_epoch, self.freq = check_int("start_epoch", start_epoch), check_int("freq", freq)
        self.update_bn = update_bn
        self.swa_model: Optional[nn.Module] = None
        self.n_averaged = 0

    def before_fit(self, learn) -> None:
        if self.swa_model is None:
            self.swa_model = copy.deepcopy(learn.saved_model)
            for p in self.swa_model.parameters():
                p.requires_grad_(False)
        learn.swa_model = self.swa_model

    def after_epoch(self, learn) -> None:
        done = learn.position.epochs_done
        if done >= self.start_epoch and (done - self.start_epoch) % self.freq == 0:
            self.average(learn.saved_model.parameters())

    def average(self, params: Sequence[torch.Tensor]) -> None:
        """Fold one set of parameters into the average."""
        avg = [p.detach() for p in self.swa_model.parameters()]
        new = [p.detach().to(a.device) for a, p in zip(avg, params)]
        if self.n_averaged == 0:
            torch._foreach_copy_(avg, new)
        else:
            torch._foreach_lerp_(avg, new, 1.0 / (self.n_averaged + 1))
        self.n_averaged += 1

    def after_fit(self, learn) -> None:
        if self.update_bn and self.n_averaged:
            # one pass in the order of the fit's last epoch: the same again when a finished fit is resumed
            batches = epoch_batches(learn.data.train_dl, max(learn.position.epochs_done - 1, 0))
            update_bn(self.swa_model, batches, lambda b: learn.to_device(b)[0])

    def state_dict(self) -> Dict[str, Any]:
        """The averaged weights and the count (for checkpoints)."""
        return {"swa_model": self.swa_model.state_dict() if self.swa_model is not None else None,
                "n_averaged": self.n_averaged}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""
        self.n_averaged = int(state["n_averaged"])
        if state["swa_model"] is not None and self.swa_model is not None:
            self.swa_model.load_state_dict(state["swa_model"])
