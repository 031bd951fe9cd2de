"""Writing snapshots and checkpoints off the training loop's critical path.

At a snapshot or checkpoint the loop takes a consistent copy of the state to write (`host_copy`: on the CPU
a clone of each storage; on CUDA asynchronous copies into reused pinned host buffers, then an event) and hands
it to one writer thread, which serialises it with ``torch.save`` and writes it to a temp file, fsyncs and
renames it (`io.atomic_write_bytes`), so a crash at any point leaves the previous file loadable. The file holds
the bytes ``torch.save`` gives for the live state. The loop goes on at once; at most one write is in flight
(the next one waits for it). Whatever reads a file waits for the writes in flight first, and a failed write
surfaces in the training thread, naming the file, at the next batch or at the end of the fit. Installed by
default as ``learn.writer``."""
from __future__ import annotations

import copy as copy_module
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
    """Pinned host storages reused from one write to the next, one per (key, size in bytes)."""

    def __init__(self):
        self.buffers: Dict[Tuple, torch.Tensor] = {}
        self.queued = 0  # asynchronous copies queued so far (an event must follow new ones)

    def copy(self, storage: torch.UntypedStorage, device: torch.device, key: Tuple) -> torch.UntypedStorage:
        self.queued += 1
        k = (key, storage.nbytes())
        buf = self.buffers.get(k)
        if buf is None:
            buf = self.buffers[k] = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=True)
        buf.copy_(torch.empty(0, dtype=torch.uint8, device=device).set_(storage), non_blocking=True)
        return buf.untyped_storage()


def host_copy(obj: Any, buffers: Optional[_HostBuffers] = None) -> Any:
    """A copy of `obj` (tensors in nested dicts, lists and tuples, and plain values) that training cannot change
    any more, which ``torch.save`` writes to the same bytes as `obj`: each storage is copied once (tensors that
    share one still do, views keep their offsets and strides) and a state dict keeps its ``_metadata``. CPU
    storages are cloned; CUDA ones are copied asynchronously into `buffers` (pinned, reused) when given."""
    return _copy(obj, buffers, (), {})


def _copy(obj: Any, buffers: Optional[_HostBuffers], key: Tuple, storages: Dict[Tuple, Any]) -> Any:
    if torch.is_tensor(obj):
        t = obj.detach()
        if t.layout != torch.strided or t.is_quantized:  # sparse, quantized: copied as they are
            return t.clone() if t.device.type == "cpu" else t.to("cpu", copy=True)
        storage = t.untyped_storage()
        nbytes = storage.nbytes()
        skey = (t.device, storage.data_ptr(), nbytes)
        copy = storages.get(skey) if nbytes else None
        if copy is None:
            if t.device.type == "cpu" and nbytes and t.storage_offset() == 0 and t.is_contiguous() \
                    and t.numel() * t.element_size() == nbytes:  # the common case: one clone does it all
                out = t.clone()
                storages[skey] = out.untyped_storage()
                return out
            if t.is_cuda and buffers is not None:
                copy = buffers.copy(storage, t.device, key)
            else:
                copy = storage.clone() if t.device.type == "cpu" else storage.cpu()
            storages[skey] = copy
        return torch.empty(0, dtype=t.dtype).set_(copy, t.storage_offset(), t.size(), t.stride())
    if isinstance(obj, dict):
        out = type(obj)((k, _copy(v, buffers, key + (k,), storages)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a state dict's module versions (load_state_dict reads them)
            out._metadata = copy_module.copy(obj._metadata)  # built afresh by state_dict(): not changed by training
        return out
    if isinstance(obj, (list, tuple)):
        items = [_copy(v, buffers, key + (i,), storages) for i, v in enumerate(obj)]
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
        queued = self._buffers.queued
        copy, copied = host_copy(state, self._buffers), None
        if self._buffers.queued != queued:  # CUDA storages copied asynchronously into pinned buffers
            copied = torch.cuda.Event()
            copied.record()  # after the copies queued on the current stream
        job = lambda: files.atomic_write_bytes(_serialised(copy, copied), path)  # noqa: E731
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


def _serialised(state: Any, copied: Optional["torch.cuda.Event"]) -> memoryview:
    """`state` as the bytes ``torch.save`` writes, once its asynchronous copy (`copied`) is complete."""
    if copied is not None:
        copied.synchronize()
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getbuffer()

