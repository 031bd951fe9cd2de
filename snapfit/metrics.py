"""Metrics, of two kinds:

- per batch: a function ``f(preds, targets)`` returning one number for a batch (a float or a 0-d tensor, kept on
  the device). The epoch's value is the mean over samples (each batch weighted by its size), which is exact for
  `accuracy` and `error_rate` and for any metric that is a mean over samples.
- per epoch: an object with ``reset()``, ``update(preds, targets)`` and ``compute()``, such as a torchmetrics
  ``Metric`` (F1, AUROC, precision...): reset before each validation, updated with each batch on the device,
  computed once. `epoch_metric(fn)` makes one of a plain function that needs the whole epoch's predictions, and
  a function marked by `whole_epoch` (`precision`, `recall`, `fbeta`, `f1`) is one too, also inside a
  ``functools.partial``, while a plain call of it still returns its value.

Multi-label (fastai 0.7's names): `accuracy_multi` / `accuracy_thresh(thresh)` per batch, and the micro-averaged
`precision`, `recall`, `fbeta` per epoch, on per-label scores and n-hot targets of the same shape.
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from .checks import check_float

__all__ = ["accuracy", "accuracy_np", "error_rate", "EpochMetric", "epoch_metric", "is_epoch_metric", "as_epoch_metric",
           "metric_name", "whole_epoch", "accuracy_multi", "accuracy_multi_np", "accuracy_thresh", "precision",
           "recall", "fbeta", "f1"]


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


class EpochMetric:
    """`fn(preds, targets)` computed once per epoch on all the validation predictions and targets (gathered from
    every process under torchrun), for metrics that are not a mean over samples (macro F1, AUROC...)."""

    def __init__(self, fn: Callable, name: Optional[str] = None):
        if not callable(fn):
            raise TypeError(f"epoch_metric needs a function fn(preds, targets), got {fn!r}")
        self.fn = fn
        self.__name__ = name or metric_name(fn)
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


# ---------------------------------------------------------------------------- multi-label (fastai 0.7's names)
# `preds` are per-label scores (sigmoid probabilities, or logits with a threshold of 0), `targs` n-hot targets of
# the same shape: one row per sample, one column per label.

def _pair(preds, targs, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """`preds` and `targs` (tensors, NumPy arrays or lists) as tensors on `preds`' device, of the same shape."""
    preds = torch.as_tensor(preds)
    targs = torch.as_tensor(targs, device=preds.device)
    if preds.shape != targs.shape:
        raise ValueError(f"{name}: preds and targs must have the same shape (one column per label, n-hot targets), "
                         f"got {tuple(preds.shape)} and {tuple(targs.shape)}")
    return preds, targs


def _thresh(thresh) -> float:
    return check_float("thresh", thresh, minimum=-math.inf,
                       what="a finite number (a label is predicted where preds > thresh)")


def accuracy_multi(preds: torch.Tensor, targs: torch.Tensor, thresh: float = 0.5) -> torch.Tensor:
    """Multi-label accuracy, per element: ``mean((preds > thresh) == targs)`` over every sample and label, with
    n-hot targets (fastai 0.7's ``accuracy_multi``). A mean over samples, so it is a per-batch metric; returns a
    0-d tensor on `preds`' device."""
    preds, targs = _pair(preds, targs, "accuracy_multi")
    return ((preds > _thresh(thresh)).float() == targs.float()).float().mean()


def accuracy_multi_np(preds: np.ndarray, targs: np.ndarray, thresh: float = 0.5) -> float:
    """`accuracy_multi` on NumPy arrays (e.g. the output of `learn.predict_with_targs()`), as a float."""
    return float(accuracy_multi(np.asarray(preds), np.asarray(targs), thresh))


class _AccuracyThresh:
    """`accuracy_multi` at a fixed threshold, named ``accuracy_thresh`` in the recorder's table."""

    def __init__(self, thresh: float):
        self.thresh = _thresh(thresh)
        self.__name__ = "accuracy_thresh"

    def __call__(self, preds: torch.Tensor, targs: torch.Tensor) -> torch.Tensor:
        return accuracy_multi(preds, targs, self.thresh)

    def __repr__(self) -> str:
        return f"accuracy_thresh({self.thresh!r})"


