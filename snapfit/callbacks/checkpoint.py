"""Full training-state checkpoints and exact resume.

A checkpoint holds what continuing a fit needs and nothing else: model and optimizer state, the
position (epoch, batch, iteration), the fit's arguments, every callback's state (the recorder's
history among them), the RNG states, and the data order of the current epoch. Only tensors and
plain containers, so it loads with ``torch.load(weights_only=True)``; written with the atomic writer.

Resuming replays the same fit: the RNG state of the epoch start is restored before the epoch's
data iterator is created (so it draws the same seed) and the state of the checkpoint moment just
before the first remaining batch. On CPU the remaining batches give bit-identical weights.
"""
from __future__ import annotations

import sys
import warnings
from typing import Any, Dict, Optional, Union

import torch

from ..core import Callback
from ..io import DamagedFileError, atomic_save, load_file
from ..rng import get_rng_states, set_rng_states

__all__ = ["Checkpoint", "read_checkpoint", "merge_fit_args", "FORMAT"]

FORMAT = "snapfit.checkpoint"
VERSION = 1
_SCHEDULE_ARGS = ("lrs", "n_cycle", "wds", "cycle_len", "cycle_mult", "cycle_save_name", "warmup", "start_cycle",
                  "use_swa", "swa_start", "amp")


def read_checkpoint(path) -> Dict[str, Any]:
    """Load and validate a checkpoint file (weights_only); clear errors when it is not one."""
    state = load_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DamagedFileError(f"{path} is not a snapfit checkpoint (it holds "
                               f"{'a state dict of weights' if isinstance(state, dict) else type(state).__name__}); "
                               "checkpoints are written by fit(..., checkpoint=name); weights go through learn.load")
    if state.get("version", 0) > VERSION:
        raise ValueError(f"{path} was written by a newer snapfit (checkpoint version {state['version']}); upgrade")
    return state


def merge_fit_args(call: Dict[str, Any], saved: Dict[str, Any], name: str) -> Dict[str, Any]:
    """The arguments of a resumed fit: the schedule-defining ones must equal the saved ones;
    the checkpoint cadence is inherited unless this call names its own."""
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, this call {call.get(k)!r}"
             for k in _SCHEDULE_ARGS if _norm(call.get(k)) != _norm(saved.get(k))]
    if diffs:
        raise ValueError(f"resume={name!r} continues a different fit: " + "; ".join(diffs)
                         + f". Call learn.resume({name!r}) to continue with the saved arguments")
    out = dict(saved)
    if call.get("checkpoint") is not None:
        out["checkpoint"], out["checkpoint_every"] = call["checkpoint"], call["checkpoint_every"]
    return out


def _norm(v):
    if isinstance(v, (list, tuple)):
        return [float(x) for x in v]
    return v


def _callback_key(cb, taken) -> str:
    key, i = cb.name, 1
    while key in taken:
        i += 1
        key = f"{cb.name}_{i}"
    return key


