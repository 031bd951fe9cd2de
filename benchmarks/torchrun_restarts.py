"""Automatic restart under torchrun: how often a fit whose rank was killed comes back bit-identical.

    python benchmarks/torchrun_restarts.py [--trials 10] [--seed 0]

Each trial runs ``torchrun --standalone --nproc_per_node=2 --max-restarts=1`` of `tests/ddp_resume_job.py` (an
MLP with BatchNorm and Dropout on digits, SGDR 1+2 epochs of 19 batches, a checkpoint every 4 batches,
``resume=True``) in which a random rank SIGKILLs itself when a random training batch starts (seeded; never an
epoch's first batch, so every kill is mid-epoch, and in the first or second cycle). torchrun restarts both
ranks, which continue from the last checkpoint. A trial counts when torchrun exits 0 and both ranks' final
weights, LR trace, losses and validation values equal the uninterrupted 2-process run's, bit for bit. Prints
one line per trial and the count."""
import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BATCHES, EPOCHS = 19, 3


def torchrun(out: Path, *args: str, restarts: int = 0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           f"--max-restarts={restarts}", "-m", "tests.ddp_resume_job", str(out), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def same(a: Path, b: Path) -> str:
    """'' when both runs ended identically on both ranks, else what differs."""
    for r in (0, 1):
        if not (b / f"rank{r}.pt").exists():
            return f"rank {r} wrote no result"
        wa, wb = (torch.load(d / f"rank{r}.pt", weights_only=True) for d in (a, b))
        bad = [k for k in wa if not torch.equal(wa[k], wb[k])]
        if bad:
            return f"rank {r} weights differ at {bad[0]}"
        ha, hb = (json.loads((d / f"rank{r}.json").read_text()) for d in (a, b))
        for key in ("lrs", "losses", "vals"):
            if ha[key] != hb[key]:
                return f"rank {r} {key} differ"
    return ""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = random.Random(a.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "reference"
        done = torchrun(ref)
        if done.returncode != 0:
            sys.exit(f"the reference run failed:\n{done.stderr[-3000:]}")
        ok = 0
        for t in range(a.trials):
            kill_rank = rng.randint(0, 1)
            kill_at = rng.choice([i for i in range(1, BATCHES * EPOCHS) if i % BATCHES])
            out = Path(tmp) / f"trial{t}"
            done = torchrun(out, "--resume", "--kill-rank", str(kill_rank), "--kill-at", str(kill_at), restarts=1)
            why = f"torchrun exited {done.returncode}" if done.returncode else same(ref, out)
            ok += not why
            print(f"trial {t}: rank {kill_rank} killed at batch {kill_at} (epoch {kill_at // BATCHES}, batch "
                  f"{kill_at % BATCHES}): {'bit-identical' if not why else 'FAILED: ' + why}", flush=True)
            if why and done.returncode:
                print(done.stderr[-1500:])
    print(f"\n{ok}/{a.trials} restarted fits bit-identical to the uninterrupted run "
          f"({time.perf_counter() - t0:.0f}s, gloo on CPU)")
    sys.exit(0 if ok == a.trials else 1)


if __name__ == "__main__":
    main()
