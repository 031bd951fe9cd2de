"""BatchNorm statistics: recompute them for a model whose weights were averaged (SWA, snapshot averaging)."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

__all__ = ["update_bn"]


def update_bn(model: nn.Module, dl, to_inputs: Optional[Callable] = None) -> None:
    """Recompute the running statistics of every BatchNorm layer of `model` as the plain average over
    one pass of `dl` in train mode (momentum None), as ``torch.optim.swa_utils.update_bn`` does.
    `to_inputs(batch)` gives the model's positional inputs (default: the first element, as is)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = {m: m.momentum for m in bns}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            for batch in dl:
                xs = to_inputs(batch) if to_inputs else (batch[0] if isinstance(batch, (list, tuple)) else batch,)
                model(*xs)
    finally:
        for m, mom in momenta.items():
            m.momentum = mom
        model.train(was_training)
