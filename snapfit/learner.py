"""The Learner: a model, its data, an optimizer, callbacks and the training position; `fit` and
the loop of events. Everything else (schedules, snapshots, recording, bars) is a callback."""
from __future__ import annotations

import inspect
import numbers
import re
import signal
import sys
import threading
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .callbacks.checkpoint import Checkpoint, merge_fit_args, read_checkpoint
from .callbacks.freeze import FreezeBatchNorm
from .callbacks.nan import TerminateOnNaN
from .callbacks.precision import MixedPrecision
from .callbacks.progress import ProgressCallback
from .callbacks.recorder import Recorder
from .callbacks.schedule import SGDR, ConstantLR, ParamScheduler, Schedule
from .callbacks.snapshot import CycleSnapshot
from .callbacks.swa import SWA
from .core import (
    EVENTS,
    Callback,
    CancelBackwardException,
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelFitException,
    CancelStepException,
    CancelTrainException,
    CancelValidException,
)
from .distributed import DistributedTraining, distribute_data, init_distributed, torchrun_env
from .io import atomic_save, check_name, check_state_dict, load_file, unwrap_model

__all__ = ["Learner", "Position", "TensorModel", "default_device"]


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Position:
    """Where a fit stands, the single source of truth for schedules and resumes. `iteration` and
    `batch_idx` are the global / in-epoch index of the training batch in progress (between
    batches: of the next one), so after an epoch ``batch_idx == n_batches``."""

    epoch: int = 0
    batch_idx: int = 0
    iteration: int = 0
    n_epochs: int = 0
    n_batches: int = 0

    def state_dict(self) -> Dict[str, int]:
        """Plain-data copy."""
        return asdict(self)


class _DeferredInterrupt:
    """During a fit, the first Ctrl-C (SIGINT, Jupyter's stop button) asks the loop to stop at the next
    batch boundary, where the state is consistent and can be checkpointed; a second one stops at once."""

    def __init__(self, learn):
        self.learn, self.old = learn, None

    def __enter__(self):
        self.learn._interrupt_pending = False
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not None:
            try:
                self.old = signal.signal(signal.SIGINT, self._handler)
            except (ValueError, OSError):  # pragma: no cover - e.g. embedded interpreters
                self.old = None
        return self

    def _handler(self, signum, frame):
        if self.learn._interrupt_pending:
            raise KeyboardInterrupt
        self.learn._interrupt_pending = True
        print("\nsnapfit: stopping after this batch (interrupt again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        self.learn._interrupt_pending = False
        return False


_EVENT_NAMES = {u: (f"before_{u}", f"after_{u}") for u in ("fit", "epoch", "train", "validate")}


def _to_channels_last(b, dev):
    if not torch.is_tensor(b):
        return b
    if b.ndim == 4 and b.is_floating_point():
        return b.to(dev, non_blocking=True, memory_format=torch.channels_last)
    return b.to(dev, non_blocking=True)


def _step_needs_closure(opt) -> bool:
    """True when ``opt.step`` has a `closure` argument without a default (torch.optim.LBFGS)."""
    try:
        p = inspect.signature(opt.step).parameters.get("closure")
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False
    return p is not None and p.default is inspect.Parameter.empty


class TensorModel(nn.Module):
    """Wraps a tensor to optimise (e.g. the pixels of an image) as a model whose output is the tensor:
    ``Learner(image_tensor, DataBunch.fixed(), loss_func=lambda img: ...)``. `tensor` is the parameter."""

    def __init__(self, tensor: torch.Tensor):
        super().__init__()
        self.tensor = tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor.detach().clone())

    def forward(self, *args) -> torch.Tensor:
        return self.tensor


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_positive_int(name: str, v, minimum: int = 1) -> int:
    if not _is_int(v) or v < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {v!r}")
    return int(v)


