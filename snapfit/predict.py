"""Predictions: model outputs over a loader, on the validation or test set, and test-time augmentation."""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .checks import check_int
from .distributed import ShardSampler, all_gather_object, is_distributed

__all__ = ["evaluating", "eval_loader", "predict_dl", "predict", "predict_with_targs", "tta", "predict_array"]


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode under ``torch.no_grad()`` for the block; afterwards every module gets back its own
    train/eval mode (frozen BatchNorm layers stay in eval), also when the block raises."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for m, training in modes:
            m.training = training


def eval_loader(data, is_test: bool = False):
    """The validation loader of `data` (the test loader with `is_test`), or a clear error when it has none."""
    dl = data.test_dl if is_test else data.valid_dl
    if dl is None:
        raise ValueError(f"this DataBunch has no {'test' if is_test else 'validation'} loader; "
                         f"pass dl= or build the data with one")
    return dl


def predict_dl(learn, dl) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The model's outputs (and the targets, when the loader yields them) over `dl` in eval mode, as NumPy
    arrays; the model's train/eval mode is put back. Under torchrun a sharded validation/test loader's outputs
    are gathered: every rank returns the whole set, in the single-process order."""
    preds, targs = [], []
    with evaluating(learn.model) as model:
        for batch in dl:
            xb, yb = learn.to_device(batch)
            preds.append(model(*xb).detach())
            if yb:
                targs.append(yb[0].detach())
    p = torch.cat(preds).float().cpu().numpy() if preds else np.zeros((0,))
    t = torch.cat(targs).cpu().numpy() if targs else None
    if is_distributed() and isinstance(getattr(dl, "sampler", None), ShardSampler):
        parts = [pt for pt in all_gather_object((p, t)) if len(pt[0])]  # contiguous shards, in rank order
        p = np.concatenate([a for a, _ in parts]) if parts else p
        t = np.concatenate([b for _, b in parts]) if parts and t is not None else t
    return p, t


def predict(learn, is_test: bool = False) -> np.ndarray:
    """Outputs on the validation set (or the test set): log-probabilities for snapfit's classifiers."""
    return learn.predict_dl(eval_loader(learn.data, is_test))[0]


def predict_with_targs(learn, is_test: bool = False) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``(outputs, targets)`` on the validation set (or the test set)."""
    return learn.predict_dl(eval_loader(learn.data, is_test))


def tta(learn, n_aug: int = 4, is_test: bool = False) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Test-time augmentation: ``(preds, y)`` with `preds` stacked as ``(n_aug + 1, N, ...)``, the plain
    prediction first, then `n_aug` passes with the training augmentation (``data.aug_dl``)."""
    check_int("n_aug", n_aug, minimum=0)
    if not callable(getattr(learn.data, "aug_dl", None)):
        raise ValueError("TTA needs data with training transforms to augment with (ImageClassifierData); "
                         f"{type(learn.data).__name__} has none")
    preds, targs = learn.predict_dl(eval_loader(learn.data, is_test))
    aug = [learn.predict_dl(learn.data.aug_dl(is_test))[0] for _ in range(n_aug)]
    if aug and all(np.array_equal(a, preds) for a in aug):
        warnings.warn("TTA: the training transforms changed nothing (tfms[0] has no random augmentation for these "
                      "images), so every augmented pass repeats the plain prediction; add aug_tfms (e.g. "
                      "transforms_side_on) or max_zoom to tfms_from_model, or use learn.predict()", stacklevel=3)
    return np.stack([preds] + aug), targs


def predict_array(learn, x) -> np.ndarray:
    """The model's outputs for a NumPy batch `x` (e.g. images already transformed: ``(N, C, H, W)``), as a NumPy
    array, in eval mode (the model's mode is put back). The rank of `x` must be that of the model's input."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"predict_array takes a NumPy array (a batch of inputs), got {type(x).__name__}; for a "
                        "tensor use learn.model(x), for a loader learn.predict_dl(dl)")
    sample = learn.data.train_dl.dataset[0][0] if learn.data.train_dl is not None else None
    if torch.is_tensor(sample) and x.ndim != sample.dim() + 1:
        raise ValueError(f"predict_array needs a batch shaped (N, {', '.join(map(str, sample.shape))}) like the "
                         f"training inputs, got an array of shape {x.shape}; add the batch axis with x[None]")
    xb = torch.as_tensor(x).to(learn.device)
    if torch.is_tensor(sample) and xb.is_floating_point() and sample.is_floating_point():
        xb = xb.to(sample.dtype)
    with evaluating(learn.model) as model:
        return model(xb).float().cpu().numpy()
