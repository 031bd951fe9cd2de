"""Learning-rate (and momentum) schedules as pure functions of the training position, and the callback
that applies them every batch.

A schedule maps the global iteration (0-based index of a training batch within the fit) to one LR per
param group, and optionally one momentum per group. Cycle index, position inside a cycle and "did this
batch end a cycle" are all derived from the iteration, never counted on the way, so resuming needs only
the position. fastai 0.7's schedules: constant (`ConstantLR`), SGDR (`SGDR`, ``cycle_len``), cyclical LR
(`CyclicLR`, ``use_clr``) and 1cycle (`OneCycle`, ``use_clr_beta``); plus `StepDecay`.
"""
from __future__ import annotations

import bisect
import itertools
import math
from typing import List, Optional, Sequence, Tuple

from ..core import Callback
from ..optim import get_momentum, set_momentum

__all__ = ["Schedule", "ConstantLR", "StepDecay", "SGDR", "CyclicLR", "OneCycle", "ParamScheduler"]


class Schedule:
    """A pure map ``iteration -> per-group LRs`` over `n_epochs` epochs of `batches_per_epoch` batches."""

    def __init__(self, base_lrs: Sequence[float], batches_per_epoch: int, n_epochs: int):
        self.base_lrs = [float(lr) for lr in base_lrs]
        self.batches_per_epoch = int(batches_per_epoch)
        self.n_epochs = int(n_epochs)

    @property
    def total_iterations(self) -> int:
        """Training batches in the whole fit."""
        return self.n_epochs * self.batches_per_epoch

    def factor(self, iteration: int) -> float:
        """Multiplier applied to every group's base LR at `iteration`."""
        return 1.0

    def lrs_at(self, iteration: int) -> List[float]:
        """LR of each param group for the batch with global index `iteration`."""
        f = self.factor(iteration)
        return [lr * f for lr in self.base_lrs]

    def moms_at(self, iteration: int) -> Optional[List[float]]:
        """Momentum of each param group for the batch `iteration`, or None to leave the optimizer's as it is."""
        return None

    def cycle_ends(self) -> List[int]:
        """Iteration counts at which a cycle ends (empty for schedules without cycles)."""
        return []

    def cycle_ends_between(self, after: int, upto: int) -> List[int]:
        """The cycle ends in ``(after, upto]`` (iteration counts)."""
        return [e for e in self.cycle_ends() if after < e <= upto]

    def cycle_ending_at(self, done: int) -> Optional[int]:
        """Index of the cycle that ends when `done` iterations are done, else None."""
        ends = self.cycle_ends()
        return ends.index(done) if done in ends else None

    def is_cycle_end(self, done: int) -> bool:
        """True when the first `done` iterations end exactly at a cycle boundary."""
        return self.cycle_ending_at(done) is not None

    def cycle_index(self, iteration: int) -> int:
        """0-based index of the cycle that contains `iteration` (0 without cycles)."""
        return 0

    def cycle_epochs(self, iteration: int) -> float:
        """Epochs in the cycle that contains `iteration` (1 for schedules without cycles, as fastai 0.7)."""
        return 1

    def phase_starts(self) -> List[Tuple[int, str]]:
        """``(iteration, label)`` where each training phase begins (none for schedules without phases)."""
        return []

    def describe(self) -> dict:
        """Plain-data description (for checkpoints and reprs)."""
        return {"kind": type(self).__name__, "base_lrs": self.base_lrs,
                "batches_per_epoch": self.batches_per_epoch, "n_epochs": self.n_epochs}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "kind")
        return f"{type(self).__name__}({args})"


class ConstantLR(Schedule):
    """The same LRs for every batch: fastai 0.7's ``fit(lrs, n_epochs)`` without ``cycle_len``."""


class StepDecay(Schedule):
    """Step decay: ``lr = base_lr * gamma**k`` where k is the number of `milestones` (epochs) already
    reached, e.g. ``milestones=(20, 30)``: base LR, then /10 from epoch 20, /100 from epoch 30."""

    def __init__(self, base_lrs: Sequence[float], batches_per_epoch: int, n_epochs: int,
                 milestones: Sequence[int] = (), gamma: float = 0.1):
        super().__init__(base_lrs, batches_per_epoch, n_epochs)
        self.milestones, self.gamma = sorted(int(m) for m in milestones), float(gamma)

    def factor(self, iteration: int) -> float:
        epoch = iteration // self.batches_per_epoch
        return self.gamma ** sum(epoch >= m for m in self.milestones)

    def describe(self) -> dict:
        d = super().describe()
        d.update(milestones=self.milestones, gamma=self.gamma)
        return d


