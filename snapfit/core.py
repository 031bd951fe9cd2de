"""The vocabulary of the loop: the `Callback` base class, the event names and the control-flow exceptions.

Callbacks never import the learner: they get it as the argument of each event and read its documented
public attributes (``learn.position``, ``learn.loss``, ``learn.opt``, ``learn.recorder`` ...). They may
import this module and the modules of what they build on (``position``, ``io``, ``plots``, ...).

The callbacks snapfit installs, by `order` (lower runs first in every event; ties keep insertion order):

=====  ======================  ============================================================================
order  callback                why there
=====  ======================  ============================================================================
-900   DistributedTraining     wraps the model in DDP before anyone else sees it (torchrun only)
 -30   PhaseScheduler          a training phase's optimizer, weight decay and data, before the LR is set
 -50   FreezeBatchNorm         puts frozen BatchNorm layers in eval mode right after ``model.train()``
 -20   ParamScheduler          sets the batch's LRs before any other before_batch handler reads them
  10   LARS                    rescales gradients in after_backward, before anything steps
  40   LRFinder                reads the loss and stops the range test (the recorder is out of the way then)
  50   Recorder                appends the batch's LR and loss; closes each epoch's history
  55   TerminateOnNaN          stops on a non-finite loss the recorder read back, before any file is written
  58   StopOnDivergence        stop_div of training phases: after the recorder, so the last batch is recorded
  60   ProgressCallback        shows what the recorder holds once it has closed the epoch
  70   CycleSnapshot           saves after the epoch's validation was recorded
  72   SaveBest                best_save_name: after the recorder has the epoch's validation
  75   SWA                     averages the epoch's weights
  80   Checkpoint              writes once every stateful callback above has finished the event
 800   DecoupledWeightDecay    shrinks the weights in after_backward, after LARS, before the step
 900   MixedPrecision          last in after_loss / after_backward: scaled backward, then the scaler's step
 900   ClosureStep             last in after_backward: ``opt.step(closure)`` for LBFGS-style optimizers
1000   Resume                  restores callback state after every before_fit; RNG last in the epoch events
1100   DeferredInterrupt       last in after_batch: Ctrl-C stops at a batch boundary, after the checkpoint
2000   BackgroundWriter        last in cleanup_fit: the fit returns once every file it wrote is in place
=====  ======================  ============================================================================
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

__all__ = [
    "EVENTS", "Callback", "CancelFitException", "CancelEpochException", "CancelTrainException",
    "CancelValidException", "CancelBatchException", "CancelBackwardException",
    "CancelStepException", "CancelException", "callback_list",
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
    """Raised in `after_loss` by a callback that ran the backward pass itself (MixedPrecision)."""


class CancelStepException(CancelException):
    """Raised in `after_backward` by a callback that stepped the optimizer itself (MixedPrecision,
    ClosureStep); `after_step` still runs."""


class Callback:
    """Base class of every callback: define any of the methods named in `EVENTS`, each taking the learner as
    its only argument. Callbacks run in ascending `order` (ties: insertion order). A callback whose state
    must survive a resume defines `state_dict`/`load_state_dict` and a stable `state_key`: checkpoints
    store its state under that key, so renaming the class does not break old checkpoints."""

    order: int = 0
    state_key: Optional[str] = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order})"


def callback_list(cbs: Any) -> List[Callback]:
    """`cbs` (a list or tuple of callbacks; a callback class is instantiated) as a list, with a clear TypeError
    for a single callback or anything that is not a callback."""
    if isinstance(cbs, Callback) or isinstance(cbs, type) and issubclass(cbs, Callback):
        one = cbs.__name__ if isinstance(cbs, type) else type(cbs).__name__
        raise TypeError(f"callbacks must be a list of Callback instances, got a single {one}: pass callbacks=[...]")
    if isinstance(cbs, (str, bytes)) or not hasattr(cbs, "__iter__"):
        raise TypeError(f"callbacks must be a list of Callback instances, got {cbs!r}")
    out = [cb() if isinstance(cb, type) and issubclass(cb, Callback) else cb for cb in cbs]
    for cb in out:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be Callback instances, got {cb!r}")
    return out
