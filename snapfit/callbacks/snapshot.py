"""Per-cycle snapshots: at the end of every SGDR cycle the weights are saved to
``{path}/{model_dir}/{name}_cyc_{i}.pt`` (fastai 0.7's ``cycle_save_name``), with a small JSON sidecar
``{name}_cyc_{i}.json`` recording when it was taken and how it validated."""
from __future__ import annotations

import math
import time

from ..core import Callback
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
        path = learn.save(snapshot_name(self.save_name, cycle))
        rec = learn.recorder
        val = rec.last_values if rec is not None and rec.last_values is not None else []
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
