"""Resuming a fit: everything about reading a checkpoint and continuing from it, in one place.

A checkpoint (written by the `Checkpoint` callback, ``fit(..., checkpoint=name)``) holds only tensors and
plain containers, so it loads with ``torch.load(weights_only=True)``:

- ``model``, ``opt``: the weights and the optimizer state (momentum buffers);
- ``position``: ``learn.position`` at the moment of writing, moved past a finished batch or epoch
  (`Position.settled`): the point the fit continues from;
- ``fit_args``: the arguments of the fit (a resumed fit must repeat the schedule-defining ones);
- ``callbacks``: ``cb.state_dict()`` of every callback with a `state_key` (the recorder's history, SWA's
  average, the AMP scaler ...), under that key;
- ``rng``: every RNG state (torch CPU/CUDA, Python, NumPy) at the point the fit continues from: at the
  moment of writing, or at the end of the epoch's training when written during validation (which reruns);
  under torchrun ``rng_ranks`` holds every rank's (gathered to rank 0, which writes the one file), and
  ``callbacks_ranks`` every rank's callback states (each rank's recorder saw its own losses);
- ``world_size``: the number of processes of the fit (each rank's batches depend on it);
- ``data``: the epoch's global training order (every rank derives its shard from it), to refuse resuming on
  different data.

`resume_fit` reads and checks a checkpoint against the fit (before changing anything), restores weights and
optimizer, and returns the position and the `Resume` callback, which restores the callbacks' states at the
end of ``before_fit`` and the RNG where the saved position says: at the start of the epoch, or, for a
checkpoint taken between training batches, once the epoch's data iterator exists (``before_train``). The
loop itself starts each epoch's data at ``position.batch_idx``. On CPU the remaining batches give
bit-identical weights (for ``num_workers=0`` loaders).
"""
from __future__ import annotations

import copy
import numbers
import sys
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch

from .core import Callback
from .distributed import all_gather_object, rank, world_size
from .finite import check_loaded
from .io import DamagedFileError, check_name, check_state_dict, load_file
from .position import Position
from .rng import get_rng_states, set_rng_states

__all__ = ["FORMAT", "VERSION", "read_checkpoint", "checkpoint_to_resume", "saved_fit_args", "checkpoint_state",
           "resume_fit", "Resume", "callback_states", "data_order", "preserved_state", "ListPacker", "pack_lists",
           "unpack_lists"]

FORMAT = "snapfit.checkpoint"
VERSION = 2  # 2: the position has a stage; 1: the position was the next batch to run


def read_checkpoint(path) -> Dict[str, Any]:
    """Load and validate a checkpoint file (weights_only); clear errors when it is not one. A version 1
    checkpoint is read as the equivalent version 2."""
    state = load_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DamagedFileError(f"{path} is not a snapfit checkpoint (it holds "
                               f"{'a state dict of weights' if isinstance(state, dict) else type(state).__name__}); "
                               "checkpoints are written by fit(..., checkpoint=name); weights go through learn.load")
    if state.get("version", 0) > VERSION:
        raise ValueError(f"{path} was written by a newer snapfit (checkpoint version {state['version']}); upgrade")
    if state.get("version", 1) == 1:  # (epoch, batch_idx, iteration) was the next batch; n_batches: validation
        pos = state["position"]
        pos["stage"] = "validate" if pos["batch_idx"] >= pos["n_batches"] else "train" if pos["batch_idx"] else "start"
    return state


def checkpoint_to_resume(learn, resume: Union[str, bool, None], checkpoint: Optional[str]) -> Optional[str]:
    """The checkpoint a fit continues from: `resume` itself when it is a name; with ``resume=True`` the fit's own
    `checkpoint` when that file exists (else None: the fit starts fresh, as on the first run of a script that
    torchrun may restart); None for None or False. Under torchrun rank 0 decides for every rank."""
    if resume is None or resume is False:
        return None
    if resume is True:
        if checkpoint is None:
            raise ValueError("resume=True continues from the fit's own checkpoint when it exists: give "
                             "checkpoint='name' too (or resume='name' to continue a particular checkpoint)")
        name = check_name(checkpoint, "checkpoint")
        learn.writer.wait()
        exists = all_gather_object(learn.model_file(name).exists())[0]
        if exists and learn.is_main_process:
            print(f"snapfit: resume=True: continuing from checkpoint {str(learn.model_file(name))!r}", file=sys.stderr,
                  flush=True)
        return name if exists else None
    if not isinstance(resume, str):
        raise ValueError(f"resume must be a checkpoint name, True (continue from checkpoint= when it exists) or None, "
                         f"got {resume!r}")
    return check_name(resume, "resume")


