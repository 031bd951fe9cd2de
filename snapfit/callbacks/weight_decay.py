"""Weight decay decoupled from the gradient (Loshchilov & Hutter, "Decoupled Weight Decay Regularization";
fastai 0.7's ``use_wd_sched``): the optimizer's own weight decay is 0 and, before each step, every parameter
with a gradient shrinks by ``p <- p - lr * wd * p``, with the group's LR of that batch."""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence

import torch

from ..core import Callback

__all__ = ["DecoupledWeightDecay"]


class DecoupledWeightDecay(Callback):
    """Decoupled weight decay with each group's `wds`. `norm_wds` divides it by ``sqrt(batches per epoch *
    epochs of the current cycle)``; `wds_sched_mult(learn)`, when given, multiplies it every batch."""

    order = 800  # in after_backward: after LARS (10), before the callbacks that step (900)

    def __init__(self, wds: Sequence[float], norm_wds: bool = False,
                 wds_sched_mult: Optional[Callable] = None):
        self.wds, self.norm_wds, self.wds_sched_mult = [float(w) for w in wds], bool(norm_wds), wds_sched_mult
        self._hidden: Dict[int, float] = {}

    def wd_now(self, learn, wd: float) -> float:
        """The decay applied to a group with weight decay `wd` at this batch."""
        if self.norm_wds:
            pos, sched = learn.position, learn.schedule
            cycle_epochs = sched.cycle_epochs(pos.iteration) if sched is not None else 1
            wd = wd / math.sqrt(pos.n_batches * cycle_epochs)
        if self.wds_sched_mult is not None:
            wd = wd * float(self.wds_sched_mult(learn))
        return wd

    def after_backward(self, learn) -> None:
        if not learn.training:
            return
        for g, wd in zip(learn.opt.param_groups, self.wds):
            if not wd:
                continue
            if "weight_decay" in g:  # decayed here: hide the optimizer's coupled decay for this step
                self._hidden[id(g)] = g["weight_decay"]
                g["weight_decay"] = 0.0
            params = [p for p in g["params"] if p.grad is not None]
            if params:
                with torch.no_grad():
                    torch._foreach_mul_(params, 1.0 - g["lr"] * self.wd_now(learn, wd))

    def after_batch(self, learn) -> None:
        for g in learn.opt.param_groups:
            if id(g) in self._hidden:
                g["weight_decay"] = self._hidden.pop(id(g))
