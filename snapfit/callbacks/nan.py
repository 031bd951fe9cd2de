"""Stop a fit whose training loss became NaN or infinite, without a host sync per batch: the check
reads what the recorder already brought back (every `sync_every` batches, before every checkpoint and
at the end of each epoch's training) and names the first bad batch. Installed by default."""
from __future__ import annotations

from ..core import Callback
from ..finite import NonFiniteLossError, raise_if_nonfinite_loss

__all__ = ["TerminateOnNaN", "NonFiniteLossError"]


class TerminateOnNaN(Callback):
    """Raises `NonFiniteLossError` at the first non-finite training loss the recorder has read back. It runs
    after the recorder and before snapshots and checkpoints (which check the loss and the weights again
    right before they write), so nothing is written once the loss has gone bad."""

    order = 55

    def after_batch(self, learn) -> None:
        rec = learn.recorder  # checked every batch: one attribute read
        if rec is not None and rec.nonfinite is not None and learn.training:
            raise_if_nonfinite_loss(learn)

    def after_train(self, learn) -> None:
        raise_if_nonfinite_loss(learn)
