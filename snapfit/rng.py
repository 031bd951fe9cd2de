"""Capture and restore every random number generator a fit draws from (torch CPU and CUDA, Python
`random`, NumPy's global state) as tensors and plain values, so they fit a weights-only checkpoint."""
from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import torch

__all__ = ["get_rng_states", "set_rng_states"]


def get_rng_states() -> Dict[str, Any]:
    """The current state of every global generator, as tensors and plain Python values."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    states: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": py_version, "state": torch.from_numpy(np.array(py_state, dtype=np.int64)),
                   "gauss": py_gauss},
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached": float(np_cached)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Dict[str, Any]) -> None:
    """Restore generators captured by `get_rng_states` (CUDA ones only when CUDA is in use here)."""
    torch.set_rng_state(states["torch"].cpu())
    py = states["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # a different number of GPUs: restore the ones both machines have
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)
