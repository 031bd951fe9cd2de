"""precompute=True vs the full frozen model: seconds per epoch of training the head of a ConvLearner.

    python benchmarks/precompute.py [--arch resnet18] [--sz 32] [--reps 3]

Same data (scikit-learn digits as 32x32 PNGs), same head, same SGDR schedule; the two sides are
interleaved (A B A B ...) with torch.set_num_threads(1) and the medians compared. The one-off cost of
computing the activations is reported separately."""
import argparse
import statistics
import tempfile
import time

import torch
import torchvision

from snapfit import ConvLearner, ImageClassifierData, ProgressCallback, tfms_from_model
from snapfit.data import export_digits_images


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--sz", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    arch = getattr(torchvision.models, a.arch)
    with tempfile.TemporaryDirectory() as tmp:
        root = export_digits_images(f"{tmp}/digits", scale=max(1, a.sz // 8))
        data = ImageClassifierData.from_paths(root, bs=64, tfms=tfms_from_model(arch, a.sz), num_workers=0)
        torch.manual_seed(0)
        learn = ConvLearner.pretrained(arch, data, pretrained=False, path=tmp, progress=False)
        learn.get_cb(ProgressCallback).table = False
        t0 = time.perf_counter()
        learn.precompute = True
        first = time.perf_counter() - t0
        learn.precompute = False
        full, pre = [], []
        for _ in range(a.reps):
            for side, out in ((False, full), (True, pre)):
                learn.precompute = side
                t0 = time.perf_counter()
                learn.fit(1e-2, 1, cycle_len=1)
                out.append(time.perf_counter() - t0)
        learn.precompute = False
    mf, mp = statistics.median(full), statistics.median(pre)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"\n{a.arch}, {len(data.trn_ds)} training images of {a.sz}px, {dev}, {a.threads} thread(s), {a.reps} reps")
    print("| mode | s/epoch (median) | runs |\n|---|---|---|")
    print(f"| full frozen model | {mf:.3f} | {', '.join(f'{t:.3f}' for t in full)} |")
    print(f"| precompute=True | {mp:.3f} | {', '.join(f'{t:.3f}' for t in pre)} |")
    print(f"speed-up: {mf / mp:.1f}x per epoch; computing the activations once took {first:.2f}s "
          f"(cached under {{path}}/tmp/ for later runs)")


if __name__ == "__main__":
    main()
