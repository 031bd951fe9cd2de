"""The arguments of `Learner.fit`, in one place: their checks, the schedule and the callbacks they make.

`FitArgs` lists them once (fastai 0.7's names and defaults). ``Learner.fit`` takes them as keywords (its
signature, as Jupyter and ``help`` show it, is built from this class), a checkpoint stores them, and a
resumed fit must repeat the ones marked ``schedule`` (they define the LRs and the cycles).
"""
from __future__ import annotations

import difflib
import inspect
import math
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .callbacks.checkpoint import Checkpoint
from .callbacks.lr_finder import StopOnDivergence
from .callbacks.phases import PhasePlan, PhaseSchedule, PhaseScheduler, TrainingPhase
from .callbacks.precision import MixedPrecision
from .callbacks.schedule import SGDR, ConstantLR, CyclicLR, OneCycle, ParamScheduler, Schedule
from .callbacks.snapshot import CycleSnapshot, SaveBest
from .callbacks.swa import SWA
from .callbacks.weight_decay import DecoupledWeightDecay
from .checks import check_bool, check_callable, check_float, check_int, is_int, per_group
from .core import Callback, callback_list
from .data.core import check_data, n_train_batches
from .io import check_name
from .position import Position
from .resume import checkpoint_to_resume, read_checkpoint, resume_fit

__all__ = ["FitArgs", "fit_signature", "fit_schedule", "PhaseFitArgs", "fit_opt_sched"]

SCHEDULE = {"schedule": True}  # field metadata: this argument defines the schedule


