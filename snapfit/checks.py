"""Argument checks shared by the public API: each raises a ValueError that names the argument."""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Callable, List

import numpy as np
import torch

__all__ = ["is_int", "check_int", "check_bool", "check_float", "check_callable", "check_callables", "check_path",
           "per_group"]


def is_int(v: Any) -> bool:
    """True for Python and NumPy integers, False for bools (``True`` is not a count)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_int(name: str, v: Any, minimum: int = 1, what: str = "") -> int:
    """`v` as an int when it is an integer ``>= minimum``, else ``ValueError: {name} must be {what}, got {v!r}``;
    `what` defaults to "a positive int" (minimum 1) or "an int >= {minimum}"."""
    if not is_int(v) or v < minimum:
        what = what or ("a positive int" if minimum == 1 else f"an int >= {minimum}")
        raise ValueError(f"{name} must be {what}, got {v!r}")
    return int(v)


def check_bool(name: str, v: Any) -> bool:
    """`v` when it is True or False, else ``ValueError: {name} must be True or False, got {v!r}``."""
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be True or False, got {v!r}")
    return v


def check_float(name: str, v: Any, minimum: float = 0.0, what: str = "") -> float:
    """`v` as a float when it is a finite real number ``>= minimum`` (not a bool, not a str), else
    ``ValueError: {name} must be {what}, got {v!r}``; `what` defaults to "a finite number >= {minimum}"."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < minimum:
        raise ValueError(f"{name} must be {what or f'a finite number >= {minimum:g}'}, got {v!r}")
    return float(v)


def check_callable(name: str, v: Any, what: str) -> Callable:
    """`v` when it is callable, else ``TypeError: {name} must be {what}, got {v!r}``."""
    if not callable(v):
        raise TypeError(f"{name} must be {what}, got {v!r}")
    return v


def check_callables(name: str, v: Any, what: str) -> List[Callable]:
    """`v` (a list or tuple of callables) as a list; a single callable or a non-callable item is a TypeError
    that says what to pass."""
    if callable(v):
        label = getattr(v, "__name__", type(v).__name__)
        raise TypeError(f"{name} must be a list of {what}, got a single one ({label}): pass {name}=[{label}]")
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise TypeError(f"{name} must be a list of {what}, got {v!r}")
    items = list(v)
    for item in items:
        if not callable(item):
            raise TypeError(f"{name} must be {what}, got {item!r}")
    return items


def check_path(name: str, v: Any) -> Path:
    """`v` as a Path when it is a str or an os.PathLike, else ``TypeError`` naming `name`."""
    if not isinstance(v, (str, os.PathLike)):
        raise TypeError(f"{name} must be a folder path (a str or a pathlib.Path), got {v!r}")
    return Path(v)


def per_group(name: str, value: Any, n_groups: int) -> List[float]:
    """A float (the same for every param group) or a sequence with one value per group -> a list of
    `n_groups` finite floats >= 0 (``lrs``, ``wds``, ``start_lr`` ...)."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"{name} must be a float or a sequence of floats (one per param group), got {value!r}")
    if isinstance(value, numbers.Real):
        vals = [float(value)] * n_groups
    else:
        try:
            arr = np.asarray(value.detach().cpu() if torch.is_tensor(value) else value)
            if arr.dtype.kind not in "iuf":  # strings and objects are not numbers, even when they parse as one
                raise TypeError
            arr = arr.astype(float)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a float or a sequence of floats, got {value!r}") from None
        if arr.ndim == 0:
            vals = [float(arr)] * n_groups
        elif arr.ndim != 1 or len(arr) != n_groups:
            raise ValueError(
                f"{name} has {arr.size} values but the optimizer has {n_groups} param group(s) "
                f"(one per layer group); pass a single float or exactly {n_groups} values")
        else:
            vals = [float(v) for v in arr]
    if any(not np.isfinite(v) or v < 0 for v in vals):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return vals
