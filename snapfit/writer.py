"""Writing snapshots and checkpoints off the training loop's critical path.

At a snapshot or checkpoint the loop takes a consistent copy of the state to write and hands it to one writer
thread, which writes it to a temp file, fsyncs and renames it (`io.atomic_write_bytes`), so a crash at any
point leaves the previous file loadable. On CUDA the copy is asynchronous, into reused pinned host buffers,
followed by an event, and the thread serialises it; on the CPU the loop serialises the state to bytes at once
(about as fast as copying it, and the thread then only does file I/O, which releases the GIL). The loop goes
on at once; at most one write is in flight (the next one waits for it). Whatever reads a file waits for the
writes in flight first, and a failed write surfaces in the training thread, naming the file, at the next batch
or at the end of the fit. Installed by default as ``learn.writer``."""
from __future__ import annotations

import io
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from . import io as files  # through the module: one seam for every write (tests and tools can wrap it)
from .core import Callback

__all__ = ["BackgroundWriter", "WriteError", "host_copy"]


class WriteError(RuntimeError):
    """A background write failed; the previous version of the file is still there."""


class _HostBuffers:
    """Pinned host tensors reused from one write to the next, one per (key, shape, dtype)."""

    def __init__(self):
        self.buffers: Dict[Tuple, torch.Tensor] = {}

    def copy(self, t: torch.Tensor, key: Tuple) -> torch.Tensor:
        k = (key, tuple(t.shape), t.dtype)
        buf = self.buffers.get(k)
        if buf is None:
            buf = self.buffers[k] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        buf.copy_(t.detach(), non_blocking=True)
        return buf


def host_copy(obj: Any, buffers: Optional[_HostBuffers] = None, key: Tuple = ()) -> Any:
    """A copy of `obj` (tensors in nested dicts, lists and tuples, and plain values) that training cannot change
    any more: CPU tensors cloned, CUDA tensors copied asynchronously into `buffers` (pinned, reused)."""
    if torch.is_tensor(obj):
        if obj.is_cuda and buffers is not None:
            return buffers.copy(obj, key)
        return obj.detach().clone() if obj.device.type == "cpu" else obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, host_copy(v, buffers, key + (k,))) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        items = [host_copy(v, buffers, key + (i,)) for i, v in enumerate(obj)]
        if isinstance(obj, list):
            return items
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj


class BackgroundWriter(Callback):
    """One writer thread for a learner's files. `write(state, path)` copies `state` now and writes it later;
    `wait()` returns once nothing is in flight (raising a failed write's error). With ``enabled=False`` every
    write happens at once, in the calling thread."""

    order = 2000  # last in cleanup_fit: waits for the writes of every other callback (the Ctrl-C checkpoint too)

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._buffers = _HostBuffers()
        self._thread: Optional[threading.Thread] = None  # started at the first write, then kept (no start per write)
        self._jobs: "queue.SimpleQueue" = queue.SimpleQueue()
        self._idle = threading.Event()
        self._idle.set()
        self._error: Optional[BaseException] = None
        self._failed: Optional[Path] = None
        self.written = 0  # files written (by any thread)

    def write(self, state: Any, path: Path, then: Optional[Callable[[], None]] = None) -> None:
        """Write `state` to `path` atomically, in the background; `then()` runs in the writer after the file is in
        place (e.g. a snapshot's sidecar). Disabled, it writes at once (`io.atomic_save`)."""
        self.wait()  # at most one write in flight: this also makes the pinned buffers free for reuse
        path = Path(path)
        if not self.enabled:
            self._run(lambda: files.atomic_save(state, path), path, then)
            self.check()
            return
        if torch.cuda.is_available() and _has_cuda_tensor(state):
            copy, done = host_copy(state, self._buffers), torch.cuda.Event()
            done.record()
            job = lambda: (done.synchronize(), files.atomic_save(copy, path))  # noqa: E731
        else:
            buf = io.BytesIO()
            torch.save(state, buf)
            data = buf.getvalue()
            job = lambda: files.atomic_write_bytes(data, path)  # noqa: E731
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._serve, name="snapfit writer", daemon=True)
            self._thread.start()
        self._idle.clear()
        self._jobs.put((job, path, then))

    def _serve(self) -> None:
        """The writer thread: runs the jobs handed over, one at a time, for the learner's life (a daemon)."""
        while True:
            job, path, then = self._jobs.get()
            try:
                self._run(job, path, then)
            finally:
                self._idle.set()

    def _run(self, job: Callable[[], Any], path: Path, then) -> None:
        try:
            job()
            if then is not None:
                then()
            self.written += 1
        except BaseException as e:  # handed to the training thread
            self._error, self._failed = e, path

    def wait(self) -> None:
        """Return when no write is in flight; raise `WriteError` (naming the file) if the last one failed."""
        self._idle.wait()
        self.check()

    def check(self) -> None:
        """Raise `WriteError` naming the file when a background write failed (once)."""
        if self._error is not None:
            error, path = self._error, self._failed
            self._error = self._failed = None
            if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: as they were
                raise error
            raise WriteError(f"writing {path} failed: {type(error).__name__}: {error}; the previous {path.name} "
                             "(if any) is untouched") from error

    @property
    def pending(self) -> bool:
        """True while a write is in flight."""
        return not self._idle.is_set()

    # ------------------------------------------------------------------ events
    def after_batch(self, learn) -> None:
        if self._error is not None:
            self.check()

    def cleanup_fit(self, learn) -> None:
        self.wait()


def _has_cuda_tensor(obj: Any) -> bool:
    if torch.is_tensor(obj):
        return obj.is_cuda
    if isinstance(obj, dict):
        return any(_has_cuda_tensor(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_cuda_tensor(v) for v in obj)
    return False
