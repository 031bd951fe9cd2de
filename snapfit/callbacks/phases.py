"""Training phases (fastai 0.7's ``fit_opt_sched`` and ``TrainingPhase``): a fit made of phases, each with its
own length, optimizer, LR and momentum (constant or decaying), weight decay and, optionally, its own data.

At batch j of a phase of n batches (``t = j / n``) a value decays from `start` to `end` by its `DecayType`:
NO ``start``; LINEAR ``start + t*(end-start)``; COSINE ``end + (start-end)/2*(1+cos(pi*t))``; EXPONENTIAL
``start*(end/start)**t``; POLYNOMIAL p ``end + (start-end)*(1-t)**p``. A phase of `epochs` epochs over a loader
of N batches runs ``ceil(epochs * N)`` batches. Phases on the same data share epochs (a phase may end inside
one); a phase with other data starts a new epoch, as fastai 0.7 did.
"""
from __future__ import annotations

import enum
import math
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from ..checks import check_bool, check_callable, check_float, per_group
from ..core import Callback
from ..optim import create_opt, get_momentum
from .schedule import Schedule

__all__ = ["DecayType", "TrainingPhase", "PhaseSchedule", "PhasePlan", "PhaseScheduler"]


class DecayType(enum.IntEnum):
    """How a phase's LR or momentum goes from its start value to its end value (fastai 0.7's values)."""

    NO = 1
    LINEAR = 2
    COSINE = 3
    EXPONENTIAL = 4
    POLYNOMIAL = 5


def decay(start: float, end: float, t: float, kind: DecayType, power: float = 1.0) -> float:
    """The value at fraction `t` (0 <= t < 1) of a phase going from `start` to `end` by `kind`."""
    if kind == DecayType.NO:
        return start
    if kind == DecayType.LINEAR:
        return start + t * (end - start)
    if kind == DecayType.COSINE:
        return end + (start - end) / 2 * (1 + math.cos(math.pi * t))
    if kind == DecayType.EXPONENTIAL:
        return start * (end / start) ** t
    return end + (start - end) * (1 - t) ** power


def _decay_type(name: str, v) -> Tuple[DecayType, float]:
    """`v` as ``(DecayType, power)``: a DecayType, or ``(DecayType.POLYNOMIAL, p)``."""
    if isinstance(v, (tuple, list)) and len(v) == 2 and v[0] == DecayType.POLYNOMIAL:
        return DecayType.POLYNOMIAL, check_float(f"{name}'s power", v[1], minimum=0.0)
    try:
        kind = DecayType(v)
    except (ValueError, TypeError):
        raise ValueError(f"{name} must be a DecayType (NO, LINEAR, COSINE, EXPONENTIAL) or (DecayType.POLYNOMIAL, p), "
                         f"got {v!r}") from None
    if kind == DecayType.POLYNOMIAL:
        raise ValueError(f"{name}=DecayType.POLYNOMIAL needs its power: pass (DecayType.POLYNOMIAL, p)")
    return kind, 1.0


def _is_pair(v) -> bool:
    return isinstance(v, tuple) and len(v) == 2