def accuracy_thresh(thresh: float, *misuse) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The metric ``f(preds, targs) = accuracy_multi(preds, targs, thresh)`` (fastai 0.7's name), e.g.
    ``metrics=[accuracy_thresh(0.5)]``; its column is named ``accuracy_thresh``."""
    if misuse or torch.is_tensor(thresh):
        raise TypeError("accuracy_thresh(thresh) makes a metric: pass metrics=[accuracy_thresh(0.5)], "
                        "not metrics=[accuracy_thresh]")
    return _AccuracyThresh(thresh)


# ---------------------------------------------------------------------------- whole-epoch functions
_MARK = "whole_epoch"


def whole_epoch(fn: Callable) -> Callable:
    """Mark `fn(preds, targs, ...)` as a metric of the whole epoch and return it unchanged: a plain call still
    returns its value, and in ``metrics=[...]`` (also as ``functools.partial(fn, ...)``) the recorder computes it
    once per epoch on all the validation predictions (`as_epoch_metric` wraps it in a fresh `EpochMetric` for each
    fit). `precision`, `recall`, `fbeta` and `f1` are marked so."""
    if not callable(fn):
        raise TypeError(f"whole_epoch needs a function fn(preds, targets), got {fn!r}")
    try:
        setattr(fn, _MARK, True)
    except (AttributeError, TypeError):
        raise TypeError(f"whole_epoch cannot mark {fn!r}: use epoch_metric(fn) instead") from None
    return fn


def _unwrap(m):
    while isinstance(m, functools.partial):
        m = m.func
    return m


def _has_state(m) -> bool:
    return all(callable(getattr(m, a, None)) for a in ("reset", "update", "compute"))


def _is_marked(m) -> bool:
    return getattr(_unwrap(m), _MARK, False) is True


def is_epoch_metric(m) -> bool:
    """True for a metric computed once per epoch: an object with ``reset``/``update``/``compute`` (torchmetrics,
    `EpochMetric`), or a function marked by `whole_epoch` (such as `fbeta`), also inside ``functools.partial``."""
    return _has_state(m) or _is_marked(m)


def as_epoch_metric(m):
    """The object the recorder resets, updates and computes for the epoch metric `m`: `m` itself when it has
    ``reset``/``update``/``compute``, a new `EpochMetric` (named by `metric_name`) for a `whole_epoch` function or a
    partial of one."""
    if _has_state(m):
        return m
    if _is_marked(m):
        return EpochMetric(m, metric_name(m))
    raise TypeError(f"metric {metric_name(m)} is computed per batch, not per epoch: wrap it with epoch_metric(fn)")


def metric_name(m) -> str:
    """The name of metric `m` in the recorder's table: its ``__name__``; for a ``functools.partial`` without one,
    the name of the function inside (``partial(fbeta, beta=2)`` is ``fbeta``; set ``p.__name__ = 'f2'`` on the
    partial to name it otherwise); else its class name (a torchmetrics ``Metric``)."""
    name = getattr(m, "__name__", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(m, functools.partial):
        return metric_name(m.func)
    return type(m).__name__


# ---------------------------------------------------------------------------- precision, recall, F-beta
def _counts(preds, targs, thresh, name: str) -> Tuple[float, float, float]:
    """(true positives, predicted positives, actual positives) over every sample and label, read back at once."""
    preds, targs = _pair(preds, targs, name)
    pred_pos, true_pos = preds > _thresh(thresh), targs > 0.5
    counts = torch.stack([(pred_pos & true_pos).sum(), pred_pos.sum(), true_pos.sum()])
    tp, pp, tr = counts.tolist()
    return float(tp), float(pp), float(tr)


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


@whole_epoch
def precision(preds: torch.Tensor, targs: torch.Tensor, thresh: float = 0.5) -> float:
    """Micro-averaged precision (fastai 0.7's): ``TP / (TP + FP)`` with TP and FP counted over every sample and
    label, a label predicted where ``preds > thresh`` and present where ``targs > 0.5`` (n-hot targets); 0 when
    nothing is predicted (scikit-learn's ``zero_division=0``). Not a mean over samples: in ``metrics=[...]`` it is
    computed once per epoch on all the validation predictions (`whole_epoch`). Returns a float."""
    tp, pp, _ = _counts(preds, targs, thresh, "precision")
    return _ratio(tp, pp)


@whole_epoch
def recall(preds: torch.Tensor, targs: torch.Tensor, thresh: float = 0.5) -> float:
    """Micro-averaged recall (fastai 0.7's): ``TP / (TP + FN)`` over every sample and label (see `precision`); 0
    when no label is present. Computed once per epoch in ``metrics=[...]``. Returns a float."""
    tp, _, tr = _counts(preds, targs, thresh, "recall")
    return _ratio(tp, tr)


@whole_epoch
def fbeta(preds: torch.Tensor, targs: torch.Tensor, beta: float, thresh: float = 0.5) -> float:
    """Micro-averaged F-beta (fastai 0.7's): with P = `precision` and R = `recall` of the same predictions,
    ``(1 + beta**2) * P * R / (beta**2 * P + R + 1e-20)``; beta = 1 weighs P and R equally, beta > 1 favours
    recall, beta < 1 precision. `beta` must be a number > 0 (ValueError). Computed once per epoch in
    ``metrics=[functools.partial(fbeta, beta=2)]`` (named ``fbeta``). Returns a float."""
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"fbeta: beta must be a finite number > 0 (1 weighs precision and recall equally, 2 "
                         f"favours recall), got {beta!r}")
    tp, pp, tr = _counts(preds, targs, thresh, "fbeta")
    p, r, b2 = _ratio(tp, pp), _ratio(tp, tr), float(beta) ** 2
    return (1 + b2) * p * r / (b2 * p + r + 1e-20)


@whole_epoch
def f1(preds: torch.Tensor, targs: torch.Tensor, thresh: float = 0.5) -> float:
    """``fbeta(preds, targs, 1, thresh)``: the harmonic mean of micro-averaged precision and recall."""
    return fbeta(preds, targs, 1, thresh)