@dataclass
class FitArgs:
    """``fit(lrs, n_cycle, ...)``'s arguments, fastai 0.7's names and meaning:

    - `lrs`, `wds`: one float, or one per layer group. Without `cycle_len`: `n_cycle` epochs at constant LRs.
    - `cycle_len`, `cycle_mult`, `warmup`: SGDR, `n_cycle` cycles of ``cycle_len * cycle_mult**c`` epochs
      (`SGDR`); `use_clr=(div, cut_div[, mom_hi, mom_lo])`: cyclical LR (`CyclicLR`); `use_clr_beta=(div,
      pct[, mom_hi, mom_lo])`: 1cycle (`OneCycle`); both need `cycle_len`, take no `cycle_mult`, and set the
      momentum only when given its two values. `start_cycle`: start at that cycle.
    - `cycle_save_name`: a snapshot ``{name}_cyc_{i}`` at the end of each cycle; `best_save_name`: save
      ``{name}`` after each epoch whose first metric improved (ties: lower validation loss), or whose
      validation loss fell when there are no metrics.
    - `use_wd_sched`: weight decay decoupled from the gradient (``p -= lr * wd * p`` before each step);
      `norm_wds` divides it by ``sqrt(batches per epoch * epochs of the cycle)``, `wds_sched_mult(learn)`
      multiplies it.
    - `checkpoint`, `checkpoint_every`: the full training state every N batches, ``'epoch'`` or ``'cycle'``.
    - `use_swa`, `swa_start`: stochastic weight averaging from that epoch (1-based); `amp`: ``'bf16'``/``'fp16'``
      (default: ``learn.amp``, set by `learn.half()`); `loss_scale`: the fp16 loss scaler's initial scale (fastai
      0.7's static `loss_scale`; here the scale then adapts; bf16 needs no scaling and ignores it).
    """

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
    use_clr: Optional[Sequence[float]] = field(default=None, metadata=SCHEDULE)
    use_clr_beta: Optional[Sequence[float]] = field(default=None, metadata=SCHEDULE)
    best_save_name: Optional[str] = None
    use_wd_sched: bool = field(default=False, metadata=SCHEDULE)
    norm_wds: bool = field(default=False, metadata=SCHEDULE)
    wds_sched_mult: Optional[Callable] = field(default=None, metadata=SCHEDULE)
    loss_scale: Optional[float] = None

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

    @classmethod
    def from_saved(cls, saved: Dict[str, Any], like: "FitArgs") -> "FitArgs":
        """The arguments a checkpoint stored (`to_dict`), with a function it holds by name taken from `like`
        (this call's arguments) when the names match."""
        if "lrs" not in saved:
            raise ValueError(f"this checkpoint was not written by learn.fit (its fit was {saved or 'unknown'}): "
                             "continue it the way it was started (fit_opt_sched(..., resume=name))")
        saved = dict(saved)
        if isinstance(saved.get("wds_sched_mult"), str) and saved["wds_sched_mult"] == _plain(like.wds_sched_mult):
            saved["wds_sched_mult"] = like.wds_sched_mult
        return cls(**saved)

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
        if self.loss_scale is not None:
            check_float("loss_scale", self.loss_scale, what="a positive number (the fp16 loss scale), or None")
            if self.loss_scale <= 0:
                raise ValueError(f"loss_scale must be a positive number (the fp16 loss scale), or None, got "
                                 f"{self.loss_scale!r}")
        self.swa_start = check_int("swa_start", self.swa_start,
                                   what="a positive int (the first epoch averaged, from 1)")
        self.use_clr = _cycle_tuple("use_clr", self.use_clr, ("div", "cut_div"))
        self.use_clr_beta = _cycle_tuple("use_clr_beta", self.use_clr_beta, ("div", "pct"))
        clr = "use_clr" if self.use_clr is not None else "use_clr_beta" if self.use_clr_beta is not None else None
        if self.use_clr is not None and self.use_clr_beta is not None:
            raise ValueError("use_clr and use_clr_beta are two schedules: pass one of them")
        if clr and self.cycle_len is None:
            raise ValueError(f"{clr} needs cycle_len: it runs n_cycle cycles of cycle_len epochs")
        if clr and self.cycle_mult != 1:
            raise ValueError(f"{clr} takes no cycle_mult (every cycle is cycle_len epochs; fastai 0.7 ignored it "
                             f"silently), got cycle_mult={self.cycle_mult}")
        if self.use_clr_beta is not None and not 0 < self.use_clr_beta[1] < 100:
            raise ValueError(f"use_clr_beta's pct must be in (0, 100) (the % of the cycle for the final anneal), "
                             f"got {self.use_clr_beta[1]:g}")
        if self.use_clr is not None and self.use_clr[1] < 1:
            raise ValueError(f"use_clr's cut_div must be >= 1 (the rise lasts 1/cut_div of the cycle), "
                             f"got {self.use_clr[1]:g}")
        if self.best_save_name is not None:
            check_name(self.best_save_name, "best_save_name")
            if self.best_save_name in (self.cycle_save_name, self.checkpoint):
                raise ValueError(f"best_save_name must differ from cycle_save_name and checkpoint, got "
                                 f"{self.best_save_name!r}")
        check_bool("use_wd_sched", self.use_wd_sched)
        check_bool("norm_wds", self.norm_wds)
        if isinstance(self.wds_sched_mult, str):
            raise ValueError(f"this fit used wds_sched_mult={self.wds_sched_mult[len('callable:'):]}, which a "
                             "checkpoint cannot hold: continue it with fit(<same args>, wds_sched_mult=<it>, "
                             "resume=...)")
        if self.wds_sched_mult is not None:
            check_callable("wds_sched_mult", self.wds_sched_mult, "a function of the learner returning a float")
        if (self.norm_wds or self.wds_sched_mult is not None) and not self.use_wd_sched:
            raise ValueError("norm_wds and wds_sched_mult shape the decoupled weight decay: they need "
                             "use_wd_sched=True")

    def for_groups(self, n_groups: int, default_wd: float) -> "FitArgs":
        """A copy with `lrs` and `wds` as one float per param group (`wds` defaults to the learner's `wd`)."""
        wds = default_wd if self.wds is None else self.wds
        return replace(self, lrs=per_group("lrs", self.lrs, n_groups), wds=per_group("wds", wds, n_groups))

    def schedule_args(self) -> Dict[str, Any]:
        """The arguments that define the schedule (a resumed fit must repeat them), as plain data."""
        return {k: v for k, v in self.to_dict().items() if FIELDS[k].metadata.get("schedule")}

    def schedule(self, n_batches: int) -> Schedule:
        """The LR (and momentum) schedule these arguments ask for (after `for_groups`)."""
        if self.use_clr is not None:
            return CyclicLR(self.lrs, n_batches, self.n_cycle, self.cycle_len, *self.use_clr[:2],
                            moms=self.use_clr[2:] or None)
        if self.use_clr_beta is not None:
            return OneCycle(self.lrs, n_batches, self.n_cycle, self.cycle_len, *self.use_clr_beta[:2],
                            moms=self.use_clr_beta[2:] or None)
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
            cbs.append(MixedPrecision(self.amp, init_scale=self.loss_scale))
        if self.cycle_save_name is not None:
            cbs.append(CycleSnapshot(self.cycle_save_name))
        if self.best_save_name is not None:
            cbs.append(SaveBest(self.best_save_name))
        if self.use_swa:
            cbs.append(SWA(self.swa_start))
        if self.use_wd_sched:
            if not any(self.wds):
                warnings.warn("use_wd_sched=True but every weight decay is 0: pass wds= to decay the weights",
                              stacklevel=3)
            cbs.append(DecoupledWeightDecay(self.wds, self.norm_wds, self.wds_sched_mult))
        if self.checkpoint is not None:
            cbs.append(Checkpoint(self.checkpoint, self.checkpoint_every))
        return cbs

    def to_dict(self) -> Dict[str, Any]:
        """Plain data (for ``learn.fit_args`` and checkpoints): tuples as lists, a function as its name."""
        return {k: _plain(v) for k, v in asdict(self).items()}


