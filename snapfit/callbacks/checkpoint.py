"""Full training-state checkpoints (``fit(..., checkpoint=name, checkpoint_every=...)``): when to write them.
What a checkpoint holds and how a fit resumes from one is `snapfit.resume`."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Optional, Union

import torch

from ..checks import is_int
from ..core import Callback
from ..finite import NonFiniteError, raise_if_nonfinite_loss, raise_if_nonfinite_state
from ..io import check_name
from ..resume import ListPacker, checkpoint_state, read_checkpoint
from ..rng import get_rng_states

__all__ = ["Checkpoint", "read_checkpoint"]


class Checkpoint(Callback):
    """Writes ``{path}/{model_dir}/{name}.pt`` every `every` training batches (an int), at every epoch end
    (``'epoch'``) or cycle end (``'cycle'``), at the end of the fit unless the last one is of that point already
    (what ``after_fit`` callbacks compute, such as SWA's BatchNorm statistics, is computed again when a finished
    fit is resumed), and when Ctrl-C stopped a fit at a batch boundary. `write` writes one more whenever asked."""

    order = 80  # after every stateful callback (recorder 50, snapshots 70, SWA 75) has finished the event

    def __init__(self, name: str, every: Union[int, str] = "epoch"):
        self.ckpt_name = check_name(name, "checkpoint")
        self.check_every(every)
        self.every = every
        self.written: list = []
        self._at_batch_end = False
        self._train_end_rng = None
        self._packer = ListPacker()
        self._written_at = None  # the position (settled) the last checkpoint continues from

    @staticmethod
    def check_every(every) -> None:
        """Validate `checkpoint_every`: a positive int (batches), ``'epoch'`` or ``'cycle'``."""
        if not ((is_int(every) and every > 0) or every in ("epoch", "cycle")):
            raise ValueError(f"checkpoint_every must be a positive int (batches), 'epoch' or 'cycle', got {every!r}")

    # ------------------------------------------------------------------ events
    def before_fit(self, learn) -> None:
        if isinstance(getattr(learn.data.train_dl, "sampler", None), torch.utils.data.RandomSampler):
            warnings.warn("checkpoint=: the training loader's RandomSampler draws each epoch's order from the global "
                          "RNG when the epoch starts, so a resume in the middle of an epoch replays a different order. "
                          "For an exact resume use DataBunch.from_arrays / ImageClassifierData (their order is a "
                          "function of seed and epoch) or snapfit.EpochShuffleSampler", stacklevel=2)
        for cb in learn.cbs:
            if cb.state_key is None and callable(getattr(cb, "state_dict", None)):
                raise TypeError(f"{type(cb).__name__} has a state_dict but no state_key: give the class a stable "
                                "state_key (e.g. state_key = 'my_callback') so checkpoints can store its state")
        self._at_batch_end, self._train_end_rng = False, None
        self._packer = ListPacker()  # each checkpoint packs only the history added since the last one
        self._written_at = None

    def before_train(self, learn) -> None:
        self._train_end_rng = None

    def after_train(self, learn) -> None:
        self._train_end_rng = get_rng_states()  # a checkpoint written during validation resumes from here

    def before_validate(self, learn) -> None:
        if self._train_end_rng is None:  # a resumed epoch that went straight to validation
            self._train_end_rng = get_rng_states()

    def after_batch(self, learn) -> None:
        if not learn.training:
            return
        if self._at_batch_end or (is_int(self.every) and learn.position.iters_done % self.every == 0):
            self.write(learn)

    def after_epoch(self, learn) -> None:
        pos, sched = learn.position, learn.schedule
        if self.every == "epoch" or (self.every == "cycle" and sched is not None  # a cycle ended in this epoch
                                     and sched.cycle_ends_between(pos.iters_done - pos.batches_done, pos.iters_done)):
            self.write(learn)

    def after_fit(self, learn) -> None:
        if self._written_at != learn.position.settled():  # the last checkpoint may already be of this very point
            self.write(learn)

    def cleanup_fit(self, learn) -> None:
        if not learn.interrupted:
            return
        try:
            path = self.write(learn)
        except NonFiniteError as e:
            print(f"snapfit: interrupted; no checkpoint written: {e}", file=sys.stderr, flush=True)
            return
        if learn.is_main_process:
            print(f"snapfit: interrupted; checkpoint written to {path}; continue with "
                  f"learn.resume({self.ckpt_name!r})", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ writing
    def write(self, learn) -> Optional[Path]:
        """Write the checkpoint of the learner as it stands (main process only, atomically) and return its path.
        Inside a training batch (before_batch .. after_step) the state is not whole: the write happens at the
        batch's end and None is returned. Nothing non-finite is written: a NaN or infinite training loss, weight
        or optimizer state stops the fit instead (`snapfit.finite`), and the previous file stays."""
        pos = learn.position
        if pos.stage == "batch":
            self._at_batch_end = True
            return None
        self._at_batch_end = False
        if learn.recorder is not None:
            learn.recorder.flush()  # the losses up to now, so the NaN check below sees them all
        raise_if_nonfinite_loss(learn)
        rng = self._train_end_rng if pos.stage == "validate" and not learn.training else None
        path = learn.model_file(self.ckpt_name)
        state = checkpoint_state(learn, rng, self._packer)
        raise_if_nonfinite_state(learn, {"weights": state["model"], "optimizer state": state["opt"]["state"]}, path)
        if learn.is_main_process:
            learn.writer.write(state, path)  # copied now, written in the background
        self.written.append((pos.iters_done, path))
        self._written_at = pos.settled()
        return path
