"""DataBunch: the training, validation and test loaders a Learner trains on, and the sampler that
makes the training order a pure function of (seed, epoch)."""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from ..checks import check_int

__all__ = ["DataBunch", "EpochShuffleSampler", "FixedBatchLoader", "to_tensor", "check_data", "split_batch",
           "epoch_batches", "n_train_batches"]


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


def to_tensor(a: Any, name: str = "the array") -> torch.Tensor:
    """NumPy array / list / tensor -> tensor: floats as float32, integers as int64; an array of strings or
    objects is a ValueError naming it."""
    if not torch.is_tensor(a):
        a = np.asarray(a)
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{name} must hold numbers, got an array of {a.dtype} (e.g. {a.flat[0]!r}); convert "
                             "strings to numbers first (class names: map them to indices, and pass classes=)")
    t = a if torch.is_tensor(a) else torch.as_tensor(a)
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
    x, y = _features(x, xname), to_tensor(y, yname)
    if len(x) != len(y):
        raise ValueError(f"{xname} has {len(x)} rows but {yname} has {len(y)}; they must have the same length")
    return x, y


def _features(x, name: str) -> torch.Tensor:
    """`x` as a tensor, checked once (not per batch) to hold only finite numbers."""
    x = to_tensor(x, name)
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        row = int((~torch.isfinite(x)).reshape(len(x), -1).any(1).nonzero()[0])
        raise ValueError(f"{name} holds NaN or infinite values (first in row {row}); clean the data (drop or "
                         "impute those rows, e.g. np.nan_to_num) before building the DataBunch")
    return x


def _check_labels(ys, names, n_classes: Optional[int]) -> None:
    """Integer targets are class indices: 1-d, in ``range(n_classes)`` (checked once, when the data is built)."""
    for y, name in zip(ys, names):
        if y.ndim != 1:
            raise ValueError(f"{name} holds class indices and must be 1-d, got shape {tuple(y.shape)}; for one-hot, "
                             "multi-label or regression targets pass float arrays")
        if len(y) and int(y.min()) < 0:
            raise ValueError(f"{name} holds the label {int(y.min())}: class indices are ints from 0")
        if len(y) and n_classes is not None and int(y.max()) >= n_classes:
            raise ValueError(f"{name} holds the label {int(y.max())}, outside range({n_classes}): classes has "
                             f"{n_classes} names, so labels run from 0 to {n_classes - 1}")


class FixedBatchLoader:
    """Yields the same `batch` `n_batches` times per epoch (default: an empty batch, for models that take
    no input, such as the pixels of an image being optimised)."""

    def __init__(self, batch=(), n_batches: int = 1):
        self.n_batches = check_int("n_batches", n_batches)
        self.batch = tuple(batch) if isinstance(batch, (list, tuple)) else (batch,)
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
        check_int("bs", bs)
        check_int("seed", seed, minimum=0)
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
            xt = _features(x_test, "x_test")
            yt = to_tensor(y_test, "y_test") if y_test is not None else torch.zeros(len(xt), dtype=trn[1].dtype)
            test_dl = DataLoader(TensorDataset(xt, yt), batch_size=val_bs or bs, shuffle=False, **kw)
        y = trn[1]
        if y.dtype == torch.long:
            ys = [y] + ([val[1]] if val else [])
            _check_labels(ys, ["y_trn", "y_val"], None if classes is None else len(classes))
            c = int(max(int(t.max()) for t in ys if len(t)) + 1) if classes is None else len(classes)
            loss = nn.CrossEntropyLoss()
        else:
            c, loss = (int(y.shape[1]) if y.ndim > 1 else 1), nn.MSELoss()
        return cls(train_dl, valid_dl, test_dl, c=c, loss_func=loss, classes=classes)

    def __repr__(self) -> str:
        def n(dl):
            return "None" if dl is None else f"{len(dl.dataset)} items, {len(dl)} batches"
        return f"DataBunch(train: {n(self.train_dl)}; valid: {n(self.valid_dl)}; test: {n(self.test_dl)}; c={self.c})"


