"""Small real datasets that ship with scikit-learn (no download): used by the demo, the notebooks,
the tests and the benchmarks."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import numpy as np

__all__ = ["load_digits_arrays", "export_digits_images"]


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