FIELDS = {f.name: f for f in fields(FitArgs)}


def _plain(v):
    if callable(v):
        return f"callable:{getattr(v, '__module__', '?')}.{getattr(v, '__qualname__', type(v).__name__)}"
    return list(v) if isinstance(v, tuple) else v


def _cycle_tuple(name: str, v, first: Sequence[str]) -> Optional[Tuple[float, ...]]:
    """`use_clr` / `use_clr_beta`: ``(a, b)`` or ``(a, b, mom_hi, mom_lo)`` of finite numbers, ``div > 1``."""
    if v is None:
        return None
    form = f"({first[0]}, {first[1]}) or ({first[0]}, {first[1]}, mom_hi, mom_lo)"
    sized = hasattr(v, "__len__") and not isinstance(v, (str, bytes))
    if not sized or len(v) not in (2, 4):
        hint = " (fastai 0.7 silently dropped the momentum of a 3-tuple)" if sized and len(v) == 3 else ""
        raise ValueError(f"{name} takes {form}, got {f'{len(v)} values' if sized else repr(v)}{hint}")
    vals = tuple(check_float(f"{name}[{i}]", x, minimum=-math.inf, what="a finite number") for i, x in enumerate(v))
    if vals[0] <= 1:
        raise ValueError(f"{name}'s div must be > 1 (the LR starts at lr/div), got {vals[0]:g}")
    return vals


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


@dataclass
class PhaseFitArgs:
    """The arguments of `fit_opt_sched` that a checkpoint stores (the phases as plain data): a resumed phased fit
    must repeat all but the checkpoint's name and cadence."""

    phases: List[dict]
    n_data: int
    cycle_save_name: Optional[str] = None
    best_save_name: Optional[str] = None
    stop_div: bool = False
    checkpoint: Optional[str] = None
    checkpoint_every: Union[int, str] = "epoch"

    @classmethod
    def from_saved(cls, saved: Dict[str, Any], like: "PhaseFitArgs") -> "PhaseFitArgs":
        """The arguments a checkpoint stored."""
        if "phases" not in saved:
            raise ValueError("this checkpoint was written by learn.fit, not fit_opt_sched: continue it with "
                             "learn.resume(name)")
        return cls(**saved)

    def schedule_args(self) -> Dict[str, Any]:
        """Everything but the checkpoint's name and cadence."""
        return {k: v for k, v in asdict(self).items() if k not in ("checkpoint", "checkpoint_every")}

    def to_dict(self) -> Dict[str, Any]:
        """Plain data (for ``learn.fit_args`` and checkpoints)."""
        return asdict(self)


