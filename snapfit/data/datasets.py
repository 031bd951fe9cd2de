"""Small real datasets that ship with scikit-learn (no download): used by the demo, the notebooks,
the tests and the benchmarks."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["load_digits_arrays", "export_digits_images", "export_digit_mosaics"]


def _sklearn():
    try:
        import sklearn.datasets as skd
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("this needs scikit-learn (bundled datasets): pip install 'snapfit[demo]'") from e
    return skd


def load_digits_arrays(valid_pct: float = 0.2, seed: int = 0, flat: bool = False
                       ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 1797 handwritten 8x8 digits as ``(x_trn, y_trn, x_val, y_val)``: images
    scaled to [0, 1] with shape (N, 1, 8, 8) (or (N, 64) with `flat`), labels int64; a seeded
    random `valid_pct` of the samples is held out for validation."""
    if not 0 < valid_pct < 1:
        raise ValueError(f"valid_pct must be in (0, 1), got {valid_pct}")
    d = _sklearn().load_digits()
    x = (d.images / 16.0).astype(np.float32)
    x = x.reshape(len(x), 64) if flat else x[:, None]
    y = d.target.astype(np.int64)
    idx = np.random.RandomState(seed).permutation(len(x))
    n_val = int(round(len(x) * valid_pct))
    val, trn = idx[:n_val], idx[n_val:]
    return x[trn], y[trn], x[val], y[val]


def export_digits_images(path, scale: int = 4, valid_pct: float = 0.2, seed: int = 0, layout: str = "folders",
                         n: Optional[int] = None, test_count: int = 0) -> Path:
    """Write scikit-learn's digits as PNG files (each 8x8 image upscaled `scale` times) under `path`, for
    image-folder journeys without a download. ``layout='folders'``: ``train/<digit>/*.png`` and
    ``valid/<digit>/*.png``; ``layout='csv'``: ``images/*.png`` and ``labels.csv`` (file, label).
    `n` limits the number of images; `test_count` also writes that many unlabelled ``test/*.png``."""
    from PIL import Image

    if layout not in ("folders", "csv"):
        raise ValueError(f"layout must be 'folders' or 'csv', got {layout!r}")
    d = _sklearn().load_digits()
    imgs = (d.images / 16.0 * 255).round().astype(np.uint8)
    labels = d.target
    idx = np.random.RandomState(seed).permutation(len(imgs))[: n or len(imgs)]
    n_val = int(round(len(idx) * valid_pct))
    path = Path(path)

    def save(img, file):
        file.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).resize((8 * scale, 8 * scale), Image.NEAREST).save(file)

    rows = []
    for k, i in enumerate(idx):
        if layout == "folders":
            split = "valid" if k < n_val else "train"
            save(imgs[i], path / split / str(labels[i]) / f"{i:04d}.png")
        else:
            save(imgs[i], path / "images" / f"{i:04d}.png")
            rows.append(f"{i:04d}.png,{labels[i]}")
    if layout == "csv":
        (path / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    rest = [i for i in range(len(imgs)) if i not in set(idx)] or list(range(len(imgs)))
    for i in rest[:test_count]:
        save(imgs[i], path / "test" / f"{i:04d}.png")
    return path


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def export_digit_mosaics(path, n: int = 600, scale: int = 2, p_digit: float = 0.6, seed: int = 0,
                         test_count: int = 0, digits: Optional[Sequence[int]] = None, turned: bool = False) -> Path:
    """A multi-label image dataset in the Planet layout of fastai's lesson 2, made of scikit-learn's digits:
    ``{path}/train-jpg/mosaic_{i}.png``, each a 2x2 mosaic of 8x8 digits upscaled `scale` times (each cell holds a
    random digit with probability `p_digit`, else stays blank), and ``{path}/train_v2.csv`` with the columns
    ``image_name,tags``: the names of the digits shown, space-separated (``'three seven'``; empty when all four
    cells are blank), and ``{path}/counts.csv`` with ``image_name,count`` (digits shown: a regression target).
    `test_count` more mosaics go to ``{path}/test-jpg/`` without labels. `digits` limits the digits drawn (default
    all ten); with `turned`, each digit is drawn in one of the 8 orientations of the square at random, so that, as
    in satellite images, no orientation is special (leave 6 or 9 out then: a turned six is a nine)."""
    from PIL import Image

    if n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    d = _sklearn().load_digits()
    imgs = (d.images / 16.0 * 255).round().astype(np.uint8)
    allowed = sorted(set(range(10) if digits is None else (int(v) for v in digits)))
    if not allowed or not set(allowed) <= set(range(10)):
        raise ValueError(f"digits must be a non-empty list of digits 0-9, got {digits!r}")
    pool = np.flatnonzero(np.isin(d.target, allowed))
    rng = np.random.RandomState(seed)
    path = Path(path)
    rows, counts = [], []
    for k in range(n + test_count):
        canvas = np.zeros((16, 16), np.uint8)
        shown = []
        for cell in range(4):
            if rng.rand() < p_digit:
                i = pool[rng.randint(len(pool))]
                r, c = divmod(cell, 2)
                img = imgs[i]
                if turned:
                    img = np.rot90(img, rng.randint(4))
                    img = img[:, ::-1] if rng.rand() < 0.5 else img
                canvas[8 * r:8 * r + 8, 8 * c:8 * c + 8] = img
                shown.append(int(d.target[i]))
        test = k >= n
        name = f"mosaic_{k:05d}"
        folder = path / ("test-jpg" if test else "train-jpg")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(canvas).resize((16 * scale, 16 * scale), Image.NEAREST).save(folder / f"{name}.png")
        if not test:
            rows.append(f"{name},{' '.join(DIGIT_NAMES[t] for t in sorted(set(shown)))}")
            counts.append(f"{name},{len(shown)}")
    (path / "train_v2.csv").write_text("image_name,tags\n" + "\n".join(rows) + "\n")
    (path / "counts.csv").write_text("image_name,count\n" + "\n".join(counts) + "\n")
    return path
