"""Metrics: functions of (predictions, targets). Tensor metrics return a 0-d tensor on the
predictions' device (no host sync); `_np` variants take and return NumPy values."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["accuracy", "accuracy_np", "error_rate"]


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
