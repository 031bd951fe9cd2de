"""What writing a snapshot's files costs a training loop on this machine when snapfit does nothing else: the
floor under `overhead.py`'s fit+snapshot/fit ratio.

    python benchmarks/write_floor.py [--reps 40] [--epochs 8] [--threads 1]

The loop is `overhead.py`'s plain loop (MLP on scikit-learn's digits, batch 32). After each epoch it hands the
bytes of a digits-MLP snapshot (serialised once, up front) and a small JSON sidecar to a writer, which writes
each atomically (temp file, fsync, rename, fsync of the folder: `snapfit.io.atomic_write_bytes`):

- thread: a writer thread in the same process (what `learn.writer` is, less the state copy and serialisation);
- process: a separate Python process fed through a pipe (no GIL shared with the loop);
- thread, no fsync: the same files through the page cache only;
- nothing: the handover alone.

Each rep runs the loop without writes and with them back to back (A B A B ...); the figure is the median of the
reps' ratios. What remains in the process column is the operating system's and the machine's cost of making
the files durable, which no scheduling inside the training process can remove.

A second table splits `learn.fit`'s own snapshot per epoch (one-epoch cycles, as in `overhead.py`) into its
parts, each side over `learn.fit` without snapshots: the whole snapshot; without the file writes (the
serialisation stays: `torch.save` in the writer thread); without serialisation or writes (what is left is the
loop side: state dict, NaN/inf check, copy, handover, and the end-of-fit wait). Differences between rows are
what each part costs; serialisation holds the GIL, so a thread cannot overlap it with a Python training loop."""
import argparse
import io
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import make_learner, plain_fit, quiet_fit, workload  # noqa: E402

from snapfit import io as sio  # noqa: E402
from snapfit import mlp  # noqa: E402
from snapfit import writer as swriter  # noqa: E402

CHILD = """
import os, sys
from snapfit.io import atomic_write_bytes
folder = sys.argv[1]
with open(os.path.join(folder, 'payload'), 'rb') as f:
    payload = f.read()
sys.stdout.write('r'); sys.stdout.flush()  # ready: imports done
while sys.stdin.buffer.read(1):
    atomic_write_bytes(payload, os.path.join(folder, 'p.pt'))
    atomic_write_bytes(b'{"cycle": 0}', os.path.join(folder, 'p.json'))
    sys.stdout.write('.'); sys.stdout.flush()
"""


def without_fsync(data, path):
    """`atomic_write_bytes` less its fsyncs (temp file and rename only)."""
    tmp = f"{path}.nofsync.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device("cpu")
    data, make = workload("A", 32, dev)
    torch.manual_seed(0)
    model = make()
    buf = io.BytesIO()
    torch.save(mlp(64, 10, hidden=(256, 256), log_softmax=False).state_dict(), buf)
    payload = buf.getvalue()
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "payload"), "wb") as f:
        f.write(payload)
    jobs: "queue.SimpleQueue" = queue.SimpleQueue()
    written = threading.Semaphore(0)

    def serve():  # the writer thread
        while True:
            write = jobs.get()
            write(payload, os.path.join(folder, "t.pt"))
            write(b'{"cycle": 0}', os.path.join(folder, "t.json"))
            written.release()

    threading.Thread(target=serve, daemon=True).start()
    child = subprocess.Popen([sys.executable, "-c", CHILD, folder], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    child.stdout.read(1)  # its imports are done before anything is timed

    def fit(write):
        """Seconds per epoch of the plain loop, handing over one snapshot per epoch to `write` (None: no writes);
        the end waits for the last write, as the end of `learn.fit` does."""
        t = time.perf_counter()
        for _ in range(a.epochs):
            plain_fit(model, data, 0.05, 1, 1, dev)
            if write == "process":
                child.stdin.write(b"w")
                child.stdin.flush()
            elif write is not None:
                jobs.put(write)
        if write == "process":
            child.stdout.read(a.epochs)
        elif write is not None:
            for _ in range(a.epochs):
                written.acquire()
        return (time.perf_counter() - t) / a.epochs

    writers = {"thread": sio.atomic_write_bytes, "process": "process", "thread, no fsync": without_fsync,
               "nothing": _noop}
    fit(None)
    ratios, base = {k: [] for k in writers}, []
    for _ in range(a.reps):
        for k, w in writers.items():
            base.append(fit(None))
            ratios[k].append(fit(w) / base[-1])
    child.stdin.close()
    child.wait()
    shutil.rmtree(folder, ignore_errors=True)
    print(f"{a.reps} paired reps of {a.epochs} epochs, {a.threads} thread(s), plain loop "
          f"{statistics.median(base) * 1e3:.1f} ms/epoch; a {len(payload) / 1e3:.0f} kB snapshot and its sidecar "
          "written per epoch")
    print("| writer | loop with the writes / loop without (median of paired ratios) |")
    print("|---|---|")
    for k, v in ratios.items():
        print(f"| {k} | {statistics.median(v):.3f} |")
    parts(a, data, make, dev)


def parts(a, data, make, dev):
    """Print what each part of `learn.fit`'s snapshot per epoch costs (the second table)."""
    torch.manual_seed(0)
    folder = tempfile.mkdtemp()
    learn = make_learner(make(), data, dev, folder)
    write, serialise = sio.atomic_write_bytes, swriter._serialised

    def fit(side):
        # every file snapfit writes goes through snapfit.io.atomic_write_bytes; the writer serialises in
        # snapfit.writer._serialised (private: replaced here only to take its cost out)
        sio.atomic_write_bytes = _noop if side in ("no writes", "loop side") else write
        swriter._serialised = (lambda state, copied: b"") if side == "loop side" else serialise
        kw = {} if side == "fit" else {"cycle_save_name": "snap"}
        try:
            t = time.perf_counter()
            quiet_fit(learn, a.epochs, **kw)
            return time.perf_counter() - t
        finally:
            sio.atomic_write_bytes, swriter._serialised = write, serialise

    sides = {"fit": [], "fit + snapshot": [], "no writes": [], "loop side": []}
    for k in sides:
        fit(k)  # warm-up
    for _ in range(a.reps):
        for k, v in sides.items():
            v.append(fit(k))
    shutil.rmtree(folder, ignore_errors=True)
    labels = {"fit + snapshot": "the whole snapshot (state dict, NaN/inf check, copy, serialise, two files)",
              "no writes": "less the file writes (serialisation in the writer thread stays)",
              "loop side": "less serialisation too (state dict, NaN/inf check, copy, handover, end-of-fit wait)"}
    print(f"\nlearn.fit with a snapshot per epoch over learn.fit without ({a.reps} paired reps of {a.epochs} epochs, "
          f"fit {statistics.median(sides['fit']) / a.epochs * 1e3:.1f} ms/epoch)")
    print("| snapshot | fit with it / fit (median of paired ratios) |")
    print("|---|---|")
    for k, label in labels.items():
        print(f"| {label} | {statistics.median(x / y for x, y in zip(sides[k], sides['fit'])):.3f} |")


def _noop(data, path):
    """A write that does nothing (the handover alone)."""


if __name__ == "__main__":
    main()
