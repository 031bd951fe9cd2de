"""The recorder, published as ``learn.sched`` (fastai 0.7's name): per batch the LR of every
param group and the training loss, per epoch the validation loss and metrics, and the plots.

Losses stay on the device: each training loss (a detached 0-d tensor) is kept until the recorder
reads them all back with one transfer, every `sync_every` batches and at the end of the epoch;
validation sums are accumulated on the device and read back once per epoch."""
from __future__ import annotations

import math
import operator
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..core import Callback

__all__ = ["Recorder", "smooth"]


def smooth(values: Sequence[float], beta: float = 0.98) -> List[float]:
    """Debiased exponential moving average: ``avg = beta*avg + (1-beta)*v; out = avg / (1 - beta**n)``.
    NaN values (skipped batches) leave the average unchanged and are reported as the current average."""
    out, avg, n = [], 0.0, 0
    for v in values:
        if not math.isnan(v):
            n += 1
            avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** n) if n else float("nan"))
    return out


class Recorder(Callback):
    """Records the fit; `learn.sched` is this object. Read values through its attributes:
    `lrs` (last group, per iteration), `group_lrs` (all groups), `losses`, `smooth_losses`,
    `val_losses`, `metrics` (per epoch), `epoch_iterations`, `cycle_ends`."""

    order = 50

    def __init__(self, sync_every: int = 25, beta: float = 0.98):
        if not isinstance(sync_every, int) or sync_every < 1:
            raise ValueError(f"sync_every must be a positive int (batches between reads of the loss), "
                             f"got {sync_every!r}")
        self.sync_every, self.beta = sync_every, beta
        self.finder = None  # the last LR range test (learn.lr_find), kept across fits
        self.lars = None  # the LARS callback of the last fit that used one (its recorded trust ratios)
        self.reset()

    # ----------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget everything recorded (called at the start of each fit)."""
        self.group_lrs: List[List[float]] = []
        self.losses: List[float] = []
        self.smooth_losses: List[float] = []
        self.epoch_iterations: List[int] = []
        self.trn_losses: List[float] = []
        self.epoch_means: List[float] = []  # plain mean of each epoch's training losses
        self.val_losses: List[float] = []
        self.metrics: List[List[float]] = []
        self.metric_names: List[str] = []
        self.cycle_ends: List[int] = []
        self.last_values: Optional[List[float]] = None
        self.first_iteration = 0
        self.nonfinite_at: Optional[int] = None
        self._ema, self._ema_n = 0.0, 0
        self._pending: List[Optional[torch.Tensor]] = []  # training losses not read back yet (None: skipped)
        self._val_sums: Optional[torch.Tensor] = None  # validation loss and metrics, summed over samples
        self._val_values: Optional[List[float]] = None  # this epoch's [val_loss, *metrics], once read back
        self._val_count = 0

    @property
    def lrs(self) -> List[float]:
        """LR of the last param group at each iteration (what fastai 0.7's ``sched.lrs`` held)."""
        return [g[-1] for g in self.group_lrs]

    @property
    def iterations(self) -> List[int]:
        """Global iteration of each recorded training batch (a fit started at a later cycle starts there)."""
        return list(range(self.first_iteration, self.first_iteration + len(self.group_lrs)))

    @property
    def smooth_loss(self) -> float:
        """The current debiased moving average of the training loss (NaN before any batch)."""
        return self._ema / (1 - self.beta ** self._ema_n) if self._ema_n else float("nan")

    def flush(self) -> None:
        """Read back the training losses still waiting on the device (one transfer)."""
        self._sync()

    def state_dict(self) -> Dict[str, Any]:
        """Plain-data copy of the history (for checkpoints); pending device values are read first."""
        self.flush()
        return {k: getattr(self, k) for k in (
            "group_lrs", "losses", "smooth_losses", "epoch_iterations", "trn_losses", "epoch_means", "val_losses",
            "metrics", "metric_names", "cycle_ends", "first_iteration", "nonfinite_at", "last_values")} | {
            "ema": self._ema, "ema_n": self._ema_n}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a history saved by `state_dict`."""
        for k, v in state.items():
            if k == "ema":
                self._ema = float(v)
            elif k == "ema_n":
                self._ema_n = int(v)
            elif isinstance(v, (list, tuple)):
                setattr(self, k, [list(x) if isinstance(x, (list, tuple)) else x for x in v])
            else:
                setattr(self, k, v)

    # ----------------------------------------------------------------- events
    def before_fit(self, learn) -> None:
        self.reset()
        self.metric_names = [_metric_name(m) for m in learn.metrics]
        self.first_iteration = learn.iteration

    def before_train(self, learn) -> None:
        self._pending = []
        self._epoch_start = len(self.losses) - learn.batch_idx  # a resumed epoch has its first batches recorded

    def after_batch(self, learn) -> None:
        if learn.training:
            self.group_lrs.append(list(map(_lr_of, learn.opt.param_groups)))
            loss = learn.loss
            self._pending.append(None if loss is None else loss.detach())
            if len(self._pending) >= self.sync_every or learn.sync_requested:
                self._sync()
                learn.sync_requested = False
        elif learn.loss is not None:
            n = _batch_size(learn)
            vals = [learn.loss.detach().float()]
            vals += [_as_tensor(m(learn.pred, *learn.yb), learn.loss) for m in learn.metrics]
            batch = torch.stack(vals) * n if len(vals) > 1 else vals[0].reshape(1) * n
            self._val_sums = batch if self._val_sums is None else self._val_sums.add_(batch)
            self._val_count += n

    def after_train(self, learn) -> None:
        self._sync()
        finite = [v for v in self.losses[self._epoch_start:] if not math.isnan(v)]
        self.epoch_means.append(sum(finite) / len(finite) if finite else float("nan"))

    def before_validate(self, learn) -> None:
        self._val_sums, self._val_count = None, 0

    def after_validate(self, learn) -> None:
        if self._val_sums is None and not learn.is_distributed:
            self._val_values = None
            return
        sums = self._val_sums if self._val_sums is not None else torch.zeros(1 + len(learn.metrics),
                                                                              device=learn.device)
        if learn.is_distributed:  # every rank validated its shard: add them up, then average
            both = learn.all_reduce_sum(torch.cat([sums, torch.tensor([float(self._val_count)], device=sums.device)]))
            sums, self._val_count = both[:-1], int(both[-1].item())
        self._val_values = (sums / self._val_count).tolist() if self._val_count else None

    def after_epoch(self, learn) -> None:
        self.epoch_iterations.append(learn.iteration)
        self.trn_losses.append(self.smooth_loss)
        vals, self._val_values = self._val_values, None
        if vals is None:
            vals = [float("nan")] * (1 + len(self.metric_names))
        self.val_losses.append(vals[0])
        self.metrics.append(list(vals[1:]))
        self.last_values = list(vals)
        sched = getattr(learn, "schedule", None)
        if sched is not None and sched.is_cycle_end(learn.iteration):
            self.cycle_ends.append(learn.iteration)

    # ----------------------------------------------------------------- helpers
    def _sync(self) -> None:
        """Read the pending training losses back to the host (one transfer) and extend the history."""
        pending, self._pending = self._pending, []
        real = [t for t in pending if t is not None]
        if not pending:
            return
        read = iter(torch.stack(real).reshape(-1).float().tolist() if real else [])
        for t in pending:
            if t is None:  # a batch cancelled before its loss: a gap in the curve
                v = float("nan")
            else:
                v = next(read)
                if not math.isfinite(v) and self.nonfinite_at is None:
                    self.nonfinite_at = self.first_iteration + len(self.losses)
            self.losses.append(v)
            if not math.isnan(v):
                self._ema_n += 1
                self._ema = self.beta * self._ema + (1 - self.beta) * v
            self.smooth_losses.append(self.smooth_loss)

    # ----------------------------------------------------------------- plots
    def plot_lr(self, ax=None, show_cycles: bool = True):
        """LR of every param group vs iteration, with cycle ends marked. Returns the Figure."""
        fig, ax = _fig_ax(ax)
        lrs = np.asarray(self.group_lrs, dtype=float)
        if lrs.size:
            for g in range(lrs.shape[1]):
                ax.plot(self.iterations, lrs[:, g], label=f"group {g}" if lrs.shape[1] > 1 else "lr")
        if show_cycles:
            for i, it in enumerate(self.cycle_ends):
                ax.axvline(it - 0.5, color="grey", ls=":", lw=1, label="cycle end" if i == 0 else None)
        ax.set_xlabel("iteration")
        ax.set_ylabel("learning rate")
        if lrs.size and (lrs.shape[1] > 1 or self.cycle_ends):
            ax.legend(loc="best")
        return _done(fig)

    def plot_loss(self, ax=None, n_skip: int = 0):
        """Training loss (raw and smoothed) per iteration and validation loss per epoch. Returns the Figure."""
        fig, ax = _fig_ax(ax)
        its = np.asarray(self.iterations[: len(self.losses)])
        ax.plot(its[n_skip:], self.losses[n_skip:], alpha=0.35, label="train loss")
        ax.plot(its[n_skip:], self.smooth_losses[n_skip:], label="train loss (smoothed)")
        val = np.asarray(self.val_losses, dtype=float)
        if val.size and not np.all(np.isnan(val)):
            ax.plot(np.asarray(self.epoch_iterations) - 1, val, "o-", label="validation loss")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.legend(loc="best")
        return _done(fig)

    def plot(self, n_skip: int = 10, n_skip_end: int = 5, ax=None):
        """After ``learn.lr_find()``: smoothed training loss against LR (log axis), the suggested LR marked,
        skipping the first `n_skip` and last `n_skip_end` batches. Returns the Figure."""
        if self.finder is None:
            raise ValueError("sched.plot() shows the LR range test: run learn.lr_find() first "
                             "(plot_lr() and plot_loss() show the last fit)")
        return self.finder.plot(n_skip=n_skip, n_skip_end=n_skip_end, ax=ax)

    def plot_lars(self, ax=None, max_layers: int = 12):
        """The LARS trust ratio of each layer against iteration (after a fit with ``callbacks=[LARS()]``).
        Returns the Figure."""
        if self.lars is None:
            raise ValueError("plot_lars() shows what LARS recorded: fit with callbacks=[LARS()] first")
        return self.lars.plot(ax=ax, max_layers=max_layers)

    def plot_metrics(self, ax=None):
        """Validation metrics per epoch. Returns the Figure."""
        fig, ax = _fig_ax(ax)
        m = np.asarray(self.metrics, dtype=float)
        epochs = np.arange(1, len(self.metrics) + 1)
        for j, name in enumerate(self.metric_names):
            ax.plot(epochs, m[:, j], "o-", label=name)
        ax.set_xlabel("epoch")
        if self.metric_names:
            ax.legend(loc="best")
        return _done(fig)


_lr_of = operator.itemgetter("lr")


def _metric_name(m) -> str:
    return getattr(m, "__name__", None) or getattr(m, "name", None) or type(m).__name__


def _batch_size(learn) -> int:
    if learn.yb:
        y = learn.yb[0]
        return int(y.shape[0]) if hasattr(y, "shape") and len(y.shape) else 1
    x = learn.xb[0] if learn.xb else None
    return int(x.shape[0]) if hasattr(x, "shape") and len(x.shape) else 1


def _as_tensor(v, like: torch.Tensor) -> torch.Tensor:
    if torch.is_tensor(v):
        return v.detach().reshape(()).float()
    return torch.tensor(float(v), device=like.device)


def _fig_ax(ax, figsize=(7, 4)):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def _done(fig):
    """Detach the figure from pyplot so Jupyter shows the returned Figure once (not twice)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    plt.close(fig)
    return fig
