"""The recorder, published as ``learn.sched`` (fastai 0.7's name): per batch the LR of every
param group and the training loss, per epoch the validation loss and metrics, and the plots.

Losses stay on the device: each training loss (a detached 0-d tensor) is kept until the recorder
reads them all back with one transfer, every `sync_every` batches and at the end of the epoch;
validation sums are accumulated on the device and read back once per epoch."""
from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..checks import check_int
from ..core import Callback
from ..metrics import as_epoch_metric, is_epoch_metric, metric_name
from ..optim import get_momentum
from ..plots import finish_figure, new_figure
from ..smoothing import DebiasedEMA, smooth
from .lars import LARS

__all__ = ["Recorder", "smooth"]


class Recorder(Callback):
    """Records the fit; `learn.sched` (and `learn.recorder`) is this object. Read values through its
    attributes: `lrs` (last group, per iteration), `group_lrs` (all groups), `losses`, `smooth_losses`,
    `val_losses`, `metrics` (per epoch), `epoch_iterations`, `cycle_ends`; `nonfinite` says where the
    training loss first became NaN or infinite. `finder` holds the last LR range test (set by
    ``learn.lr_find()``), `lars` the LARS (or LAMB) callback of the last fit that had one."""

    order = 50
    state_key = "recorder"

    def __init__(self, sync_every: int = 25, beta: float = 0.98):
        self.sync_every = check_int("sync_every", sync_every, what="a positive int (batches between reads of the loss)")
        self.beta = beta
        self.finder = None
        self.lars = None
        self.reset()

    # ----------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget everything recorded (called at the start of each fit)."""
        self.group_lrs: List[List[float]] = []
        self.group_moms: List[List[Optional[float]]] = []
        self.phase_starts: List[List[Any]] = []  # [iteration, label] where each training phase begins
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
        self.nonfinite: Optional[Dict[str, Any]] = None  # {'iteration', 'epoch', 'batch', 'loss'} of the first bad loss
        self._ema = DebiasedEMA(self.beta)
        self._pending: List[Optional[torch.Tensor]] = []  # training losses not read back yet (None: no loss)
        self._pending_at = (0, 0, 0)  # (epoch, batch_idx, iteration) of the first pending loss
        self._val_sums: Optional[torch.Tensor] = None  # validation loss and metrics, summed over samples
        self._val_values: Optional[List[float]] = None  # this epoch's [val_loss, *metrics], once read back
        self._val_count = 0

    @property
    def lrs(self) -> List[float]:
        """LR of the last param group at each iteration (what fastai 0.7's ``sched.lrs`` held)."""
        return [g[-1] for g in self.group_lrs]

    @property
    def moms(self) -> List[Optional[float]]:
        """Momentum of the last param group at each iteration (``momentum``, or Adam's ``betas[0]``)."""
        return [g[-1] for g in self.group_moms]

    @property
    def iterations(self) -> List[int]:
        """Global iteration of each recorded training batch (a fit started at a later cycle starts there)."""
        return list(range(self.first_iteration, self.first_iteration + len(self.group_lrs)))

    @property
    def smooth_loss(self) -> float:
        """The current debiased moving average of the training loss (NaN before any batch)."""
        return self._ema.value

    @property
    def nonfinite_at(self) -> Optional[int]:
        """Iteration of the first NaN or infinite training loss read back (None while all are finite)."""
        return self.nonfinite["iteration"] if self.nonfinite is not None else None

    def flush(self) -> None:
        """Read back the training losses still waiting on the device (one transfer)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        real = [t for t in pending if t is not None]
        read = iter(torch.stack(real).reshape(-1).float().tolist() if real else [])
        epoch, batch, iteration = self._pending_at
        for i, t in enumerate(pending):
            v = float("nan") if t is None else next(read)  # a batch cancelled before its loss: a gap
            if t is not None and not math.isfinite(v) and self.nonfinite is None:
                self.nonfinite = {"iteration": iteration + i, "epoch": epoch, "batch": batch + i, "loss": v}
            self.losses.append(v)
            self.smooth_losses.append(self._ema.update(v))

    _HISTORY = ("group_lrs", "group_moms", "phase_starts", "losses", "smooth_losses", "epoch_iterations",
                "trn_losses", "epoch_means", "val_losses", "metrics", "metric_names", "cycle_ends", "first_iteration",
                "nonfinite", "last_values")

    def state_dict(self) -> Dict[str, Any]:
        """Plain-data copy of the history (for checkpoints); pending device values are read first."""
        self.flush()
        return {k: getattr(self, k) for k in self._HISTORY} | self._ema.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a history saved by `state_dict`."""
        self._ema.load_state_dict(state)
        for k in self._HISTORY:
            v = state.get(k)
            if isinstance(v, (list, tuple)):
                v = [list(x) if isinstance(x, (list, tuple)) else x for x in v]
            if k in state:
                setattr(self, k, v)

    # ----------------------------------------------------------------- events
    def before_fit(self, learn) -> None:
        self.reset()
        self.metric_names = [metric_name(m) for m in learn.metrics]
        self._batch_metrics = [(m, n) for m, n in zip(learn.metrics, self.metric_names) if not is_epoch_metric(m)]
        self._host_metrics = set()  # metrics that turned out to need host tensors (they convert to NumPy)
        self._epoch_metrics = [as_epoch_metric(m) for m in learn.metrics if is_epoch_metric(m)]
        for m in self._epoch_metrics:
            if callable(getattr(m, "to", None)):
                m.to(learn.device)
        self.first_iteration = learn.position.iteration
        self.lars = next((cb for cb in learn.cbs if isinstance(cb, LARS)), self.lars)
        self.phase_starts = [list(p) for p in learn.schedule.phase_starts()] if learn.schedule is not None else []

    def before_train(self, learn) -> None:
        self._pending = []

    def after_batch(self, learn) -> None:
        if learn.training:
            groups = learn.opt.param_groups
            self.group_lrs.append(list(map(_lr_of, groups)))
            self.group_moms.append(list(map(get_momentum, groups)))
            if not self._pending:
                pos = learn.position
                self._pending_at = (pos.epoch, pos.batch_idx, pos.iteration)
            loss = learn.loss
            self._pending.append(None if loss is None else loss.detach())
            if len(self._pending) >= self.sync_every:
                self.flush()
        elif learn.loss is not None:
            n = _batch_size(learn)
            vals = [learn.loss.detach().float()]
            vals += [_as_tensor(self._call_metric(i, m, learn), learn.loss, name)
                     for i, (m, name) in enumerate(self._batch_metrics)]
            batch = torch.stack(vals) * n if len(vals) > 1 else vals[0].reshape(1) * n
            self._val_sums = batch if self._val_sums is None else self._val_sums.add_(batch)
            self._val_count += n
            for m in self._epoch_metrics:
                m.update(learn.pred.detach(), *learn.yb)

    def _call_metric(self, i: int, m, learn):
        """``m(pred, *yb)``; a metric that converts a GPU tensor to NumPy (scikit-learn scores, such as the Planet
        notebook's f2) gets host copies instead, from then on (fastai 0.7's tensors converted implicitly)."""
        if i in self._host_metrics:
            return m(learn.pred.detach().cpu(), *(y.cpu() for y in learn.yb))
        try:
            return m(learn.pred, *learn.yb)
        except (TypeError, RuntimeError) as e:
            if learn.pred.device.type == "cpu" or not needs_host_copy(e):
                raise
            self._host_metrics.add(i)
            return self._call_metric(i, m, learn)

    def after_train(self, learn) -> None:
        self.flush()
        epoch_losses = self.losses[len(self.losses) - learn.position.batches_done:]
        finite = [v for v in epoch_losses if not math.isnan(v)]
        self.epoch_means.append(sum(finite) / len(finite) if finite else float("nan"))

    def before_validate(self, learn) -> None:
        self._val_sums, self._val_count = None, 0
        for m in self._epoch_metrics:
            m.reset()

    def after_validate(self, learn) -> None:
        if self._val_sums is None and not learn.is_distributed:
            self._val_values = None
            return
        sums = self._val_sums if self._val_sums is not None else torch.zeros(1 + len(self._batch_metrics),
                                                                              device=learn.device)
        if learn.is_distributed:  # every rank validated its shard: add them up, then average
            both = learn.all_reduce_sum(torch.cat([sums, torch.tensor([float(self._val_count)], device=sums.device)]))
            sums, self._val_count = both[:-1], int(both[-1].item())
        if not self._val_count:
            self._val_values = None
            return
        means = iter((sums / self._val_count).tolist())
        loss, per_epoch = next(means), iter(self._epoch_metrics)
        self._val_values = [loss] + [_epoch_value(next(per_epoch)) if is_epoch_metric(m) else next(means)
                                     for m in learn.metrics]

    def after_epoch(self, learn) -> None:
        done = learn.position.iters_done
        self.epoch_iterations.append(done)
        self.trn_losses.append(self.smooth_loss)
        vals, self._val_values = self._val_values, None
        if vals is None:
            vals = [float("nan")] * (1 + len(self.metric_names))
        self.val_losses.append(vals[0])
        self.metrics.append(list(vals[1:]))
        self.last_values = list(vals)
        if learn.schedule is not None:  # the cycles that ended in this epoch (at its end, or inside it)
            self.cycle_ends += learn.schedule.cycle_ends_between(done - learn.position.batches_done, done)

    # ----------------------------------------------------------------- plots
    def plot_lr(self, ax=None, show_cycles: bool = True, show_moms: bool = False, show_text: bool = False):
        """LR of every param group vs iteration, with cycle ends marked; with `show_moms` (and a momentum that
        varied) the momentum beside it; with `show_text` each training phase's start dashed and labelled with
        its optimizer. Returns the Figure."""
        moms = np.asarray([[np.nan if m is None else m for m in g] for g in self.group_moms], dtype=float)
        with_moms = show_moms and moms.size and np.nanmax(moms) - np.nanmin(moms) > 0
        if with_moms and ax is None:
            import matplotlib.pyplot as plt
            fig, (ax, mom_ax) = plt.subplots(1, 2, figsize=(12, 4))
        else:
            (fig, ax), mom_ax = new_figure(ax), None
        lrs = np.asarray(self.group_lrs, dtype=float)
        for a, values, what in ((ax, lrs, "learning rate"), (mom_ax, moms, "momentum")):
            if a is None:
                continue
            if values.size:
                for g in range(values.shape[1]):
                    a.plot(self.iterations, values[:, g], label=f"group {g}" if values.shape[1] > 1 else what)
            if show_cycles:
                for i, it in enumerate(self.cycle_ends):
                    a.axvline(it - 0.5, color="grey", ls=":", lw=1, label="cycle end" if i == 0 else None)
            if show_text:
                for it, label in self.phase_starts:
                    a.axvline(it - 0.5, color="black", ls="--", lw=1)
                    a.text(it, 1.0, f" {label}", transform=a.get_xaxis_transform(), va="top", fontsize=8)
            a.set_xlabel("iteration")
            a.set_ylabel(what)
            if values.size and (values.shape[1] > 1 or self.cycle_ends):
                a.legend(loc="best")
        return finish_figure(fig)

    def plot_loss(self, ax=None, n_skip: int = 0):
        """Training loss (raw and smoothed) per iteration and validation loss per epoch. Returns the Figure."""
        fig, ax = new_figure(ax)
        its = np.asarray(self.iterations[: len(self.losses)])
        ax.plot(its[n_skip:], self.losses[n_skip:], alpha=0.35, label="train loss")
        ax.plot(its[n_skip:], self.smooth_losses[n_skip:], label="train loss (smoothed)")
        val = np.asarray(self.val_losses, dtype=float)
        if val.size and not np.all(np.isnan(val)):
            ax.plot(np.asarray(self.epoch_iterations) - 1, val, "o-", label="validation loss")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.legend(loc="best")
        return finish_figure(fig)

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
        fig, ax = new_figure(ax)
        m = np.asarray(self.metrics, dtype=float)
        epochs = np.arange(1, len(self.metrics) + 1)
        for j, name in enumerate(self.metric_names):
            ax.plot(epochs, m[:, j], "o-", label=name)
        ax.set_xlabel("epoch")
        if self.metric_names:
            ax.legend(loc="best")
        return finish_figure(fig)


