"""Non-finite numbers (NaN, inf): the errors, and the checks that keep them out of every file snapfit writes.

A file is only written when what it holds is finite: `raise_if_nonfinite_loss` stops on a bad training loss
the recorder has read back; `raise_if_nonfinite_state` checks weights (and a checkpoint's optimizer state)
right before a write, on their devices, with one read-back per device and none per batch. Loading refuses
non-finite weights unless asked (``allow_nonfinite=True``)."""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Tuple

import torch

__all__ = ["NonFiniteError", "NonFiniteLossError", "NonFiniteWeightsError", "nonfinite_tensors",
           "raise_if_nonfinite_loss", "raise_if_nonfinite_state", "check_loaded"]


class NonFiniteError(FloatingPointError):
    """Something snapfit checks became NaN or infinite."""


class NonFiniteLossError(NonFiniteError):
    """The training loss became NaN or infinite; the fit was stopped before writing anything more."""


class NonFiniteWeightsError(NonFiniteError):
    """Weights (or optimizer state) hold NaN or infinite values: they were not written, or not loaded."""


def _floating(obj: Any, name: str) -> Iterator[Tuple[str, torch.Tensor]]:
    if torch.is_tensor(obj):
        if (obj.is_floating_point() or obj.is_complex()) and obj.numel():
            yield name, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _floating(v, f"{name}.{k}" if name else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _floating(v, f"{name}[{i}]")


def _extremes(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The smallest and largest value of `t` (NaN when it holds one): finite exactly when all of `t` is."""
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    return torch.aminmax(t)


def nonfinite_tensors(state: Any) -> List[str]:
    """Names of the floating-point tensors in `state` (a tensor, or nested dicts and lists of them) that hold
    a NaN or an infinity. One min/max pass per tensor on its device, read back once per device."""
    by_device: Dict[torch.device, List[Tuple[str, torch.Tensor]]] = {}
    for name, t in _floating(state, ""):
        by_device.setdefault(t.device, []).append((name, t))
    bad = []
    for items in by_device.values():
        ends = [e.float() for _, t in items for e in _extremes(t)]
        finite = torch.isfinite(torch.stack(ends)).view(-1, 2).all(1).tolist()
        bad += [name for (name, _), ok in zip(items, finite) if not ok]
    return bad


def _names(bad: List[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in bad[:limit])
    return f"{len(bad)} tensor(s): {shown}" + (f" (+{len(bad) - limit} more)" if len(bad) > limit else "")


def _where(learn) -> str:
    """`` at epoch E, batch B (iteration I)`` during a fit, else nothing."""
    pos = learn.position
    if pos.stage == "start":
        return ""
    if pos.batches_done >= pos.epoch_size and pos.stage in ("validate", "end"):
        return f" at the end of epoch {pos.epoch} (iteration {pos.iters_done})"
    return f" at epoch {pos.epoch}, batch {pos.batch_idx} (iteration {pos.iteration})"


def _files_kept(learn) -> str:
    if learn.writer.pending:
        learn.writer.wait()  # the files on disk, including the one being written
    folder = learn.models_path
    files = sorted(p.name for p in folder.glob("*.pt")) if folder.is_dir() else []
    return f"the files written before it are untouched: {files}" if files else "no weights were saved before it"


def raise_if_nonfinite_loss(learn) -> None:
    """Raise `NonFiniteLossError` naming the epoch, batch and iteration of the first non-finite training loss
    the recorder has read back (``learn.recorder.nonfinite``), and the weight files still on disk."""
    rec = learn.recorder
    bad = rec.nonfinite if rec is not None else None
    if bad is None:
        return
    raise NonFiniteLossError(
        f"training loss is {bad['loss']} at epoch {bad['epoch']}, batch {bad['batch']} (iteration {bad['iteration']}); "
        f"the fit was stopped and {_files_kept(learn)}. Lower the learning rate (learn.lr_find() helps) and reload "
        f"good weights (learn.load_cycle / learn.resume)")


def raise_if_nonfinite_state(learn, parts: Mapping[str, Any], target) -> None:
    """Before writing `target`: raise `NonFiniteWeightsError` when any of `parts` (``{'weights': state_dict,
    'optimizer state': ...}``) holds NaN or inf, naming the tensors, the position and the files still on disk."""
    for what, state in parts.items():
        bad = nonfinite_tensors(state)
        if bad:
            stop = "; the fit was stopped" if learn.position.stage != "start" else ""
            verb = "hold" if what.endswith("s") else "holds"
            raise NonFiniteWeightsError(
                f"the {what} {verb} NaN or infinite values{_where(learn)} in {_names(bad)}: {target.name} was not "
                f"written{stop} and {_files_kept(learn)}. Lower the learning rate (learn.lr_find() helps) and "
                f"reload good weights (learn.load_cycle / learn.resume)")


def check_loaded(state: Any, source: str, allow_nonfinite: bool) -> None:
    """Refuse weights read from `source` that hold NaN or inf, naming the tensors, unless `allow_nonfinite`."""
    bad = nonfinite_tensors(state)
    if bad and not allow_nonfinite:
        raise NonFiniteWeightsError(f"{source} holds NaN or infinite values in {_names(bad)}; it was not loaded "
                                    "(pass allow_nonfinite=True to load it anyway)")
