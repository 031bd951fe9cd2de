"""Logs people already read: TensorBoard event files and a CSV of epochs.

Both read what the recorder has already fetched from the device (nothing is read back per batch for them),
write only on the main process of a torchrun job, and carry their place in the log through checkpoints: a
resumed fit continues the same curves and rows, with no duplicates and no gaps."""
from __future__ import annotations

import csv
import io
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..core import Callback

__all__ = ["TensorBoardLogger", "TensorBoardCallback", "CSVLogger"]


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch raises this when the tensorboard package is missing
        raise ModuleNotFoundError("TensorBoardLogger writes with the tensorboard package: "
                                  "pip install 'snapfit[tensorboard]' (or pip install tensorboard)") from e
    return SummaryWriter


class TensorBoardLogger(Callback):
    """Writes TensorBoard scalars under `log_dir` (default ``{path}/runs/{date-time}``), the step being the
    global iteration: per batch ``train/loss``, ``train/smooth_loss``, ``lr/group_{i}`` and
    ``momentum/group_{i}``; per epoch ``valid/loss``, ``valid/{metric}`` and ``train/epoch_loss``; the trust
    ratios (``lars/{parameter}`` or ``lamb/{parameter}``) when LARS or LAMB runs; the fit's arguments as
    hparams at the end of the fit."""

    order = 65  # after the recorder (50) has read the epoch back
    state_key = "tensorboard"

    def __init__(self, log_dir: Optional[Union[str, Path]] = None):
        self.user_dir = None if log_dir is None else str(log_dir)
        self.log_dir: Optional[str] = self.user_dir
        self._writer = None
        self._purge_step: Optional[int] = None  # a resumed fit drops what the interrupted one logged from here
        self._batches = self._lars = 0  # recorder batches and LARS records already written

    def before_fit(self, learn) -> None:
        _summary_writer()  # a clear error at the start when tensorboard is missing
        self._active = learn.is_main_process
        self.log_dir = self.user_dir or _new_run_dir(learn.path / "runs")  # a resume puts back its own
        self._rec, self._batches, self._lars = learn.recorder, 0, 0

    def _open(self):
        if self._writer is None:
            self._writer = _summary_writer()(log_dir=self.log_dir, purge_step=self._purge_step)
        return self._writer

    def after_batch(self, learn) -> None:
        rec = self._rec
        if learn.training and self._active and rec is not None and len(rec.losses) > self._batches:
            self._write_batches()

    def _write_batches(self) -> None:
        """Every batch the recorder has read back and not yet written."""
        rec, w = self._rec, self._open()
        for i in range(self._batches, len(rec.losses)):
            step = rec.first_iteration + i
            w.add_scalar("train/loss", rec.losses[i], step)
            w.add_scalar("train/smooth_loss", rec.smooth_losses[i], step)
            for g, lr in enumerate(rec.group_lrs[i]):
                w.add_scalar(f"lr/group_{g}", lr, step)
            for g, mom in enumerate(rec.group_moms[i]):
                if mom is not None:
                    w.add_scalar(f"momentum/group_{g}", mom, step)
        self._batches = len(rec.losses)

    def after_epoch(self, learn) -> None:
        rec = self._rec
        if not self._active or rec is None:
            return
        self._write_batches()
        w, step = self._open(), learn.position.iters_done
        w.add_scalar("valid/loss", rec.val_losses[-1], step)
        w.add_scalar("train/epoch_loss", rec.trn_losses[-1], step)
        for name, v in zip(rec.metric_names, rec.metrics[-1]):
            w.add_scalar(f"valid/{name}", v, step)
        lars = rec.lars if rec.lars is not None and rec.lars in learn.cbs else None
        if lars is not None:  # LARS (order 10) has read this epoch's ratios back already
            for it, ratios in zip(lars.iterations[self._lars:], lars.history[self._lars:]):
                for name, r in zip(lars.names, ratios):
                    w.add_scalar(f"{lars.state_key}/{name}", r, it)  # lars/... or lamb/...
            self._lars = len(lars.iterations)
        w.flush()

    def after_fit(self, learn) -> None:
        rec = self._rec
        if not self._active or rec is None:
            return
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in learn.fit_args.items()}
        final = {f"hparam/{k}": v for k, v in zip(["val_loss"] + rec.metric_names, rec.last_values or [])}
        self._open().add_hparams(hparams, final, run_name="hparams", global_step=learn.position.iters_done)

    def cleanup_fit(self, learn) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._purge_step = None

    def state_dict(self) -> Dict[str, Any]:
        """Where the log stands (its folder, the next step): everything up to now is written and flushed."""
        rec = self._rec
        if self._active and rec is not None:
            self._write_batches()
            self._open().flush()
        return {"log_dir": self.log_dir, "next_step": rec.first_iteration + len(rec.losses) if rec else 0,
                "lars_written": self._lars}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue the log of a checkpoint: its folder, and anything logged after it (by the interrupted fit)
        purged."""
        self.log_dir, self._purge_step = state["log_dir"], int(state["next_step"])
        self._batches = len(self._rec.losses) if self._rec is not None else 0
        self._lars = int(state["lars_written"])


def _new_run_dir(runs: Path) -> str:
    """``runs/{date-time}``, with a suffix when a fit of the same second already has it."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, i = runs / stamp, 1
    while path.exists():
        i += 1
        path = runs / f"{stamp}-{i}"
    return str(path)


