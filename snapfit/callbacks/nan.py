"""Stop a fit whose training loss became NaN or infinite, without a host sync per batch: the check
reads what the recorder already brought back (every `sync_every` batches, at every checkpoint and at
the end of each epoch's training) and names the first bad batch. Installed by default."""
from __future__ import annotations

from ..core import Callback

__all__ = ["TerminateOnNaN", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the fit was stopped before writing anything more."""


class TerminateOnNaN(Callback):
    """Raises `NonFiniteLossError` naming the epoch and batch of the first non-finite training loss.
    It runs after the recorder and before snapshots and checkpoints, so nothing is written once the
    loss has gone bad: the files on disk are the last good ones."""

    order = 55

    def after_batch(self, learn) -> None:
        rec = learn._recorder  # checked every batch, so without a property call
        if rec is not None and rec.nonfinite_at is not None and learn.training:
            self._check(learn)

    def after_train(self, learn) -> None:
        self._check(learn)

    def _check(self, learn) -> None:
        rec = learn.sched
        it = rec.nonfinite_at if rec is not None else None
        if it is None:
            return
        epoch, batch = divmod(it, learn.n_batches)
        value = rec.losses[it - rec.first_iteration]
        files = sorted(p.name for p in learn.models_path.glob("*.pt")) if learn.models_path.is_dir() else []
        kept = f"the files written before it are untouched: {files}" if files else "no weights were saved before it"
        raise NonFiniteLossError(
            f"training loss is {value} at epoch {epoch}, batch {batch} (iteration {it}); the fit was stopped and "
            f"{kept}. Lower the learning rate (learn.lr_find() helps) and reload good weights "
            f"(learn.load_cycle / learn.resume)")
