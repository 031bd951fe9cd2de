"""Looking at what a classifier got wrong (fastai v2's ``ClassificationInterpretation``): the validation items
with the highest loss, the confusion matrix and the classes confused most often."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .plots import confusion_matrix, finish_figure, new_figure, plot_confusion_matrix

__all__ = ["ClassificationInterpretation"]


def _probabilities(outputs: np.ndarray) -> np.ndarray:
    """Class probabilities from a classifier's outputs: log-probabilities (snapfit's classifiers end in
    LogSoftmax) and logits alike go through a softmax (softmax(log p) = p)."""
    t = torch.from_numpy(np.asarray(outputs, dtype=np.float64))
    return torch.softmax(t, dim=1).numpy()


class ClassificationInterpretation:
    """The predictions of a classifier on its validation set: `probs` (N, C), `targs` (N,), `preds` (arg-max),
    `losses` (cross-entropy of each item). Build it with `from_learner`."""

    def __init__(self, learn, probs: np.ndarray, targs: np.ndarray, dataset=None):
        self.learn, self.probs, self.targs = learn, np.asarray(probs), np.asarray(targs).astype(int)
        self.preds = self.probs.argmax(1)
        p_true = self.probs[np.arange(len(self.targs)), self.targs]
        self.losses = -np.log(np.clip(p_true, 1e-12, None))
        self.dataset = dataset
        classes = getattr(learn.data, "classes", None)
        self.classes: List = list(classes) if classes is not None else list(range(self.probs.shape[1]))

    @classmethod
    def from_learner(cls, learn, ds_type: str = "valid", tta: bool = False) -> "ClassificationInterpretation":
        """Predict the validation set (``ds_type='valid'``, the only one with targets) with `learn`, averaging
        over test-time augmentation with `tta`."""
        if ds_type != "valid":
            raise ValueError(f"ds_type must be 'valid' (the set with targets to compare with), got {ds_type!r}")
        if tta:
            outs, targs = learn.TTA()
            probs = np.mean([_probabilities(o) for o in outs], 0)
        else:
            outs, targs = learn.predict_with_targs()
            probs = _probabilities(outs)
        if targs is None:
            raise ValueError("the validation loader yields no targets: nothing to compare the predictions with")
        if probs.ndim != 2:
            raise ValueError(f"ClassificationInterpretation needs one score per class, got outputs of shape "
                             f"{probs.shape}")
        return cls(learn, probs, targs, getattr(learn.data.valid_dl, "dataset", None))

    def top_losses(self, k: Optional[int] = None, largest: bool = True) -> Tuple[np.ndarray, np.ndarray]:
        """``(losses, indices)`` of the `k` items with the largest loss (all when k is None), largest first."""
        order = np.argsort(-self.losses if largest else self.losses, kind="stable")[:k]
        return self.losses[order], order

    def confusion_matrix(self) -> np.ndarray:
        """``cm[i, j]``: items of class i predicted as class j."""
        return confusion_matrix(self.targs, self.preds, n_classes=self.probs.shape[1])

    def plot_confusion_matrix(self, normalize: bool = False, **kwargs):
        """The confusion matrix with the class names. Returns the Figure."""
        return plot_confusion_matrix(self.confusion_matrix(), self.classes, normalize=normalize, **kwargs)

    def most_confused(self, min_val: int = 1) -> List[Tuple]:
        """``(actual, predicted, count)`` for every pair of different classes confused at least `min_val`
        times, most frequent first."""
        cm = self.confusion_matrix()
        pairs = [(self.classes[i], self.classes[j], int(cm[i, j])) for i in range(len(cm)) for j in range(len(cm))
                 if i != j and cm[i, j] >= min_val]
        return sorted(pairs, key=lambda p: -p[2])

    def _title(self, i: int) -> str:
        return (f"{self.classes[self.preds[i]]}/{self.classes[self.targs[i]]}\n"
                f"{self.losses[i]:.2f} / {self.probs[i, self.targs[i]]:.2f}")

    def plot_top_losses(self, k: int = 9, figsize: Optional[Sequence[float]] = None):
        """The `k` items with the largest loss, titled ``predicted/actual`` and ``loss / probability of the actual
        class``: the images (denormalised) for image data, else a table. Returns the Figure."""
        import matplotlib.pyplot as plt

        _, idx = self.top_losses(k)
        images = [self._image(i) for i in idx]
        if any(img is None for img in images):
            return self._table(idx)
        cols = min(len(idx), 3) or 1
        rows = math.ceil(len(idx) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=figsize or (3 * cols, 3.2 * rows), squeeze=False)
        for ax, i, img in zip(axes.flat, idx, images):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
            ax.set_title(self._title(i), fontsize=9)
        for ax in axes.flat:
            ax.axis("off")
        fig.suptitle("prediction/actual, loss / probability of the actual class", fontsize=10)
        return finish_figure(fig)

    def _image(self, i: int) -> Optional[np.ndarray]:
        """Item `i` as an image (H, W[, 3]) in [0, 1] with the normalisation undone, or None for other inputs."""
        if self.dataset is None:
            return None
        x = self.dataset[int(i)][0]
        if not torch.is_tensor(x) or x.ndim != 3 or x.shape[0] not in (1, 3):
            return None
        x = x.float()
        denorm = getattr(self.learn.data, "denorm", None)
        if callable(denorm):
            x = denorm(x)
        else:
            mean, std = _normalisation(getattr(self.dataset, "tfm", None))
            if mean is not None:
                x = x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
        x = x.clamp(0, 1).permute(1, 2, 0).numpy()
        return x[..., 0] if x.shape[-1] == 1 else x

    def _table(self, idx: np.ndarray):
        fig, ax = new_figure(figsize=(7, 0.4 + 0.3 * len(idx)))
        ax.axis("off")
        rows = [[int(i), self.classes[self.preds[i]], self.classes[self.targs[i]], f"{self.losses[i]:.3f}",
                 f"{self.probs[i, self.targs[i]]:.3f}"] for i in idx]
        ax.table(cellText=rows, colLabels=["item", "predicted", "actual", "loss", "p(actual)"], loc="center")
        return finish_figure(fig)


def _normalisation(tfm) -> Tuple[Optional[Sequence[float]], Optional[Sequence[float]]]:
    """The mean and std of the last ``Normalize`` in a torchvision transform pipeline (None, None without)."""
    found = (None, None)
    for t in getattr(tfm, "transforms", []) or []:
        if type(t).__name__ == "Normalize":
            found = (list(t.mean), list(t.std))
    return found

