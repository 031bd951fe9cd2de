"""The LR range test (Smith 2015; fastai 0.7's ``lr_find``).

One pass over the training data raises every param group's LR each batch, exponentially (or
linearly) from `start_lr` to `end_lr`, and watches the debiased moving average of the training loss
(beta = 0.98); it stops when that loss is NaN/inf or exceeds 4x the best seen (best counted from the
10th batch on). The model weights, optimizer state, BatchNorm statistics, RNG states, position and
the recorder of earlier fits are put back exactly as they were. Losses are read back every
`check_every` batches, not every batch.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence

import numpy as np
import torch

from ..checks import check_int, per_group
from ..core import Callback, CancelFitException, CancelValidException
from ..data.core import n_train_batches
from ..plots import finish_figure, new_figure
from ..position import Position
from ..resume import preserved_state
from ..smoothing import DebiasedEMA, smooth
from .precision import MixedPrecision
from .schedule import ParamScheduler, Schedule

__all__ = ["LRRangeSchedule", "LRFinder", "LRFinderResult", "SuggestedLRs", "lr_find", "DivergenceRule",
           "StopOnDivergence"]


class DivergenceRule:
    """The LR finder's stop rule (fastai 0.7): the debiased moving average of the training loss (beta 0.98) is
    NaN or infinite, or more than 4x the lowest average seen from the 11th loss on."""

    def __init__(self, beta: float = 0.98):
        self.ema, self.best, self.seen = DebiasedEMA(beta), math.inf, 0

    def diverged(self, loss: float) -> bool:
        """Fold in the next loss; True when the rule says stop."""
        sm = self.ema.update(loss)
        if not math.isfinite(loss) or not math.isfinite(sm) or sm > 4 * self.best:
            return True
        if self.seen >= 10 and sm < self.best:
            self.best = sm
        self.seen += 1
        return False

    def state_dict(self) -> dict:
        """Plain-data copy."""
        return {**self.ema.state_dict(), "best": self.best, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        """Restore a copy made by `state_dict`."""
        self.ema.load_state_dict(state)
        self.best, self.seen = float(state["best"]), int(state["seen"])


def _mean_over_ranks(learn, t: torch.Tensor) -> torch.Tensor:
    """`t` averaged over the processes of a torchrun job: every rank takes the same decision."""
    if learn.is_distributed:
        t = learn.all_reduce_sum(t.clone()) / torch.distributed.get_world_size()
    return t


class SuggestedLRs(NamedTuple):
    """LRs suggested by the range test (for the last param group): `steep`, where the smoothed loss
    falls fastest against log(LR), and `min_div10`, a tenth of the LR at the minimum smoothed loss."""

    steep: float
    min_div10: float


class LRRangeSchedule(Schedule):
    """``lr_g(i) = start_g * f(i)`` with ``f(i) = ratio**(i/(n-1))`` (or ``1 + (ratio-1)*i/(n-1)`` when
    `linear`), ``ratio = end/start`` of the last group: every group moves by the same factor."""

    def __init__(self, start_lrs: Sequence[float], ratio: float, num_it: int, batches_per_epoch: int,
                 linear: bool = False):
        super().__init__(start_lrs, batches_per_epoch, math.ceil(num_it / batches_per_epoch))
        self.ratio, self.num_it, self.linear = float(ratio), int(num_it), linear

    def factor(self, iteration: int) -> float:
        t = min(iteration, self.num_it - 1) / max(self.num_it - 1, 1)
        return 1 + (self.ratio - 1) * t if self.linear else self.ratio ** t


class LRFinderResult:
    """What a range test saw: `lrs` (last group), raw `losses` and `smooth_losses` per batch, and where
    it stopped. `plot` draws loss against LR; `suggest` picks LRs from the smoothed curve."""

    def __init__(self, lrs: List[float], losses: List[float], beta: float = 0.98, diverged: bool = False):
        self.lrs, self.losses, self.diverged = lrs, losses, diverged
        self.smooth_losses = smooth(losses, beta)

    def _window(self, n_skip: int, n_skip_end: int):
        n = len(self.lrs)
        lo, hi = n_skip, n - n_skip_end
        if hi - lo < 3:  # too short a run to skip anything
            lo, hi = 0, n
        lrs, sm = np.asarray(self.lrs[lo:hi], float), np.asarray(self.smooth_losses[lo:hi], float)
        ok = np.isfinite(sm) & (lrs > 0)
        return lrs[ok], sm[ok]

    def suggest(self, n_skip: int = 10, n_skip_end: int = 5) -> SuggestedLRs:
        """`SuggestedLRs` from the smoothed loss, skipping the first `n_skip` and last `n_skip_end` batches."""
        lrs, sm = self._window(n_skip, n_skip_end)
        if len(lrs) < 2:
            return SuggestedLRs(float("nan"), float("nan"))
        slope = np.gradient(sm, np.log10(lrs))
        return SuggestedLRs(float(lrs[int(np.argmin(slope))]), float(lrs[int(np.argmin(sm))] / 10))

    def plot(self, n_skip: int = 10, n_skip_end: int = 5, ax=None, show_suggestion: bool = True):
        """Smoothed (and raw) training loss against LR on a log axis, the suggested LR marked. Returns the Figure."""
        fig, ax = new_figure(ax)
        n = len(self.lrs)
        sl = slice(n_skip, n - n_skip_end) if n - n_skip - n_skip_end >= 3 else slice(0, n)
        ax.plot(self.lrs[sl], self.losses[sl], alpha=0.3, label="loss")
        ax.plot(self.lrs[sl], self.smooth_losses[sl], label="smoothed loss")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("training loss")
        if show_suggestion:
            s = self.suggest(n_skip, n_skip_end)
            if np.isfinite(s.steep):
                y = float(np.interp(np.log10(s.steep), np.log10(self.lrs[sl]), self.smooth_losses[sl]))
                ax.plot([s.steep], [y], "ro", label=f"steepest: {s.steep:.2e}")
                ax.axvline(s.min_div10, color="grey", ls=":", label=f"min/10: {s.min_div10:.2e}")
        ax.legend(loc="best")
        return finish_figure(fig)


class LRFinder(Callback):
    """Records the loss of each batch of a range test (on the device) and stops it at `num_it` batches or
    when the smoothed loss diverges; validation is skipped. Reads the losses back every `check_every` batches."""

    order = 40

    def __init__(self, num_it: int, beta: float = 0.98, check_every: int = 5, stop_div: bool = True):
        self.num_it, self.beta, self.check_every, self.stop_div = num_it, beta, check_every, stop_div
        self.lrs: List[float] = []
        self.losses: List[float] = []
        self.diverged = False

    def before_fit(self, learn) -> None:
        self._buf = None
        self._rule = DivergenceRule(self.beta)

    def after_loss(self, learn) -> None:
        if learn.training:
            if self._buf is None:
                self._buf = torch.full((self.num_it,), float("nan"), device=learn.loss.device)
            self._buf[learn.position.iteration] = learn.loss.detach().float()

    def after_batch(self, learn) -> None:
        if not learn.training:
            return
        self.lrs.append(learn.opt.param_groups[-1]["lr"])
        done = learn.position.iters_done
        if done % self.check_every == 0 or done >= self.num_it:
            self._check(done, learn)
        if self.diverged or done >= self.num_it:
            raise CancelFitException()

    def _check(self, done: int, learn) -> None:
        start = len(self.losses)
        for i, v in enumerate(_mean_over_ranks(learn, self._buf[start:done]).tolist(), start=start):
            self.losses.append(v)
            if self._rule.diverged(v) and self.stop_div:
                self.diverged = True
                del self.lrs[i + 1:]
                return

    def before_validate(self, learn) -> None:
        raise CancelValidException()

    def result(self) -> LRFinderResult:
        """The recorded run."""
        return LRFinderResult(self.lrs, self.losses, self.beta, self.diverged)


class StopOnDivergence(Callback):
    """``stop_div=True`` of training phases: stop the fit (CancelFitException) when the training loss diverges
    by `DivergenceRule`. The losses stay on the device and are read back every `check_every` training batches
    (no host sync per batch), so the fit stops at the first check after the divergent batch."""

    order = 58  # after the recorder (50): the batch that ends the fit is recorded
    state_key = "stop_on_divergence"

    def __init__(self, check_every: int = 5, beta: float = 0.98):
        self.check_every, self.beta = check_int("check_every", check_every), beta
        self.rule = DivergenceRule(beta)
        self._pending: List[torch.Tensor] = []  # losses on the device, not read back yet
        self._carried: List[float] = []  # losses read back (for a checkpoint) but not checked yet

    def before_fit(self, learn) -> None:
        self.rule, self._pending, self._carried = DivergenceRule(self.beta), [], []

    def after_batch(self, learn) -> None:
        if learn.training and learn.loss is not None:
            self._pending.append(learn.loss.detach().float().reshape(()))
            if learn.position.iters_done % self.check_every == 0 and any(map(self.rule.diverged, self._read(learn))):
                raise CancelFitException()

    def _read(self, learn) -> List[float]:
        """The losses since the last check, averaged over the ranks (those carried through a checkpoint too)."""
        raw = ([torch.tensor(self._carried, dtype=torch.float32, device=self._pending[0].device)]
               if self._carried and self._pending else [torch.tensor(self._carried)] if self._carried else [])
        raw += [torch.stack(self._pending)] if self._pending else []
        self._pending, self._carried = [], []
        return _mean_over_ranks(learn, torch.cat(raw)).tolist() if raw else []

    def state_dict(self) -> dict:
        """The rule's state and this rank's losses not checked yet (for checkpoints; averaged over the ranks at
        the next check, as they would have been without the checkpoint)."""
        self._carried = self._carried + (torch.stack(self._pending).tolist() if self._pending else [])
        self._pending = []
        return {"rule": self.rule.state_dict(), "carried": list(self._carried)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved."""
        self.rule.load_state_dict(state["rule"])
        self._carried, self._pending = [float(v) for v in state["carried"]], []


