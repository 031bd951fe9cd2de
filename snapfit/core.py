"""The small core every callback depends on: the `Callback` base class, the event names and
the control-flow exceptions. Callbacks import only this module; they reach the learner
through the object passed to each event."""
from __future__ import annotations

from typing import Tuple

__all__ = [
    "EVENTS", "Callback", "CancelFitException", "CancelEpochException", "CancelTrainException",
    "CancelValidException", "CancelBatchException", "CancelBackwardException",
    "CancelStepException", "CancelException",
]

#: Events in the order the loop fires them. `cleanup_fit` is the exception: it always runs
#: last, even when the fit ends with an error or a KeyboardInterrupt, to release resources.
EVENTS: Tuple[str, ...] = (
    "before_fit", "before_epoch", "before_train", "before_batch", "after_pred", "after_loss",
    "after_backward", "after_step", "after_batch", "after_train", "before_validate",
    "after_validate", "after_epoch", "after_fit", "cleanup_fit",
)


class CancelException(Exception):
    """Base of the control-flow exceptions: raising one ends a unit of the loop cleanly."""


class CancelFitException(CancelException):
    """Stop the fit; `after_fit` and the after-events of the epoch/train/validate units cut short still
    run. A batch in progress is abandoned (no `after_batch`; it does not count as done)."""


class CancelEpochException(CancelException):
    """Skip the rest of this epoch (its remaining batches and validation); `after_train`/`after_epoch`
    run, a batch in progress is abandoned."""


class CancelTrainException(CancelException):
    """Skip the remaining training batches of this epoch; validation still runs."""


class CancelValidException(CancelException):
    """Skip the remaining validation batches of this epoch."""


class CancelBatchException(CancelException):
    """Skip the rest of this batch (no step if raised before it); `after_batch` still runs and the
    batch counts as done (its data was consumed: the schedule moves on)."""


class CancelBackwardException(CancelException):
    """Raised in `after_loss` by a callback that ran the backward pass itself."""


class CancelStepException(CancelException):
    """Raised in `after_backward` by a callback that stepped the optimizer itself (e.g. AMP)."""


class Callback:
    """Base class of every callback: define any of the methods named in `EVENTS`, each taking
    the learner as its only argument. Callbacks run in ascending `order` (ties: insertion order)."""

    order: int = 0

    @property
    def name(self) -> str:
        """Snake-case name of the callback's class (``LARS`` -> ``lars``, ``CycleSnapshot`` -> ``cycle_snapshot``)."""
        cls = type(self).__name__
        out = []
        for i, ch in enumerate(cls):
            if ch.isupper() and i and (not cls[i - 1].isupper() or (i + 1 < len(cls) and cls[i + 1].islower())):
                out.append("_")
            out.append(ch.lower())
        return "".join(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order})"
