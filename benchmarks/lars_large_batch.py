"""Large-batch training with and without LARS, at the same epoch budget (the accuracy table).

    python benchmarks/lars_large_batch.py [--epochs 30] [--seeds 3]

Digits, a small CNN with BatchNorm, SGD with momentum 0.9 and one cosine cycle (with snapfit's warm-up) over
the same number of epochs for every row: batch 32 at lr 0.05; batch 512 at the linearly scaled lr (x16 = 0.8),
plain, and with every LARS setting tried (scale mode, two trust coefficients; clip mode, LARC).

Three disjoint splits: the models train on 1150 images; the LARS setting is *selected* on 288 held-out training
images (the selection split); accuracies are *reported* on the 359 validation images, which played no part in
the choice. Prints every setting on both splits (mean +- std over seeds) and which LARS setting the selection
split picked, as markdown."""
import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from snapfit import DataBunch, Learner, ProgressCallback, accuracy, load_digits_arrays, simple_cnn
from snapfit.callbacks.lars import LARS

N_SELECT = 288  # held out of the 1438 training images to choose the LARS setting


def splits():
    """(train, selection, report) arrays: the selection split is a seeded part of the training images."""
    x_trn, y_trn, x_val, y_val = load_digits_arrays(seed=0)
    idx = np.random.RandomState(1).permutation(len(x_trn))
    sel, trn = idx[:N_SELECT], idx[N_SELECT:]
    return (x_trn[trn], y_trn[trn]), (x_trn[sel], y_trn[sel]), (x_val, y_val)


def run(bs, lr, lars, seed, epochs, path, data_splits):
    """Train one setting; returns (selection accuracy %, report accuracy %)."""
    (x, y), (x_sel, y_sel), (x_rep, y_rep) = data_splits
    data = DataBunch.from_arrays(x, y, x_sel, y_sel, bs=bs, seed=seed, val_bs=512, x_test=x_rep, y_test=y_rep)
    torch.manual_seed(seed)
    learn = Learner(simple_cnn(10, widths=(32, 64, 128)), data, metrics=[accuracy], path=path, progress=False,
                    wd=5e-4)
    learn.get_cb(ProgressCallback).table = False
    vals = learn.fit(lr, 1, cycle_len=epochs, callbacks=[lars] if lars else None)
    preds, targs = learn.predict_with_targs(is_test=True)
    return 100 * vals[1], 100 * float((preds.argmax(1) == targs).mean())


def fmt(v):
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):.2f} ± {sd:.2f}"


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
    sel = {r[0]: [] for r in rows}
    rep = {r[0]: [] for r in rows}
    data_splits = splits()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(a.seeds):
            for name, bs, lr, lars in rows:
                s, r = run(bs, lr, lars(), seed, a.epochs, tmp, data_splits)
                sel[name].append(s)
                rep[name].append(r)
            print(f"seed {seed}: " + ", ".join(f"{v[-1]:.2f}" for v in rep.values()), flush=True)
    dev = "CUDA" if torch.cuda.is_available() else "CPU"
    n_trn = len(data_splits[0][0])
    print(f"\nDigits, {n_trn} training images, {a.epochs} epochs for every row, {a.seeds} seeds, "
          f"{time.perf_counter() - t0:.0f}s on {dev}\n")
    print("| setting | selection split % (288, chooses) | reported split % (359, untouched) | reported, per seed |")
    print("|---|---|---|---|")
    for name in sel:
        print(f"| {name} | {fmt(sel[name])} | {fmt(rep[name])} | {', '.join(f'{x:.2f}' for x in rep[name])} |")
    chosen = max((n for n in sel if "LARS" in n or "LARC" in n), key=lambda n: statistics.mean(sel[n]))
    print(f"\nchosen on the selection split: {chosen}: reported {fmt(rep[chosen])} "
          f"(batch 32: {fmt(rep[rows[0][0]])}; plain batch 512: {fmt(rep[rows[1][0]])})")


if __name__ == "__main__":
    main()