class SGDR(Schedule):
    """Cosine annealing with warm restarts (Loshchilov & Hutter 2017), fastai 0.7 semantics.

    Cycle c has ``nb_c = batches_per_epoch * cycle_len * cycle_mult**c`` batches; at batch t of a
    cycle, ``lr = lr_max/2 * (1 + cos(pi * t / nb_c))``. With `warmup`, the first ``nb_0/20``
    iterations of the fit run at ``lr_max/100`` (they still count towards the first cycle)."""

    def __init__(self, base_lrs: Sequence[float], batches_per_epoch: int, n_cycle: int, cycle_len: int,
                 cycle_mult: int = 1, warmup: bool = True):
        self.n_cycle, self.cycle_len, self.cycle_mult = int(n_cycle), int(cycle_len), int(cycle_mult)
        self.warmup = bool(warmup)
        # the only cycle arithmetic: lengths and ends of the fit's cycles, and of one more (the position
        # after the last batch points into it)
        self._lengths = [batches_per_epoch * self.cycle_len * self.cycle_mult ** c for c in range(self.n_cycle + 1)]
        self._ends = list(itertools.accumulate(self._lengths))
        super().__init__(base_lrs, batches_per_epoch, self._ends[self.n_cycle - 1] // batches_per_epoch)

    @property
    def first_cycle_len(self) -> int:
        """Batches in the first cycle (fastai's ``nb``)."""
        return self._lengths[0]

    def locate(self, iteration: int) -> Tuple[int, int, int]:
        """``(cycle index, batch index inside the cycle, cycle length)`` of a global iteration."""
        if not 0 <= iteration < self._ends[-1]:
            raise ValueError(f"iteration must be in [0, {self.total_iterations}], got {iteration}")
        cycle = bisect.bisect_right(self._ends, iteration)
        start = self._ends[cycle - 1] if cycle else 0
        return cycle, iteration - start, self._lengths[cycle]

    def factor(self, iteration: int) -> float:
        if self.warmup and iteration * 20 < self._lengths[0]:
            return 0.01
        _, t, length = self.locate(iteration)
        return 0.5 * (1.0 + math.cos(math.pi * t / length))

    def cycle_ends(self) -> List[int]:
        return self._ends[:self.n_cycle]

    def cycle_index(self, iteration: int) -> int:
        return self.locate(iteration)[0]

    def cycle_epochs(self, iteration: int) -> float:
        return self.locate(iteration)[2] / self.batches_per_epoch

    def describe(self) -> dict:
        d = super().describe()
        d.update(n_cycle=self.n_cycle, cycle_len=self.cycle_len, cycle_mult=self.cycle_mult, warmup=self.warmup)
        return d


class _EqualCycles(Schedule):
    """`n_cycle` cycles of ``nb = batches_per_epoch * cycle_len`` batches, with optional momentum
    ``moms = (mom_hi, mom_lo)``; `_shape(k)` gives the LR factor and momentum at batch k of a cycle."""

    def __init__(self, base_lrs: Sequence[float], batches_per_epoch: int, n_cycle: int, cycle_len: int,
                 moms: Optional[Sequence[float]] = None):
        self.n_cycle, self.cycle_len = int(n_cycle), int(cycle_len)
        self.moms = None if moms is None else (float(moms[0]), float(moms[1]))
        super().__init__(base_lrs, batches_per_epoch, self.n_cycle * self.cycle_len)
        self.nb = self.batches_per_epoch * self.cycle_len

    def _shape(self, k: int) -> Tuple[float, float]:
        raise NotImplementedError

    def factor(self, iteration: int) -> float:
        return self._shape(iteration % self.nb)[0]

    def moms_at(self, iteration: int) -> Optional[List[float]]:
        if self.moms is None:
            return None
        return [self._shape(iteration % self.nb)[1]] * len(self.base_lrs)

    def cycle_ends(self) -> List[int]:
        return [self.nb * (c + 1) for c in range(self.n_cycle)]

    def cycle_index(self, iteration: int) -> int:
        return iteration // self.nb

    def cycle_epochs(self, iteration: int) -> float:
        return self.cycle_len

    def describe(self) -> dict:
        d = super().describe()
        d.update(n_cycle=self.n_cycle, cycle_len=self.cycle_len, moms=self.moms)
        return d


class CyclicLR(_EqualCycles):
    """fastai 0.7's ``use_clr=(div, cut_div[, mom_hi, mom_lo])``: in each cycle of nb batches the LR rises
    linearly from ``base/div`` to ``base`` over ``cut = nb // cut_div`` batches, then falls back:
    ``p = k/cut`` (k <= cut) else ``1 - (k-cut)/(nb-cut)``; ``lr = base * (1 + p*(div-1)) / div``;
    momentum ``mom_lo + (1-p)*(mom_hi - mom_lo)`` at the same batch."""

    def __init__(self, base_lrs: Sequence[float], batches_per_epoch: int, n_cycle: int, cycle_len: int,
                 div: float, cut_div: float, moms: Optional[Sequence[float]] = None):
        super().__init__(base_lrs, batches_per_epoch, n_cycle, cycle_len, moms)
        self.div, self.cut_div = float(div), float(cut_div)
        self.cut = int(self.nb // self.cut_div)
        if self.cut < 1:
            raise ValueError(f"use_clr: cut_div={cut_div:g} leaves no batch to rise over in a cycle of {self.nb} "
                             f"batches; use a cut_div of at most {self.nb}")

    def _shape(self, k: int) -> Tuple[float, float]:
        p = k / self.cut if k <= self.cut else 1 - (k - self.cut) / (self.nb - self.cut)
        lr = (1 + p * (self.div - 1)) / self.div
        if self.moms is None:
            return lr, 0.0
        hi, lo = self.moms
        return lr, lo + (1 - p) * (hi - lo)

    def describe(self) -> dict:
        d = super().describe()
        d.update(div=self.div, cut_div=self.cut_div)
        return d


class OneCycle(_EqualCycles):
    """fastai 0.7's ``use_clr_beta=(div, pct[, mom_hi, mom_lo])`` (1cycle, Smith 2018): with
    ``c = int(nb * (1 - pct/100) / 2)``, the LR rises linearly from ``base/div`` to ``base`` over c batches,
    falls back over c, then anneals to ``base/div * (1 - 0.99*(k-2c)/(nb-2c))``; momentum goes the other way,
    ``mom_hi -> mom_lo -> mom_hi``, then stays at ``mom_hi``."""

    def __init__(self, base_lrs: Sequence[float], batches_per_epoch: int, n_cycle: int, cycle_len: int,
                 div: float, pct: float, moms: Optional[Sequence[float]] = None):
        super().__init__(base_lrs, batches_per_epoch, n_cycle, cycle_len, moms)
        self.div, self.pct = float(div), float(pct)
        self.c = int(self.nb * (1 - self.pct / 100) / 2)
        if self.c < 1:
            raise ValueError(f"use_clr_beta: pct={pct:g} leaves no batch for the rise in a cycle of {self.nb} "
                             f"batches; use a smaller pct or a longer cycle")

    def _shape(self, k: int) -> Tuple[float, float]:
        c, div = self.c, self.div
        if k > 2 * c:
            lr, p = (1 - 0.99 * (k - 2 * c) / (self.nb - 2 * c)) / div, 0.0
        else:
            p = k / c if k <= c else 1 - (k - c) / c
            lr = (1 + p * (div - 1)) / div
        if self.moms is None:
            return lr, 0.0
        hi, lo = self.moms
        return lr, hi + p * (lo - hi)

    def describe(self) -> dict:
        d = super().describe()
        d.update(div=self.div, pct=self.pct)
        return d


class ParamScheduler(Callback):
    """Sets every param group's LR (and momentum, when the schedule has one) from `schedule` before each
    training batch, and each group's weight decay from `wds` at the start of the fit. Publishes the schedule
    as ``learn.schedule``. Momentum goes to a group's ``momentum`` (SGD, RMSprop) or ``betas[0]`` (Adam)."""

    order = -20

    def __init__(self, schedule: Schedule, wds: Sequence[float] = ()):
        self.schedule = schedule
        self.wds = [float(w) for w in wds]

    def before_fit(self, learn) -> None:
        learn.schedule = self.schedule
        groups = learn.opt.param_groups
        for i, (g, wd) in enumerate(zip(groups, self.wds)):
            if "weight_decay" in g:
                g["weight_decay"] = wd
            elif wd:
                raise ValueError(
                    f"wds[{i}]={wd} but {type(learn.opt).__name__} has no weight_decay setting; "
                    "pass wds=0 (or None) for this optimizer")
        if self.schedule.moms_at(learn.position.iteration) is not None and any(get_momentum(g) is None
                                                                                 for g in groups):
            raise ValueError(f"this schedule sets the momentum but {type(learn.opt).__name__} has neither momentum "
                             "nor betas; use SGD(momentum=...), RMSprop or Adam, or leave the momentum values out")
        self._apply(learn)

    def _apply(self, learn) -> None:
        it, groups = learn.position.iteration, learn.opt.param_groups
        for g, lr in zip(groups, self.schedule.lrs_at(it)):
            g["lr"] = lr
        moms = self.schedule.moms_at(it)
        if moms is not None:
            for g, m in zip(groups, moms):
                set_momentum(g, m)

    def before_batch(self, learn) -> None:
        if learn.training:
            self._apply(learn)
