"""The Learner: a model, its data, an optimizer, callbacks and the training position; `fit` and the loop.

The loop is a short sequence of events (`snapfit.core.EVENTS`) around ``forward, loss, backward, step``;
everything else (schedules, snapshots, recording, bars, checkpoints, mixed precision, Ctrl-C) is a callback,
and the fastai 0.7 methods below are one-line calls into the modules that hold them."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import core
from .callbacks.freeze import FreezeBatchNorm, bn_freeze, check_layer_groups, freeze, freeze_to, unfreeze
from .callbacks.interrupt import DeferredInterrupt
from .callbacks.lr_finder import lr_find
from .callbacks.nan import TerminateOnNaN
from .callbacks.precision import half, to_float
from .callbacks.progress import ProgressCallback
from .callbacks.recorder import Recorder
from .callbacks.schedule import Schedule
from .checks import check_callable, check_callables, check_float, check_path
from .core import Callback
from .data.core import check_data, epoch_batches, n_train_batches, split_batch
from .distributed import all_reduce_sum, barrier, is_distributed, is_main_process, prepare
from .fit_args import FitArgs, fit_opt_sched, fit_schedule, fit_signature
from .io import check_name, unwrap_model
from .model_data import from_model_data, set_data
from .models.tensor import as_module
from .optim import create_opt, step_callbacks
from .position import Position
from .predict import predict, predict_array, predict_dl, predict_with_targs, tta
from .resume import read_checkpoint, resume_fit, saved_fit_args
from .snapshots import average_snapshots, list_snapshots, load, load_cycle, predict_snapshots, save, saved_cycles
from .summary import summary
from .writer import BackgroundWriter

__all__ = ["Learner"]


class Learner:
    """Trains `model` on `data` (a DataBunch) with `loss_func` and `opt_func`, fastai 0.7 style.

    ``learn.fit(lrs, n_cycle, cycle_len=..., cycle_mult=..., cycle_save_name=...)`` runs SGDR with
    per-cycle snapshots; `learn.sched` records and plots what ran. `loss_func` defaults to the
    data's (cross-entropy for integer targets, MSE for floats); `opt_func` to SGD with momentum 0.9.
    Under torchrun, `sync_bn=True` makes BatchNorm use the global batch's statistics (`snapfit.sync_batchnorm`).

    What callbacks read (each means the same in every event): `position` (epoch, batch, iteration,
    stage: see `snapfit.position`), `training`, `dl`, `xb`, `yb`, `pred`, `loss` (and `loss_grad`, the
    tensor backward runs on), `opt`, `schedule` (the LR schedule of the fit), `recorder` (= `sched`),
    `fit_args`, `scaler` (fp16), `interrupted`, `model`, `data`, `metrics`, `device`."""

    def __init__(self, model: nn.Module, data, loss_func: Optional[Callable] = None,
                 opt_func: Optional[Callable] = None, metrics: Sequence[Callable] = (),
                 path: Union[str, Path] = ".", model_dir: str = "models", callbacks: Iterable[Callback] = (),
                 device: Union[str, torch.device, None] = None, wd: float = 0.0, progress: bool = True,
                 layer_groups: Optional[Sequence[nn.Module]] = None, channels_last: bool = False,
                 sync_bn: bool = False):
        model = as_module(model)  # a tensor to optimise (an image's pixels) becomes a TensorModel
        # torchrun: process group, shards, DDP (and with sync_bn, BatchNorm over the global batch)
        self.device, self.data, scale_out = prepare(device, check_data(data), model, sync_bn)
        self.channels_last = bool(channels_last)
        self.model = model.to(self.device, memory_format=torch.channels_last if channels_last else None)
        self.loss_func = loss_func if loss_func is not None else getattr(data, "loss_func", None)
        if self.loss_func is None:
            raise ValueError("loss_func is required for this data (e.g. loss_func=nn.CrossEntropyLoss())")
        check_callable("loss_func", self.loss_func, "a callable loss(preds, targets) such as nn.CrossEntropyLoss()")
        opt_func = partial(torch.optim.SGD, momentum=0.9) if opt_func is None else opt_func
        self.opt_func = check_callable("opt_func", opt_func, "an optimizer class such as torch.optim.Adam")
        self.metrics = check_callables("metrics", metrics, "callables f(preds, targets)")
        self.path, self.model_dir = check_path("path", path), check_name(model_dir, "model_dir")
        self.wd = check_float("wd", wd, what="a finite number >= 0 (the weight decay)")
        self.layer_groups: List[nn.Module] = check_layer_groups(self.model, layer_groups)
        self.frozen_groups: List[int] = []
        self.bn_frozen = False
        self.opt: Optional[torch.optim.Optimizer] = None
        self.schedule: Optional[Schedule] = None  # the LR schedule of the current fit (set by ParamScheduler)
        self.position, self.fit_args = Position(), {}
        self.training, self.dl, self.xb, self.yb = False, None, (), ()
        self.pred = self.loss = self.loss_grad = None
        self.scaler: Optional[torch.amp.GradScaler] = None  # set by MixedPrecision for fp16
        self.amp: Optional[str] = None  # the default `amp` of fits: 'bf16'/'fp16' after learn.half()
        self.interrupted: Optional[str] = None  # set by DeferredInterrupt: 'train' or 'validate'
        self.cbs: List[Callback] = []
        self.recorder: Optional[Recorder] = None
        self.writer = BackgroundWriter()  # writes snapshots and checkpoints off the loop's critical path
        self.add_cbs([Recorder(), TerminateOnNaN(), ProgressCallback(bars=progress), FreezeBatchNorm(),
                      DeferredInterrupt(), self.writer, *scale_out, *core.callback_list(callbacks)])

    # ------------------------------------------------------------------ position (read-only views)
    epoch = property(lambda self: self.position.epoch, doc="The epoch in progress (see `snapfit.position`).")
    batch_idx = property(lambda self: self.position.batch_idx, doc="Training batch in progress in the epoch, or next.")
    iteration = property(lambda self: self.position.iteration, doc="Training batch in progress in the fit, or next.")
    n_epochs = property(lambda self: self.position.n_epochs, doc="Epochs in the current fit.")
    n_batches = property(lambda self: self.position.n_batches, doc="Training batches per epoch.")
    sched = property(lambda self: self.recorder, doc="The recorder (fastai 0.7's name): history and plots.")

    # ------------------------------------------------------------------ processes
    is_main_process = property(lambda self: is_main_process(), doc="False on every torchrun rank but 0.")
    is_distributed = property(lambda self: is_distributed(), doc="True inside a multi-process torchrun job.")

    all_reduce_sum = staticmethod(all_reduce_sum)
    barrier = staticmethod(barrier)

    def compile(self, **kwargs) -> "Learner":
        """Wrap the model with ``torch.compile(model, **kwargs)`` (opt-in); files still hold the plain weights."""
        self.model = torch.compile(self.model, **kwargs)
        return self

    # ------------------------------------------------------------------ callbacks
    def add_cbs(self, cbs: Iterable[Callback]) -> List[Callback]:
        """Add callbacks (kept for every later fit); returns those added."""
        added = core.callback_list(cbs)
        self.cbs.extend(added)
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
        self._handlers = {e: tuple(getattr(c, e) for c in ordered if callable(getattr(c, e, None)))
                          for e in core.EVENTS}
        self.recorder = self.get_cb(Recorder)

    def _fire(self, event: str) -> None:
        for handler in self._handlers[event]:
            handler(self)

    # ------------------------------------------------------------------ layer groups, optimizer
    freeze_to, freeze, unfreeze, bn_freeze = freeze_to, freeze, unfreeze, bn_freeze
    from_model_data, set_data, half, float = classmethod(from_model_data), set_data, half, to_float
    crit = property(lambda self: self.loss_func, lambda self, f: setattr(self, "loss_func", f),
                    doc="The loss (fastai 0.7's name for `loss_func`); set it to change the loss of later fits.")

    def create_opt(self) -> torch.optim.Optimizer:
        """(Re)build the optimizer with one param group per layer group."""
        self.opt = create_opt(self.layer_groups, self.opt_func)
        return self.opt

    # ------------------------------------------------------------------ fit
    def fit(self, lrs, n_cycle: int, wds=None, *, callbacks: Optional[Iterable[Callback]] = None,
            resume: Union[str, bool, None] = None, allow_nonfinite: bool = False, **options) -> Optional[List[float]]:
        """Train with fastai 0.7 semantics: `n_cycle` epochs at constant `lrs`, or with `cycle_len`, `n_cycle` SGDR
        cycles (``lr = lr_max/2 * (1 + cos(pi*t/nb))`` set every batch) with a snapshot at each cycle end. The
        keyword options are the fields of `FitArgs` (documented there); `callbacks` are added for this fit;
        `resume='ckpt'` continues the fit saved in that checkpoint (refused when it holds NaN or inf, unless
        `allow_nonfinite`); `resume=True` continues from `checkpoint=` when it exists, else starts fresh.
        Returns the last ``[val_loss, *metrics]``."""
        args = FitArgs.from_call(lrs, n_cycle, dict({"amp": self.amp}, **options, wds=wds))  # every one checked
        opt = self.opt if self.opt is not None else self.create_opt()
        args = args.for_groups(len(opt.param_groups), self.wd)
        schedule = args.schedule(n_train_batches(self.data.train_dl))
        position, extra = args.start_position(schedule), []
        if resume is not None:  # checks the checkpoint against this fit, restores weights and optimizer
            args, position, extra = resume_fit(self, resume, args, position, allow_nonfinite)
        self.fit_args = args.to_dict()
        return self.run_fit(position, [*args.callbacks(schedule), *extra, *core.callback_list(callbacks or [])])

    fit.__signature__ = fit_signature(fit)

    fit_schedule, fit_opt_sched = fit_schedule, fit_opt_sched

    def resume(self, name: str, callbacks: Optional[Iterable[Callback]] = None,
               allow_nonfinite: bool = False) -> Optional[List[float]]:
        """Continue the fit saved in checkpoint `name` (``fit(..., checkpoint=name)``) from where it was
        written, with the arguments stored in it."""
        self.writer.wait()
        saved = saved_fit_args(read_checkpoint(self.model_file(check_name(name, "name"))), name)
        return self.fit(saved.pop("lrs"), saved.pop("n_cycle"), callbacks=callbacks, resume=name,
                        allow_nonfinite=allow_nonfinite, **saved)

    lr_find = lr_find

    # ------------------------------------------------------------------ the loop
    def run_fit(self, position: Position, callbacks: Iterable[Callback] = ()) -> Optional[List[float]]:
        """The loop from `position` with `callbacks` added for this run (the optimizer must exist): what `fit`,
        `fit_schedule`, `fit_opt_sched` and `lr_find` call. Returns the recorder's last ``[val_loss, *metrics]``."""
        stepping = step_callbacks(self.opt)  # checks there is something to train
        self.position = position
        position.settle()
        added = self.add_cbs([*callbacks, *stepping])
        try:
            self._with_events("fit", self._do_fit, core.CancelFitException)
        finally:
            self.training = False
            try:
                self._fire("cleanup_fit")
            finally:
                self.remove_cbs(added)
        return self.recorder.last_values if self.recorder is not None else None

    def _with_events(self, name: str, body: Callable[[], None], cancel: type,
                     finish: Optional[Callable[[], None]] = None) -> None:
        """``before_<name>``, `body`, then `finish()` (the position moves past the unit) and ``after_<name>``.
        `cancel` ends this unit early but finished; an outer unit's cancel closes it on its way out (the
        after-event fires) without finishing it. Other errors skip `finish` and the after-event."""
        try:
            self._fire(f"before_{name}")
            body()
        except cancel:
            pass
        except core.CancelException:
            self._fire(f"after_{name}")
            raise
        if finish is not None:
            finish()
        self._fire(f"after_{name}")

    def _do_fit(self) -> None:
        pos = self.position
        while pos.epoch < pos.n_epochs:
            self._with_events("epoch", self._do_epoch, core.CancelEpochException, pos.finish_epoch)
            pos.next_epoch()

    def _do_epoch(self) -> None:
        if self.position.stage != "validate":  # a resumed epoch whose training was over only validates
            self._do_train()
        if self.data.valid_dl is not None:
            self.dl = self.data.valid_dl
            self.model.eval()
            self.training = False
            with torch.no_grad():
                self._with_events("validate", self._valid_batches, core.CancelValidException)

    def _do_train(self) -> None:
        """The epoch's data from the batch the position points at, ``before_train``, batches, ``after_train``."""
        pos = self.position
        self.dl = self.data.train_dl
        batches = epoch_batches(self.dl, pos.epoch, pos.batch_idx, pos.epoch_size)
        self.model.train()
        self.training = True
        pos.start_train()
        self._with_events("train", partial(self._train_batches, batches), core.CancelTrainException,
                          pos.finish_train)

    def _train_batches(self, batches) -> None:
        pos = self.position
        try:
            for batch in batches:
                pos.start_batch()
                self._one_batch(batch)
        finally:
            pos.abandon_batch()  # a batch cut short by an epoch or fit cancel (or an error) is not done

    def _valid_batches(self) -> None:
        for batch in self.dl:
            self._one_batch(batch)

    def _one_batch(self, batch) -> None:
        """The batch unit, its event loops written out (it runs once per batch): ``before_batch``, `_do_batch`,
        ``after_batch``. CancelBatchException ends the batch early but done (after_batch runs); an epoch or fit
        cancel raised inside abandons it (no after_batch, not done). The position moves on after after_batch."""
        self.xb, self.yb = self.to_device(batch)
        self.pred = self.loss = self.loss_grad = None
        handlers = self._handlers
        try:
            for handler in handlers["before_batch"]:
                handler(self)
            self._do_batch()
        except core.CancelBatchException:
            pass
        if not self.training:
            for handler in handlers["after_batch"]:
                handler(self)
            return
        pos = self.position
        pos.finish_batch()
        try:
            for handler in handlers["after_batch"]:
                handler(self)
        finally:
            pos.next_batch()

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
            self.loss_grad.backward()
        except core.CancelBackwardException:
            pass
        try:
            for handler in handlers["after_backward"]:
                handler(self)
            self.opt.step()
        except core.CancelStepException:
            pass
        for handler in handlers["after_step"]:
            handler(self)
        self.opt.zero_grad(set_to_none=True)

    def to_device(self, batch) -> Tuple[Tuple, Tuple]:
        """A batch as ``(inputs, targets)`` on the learner's device: the last element is the target."""
        return split_batch(batch, self.device, self.channels_last)

    # ------------------------------------------------------------------ predictions, snapshots
    predict, predict_with_targs, predict_dl, TTA = predict, predict_with_targs, predict_dl, tta
    predict_array, summary = predict_array, summary
    snapshots, saved_cycles, load_cycle = list_snapshots, saved_cycles, load_cycle
    predict_snapshots, average_snapshots = predict_snapshots, average_snapshots

    # ------------------------------------------------------------------ files
    @property
    def saved_model(self) -> nn.Module:
        """The module whose state dict files hold: the plain model (under any DDP or torch.compile wrapper)."""
        return unwrap_model(self.model)

    @property
    def models_path(self) -> Path:
        """The folder weights are saved to: ``{path}/{model_dir}``."""
        return self.path / self.model_dir

    def model_file(self, name: str) -> Path:
        """Path of the weights file called `name`."""
        return self.models_path / f"{check_name(name)}.pt"

    save, load = save, load

    def __repr__(self) -> str:
        return (f"Learner(model={type(self.saved_model).__name__}, device={self.device}, "
                f"callbacks=[{', '.join(type(c).__name__ for c in self.cbs)}])")
