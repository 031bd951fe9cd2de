"""Optimizers: building one with a param group per layer group, and stepping those whose `step` needs a
closure (``torch.optim.LBFGS``) through the normal loop."""
from __future__ import annotations

import inspect
from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

from .core import Callback, CancelStepException

__all__ = ["create_opt", "needs_closure", "ClosureStep", "step_callbacks", "get_momentum", "set_momentum"]


def create_opt(layer_groups: Sequence[nn.Module], opt_func: Callable) -> torch.optim.Optimizer:
    """``opt_func(groups)`` with one param group per layer group (a parameter shared by two groups belongs to
    the first); each group starts at lr 1e-3 until a schedule sets it."""
    groups, seen = [], set()
    for lg in layer_groups:
        params = [p for p in lg.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        groups.append({"params": params, "lr": 1e-3})
    if not seen:
        raise ValueError("the model has no parameters to train: give a model with parameters (nn.Module with "
                         "weights), or a tensor to optimise")
    try:
        return opt_func(groups)
    except ValueError as e:  # e.g. LBFGS: "doesn't support per-parameter options (parameter groups)"
        if len(groups) > 1 and "group" in str(e):
            raise ValueError(f"opt_func could not build an optimizer with {len(groups)} param groups (one per layer "
                             f"group): {e}. Use this optimizer with a single layer group (leave layer_groups= "
                             "out)") from e
        raise


def needs_closure(opt) -> bool:
    """True when ``opt.step`` has a `closure` argument without a default (torch.optim.LBFGS)."""
    try:
        p = inspect.signature(opt.step).parameters.get("closure")
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False
    return p is not None and p.default is inspect.Parameter.empty


class ClosureStep(Callback):
    """Steps an optimizer that needs a closure: ``opt.step(closure)`` instead of ``opt.step()``, then
    CancelStepException. The closure's first call returns the loss the loop already computed (its gradients
    are in place); later calls zero the gradients and re-run forward, loss and backward without events."""

    order = 900  # last in after_backward: callbacks there see the gradients before the step

    def after_backward(self, learn) -> None:
        first = [True]

        def closure():
            if first[0]:
                first[0] = False
                return learn.loss.detach()
            learn.opt.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss = learn.loss_func(learn.model(*learn.xb), *learn.yb)
                loss.backward()
            return loss.detach()

        learn.opt.step(closure)
        raise CancelStepException()


def step_callbacks(opt) -> List[Callback]:
    """What stepping `opt` needs in a fit: ``[ClosureStep()]`` when it needs a closure, else nothing. A clear
    error when it has nothing to train (no parameter, or every one frozen)."""
    if not any(p.requires_grad for g in opt.param_groups for p in g["params"]):
        raise ValueError("the model has no trainable parameters (none, or every one has requires_grad=False): "
                         "unfreeze some (learn.unfreeze() or learn.freeze_to(n)) or give a model with parameters")
    return [ClosureStep()] if needs_closure(opt) else []


def get_momentum(group: dict) -> Optional[float]:
    """A param group's momentum: ``momentum`` (SGD, RMSprop), else ``betas[0]`` (Adam-style), else None."""
    if "momentum" in group:
        return group["momentum"]
    betas = group.get("betas")
    return betas[0] if betas is not None else None


def set_momentum(group: dict, value: float) -> None:
    """Set a param group's momentum where `get_momentum` reads it."""
    if "momentum" in group:
        group["momentum"] = value
    else:
        group["betas"] = (value, *group["betas"][1:])
