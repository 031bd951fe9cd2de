"""Where a fit stands: the single source of truth for schedules, snapshots, checkpoints and resumes.

Every field means the same thing in every event:

=============  ===========================================================================================
``epoch``      the epoch in progress (or the next one between epochs); ``n_epochs`` once the fit is done
``batch_idx``  index in the epoch of the training batch in progress, or of the next one
``iteration``  index in the fit of that training batch (a fit started at a later cycle starts there)
``n_epochs``   epochs in the fit; ``n_batches`` training batches per epoch (``epoch_size`` for the current
               epoch when the fit's epochs differ in length: training phases with their own data)
``stage``      how far the epoch has got: ``'start'`` (nothing yet), ``'train'`` (between training
               batches), ``'batch'`` (a training batch is running: before_batch .. after_step),
               ``'batch_end'`` (its after_batch: the batch is done), ``'validate'`` (training is over:
               after_train, validation, after_validate), ``'end'`` (after_epoch: the epoch is done)
=============  ===========================================================================================

and the counts of finished units are properties, so no callback adds or subtracts 1:
``iters_done`` (training batches done in the fit), ``batches_done`` (in this epoch), ``epochs_done``.

Only the loop moves the position (`start_batch`, `finish_batch`, `next_batch`, ...). A position saved
in any event and loaded back says exactly where to continue (`settle` moves past a finished unit).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Tuple

__all__ = ["Position", "STAGES"]

#: The stages of an epoch, in order.
STAGES = ("start", "train", "batch", "batch_end", "validate", "end")


@dataclass
class Position:
    """Where a fit stands (see the module docstring for the meaning of each field)."""

    epoch: int = 0
    batch_idx: int = 0
    iteration: int = 0
    n_epochs: int = 0
    n_batches: int = 0
    stage: str = "start"
    epoch_sizes: Tuple[int, ...] = ()  # training batches of each epoch, when they are not all n_batches

    @property
    def iters_done(self) -> int:
        """Training batches finished in the fit (``iteration + 1`` in after_batch, else ``iteration``)."""
        return self.iteration + (self.stage == "batch_end")

    @property
    def batches_done(self) -> int:
        """Training batches finished in this epoch."""
        return self.batch_idx + (self.stage == "batch_end")

    @property
    def epochs_done(self) -> int:
        """Epochs finished in the fit (``epoch + 1`` in after_epoch, else ``epoch``)."""
        return self.epoch + (self.stage == "end")

    @property
    def epoch_size(self) -> int:
        """Training batches in the current epoch (`n_batches` unless `epoch_sizes` says otherwise)."""
        return self.epoch_sizes[self.epoch] if self.epoch < len(self.epoch_sizes) else self.n_batches

    @property
    def finished(self) -> bool:
        """True when no epoch is left to run."""
        return self.epochs_done >= self.n_epochs

    # ------------------------------------------------------------------ moves (the loop calls these)
    def start_train(self) -> None:
        """The epoch's training begins (its data iterator exists)."""
        self.stage = "train"

    def start_batch(self) -> None:
        """A training batch begins."""
        self.stage = "batch"

    def finish_batch(self) -> None:
        """The training batch is done (stepped, or cancelled with CancelBatchException)."""
        self.stage = "batch_end"

    def next_batch(self) -> None:
        """After a finished batch's after_batch: point at the next batch."""
        if self.stage == "batch_end":
            self.iteration += 1
            self.batch_idx += 1
        self.stage = "train"

    def abandon_batch(self) -> None:
        """A training batch stopped by an epoch or fit cancel (or an error) is not done: it is the next one."""
        if self.stage == "batch":
            self.stage = "train"

    def finish_train(self) -> None:
        """Training of this epoch is over (validation is next)."""
        self.stage = "validate"

    def finish_epoch(self) -> None:
        """The epoch is over (after_epoch is next)."""
        self.stage = "end"

    def next_epoch(self) -> None:
        """After after_epoch: point at the start of the next epoch."""
        self.epoch += 1
        self.batch_idx = 0
        self.stage = "start"

    def settle(self) -> None:
        """Move past a unit that was finished when this position was saved (in after_batch or after_epoch)."""
        if self.stage == "batch_end":
            self.next_batch()
        if self.stage == "end":
            self.next_epoch()

    def settled(self) -> "Position":
        """A copy moved past a finished unit: the point a fit stopped here would continue from."""
        pos = replace(self)
        pos.settle()
        return pos

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Plain-data copy (for checkpoints; `epoch_sizes` only when there are any)."""
        state = asdict(self)
        if not self.epoch_sizes:
            del state["epoch_sizes"]
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a copy made by `state_dict`."""
        if state.get("stage", "start") not in STAGES:
            raise ValueError(f"unknown position stage {state.get('stage')!r}; expected one of {STAGES}")
        self.epoch_sizes = ()
        for k, v in state.items():
            setattr(self, k, v if k == "stage" else tuple(int(x) for x in v) if k == "epoch_sizes" else int(v))