def check_data(data):
    """`data` when it has the loaders of a `DataBunch` (``train_dl`` at least), else a TypeError saying what to pass."""
    if not hasattr(data, "train_dl"):
        raise TypeError(f"data must be a DataBunch (with train_dl/valid_dl), got {type(data).__name__}; "
                        "use DataBunch(train_dl, valid_dl) or DataBunch.from_arrays(...)")
    return data


def _to(b, dev: torch.device, channels_last: bool):
    if not torch.is_tensor(b):
        return b
    if channels_last and b.ndim == 4 and b.is_floating_point():
        return b.to(dev, non_blocking=True, memory_format=torch.channels_last)
    return b.to(dev, non_blocking=True)


def split_batch(batch, device: torch.device, channels_last: bool = False) -> Tuple[Tuple, Tuple]:
    """A batch as ``(inputs, targets)`` on `device` (asynchronous copies): the last element of a list or
    tuple is the target, a lone tensor is an input. With `channels_last`, 4-d float tensors get that layout."""
    if type(batch) in (list, tuple) and len(batch) == 2 and not channels_last:  # the common (x, y), kept lean
        x, y = batch
        if isinstance(x, torch.Tensor):
            x = x.to(device, non_blocking=True)
        if isinstance(y, torch.Tensor):
            y = y.to(device, non_blocking=True)
        return (x,), (y,)
    if not isinstance(batch, (list, tuple)):
        return (_to(batch, device, channels_last),), ()
    batch = [_to(b, device, channels_last) for b in batch]
    if len(batch) <= 1:
        return tuple(batch), ()
    return tuple(batch[:-1]), (batch[-1],)


def _sampler_starts_mid_epoch(dl) -> bool:
    sampler = getattr(dl, "sampler", None)
    return hasattr(sampler, "set_epoch") and hasattr(sampler, "start") and bool(getattr(dl, "batch_size", None))


def n_train_batches(dl) -> int:
    """Batches per epoch of the training loader `dl` (a whole epoch), with clear errors for loaders the
    schedule cannot work with."""
    if _sampler_starts_mid_epoch(dl):
        dl.sampler.set_epoch(0, 0)  # len() counts from the sampler's start: measure a whole epoch
    try:
        n = len(dl)
    except TypeError:
        raise ValueError("the training loader must have a length (len(train_dl)): the schedule needs "
                         "the number of batches per epoch") from None
    if n == 0:
        raise ValueError("the training loader is empty (len(data.train_dl) == 0): give it at least one "
                         "batch (check the dataset size, bs and drop_last)")
    return n


def epoch_batches(dl, epoch: int, start: int = 0, stop: Optional[int] = None) -> Iterator:
    """An iterator over the batches of `epoch` from batch `start` on (non-zero for a resumed epoch) to batch
    `stop` (default: the loader's end; less for a partial epoch), created at once. A sampler with
    ``set_epoch`` is given the epoch (its order is a function of seed and epoch); one with a ``start``
    (`EpochShuffleSampler`) begins at the batch, any other loader draws and drops the first `start` batches."""
    sampler = getattr(dl, "sampler", None)
    skip = start
    if _sampler_starts_mid_epoch(dl):
        sampler.set_epoch(epoch, start * dl.batch_size)
        skip = 0
    elif hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    batches = iter(dl)
    for _ in range(skip):
        next(batches, None)
    if start and not skip:
        batches = _whole_epochs_after(batches, sampler, epoch)
    if stop is not None and stop < len(dl):
        batches = itertools.islice(batches, max(stop - start, 0))
    return batches


def _whole_epochs_after(batches: Iterator, sampler, epoch: int) -> Iterator:
    """`batches`, then the sampler set back to the start of its epoch (so ``len(dl)`` counts whole epochs again)."""
    try:
        yield from batches
    finally:
        sampler.set_epoch(epoch, 0)
