"""Image classification data, fastai 0.7 style: `ImageClassifierData.from_paths` (ImageFolder layout),
`from_csv` (file name + label columns) and `from_arrays`. Images are read with PIL, converted to RGB
and passed through torchvision.transforms.v2 pipelines (see `snapfit.data.transforms`)."""
from __future__ import annotations

import csv
import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..checks import check_int
from .core import DataBunch, EpochShuffleSampler

__all__ = ["ImageClassifierData", "ImageFileDataset", "ImageArrayDataset", "ImageLoadError", "IMAGE_EXTENSIONS",
           "get_cv_idxs"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageLoadError(ValueError):
    """An image file could not be read or decoded."""


def _tfm_pair(tfms) -> Tuple[Optional[Callable], Optional[Callable]]:
    """`tfms` as a (training, validation) pair of transforms (each callable or None), else a clear error."""
    if not isinstance(tfms, (list, tuple)) or len(tfms) != 2 or not all(t is None or callable(t) for t in tfms):
        raise ValueError(f"tfms must be a pair (training transforms, validation transforms), as tfms_from_model "
                         f"returns, each callable or None; got {tfms!r}")
    return tuple(tfms)


def _open_rgb(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:  # PIL raises many kinds: UnidentifiedImageError, OSError (truncated), SyntaxError...
        raise ImageLoadError(f"cannot read image {path}: {type(e).__name__}: {e}. Fix or remove the file, or build "
                             "the data with skip_bad=True to leave unreadable images out") from e


def get_cv_idxs(n: int, cv_idx: int = 0, val_pct: float = 0.2, seed: int = 42) -> np.ndarray:
    """fastai 0.7's validation indices: ``RandomState(seed).permutation(n)[cv_idx*m : (cv_idx+1)*m]`` with
    ``m = int(val_pct * n)`` (fold `cv_idx` of a cross-validation); the global NumPy RNG is not touched."""
    check_int("n", n, minimum=1, what="a positive int (the number of items)")
    check_int("cv_idx", cv_idx, minimum=0, what="an int >= 0 (the fold)")
    if not 0 < val_pct < 1:
        raise ValueError(f"val_pct must be in (0, 1), got {val_pct}")
    m = int(val_pct * n)
    if (cv_idx + 1) * m > n:
        raise ValueError(f"cv_idx={cv_idx} is past the last fold: {n} items make {n // max(m, 1)} folds of {m}")
    return np.random.RandomState(seed).permutation(n)[cv_idx * m:(cv_idx + 1) * m]


def label_tensor(labels) -> torch.Tensor:
    """Labels as a tensor: integers (class indices) as int64, floats (n-hot rows of multi-label data, or
    regression targets) as float32; anything else is a clear error."""
    a = labels.numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if a.dtype.kind in "iub":
        return torch.as_tensor(a.astype(np.int64))
    if a.dtype.kind == "f":
        return torch.as_tensor(a.astype(np.float32))
    raise ValueError(f"labels must be class indices (ints) or float targets, got an array of {a.dtype}")


class _LabelledImages(Dataset):
    """What both image datasets share: `labels` (a tensor) and `tfm`, seen as fastai 0.7's `y` and `denorm`."""

    labels: torch.Tensor
    tfm: Optional[Callable]

    @property
    def y(self) -> np.ndarray:
        """The labels as a NumPy array (class indices, n-hot rows or regression targets)."""
        return self.labels.numpy()

    def denorm(self, x) -> np.ndarray:
        """Images `x` (a batch ``(N, C, H, W)`` or one ``(C, H, W)``) with this dataset's normalisation undone and
        the channels last, as NumPy floats in [0, 1]: for plotting."""
        t = torch.as_tensor(x).detach().cpu().float()
        norm = [m for m in getattr(self.tfm, "transforms", [self.tfm]) if type(m).__name__ == "Normalize"]
        if norm:
            mean, std = (torch.tensor(v, dtype=torch.float32) for v in (norm[-1].mean, norm[-1].std))
            shape = [-1, 1, 1]
            t = t * std.view(shape) + mean.view(shape)
        elif t.max() > 1.5:  # uint8 images
            t = t / 255
        return t.movedim(-3, -1).clamp(0, 1).numpy()


class ImageFileDataset(_LabelledImages):
    """``(transformed image, label)`` for a list of image files; an unreadable file raises
    `ImageLoadError` naming it."""

    def __init__(self, files: Sequence[Union[str, Path]], labels, tfm: Optional[Callable] = None,
                 root: Optional[Union[str, Path]] = None):
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.files = [Path(f) for f in files]
        self.labels = label_tensor(labels)
        self.tfm, self.root = tfm, Path(root) if root is not None else None

    @property
    def fnames(self) -> List[str]:
        """The image files, relative to the data's `path` (fastai 0.7's `fnames`)."""
        return [str(f.relative_to(self.root)) if self.root is not None and f.is_relative_to(self.root) else str(f)
                for f in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def get_image(self, i: int):
        """The untransformed RGB image `i` (PIL)."""
        return _open_rgb(self.files[i])

    def __getitem__(self, i: int):
        img = self.get_image(i)
        return (self.tfm(img) if self.tfm is not None else _to_chw(img)), self.labels[i]

    def with_tfm(self, tfm: Optional[Callable]) -> "ImageFileDataset":
        """The same images and labels with another transform."""
        return ImageFileDataset(self.files, self.labels, tfm, self.root)

    def fingerprint(self) -> str:
        """A digest of the files (names, sizes, modification times) and labels."""
        h = hashlib.sha1()
        for f, y in zip(self.files, self.labels.tolist()):
            st = f.stat()
            h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}|{y};".encode())
        return h.hexdigest()


def _to_chw(img) -> torch.Tensor:
    from torchvision.transforms import v2

    return v2.functional.to_image(img)


class ImageArrayDataset(_LabelledImages):
    """``(transformed image, label)`` over an in-memory array of images: uint8 or [0, 1] floats,
    shaped (N, H, W), (N, H, W, C) or (N, C, H, W); grey images are repeated to 3 channels."""

    def __init__(self, x, y, tfm: Optional[Callable] = None):
        self.x = _images_to_uint8_chw(x)
        self.labels = label_tensor(y)
        if len(self.x) != len(self.labels):
            raise ValueError(f"{len(self.x)} images but {len(self.labels)} labels")
        self.tfm = tfm

    fnames: List[str] = []  # in memory: no files

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        img = self.x[i]
        return (self.tfm(img) if self.tfm is not None else img), self.labels[i]

    def with_tfm(self, tfm: Optional[Callable]) -> "ImageArrayDataset":
        """The same images and labels with another transform."""
        ds = ImageArrayDataset.__new__(ImageArrayDataset)
        ds.x, ds.labels, ds.tfm = self.x, self.labels, tfm
        return ds

    def fingerprint(self) -> str:
        """A digest of the pixels and labels."""
        h = hashlib.sha1(self.x.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        h.update(str(self.labels.dtype).encode())
        return h.hexdigest()


def _images_to_uint8_chw(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x))
    if t.ndim == 3:
        t = t[:, None]
    elif t.ndim == 4 and t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2)
    if t.ndim != 4 or t.shape[1] not in (1, 3):
        raise ValueError(f"images must be shaped (N, H, W), (N, H, W, C) or (N, C, H, W) with 1 or 3 channels, "
                         f"got {tuple(t.shape)}")
    if t.is_floating_point():
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise ValueError("float images must be in [0, 1] (or pass uint8 images in [0, 255])")
        t = (t * 255).round().to(torch.uint8)
    elif t.dtype != torch.uint8:
        t = t.clamp(0, 255).to(torch.uint8)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return t.contiguous()


def _list_images(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _drop_unreadable(files: List[Path], labels: List[int], skip_bad: bool) -> Tuple[List[Path], List[int]]:
    if not skip_bad:
        return files, labels
    keep_f, keep_y, bad = [], [], []
    for f, y in zip(files, labels):
        try:
            _open_rgb(f)
        except ImageLoadError:
            bad.append(f)
            continue
        keep_f.append(f)
        keep_y.append(y)
    if bad:
        warnings.warn(f"skip_bad=True: left out {len(bad)} unreadable image(s): {[str(b) for b in bad[:5]]}"
                      + (" ..." if len(bad) > 5 else ""), stacklevel=3)
    if isinstance(labels, np.ndarray):  # keep the kind of labels (n-hot rows, floats) also when few are left
        keep_y = np.asarray(keep_y, dtype=labels.dtype).reshape(-1, *labels.shape[1:])
    return keep_f, keep_y


def _resize_file(src: Path, dest: Path, targ_sz: int) -> bool:
    """Write `src` with its shorter side scaled to `targ_sz` to `dest` (atomically); False when `dest` is already
    there and newer than `src`."""
    if dest.is_file() and dest.stat().st_mtime_ns >= src.stat().st_mtime_ns:
        return False
    from PIL import Image

    with Image.open(src) as im:
        w, h = im.size
        ratio = targ_sz / min(w, h)
        size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
        out = im.convert("RGB").resize(size, Image.BILINEAR)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        out.save(tmp, format=Image.registered_extensions().get(dest.suffix.lower(), "PNG"))
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return True


def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)


class ImageClassifierData(DataBunch):
    """Image data: training, validation (and test) datasets with their transforms, and the loaders built on
    them. Targets are class indices (single-label), n-hot float rows (`is_multi`: several tags per image) or
    float values (`is_reg`: regression); the default loss follows (cross-entropy, binary cross-entropy, L1).
    `classes`, `c`, `trn_dl`, `val_dl`, `test_dl`, `trn_ds.fnames`/`.y`/`.denorm(x)` as in fastai 0.7;
    `aug_dl(is_test)` serves the validation (or test) images with the training augmentation (for TTA) and
    `fix_dl` the training images in order with the validation transforms."""

    def __init__(self, path, trn_ds, val_ds, classes: Optional[Sequence], bs: int = 64, test_ds=None,
                 tfms: Tuple[Optional[Callable], Optional[Callable]] = (None, None), num_workers: Optional[int] = None,
                 seed: int = 0, pin_memory: Optional[bool] = None, is_reg: bool = False):
        check_int("bs", bs)
        check_int("seed", seed, minimum=0)
        if len(trn_ds) == 0:
            raise ValueError("the training set is empty: no images were found")
        self.path, self.bs, self.seed = Path(path), bs, seed
        self.tfms = _tfm_pair(tfms)
        self.num_workers = _default_workers() if num_workers is None else int(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.trn_ds, self.val_ds, self.test_ds = trn_ds, val_ds, test_ds
        self.is_reg = bool(is_reg)
        self.is_multi = bool(trn_ds.labels.is_floating_point()) and not self.is_reg
        train_dl = self._loader(trn_ds, shuffle=True)
        valid_dl = self._loader(val_ds) if val_ds is not None else None
        test_dl = self._loader(test_ds) if test_ds is not None else None
        loss = nn.L1Loss() if self.is_reg else nn.BCELoss() if self.is_multi else nn.CrossEntropyLoss()
        c = (trn_ds.labels.shape[1] if trn_ds.labels.dim() > 1 else 1) if self.is_reg else None
        super().__init__(train_dl, valid_dl, test_dl, classes=classes, c=c, loss_func=loss)

    def _loader(self, ds, shuffle: bool = False) -> DataLoader:
        kw = dict(batch_size=self.bs, num_workers=self.num_workers, pin_memory=self.pin_memory,
                  persistent_workers=self.num_workers > 0)
        if shuffle:
            return DataLoader(ds, sampler=EpochShuffleSampler(len(ds), self.seed), **kw)
        return DataLoader(ds, shuffle=False, **kw)

    @property
    def trn_y(self) -> np.ndarray:
        """Training labels (class indices, n-hot rows or regression targets)."""
        return self.trn_ds.labels.numpy()

    @property
    def val_y(self) -> np.ndarray:
        """Validation labels (class indices, n-hot rows or regression targets)."""
        return self.val_ds.labels.numpy()

    @property
    def sz(self) -> Optional[int]:
        """Image side after the validation transforms (None without transforms)."""
        val = self.tfms[1]
        for t in getattr(val, "transforms", []):
            if type(t).__name__ == "CenterCrop":
                return int(t.size[0])
        return None

    @property
    def fix_dl(self) -> DataLoader:
        """Training images in order, with the validation transforms (no augmentation)."""
        return self._loader(self.trn_ds.with_tfm(self.tfms[1]))

    def aug_dl(self, is_test: bool = False) -> DataLoader:
        """Validation (or test) images with the training transforms (augmentation), in order: for TTA."""
        ds = self.test_ds if is_test else self.val_ds
        if ds is None:
            raise ValueError(f"this data has no {'test' if is_test else 'validation'} set")
        return self._loader(ds.with_tfm(self.tfms[0]))

    def fingerprint(self) -> str:
        """A digest of every split's images and labels and of the validation transforms."""
        h = hashlib.sha1(repr(self.tfms[1]).encode())
        for ds in (self.trn_ds, self.val_ds, self.test_ds):
            h.update((ds.fingerprint() if ds is not None else "-").encode())
        return h.hexdigest()

    def resize(self, targ_sz: int, new_path: str = "tmp", workers: Optional[int] = None) -> "ImageClassifierData":
        """Copies of the images with their shorter side scaled to `targ_sz` under ``{path}/{new_path}/{targ_sz}/``
        (same relative names; written in parallel and atomically, skipping those already done), and data that
        reads them: same splits, labels, classes, transforms and batch size. Later epochs then decode small files."""
        check_int("targ_sz", targ_sz, what="a positive int (the shorter side in pixels)")
        splits = [self.trn_ds, self.val_ds, self.test_ds]
        if not all(ds is None or isinstance(ds, ImageFileDataset) for ds in splits):
            raise ValueError("resize() writes resized copies of image files (data from from_paths or from_csv); "
                             "in-memory images are resized by the transforms (tfms_from_stats(stats, sz))")
        out_root = self.path / new_path / str(targ_sz)
        jobs = {}
        for ds in splits:
            for f in (ds.files if ds is not None else []):
                rel = f.relative_to(self.path) if f.is_relative_to(self.path) else Path(f.name)
                jobs[f] = out_root / rel
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            list(pool.map(lambda kv: _resize_file(kv[0], kv[1], targ_sz), jobs.items()))

        def moved(ds):
            return None if ds is None else ImageFileDataset([jobs[f] for f in ds.files], ds.labels, ds.tfm, out_root)

        return type(self)(self.path, moved(self.trn_ds), moved(self.val_ds), self.classes, bs=self.bs,
                          test_ds=moved(self.test_ds), tfms=self.tfms, num_workers=self.num_workers, seed=self.seed,
                          pin_memory=self.pin_memory, is_reg=self.is_reg)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_paths(cls, path, bs: int = 64, tfms=(None, None), trn_name: str = "train", val_name: str = "valid",
                   test_name: Optional[str] = None, num_workers: Optional[int] = None, skip_bad: bool = False,
                   seed: int = 0) -> "ImageClassifierData":
        """Images in the ImageFolder layout: ``{path}/{trn_name}/{class}/*.jpg`` and the same for `val_name`;
        `test_name` is a flat folder of unlabelled images. Classes are the sorted training sub-folders."""
        path = Path(path)
        trn_dir = path / trn_name
        if not trn_dir.is_dir():
            raise FileNotFoundError(f"no training folder {trn_dir} (trn_name={trn_name!r}); expected "
                                    f"{path}/{trn_name}/<class>/<image files>")
        classes = sorted(d.name for d in trn_dir.iterdir() if d.is_dir())
        if not classes:
            raise ValueError(f"{trn_dir} has no class sub-folders; expected {trn_dir}/<class>/<image files>")
        trn = cls._folder_items(trn_dir, classes, skip_bad)
        val_dir = path / val_name
        if not val_dir.is_dir():
            raise FileNotFoundError(f"no validation folder {val_dir} (val_name={val_name!r})")
        extra = sorted(d.name for d in val_dir.iterdir() if d.is_dir() and d.name not in classes)
        if extra:
            raise ValueError(f"{val_dir} has classes that are not in {trn_dir}: {extra}")
        val = cls._folder_items(val_dir, classes, skip_bad)
        test = cls._test_items(path, test_name, skip_bad)
        return cls._from_items(path, trn, val, test, classes, bs, tfms, num_workers, seed)

    @classmethod
    def _from_items(cls, path, trn, val, test, classes, bs, tfms, num_workers, seed,
                    is_reg: bool = False) -> "ImageClassifierData":
        """Build from ``(files, labels)`` pairs of each split (`test` may be None)."""
        trn_t, val_t = _tfm_pair(tfms)
        root = Path(path)
        return cls(path, ImageFileDataset(*trn, trn_t, root), ImageFileDataset(*val, val_t, root), classes, bs=bs,
                   test_ds=ImageFileDataset(*test, val_t, root) if test else None, tfms=tfms,
                   num_workers=num_workers, seed=seed, is_reg=is_reg)

    @staticmethod
    def _folder_items(folder: Path, classes: List[str], skip_bad: bool):
        files, labels = [], []
        for i, c in enumerate(classes):
            if (folder / c).is_dir():
                imgs = _list_images(folder / c)
                if not imgs:
                    warnings.warn(f"{folder / c} holds no images: class {c!r} has zero images in {folder.name}",
                                  stacklevel=3)
                files += imgs
                labels += [i] * len(imgs)
        return _drop_unreadable(files, labels, skip_bad)

    @staticmethod
    def _test_items(path: Path, test_name: Optional[str], skip_bad: bool):
        if test_name is None:
            return None
        d = path / test_name
        if not d.is_dir():
            raise FileNotFoundError(f"no test folder {d} (test_name={test_name!r})")
        files = _list_images(d)
        return _drop_unreadable(files, [0] * len(files), skip_bad)

    @classmethod
    def from_csv(cls, path, folder: str, csv_fname, bs: int = 64, tfms=(None, None), val_idxs=None,
                 suffix: str = "", test_name: Optional[str] = None, continuous: bool = False, skip_header: bool = True,
                 num_workers: Optional[int] = None, cat_separator: str = " ", skip_bad: bool = False,
                 val_pct: float = 0.2, seed: int = 42) -> "ImageClassifierData":
        """Images in ``{path}/{folder}`` listed in a CSV of ``file name, label`` rows (`suffix` is added to each
        name). A label cell with several tags separated by `cat_separator` makes the data multi-label (`classes`:
        the sorted tags; targets: n-hot float rows; an empty cell: no tag); `continuous=True` reads float targets
        (regression). `csv_fname` is opened as given when that file exists, else relative to `path`. `val_idxs`
        selects the validation rows; by default ``get_cv_idxs(n, val_pct=val_pct, seed=seed)``."""
        path = Path(path)
        csv_path = Path(csv_fname) if Path(csv_fname).is_file() else path / csv_fname
        if not csv_path.is_file():
            raise FileNotFoundError(f"no CSV file {csv_fname} (looked for it as given and as {path / csv_fname})")
        if not isinstance(cat_separator, str) or not cat_separator:
            raise ValueError(f"cat_separator must be a non-empty string, got {cat_separator!r}")
        with open(csv_path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
        header = rows[0] if skip_header and rows else None
        rows = rows[1:] if skip_header else rows
        if not rows:
            raise ValueError(f"{csv_path} lists no images")
        short = [i for i, r in enumerate(rows) if len(r) < 2]
        if short:
            cols = f" (its header has the column(s) {header})" if header is not None else ""
            raise ValueError(f"{csv_path}: row {short[0] + 1 + skip_header} has {len(rows[short[0]])} column(s); "
                             f"need two, 'file name' and 'label'{cols}")
        cells = [r[1].strip() for r in rows]
        tags = [[t for t in c.split(cat_separator) if t.strip()] for c in cells]
        multi = not continuous and any(len(t) > 1 for t in tags)
        empty = [i for i, t in enumerate(tags) if not t]
        if empty and not multi:
            raise ValueError(f"{csv_path}: row {empty[0] + 1 + skip_header} ({rows[empty[0]][0]!r}) has an empty "
                             "label; every image of single-label data needs one")
        files = [path / folder / f"{r[0].strip()}{suffix}" for r in rows]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) listed in {csv_path} do not exist, e.g. {missing[0]} "
                                    f"(names are looked up in {path / folder}, with suffix={suffix!r})")
        if continuous:
            try:
                labels = np.array([[float(v) for v in t] for t in tags], dtype=np.float32)
            except ValueError as e:
                raise ValueError(f"{csv_path}: continuous=True needs numbers in the label column: {e}") from None
            classes = None
        elif multi:
            classes = sorted({t.strip() for ts in tags for t in ts})
            idx = {c: i for i, c in enumerate(classes)}
            labels = np.zeros((len(rows), len(classes)), np.float32)
            for i, ts in enumerate(tags):
                labels[i, [idx[t.strip()] for t in ts]] = 1
        else:
            names = [t[0].strip() for t in tags]
            classes = sorted(set(names))
            idx = {c: i for i, c in enumerate(classes)}
            labels = np.array([idx[n] for n in names], np.int64)
        if val_idxs is None:
            val_idxs = get_cv_idxs(len(files), val_pct=val_pct, seed=seed)
        val_idxs = np.asarray(val_idxs, dtype=int).reshape(-1)
        if len(val_idxs) and (val_idxs.min() < 0 or val_idxs.max() >= len(files)):
            bad = val_idxs.max() if val_idxs.max() >= len(files) else val_idxs.min()
            raise ValueError(f"val_idxs must index the {len(files)} CSV rows (0 to {len(files) - 1}), got {bad}")
        is_val = np.zeros(len(files), bool)
        is_val[val_idxs] = True
        if is_val.all():
            raise ValueError(f"val_idxs covers all {len(files)} rows of {csv_path}: no image is left to train on; "
                             "give the indices of the validation rows only (get_cv_idxs(n) picks 20 %)")
        trn = _drop_unreadable([f for f, v in zip(files, is_val) if not v], labels[~is_val], skip_bad)
        val = _drop_unreadable([f for f, v in zip(files, is_val) if v], labels[is_val], skip_bad)
        test = cls._test_items(path, test_name, skip_bad)
        return cls._from_items(path, trn, val, test, classes, bs, tfms, num_workers, seed, is_reg=continuous)

    @classmethod
    def from_arrays(cls, path, trn, val, bs: int = 64, tfms=(None, None), classes: Optional[Sequence] = None,
                    test=None, num_workers: Optional[int] = 0, seed: int = 0) -> "ImageClassifierData":
        """In-memory images: ``trn = (x, y)``, ``val = (x, y)``, `test` an array of images. Images are uint8
        or [0, 1] floats shaped (N, H, W[, C]) or (N, C, H, W)."""
        (x_trn, y_trn), (x_val, y_val) = trn, val
        trn_t, val_t = _tfm_pair(tfms)
        trn_ds, val_ds = ImageArrayDataset(x_trn, y_trn, trn_t), ImageArrayDataset(x_val, y_val, val_t)
        if classes is None:
            classes = list(range(int(max(trn_ds.labels.max(), val_ds.labels.max())) + 1))
        test_ds = ImageArrayDataset(test, np.zeros(len(test), np.int64), val_t) if test is not None else None
        return cls(path, trn_ds, val_ds, classes, bs=bs, test_ds=test_ds, tfms=tfms, num_workers=num_workers,
                   seed=seed)
