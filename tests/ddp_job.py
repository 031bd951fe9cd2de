"""A data-parallel training job for the DDP test:

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m tests.ddp_job OUT   # 2 ranks, bs 32 each
    python -m tests.ddp_job OUT --single                                                # 1 process, bs 64

The same user code runs in both cases (snapfit detects torchrun). Each process writes OUT/<tag>.pt (its
final weights) and OUT/<tag>.json (validation values, LR history, and every file snapfit wrote)."""
import json
import os
import sys

import torch
from torch import nn

import snapfit.io as sio
from snapfit import DataBunch, Learner, accuracy, load_digits_arrays


def main():
    out, single = sys.argv[1], "--single" in sys.argv
    torch.set_num_threads(1)
    writes, real = [], sio.atomic_write_bytes

    def logged(data, path):
        writes.append(str(path))
        return real(data, path)

    sio.atomic_write_bytes = logged
    x_trn, y_trn, x_val, y_val = load_digits_arrays(flat=True)
    n = 1408  # 22 global batches of 64
    data = DataBunch.from_arrays(x_trn[:n], y_trn[:n], x_val, y_val, bs=64 if single else 32, seed=3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    learn = Learner(model, data, metrics=[accuracy], path=os.path.join(out, "run"), progress=False, device="cpu")
    vals = learn.fit(0.1, 2, cycle_len=1, cycle_save_name="snap")
    tag = "single" if single else f"rank{os.environ['RANK']}"
    torch.save(learn.saved_model.state_dict(), os.path.join(out, f"{tag}.pt"))
    with open(os.path.join(out, f"{tag}.json"), "w") as f:
        json.dump({"vals": vals, "lrs": learn.sched.lrs, "writes": writes, "n_batches": learn.n_batches,
                   "distributed": learn.is_distributed, "main": learn.is_main_process}, f)


if __name__ == "__main__":
    main()
