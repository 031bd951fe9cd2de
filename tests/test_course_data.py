"""Course-notebook data (fastai 0.7 lesson 2 and the CIFAR notebooks): get_cv_idxs, from_csv multi-label /
single-label / continuous, from_paths(val_name='test'), resize, fnames / y / denorm, and their bad inputs.
Built on 2x2 mosaics of scikit-learn's digits (tags: the digits shown)."""
import csv
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from snapfit import ImageClassifierData, RandomFlip, export_digit_mosaics, get_cv_idxs, tfms_from_stats
from snapfit.data import export_digits_images, transforms_top_down
from snapfit.data.datasets import DIGIT_NAMES

STATS = ((0.1, 0.1, 0.1), (0.3, 0.3, 0.3))


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory):
    return export_digit_mosaics(tmp_path_factory.mktemp("planet"), n=120, scale=2, test_count=5)


def read_csv(path):
    with open(path) as f:
        return list(csv.reader(f))[1:]


def fastai_get_cv_idxs(n, cv_idx=0, val_pct=0.2, seed=42):
    """fastai 0.7's code, verbatim in behaviour: it seeds the global NumPy RNG."""
    np.random.seed(seed)
    n_val = int(val_pct * n)
    idx_start = cv_idx * n_val
    idxs = np.random.permutation(n)
    return idxs[idx_start:idx_start + n_val]


# ------------------------------------------------------------------------------------------- get_cv_idxs
@pytest.mark.parametrize("n, cv_idx, val_pct, seed", [(10, 0, 0.2, 42), (37, 1, 0.2, 42), (100, 0, 0.25, 42),
                                                      (1000, 3, 0.2, 7), (40479, 0, 0.2, 42), (5, 0, 0.1, 42)])
def test_get_cv_idxs_equals_fastai(n, cv_idx, val_pct, seed):
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    ours = get_cv_idxs(n, cv_idx, val_pct, seed)
    assert np.array_equal(np.random.get_state()[1], before), "the global NumPy RNG is left alone"
    assert np.array_equal(ours, fastai_get_cv_idxs(n, cv_idx, val_pct, seed))
    assert len(ours) == int(val_pct * n)


def test_get_cv_idxs_known_values_and_errors():
    assert get_cv_idxs(10).tolist() == [8, 1]  # np.random.seed(42); np.random.permutation(10) = [8, 1, 5, ...]
    assert get_cv_idxs(37, cv_idx=1).tolist() == [26, 24, 16, 8, 15, 12, 32]  # m = int(0.2 * 37) = 7: [7:14]
    with pytest.raises(ValueError, match="val_pct must be in"):
        get_cv_idxs(10, val_pct=1.5)
    with pytest.raises(ValueError, match="n must be"):
        get_cv_idxs(0)
    with pytest.raises(ValueError, match="cv_idx=5 is past the last fold"):
        get_cv_idxs(10, cv_idx=5)


# ------------------------------------------------------------------------------------------- from_csv
def test_from_csv_multi_label_n_hot(mosaics):
    rows = read_csv(mosaics / "train_v2.csv")
    val_idxs = get_cv_idxs(len(rows))
    tfms = tfms_from_stats(STATS, 32, aug_tfms=transforms_top_down)
    data = ImageClassifierData.from_csv(mosaics, "train-jpg", f"{mosaics}/train_v2.csv", bs=16, tfms=tfms,
                                        suffix=".png", val_idxs=val_idxs, num_workers=0, test_name="test-jpg")
    tags = [set(r[1].split()) for r in rows]
    assert data.is_multi and not data.is_reg
    assert data.classes == sorted(set().union(*tags)) and set(data.classes) <= set(DIGIT_NAMES)
    assert data.c == len(data.classes)
    assert isinstance(data.loss_func, nn.BCELoss)
    assert any(not t for t in tags), "the fixture has images with no digit (an empty tag cell)"
    val_set = set(val_idxs.tolist())
    trn_rows = [i for i in range(len(rows)) if i not in val_set]
    expect = np.array([[float(c in tags[i]) for c in data.classes] for i in trn_rows], np.float32)
    assert data.trn_ds.y.dtype == np.float32 and np.array_equal(data.trn_ds.y, expect)
    assert data.trn_ds.fnames == [f"train-jpg/{rows[i][0]}.png" for i in trn_rows]
    val_rows = sorted(val_set)  # a mask over the rows, as fastai 0.7's split_by_idx: CSV order is kept
    assert data.val_ds.fnames == [f"train-jpg/{rows[i][0]}.png" for i in val_rows]
    assert np.array_equal(data.val_y, [[float(c in tags[i]) for c in data.classes] for i in val_rows])
    assert len(data.test_ds) == 5 and data.test_ds.fnames[0].startswith("test-jpg/")
    x, y = next(iter(data.val_dl))
    assert x.shape == (16, 3, 32, 32) and y.dtype == torch.float32 and y.shape == (16, data.c)
    assert np.array_equal(y.numpy(), data.val_y[:16])


