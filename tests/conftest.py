"""Shared fixtures: seeded, single-threaded, CPU-only unless a test asks for CUDA."""
import matplotlib
import numpy as np
import pytest
import torch

from snapfit import Learner, load_digits_arrays
from tests.helpers import small_data, small_model

matplotlib.use("Agg")  # this process only: notebook kernels keep Jupyter's inline backend
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled digits: (x_trn, y_trn, x_val, y_val), images (N, 1, 8, 8)."""
    return load_digits_arrays(seed=0)


@pytest.fixture(scope="session")
def digits_flat():
    return load_digits_arrays(seed=0, flat=True)


@pytest.fixture
def host_reads(monkeypatch):
    """Counts reads of device values: Tensor.item/.tolist/.cpu/.numpy and torch.cuda.synchronize.
    Reset with ``host_reads["n"] = 0``."""
    counts = {"n": 0}

    def count(real):
        def wrapper(*a, **k):
            counts["n"] += 1
            return real(*a, **k)
        return wrapper

    for name in ("item", "tolist", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, count(getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch.cuda, "synchronize", count(torch.cuda.synchronize))
    return counts


@pytest.fixture
def make_learner(tmp_path):
    """Factory: a Learner on tiny data, CPU, bars off, files under tmp_path."""
    def make(data=None, model=None, **kw):
        kw.setdefault("progress", False)
        kw.setdefault("device", "cpu")
        kw.setdefault("path", tmp_path)
        return Learner(model or small_model(), data or small_data(), **kw)
    return make
