"""Per-cycle snapshots: at the end of every SGDR cycle the weights are saved to
``{path}/{model_dir}/{name}_cyc_{i}.pt`` (fastai 0.7's ``cycle_save_name``), with a small JSON sidecar
``{name}_cyc_{i}.json`` recording when it was taken and how it validated."""
from __future__ import annotations

import math
import time
import warnings

from ..core import Callback
from ..finite import raise_if_nonfinite_state
from ..io import atomic_write_json, check_name
from ..snapshots import snapshot_name

__all__ = ["CycleSnapshot"]


class CycleSnapshot(Callback):
    """Saves the model at the end of each cycle of ``learn.schedule``. The cycle that ends is derived from
    the schedule and the iterations done, never counted here; saving happens after the epoch's validation
    so the saved weights are the ones that were just validated."""

    order = 70  # after the recorder has closed the epoch

    def __init__(self, name: str):
        self.save_name = check_name(name, "cycle_save_name")
        self.saved: list = []

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
        path = learn.save(stem)
        names = rec.metric_names if rec is not None else []
        record = {"cycle": cycle, "epoch": learn.position.epoch, "iteration": done,
                  "val_loss": _num(val[0]) if val else None,
                  "metrics": {n: _num(v) for n, v in zip(names, val[1:])}, "saved_at": time.time()}
        if learn.is_main_process:
            atomic_write_json(record, path.with_suffix(".json"))
        self.saved.append((cycle, path))


def _num(v):
    """JSON has no NaN: report a missing value as None."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
