"""Files: one atomic writer, a weights-only reader with clear errors, and state-dict checks.

Every file snapfit writes goes through `atomic_save`: the bytes go to a temporary file in the
destination folder, are flushed and fsynced, then `os.replace` renames it over the target, so a
crash mid-write leaves the previous file intact. Every file it reads goes through `load_file`,
which uses ``torch.load(weights_only=True)``: a checkpoint is data, never code.
"""
from __future__ import annotations

import itertools
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import torch
from torch import nn

from .finite import check_loaded

__all__ = [
    "atomic_save", "atomic_write_bytes", "atomic_write_json", "load_file", "check_name",
    "check_state_dict", "load_state", "unwrap_model", "DamagedFileError",
]

PathLike = Union[str, os.PathLike]


class DamagedFileError(ValueError):
    """A file exists but cannot be read back (truncated, corrupted, or not a torch file)."""


def check_name(name: str, arg: str = "name") -> str:
    """Validate a file stem given by the user: a non-empty str without path separators."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{arg} must be a non-empty str, got {name!r}")
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if any(s in name for s in seps) or name in (".", ".."):
        raise ValueError(
            f"{arg} must be a plain file name without a path separator, got {name!r}; "
            "files go to {path}/{model_dir}: set those on the Learner to choose the folder")
    return name


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
_temp_numbers = itertools.count()
_swept: set = set()  # the targets whose stale temp files this process has removed already


def _sweep_stale_temps(path: Path) -> None:
    """Remove temp files of `path` left by a process killed mid-write (once per target and process: every later
    temp file of it is this process's own, renamed or removed when its write ends)."""
    key = str(path)
    if key in _swept:
        return
    _swept.add(key)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            stale.unlink()
        except OSError:
            pass


def atomic_write_bytes(data: Union[bytes, Callable[[Any], None]], path: PathLike) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, ``os.replace``, fsync of the
    folder). `data` is bytes, or a function that writes into the open binary file it is given. The file gets
    the permissions a plain ``open(path, 'wb')`` gives (0666 less the umask). Few system calls, little Python:
    the background writer runs this while the training thread wants the GIL."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{next(_temp_numbers)}.tmp"
    try:
        fd = os.open(tmp, _OPEN_FLAGS, 0o666)  # the kernel applies the umask, as open() does
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, _OPEN_FLAGS, 0o666)
    try:
        if callable(data):
            with os.fdopen(fd, "wb", closefd=False) as f:
                data(f)
        else:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    _sweep_stale_temps(path)
    return path


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` `obj` to `path` atomically; the previous file stays valid until the new one is complete."""
    return atomic_write_bytes(lambda f: torch.save(obj, f), path)


def atomic_write_json(obj: Any, path: PathLike) -> Path:
    """Write `obj` as indented JSON to `path` atomically."""
    return atomic_write_bytes(json.dumps(obj, indent=1, sort_keys=True).encode(), path)


def _siblings(path: Path) -> list:
    if not path.parent.is_dir():
        return []
    return sorted(p.name for p in path.parent.glob("*.pt") if p != path)


def load_file(path: PathLike, map_location: Any = None) -> Any:
    """Load a file written by `atomic_save` with ``weights_only=True``.

    A missing file raises FileNotFoundError listing the files beside it; a damaged one, or one that is not a
    torch file at all, raises `DamagedFileError` (a ValueError) naming the file and the other files still
    available; a file holding pickled code raises `pickle.UnpicklingError` saying it was refused."""
    path = Path(path)
    if not path.is_file():
        others = _siblings(path)
        hint = f"; files in {path.parent}: {others}" if others else f"; {path.parent} holds no .pt files"
        raise FileNotFoundError(f"no such file: {path}{hint}")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip archive, or its legacy pickle format
        what = "empty" if not head else f"not a snapfit/torch file (it starts with {head!r})"
        raise DamagedFileError(f"{path} is {what}; {_available(path)}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" in msg or "Unsupported global" in msg or "weights_only" in msg:
            raise pickle.UnpicklingError(
                f"refused to load {path}: it holds pickled objects that are not plain tensors or "
                f"containers (snapfit loads with weights_only=True; a checkpoint is data, never code). "
                f"Details: {_unpickler_detail(msg)}") from e
        raise DamagedFileError(_damaged_message(path, e)) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise DamagedFileError(_damaged_message(path, e)) from e


def _unpickler_detail(msg: str) -> str:
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    found = [ln for ln in lines if "Unsupported global" in ln or "WeightsUnpickler" in ln]
    return (found or lines or [""])[0]


def _available(path: Path) -> str:
    others = _siblings(path)
    return f"other files in {path.parent}: {others}" if others else f"no other .pt files in {path.parent}"


def _damaged_message(path: Path, err: BaseException) -> str:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"{path} is damaged (truncated or corrupted) and cannot be loaded ({first}); {_available(path)}"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel / DataParallel / ``torch.compile`` wrappers."""
    seen = 0
    while seen < 8:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            break
        seen += 1
    return model


def _fmt_keys(keys: Iterable[str], limit: int = 5) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(model: nn.Module, state: Mapping[str, Any], source: Optional[str] = None) -> None:
    """Raise a ValueError naming the first missing/unexpected keys and mismatched shapes
    when `state` does not fit `model` exactly."""
    if not isinstance(state, Mapping):
        raise ValueError(f"{source or 'the file'} does not hold a state dict (got {type(state).__name__})")
    own = unwrap_model(model).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and torch.is_tensor(state[k]) and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing keys: {_fmt_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_fmt_keys(unexpected)}")
    if shapes:
        more = f" (+{len(shapes) - 5} more)" if len(shapes) > 5 else ""
        parts.append("shape mismatches: " + "; ".join(shapes[:5]) + more)
    where = f" in {source}" if source else ""
    raise ValueError(
        f"the state dict{where} does not match the model ({type(unwrap_model(model)).__name__}): "
        + "; ".join(parts) + ". Was it saved from a different architecture?")


def load_state(model: nn.Module, state: Mapping[str, Any], source: Optional[str] = None,
               allow_nonfinite: bool = False) -> None:
    """Load the state dict `state` into `model` (under any wrapper) once `check_state_dict` found it fits and
    it holds no NaN or inf (`NonFiniteWeightsError` naming the tensors, unless `allow_nonfinite`)."""
    check_state_dict(model, state, source=source)
    check_loaded(state, source or "the state dict", allow_nonfinite)
    unwrap_model(model).load_state_dict(state)
