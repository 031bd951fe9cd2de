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
the files durable, which no scheduling inside the training process can remove."""
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
from overhead import plain_fit, workload  # noqa: E402

from snapfit import io as sio  # noqa: E402
from snapfit import mlp  # noqa: E402

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


def _noop(data, path):
    """A write that does nothing (the handover alone)."""


if __name__ == "__main__":
    main()
