"""Large-batch training with and without LARS, at the same epoch budget (the accuracy table).

    python benchmarks/lars_large_batch.py [--epochs 30] [--seeds 3]

Digits (1438 training images, 8x8), a small CNN with BatchNorm, SGD with momentum 0.9 and one cosine
cycle (with snapfit's warm-up) over the same number of epochs for every row:
  batch 32 at lr 0.05; batch 512 at the linearly scaled lr (x16 = 0.8), plain, with LARS (scale mode)
  and with LARC (clip mode). Prints final validation accuracy, mean +- std over seeds, as markdown."""
import argparse
import statistics
import tempfile
import time

import torch

from snapfit import DataBunch, Learner, ProgressCallback, accuracy, load_digits_arrays, simple_cnn
from snapfit.callbacks.lars import LARS


def run(bs, lr, lars, seed, epochs, path):
    x_trn, y_trn, x_val, y_val = load_digits_arrays(seed=0)
    data = DataBunch.from_arrays(x_trn, y_trn, x_val, y_val, bs=bs, seed=seed, val_bs=512)
    torch.manual_seed(seed)
    learn = Learner(simple_cnn(10, widths=(32, 64, 128)), data, metrics=[accuracy], path=path, progress=False,
                    wd=5e-4)
    learn.get_cb(ProgressCallback).table = False
    vals = learn.fit(lr, 1, cycle_len=epochs, callbacks=[lars] if lars else None)
    return 100 * vals[1]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = [
        ("batch 32, lr 0.05", 32, 0.05, lambda: None),
        ("batch 512, lr 0.8 (linear scaling)", 512, 0.8, lambda: None),
        ("batch 512, lr 0.8, LARS (trust 0.001)", 512, 0.8, lambda: LARS(trust_coef=0.001)),
        ("batch 512, lr 0.8, LARS (trust 0.01)", 512, 0.8, lambda: LARS(trust_coef=0.01)),
        ("batch 512, lr 0.8, LARC clip (trust 0.02)", 512, 0.8, lambda: LARS(trust_coef=0.02, clip=True)),
    ]
    t0 = time.perf_counter()
    results = {r[0]: [] for r in rows}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(a.seeds):
            for name, bs, lr, lars in rows:
                results[name].append(run(bs, lr, lars(), seed, a.epochs, tmp))
            print(f"seed {seed}: " + ", ".join(f"{v[-1]:.2f}" for v in results.values()), flush=True)
    dev = "CUDA" if torch.cuda.is_available() else "CPU"
    print(f"\nDigits, {a.epochs} epochs for every row, {a.seeds} seeds, {time.perf_counter() - t0:.0f}s on {dev}\n")
    print("| setting | validation accuracy % (mean ± std) | per seed |\n|---|---|---|")
    for name, v in results.items():
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        print(f"| {name} | {statistics.mean(v):.2f} ± {sd:.2f} | {', '.join(f'{x:.2f}' for x in v)} |")


if __name__ == "__main__":
    main()
