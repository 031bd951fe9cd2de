"""A small training job for the resume tests, run in its own process:

    python -m tests.resume_job OUT full                    # the uninterrupted reference
    python -m tests.resume_job OUT kill --at K             # checkpoints every 10 batches, SIGKILLs itself at batch K
    python -m tests.resume_job OUT kill-in-write --write N # SIGKILLs itself inside the N-th checkpoint write
    python -m tests.resume_job OUT resume                  # a fresh process continues from OUT/models/ckpt.pt

Each finishing mode writes OUT/final.pt (weights) and OUT/history.json (LR and loss histories). The
job draws from every global RNG each batch (torch, NumPy, Python) and uses dropout, so a resume is
bit-identical only if all of them, the data order and the optimizer state are restored."""
import argparse
import json
import os
import random
import signal
import sys

import numpy as np
import torch
from torch import nn

from snapfit import Callback, DataBunch, DecayType, Learner, TrainingPhase, accuracy, load_digits_arrays
from tests.helpers import CrashAt

FIT = dict(lrs=0.05, n_cycle=3, cycle_len=1, cycle_mult=2, cycle_save_name="snap")
ONE_CYCLE = dict(lrs=0.1, n_cycle=2, cycle_len=2, use_clr_beta=(10, 20, 0.95, 0.85), cycle_save_name="snap")


def phases():
    """An SGD warm-up, a cosine SGD phase ending inside an epoch, then Adam with momentum decay: 7 epochs."""
    return [TrainingPhase(1, torch.optim.SGD, lr=(0.005, 0.05), lr_decay=DecayType.LINEAR),
            TrainingPhase(2.5, torch.optim.SGD, lr=(0.05, 0.005), lr_decay=DecayType.COSINE, wds=1e-4),
            TrainingPhase(3.5, torch.optim.Adam, lr=1e-3, momentum=(0.95, 0.85), momentum_decay=DecayType.LINEAR,
                          wds=1e-3, wd_loss=False)]


def run_fit(learn, schedule, **kw):
    """The fit of `schedule` ('sgdr', 'onecycle' or 'phases'), with extra fit arguments `kw`."""
    if schedule == "phases":
        return learn.fit_opt_sched(phases(), cycle_save_name="snap", **kw)
    return learn.fit(**(FIT if schedule == "sgdr" else ONE_CYCLE), **kw)
BATCHES_PER_EPOCH = 19  # 600 samples, bs 32
CHECKPOINT_EVERY = 10


class NoisyAugment(Callback):
    """Random scale, shift and noise per batch, drawn from Python, NumPy and torch RNGs."""

    order = -30

    def before_batch(self, learn):
        if learn.training:
            x = learn.xb[0]
            scale = 1 + 0.05 * random.random()
            shift = float(np.random.uniform(-0.05, 0.05))
            learn.xb = (x * scale + shift + 0.02 * torch.randn_like(x),)


class KillAt(CrashAt):
    """SIGKILL this process when training batch `iteration` starts (no cleanup of any kind)."""

    def crash(self, learn):
        os.kill(os.getpid(), signal.SIGKILL)


def build(out, seed=0):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    x_trn, y_trn, x_val, y_val = load_digits_arrays(seed=0)
    data = DataBunch.from_arrays(x_trn[:600], y_trn[:600], x_val, y_val, bs=32, seed=1)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Dropout(0.2),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(32, 10), nn.LogSoftmax(1))
    return Learner(model, data, metrics=[accuracy], path=out, progress=False, device="cpu",
                   callbacks=[NoisyAugment()])


def dump(learn, out):
    torch.save(learn.model.state_dict(), os.path.join(out, "final.pt"))
    rec = learn.sched
    hist = dict(group_lrs=rec.group_lrs, group_moms=rec.group_moms, losses=rec.losses, smooth_losses=rec.smooth_losses,
                val_losses=rec.val_losses, metrics=rec.metrics, cycle_ends=rec.cycle_ends,
                iterations=rec.iterations)
    with open(os.path.join(out, "history.json"), "w") as f:
        json.dump(hist, f)


def main(argv=None):
    torch.set_num_threads(1)
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("mode", choices=["full", "kill", "kill-in-write", "resume"])
    p.add_argument("--at", type=int, default=-1)
    p.add_argument("--write", type=int, default=2)
    p.add_argument("--schedule", choices=["sgdr", "onecycle", "phases"], default="sgdr")
    a = p.parse_args(argv)
    if a.mode == "full":
        learn = build(a.out)
        run_fit(learn, a.schedule)
        dump(learn, a.out)
    elif a.mode == "kill":
        learn = build(a.out)
        run_fit(learn, a.schedule, checkpoint="ckpt", checkpoint_every=CHECKPOINT_EVERY, callbacks=[KillAt(a.at)])
        sys.exit("not killed")
    elif a.mode == "kill-in-write":
        import snapfit.io as sio

        real_replace, calls = sio.os.replace, {"n": 0}

        def replace(src, dst):
            if str(dst).endswith("ckpt.pt"):
                calls["n"] += 1
                if calls["n"] == a.write:  # the new file is complete on disk but not yet renamed
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)

        sio.os.replace = replace
        learn = build(a.out)
        learn.fit(**FIT, checkpoint="ckpt", checkpoint_every=CHECKPOINT_EVERY)
        sys.exit("not killed")
    else:
        learn = build(a.out, seed=12345)  # different init and RNG: everything must come from the checkpoint
        if a.schedule == "phases":
            learn.fit_opt_sched(phases(), cycle_save_name="snap", resume="ckpt")
        else:
            learn.resume("ckpt")
        dump(learn, a.out)


if __name__ == "__main__":
    main()
