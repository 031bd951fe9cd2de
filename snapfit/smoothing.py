"""The debiased exponential moving average of the training loss (fastai 0.7's ``avg_loss``), used by the
recorder, the epoch table and the LR finder."""
from __future__ import annotations

import math
from typing import Dict, Iterable, List

__all__ = ["DebiasedEMA", "smooth"]


class DebiasedEMA:
    """``avg = beta*avg + (1-beta)*v``; `value` is ``avg / (1 - beta**n)`` after n values (NaN before any).
    NaN values (batches without a loss) are skipped."""

    def __init__(self, beta: float = 0.98):
        self.beta, self.avg, self.n = float(beta), 0.0, 0

    def update(self, v: float) -> float:
        """Fold `v` in (unless it is NaN) and return the new `value`."""
        if not math.isnan(v):
            self.n += 1
            self.avg = self.beta * self.avg + (1 - self.beta) * v
        return self.value

    @property
    def value(self) -> float:
        """The debiased average."""
        return self.avg / (1 - self.beta ** self.n) if self.n else float("nan")

    def state_dict(self) -> Dict[str, float]:
        """Plain-data copy."""
        return {"ema": self.avg, "ema_n": self.n}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        """Restore a copy made by `state_dict`."""
        self.avg, self.n = float(state["ema"]), int(state["ema_n"])


def smooth(values: Iterable[float], beta: float = 0.98) -> List[float]:
    """The `DebiasedEMA` after each of `values`."""
    ema = DebiasedEMA(beta)
    return [ema.update(v) for v in values]