def fit_opt_sched(learn, phases: Sequence[TrainingPhase], cycle_save_name: Optional[str] = None,
                  best_save_name: Optional[str] = None, stop_div: bool = False,
                  data_list: Optional[Sequence[Any]] = None, callbacks: Optional[Iterable[Callback]] = None,
                  checkpoint: Optional[str] = None, checkpoint_every: Union[int, str] = "epoch",
                  resume: Union[str, bool, None] = None, allow_nonfinite: bool = False) -> Optional[List[float]]:
    """fastai 0.7's training phases: run `phases` (`TrainingPhase`) one after the other, each with its own
    length, optimizer, LR and momentum schedule, weight decay and, with `data_list`, data. `cycle_save_name`
    saves a snapshot at the end of each phase, `best_save_name` the best epoch, `stop_div` stops when the loss
    diverges (the LR finder's rule); `checkpoint`/`resume` as in `fit`. Returns the last ``[val_loss, *metrics]``."""
    if isinstance(phases, TrainingPhase) or not isinstance(phases, (list, tuple)) or not phases:
        raise ValueError(f"phases must be a non-empty list of TrainingPhase, got {phases!r}")
    bad = [p for p in phases if not isinstance(p, TrainingPhase)]
    if bad:
        raise ValueError(f"phases must be TrainingPhase objects, got {bad[0]!r}")
    if data_list is not None and (not isinstance(data_list, (list, tuple)) or len(data_list) != len(phases)):
        n = len(data_list) if hasattr(data_list, "__len__") else data_list
        raise ValueError(f"data_list must hold one data object per phase ({len(phases)}), got {n!r}")
    datas = [check_data(d) for d in data_list] if data_list is not None else [learn.data] * len(phases)
    for arg, name in (("cycle_save_name", cycle_save_name), ("best_save_name", best_save_name),
                      ("checkpoint", checkpoint)):
        if name is not None:
            check_name(name, arg)
    Checkpoint.check_every(checkpoint_every)
    resume = checkpoint_to_resume(learn, resume, checkpoint)
    args = PhaseFitArgs([p.describe() for p in phases], len(data_list or []), cycle_save_name, best_save_name,
                        check_bool("stop_div", stop_div), checkpoint, checkpoint_every)
    plan = PhasePlan(phases, [n_train_batches(d.train_dl) for d in datas], [id(d) for d in datas])
    start = Position(n_epochs=len(plan.epoch_sizes), n_batches=plan.epoch_sizes[0],
                     epoch_sizes=tuple(plan.epoch_sizes))
    own_data, first = learn.data, start
    if resume is not None:  # the optimizer of the phase the checkpoint is in, before its state is loaded
        first = Position()
        learn.writer.wait()
        first.load_state_dict(read_checkpoint(learn.model_file(check_name(resume, "resume")))["position"])
        first.settle()
    decoupled = DecoupledWeightDecay([]) if any(not p.wd_loss for p in phases) else None
    scheduler = PhaseScheduler(phases, plan, data_list, decoupled, own_data)
    scheduler.enter(learn, plan.phase_at(first.iteration))
    schedule = PhaseSchedule(phases, plan, len(learn.opt.param_groups))
    position, extra = start, []
    if data_list is not None and first.epoch < len(plan.epoch_data):
        learn.data = data_list[plan.epoch_data[first.epoch]]  # the data of the epoch the fit starts in
    try:
        if resume is not None:
            args, position, extra = resume_fit(learn, resume, args, start, allow_nonfinite)
    finally:
        learn.data = own_data
    learn.fit_args = args.to_dict()
    cbs = [scheduler, ParamScheduler(schedule), *([decoupled] if decoupled else [])]
    cbs += [CycleSnapshot(cycle_save_name)] if cycle_save_name else []
    cbs += [SaveBest(best_save_name)] if best_save_name else []
    cbs += [StopOnDivergence()] if stop_div else []
    cbs += [Checkpoint(args.checkpoint, args.checkpoint_every)] if args.checkpoint else []
    return learn.run_fit(position, [*cbs, *extra, *callback_list(callbacks or [])])
