"""Snapshot ensembles vs single models at the same training budget (the accuracy table).

    python benchmarks/snapshot_ensemble.py [--seeds 3] [--epochs 40] [--cycles 5] [--out benchmarks/out]

Data: scikit-learn's digits made harder: 300 training images, Gaussian pixel noise (sigma 0.2) on
every image, the other 1497 images for validation; 16x16 inputs, light random affine augmentation.
Each seed trains a small CNN for the same number of epochs with
  (a) a constant LR, (b) step decay (/10 at 50 % and 75 %), (c) SGDR with `--cycles` cycles,
and from the SGDR run also reports (d) the ensemble of the last M snapshots (softmax averaged),
(e) the average of the last M snapshots' weights with BatchNorm re-estimated, (f) the final SGDR
model with test-time augmentation. Prints a markdown table (validation error %, mean +- std over
seeds) and saves a plot of error against the number of snapshots in the ensemble."""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from snapfit import (
    ImageClassifierData,
    Learner,
    ProgressCallback,
    StepDecay,
    accuracy,
    accuracy_np,
    load_digits_arrays,
    simple_cnn,
)


def make_data(seed: int, n_train: int = 300, noise: float = 0.2) -> ImageClassifierData:
    x_trn, y_trn, x_val, y_val = load_digits_arrays(valid_pct=1 - n_train / 1797, seed=0)
    rng = np.random.RandomState(1234)  # the same noisy images for every seed and configuration
    noisy = [np.clip(x[:, 0] + noise * rng.randn(*x[:, 0].shape), 0, 1).astype(np.float32) for x in (x_trn, x_val)]
    stats = ([0.5] * 3, [0.5] * 3)
    finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(*stats)]
    trn_t = v2.Compose([v2.Resize(16), v2.RandomAffine(degrees=8, translate=(0.08, 0.08)), *finish])
    val_t = v2.Compose([v2.Resize(16), *finish])
    return ImageClassifierData.from_arrays("unused", (noisy[0], y_trn), (noisy[1], y_val), bs=32,
                                           tfms=(trn_t, val_t), seed=seed)


def new_learner(data, seed: int, path) -> Learner:
    torch.manual_seed(seed)
    learn = Learner(simple_cnn(10, in_channels=3, widths=(16, 32, 64)), data, metrics=[accuracy], path=path,
                    progress=False, wd=5e-4)
    learn.get_cb(ProgressCallback).table = False
    return learn


def error(probs_or_logp, y) -> float:
    return 100 * (1 - accuracy_np(probs_or_logp, y))


def run_seed(seed: int, epochs: int, n_cycles: int, m: int, path: Path) -> dict:
    data = make_data(seed)
    y = data.val_y
    res = {}
    learn = new_learner(data, seed, path)
    learn.fit(0.05, epochs)
    res["(a) constant LR 0.05"] = error(learn.predict(), y)

    learn = new_learner(data, seed, path)
    n_batches = len(data.trn_dl)
    learn.fit_schedule(StepDecay([0.1], n_batches, epochs, milestones=(epochs // 2, 3 * epochs // 4)))
    res["(b) step decay 0.1 -> 0.01 -> 0.001"] = error(learn.predict(), y)

    learn = new_learner(data, seed, path)
    learn.fit(0.1, n_cycles, cycle_len=epochs // n_cycles, cycle_save_name=f"sgdr{seed}")
    res["(c) SGDR, final model"] = error(learn.predict(), y)
    curve = [error(learn.predict_snapshots(f"sgdr{seed}", last=k)[0], y) for k in range(1, n_cycles + 1)]
    res[f"(d) SGDR snapshot ensemble, last {m}"] = curve[m - 1]
    torch.manual_seed(seed)
    log_preds, _ = learn.TTA(n_aug=4)
    res["(f) SGDR final model + TTA (4 aug)"] = error(np.mean(np.exp(log_preds), 0), y)
    learn.average_snapshots(f"sgdr{seed}", last=m)
    res[f"(e) SGDR snapshot weight average, last {m}, BN updated"] = error(learn.predict(), y)
    return res, curve


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--cycles", type=int, default=5)
    p.add_argument("--last", type=int, default=3, help="M: snapshots in the ensemble / average")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/out")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows, curves = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(a.seeds):
            res, curve = run_seed(seed, a.epochs, a.cycles, a.last, Path(tmp))
            curves.append(curve)
            for k, v in res.items():
                rows.setdefault(k, []).append(v)
            print(f"seed {seed}: " + ", ".join(f"{k.split(')')[0]})={v:.2f}" for k, v in res.items()), flush=True)
    print(f"\nDigits, 300 noisy training images, {a.epochs} epochs each, {a.seeds} seeds "
          f"({time.perf_counter() - t0:.0f}s on {'CUDA' if torch.cuda.is_available() else 'CPU'})\n")
    print("| method | validation error % (mean ± std) | per seed |\n|---|---|---|")
    for k in sorted(rows):
        v = rows[k]
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        print(f"| {k} | {statistics.mean(v):.2f} ± {sd:.2f} | {', '.join(f'{x:.2f}' for x in v)} |")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = np.array(curves)
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = np.arange(1, c.shape[1] + 1)
    ax.errorbar(ks, c.mean(0), yerr=c.std(0), marker="o", capsize=3, label="snapshot ensemble (last k)")
    ax.axhline(np.mean(rows["(c) SGDR, final model"]), color="grey", ls=":", label="SGDR final model")
    ax.axhline(np.mean(rows["(b) step decay 0.1 -> 0.01 -> 0.001"]), color="tab:red", ls="--", label="step decay")
    ax.set_xlabel("snapshots in the ensemble")
    ax.set_ylabel("validation error %")
    ax.set_xticks(ks)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "snapshot_ensemble.png", dpi=100)
    print(f"\nerror vs number of snapshots: {', '.join(f'{k}: {e:.2f}' for k, e in zip(ks, c.mean(0)))}")
    print(f"plot: {out / 'snapshot_ensemble.png'}")


if __name__ == "__main__":
    main()
