"""Per-cycle snapshots: at the end of every SGDR cycle the weights are saved to
``{path}/{model_dir}/{name}_cyc_{i}.pt`` (fastai 0.7's ``cycle_save_name``)."""
from __future__ import annotations

from ..core import Callback

__all__ = ["CycleSnapshot"]


class CycleSnapshot(Callback):
    """Saves the model at the end of each cycle of ``learn.schedule``. The cycle end is derived
    from the schedule and the iteration count, never counted here; saving happens after the
    epoch's validation so the saved weights are the ones that were just validated."""

    order = 70  # after the recorder has closed the epoch

    def __init__(self, name: str):
        self.save_name = name
        self.saved: list = []

    def after_epoch(self, learn) -> None:
        sched = learn.schedule
        done = learn.iteration
        if sched is None or not sched.is_cycle_end(done):
            return
        cycle = sched.cycle_index(done - 1)
        path = learn.save(f"{self.save_name}_cyc_{cycle}")
        self.saved.append((cycle, path))
