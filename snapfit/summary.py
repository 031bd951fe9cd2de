"""``learn.summary()`` as fastai 0.7 had it: one forward pass of one training batch with a forward hook on every
leaf layer, giving an OrderedDict of ``'Conv2d-1': {'input_shape': [-1, 1, 8, 8], 'output_shape': [-1, 4, 6, 6],
'trainable': True, 'nb_params': 40}`` entries in call order, and (optionally) a printed table with the
parameter totals."""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .predict import evaluating
from .rng import get_rng_states, set_rng_states

__all__ = ["summary", "model_summary", "summary_table", "param_counts"]

# containers are never summarised, even when empty (fastai 0.7 skipped Sequential and ModuleList)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None and not isinstance(module, _CONTAINERS)


def _shape(x: Any) -> Any:
    """fastai 0.7's shape of a layer's input or output: a tensor's size as a list with the batch dimension (the
    first) replaced by -1; a list or tuple of them as a list of such lists; anything else None."""
    if torch.is_tensor(x):
        shape = list(x.shape)
        if shape:
            shape[0] = -1
        return shape
    if isinstance(x, (list, tuple)):
        return [_shape(o) for o in x]
    if isinstance(x, Mapping):
        return OrderedDict((k, _shape(v)) for k, v in x.items())
    return None


def _record(entries: "OrderedDict[str, Dict[str, Any]]", module: nn.Module, args: Tuple, kwargs: Dict[str, Any],
            output: Any) -> None:
    """Forward hook: the entry of one call of the leaf `module`, named by its class and its position."""
    first = args[0] if args else next(iter(kwargs.values()), None)  # fastai 0.7 described the first input only
    params = list(module.parameters())
    entry: Dict[str, Any] = OrderedDict(input_shape=_shape(first), output_shape=_shape(output))
    if params:  # fastai 0.7: no 'trainable' key for a layer without weights
        entry["trainable"] = any(p.requires_grad for p in params)
    entry["nb_params"] = int(sum(p.numel() for p in params))
    entries[f"{type(module).__name__}-{len(entries) + 1}"] = entry


def model_summary(model: nn.Module, inputs: Sequence[Any]) -> "OrderedDict[str, Dict[str, Any]]":
    """fastai 0.7's ``model_summary(m, inputs)`` over leaf layers: calls ``model(*inputs)`` once, in eval mode
    under ``torch.no_grad()``, and returns an entry per call of a leaf layer (a module without children, the
    model itself when it has none; containers such as an empty ``nn.Sequential`` are skipped), in call order:
    ``'<Class>-<position>': {'input_shape', 'output_shape', 'trainable', 'nb_params'}``.

    `input_shape` describes the layer's first input, `output_shape` its output (a list of shapes for a tuple or
    list of outputs), each as a list with the batch dimension replaced by -1. `nb_params` counts the layer's own
    parameters; `trainable` (present only when it has some) is True when any of them requires grad. A layer
    called twice gets two entries. The train/eval mode of every module is put back, and every hook removed,
    even when the forward raises. A forward that calls no leaf layer is a ValueError."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    entries: "OrderedDict[str, Dict[str, Any]]" = OrderedDict()
    handles = []
    try:
        for m in model.modules():
            if _is_leaf(m):
                handles.append(m.register_forward_hook(partial(_record, entries), with_kwargs=True))
        with evaluating(model):
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    if not entries:
        what = "has no leaf layer" if not handles else "called none of its leaf layers"
        raise ValueError(f"nothing to summarise: the model ({type(model).__name__}) {what} in its forward pass "
                         "(summary lists the calls of modules without children, e.g. nn.Conv2d or nn.ReLU)")
    return entries


def param_counts(model: nn.Module) -> Tuple[int, int]:
    """``(total, trainable)`` parameter counts of `model`, each parameter counted once even when shared;
    trainable ones are those with ``requires_grad`` (frozen ones have it False)."""
    params = list(model.parameters())  # deduplicated: a shared parameter appears once
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def summary_table(entries: Mapping[str, Mapping[str, Any]], model: nn.Module) -> str:
    """The printed form of `entries` (from `model_summary`): a row per entry with the layer name, output shape,
    number of parameters and trainable flag (blank for a layer without parameters), then the total, trainable
    and non-trainable parameter counts of `model` (``Total params: 1,234``, each parameter counted once)."""
    header = ("Layer (type)", "Output Shape", "Param #", "Trainable")
    rows: List[Tuple[str, ...]] = [
        (name, str(e.get("output_shape")), f"{e.get('nb_params', 0):,}",
         "" if e.get("trainable") is None else str(e["trainable"]))
        for name, e in entries.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) if i == 2 else c
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    rule = "=" * (sum(widths) + 2 * (len(widths) - 1))
    total, trainable = param_counts(model)
    return "\n".join([rule, line(header), rule, *(line(r) for r in rows), rule,
                      f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                      f"Non-trainable params: {total - trainable:,}", rule])


def _first_inputs(learn) -> Tuple:
    """The inputs of the first batch of ``learn.data.train_dl``, on the learner's device."""
    dl: Optional[Any] = getattr(getattr(learn, "data", None), "train_dl", None)
    if dl is None:
        raise ValueError("summary needs one batch of training data, but the learner's data has no training loader "
                         "(learn.data.train_dl is None): give the Learner a DataBunch with a training set")
    it = iter(dl)
    try:
        batch = next(it)
    except StopIteration:
        raise ValueError("summary needs one batch of training data, but the training loader is empty "
                         "(learn.data.train_dl yields no batch): check the dataset size, bs and drop_last") from None
    finally:
        del it  # shuts down the loader's workers, if any
    inputs, _ = learn.to_device(batch)
    return inputs


def summary(learn, print_table: bool = True) -> "OrderedDict[str, Dict[str, Any]]":
    """fastai 0.7's ``learn.summary()``: an OrderedDict with an entry per call of a leaf layer of the model, in call
    order, named by class and position (``Conv2d-1``, ``BatchNorm2d-2``, ...), each
    ``{'input_shape': [-1, ...], 'output_shape': [-1, ...], 'trainable': bool, 'nb_params': int}`` (no
    'trainable' for a layer without parameters; see `model_summary`). It comes from one forward pass, in eval
    mode without gradients, of the first batch of ``learn.data.train_dl`` through ``learn.saved_model`` (the
    plain module); the model's modes are put back, its hooks removed, and the global random generators left as
    they were (drawing a batch from a DataLoader advances them). With `print_table`, also prints the table of
    `summary_table` (layer, output shape, parameters, trainable, then the totals). A learner without a training
    loader, an empty loader, or a model whose forward calls no leaf layer is a ValueError."""
    model = learn.saved_model
    rng = get_rng_states()
    try:
        entries = model_summary(model, _first_inputs(learn))
    finally:
        set_rng_states(rng)
    if print_table:
        print(summary_table(entries, model))
    return entries
