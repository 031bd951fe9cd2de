"""What snapfit's loop costs over a hand-written PyTorch loop doing the same work.

    python benchmarks/overhead.py [--workload A|B|all] [--reps 5] [--threads 1] [--bs N] [--epochs 2]

Both sides train the same model on the same DataLoaders with SGD (momentum 0.9) and the same SGDR
schedule set every batch (cosine, no warm-up on either side), and validate once per epoch (loss and
accuracy summed on the device, read once). The plain side records nothing; `learn.fit` runs its default
callbacks (recorder, progress bar, schedule, NaN check) and, as more sides, also saves a snapshot per epoch
(one-epoch cycles) or writes a full checkpoint per epoch. The sides are interleaved (A B C D A B C D ...)
in one process, threads pinned. Each ratio is the median over the reps of that rep's ratio (the sides of a rep
ran back to back, so slow phases of a shared machine cancel out): fit/plain is what the loop costs, and
fit+snapshot/fit and fit+checkpoint/fit what writing a file every epoch costs on top of it. The end of `fit`
waits for its last write, a fixed cost per fit: `--epochs 2` and `--epochs 8` show how it spreads.

Workload A: MLP 64-256-256-10 on scikit-learn's digits, batch 32 (overhead-dominated).
Workload B: ResNet-18 on 3x32x32 inputs, batch 64 (compute-dominated).
On CUDA, workload A also runs with batch 256."""
import argparse
import contextlib
import io
import math
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
import torchvision

from snapfit import DataBunch, Learner, load_digits_arrays, mlp


def plain_fit(model, data, lr, n_epochs, cycle_len, dev):
    """The reference: a hand-written loop with the same work (SGDR per batch, validation per epoch)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    nb = len(data.train_dl) * cycle_len
    it = 0
    for epoch in range(n_epochs):
        data.train_dl.sampler.set_epoch(epoch)
        model.train()
        for x, y in data.train_dl:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            t = it % nb
            for g in opt.param_groups:
                g["lr"] = lr / 2 * (1 + math.cos(math.pi * t / nb))
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            it += 1
        model.eval()
        tot = torch.zeros(3, device=dev)
        with torch.no_grad():
            for x, y in data.valid_dl:
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                out = model(x)
                n = len(y)
                tot += torch.stack([F.cross_entropy(out, y) * n, (out.argmax(1) == y).float().sum(),
                                    torch.tensor(float(n), device=dev)])
        tot.tolist()


def accuracy(out, y):
    return (out.argmax(1) == y).float().mean()


def workload(name, bs, dev):
    if name == "A":
        x_trn, y_trn, x_val, y_val = load_digits_arrays(flat=True)
        data = DataBunch.from_arrays(x_trn, y_trn, x_val, y_val, bs=bs, val_bs=256)
        return data, lambda: mlp(64, 10, hidden=(256, 256), log_softmax=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024 + 256, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (1024 + 256,), generator=g)
    data = DataBunch.from_arrays(x[:1024], y[:1024], x[1024:], y[1024:], bs=bs, val_bs=256)
    return data, lambda: torchvision.models.resnet18(num_classes=10)


def make_learner(model, data, dev, path):
    """The learner the benchmarks time: SGD (momentum 0.9), cross-entropy, accuracy, files under `path`."""
    return Learner(model, data, loss_func=F.cross_entropy, metrics=[accuracy], path=path, device=dev,
                   opt_func=lambda ps: torch.optim.SGD(ps, momentum=0.9))


def quiet_fit(learn, epochs, **kw):
    """``learn.fit`` with the plain side's schedule (one-epoch cosine cycles, no warm-up), its output discarded."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        learn.fit(0.05, epochs, cycle_len=1, warmup=False, **kw)


def bench(name, bs, reps, epochs, dev, tmp):
    data, make = workload(name, bs, dev)
    torch.manual_seed(0)
    model = make().to(dev)
    learn = make_learner(model, data, dev, tmp)

    def fit(**kw):
        quiet_fit(learn, epochs, **kw)

    sides = {"plain loop": lambda: plain_fit(model, data, 0.05, epochs, 1, dev), "learn.fit": fit,
             "learn.fit + snapshots": lambda: fit(cycle_save_name="snap"),
             "learn.fit + checkpoints": lambda: fit(checkpoint="ckpt", checkpoint_every="epoch")}
    for f in sides.values():
        f()  # warm-up (allocator, kernels, files)
    wall, cpu = {k: [] for k in sides}, {k: [] for k in sides}
    for _ in range(reps):
        for k, f in sides.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            f()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            wall[k].append((time.perf_counter() - t0) / epochs)
            cpu[k].append((time.process_time() - c0) / epochs)
    med = {k: statistics.median(v) for k, v in wall.items()}
    cpu_min = {k: min(v) for k, v in cpu.items()}

    def paired(num, den):
        return statistics.median(a / b for a, b in zip(wall[num], wall[den]))

    ratios = {"fit/plain": paired("learn.fit", "plain loop"),
              "snapshot/plain": paired("learn.fit + snapshots", "plain loop"),
              "checkpoint/plain": paired("learn.fit + checkpoints", "plain loop"),
              "snapshot/fit": paired("learn.fit + snapshots", "learn.fit"),
              "checkpoint/fit": paired("learn.fit + checkpoints", "learn.fit")}
    return med, cpu_min, ratios, len(data.train_dl)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workload", default="all", choices=["A", "B", "all"])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bs", type=int, default=None, help="override the batch size")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    runs = []
    if a.workload in ("A", "all"):
        runs.append(("A", a.bs or 32))
        if dev.type == "cuda" and a.bs is None:
            runs.append(("A", 256))
    if a.workload in ("B", "all"):
        runs.append(("B", a.bs or 64))
    print(f"device {dev} ({torch.cuda.get_device_name() if dev.type == 'cuda' else f'{a.threads} thread(s)'}), "
          f"torch {torch.__version__}, {a.reps} interleaved reps of {a.epochs} epochs")
    print("Medians of wall-clock seconds per epoch and of the reps' paired ratios; the last column is the ratio of "
          "the fastest runs in process CPU time (least disturbed by other load on a shared machine).")
    print("| workload | batch | batches/epoch | plain s/epoch | fit s/epoch | fit/plain | fit+snapshot per epoch / "
          "plain | fit+checkpoint per epoch / plain | fit+snapshot / fit | fit+checkpoint / fit | fit/plain (min CPU "
          "time) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, bs in runs:
            med, cpu, r, nb = bench(name, bs, a.reps, a.epochs, dev, tmp)
            c = cpu["learn.fit"] / cpu["plain loop"]
            print(f"| {name} | {bs} | {nb} | {med['plain loop']:.4f} | {med['learn.fit']:.4f} | {r['fit/plain']:.3f} | "
                  f"{r['snapshot/plain']:.3f} | {r['checkpoint/plain']:.3f} | {r['snapshot/fit']:.3f} | "
                  f"{r['checkpoint/fit']:.3f} | {c:.3f} |", flush=True)


if __name__ == "__main__":
    main()