class TrainingPhase:
    """One phase of `fit_opt_sched`: `epochs` (may be fractional) with the optimizer `opt_fn`, the LR `lr` and
    the momentum `momentum`, each a value (or one per layer group) or a ``(start, end)`` pair decaying by
    `lr_decay` / `momentum_decay` (a value with a decay ends at 0); `beta` sets Adam's ``betas[1]`` (RMSprop's
    ``alpha``); `wds` goes into the optimizer's weight decay (`wd_loss=True`) or is decoupled (False)."""

    def __init__(self, epochs: float = 1, opt_fn: Callable = torch.optim.SGD, lr=1e-2,
                 lr_decay=DecayType.NO, momentum=0.9, momentum_decay=DecayType.NO, beta: Optional[float] = None,
                 wds=None, wd_loss: bool = True):
        self.epochs = check_float("epochs", epochs, what="a number of epochs > 0")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be a number of epochs > 0, got {epochs!r}")
        self.opt_fn = check_callable("opt_fn", opt_fn, "an optimizer class such as torch.optim.SGD")
        self.lr, self.momentum, self.beta, self.wds = lr, momentum, beta, wds
        self.lr_decay = _decay_type("lr_decay", lr_decay)
        self.momentum_decay = _decay_type("momentum_decay", momentum_decay)
        self.wd_loss = check_bool("wd_loss", wd_loss)
        if beta is not None:
            check_float("beta", beta, what="a finite number in [0, 1)")
        for name, v, kind in (("lr", lr, self.lr_decay[0]), ("momentum", momentum, self.momentum_decay[0])):
            if v is None and name == "lr":
                raise ValueError("lr must be a value, one value per layer group, or a (start, end) pair, got None")
            if kind == DecayType.EXPONENTIAL and not _is_pair(v):
                raise ValueError(f"{name}_decay=DecayType.EXPONENTIAL needs {name}=(start, end): it cannot decay to 0")

    def values(self, name: str, n_groups: int) -> Optional[Tuple[List[float], List[float]]]:
        """``(start, end)`` per group of 'lr' or 'momentum' (None: leave the momentum as it is)."""
        v, (kind, _) = getattr(self, name), getattr(self, f"{name}_decay")
        if v is None:
            return None
        start, end = v if _is_pair(v) else (v, v if kind == DecayType.NO else 0.0)
        start, end = per_group(name, start, n_groups), per_group(name, end, n_groups)
        if kind == DecayType.EXPONENTIAL and (0.0 in start or 0.0 in end):
            raise ValueError(f"{name}_decay=DecayType.EXPONENTIAL cannot start or end at 0, got {v!r}")
        return start, end

    def describe(self) -> dict:
        """Plain data (for checkpoints and reprs)."""
        plain = (lambda x: [plain(i) for i in x] if isinstance(x, (list, tuple)) else
                 x.tolist() if hasattr(x, "tolist") else x)
        return {"epochs": self.epochs, "opt_fn": getattr(self.opt_fn, "__name__", repr(self.opt_fn)),
                "lr": plain(self.lr), "lr_decay": [int(self.lr_decay[0]), self.lr_decay[1]],
                "momentum": plain(self.momentum), "momentum_decay": [int(self.momentum_decay[0]),
                                                                     self.momentum_decay[1]],
                "beta": self.beta, "wds": plain(self.wds), "wd_loss": self.wd_loss}

    def __repr__(self) -> str:
        return "TrainingPhase(" + ", ".join(f"{k}={v!r}" for k, v in self.describe().items()) + ")"