def test_from_csv_single_label_when_every_row_has_one_tag(tmp_path):
    export_digits_images(tmp_path, scale=2, n=30, layout="csv")
    data = ImageClassifierData.from_csv(tmp_path, "images", "labels.csv", bs=8, num_workers=0,
                                        tfms=tfms_from_stats(STATS, 16))
    assert not data.is_multi and not data.is_reg
    assert data.trn_ds.y.dtype == np.int64 and data.trn_ds.y.ndim == 1
    assert isinstance(data.loss_func, nn.CrossEntropyLoss)


def test_from_csv_continuous_targets(mosaics):
    rows = read_csv(mosaics / "counts.csv")
    data = ImageClassifierData.from_csv(mosaics, "train-jpg", "counts.csv", bs=16, suffix=".png", continuous=True,
                                        num_workers=0, tfms=tfms_from_stats(STATS, 32), val_idxs=[0, 1, 2])
    assert data.is_reg and not data.is_multi and data.c == 1 and data.classes is None
    assert isinstance(data.loss_func, nn.L1Loss)
    assert data.val_y.dtype == np.float32 and data.val_y.shape == (3, 1)
    assert data.val_y[:, 0].tolist() == [float(rows[i][1]) for i in range(3)]
    assert data.trn_y[:, 0].tolist() == [float(r[1]) for r in rows[3:]]


def test_from_csv_custom_separator_and_no_header(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name in "abcd":
        Image.new("RGB", (6, 6)).save(tmp_path / "imgs" / f"{name}.png")
    (tmp_path / "l.csv").write_text("a.png,x|y\nb.png,y\nc.png,\nd.png,z|x\n")
    data = ImageClassifierData.from_csv(tmp_path, "imgs", "l.csv", bs=2, cat_separator="|", skip_header=False,
                                        val_idxs=[3], num_workers=0)
    assert data.classes == ["x", "y", "z"]
    assert data.trn_y.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]  # the empty cell: no tag (fastai 0.7)
    assert data.val_y.tolist() == [[1, 0, 1]]


