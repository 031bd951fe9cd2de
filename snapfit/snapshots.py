"""Weight files: `save` and `load` a learner's weights, and the per-cycle snapshots of a fit: their names,
loading one, listing them, ensembling their predictions, averaging their weights. Nothing non-finite is
written, and loading refuses NaN or inf weights unless ``allow_nonfinite=True``.

"Snapshot Ensembles: Train 1, get M for free" (Huang et al. 2017): the weights saved at the end of each
SGDR cycle are different good models; averaging their softmax outputs is an ensemble at no extra
training cost, and averaging their weights (then re-estimating BatchNorm, as SWA does) gives one model.
Everything streams: one snapshot is in memory at a time, whatever their number."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import batchnorm
from .checks import check_int, is_int
from .finite import check_loaded, raise_if_nonfinite_state
from .io import check_name, check_state_dict, load_file, load_state
from .predict import eval_loader
from .resume import FORMAT as CHECKPOINT_FORMAT

__all__ = ["save", "load", "snapshot_name", "saved_cycles", "load_cycle", "list_snapshots", "resolve_cycles",
           "predict_snapshots", "average_snapshots", "softmax_np"]


def save(learn, name: str, wait: bool = True, then: Optional[Callable[[], None]] = None) -> Path:
    """Save the model's state dict to ``{path}/{model_dir}/{name}.pt`` atomically (main process only); weights
    holding NaN or inf are not written (`NonFiniteWeightsError`). The file is written by ``learn.writer``: with
    `wait` (the default) it is in place when `save` returns, else the caller goes on while it is written
    (`then()` runs once it is). Returns the path."""
    path = learn.model_file(name)
    state = learn.saved_model.state_dict()
    raise_if_nonfinite_state(learn, {"weights": state}, path)
    if learn.is_main_process:
        learn.writer.write(state, path, then)
        if wait:
            learn.writer.wait()
    return path


def load(learn, name: str, allow_nonfinite: bool = False):
    """Load weights saved by `save` (weights only): a mismatch names the offending keys, NaN or inf weights are
    refused unless `allow_nonfinite`. Returns the learner."""
    path = learn.model_file(name)
    learn.barrier()  # under torchrun: rank 0 has finished writing
    _load_weights(learn, path, allow_nonfinite)
    return learn


def _load_weights(learn, path: Path, allow_nonfinite: bool = False) -> None:
    learn.writer.wait()  # a file being written in the background is read once it is in place
    state = load_file(path, map_location=learn.device)
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is a checkpoint of a whole fit, not a weights file: continue its fit with "
                         f"learn.resume({path.stem!r}) (or fit(..., resume={path.stem!r}))")
    load_state(learn.saved_model, state, source=str(path), allow_nonfinite=allow_nonfinite)


def snapshot_name(name: str, cycle: int) -> str:
    """The file stem of the snapshot of cycle `cycle` of a fit with ``cycle_save_name=name``: ``{name}_cyc_{cycle}``
    (fastai 0.7's naming), saved as ``{path}/{model_dir}/{name}_cyc_{cycle}.pt``."""
    return f"{name}_cyc_{cycle}"


def saved_cycles(learn, name: str) -> List[int]:
    """Cycle indices saved under `name` (files ``{name}_cyc_{i}.pt`` in ``learn.models_path``), ascending."""
    pattern = re.compile(re.escape(snapshot_name(check_name(name), "")) + r"(\d+)\.pt$")
    learn.writer.wait()
    if not learn.models_path.is_dir():
        return []
    return sorted(int(m.group(1)) for p in learn.models_path.iterdir() if (m := pattern.fullmatch(p.name)))


def load_cycle(learn, name: str, cycle: int, allow_nonfinite: bool = False):
    """Load the snapshot saved at the end of cycle `cycle` of a fit with ``cycle_save_name=name`` (a missing one
    lists the saved cycles; NaN or inf weights are refused unless `allow_nonfinite`). Returns the learner."""
    check_int("cycle", cycle, minimum=0)
    path = learn.model_file(snapshot_name(name, cycle))
    if not path.is_file():
        saved = saved_cycles(learn, name)
        have = f"saved cycles of {name!r}: {saved}" if saved else f"no cycles of {name!r} are saved"
        raise FileNotFoundError(f"cycle {cycle} of {name!r} was never saved in {learn.models_path} ({have})")
    learn.barrier()  # under torchrun: rank 0 has finished writing
    _load_weights(learn, path, allow_nonfinite)
    return learn


def softmax_np(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax; for log-probabilities it gives back the probabilities."""
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def list_snapshots(learn, name: str) -> List[Dict[str, Any]]:
    """One record per saved cycle of `name`: ``cycle``, ``file`` and, from the JSON sidecar written at
    save time, ``epoch``, ``iteration``, ``val_loss`` and ``metrics`` (None when there is no sidecar)."""
    out = []
    for c in saved_cycles(learn, name):
        f = learn.model_file(snapshot_name(name, c))
        rec = {"cycle": c, "file": str(f), "epoch": None, "iteration": None, "val_loss": None, "metrics": None}
        side = f.with_suffix(".json")
        if side.is_file():
            try:
                rec.update(json.loads(side.read_text()))
            except ValueError:
                pass  # a damaged sidecar: the weights are still listed
        rec["cycle"], rec["file"] = c, str(f)
        out.append(rec)
    return out


def resolve_cycles(learn, name: str, cycles: Optional[Sequence[int]] = None, last: Optional[int] = None) -> List[int]:
    """The cycles to use: `cycles` as given (each must be saved), the `last` M saved ones, or all."""
    if cycles is not None and (is_int(cycles) or not hasattr(cycles, "__iter__")):
        raise TypeError(f"cycles must be a list of cycle indices, got {cycles!r}: pass cycles=[{cycles!r}]")
    saved = saved_cycles(learn, name)
    if not saved:
        raise FileNotFoundError(f"no snapshots named {name!r} in {learn.models_path} (files "
                                f"{snapshot_name(name, '<i>')}.pt are written by fit(..., cycle_len=..., "
                                "cycle_save_name=name))")
    if cycles is not None and last is not None:
        raise ValueError("pass cycles or last, not both")
    if cycles is not None:
        cycles = list(cycles)
        if not cycles:
            raise ValueError(f"cycles is empty: name at least one cycle of {name!r} (saved: {saved})")
        bad = [c for c in cycles if c not in saved]
        if bad:
            raise ValueError(f"cycle {bad[0]} of {name!r} was never saved; saved cycles: {saved}")
        return cycles
    if last is not None:
        if not is_int(last) or not 1 <= last <= len(saved):
            raise ValueError(f"last must be an int in [1, {len(saved)}] (the number of saved cycles), got {last!r}")
        return saved[-last:]
    return saved


def predict_snapshots(learn, name: str, cycles: Optional[Sequence[int]] = None, dl=None, last: Optional[int] = None,
                      tta: bool = False, is_test: bool = False,
                      n_aug: int = 4) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``(probs, targets)``: the softmax of each snapshot's outputs over `dl` (default: the validation or
    test loader), averaged over the snapshots. One snapshot is loaded at a time into the learner's model,
    whose own weights are put back afterwards. With `tta`, each snapshot's probabilities are first
    averaged over the plain and `n_aug` augmented passes."""
    chosen = resolve_cycles(learn, name, cycles, last)
    if dl is None and not tta:
        dl = eval_loader(learn.data, is_test)
    if tta and dl is not None:
        raise ValueError("tta=True predicts on the data's own validation/test images; it takes no dl")
    backup = {k: v.detach().clone() for k, v in learn.saved_model.state_dict().items()}
    total, targs = None, None
    try:
        for c in chosen:
            _load_weights(learn, learn.model_file(snapshot_name(name, c)))
            if tta:
                outs, targs = learn.TTA(n_aug=n_aug, is_test=is_test)
                probs = softmax_np(outs).mean(0)
            else:
                outs, targs = learn.predict_dl(dl)
                probs = softmax_np(outs)
            if total is None:
                total = probs.astype(np.float64)
            else:
                total += probs
            del outs, probs
    finally:
        learn.saved_model.load_state_dict(backup)
    return (total / len(chosen)).astype(np.float32), targs


def _accumulate(avg: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor], n: int) -> None:
    """Fold the n-th (from 0) state dict into the running mean `avg` (float64)."""
    for k, v in state.items():
        if not v.is_floating_point():
            avg[k] = v.clone()  # counters such as num_batches_tracked: the last snapshot's
        elif n == 0:
            avg[k] = v.double()
        else:
            avg[k] += (v.double() - avg[k]) / (n + 1)


def average_snapshots(learn, name: str, cycles: Optional[Sequence[int]] = None, update_bn: bool = True,
                      save_as: Optional[str] = None, last: Optional[int] = None):
    """Put the element-wise mean of the chosen snapshots' weights (all, the `last` M, or `cycles`) into the
    learner's model (a running mean in float64, one snapshot in memory at a time), then, with `update_bn`,
    recompute BatchNorm statistics over the training data; `save_as` also saves the result. Returns the learner."""
    chosen = resolve_cycles(learn, name, cycles, last)
    model = learn.saved_model
    avg: Dict[str, torch.Tensor] = {}
    for n, c in enumerate(chosen):
        path = learn.model_file(snapshot_name(name, c))
        state = load_file(path, map_location=learn.device)
        check_state_dict(model, state, source=str(path))
        check_loaded(state, str(path), allow_nonfinite=False)
        _accumulate(avg, state, n)
        del state
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in avg.items()})
    del avg
    if update_bn:
        batchnorm.update_bn(model, learn.data.train_dl, lambda b: learn.to_device(b)[0])
    if save_as is not None:
        learn.save(save_as)
    return learn
