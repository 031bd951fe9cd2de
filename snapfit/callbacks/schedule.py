"""Learning-rate schedules as pure functions of the training position, and the callback that
applies them every batch.

A schedule maps the global iteration (0-based index of a training batch within the fit) to one
LR per param group. Cycle index, position inside a cycle and "did this batch end a cycle" are
all derived from the iteration, never counted on the way, so resuming needs only the position.
"""
from __future__ import annotations

import bisect
import itertools
import math
from typing import List, Optional, Sequence, Tuple

from ..core import Callback

__all__ = ["Schedule", "ConstantLR", "StepDecay", "SGDR", "ParamScheduler"]


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

    def cycle_ends(self) -> List[int]:
        """Iteration counts at which a cycle ends (empty for schedules without cycles)."""
        return []

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

    def describe(self) -> dict:
        d = super().describe()
        d.update(n_cycle=self.n_cycle, cycle_len=self.cycle_len, cycle_mult=self.cycle_mult, warmup=self.warmup)
        return d


class ParamScheduler(Callback):
    """Sets every param group's LR from `schedule` before each training batch, and each group's
    weight decay from `wds` at the start of the fit. Publishes the schedule as ``learn.schedule``."""

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
        self._apply(learn)

    def _apply(self, learn) -> None:
        for g, lr in zip(learn.opt.param_groups, self.schedule.lrs_at(learn.position.iteration)):
            g["lr"] = lr

    def before_batch(self, learn) -> None:
        if learn.training:
            self._apply(learn)