def test_from_csv_bad_input(tmp_path, mosaics):
    (tmp_path / "imgs").mkdir()
    for name in "abc":
        Image.new("RGB", (6, 6)).save(tmp_path / "imgs" / f"{name}.png")
    (tmp_path / "one_col.csv").write_text("image_name\na.png\nb.png\n")
    with pytest.raises(ValueError, match=r"row 2 has 1 column\(s\); need two, 'file name' and 'label'.*image_name"):
        ImageClassifierData.from_csv(tmp_path, "imgs", "one_col.csv", num_workers=0)
    (tmp_path / "missing.csv").write_text("f,l\na.png,x\nzz.png,y\n")
    with pytest.raises(FileNotFoundError, match="zz.png"):
        ImageClassifierData.from_csv(tmp_path, "imgs", "missing.csv", num_workers=0)
    (tmp_path / "empty.csv").write_text("f,l\na.png,x\nb.png,\nc.png,y\n")
    with pytest.raises(ValueError, match=r"row 3 \('b.png'\) has an empty label"):
        ImageClassifierData.from_csv(tmp_path, "imgs", "empty.csv", num_workers=0)
    (tmp_path / "ok.csv").write_text("f,l\na.png,x\nb.png,y\nc.png,y\n")
    with pytest.raises(ValueError, match="val_idxs must index the 3 CSV rows .0 to 2., got 3"):
        ImageClassifierData.from_csv(tmp_path, "imgs", "ok.csv", val_idxs=[0, 3], num_workers=0)
    with pytest.raises(ValueError, match="val_idxs must index the 3 CSV rows .0 to 2., got -1"):
        ImageClassifierData.from_csv(tmp_path, "imgs", "ok.csv", val_idxs=[-1], num_workers=0)
    with pytest.raises(FileNotFoundError, match="no CSV file nope.csv"):
        ImageClassifierData.from_csv(tmp_path, "imgs", "nope.csv", num_workers=0)
    (tmp_path / "text.csv").write_text("f,l\na.png,1\nb.png,two\nc.png,3\n")
    with pytest.raises(ValueError, match="continuous=True needs numbers"):
        ImageClassifierData.from_csv(tmp_path, "imgs", "text.csv", continuous=True, num_workers=0)


# ------------------------------------------------------------------------------------------- from_paths
def test_from_paths_with_val_name_test(tmp_path):
    """The CIFAR notebooks keep their validation images in 'test': from_paths(path, val_name='test')."""
    export_digits_images(tmp_path, scale=2, n=60)
    os.rename(tmp_path / "valid", tmp_path / "test")
    data = ImageClassifierData.from_paths(tmp_path, bs=8, val_name="test", num_workers=0,
                                          tfms=tfms_from_stats(STATS, 16, aug_tfms=[RandomFlip()], pad=2))
    assert data.classes == [str(i) for i in range(10)]
    assert len(data.val_ds) > 0 and all(f.startswith("test/") for f in data.val_ds.fnames)
    assert data.trn_dl.dataset is data.trn_ds and data.val_dl.dataset is data.val_ds
    with pytest.raises(FileNotFoundError, match=r"no validation folder .*valid \(val_name='valid'\)"):
        ImageClassifierData.from_paths(tmp_path, num_workers=0)


# ------------------------------------------------------------------------------------------- denorm
def test_denorm_undoes_the_normalisation(mosaics):
    data = ImageClassifierData.from_csv(mosaics, "train-jpg", "train_v2.csv", bs=4, suffix=".png", num_workers=0,
                                        tfms=tfms_from_stats(STATS, 32))
    x, _ = next(iter(data.val_dl))
    pics = data.val_ds.denorm(x)
    assert pics.shape == (4, 32, 32, 3)
    raw = np.stack([np.asarray(Image.open(mosaics / f).convert("RGB")) / 255 for f in data.val_ds.fnames[:4]])
    np.testing.assert_allclose(pics, raw, atol=1e-5)
    np.testing.assert_allclose(data.val_ds.denorm(x[0]), raw[0], atol=1e-5)  # one image too