def saved_fit_args(state: Dict[str, Any], name: str) -> Dict[str, Any]:
    """The arguments of ``fit`` a checkpoint stores; a clear error when another kind of fit wrote it."""
    args = dict(state["fit_args"])
    if "phases" in args:
        raise ValueError(f"checkpoint {name!r} holds a fit_opt_sched fit: continue it with "
                         f"learn.fit_opt_sched(<the same phases>, resume={name!r})")
    if "lrs" not in args:
        raise ValueError(f"checkpoint {name!r} was not written by learn.fit (its fit was {args or 'unknown'}); "
                         "only fits started with learn.fit(..., checkpoint=name) can be resumed")
    return args


def _keyed(cbs) -> Iterator[Tuple[str, Callback]]:
    """``(key, callback)`` for every callback with a `state_key`; a repeated key gets ``_2``, ``_3`` ..."""
    taken = set()
    for cb in cbs:
        if cb.state_key is None:
            continue
        key, i = cb.state_key, 1
        while key in taken:
            i += 1
            key = f"{cb.state_key}_{i}"
        taken.add(key)
        yield key, cb


def callback_states(learn) -> Dict[str, Any]:
    """``{state_key: cb.state_dict()}`` of the learner's callbacks."""
    return {key: cb.state_dict() for key, cb in _keyed(learn.cbs)}


def data_order(dl, epoch: int) -> Dict[str, Any]:
    """The training order of `epoch` when the loader's sampler can tell it (``sampler.order(epoch)``); under
    torchrun the global order the ranks' shards come from (``sampler.global_order``), the same on every rank."""
    sampler = getattr(dl, "sampler", None)
    source = getattr(sampler, "global_order", sampler)
    order = source.order(epoch) if callable(getattr(source, "order", None)) else None
    if order is not None and len(order) < 2 ** 31:
        order = order.to(torch.int32)
    return {"sampler": type(sampler).__name__, "epoch": epoch, "order": order,
            "batch_size": getattr(dl, "batch_size", None)}


_PACKED = "snapfit.packed_list"


