"""A torchrun job for the multi-process resume tests (also runs alone, as the single-process reference):

    torchrun --standalone --nproc_per_node=2 -m tests.ddp_resume_job OUT [options]

  --kill-rank R --kill-at K   on the first attempt (TORCHELASTIC_RESTART_COUNT 0), rank R SIGKILLs itself when
                              training batch K starts; torchrun --max-restarts=1 then restarts every rank
  --resume                    fit(..., resume=True): continue from OUT/models/ckpt.pt when it exists
  --amp bf16|fp16             mixed precision
  --bs N                      batch size per process (the reference single process uses 2 * 32)
  --sync-bn                   Learner(..., sync_bn=True)
  --no-dropout                the MLP without Dropout (so 2 ranks x 32 can follow 1 process x 64)
  --checks                    after the fit: predictions (plain, with targets, of snapshots) against the model
                              applied to the whole validation set, and an LR range test; into OUT/checks{R}.pt

The model is an MLP with BatchNorm and Dropout on digits; the fit is SGDR with snapshots and a checkpoint every
4 batches: ``fit(0.05, 2, cycle_len=1, cycle_mult=2, cycle_save_name='snap', checkpoint='ckpt',
checkpoint_every=4)``. Each rank that finishes writes OUT/rank{R}.pt (final weights) and OUT/rank{R}.json
(LR and loss history, validation values, attempt number)."""
import argparse
import json
import os
import signal
import sys

import torch
from torch import nn

from snapfit import Callback, DataBunch, Learner, accuracy, load_digits_arrays

FIT = dict(lrs=0.05, n_cycle=2, cycle_len=1, cycle_mult=2, cycle_save_name="snap", checkpoint="ckpt",
           checkpoint_every=4)
N_TRAIN = 1216  # 19 global batches of 64: an epoch is 19 batches on 2 ranks x 32 and on 1 process x 64


class KillSelf(Callback):
    """SIGKILL this process when training batch `iteration` starts (a machine failure: no cleanup at all)."""

    order = -100

    def __init__(self, iteration: int):
        self.iteration = iteration

    def before_batch(self, learn):
        if learn.training and learn.iteration == self.iteration:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def model(dropout: bool = True) -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.2 if dropout else 0.0),
                         nn.Linear(64, 10))


def build(out: str, bs: int, dropout: bool = True, **kw) -> Learner:
    torch.set_num_threads(1)
    x_trn, y_trn, x_val, y_val = load_digits_arrays(flat=True)
    data = DataBunch.from_arrays(x_trn[:N_TRAIN], y_trn[:N_TRAIN], x_val, y_val, bs=bs, seed=5)
    torch.manual_seed(0)
    return Learner(model(dropout), data, metrics=[accuracy], path=os.path.join(out, "run"), progress=False,
                   device="cpu", **kw)


def checks(learn: Learner, vals) -> dict:
    """What the gathered predictions, the global validation values and an LR range test give on this rank."""
    x_val, y_val = (torch.as_tensor(a) for a in load_digits_arrays(flat=True)[2:])
    learn.model.eval()
    with torch.no_grad():
        direct = learn.model(x_val)
    loss = torch.nn.functional.cross_entropy(direct, y_val).item()
    acc = (direct.argmax(1) == y_val).float().mean().item()
    preds, targs = learn.predict_with_targs()
    snap_probs, snap_targs = learn.predict_snapshots("snap")
    tta_direct, tta = tta_check(learn.path)
    before = {k: v.clone() for k, v in learn.saved_model.state_dict().items()}
    learn.lr_find(end_lr=1e4, num_it=40)  # diverges before the end: every rank must stop at the same batch
    finder = learn.sched.finder
    after = learn.saved_model.state_dict()
    return {"direct": direct, "preds": torch.as_tensor(learn.predict()), "preds_t": torch.as_tensor(preds),
            "targs": torch.as_tensor(targs), "y_val": y_val, "snap_probs": torch.as_tensor(snap_probs),
            "snap_targs": torch.as_tensor(snap_targs), "direct_loss": loss, "direct_acc": acc,
            "vals": list(vals), "finder_lrs": list(finder.lrs), "finder_losses": list(finder.losses),
            "restored": all(torch.equal(before[k], after[k]) for k in before), "tta_direct": tta_direct,
            "tta": tta}


def tta_check(path):
    """TTA of a small conv net on the digits as images (horizontal flips): the model on the whole validation
    set, and what learn.TTA returns on this rank."""
    from torchvision.transforms import v2

    from snapfit import ImageClassifierData, simple_cnn

    x_trn, y_trn, x_val, y_val = load_digits_arrays()
    finish = [v2.ToDtype(torch.float32, scale=True)]
    tfms = (v2.Compose([v2.RandomHorizontalFlip(), *finish]), v2.Compose(finish))
    data = ImageClassifierData.from_arrays(path, (x_trn[:, 0], y_trn), (x_val[:, 0], y_val), bs=32, tfms=tfms)
    torch.manual_seed(1)
    conv = Learner(simple_cnn(10, in_channels=3, widths=(4,)), data, path=path, progress=False, device="cpu")
    plain = torch.as_tensor(conv.predict_dl(data.valid_dl.__class__(data.valid_dl.dataset, batch_size=64))[0])
    preds, _ = conv.TTA(n_aug=2)
    return plain, torch.as_tensor(preds)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--kill-rank", type=int, default=None)
    p.add_argument("--kill-at", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--amp", default=None)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--sync-bn", action="store_true")
    p.add_argument("--no-dropout", action="store_true")
    p.add_argument("--checks", action="store_true")
    a = p.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    learn = build(a.out, a.bs, dropout=not a.no_dropout, sync_bn=a.sync_bn)
    cbs = []
    if a.kill_rank == rank and attempt == 0:
        cbs.append(KillSelf(a.kill_at))
    vals = learn.fit(**FIT, amp=a.amp, resume=True if a.resume else None, callbacks=cbs)
    torch.save(learn.saved_model.state_dict(), os.path.join(a.out, f"rank{rank}.pt"))
    rec = learn.sched
    with open(os.path.join(a.out, f"rank{rank}.json"), "w") as f:
        json.dump({"lrs": rec.lrs, "losses": [float(v) for v in rec.losses], "vals": vals, "attempt": attempt,
                   "iteration": learn.iteration, "world_size": int(os.environ.get("WORLD_SIZE", "1"))}, f)
    if a.checks:
        torch.save(checks(learn, vals), os.path.join(a.out, f"checks{rank}.pt"))


if __name__ == "__main__":
    main()