# ------------------------------------------------------------------------------------------- resize
def test_resize_writes_small_copies_once_and_reads_them(mosaics):
    tfms = tfms_from_stats(STATS, 16)
    data = ImageClassifierData.from_csv(mosaics, "train-jpg", "train_v2.csv", bs=8, suffix=".png", num_workers=0,
                                        tfms=tfms, test_name="test-jpg")
    small = data.resize(20, "tmp")
    root = mosaics / "tmp" / "20"
    written = sorted(root.rglob("*.png"))
    assert len(written) == len(data.trn_ds) + len(data.val_ds) + len(data.test_ds)
    for f in written[:10]:
        with Image.open(f) as im:
            assert min(im.size) == 20
    assert small.trn_ds.fnames == data.trn_ds.fnames and small.test_ds.fnames == data.test_ds.fnames
    assert all(str(f).startswith(str(root)) for f in small.trn_ds.files + small.val_ds.files)
    assert np.array_equal(small.trn_y, data.trn_y) and small.classes == data.classes and small.bs == 8
    assert small.tfms == data.tfms and small.is_multi
    x_small, _ = next(iter(small.val_dl))
    assert x_small.shape == (8, 3, 16, 16)
    # a second resize reuses the files already written (same modification times, not rewritten)
    mtimes = {f: f.stat().st_mtime_ns for f in written}
    again = data.resize(20, "tmp")
    assert {f: f.stat().st_mtime_ns for f in written} == mtimes
    assert again.val_ds.fnames == small.val_ds.fnames
    # a source image changed after its copy was written: that copy (only) is redone
    src = data.trn_ds.files[0]
    os.utime(src, ns=(mtimes[written[0]] + 10**9, mtimes[written[0]] + 10**9))
    data.resize(20, "tmp")
    changed = [f for f in written if f.stat().st_mtime_ns != mtimes[f]]
    assert changed == [root / data.trn_ds.fnames[0]]


def test_resize_bad_input(mosaics, digits):
    data = ImageClassifierData.from_csv(mosaics, "train-jpg", "train_v2.csv", bs=8, suffix=".png", num_workers=0)
    with pytest.raises(ValueError, match="targ_sz must be a positive int"):
        data.resize(0)
    x_trn, y_trn, x_val, y_val = digits
    arrays = ImageClassifierData.from_arrays(".", (x_trn[:20, 0], y_trn[:20]), (x_val[:10, 0], y_val[:10]))
    with pytest.raises(ValueError, match="resize.. writes resized copies of image files"):
        arrays.resize(16)


# ------------------------------------------------------------------------------------------- tfms_from_stats
def test_tfms_from_stats_normalises_pads_and_checks_its_arguments():
    img = torch.full((3, 8, 8), 51, dtype=torch.uint8)  # 0.2 on the [0, 1] scale
    trn, val = tfms_from_stats(STATS, 8, pad=2)
    np.testing.assert_allclose(val(img).numpy(), np.full((3, 8, 8), (0.2 - 0.1) / 0.3), rtol=1e-5)
    np.testing.assert_allclose(trn(img).numpy(), np.full((3, 8, 8), (0.2 - 0.1) / 0.3), rtol=1e-5)  # reflect pad
    for bad in [((0.5, 0.5), (0.2,)), (0.5, 0.2), ((0.5,), (0.2,), (0.1,)), "stats"]:
        with pytest.raises(ValueError, match="stats must be .means, stds. with one value per channel"):
            tfms_from_stats(bad, 8)
    with pytest.raises(ValueError, match="every std > 0"):
        tfms_from_stats(((0.5,), (0.0,)), 8)
    with pytest.raises(ValueError, match="pad must be an int >= 0"):
        tfms_from_stats(STATS, 8, pad=-1)


# ------------------------------------------------------------------------------------------- mosaics
def test_export_digit_mosaics_digits_turned_and_errors(tmp_path):
    upright = export_digit_mosaics(tmp_path / "a", n=40, scale=1, seed=3)
    turned = export_digit_mosaics(tmp_path / "b", n=40, scale=1, seed=3, digits=[0, 1, 6], turned=True)
    tags = [set(r[1].split()) for r in read_csv(turned / "train_v2.csv")]
    assert set().union(*tags) <= {"zero", "one", "six"} and len(set().union(*tags)) == 3
    counts = [int(r[1]) for r in read_csv(turned / "counts.csv")]
    assert all(len(t) <= c <= 4 for t, c in zip(tags, counts))  # a digit may be shown twice
    img = np.asarray(Image.open(upright / "train-jpg" / "mosaic_00000.png"))
    assert img.shape == (16, 16) and img.dtype == np.uint8
    with pytest.raises(ValueError, match="digits must be a non-empty list of digits 0-9"):
        export_digit_mosaics(tmp_path / "c", n=2, digits=[10])
