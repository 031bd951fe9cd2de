"""Metrics, of two kinds:

- per batch: a function ``f(preds, targets)`` returning one number for a batch (a float or a 0-d tensor, kept on
  the device). The epoch's value is the mean over samples (each batch weighted by its size), which is exact for
  `accuracy` and `error_rate` and for any metric that is a mean over samples.
- per epoch: an object with ``reset()``, ``update(preds, targets)`` and ``compute()``, such as a torchmetrics
  ``Metric`` (F1, AUROC, precision...): reset before each validation, updated with each batch on the device,
  computed once. `epoch_metric(fn)` makes one of a plain function that needs the whole epoch's predictions.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import numpy as np
import torch

__all__ = ["accuracy", "accuracy_np", "error_rate", "EpochMetric", "epoch_metric", "is_epoch_metric"]


def accuracy(preds: torch.Tensor, targs: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose arg-max class equals the target: ``mean(argmax(preds, 1) == targs)``."""
    return (preds.argmax(dim=1) == targs).float().mean()


def error_rate(preds: torch.Tensor, targs: torch.Tensor) -> torch.Tensor:
    """``1 - accuracy(preds, targs)``."""
    return 1 - accuracy(preds, targs)


def accuracy_np(preds: np.ndarray, targs: np.ndarray) -> float:
    """`accuracy` on NumPy arrays (e.g. the output of `learn.predict()`)."""
    preds, targs = np.asarray(preds), np.asarray(targs)
    return float((np.argmax(preds, axis=1) == targs).mean())


def is_epoch_metric(m) -> bool:
    """True for a metric computed once per epoch (``reset``/``update``/``compute``: torchmetrics, `EpochMetric`)."""
    return all(callable(getattr(m, a, None)) for a in ("reset", "update", "compute"))


class EpochMetric:
    """`fn(preds, targets)` computed once per epoch on all the validation predictions and targets (gathered from
    every process under torchrun), for metrics that are not a mean over samples (macro F1, AUROC...)."""

    def __init__(self, fn: Callable, name: Optional[str] = None):
        if not callable(fn):
            raise TypeError(f"epoch_metric needs a function fn(preds, targets), got {fn!r}")
        self.fn = fn
        self.__name__ = name or getattr(fn, "__name__", type(fn).__name__)
        self.reset()

    def reset(self) -> None:
        """Forget the predictions of the last epoch."""
        self.preds: List[torch.Tensor] = []
        self.targs: List[torch.Tensor] = []

    def update(self, preds: torch.Tensor, targs: torch.Tensor) -> None:
        """Keep one batch's predictions and targets (on their device)."""
        self.preds.append(preds.detach())
        self.targs.append(targs.detach())

    def compute(self):
        """`fn` of the epoch's predictions and targets."""
        preds, targs = torch.cat(self.preds), torch.cat(self.targs)
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (preds.cpu(), targs.cpu()))
            preds, targs = torch.cat([p for p, _ in parts]), torch.cat([t for _, t in parts])
        return self.fn(preds, targs)


def epoch_metric(fn: Callable, name: Optional[str] = None) -> EpochMetric:
    """`fn(preds, targets)` as a metric of the whole epoch (`EpochMetric`): ``metrics=[epoch_metric(f1)]``."""
    return EpochMetric(fn, name)
