"""The arguments of `Learner.fit`, in one place: their checks, the schedule and the callbacks they make.

`FitArgs` lists them once (fastai 0.7's names and defaults). ``Learner.fit`` takes them as keywords (its
signature, as Jupyter and ``help`` show it, is built from this class), a checkpoint stores them, and a
resumed fit must repeat the ones marked ``schedule`` (they define the LRs and the cycles).
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

from .callbacks.checkpoint import Checkpoint
from .callbacks.precision import MixedPrecision
from .callbacks.schedule import SGDR, ConstantLR, ParamScheduler, Schedule
from .callbacks.snapshot import CycleSnapshot
from .callbacks.swa import SWA
from .checks import check_bool, check_int, is_int, per_group
from .core import Callback, callback_list
from .data.core import n_train_batches
from .io import check_name
from .position import Position

__all__ = ["FitArgs", "fit_signature", "fit_schedule"]

SCHEDULE = {"schedule": True}  # field metadata: this argument defines the schedule


@dataclass
class FitArgs:
    """``fit(lrs, n_cycle, ...)``'s arguments. Without `cycle_len`: `n_cycle` epochs at constant LRs; with it,
    SGDR cycles of ``cycle_len * cycle_mult**c`` epochs (see `Learner.fit` for each argument)."""

    lrs: Any = field(metadata=SCHEDULE)
    n_cycle: int = field(metadata=SCHEDULE)
    wds: Any = field(default=None, metadata=SCHEDULE)
    cycle_len: Optional[int] = field(default=None, metadata=SCHEDULE)
    cycle_mult: int = field(default=1, metadata=SCHEDULE)
    cycle_save_name: Optional[str] = field(default=None, metadata=SCHEDULE)
    warmup: bool = field(default=True, metadata=SCHEDULE)
    start_cycle: int = field(default=0, metadata=SCHEDULE)
    checkpoint: Optional[str] = None
    checkpoint_every: Union[int, str] = "epoch"
    use_swa: bool = field(default=False, metadata=SCHEDULE)
    swa_start: int = field(default=1, metadata=SCHEDULE)
    amp: Optional[str] = field(default=None, metadata=SCHEDULE)

    @classmethod
    def from_call(cls, lrs, n_cycle, options: Dict[str, Any]) -> "FitArgs":
        """The arguments of a ``fit`` call, checked; an unknown keyword is a TypeError suggesting the right one."""
        names = [f.name for f in fields(cls)]
        for k in options:
            if k not in names:
                near = difflib.get_close_matches(k, names, n=1)
                others = ["callbacks", "resume", "allow_nonfinite"] + names[2:]
                hint = f"; did you mean {near[0]!r}?" if near else f"; fit takes {others}"
                raise TypeError(f"fit() got an unexpected keyword argument {k!r}{hint}")
        return cls(lrs, n_cycle, **options)

    def __post_init__(self) -> None:
        self.n_cycle = check_int("n_cycle", self.n_cycle)
        if self.cycle_len is not None:
            self.cycle_len = check_int("cycle_len", self.cycle_len)
        self.cycle_mult = check_int("cycle_mult", self.cycle_mult,
                                    what="an int >= 1 (each cycle is cycle_mult times longer)")
        if self.cycle_len is None and self.cycle_mult != 1:
            raise ValueError(f"cycle_mult={self.cycle_mult} needs cycle_len: without cycle_len, "
                             "fit runs n_cycle epochs at constant LR")
        if self.cycle_save_name is not None:
            check_name(self.cycle_save_name, "cycle_save_name")
            if self.cycle_len is None:
                raise ValueError("cycle_save_name needs cycle_len: snapshots are taken at the end of each SGDR cycle")
        check_bool("warmup", self.warmup)
        if not is_int(self.start_cycle) or not 0 <= self.start_cycle < self.n_cycle:
            raise ValueError(f"start_cycle must be an int in [0, n_cycle={self.n_cycle}), got {self.start_cycle!r}")
        self.start_cycle = int(self.start_cycle)
        if self.start_cycle and self.cycle_len is None:
            raise ValueError("start_cycle needs cycle_len: it names an SGDR cycle to start from")
        if self.checkpoint is not None:
            check_name(self.checkpoint, "checkpoint")
            if self.checkpoint == self.cycle_save_name:
                raise ValueError(f"checkpoint and cycle_save_name must differ, both are {self.checkpoint!r}")
        Checkpoint.check_every(self.checkpoint_every)
        check_bool("use_swa", self.use_swa)
        if self.amp is not None and self.amp not in ("bf16", "fp16"):
            raise ValueError(f"amp must be 'bf16', 'fp16' or None, got {self.amp!r}")
        self.swa_start = check_int("swa_start", self.swa_start,
                                   what="a positive int (the first epoch averaged, from 1)")

    def for_groups(self, n_groups: int, default_wd: float) -> "FitArgs":
        """A copy with `lrs` and `wds` as one float per param group (`wds` defaults to the learner's `wd`)."""
        wds = default_wd if self.wds is None else self.wds
        return replace(self, lrs=per_group("lrs", self.lrs, n_groups), wds=per_group("wds", wds, n_groups))

    def schedule_args(self) -> Dict[str, Any]:
        """The arguments that define the schedule (a resumed fit must repeat them)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("schedule")}

    def schedule(self, n_batches: int) -> Schedule:
        """The LR schedule: SGDR with `cycle_len`, else constant LRs (after `for_groups`)."""
        if self.cycle_len is None:
            return ConstantLR(self.lrs, n_batches, self.n_cycle)
        return SGDR(self.lrs, n_batches, self.n_cycle, self.cycle_len, self.cycle_mult, self.warmup)

    def start_position(self, schedule: Schedule) -> Position:
        """Where the fit starts: the beginning, or of cycle `start_cycle`."""
        start = schedule.cycle_ends()[self.start_cycle - 1] if self.start_cycle else 0
        n_batches = schedule.batches_per_epoch
        return Position(epoch=start // n_batches, iteration=start, n_epochs=schedule.n_epochs, n_batches=n_batches)

    def callbacks(self, schedule: Schedule) -> List[Callback]:
        """The callbacks these arguments ask for: the schedule, then AMP, snapshots, SWA and checkpoints."""
        cbs: List[Callback] = [ParamScheduler(schedule, self.wds)]
        if self.amp:
            cbs.append(MixedPrecision(self.amp))
        if self.cycle_save_name is not None:
            cbs.append(CycleSnapshot(self.cycle_save_name))
        if self.use_swa:
            cbs.append(SWA(self.swa_start))
        if self.checkpoint is not None:
            cbs.append(Checkpoint(self.checkpoint, self.checkpoint_every))
        return cbs

    def to_dict(self) -> Dict[str, Any]:
        """Plain data (for ``learn.fit_args`` and checkpoints)."""
        return asdict(self)


def fit_signature(fit: Callable) -> inspect.Signature:
    """The signature of `fit(self, lrs, n_cycle, callbacks=None, resume=None, **options)` with ``**options``
    spelled out as the keyword arguments of `FitArgs`, so Jupyter's and ``help``'s view lists every argument."""
    own = inspect.signature(fit).parameters
    keyword = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default) for f in fields(FitArgs)
               if f.name not in own]
    kept = [p for p in own.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return inspect.Signature(kept + keyword)


def fit_schedule(learn, schedule: Schedule, wds=None, callbacks: Optional[Iterable[Callback]] = None
                 ) -> Optional[List[float]]:
    """Train for ``schedule.n_epochs`` epochs with the LRs of any `Schedule` (e.g. `StepDecay`), set every
    batch; `wds` as in `fit`. Returns the last epoch's ``[val_loss, *metrics]``."""
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a snapfit Schedule, got {type(schedule).__name__}")
    n_batches = n_train_batches(learn.data.train_dl)
    if schedule.batches_per_epoch != n_batches:
        raise ValueError(f"the schedule has {schedule.batches_per_epoch} batches per epoch but the training "
                         f"loader has {n_batches}")
    n_groups = len((learn.opt if learn.opt is not None else learn.create_opt()).param_groups)
    if len(schedule.base_lrs) != n_groups:
        raise ValueError(f"the schedule has {len(schedule.base_lrs)} base LR(s) but the optimizer has "
                         f"{n_groups} param group(s)")
    wd_vals = per_group("wds", learn.wd if wds is None else wds, n_groups)
    learn.fit_args = {"schedule": schedule.describe()}
    position = Position(n_epochs=schedule.n_epochs, n_batches=n_batches)
    return learn.run_fit(position, [ParamScheduler(schedule, wd_vals), *callback_list(callbacks or [])])