def _numbers(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or v is None


def pack_lists(obj: Any) -> Any:
    """`obj` with every long list of numbers (1-d, or rectangular 2-d; None allowed) stored as one float64 tensor
    marked for `unpack_lists`: a history of thousands of values pickles (and loads) as one tensor, not as
    thousands of Python objects."""
    return ListPacker()(obj)


class ListPacker:
    """`pack_lists` that remembers what it packed: when a list it packed before still starts with the same values
    (checked in C, by identity, against a copy) only what was appended since is converted, so a checkpoint
    costs the values added since the last one, not a pass of Python over the whole history."""

    def __init__(self):
        self._done: Dict[int, Tuple[list, list, torch.Tensor, frozenset]] = {}  # id -> (list, values, tensor, kinds)
        self._seen: Dict[int, Tuple[list, list, torch.Tensor, frozenset]] = {}

    def __call__(self, obj: Any) -> Any:
        """`obj` packed (see `pack_lists`)."""
        self._seen = {}
        try:
            return self._pack(obj)
        finally:
            self._done = self._seen  # forget lists that are gone (and never match a reused id)

    def _pack(self, obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: self._pack(v) for k, v in obj.items()}
        if not isinstance(obj, list):
            return obj
        if len(obj) >= 8:
            done = self._seen.get(id(obj)) or self._done.get(id(obj))  # seen: the same list twice in `obj`
            if done is not None and done[0] is obj and obj[:len(done[1])] == done[1]:
                _, values, head, kinds = done
            else:
                values, head, kinds = [], None, frozenset()
            new = obj[len(values):]
            tail = _packed_numbers(new, None if head is None else tuple(head.shape[1:])) if new else None
            if new and tail is None:
                return [self._pack(v) for v in obj]
            if tail is not None:
                head = tail[0] if head is None else torch.cat([head, tail[0]])
                kinds = kinds | tail[1]
                values.extend(list(r) if isinstance(r, list) else r for r in new)  # rows copied: compared later
            self._seen[id(obj)] = (obj, values, head, kinds)
            return {_PACKED: head, "kinds": sorted(kinds)}
        return [self._pack(v) for v in obj]


def _packed_numbers(items: list, row_shape: Optional[Tuple[int, ...]]) -> Optional[Tuple[torch.Tensor, frozenset]]:
    """`items`, numbers or None (`row_shape` ``()``) or rows of as many of them (``(width,)``; None: whichever
    they are), as a float64 tensor (None as NaN) and the type names seen; None when they are not such a list."""
    all_lists = all(isinstance(r, list) for r in items)
    if (all_lists if row_shape is None else len(row_shape) == 1):
        if not all_lists:
            return None
        widths = {len(r) for r in items}
        width = row_shape[0] if row_shape else (next(iter(widths)) if len(widths) == 1 else -1)
        if width < 0 or widths - {width} or not all(_numbers(v) for r in items for v in r):
            return None
        flat = [v for r in items for v in r]
        shape: Tuple[int, ...] = (len(items), width)
    else:
        if not all(_numbers(v) for v in items):
            return None
        flat, shape = items, (len(items),)
    t = torch.tensor([float("nan") if v is None else v for v in flat], dtype=torch.float64).reshape(shape)
    return t, frozenset(type(v).__name__ for v in flat)


def unpack_lists(obj: Any) -> Any:
    """Undo `pack_lists`: the lists as they were (ints as ints, NaN as None where the list held None)."""
    if isinstance(obj, dict) and _PACKED in obj:
        kinds, t = set(obj["kinds"]), obj[_PACKED]
        nones = "NoneType" in kinds
        as_int = kinds <= {"int", "NoneType"}

        def value(v: float):
            if nones and v != v:
                return None
            return int(v) if as_int else v

        vals = t.tolist()
        return [[value(v) for v in row] for row in vals] if t.ndim == 2 else [value(v) for v in vals]
    if isinstance(obj, dict):
        return {k: unpack_lists(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack_lists(v) for v in obj]
    return obj


def checkpoint_state(learn, rng: Optional[Dict[str, Any]] = None,
                     pack: Callable[[Any], Any] = pack_lists) -> Dict[str, Any]:
    """The checkpoint of the learner now (see the module docstring); `rng` defaults to the current RNG states,
    `pack` packs the callbacks' histories (a `ListPacker` kept between checkpoints packs only what is new).
    Under torchrun every rank must call it at the same point (the ranks' RNG states are gathered)."""
    pos = learn.position.settled()
    rngs = all_gather_object(rng if rng is not None else get_rng_states())
    callbacks = all_gather_object(pack(callback_states(learn)))
    state = {
        "format": FORMAT, "version": VERSION, "torch_version": str(torch.__version__),
        "model": learn.saved_model.state_dict(),
        "opt": learn.opt.state_dict(),
        "position": pos.state_dict(),
        "fit_args": dict(learn.fit_args),
        "callbacks": callbacks[rank()],
        "rng": rngs[rank()],
        "world_size": len(rngs),
        "data": data_order(learn.data.train_dl, pos.epoch),
    }
    if len(rngs) > 1:
        state["rng_ranks"], state["callbacks_ranks"] = rngs, callbacks
    return state


def _norm(v):
    """`v` with every number a float and every sequence a list (1 == 1.0, (1, 2) == [1, 2])."""
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else v


def resume_fit(learn, name: Union[str, bool, None], args, start: Position,
               allow_nonfinite: bool = False) -> Tuple[Any, Position, List[Callback]]:
    """Continue the fit saved in checkpoint `name`: check it against this fit's `args` (a `FitArgs`, or the
    arguments of `fit_opt_sched`), its `start` position (the epochs' count and lengths) and the learner (and
    that its weights and optimizer state are finite, unless `allow_nonfinite`), then restore the weights and
    the optimizer. Returns the fit's arguments (the checkpoint cadence is inherited unless this call names
    its own), the position to start from and ``[Resume(...)]``. Nothing is changed when a check fails. With
    ``name=True`` the fit's own checkpoint, when it exists (`checkpoint_to_resume`); else the fit starts fresh."""
    name = checkpoint_to_resume(learn, name, args.checkpoint)
    if name is None:
        return args, start, []
    learn.writer.wait()
    learn.barrier()  # under torchrun: rank 0 has finished writing
    where = f"checkpoint {name!r}"
    state = read_checkpoint(learn.model_file(check_name(name, "resume")))
    saved_args = type(args).from_saved(dict(state["fit_args"]), like=args)
    saved, call = saved_args.schedule_args(), args.schedule_args()
    diffs = [f"{k}: checkpoint has {saved[k]!r}, this call {call[k]!r}"
             for k in saved if _norm(saved[k]) != _norm(call[k])]
    if diffs:
        raise ValueError(f"resume={name!r} continues a different fit: " + "; ".join(diffs)
                         + f". Call learn.resume({name!r}) to continue with the saved arguments")
    if args.checkpoint is not None:
        saved_args.checkpoint, saved_args.checkpoint_every = args.checkpoint, args.checkpoint_every
    saved_world, world = state.get("world_size"), world_size()
    if saved_world is not None and saved_world != world:
        raise ValueError(f"{where} was written by a fit on {saved_world} process(es) but this run has {world}: each "
                         f"rank's batches depend on the number of processes, so resume it with {saved_world} "
                         f"(torchrun --nproc_per_node={saved_world})" if saved_world > 1 else
                         f"{where} was written by a fit on {saved_world} process(es) but this run has {world}: each "
                         "rank's batches depend on the number of processes, so resume it in a single process")
    position = Position()
    position.load_state_dict(state["position"])
    plan = (position.n_epochs, position.n_batches, position.epoch_sizes)
    if plan != (start.n_epochs, start.n_batches, start.epoch_sizes):
        other = " (epochs of other lengths)" if plan[:2] == (start.n_epochs, start.n_batches) else ""
        raise ValueError(
            f"the checkpoint is a fit of {position.n_epochs} epochs x {position.n_batches} batches but this one has "
            f"{start.n_epochs} x {start.n_batches}{other}: the training data or batch size changed since it was "
            "written")
    saved_order = state["data"].get("order")
    if saved_order is not None and position.stage == "train" and position.batch_idx > 0:
        now = data_order(learn.data.train_dl, position.epoch).get("order")
        if now is None or not torch.equal(now, saved_order):
            raise ValueError("the training data order of the resumed epoch differs from the checkpoint's "
                             "(different dataset, seed or sampler): resuming would not replay the same batches")
    check_state_dict(learn.saved_model, state["model"], source=where)
    groups = [len(g["params"]) for g in learn.opt.param_groups]
    saved_groups = [len(g["params"]) for g in state["opt"]["param_groups"]]
    if groups != saved_groups:
        raise ValueError(f"the optimizer in {where} has param groups of sizes {saved_groups} but this learner's "
                         f"has {groups}; was it saved with other layer groups?")
    check_loaded({"model": state["model"], "optimizer": state["opt"]["state"]}, where, allow_nonfinite)
    learn.saved_model.load_state_dict(state["model"])
    learn.opt.load_state_dict(state["opt"])
    position.settle()
    rng = state["rng_ranks"][rank()] if "rng_ranks" in state else state["rng"]
    callbacks = state["callbacks_ranks"][rank()] if "callbacks_ranks" in state else state["callbacks"]
    return saved_args, position, [Resume(unpack_lists(callbacks), rng, position.stage)]


class Resume(Callback):
    """Restores what a checkpoint holds beyond weights, optimizer and position (`resume_fit` builds it):
    every callback's state at the end of ``before_fit`` (after the callbacks set themselves up), and the RNG
    states at the start of the resumed epoch, or, when the fit continues between training batches, in
    ``before_train`` (after the epoch's data iterator drew its seed)."""

    order = 1000

    def __init__(self, callback_states: Dict[str, Any], rng: Dict[str, Any], stage: str):
        self.callback_states, self.rng, self.stage = callback_states, rng, stage

    def before_fit(self, learn) -> None:
        for key, cb in _keyed(learn.cbs):
            if key in self.callback_states:
                cb.load_state_dict(self.callback_states[key])

    def before_epoch(self, learn) -> None:
        if self.stage != "train":
            self._restore_rng()

    def before_train(self, learn) -> None:
        self._restore_rng()

    def _restore_rng(self) -> None:
        if self.rng is not None:
            set_rng_states(self.rng)
            self.rng = None


@contextmanager
def preserved_state(learn) -> Iterator[None]:
    """Put the learner back as it was after the block (which may train it, as the LR range test does): weights
    and buffers (BatchNorm statistics), the optimizer (its state and settings, or none), every RNG state, the
    position, the schedule, the fit's arguments and the model's train/eval mode."""
    model = {k: v.detach().clone() for k, v in learn.saved_model.state_dict().items()}
    opt = learn.opt
    opt_state = copy.deepcopy(opt.state_dict()) if opt is not None else None
    rng, position, training = get_rng_states(), copy.copy(learn.position), learn.model.training
    schedule, fit_args = learn.schedule, learn.fit_args
    try:
        yield
    finally:
        learn.saved_model.load_state_dict(model)
        learn.opt = opt
        if opt is not None:
            opt.load_state_dict(opt_state)
        set_rng_states(rng)
        learn.position, learn.schedule, learn.fit_args = position, schedule, fit_args
        learn.model.train(training)
