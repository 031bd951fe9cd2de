"""Per-cycle snapshots: at the end of every SGDR cycle the weights are saved to
``{path}/{model_dir}/{name}_cyc_{i}.pt`` (fastai 0.7's ``cycle_save_name``), with a small JSON sidecar
``{name}_cyc_{i}.json`` recording when it was taken and how it validated."""
from __future__ import annotations

import math
import time
import warnings
from typing import Optional

from ..core import Callback
from ..finite import raise_if_nonfinite_state
from ..io import atomic_write_json, check_name
from ..snapshots import snapshot_name

__all__ = ["CycleSnapshot", "SaveBest"]


class CycleSnapshot(Callback):
    """Saves the model at the end of each cycle of ``learn.schedule``. The cycle that ends is derived from
    the schedule and the iterations done, never counted here. A cycle that ends with an epoch is saved after
    the epoch's validation, so the saved weights are the ones that were just validated (and the sidecar has
    their validation loss); one that ends inside an epoch (a training phase of a fractional number of
    epochs) is saved after its last batch."""

    order = 70  # after the recorder has closed the epoch

    def __init__(self, name: str):
        self.save_name = check_name(name, "cycle_save_name")
        self.saved: list = []

    def before_fit(self, learn) -> None:
        self._ends = frozenset(learn.schedule.cycle_ends()) if learn.schedule is not None else frozenset()

    def after_batch(self, learn) -> None:
        pos = learn.position
        if learn.training and pos.iters_done in self._ends and pos.batches_done < pos.epoch_size:
            self._save(learn, learn.schedule.cycle_ending_at(pos.iters_done), [])  # inside an epoch: not validated

    def after_epoch(self, learn) -> None:
        done = learn.position.iters_done
        cycle = learn.schedule.cycle_ending_at(done) if learn.schedule is not None else None
        if cycle is None:
            return
        rec = learn.recorder
        val = rec.last_values if rec is not None and rec.last_values is not None else []
        stem = snapshot_name(self.save_name, cycle)
        if learn.data.valid_dl is not None and val and not math.isfinite(val[0]):
            # weights that predict NaN: stop if they are not finite themselves, else leave this cycle out
            raise_if_nonfinite_state(learn, {"weights": learn.saved_model.state_dict()}, learn.model_file(stem))
            warnings.warn(f"the validation loss is {val[0]} at the end of cycle {cycle}: no snapshot {stem}.pt for it "
                          "(its weights are finite but predict NaN or inf)", stacklevel=2)
            return
        self._save(learn, cycle, val)

    def _save(self, learn, cycle: int, val) -> None:
        """Save the weights of `cycle` (in the background) and then the sidecar (`val`: the epoch's
        ``[val_loss, *metrics]``, or none)."""
        rec = learn.recorder
        names = rec.metric_names if rec is not None else []
        record = {"cycle": cycle, "epoch": learn.position.epoch, "iteration": learn.position.iters_done,
                  "val_loss": _num(val[0]) if val else None,
                  "metrics": {n: _num(v) for n, v in zip(names, val[1:])}, "saved_at": time.time()}
        stem = snapshot_name(self.save_name, cycle)
        sidecar = learn.model_file(stem).with_suffix(".json")
        path = learn.save(stem, wait=False, then=lambda: atomic_write_json(record, sidecar))
        self.saved.append((cycle, path))


def _num(v):
    """JSON has no NaN: report a missing value as None."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


class SaveBest(Callback):
    """fastai 0.7's ``best_save_name``: after each epoch, save the model as `name` when the first metric
    improved (ties: lower validation loss), or the validation loss fell when there are no metrics."""

    order = 72  # after the recorder has closed the epoch
    state_key = "save_best"

    def __init__(self, name: str):
        self.save_name = check_name(name, "best_save_name")
        self.best = None  # (first metric, -val_loss) or (-val_loss,) of the best epoch
        self.best_epoch: Optional[int] = None

    def before_fit(self, learn) -> None:
        if learn.data.valid_dl is None:
            raise ValueError("best_save_name keeps the epoch that validated best: the data has no validation set")

    def after_epoch(self, learn) -> None:
        vals = learn.recorder.last_values if learn.recorder is not None else None
        if not vals or not all(math.isfinite(v) for v in vals[:2]):
            return
        key = (vals[1], -vals[0]) if len(vals) > 1 else (-vals[0],)
        if self.best is None or key > self.best:
            learn.save(self.save_name, wait=False)
            self.best, self.best_epoch = key, learn.position.epoch

    def state_dict(self) -> dict:
        """The best value so far and its epoch (for checkpoints)."""
        return {"best": list(self.best) if self.best is not None else None, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved."""
        self.best = tuple(state["best"]) if state["best"] is not None else None
        self.best_epoch = state["best_epoch"]