TensorBoardCallback = TensorBoardLogger  # fastai v2's name


class CSVLogger(Callback):
    """One row per epoch in ``{path}/{fname}``: ``epoch, trn_loss, val_loss, <metrics>, time`` (seconds),
    flushed at every epoch. ``append=False`` starts a new file at each fit; a resumed fit keeps the rows of
    the epochs before its checkpoint and appends the rest."""

    order = 65  # after the recorder (50) has closed the epoch
    state_key = "csv_logger"

    def __init__(self, fname: Union[str, Path] = "history.csv", append: bool = False):
        self.fname, self.append = str(fname), bool(append)
        self.rows: Optional[int] = None  # rows the file holds (set by a resume: keep only those)

    def before_fit(self, learn) -> None:
        self.path = learn.path / self.fname
        self._active, self._resumed = learn.is_main_process, False
        self._header = ["epoch", "trn_loss", "val_loss"] + learn.recorder.metric_names + ["time"] \
            if learn.recorder is not None else ["epoch", "time"]
        self._count = 0  # rows this fit has written

    def before_epoch(self, learn) -> None:
        self._start = time.perf_counter()
        if self._active and self._count == 0 and not self._resumed:
            self._prepare()

    def _prepare(self) -> None:
        """A new file with its header, or the old one kept (`append`, or the rows before a resumed checkpoint)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keep = self.rows if self.rows is not None else None
        if keep is None and self.append and self.path.is_file():
            self._resumed = True
            return
        lines: List[str] = []
        self.rows = None  # used once: a later fit starts afresh
        if keep is not None and self.path.is_file():
            lines = self.path.read_text().splitlines(keepends=True)[:keep + 1]  # the header and the kept rows
        if not lines:
            buf = io.StringIO()
            csv.writer(buf).writerow(self._header)
            lines = [buf.getvalue()]
        with open(self.path, "w", newline="") as f:
            f.writelines(lines)
        self._resumed = True

    def after_epoch(self, learn) -> None:
        rec = learn.recorder
        if not self._active or rec is None:
            return
        if not self._resumed:
            self._prepare()
        row = [learn.position.epoch, rec.trn_losses[-1], rec.val_losses[-1], *rec.metrics[-1],
               round(time.perf_counter() - self._start, 3)]
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow(row)
            f.flush()
            os.fsync(f.fileno())
        self._count += 1

    def state_dict(self) -> Dict[str, Any]:
        """How many rows the file holds now (a resume keeps exactly those)."""
        return {"rows": self._rows_now()}

    def _rows_now(self) -> int:
        if not self.path.is_file():
            return 0
        return max(len(self.path.read_text().splitlines()) - 1, 0)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Keep the first `rows` rows of the file (written before the checkpoint) and append after them."""
        self.rows, self._resumed = int(state["rows"]), False
