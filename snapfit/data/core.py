"""DataBunch: the training, validation and test loaders a Learner trains on, and the sampler that
makes the training order a pure function of (seed, epoch)."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

__all__ = ["DataBunch", "EpochShuffleSampler", "FixedBatchLoader", "to_tensor"]


class EpochShuffleSampler(Sampler):
    """Yields a permutation of ``range(n)`` drawn from a generator seeded with
    ``seed * 1_000_003 + epoch``: the data order is a function of (seed, epoch) alone, so a fit
    can be resumed mid-epoch by skipping the first `start` indices. `shuffle=False` keeps order."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle = int(n), int(seed), shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the permutation of `epoch`, skipping its first `start` indices."""
        self.epoch, self.start = int(epoch), int(start)

    def order(self, epoch: Optional[int] = None) -> torch.Tensor:
        """The full index order of `epoch` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start:].tolist())

    def __len__(self) -> int:
        return max(self.n - self.start, 0)


def to_tensor(a: Any) -> torch.Tensor:
    """NumPy array / list / tensor -> tensor: floats as float32, integers as int64."""
    t = a if torch.is_tensor(a) else torch.as_tensor(np.asarray(a))
    if t.is_floating_point():
        return t.float()
    if t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        return t.long()
    return t


def _check_pair(x, y, xname: str, yname: str):
    if x is None and y is None:
        return None
    if x is None or y is None:
        raise ValueError(f"{xname} and {yname} go together: got {xname}={'None' if x is None else 'array'}, "
                         f"{yname}={'None' if y is None else 'array'}")
    x, y = to_tensor(x), to_tensor(y)
    if len(x) != len(y):
        raise ValueError(f"{xname} has {len(x)} rows but {yname} has {len(y)}; they must have the same length")
    return x, y


class FixedBatchLoader:
    """Yields the same `batch` `n_batches` times per epoch (default: an empty batch, for models that take
    no input, such as the pixels of an image being optimised)."""

    def __init__(self, batch=(), n_batches: int = 1):
        if isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 1:
            raise ValueError(f"n_batches must be a positive int, got {n_batches!r}")
        self.batch, self.n_batches = tuple(batch) if isinstance(batch, (list, tuple)) else (batch,), n_batches
        self.batch_size = None

    def __iter__(self):
        for _ in range(self.n_batches):
            yield self.batch

    def __len__(self) -> int:
        return self.n_batches


class DataBunch:
    """The loaders of a fit: ``DataBunch(train_dl, valid_dl=None, test_dl=None)`` with plain torch
    DataLoaders, or `from_arrays`. fastai 0.7 names `trn_dl`/`val_dl` are aliases. `c` is the
    number of classes when known; `loss_func` the default loss for this kind of target."""

    def __init__(self, train_dl: DataLoader, valid_dl: Optional[DataLoader] = None,
                 test_dl: Optional[DataLoader] = None, c: Optional[int] = None,
                 loss_func: Optional[Callable] = None, classes: Optional[Sequence] = None):
        if train_dl is None:
            raise ValueError("train_dl is required: pass a DataLoader over the training set")
        self.train_dl, self.valid_dl, self.test_dl = train_dl, valid_dl, test_dl
        self.classes = list(classes) if classes is not None else None
        self.c = c if c is not None else (len(self.classes) if self.classes is not None else None)
        self.loss_func = loss_func

    trn_dl = property(lambda self: self.train_dl, doc="fastai 0.7 alias of `train_dl`.")
    val_dl = property(lambda self: self.valid_dl, doc="fastai 0.7 alias of `valid_dl`.")

    @property
    def train_ds(self) -> Dataset:
        """The training dataset."""
        return self.train_dl.dataset

    @property
    def valid_ds(self) -> Optional[Dataset]:
        """The validation dataset (None without one)."""
        return self.valid_dl.dataset if self.valid_dl is not None else None

    @classmethod
    def fixed(cls, batch=(), n_batches: int = 1) -> "DataBunch":
        """Training data that is one fixed `batch` served `n_batches` times per epoch, no validation: for
        optimising pixels (style transfer) or other full-batch problems (with LBFGS)."""
        return cls(FixedBatchLoader(batch, n_batches))

    @classmethod
    def from_arrays(cls, x_trn, y_trn, x_val=None, y_val=None, bs: int = 64, x_test=None, y_test=None,
                    seed: int = 0, shuffle: bool = True, num_workers: int = 0, pin_memory: Optional[bool] = None,
                    val_bs: Optional[int] = None, drop_last: bool = False, classes: Optional[Sequence] = None
                    ) -> "DataBunch":
        """Loaders over in-memory arrays. The training order is drawn per epoch from (`seed`, epoch);
        integer targets make a classification bunch (``c`` classes, cross-entropy loss), float
        targets a regression one (MSE). `pin_memory` defaults to True when CUDA is available."""
        if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
            raise ValueError(f"bs must be a positive int, got {bs!r}")
        trn = _check_pair(x_trn, y_trn, "x_trn", "y_trn")
        if trn is None:
            raise ValueError("x_trn and y_trn are required")
        if len(trn[0]) == 0:
            raise ValueError("x_trn is empty: the training set needs at least one sample")
        val = _check_pair(x_val, y_val, "x_val", "y_val")
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        kw = dict(num_workers=num_workers, pin_memory=pin_memory)
        train_ds = TensorDataset(*trn)
        train_dl = DataLoader(train_ds, batch_size=bs, sampler=EpochShuffleSampler(len(train_ds), seed, shuffle),
                              drop_last=drop_last, **kw)
        valid_dl = DataLoader(TensorDataset(*val), batch_size=val_bs or bs, shuffle=False, **kw) if val else None
        test_dl = None
        if x_test is not None:
            xt = to_tensor(x_test)
            yt = to_tensor(y_test) if y_test is not None else torch.zeros(len(xt), dtype=trn[1].dtype)
            test_dl = DataLoader(TensorDataset(xt, yt), batch_size=val_bs or bs, shuffle=False, **kw)
        y = trn[1]
        if y.dtype == torch.long:
            ys = [y] + ([val[1]] if val else [])
            c = int(max(int(t.max()) for t in ys if len(t)) + 1) if classes is None else len(classes)
            loss = nn.CrossEntropyLoss()
        else:
            c, loss = (int(y.shape[1]) if y.ndim > 1 else 1), nn.MSELoss()
        return cls(train_dl, valid_dl, test_dl, c=c, loss_func=loss, classes=classes)

    def __repr__(self) -> str:
        def n(dl):
            return "None" if dl is None else f"{len(dl.dataset)} items, {len(dl)} batches"
        return f"DataBunch(train: {n(self.train_dl)}; valid: {n(self.valid_dl)}; test: {n(self.test_dl)}; c={self.c})"
