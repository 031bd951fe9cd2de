"""The cost of the LARS callback: seconds per batch of learn.fit with and without LARS on a
ResNet-18 (11.2M parameters, 62 tensors), and a plain PyTorch loop as the reference. LARS runs twice: applying
the ratios per tensor (fused=False) and through one flat buffer (fused=True, a constant number of kernels).

    python benchmarks/lars_overhead.py [--reps 5] [--batches 10] [--bs 32] [--sz 32] [--threads 1]

The three sides run interleaved (A B C A B C ...) in one process; medians are compared."""
import argparse
import statistics
import time

import torch
import torchvision
from torch import nn

from snapfit import DataBunch, Learner, ProgressCallback
from snapfit.callbacks.lars import LARS


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--sz", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(dev)
    x = torch.randn(a.bs, 3, a.sz, a.sz, device=dev)
    y = torch.randint(0, 10, (a.bs,), device=dev)
    learn = Learner(model, DataBunch.fixed((x, y), n_batches=a.batches), loss_func=nn.CrossEntropyLoss(),
                    progress=False, device=dev, wd=5e-4)
    learn.get_cb(ProgressCallback).table = False
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def plain():
        for _ in range(a.batches):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    sides = {"plain loop": plain, "learn.fit": lambda: learn.fit(0.01, 1),
             "learn.fit + LARS per tensor": lambda: learn.fit(0.01, 1, callbacks=[LARS(fused=False)]),
             "learn.fit + LARS fused": lambda: learn.fit(0.01, 1, callbacks=[LARS(fused=True)])}
    for f in sides.values():  # warm-up
        f()
    times = {k: [] for k in sides}
    for _ in range(a.reps):
        for k, f in sides.items():
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            times[k].append((time.perf_counter() - t0) / a.batches)
    med = {k: statistics.median(v) for k, v in times.items()}
    n_params = sum(p.numel() for p in model.parameters())
    print(f"resnet18 ({n_params / 1e6:.1f}M params), batch {a.bs}x3x{a.sz}x{a.sz}, {dev}, {a.threads} thread(s), "
          f"{a.reps} reps of {a.batches} batches")
    print("| side | s/batch (median) |\n|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v * 1000:.2f} ms |")
    fit = med["learn.fit"]
    print(f"LARS overhead, (fit + LARS) / fit: per tensor {med['learn.fit + LARS per tensor'] / fit:.3f}, "
          f"fused {med['learn.fit + LARS fused'] / fit:.3f}; fit / plain = {fit / med['plain loop']:.3f}")


if __name__ == "__main__":
    main()