def lr_find(learn, start_lr=1e-5, end_lr=10, num_it: Optional[int] = None, linear: bool = False, wds=None,
            check_every: int = 5, stop_div: bool = True, amp: Optional[str] = None) -> SuggestedLRs:
    """Run the LR range test on `learn` and restore it exactly; the run is kept as ``learn.sched.finder``
    (plot it with ``learn.sched.plot()``). `start_lr`/`end_lr` are floats or one value per param group
    (the groups move together, by the last group's ratio). Returns `SuggestedLRs`."""
    n_batches = n_train_batches(learn.data.train_dl)
    num_it = n_batches if num_it is None else check_int("num_it", num_it, 2, "an int >= 2 (batches in the range test)")
    finder = LRFinder(num_it, check_every=check_every, stop_div=stop_div)
    recorder = learn.recorder
    with preserved_state(learn):  # weights, optimizer, RNG, position, schedule: all as they were afterwards
        opt = learn.opt if learn.opt is not None else learn.create_opt()
        n_groups = len(opt.param_groups)
        starts, ends = per_group("start_lr", start_lr, n_groups), per_group("end_lr", end_lr, n_groups)
        if starts[-1] <= 0 or ends[-1] <= starts[-1]:
            raise ValueError(f"lr_find needs 0 < start_lr < end_lr, got start_lr={start_lr!r}, end_lr={end_lr!r}")
        wd_vals = per_group("wds", learn.wd if wds is None else wds, n_groups)
        schedule = LRRangeSchedule(starts, ends[-1] / starts[-1], num_it, n_batches, linear)
        cbs = [ParamScheduler(schedule, wd_vals), finder, *([MixedPrecision(amp)] if amp else [])]
        if recorder is not None:  # the history of earlier fits stays out of reach of the range test
            learn.remove_cbs([recorder])
        try:
            learn.run_fit(Position(n_epochs=schedule.n_epochs, n_batches=n_batches), cbs)
        finally:
            if recorder is not None:
                learn.add_cbs([recorder])
    res = finder.result()
    if recorder is not None:
        recorder.finder = res
    return res.suggest()