class PhasePlan:
    """Where each phase starts and how the fit's epochs fall: phase p runs ``ceil(epochs_p * N_p)`` batches of
    its data (N_p batches per epoch); consecutive phases on the same data share epochs."""

    def __init__(self, phases: Sequence[TrainingPhase], batches_per_epoch: Sequence[int],
                 data_ids: Sequence[int]):
        self.lengths = [math.ceil(p.epochs * n) for p, n in zip(phases, batches_per_epoch)]
        self.starts = [sum(self.lengths[:i]) for i in range(len(phases))]
        self.total = sum(self.lengths)
        self.epoch_sizes: List[int] = []
        self.epoch_data: List[int] = []  # index of the phase whose data each epoch trains on
        i = 0
        while i < len(phases):  # a run of phases on the same data: epochs of that data's N batches
            j = i
            while j + 1 < len(phases) and data_ids[j + 1] == data_ids[i]:
                j += 1
            run, n = sum(self.lengths[i:j + 1]), batches_per_epoch[i]
            self.epoch_sizes += [n] * (run // n) + ([run % n] if run % n else [])
            self.epoch_data += [i] * (len(self.epoch_sizes) - len(self.epoch_data))
            i = j + 1

    def phase_at(self, iteration: int) -> int:
        """The phase that trains the batch `iteration`."""
        return max(p for p, s in enumerate(self.starts) if s <= min(iteration, self.total - 1))


class PhaseSchedule(Schedule):
    """The LR and momentum of every batch of a phased fit, per layer group (see the module docstring)."""

    def __init__(self, phases: Sequence[TrainingPhase], plan: PhasePlan, n_groups: int):
        self.phases, self.plan = list(phases), plan
        lr_ranges = [p.values("lr", n_groups) for p in phases]
        super().__init__(lr_ranges[0][0], plan.epoch_sizes[0], len(plan.epoch_sizes))
        self._lrs = lr_ranges
        self._moms = [p.values("momentum", n_groups) for p in phases]

    @property
    def total_iterations(self) -> int:
        return self.plan.total

    def _at(self, ranges, kinds, iteration: int) -> Optional[List[float]]:
        p = self.plan.phase_at(iteration)
        if ranges[p] is None:
            return None
        t = (iteration - self.plan.starts[p]) / self.plan.lengths[p]
        kind, power = kinds[p]
        return [decay(a, b, t, kind, power) for a, b in zip(*ranges[p])]

    def lrs_at(self, iteration: int) -> List[float]:
        return self._at(self._lrs, [p.lr_decay for p in self.phases], iteration)

    def moms_at(self, iteration: int) -> Optional[List[float]]:
        return self._at(self._moms, [p.momentum_decay for p in self.phases], iteration)

    def cycle_ends(self) -> List[int]:
        return [s + n for s, n in zip(self.plan.starts, self.plan.lengths)]

    def cycle_index(self, iteration: int) -> int:
        return self.plan.phase_at(iteration)

    def phase_starts(self) -> List[Tuple[int, str]]:
        return [(s, getattr(p.opt_fn, "__name__", "phase")) for s, p in zip(self.plan.starts, self.phases)]

    def describe(self) -> dict:
        return {"kind": "PhaseSchedule", "phases": [p.describe() for p in self.phases],
                "lengths": self.plan.lengths, "epoch_sizes": self.plan.epoch_sizes}


class PhaseScheduler(Callback):
    """Runs the phases of `fit_opt_sched` besides the LR/momentum schedule: each phase's optimizer (a new one,
    state lost, when `opt_fn` is another optimizer class; the same one otherwise), weight decay (`wd_loss`:
    the optimizer's, else decoupled through `decoupled`), `beta`, and data (`data_list`, swapped at the epochs
    of the phase)."""

    order = -30  # before ParamScheduler (-20) sets the LR and momentum on the phase's optimizer

    def __init__(self, phases: Sequence[TrainingPhase], plan: PhasePlan, data_list: Optional[Sequence[Any]],
                 decoupled=None, own_data=None):
        self.phases, self.plan, self.data_list, self.decoupled = list(phases), plan, data_list, decoupled
        self._data = own_data
        self.current: Optional[int] = None
        self._opt_fn: Optional[Callable] = None  # the opt_fn that built learn.opt

    def before_fit(self, learn) -> None:
        if self._data is None:
            self._data = learn.data
        self.enter(learn, self.plan.phase_at(learn.position.iteration))

    def before_epoch(self, learn) -> None:
        if self.data_list is not None and learn.position.epoch < len(self.plan.epoch_data):
            learn.data = self.data_list[self.plan.epoch_data[learn.position.epoch]]

    def cleanup_fit(self, learn) -> None:
        learn.data = self._data  # the learner's own data again (data_list only served the phases)

    def before_batch(self, learn) -> None:
        if learn.training:
            p = self.plan.phase_at(learn.position.iteration)
            if p != self.current:
                self.enter(learn, p)

    def enter(self, learn, p: int) -> None:
        """Switch to phase `p`: its optimizer, weight decay and beta."""
        phase = self.phases[p]
        if learn.opt is None or not (phase.opt_fn is self._opt_fn or _same_class(learn.opt, phase.opt_fn)):
            learn.opt = create_opt(learn.layer_groups, phase.opt_fn)
        self._opt_fn = phase.opt_fn
        n_groups = len(learn.opt.param_groups)
        wds = per_group("wds", 0.0 if phase.wds is None else phase.wds, n_groups)
        for g, wd in zip(learn.opt.param_groups, wds):
            if "weight_decay" in g:
                g["weight_decay"] = wd if phase.wd_loss else 0.0
            elif wd and phase.wd_loss:
                raise ValueError(f"phase {p}: wds={phase.wds} but {type(learn.opt).__name__} has no weight_decay; "
                                 "pass wd_loss=False to decay the weights outside the optimizer")
            if phase.beta is not None:
                if "betas" in g:
                    g["betas"] = (g["betas"][0], phase.beta)
                elif "alpha" in g:
                    g["alpha"] = phase.beta
        if self.decoupled is not None:
            self.decoupled.wds = [0.0] * n_groups if phase.wd_loss else wds
        if self.phases[p].momentum is not None and any(get_momentum(g) is None for g in learn.opt.param_groups):
            raise ValueError(f"phase {p} sets the momentum but {type(learn.opt).__name__} has neither momentum nor "
                             "betas; pass momentum=None for it")
        self.current = p


def _same_class(opt, opt_fn) -> bool:
    """True when `opt_fn` builds optimizers of `opt`'s class (a class, or a partial of one)."""
    target = getattr(opt_fn, "func", opt_fn)
    return isinstance(target, type) and type(opt) is target