class Checkpoint(Callback):
    """Writes ``{path}/{model_dir}/{name}.pt`` every `every` batches (an int), at every epoch end
    (``'epoch'``) or cycle end (``'cycle'``), at the end of the fit, and when a fit is interrupted
    (Ctrl-C) at a batch boundary. With `resume_state`, restores a fit from such a file."""

    order = 80  # after the recorder (50), TerminateOnNaN (55) and the snapshots (70)

    def __init__(self, name: Optional[str], every: Union[int, str, None] = "epoch",
                 resume_state: Optional[Dict[str, Any]] = None):
        if name is not None:
            self.check_every(every)
        self.ckpt_name, self.every, self.resume_state = name, every, resume_state
        self.written: list = []

    @staticmethod
    def check_every(every) -> None:
        """Validate `checkpoint_every`: a positive int (batches), ``'epoch'`` or ``'cycle'``."""
        ok = (isinstance(every, int) and not isinstance(every, bool) and every > 0) or every in ("epoch", "cycle")
        if not ok:
            raise ValueError(f"checkpoint_every must be a positive int (batches), 'epoch' or 'cycle', got {every!r}")

    # ------------------------------------------------------------------ events
    def before_fit(self, learn) -> None:
        sampler = getattr(learn.data.train_dl, "sampler", None)
        if self.ckpt_name and isinstance(sampler, torch.utils.data.RandomSampler):
            warnings.warn("checkpoint=: the training loader's RandomSampler draws each epoch's order from the global "
                          "RNG when the epoch starts, so a resume in the middle of an epoch replays a different order. "
                          "For an exact resume use DataBunch.from_arrays / ImageClassifierData (their order is a "
                          "function of seed and epoch) or snapfit.EpochShuffleSampler", stacklevel=2)
        self._epoch_rng = self._train_end_rng = None
        self._restore_epoch_rng = self._restore_batch_rng = None
        state, self.resume_state = self.resume_state, None
        if state is not None:
            self._restore(learn, state)

    def before_epoch(self, learn) -> None:
        if self._restore_epoch_rng is not None:
            set_rng_states(self._restore_epoch_rng)
            self._restore_epoch_rng = None
        self._epoch_rng = get_rng_states() if self.ckpt_name else None

    def before_train(self, learn) -> None:
        if self._restore_batch_rng is not None:
            set_rng_states(self._restore_batch_rng)
            self._restore_batch_rng = None

    def before_batch(self, learn) -> None:
        if learn.training and self._due_on_batch(learn):
            learn.sync_requested = True  # the recorder reads the losses back before we write

    def after_batch(self, learn) -> None:
        if learn.training and self._due_on_batch(learn):
            self.write(learn, learn.epoch, learn.batch_idx + 1, learn.iteration + 1)

    def after_train(self, learn) -> None:
        if self.ckpt_name:
            self._train_end_rng = get_rng_states()

    def after_epoch(self, learn) -> None:
        if self.ckpt_name is None or learn.interrupted:
            return
        if self.every == "epoch" or (self.every == "cycle" and learn.schedule is not None
                                     and learn.schedule.is_cycle_end(learn.iteration)):
            self.write(learn, learn.epoch + 1, 0, learn.iteration)

    def after_fit(self, learn) -> None:
        if self.ckpt_name:  # the position says where the fit ended (past the last epoch when it completed)
            self.write(learn, learn.epoch, learn.batch_idx, learn.iteration)

    def cleanup_fit(self, learn) -> None:
        if not (self.ckpt_name and learn.interrupted):
            return
        rec = learn.sched
        if rec is not None:
            rec.flush()
            if rec.nonfinite_at is not None:
                print(f"snapfit: interrupted after the loss went non-finite (iteration {rec.nonfinite_at}); "
                      f"no checkpoint written, the last one is kept", file=sys.stderr, flush=True)
                return
        if learn.interrupted == "train":
            path = self.write(learn, learn.epoch, learn.batch_idx, learn.iteration)
        else:  # stopped during validation: resume re-runs this epoch's validation
            path = self.write(learn, learn.epoch, learn.n_batches, learn.iteration, rng=self._train_end_rng)
        if learn.is_main_process:
            print(f"snapfit: interrupted; checkpoint written to {path}; continue with "
                  f"learn.resume({self.ckpt_name!r})", file=sys.stderr, flush=True)

    def _due_on_batch(self, learn) -> bool:
        return bool(self.ckpt_name) and isinstance(self.every, int) and (learn.iteration + 1) % self.every == 0

    # ------------------------------------------------------------------ writing
    def state(self, learn, epoch: int, batch_idx: int, iteration: int, rng=None) -> Dict[str, Any]:
        """The checkpoint dict for the position (epoch, batch_idx, iteration) = the next batch to run."""
        rng = rng if rng is not None else get_rng_states()
        epoch_rng = rng if batch_idx == 0 else self._epoch_rng
        cbs, taken = {}, set()
        for cb in learn.cbs:
            if cb is not self and callable(getattr(cb, "state_dict", None)):
                key = _callback_key(cb, taken)
                taken.add(key)
                cbs[key] = cb.state_dict()
        return {
            "format": FORMAT, "version": VERSION, "torch_version": str(torch.__version__),
            "model": learn.saved_model.state_dict(),
            "opt": learn.opt.state_dict(),
            "position": {"epoch": epoch, "batch_idx": batch_idx, "iteration": iteration,
                         "n_epochs": learn.n_epochs, "n_batches": learn.n_batches},
            "fit_args": dict(learn.fit_args),
            "callbacks": cbs,
            "rng": rng, "rng_epoch_start": epoch_rng,
            "data": _data_order(learn.data.train_dl, epoch),
        }

    def write(self, learn, epoch: int, batch_idx: int, iteration: int, rng=None):
        """Write the checkpoint atomically (main process only); returns its path."""
        path = learn.model_file(self.ckpt_name)
        if learn.is_main_process:
            atomic_save(self.state(learn, epoch, batch_idx, iteration, rng), path)
        self.written.append((iteration, path))
        return path

    # ------------------------------------------------------------------ resuming
    def _restore(self, learn, state: Dict[str, Any]) -> None:
        pos = state["position"]
        if (pos["n_epochs"], pos["n_batches"]) != (learn.n_epochs, learn.n_batches):
            raise ValueError(
                f"the checkpoint is a fit of {pos['n_epochs']} epochs x {pos['n_batches']} batches but this one has "
                f"{learn.n_epochs} x {learn.n_batches}: the training data or batch size changed since it was written")
        saved_order = state["data"].get("order")
        if saved_order is not None and pos["batch_idx"] > 0:
            now = _data_order(learn.data.train_dl, pos["epoch"]).get("order")
            if now is None or not torch.equal(now, saved_order):
                raise ValueError("the training data order of the resumed epoch differs from the checkpoint's "
                                 "(different dataset, seed or sampler): resuming would not replay the same batches")
        taken, saved = set(), state["callbacks"]
        for cb in learn.cbs:
            if callable(getattr(cb, "load_state_dict", None)) and cb is not self:
                key = _callback_key(cb, taken)
                taken.add(key)
                if key in saved:
                    cb.load_state_dict(saved[key])
        learn.position.epoch, learn.position.batch_idx = pos["epoch"], pos["batch_idx"]
        learn.position.iteration = pos["iteration"]
        self._restore_epoch_rng = state["rng_epoch_start"]
        if pos["batch_idx"] > 0:
            self._restore_batch_rng = state["rng"]
        else:
            self._restore_epoch_rng = state["rng"]


def _data_order(dl, epoch: int) -> Dict[str, Any]:
    sampler = getattr(dl, "sampler", None)
    order = sampler.order(epoch) if callable(getattr(sampler, "order", None)) else None
    if order is not None and len(order) < 2 ** 31:
        order = order.to(torch.int32)
    return {"sampler": type(sampler).__name__, "epoch": epoch, "order": order,
            "batch_size": getattr(dl, "batch_size", None)}
