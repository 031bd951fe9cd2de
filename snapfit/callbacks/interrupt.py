"""Ctrl-C (SIGINT, Jupyter's stop button) during a fit stops it at the next batch boundary, where the state is
whole and a checkpoint can be written; a second Ctrl-C stops at once. Installed by default."""
from __future__ import annotations

import signal
import sys
import threading

from ..core import Callback

__all__ = ["DeferredInterrupt"]


class DeferredInterrupt(Callback):
    """Catches the first SIGINT of a fit and raises KeyboardInterrupt after the batch in progress (training
    or validation) has finished; sets ``learn.interrupted`` to ``'train'`` or ``'validate'`` (None otherwise),
    so the Checkpoint callback can save the state in `cleanup_fit`."""

    order = 1100  # last in after_batch: the batch is recorded and checkpointed before the fit stops

    def __init__(self):
        self.pending = False
        self._old = None

    def before_fit(self, learn) -> None:
        learn.interrupted = None
        self.pending, self._old = False, None
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not None:
            try:
                self._old = signal.signal(signal.SIGINT, self._handler)
            except (ValueError, OSError):  # pragma: no cover - e.g. embedded interpreters
                self._old = None

    def _handler(self, signum, frame) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True
        print("\nsnapfit: stopping after this batch (interrupt again to stop at once)", file=sys.stderr, flush=True)

    def after_batch(self, learn) -> None:
        if self.pending:
            learn.interrupted = "train" if learn.training else "validate"
            pos = learn.position
            raise KeyboardInterrupt(f"fit interrupted before epoch {pos.epoch}, batch {pos.batches_done} "
                                    f"(iteration {pos.iters_done}); everything before it is done")

    def cleanup_fit(self, learn) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
        self.pending = False
