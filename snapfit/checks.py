"""Argument checks shared by the public API: each raises a ValueError that names the argument."""
from __future__ import annotations

import numbers
from typing import Any, List

import numpy as np
import torch

__all__ = ["is_int", "check_int", "check_bool", "per_group"]


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


def per_group(name: str, value: Any, n_groups: int) -> List[float]:
    """A float (the same for every param group) or a sequence with one value per group -> a list of
    `n_groups` finite floats >= 0 (``lrs``, ``wds``, ``start_lr`` ...)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a float or one float per param group, got {value!r}")
    if isinstance(value, numbers.Real):
        vals = [float(value)] * n_groups
    else:
        try:
            arr = np.asarray(value.detach().cpu() if torch.is_tensor(value) else value, dtype=float)
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