def _per_group(name: str, value, n_groups: int) -> List[float]:
    """A float (same for every group) or a sequence with one value per param group -> list of floats."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a float or one float per param group, got {value!r}")
    if isinstance(value, numbers.Real):
        vals = [float(value)] * n_groups
    else:
        try:
            arr = np.asarray(value.detach().cpu() if torch.is_tensor(value) else value, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a float or a sequence of floats, got {value!r}") from None
        if arr.ndim == 0:
            vals = [float(arr)] * n_groups
        elif arr.ndim != 1 or len(arr) != n_groups:
            raise ValueError(
                f"{name} has {arr.size} values but the optimizer has {n_groups} param group(s) "
                f"(one per layer group); pass a single float or exactly {n_groups} values")
        else:
            vals = [float(v) for v in arr]
    bad = [v for v in vals if not np.isfinite(v) or v < 0]
    if bad:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return vals


class Learner:
    """Trains `model` on `data` (a DataBunch) with `loss_func` and `opt_func`, fastai 0.7 style.

    ``learn.fit(lrs, n_cycle, cycle_len=..., cycle_mult=..., cycle_save_name=...)`` runs SGDR with
    per-cycle snapshots; `learn.sched` records and plots what ran. `loss_func` defaults to the
    data's (cross-entropy for integer targets, MSE for floats); `opt_func` to SGD with momentum 0.9."""

    def __init__(self, model: nn.Module, data, loss_func: Optional[Callable] = None,
                 opt_func: Optional[Callable] = None, metrics: Sequence[Callable] = (),
                 path: Union[str, Path] = ".", model_dir: str = "models", callbacks: Iterable[Callback] = (),
                 device: Union[str, torch.device, None] = None, wd: float = 0.0, progress: bool = True,
                 layer_groups: Optional[Sequence[nn.Module]] = None, channels_last: bool = False):
        if isinstance(model, torch.Tensor):  # pixel optimisation: the thing trained is a tensor (an image)
            model = TensorModel(model)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (or a tensor to optimise), got {type(model).__name__}")
        if not hasattr(data, "train_dl"):
            raise TypeError(f"data must be a DataBunch (with train_dl/valid_dl), got {type(data).__name__}; "
                            "use DataBunch(train_dl, valid_dl) or DataBunch.from_arrays(...)")
        env = torchrun_env()
        if env is not None and device is None:
            device = f"cuda:{env['local_rank']}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device) if device is not None else default_device()
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available; pass device='cpu' or leave it None")
        self.channels_last = bool(channels_last)
        self.model = model.to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if env is not None:  # launched by torchrun: one process per GPU (or CPU worker)
            init_distributed(self.device.type == "cuda")
            data = distribute_data(data, env["rank"], env["world_size"])
        self.data = data
        self.loss_func = loss_func if loss_func is not None else getattr(data, "loss_func", None)
        if self.loss_func is None:
            raise ValueError("loss_func is required for this data (e.g. loss_func=nn.CrossEntropyLoss())")
        self.opt_func = opt_func if opt_func is not None else partial(torch.optim.SGD, momentum=0.9)
        self.metrics = list(metrics)
        for m in self.metrics:
            if not callable(m):
                raise TypeError(f"metrics must be callables f(preds, targets), got {m!r}")
        self.path, self.model_dir = Path(path), model_dir
        self.wd = float(wd)
        self.layer_groups: List[nn.Module] = self._check_layer_groups(layer_groups)
        self.frozen_groups: List[int] = []
        self.bn_frozen = False
        self.opt: Optional[torch.optim.Optimizer] = None
        self.schedule = None
        self.position = Position()
        self.training = False
        self.dl = None
        self.xb: Tuple = ()
        self.yb: Tuple = ()
        self.pred = self.loss = self.loss_grad = None
        self._interrupt_pending = False
        self._closure_opt, self._needs_closure = None, False
        self.scaler: Optional[torch.amp.GradScaler] = None  # set by MixedPrecision for fp16
        self._compile_kwargs: Optional[Dict[str, Any]] = None
        self.interrupted: Optional[str] = None
        self.sync_requested = False
        self.fit_args: Dict[str, Any] = {}
        self.cbs: List[Callback] = []
        self._handlers: Dict[str, list] = {}
        self.add_cbs([Recorder(), TerminateOnNaN(), ProgressCallback(bars=progress), FreezeBatchNorm()])
        if env is not None:
            self.add_cbs([DistributedTraining(device_ids=[self.device.index] if self.device.type == "cuda" else None)])
        self.add_cbs(callbacks)

    # ------------------------------------------------------------------ position
    epoch = property(lambda self: self.position.epoch, lambda self, v: setattr(self.position, "epoch", v),
                     doc="Index of the current epoch in this fit.")
    iteration = property(lambda self: self.position.iteration,
                         lambda self, v: setattr(self.position, "iteration", v),
                         doc="Global index (within the fit) of the training batch in progress, or of the next one.")
    batch_idx = property(lambda self: self.position.batch_idx,
                         lambda self, v: setattr(self.position, "batch_idx", v),
                         doc="Index within the epoch of the training batch in progress, or of the next one.")
    n_epochs = property(lambda self: self.position.n_epochs, doc="Epochs in the current fit.")
    n_batches = property(lambda self: self.position.n_batches, doc="Training batches per epoch.")

    @property
    def is_main_process(self) -> bool:
        """False on every rank but 0 of a torch.distributed job: only the main process writes files and prints."""
        d = torch.distributed
        return not (d.is_available() and d.is_initialized()) or d.get_rank() == 0

    @property
    def is_distributed(self) -> bool:
        """True inside a torch.distributed job of more than one process."""
        d = torch.distributed
        return d.is_available() and d.is_initialized() and d.get_world_size() > 1

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum `t` over the processes of a torch.distributed job, in place (identity otherwise)."""
        d = torch.distributed
        if d.is_available() and d.is_initialized():
            d.all_reduce(t)
        return t

    def barrier(self) -> None:
        """Wait for every process of a torch.distributed job (no-op otherwise)."""
        d = torch.distributed
        if d.is_available() and d.is_initialized():
            d.barrier()

    def compile(self, **kwargs) -> "Learner":
        """Wrap the model with ``torch.compile(model, **kwargs)`` (opt-in); files still hold the plain
        model's weights."""
        self.model = torch.compile(self.model, **kwargs)
        self._compile_kwargs = kwargs
        return self

    @property
    def sched(self) -> Optional[Recorder]:
        """The recorder (fastai 0.7 name): LR and loss history and their plots."""
        return self._recorder

    recorder = sched

    # ------------------------------------------------------------------ callbacks
    def add_cbs(self, cbs: Iterable[Callback]) -> List[Callback]:
        """Add callbacks (kept for every later fit); returns those added."""
        added = []
        for cb in cbs:
            if isinstance(cb, type):
                cb = cb()
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be Callback instances, got {cb!r}")
            self.cbs.append(cb)
            added.append(cb)
        self._build_handlers()
        return added

    def remove_cbs(self, cbs: Iterable[Callback]) -> None:
        """Remove callbacks previously added."""
        ids = {id(c) for c in cbs}
        self.cbs = [c for c in self.cbs if id(c) not in ids]
        self._build_handlers()

    def get_cb(self, kind: type) -> Optional[Callback]:
        """The first installed callback of class `kind` (None if absent)."""
        return next((cb for cb in self.cbs if isinstance(cb, kind)), None)

    def _build_handlers(self) -> None:
        ordered = sorted(self.cbs, key=lambda c: c.order)  # stable: ties keep insertion order
        self._handlers = {e: tuple(getattr(c, e) for c in ordered if callable(getattr(c, e, None))) for e in EVENTS}
        self._recorder = next((cb for cb in self.cbs if isinstance(cb, Recorder)), None)

    def _fire(self, event: str) -> None:
        for handler in self._handlers[event]:
            handler(self)

    def _with_events(self, name: str, body: Callable[[], None], cancel: type) -> None:
        """``before_<name>``, `body`, ``after_<name>``. `cancel` ends this unit quietly; an outer unit's
        cancel exception still closes it on its way out. Errors skip the after-event. (Batches have
        their own, leaner unit: `_one_batch`.)"""
        before, after = _EVENT_NAMES[name]
        try:
            self._fire(before)
            body()
        except cancel:
            pass
        except CancelException:
            self._fire(after)
            raise
        self._fire(after)

    # ------------------------------------------------------------------ layer groups
    def _check_layer_groups(self, groups: Optional[Sequence[nn.Module]]) -> List[nn.Module]:
        if not groups:
            return [self.model]
        groups = list(groups)
        for i, g in enumerate(groups):
            if not isinstance(g, nn.Module):
                raise TypeError(f"layer_groups[{i}] must be an nn.Module, got {type(g).__name__}")
        names = {id(p): n for n, p in self.model.named_parameters()}
        covered = {id(p) for g in groups for p in g.parameters()}
        outside = [id(p) for g in groups for p in g.parameters() if id(p) not in names]
        if outside:
            raise ValueError("layer_groups hold parameters that are not in the model; pass sub-modules of the model")
        missing = [n for i, n in names.items() if i not in covered]
        if missing:
            raise ValueError(f"layer_groups leave {len(missing)} model parameter(s) out, e.g. {missing[:3]}: "
                             "every parameter must belong to a group (or it would never be trained)")
        return groups

    def freeze_to(self, n: int) -> None:
        """Freeze the layer groups before group `n` (``requires_grad=False``: no gradient, no update,
        BatchNorm statistics fixed) and unfreeze the others; negative `n` counts from the end."""
        n_groups = len(self.layer_groups)
        if not _is_int(n) or not -n_groups <= n <= n_groups:
            raise ValueError(f"freeze_to takes a group index in [-{n_groups}, {n_groups}] "
                             f"(this learner has {n_groups} layer group(s)), got {n!r}")
        frozen = list(range(n_groups))[:n]
        for i, g in enumerate(self.layer_groups):
            for p in g.parameters():
                p.requires_grad_(i not in frozen)
        self.frozen_groups = frozen

    def freeze(self) -> None:
        """Freeze every layer group but the last (fastai 0.7: train only the head)."""
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        """Make every layer group trainable."""
        self.freeze_to(0)

    def bn_freeze(self, flag: bool = True) -> None:
        """With `flag`, every BatchNorm layer keeps its running statistics fixed while training (fastai
        0.7's ``bn_freeze``); the BatchNorm layers of frozen groups always do."""
        self.bn_frozen = bool(flag)

    # ------------------------------------------------------------------ optimizer
    def create_opt(self) -> torch.optim.Optimizer:
        """(Re)build the optimizer with one param group per layer group."""
        groups, seen = [], set()
        for lg in self.layer_groups:
            params = [p for p in lg.parameters() if id(p) not in seen]
            seen.update(id(p) for p in params)
            groups.append({"params": params, "lr": 1e-3})
        self.opt = self.opt_func(groups)
        return self.opt

    # ------------------------------------------------------------------ fit
    def fit(self, lrs, n_cycle: int, wds=None, cycle_len: Optional[int] = None, cycle_mult: int = 1,
            cycle_save_name: Optional[str] = None, warmup: bool = True,
            callbacks: Optional[Iterable[Callback]] = None, checkpoint: Optional[str] = None,
            checkpoint_every: Union[int, str] = "epoch", start_cycle: int = 0,
            resume: Optional[str] = None, use_swa: bool = False, swa_start: int = 1,
            amp: Optional[str] = None) -> Optional[List[float]]:
        """Train with fastai 0.7 semantics. Without `cycle_len`: `n_cycle` epochs at constant `lrs`.
        With it: SGDR, ``lr = lr_max/2 * (1 + cos(pi*t/nb))`` set every batch, cycle c lasting
        ``cycle_len * cycle_mult**c`` epochs, weights saved as ``{cycle_save_name}_cyc_{c}`` at each
        cycle end. Returns the last epoch's ``[val_loss, *metrics]``.

        `checkpoint='ckpt'` writes the full training state every `checkpoint_every` batches (or
        ``'epoch'``/``'cycle'``) and at the end; `resume='ckpt'` continues that fit from the exact
        batch it was taken at; `start_cycle=i` starts the SGDR schedule at the beginning of cycle i
        (after ``load_cycle(name, i - 1)``). `use_swa` averages the weights of every epoch from
        `swa_start` on into ``learn.swa_model`` (fastai 0.7's names; see `SWA`). `amp='bf16'` or
        ``'fp16'`` runs forward and loss under torch.autocast (fp16 with a GradScaler)."""
        args = self._check_fit_args(lrs, n_cycle, wds, cycle_len, cycle_mult, cycle_save_name, warmup,
                                    checkpoint, checkpoint_every, start_cycle, use_swa, swa_start, amp)
        n_batches = self._n_train_batches()
        opt = self.opt if self.opt is not None else self.create_opt()
        n_groups = len(opt.param_groups)
        args["lrs"] = _per_group("lrs", lrs, n_groups)
        args["wds"] = _per_group("wds", self.wd if wds is None else wds, n_groups)
        state = None
        if resume is not None:
            self.barrier()
            state = read_checkpoint(self.model_file(check_name(resume, "resume")))
            args = merge_fit_args(args, state["fit_args"], resume)
        if cycle_len is None:
            schedule = ConstantLR(args["lrs"], n_batches, n_cycle)
        else:
            schedule = SGDR(args["lrs"], n_batches, n_cycle, cycle_len, int(cycle_mult), warmup)
        start_iteration = schedule.cycle_ends()[start_cycle - 1] if start_cycle else 0
        position = Position(epoch=start_iteration // n_batches, batch_idx=0, iteration=start_iteration,
                            n_epochs=schedule.n_epochs, n_batches=n_batches)
        cbs: List[Callback] = [ParamScheduler(schedule, args["wds"])]
        if args.get("amp"):
            cbs.append(MixedPrecision(args["amp"]))
        if cycle_save_name is not None:
            cbs.append(CycleSnapshot(cycle_save_name))
        if args["use_swa"]:
            cbs.append(SWA(args["swa_start"]))
        if args["checkpoint"] is not None:
            cbs.append(Checkpoint(args["checkpoint"], args["checkpoint_every"], resume_state=state))
        elif state is not None:
            cbs.append(Checkpoint(None, None, resume_state=state))
        cbs.extend(callbacks or [])
        if state is not None:
            self._restore_weights(state, resume)
        self.fit_args = args
        return self._fit(position, cbs)

    def fit_schedule(self, schedule: Schedule, wds=None,
                     callbacks: Optional[Iterable[Callback]] = None) -> Optional[List[float]]:
        """Train for ``schedule.n_epochs`` epochs with the LRs of any `Schedule` (e.g. `StepDecay`), set
        every batch. Returns the last epoch's ``[val_loss, *metrics]``."""
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a snapfit Schedule, got {type(schedule).__name__}")
        n_batches = self._n_train_batches()
        if schedule.batches_per_epoch != n_batches:
            raise ValueError(f"the schedule has {schedule.batches_per_epoch} batches per epoch but the training "
                             f"loader has {n_batches}")
        opt = self.opt if self.opt is not None else self.create_opt()
        if len(schedule.base_lrs) != len(opt.param_groups):
            raise ValueError(f"the schedule has {len(schedule.base_lrs)} base LR(s) but the optimizer has "
                             f"{len(opt.param_groups)} param group(s)")
        wd_vals = _per_group("wds", self.wd if wds is None else wds, len(opt.param_groups))
        self.fit_args = {"schedule": schedule.describe()}
        position = Position(n_epochs=schedule.n_epochs, n_batches=n_batches)
        return self._fit(position, [ParamScheduler(schedule, wd_vals), *(callbacks or [])])

    def resume(self, name: str, callbacks: Optional[Iterable[Callback]] = None) -> Optional[List[float]]:
        """Continue the fit saved in checkpoint `name` (written with ``fit(..., checkpoint=name)``)
        from the batch it was taken at, with the arguments stored in it."""
        state = read_checkpoint(self.model_file(check_name(name, "name")))
        a = dict(state["fit_args"])
        return self.fit(a.pop("lrs"), a.pop("n_cycle"), callbacks=callbacks, resume=name, **a)

    def _check_fit_args(self, lrs, n_cycle, wds, cycle_len, cycle_mult, cycle_save_name, warmup,
                        checkpoint, checkpoint_every, start_cycle, use_swa, swa_start, amp) -> Dict[str, Any]:
        n_cycle = _check_positive_int("n_cycle", n_cycle)
        if cycle_len is not None:
            cycle_len = _check_positive_int("cycle_len", cycle_len)
        if not _is_int(cycle_mult) or cycle_mult < 1:
            raise ValueError(f"cycle_mult must be an int >= 1 (each cycle is cycle_mult times longer), "
                             f"got {cycle_mult!r}")
        if cycle_len is None and cycle_mult != 1:
            raise ValueError(f"cycle_mult={cycle_mult} needs cycle_len: without cycle_len, "
                             "fit runs n_cycle epochs at constant LR")
        if cycle_save_name is not None:
            check_name(cycle_save_name, "cycle_save_name")
            if cycle_len is None:
                raise ValueError("cycle_save_name needs cycle_len: snapshots are taken at the end of each SGDR cycle")
        if not isinstance(warmup, bool):
            raise ValueError(f"warmup must be True or False, got {warmup!r}")
        if not _is_int(start_cycle) or not 0 <= start_cycle < n_cycle:
            raise ValueError(f"start_cycle must be an int in [0, n_cycle={n_cycle}), got {start_cycle!r}")
        if start_cycle and cycle_len is None:
            raise ValueError("start_cycle needs cycle_len: it names an SGDR cycle to start from")
        if checkpoint is not None:
            check_name(checkpoint, "checkpoint")
            if checkpoint == cycle_save_name:
                raise ValueError(f"checkpoint and cycle_save_name must differ, both are {checkpoint!r}")
        Checkpoint.check_every(checkpoint_every)
        if not isinstance(use_swa, bool):
            raise ValueError(f"use_swa must be True or False, got {use_swa!r}")
        if amp is not None and amp not in ("bf16", "fp16"):
            raise ValueError(f"amp must be 'bf16', 'fp16' or None, got {amp!r}")
        if not _is_int(swa_start) or swa_start < 1:
            raise ValueError(f"swa_start must be a positive int (the first epoch averaged, from 1), got {swa_start!r}")
        return dict(n_cycle=n_cycle, cycle_len=cycle_len, cycle_mult=int(cycle_mult),
                    cycle_save_name=cycle_save_name, warmup=warmup, start_cycle=int(start_cycle),
                    checkpoint=checkpoint, checkpoint_every=checkpoint_every, use_swa=use_swa,
                    swa_start=int(swa_start), amp=amp)

    def _restore_weights(self, state: Dict[str, Any], source: str) -> None:
        """Load a checkpoint's model and optimizer state, with clear errors on a mismatch."""
        where = f"checkpoint {source!r}"
        check_state_dict(self.saved_model, state["model"], source=where)
        groups = [len(g["params"]) for g in self.opt.param_groups]
        saved = [len(g["params"]) for g in state["opt"]["param_groups"]]
        if groups != saved:
            raise ValueError(f"the optimizer in {where} has param groups of sizes {saved} but this learner's has "
                             f"{groups}; was it saved with other layer groups?")
        self.saved_model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])

    def _n_train_batches(self) -> int:
        dl = self.data.train_dl
        sampler = getattr(dl, "sampler", None)
        if hasattr(sampler, "set_epoch") and hasattr(sampler, "start"):
            sampler.set_epoch(0, 0)
        try:
            n = len(dl)
        except TypeError:
            raise ValueError("the training loader must have a length (len(train_dl)): the schedule needs "
                             "the number of batches per epoch") from None
        if n == 0:
            raise ValueError("the training loader is empty (len(data.train_dl) == 0): give it at least one "
                             "batch (check the dataset size, bs and drop_last)")
        return n

    def _fit(self, position: Position, cbs: Sequence[Callback]) -> Optional[List[float]]:
        self.position = position
        self.interrupted: Optional[str] = None
        self.sync_requested = False
        added = self.add_cbs(cbs)
        with _DeferredInterrupt(self):
            try:
                self._with_events("fit", self._do_fit, CancelFitException)
            finally:
                self.training = False
                try:
                    self._fire("cleanup_fit")
                finally:
                    self.remove_cbs(added)
        rec = self.sched
        return rec.last_values if rec is not None else None

    def _do_fit(self) -> None:
        start = self.batch_idx  # non-zero only when resuming mid-epoch
        for epoch in range(self.epoch, self.n_epochs):
            self.epoch, self.batch_idx, start = epoch, start, 0
            self._with_events("epoch", self._do_epoch, CancelEpochException)
        self.epoch, self.batch_idx = self.n_epochs, 0  # done: the position points past the last epoch

    def _do_epoch(self) -> None:
        self._do_train()
        self._do_validate()

    def _do_train(self) -> None:
        """Select the epoch's data order (a function of the epoch), create the batch iterator, then
        fire ``before_train``: a resumed fit restores its RNG state there, after the iterator drew its seed."""
        self.dl = dl = self.data.train_dl
        sampler = getattr(dl, "sampler", None)
        skip = self.batch_idx
        if hasattr(sampler, "set_epoch"):
            if hasattr(sampler, "start") and dl.batch_size:
                sampler.set_epoch(self.epoch, self.batch_idx * dl.batch_size)
                skip = 0
            else:
                sampler.set_epoch(self.epoch)
        self._batches = iter(dl)
        if skip:  # a sampler that cannot start mid-epoch: draw and drop the batches already done
            for _ in range(skip):
                next(self._batches, None)
        self.model.train()
        self.training = True
        try:
            self._with_events("train", self._train_batches, CancelTrainException)
        finally:
            if skip == 0 and getattr(sampler, "start", 0):  # a resumed epoch: later epochs start at 0 again
                sampler.set_epoch(self.epoch, 0)

    def _train_batches(self) -> None:
        for batch in self._batches:
            self._one_batch(batch, self._after_train_batch)

    def _after_train_batch(self) -> None:
        pos = self.position
        pos.iteration += 1
        pos.batch_idx += 1
        if self._interrupt_pending:
            self._stop_at_boundary("train")

    def _stop_at_boundary(self, where: str) -> None:
        self.interrupted = where
        raise KeyboardInterrupt(f"fit interrupted before epoch {self.epoch}, batch {self.batch_idx} "
                                f"(iteration {self.iteration}); everything before it is done")

    def _do_validate(self) -> None:
        dl = self.data.valid_dl
        if dl is None:
            return
        self.dl = dl
        self.model.eval()
        self.training = False
        with torch.no_grad():
            self._with_events("validate", self._valid_batches, CancelValidException)

    def _valid_batches(self) -> None:
        for batch in self.dl:
            self._one_batch(batch)
            if self._interrupt_pending:
                self._stop_at_boundary("validate")

    def _one_batch(self, batch, final: Optional[Callable[[], None]] = None) -> None:
        """The batch unit: ``before_batch``, `_do_batch`, ``after_batch``, then `final`. A
        CancelBatchException ends the batch (after_batch still runs, the batch counts as done); an
        epoch or fit cancel raised inside abandons it (no after_batch, not counted). The event loops
        are written out here: this runs once per batch."""
        self.xb, self.yb = self._split(batch)
        self.pred = self.loss = self.loss_grad = None
        handlers = self._handlers
        try:
            for handler in handlers["before_batch"]:
                handler(self)
            self._do_batch()
        except CancelBatchException:
            pass
        for handler in handlers["after_batch"]:
            handler(self)
        if final is not None:
            final()

    def _split(self, batch) -> Tuple[Tuple, Tuple]:
        """A batch as ``(inputs, targets)`` on the device: the last element is the target."""
        dev = self.device
        if type(batch) in (list, tuple) and len(batch) == 2 and not self.channels_last:  # the common (x, y)
            x, y = batch
            if isinstance(x, torch.Tensor):
                x = x.to(dev, non_blocking=True)
            if isinstance(y, torch.Tensor):
                y = y.to(dev, non_blocking=True)
            return (x,), (y,)
        if isinstance(batch, (list, tuple)):
            if self.channels_last:
                batch = [_to_channels_last(b, dev) for b in batch]
            else:
                batch = [b.to(dev, non_blocking=True) if torch.is_tensor(b) else b for b in batch]
            if not batch:
                return (), ()
            if len(batch) == 1:
                return (batch[0],), ()
            return tuple(batch[:-1]), (batch[-1],)
        if self.channels_last:
            return (_to_channels_last(batch, dev),), ()
        return ((batch.to(dev, non_blocking=True) if torch.is_tensor(batch) else batch),), ()

    def _do_batch(self) -> None:
        handlers = self._handlers
        self.pred = self.model(*self.xb)
        for handler in handlers["after_pred"]:
            handler(self)
        self.loss = self.loss_grad = self.loss_func(self.pred, *self.yb)
        if not self.training:
            for handler in handlers["after_loss"]:
                handler(self)
            return
        try:
            for handler in handlers["after_loss"]:
                handler(self)
            scaler = self.scaler
            if scaler is None:
                self.loss_grad.backward()
            else:  # fp16: backpropagate the scaled loss, give after_backward true gradients
                scaler.scale(self.loss_grad).backward()
                scaler.unscale_(self.opt)
        except CancelBackwardException:
            pass
        try:
            for handler in handlers["after_backward"]:
                handler(self)
            self._step()
        except CancelStepException:
            pass
        for handler in handlers["after_step"]:
            handler(self)
        self.opt.zero_grad(set_to_none=True)

    def _step_needs_closure_now(self) -> bool:
        if self._closure_opt is not self.opt:
            self._closure_opt, self._needs_closure = self.opt, _step_needs_closure(self.opt)
        return self._needs_closure

    def _step(self) -> None:
        """``opt.step()``, or for optimizers whose step needs a closure (LBFGS) ``opt.step(closure)``: the
        closure's first call returns the loss already computed (its gradients are in place), later calls
        zero the gradients and re-run forward, loss and backward without firing events."""
        if not self._step_needs_closure_now():
            if self.scaler is None:
                self.opt.step()
            else:  # skips the step when the gradients overflowed, then adapts the scale
                self.scaler.step(self.opt)
                self.scaler.update()
            return
        first = [True]

        def closure():
            if first[0]:
                first[0] = False
                return self.loss.detach()
            self.opt.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss = self.loss_func(self.model(*self.xb), *self.yb)
                loss.backward()
            return loss.detach()

        self.opt.step(closure)

    # ------------------------------------------------------------------ predictions
    def _loader(self, is_test: bool):
        dl = self.data.test_dl if is_test else self.data.valid_dl
        if dl is None:
            raise ValueError(f"this DataBunch has no {'test' if is_test else 'validation'} loader; "
                             f"pass dl= or build the data with one")
        return dl

    def predict_dl(self, dl) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Model outputs (and targets, when the loader yields them) over `dl`, as NumPy arrays."""
        was_training = self.model.training
        self.model.eval()
        preds, targs = [], []
        try:
            with torch.no_grad():
                for batch in dl:
                    xb, yb = self._split(batch)
                    preds.append(self.model(*xb).detach())
                    if yb:
                        targs.append(yb[0].detach())
        finally:
            self.model.train(was_training)
        p = torch.cat(preds).float().cpu().numpy() if preds else np.zeros((0,))
        t = torch.cat(targs).cpu().numpy() if targs else None
        return p, t

    def predict(self, is_test: bool = False) -> np.ndarray:
        """Outputs on the validation set (or the test set): log-probabilities for snapfit's classifiers."""
        return self.predict_dl(self._loader(is_test))[0]

    def predict_with_targs(self, is_test: bool = False) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """``(outputs, targets)`` on the validation set (or the test set)."""
        return self.predict_dl(self._loader(is_test))

    def TTA(self, n_aug: int = 4, is_test: bool = False) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Test-time augmentation: ``(preds, y)`` with `preds` stacked as ``(n_aug + 1, N, ...)``, the plain
        prediction first, then `n_aug` passes with the training augmentation. For classifiers
        ``np.mean(np.exp(preds), 0)`` are the averaged probabilities."""
        if not _is_int(n_aug) or n_aug < 0:
            raise ValueError(f"n_aug must be an int >= 0, got {n_aug!r}")
        if not callable(getattr(self.data, "aug_dl", None)):
            raise ValueError("TTA needs data with training transforms to augment with (ImageClassifierData); "
                             f"{type(self.data).__name__} has none")
        preds, targs = self.predict_dl(self._loader(is_test))
        aug = [self.predict_dl(self.data.aug_dl(is_test))[0] for _ in range(n_aug)]
        return np.stack([preds] + aug), targs

    # ------------------------------------------------------------------ snapshots
    def snapshots(self, name: str) -> List[Dict[str, Any]]:
        """The saved cycles of `name`: cycle index, file, epoch, iteration, validation loss and metrics."""
        from .snapshots import list_snapshots

        return list_snapshots(self, name)

    def predict_snapshots(self, name: str, cycles: Optional[Sequence[int]] = None, dl=None,
                          last: Optional[int] = None, tta: bool = False, is_test: bool = False):
        """Snapshot ensemble: ``(probs, targets)`` with the softmax outputs of the chosen snapshots (all, the
        `last` M, or `cycles`) averaged; streams one snapshot at a time and restores the model's weights."""
        from .snapshots import predict_snapshots

        return predict_snapshots(self, name, cycles=cycles, dl=dl, last=last, tta=tta, is_test=is_test)

    def average_snapshots(self, name: str, cycles: Optional[Sequence[int]] = None, update_bn: bool = True,
                          save_as: Optional[str] = None, last: Optional[int] = None) -> "Learner":
        """Load the mean of the chosen snapshots' weights into the model, then (with `update_bn`) recompute
        BatchNorm statistics over the training data; `save_as` also saves the result."""
        from .snapshots import average_snapshots

        average_snapshots(self, name, cycles=cycles, update_bn_stats=update_bn, save_as=save_as, last=last)
        return self

    def lr_find(self, start_lr=1e-5, end_lr=10, num_it: Optional[int] = None, linear: bool = False, wds=None,
                amp: Optional[str] = None):
        """LR range test (Smith 2015, fastai 0.7): one pass raising the LR every batch from `start_lr` to
        `end_lr`, stopping when the smoothed loss diverges; everything is restored afterwards. Plot with
        ``learn.sched.plot()``; returns the suggested LRs. See `snapfit.callbacks.lr_finder.lr_find`."""
        from .callbacks.lr_finder import lr_find

        return lr_find(self, start_lr=start_lr, end_lr=end_lr, num_it=num_it, linear=linear, wds=wds, amp=amp)

    # ------------------------------------------------------------------ files
    @property
    def saved_model(self) -> nn.Module:
        """The module whose state dict `save`, `load`, snapshots and checkpoints use: the plain model
        (under any DDP or torch.compile wrapper)."""
        return unwrap_model(self.model)

    @property
    def models_path(self) -> Path:
        """The folder weights are saved to: ``{path}/{model_dir}``."""
        return self.path / self.model_dir

    def model_file(self, name: str) -> Path:
        """Path of the weights file called `name`."""
        return self.models_path / f"{check_name(name)}.pt"

    def save(self, name: str) -> Path:
        """Save the model's state dict to ``{path}/{model_dir}/{name}.pt`` atomically (main process only)."""
        path = self.model_file(name)
        if self.is_main_process:
            atomic_save(self.saved_model.state_dict(), path)
        return path

    def load(self, name: str) -> "Learner":
        """Load weights saved by `save` (weights_only); a mismatch names the offending keys."""
        path = self.model_file(name)
        self.barrier()  # under torchrun: rank 0 has finished writing
        state = load_file(path, map_location=self.device)
        check_state_dict(self.saved_model, state, source=str(path))
        self.saved_model.load_state_dict(state)
        return self

    def saved_cycles(self, name: str) -> List[int]:
        """Cycle indices saved under `name` (files ``{name}_cyc_{i}.pt``), ascending."""
        pat = re.compile(rf"^{re.escape(check_name(name))}_cyc_(\d+)\.pt$")
        if not self.models_path.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.models_path.iterdir() if (m := pat.match(p.name)))

    def load_cycle(self, name: str, cycle: int) -> "Learner":
        """Load the snapshot saved at the end of cycle `cycle` of a fit with ``cycle_save_name=name``."""
        if not _is_int(cycle) or cycle < 0:
            raise ValueError(f"cycle must be an int >= 0, got {cycle!r}")
        if not self.model_file(f"{name}_cyc_{cycle}").is_file():
            saved = self.saved_cycles(name)
            have = f"saved cycles of {name!r}: {saved}" if saved else f"no cycles of {name!r} are saved"
            raise FileNotFoundError(f"cycle {cycle} of {name!r} was never saved in {self.models_path} ({have})")
        return self.load(f"{name}_cyc_{cycle}")

    def __repr__(self) -> str:
        return (f"Learner(model={type(unwrap_model(self.model)).__name__}, device={self.device}, "
                f"callbacks=[{', '.join(type(c).__name__ for c in self.cbs)}])")
