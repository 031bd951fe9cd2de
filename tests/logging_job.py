"""A fit logged to TensorBoard and CSV, for the kill-and-resume test of the loggers:

    python -m tests.logging_job OUT full      # uninterrupted
    python -m tests.logging_job OUT kill      # checkpoints every 7 batches, SIGKILLs itself in epoch 2
    python -m tests.logging_job OUT resume    # a fresh process continues from OUT/models/ckpt.pt

Logs go to OUT/tb and OUT/history.csv; OUT/history.json gets the recorder's losses and epoch ends."""
import json
import os
import sys

import torch
from torch import nn

from snapfit import CSVLogger, DataBunch, Learner, TensorBoardLogger, accuracy, load_digits_arrays
from tests.resume_job import KillAt

FIT = dict(lrs=0.1, n_cycle=2, cycle_len=2, use_clr_beta=(10, 10, 0.95, 0.85))  # 4 epochs of 10 batches


def build(out, seed=0):
    torch.manual_seed(seed)
    x, y, xv, yv = load_digits_arrays(flat=True)
    data = DataBunch.from_arrays(x[:640], y[:640], xv[:200], yv[:200], bs=64, seed=1)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
    learn = Learner(model, data, metrics=[accuracy], path=out, progress=False, device="cpu",
                    callbacks=[TensorBoardLogger(os.path.join(out, "tb")), CSVLogger()])
    learn.sched.sync_every = 4
    return learn


def main():
    torch.set_num_threads(1)
    out, mode = sys.argv[1], sys.argv[2]
    learn = build(out, seed=0 if mode != "resume" else 99)
    if mode == "full":
        learn.fit(**FIT)
    elif mode == "kill":
        learn.fit(**FIT, checkpoint="ckpt", checkpoint_every=7, callbacks=[KillAt(25)])
        sys.exit("not killed")
    else:
        learn.resume("ckpt")
    with open(os.path.join(out, "history.json"), "w") as f:
        json.dump({"losses": learn.sched.losses, "epoch_iterations": learn.sched.epoch_iterations}, f)


if __name__ == "__main__":
    main()
