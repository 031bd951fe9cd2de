"""Small builders shared by the tests."""
import torch
from torch import nn

from snapfit import Callback, DataBunch


def small_data(n_trn=40, n_val=16, bs=8, n_in=6, n_cls=3, seed=0):
    """A tiny synthetic classification DataBunch: `n_trn // bs` training batches."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_trn + n_val, n_in, generator=g)
    w = torch.randn(n_in, n_cls, generator=g)
    y = (x @ w).argmax(1)
    return DataBunch.from_arrays(x[:n_trn], y[:n_trn], x[n_trn:], y[n_trn:], bs=bs, seed=seed)


def small_model(n_in=6, n_cls=3):
    return nn.Sequential(nn.Linear(n_in, 16), nn.ReLU(), nn.Linear(16, n_cls))


class CrashAt(Callback):
    """Raises `error` (a RuntimeError "crash" by default) when training batch `iteration` starts, as a power cut
    would; with a low `order` it runs before any other before_batch handler has touched the batch."""

    def __init__(self, iteration, error=None, order=0):
        self.iteration, self.error, self.order = iteration, error or RuntimeError("crash"), order

    def before_batch(self, learn):
        if learn.training and learn.iteration == self.iteration:
            self.crash(learn)

    def crash(self, learn):
        raise self.error
