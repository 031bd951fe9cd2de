"""Instructions per training batch of `learn.fit` against a hand-written loop, counted by valgrind's callgrind:
repeatable on a shared machine where wall-clock times swing.

    python benchmarks/loop_instructions.py [--batches 40] [--bs 32]

Each side (the plain loop of `overhead.py`, and `learn.fit` with its default callbacks but the progress bar,
which refreshes by the clock and so far more often per batch under valgrind's 50x slowdown) runs in its own
process under ``valgrind --tool=callgrind`` twice, for N and 6N training batches (MLP 64-256-256-10 on
digits, one thread, SGDR per batch, no validation); the difference divided by 5N is the cost of one batch
without the start-up. Needs valgrind (Debian: ``apt-get install valgrind``)."""
import argparse
import contextlib
import gc
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def run_side(side: str, n_batches: int, bs: int) -> None:
    """Train `n_batches` batches with one side (called inside valgrind)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from snapfit import DataBunch, Learner, load_digits_arrays, mlp
    sys.path.insert(0, HERE)
    from overhead import plain_fit

    torch.set_num_threads(1)
    x_trn, y_trn, _, _ = load_digits_arrays(flat=True)
    reps = -(-n_batches * bs // len(x_trn))  # the digits repeated as often as N batches need
    x, y = (np.concatenate([a] * reps)[:n_batches * bs] for a in (x_trn, y_trn))
    data = DataBunch.from_arrays(x, y, bs=bs)
    torch.manual_seed(0)
    model = mlp(64, 10, hidden=(256, 256), log_softmax=False)
    gc.collect()
    gc.freeze()  # the objects of the imports out of the collector's reach: a full collection during the fit
    #              would otherwise cost far more than a batch, and land in one run but not the other
    if side == "plain":
        data.valid_dl = []
        plain_fit(model, data, 0.05, 1, 1, torch.device("cpu"))
    else:
        learn = Learner(model, data, loss_func=F.cross_entropy, device="cpu", path=tempfile.mkdtemp(), progress=False)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            learn.fit(0.05, 1, cycle_len=1)


def count(side: str, n_batches: int, bs: int) -> int:
    """Instructions of one run under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
               "--side", side, "--batches", str(n_batches), "--bs", str(bs)]
        env = dict(os.environ, PYTHONHASHSEED="0")  # the same hashes, dict orders and so instructions every run
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        m = re.search(r"Collected : (\d+)", p.stderr)
        return int(m.group(1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--side", choices=["plain", "fit"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.side:
        return run_side(a.side, a.batches, a.bs)
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    n = a.batches
    per_batch = {}
    for side in ("plain", "fit"):
        small, big = count(side, n, a.bs), count(side, 6 * n, a.bs)
        per_batch[side] = (big - small) / (5 * n)
        print(f"{side:5s}: {small:,} instructions for {n} batches, {big:,} for {6 * n}: "
              f"{per_batch[side]:,.0f} per batch", flush=True)
    print(f"fit/plain per batch: {per_batch['fit'] / per_batch['plain']:.3f}")


if __name__ == "__main__":
    main()
