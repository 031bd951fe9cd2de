"""The README's first command: train a small CNN on scikit-learn's bundled digits with SGDR and
per-cycle snapshots, print the epoch table, save ``lr.png`` and ``loss.png``, report accuracy.

    python -m snapfit.demo [--out DIR] [--lr 0.1] [--n-cycle 3] [--cycle-mult 2]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from . import DataBunch, Learner, accuracy, accuracy_np, load_digits_arrays, simple_cnn


def main(argv: Optional[Sequence[str]] = None) -> float:
    """Run the demo; returns the final validation accuracy."""
    p = argparse.ArgumentParser(prog="python -m snapfit.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out", help="folder for snapshots and plots (default: demo_out)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--n-cycle", type=int, default=3)
    p.add_argument("--cycle-mult", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    x_trn, y_trn, x_val, y_val = load_digits_arrays(seed=args.seed)
    data = DataBunch.from_arrays(x_trn, y_trn, x_val, y_val, bs=64, seed=args.seed)
    print(f"digits: {len(x_trn)} training and {len(x_val)} validation images of 8x8, {data.c} classes")
    learn = Learner(simple_cnn(data.c), data, metrics=[accuracy], path=args.out, progress=not args.no_progress)
    print(f"device: {learn.device}")

    t0 = time.perf_counter()
    learn.fit(args.lr, args.n_cycle, cycle_len=1, cycle_mult=args.cycle_mult, cycle_save_name="snap")
    secs = time.perf_counter() - t0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    learn.sched.plot_lr().savefig(out / "lr.png", dpi=100)
    learn.sched.plot_loss().savefig(out / "loss.png", dpi=100)
    cycles = learn.saved_cycles("snap")
    print(f"snapshots: {[learn.model_file(f'snap_cyc_{c}').name for c in cycles]} in {learn.models_path}")
    print(f"plots: {out / 'lr.png'}, {out / 'loss.png'}")

    log_preds, targs = learn.predict_with_targs()
    acc = accuracy_np(log_preds, targs)
    probs = np.exp(log_preds)
    print(f"trained {len(learn.sched.val_losses)} epochs in {secs:.1f}s; "
          f"mean max-probability {probs.max(1).mean():.3f}")
    print(f"validation accuracy: {acc:.4f}")
    return acc


if __name__ == "__main__":
    main()
