"""Small real datasets that ship with scikit-learn (no download): used by the demo, the notebooks,
the tests and the benchmarks."""
from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["load_digits_arrays"]


def _sklearn():
    try:
        import sklearn.datasets as skd
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("this needs scikit-learn (bundled datasets): pip install 'snapfit[demo]'") from e
    return skd


def load_digits_arrays(valid_pct: float = 0.2, seed: int = 0, flat: bool = False
                       ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 1797 handwritten 8x8 digits as ``(x_trn, y_trn, x_val, y_val)``: images
    scaled to [0, 1] with shape (N, 1, 8, 8) (or (N, 64) with `flat`), labels int64; a seeded
    random `valid_pct` of the samples is held out for validation."""
    if not 0 < valid_pct < 1:
        raise ValueError(f"valid_pct must be in (0, 1), got {valid_pct}")
    d = _sklearn().load_digits()
    x = (d.images / 16.0).astype(np.float32)
    x = x.reshape(len(x), 64) if flat else x[:, None]
    y = d.target.astype(np.int64)
    idx = np.random.RandomState(seed).permutation(len(x))
    n_val = int(round(len(x) * valid_pct))
    val, trn = idx[:n_val], idx[n_val:]
    return x[trn], y[trn], x[val], y[val]