_lr_of = operator.itemgetter("lr")


def needs_host_copy(error: BaseException) -> bool:
    """True for torch's error on converting a device tensor to NumPy (``can't convert cuda:0 device type tensor
    to numpy. Use Tensor.cpu() ...``)."""
    msg = str(error)
    return "numpy" in msg and ("Tensor.cpu()" in msg or "device type tensor" in msg)


def _epoch_value(m) -> float:
    """``m.compute()`` as a float (one read back, once per epoch)."""
    v = m.compute()
    if torch.is_tensor(v):
        if v.numel() != 1:
            raise TypeError(f"metric {metric_name(m)} computed a tensor of shape {tuple(v.shape)}; an epoch metric "
                            "returns one number (for torchmetrics, average='macro' or 'micro' rather than None)")
        return float(v.item())
    return float(v)


def _batch_size(learn) -> int:
    if learn.yb:
        y = learn.yb[0]
        return int(y.shape[0]) if hasattr(y, "shape") and len(y.shape) else 1
    x = learn.xb[0] if learn.xb else None
    return int(x.shape[0]) if hasattr(x, "shape") and len(x.shape) else 1


def _as_tensor(v, like: torch.Tensor, name: str) -> torch.Tensor:
    """A metric's value for a batch as a 0-d float tensor on the loss's device (no host sync)."""
    if torch.is_tensor(v) and v.numel() == 1 and not v.is_complex():
        return v.detach().reshape(()).float()
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        return torch.tensor(float(v), device=like.device)
    got = f"a tensor of shape {tuple(v.shape)}" if torch.is_tensor(v) else f"{type(v).__name__} {v!r}"
    raise TypeError(f"metric {name} returned {got}; a metric returns one number per batch (a float or a "
                    "one-element tensor), e.g. accuracy(preds, targets)")
