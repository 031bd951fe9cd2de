"""Plotting helpers shared by every plot snapfit draws (recorder, LR finder, LARS), and the confusion
matrix (fastai 0.7's ``plots.plot_confusion_matrix``)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["new_figure", "finish_figure", "confusion_matrix", "plot_confusion_matrix"]


def new_figure(ax=None, figsize: Tuple[float, float] = (7, 4)):
    """``(fig, ax)``: the given matplotlib axes and its figure, or a new figure with one axes."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    return plt.subplots(figsize=figsize)


def finish_figure(fig):
    """Lay out `fig` and detach it from pyplot, so Jupyter shows the returned Figure once (not twice)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    plt.close(fig)
    return fig


def confusion_matrix(targs, preds, n_classes: Optional[int] = None) -> np.ndarray:
    """``cm[i, j]`` = number of items of true class i predicted as class j. `preds` are class indices, or
    scores/log-probabilities of shape (N, C) (their arg-max is taken)."""
    targs, preds = np.asarray(targs), np.asarray(preds)
    if preds.ndim == 2:
        preds = preds.argmax(1)
    if len(targs) != len(preds):
        raise ValueError(f"targs has {len(targs)} items but preds has {len(preds)}")
    n = n_classes or int(max(targs.max(initial=-1), preds.max(initial=-1)) + 1)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (targs.astype(int), preds.astype(int)), 1)
    return cm


def plot_confusion_matrix(cm: np.ndarray, classes: Optional[Sequence] = None, normalize: bool = False,
                          title: str = "Confusion matrix", cmap: str = "Blues", ax=None):
    """Draw `cm` with the count (or the row fraction when `normalize`) in each cell. Returns the Figure."""
    cm = np.asarray(cm)
    shown = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    classes = list(classes) if classes is not None else list(range(len(cm)))
    fig, ax = new_figure(ax, figsize=(1.5 + 0.5 * len(classes), 1 + 0.5 * len(classes)))
    ax.imshow(shown, interpolation="nearest", cmap=cmap)
    ax.set_title(title)
    ax.set_xticks(range(len(classes)), [str(c) for c in classes], rotation=45)
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    thresh = shown.max() / 2 if shown.size else 0
    for i in range(shown.shape[0]):
        for j in range(shown.shape[1]):
            txt = f"{shown[i, j]:.2f}" if normalize else str(int(shown[i, j]))
            ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                    color="white" if shown[i, j] > thresh else "black")
    ax.set_ylabel("true label")
    ax.set_xlabel("predicted label")
    return finish_figure(fig)
