"""Stop a fit whose training loss became NaN or infinite, without a host sync per batch: the check
reads what the recorder already brought back (every `sync_every` batches, before every checkpoint and
at the end of each epoch's training) and names the first bad batch. Installed by default."""
from __future__ import annotations

from ..core import Callback

__all__ = ["TerminateOnNaN", "NonFiniteLossError", "raise_if_nonfinite"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the fit was stopped before writing anything more."""


def raise_if_nonfinite(learn) -> None:
    """Raise `NonFiniteLossError` naming the epoch, batch and iteration of the first non-finite training loss
    the recorder has read back (``learn.recorder.nonfinite``), and the weight files still on disk."""
    rec = learn.recorder
    bad = rec.nonfinite if rec is not None else None
    if bad is None:
        return
    files = sorted(p.name for p in learn.models_path.glob("*.pt")) if learn.models_path.is_dir() else []
    kept = f"the files written before it are untouched: {files}" if files else "no weights were saved before it"
    raise NonFiniteLossError(
        f"training loss is {bad['loss']} at epoch {bad['epoch']}, batch {bad['batch']} (iteration {bad['iteration']}); "
        f"the fit was stopped and {kept}. Lower the learning rate (learn.lr_find() helps) and reload good weights "
        f"(learn.load_cycle / learn.resume)")


class TerminateOnNaN(Callback):
    """Raises `NonFiniteLossError` at the first non-finite training loss the recorder has read back. It runs
    after the recorder and before snapshots and checkpoints (which check again right before they write), so
    nothing is written once the loss has gone bad: the files on disk are the last good ones."""

    order = 55

    def after_batch(self, learn) -> None:
        rec = learn.recorder  # checked every batch: one attribute read
        if rec is not None and rec.nonfinite is not None and learn.training:
            raise_if_nonfinite(learn)

    def after_train(self, learn) -> None:
        raise_if_nonfinite(learn)
