"""Progress bars (tqdm.auto: a widget in Jupyter, text in a terminal) and the per-epoch table
``epoch  trn_loss  val_loss  <metrics>`` that fastai 0.7 printed."""
from __future__ import annotations

import math
import sys
import time
from typing import List, Optional, Sequence, Union

from ..core import Callback

__all__ = ["ProgressCallback", "make_bar", "format_row"]


def make_bar(total: int, desc: str = "", leave: bool = False):
    """A tqdm bar: the notebook widget when running in Jupyter with ipywidgets, text otherwise."""
    from tqdm.auto import tqdm as auto_tqdm
    from tqdm.std import tqdm as text_tqdm

    try:
        return auto_tqdm(total=total, desc=desc, leave=leave)
    except ImportError:  # Jupyter without ipywidgets: fall back to a text bar
        return text_tqdm(total=total, desc=desc, leave=leave, file=sys.stdout)


def _fmt(v) -> str:
    if isinstance(v, (int, str)):
        return str(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    return f"{v:.6f}"


def format_row(values: List, width: Union[int, Sequence[int]] = 10) -> str:
    """One line of the epoch table: fixed-width columns (one width, or one per column), floats with 6 decimals."""
    widths = [width] * len(values) if isinstance(width, int) else width
    return " ".join(f"{_fmt(v):<{w}}" for v, w in zip(values, widths)).rstrip()


class ProgressCallback(Callback):
    """Draws one bar per epoch (its training then validation batches) showing the running loss, and
    prints one table line per epoch. `bars=False` turns the bars off; `table=False` the table."""

    order = 60

    def __init__(self, bars: bool = True, table: bool = True):
        self.bars, self.table = bars, table
        self._bar = None

    def before_fit(self, learn) -> None:
        self._header_done = False
        self._shown = 0

    def _active(self, learn) -> bool:
        return self.bars and learn.is_main_process

    def before_epoch(self, learn) -> None:
        if self._active(learn):
            valid = learn.data.valid_dl
            total = learn.position.epoch_size + (len(valid) if valid is not None else 0)
            self._bar = make_bar(total, desc=f"epoch {learn.position.epoch + 1}/{learn.position.n_epochs}")
            self._pending, self._last = learn.position.batches_done, 0.0
            self._flush(learn, time.monotonic())

    def after_batch(self, learn) -> None:
        if self._bar is None:
            return
        self._pending += 1
        now = time.monotonic()
        if now - self._last >= 0.1:  # tqdm's own refresh rate: no need to call it every batch
            self._flush(learn, now)

    def _flush(self, learn, now: float) -> None:
        self._bar.update(self._pending)
        self._pending, self._last = 0, now
        if learn.training:
            self._show_loss(learn.recorder)

    def _show_loss(self, rec) -> None:
        """Show the smoothed loss whenever the recorder has read new values back (no sync here)."""
        if rec is not None and rec.losses and len(rec.losses) != self._shown:
            self._shown = len(rec.losses)
            self._bar.set_postfix(loss=f"{rec.smooth_loss:.4f}", refresh=False)

    def after_epoch(self, learn) -> None:
        self._close()
        rec = learn.recorder
        if not (self.table and learn.is_main_process) or rec is None or not rec.trn_losses:
            return
        header = ["epoch", "trn_loss", "val_loss"] + rec.metric_names
        widths = [max(10, len(h)) for h in header]  # a long metric name widens its column
        if not self._header_done:
            print(format_row(header, widths))
            self._header_done = True
        vals: List[Optional[float]] = [rec.trn_losses[-1], rec.val_losses[-1]] + list(rec.metrics[-1])
        print(format_row([learn.position.epoch] + vals, widths), flush=True)

    def cleanup_fit(self, learn) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            if self._pending:
                self._bar.update(self._pending)
                self._pending = 0
            self._bar.close()
            self._bar = None
