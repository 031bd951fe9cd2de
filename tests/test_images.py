"""Image data from folders, CSVs and arrays, built from scikit-learn's bundled images (no download)."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from torchvision.models import resnet18
from torchvision.transforms import v2

from snapfit import ImageClassifierData, RandomDihedral, tfms_from_model, tfms_from_stats, transforms_side_on
from snapfit.data import ImageLoadError, export_digits_images, get_cv_idxs, imagenet_stats


@pytest.fixture(scope="module")
def digit_folders(tmp_path_factory):
    return export_digits_images(tmp_path_factory.mktemp("digits"), scale=2, n=200, test_count=7)


@pytest.fixture(scope="module")
def sample_folders(tmp_path_factory):
    """Two classes of 40x40 colour crops: 'china' and 'flower' (load_sample_images)."""
    root = tmp_path_factory.mktemp("samples")
    rng = np.random.RandomState(0)
    for img, name in zip(load_sample_images().images, ["china", "flower"]):
        for k in range(12):
            y, x = rng.randint(0, img.shape[0] - 40), rng.randint(0, img.shape[1] - 40)
            split = "valid" if k < 3 else "train"
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[y:y + 40, x:x + 40]).save(d / f"{k}.jpg")
    return root


def test_from_paths_digits(digit_folders):
    tfms = tfms_from_model(resnet18, 16)
    data = ImageClassifierData.from_paths(digit_folders, bs=32, tfms=tfms, test_name="test", num_workers=0)
    assert data.classes == [str(i) for i in range(10)] and data.c == 10
    assert len(data.trn_ds) == 160 and len(data.val_ds) == 40 and len(data.test_ds) == 7
    x, y = next(iter(data.val_dl))
    assert x.shape == (32, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    # labels come from the folder names
    for f, lab in zip(data.val_ds.files, data.val_y):
        assert f.parent.name == data.classes[lab]
    assert data.trn_dl is data.train_dl and data.val_dl is data.valid_dl and data.sz == 16
    # validation pipeline = resize, centre crop, ImageNet normalisation
    f = data.val_ds.files[0]
    img = np.asarray(Image.open(f).convert("RGB").resize((16, 16), Image.BILINEAR), np.float32) / 255
    want = (torch.tensor(img).permute(2, 0, 1) - torch.tensor(imagenet_stats[0])[:, None, None]) / torch.tensor(
        imagenet_stats[1])[:, None, None]
    torch.testing.assert_close(data.val_ds[0][0], want, atol=0.05, rtol=0)


def test_from_paths_colour_images(sample_folders):
    data = ImageClassifierData.from_paths(sample_folders, bs=4, tfms=tfms_from_stats(imagenet_stats, 32,
                                          aug_tfms=transforms_side_on), num_workers=0)
    assert data.classes == ["china", "flower"] and len(data.trn_ds) == 18 and len(data.val_ds) == 6
    x, y = next(iter(data.trn_dl))
    assert x.shape == (4, 3, 32, 32)
    aug = data.aug_dl()
    xa, ya = next(iter(aug))
    assert torch.equal(ya, next(iter(data.val_dl))[1]) and xa.shape == (4, 3, 32, 32)


def test_training_order_is_seeded(digit_folders):
    a = ImageClassifierData.from_paths(digit_folders, bs=8, num_workers=0, seed=3)
    b = ImageClassifierData.from_paths(digit_folders, bs=8, num_workers=0, seed=3)
    assert torch.equal(next(iter(a.trn_dl))[1], next(iter(b.trn_dl))[1])
    assert torch.equal(a.trn_dl.sampler.order(0), b.trn_dl.sampler.order(0))
    assert not torch.equal(a.trn_dl.sampler.order(0), a.trn_dl.sampler.order(1))


def test_from_csv(tmp_path):
    root = export_digits_images(tmp_path, scale=2, n=100, layout="csv")
    data = ImageClassifierData.from_csv(root, "images", root / "labels.csv", bs=16, num_workers=0,
                                        tfms=tfms_from_model(resnet18, 16))
    assert len(data.val_ds) == 20 and len(data.trn_ds) == 80
    val_files = {f.name for f in data.val_ds.files}
    rows = (root / "labels.csv").read_text().splitlines()[1:]
    want = {rows[i].split(",")[0] for i in get_cv_idxs(100, val_pct=0.2, seed=42)}
    assert val_files == want, "the default split is fastai's seeded 20%"
    labels = {r.split(",")[0]: r.split(",")[1] for r in rows}
    for f, y in zip(data.trn_ds.files, data.trn_y):
        assert data.classes[y] == labels[f.name]
    explicit = ImageClassifierData.from_csv(root, "images", "labels.csv", val_idxs=[0, 1, 2], num_workers=0)
    assert [f.name for f in explicit.val_ds.files] == [rows[i].split(",")[0] for i in range(3)]


def test_from_csv_errors(tmp_path):
    root = export_digits_images(tmp_path, scale=2, n=10, layout="csv")
    first = (root / "labels.csv").read_text().splitlines()[1].split(",")[0]
    (root / "missing.csv").write_text(f"file,label\n{first},3\nnope.png,4\n")
    want = r"1 image\(s\) listed in .*missing\.csv do not exist, e\.g\. .*nope\.png"
    with pytest.raises(FileNotFoundError, match=want):
        ImageClassifierData.from_csv(root, "images", "missing.csv")
    with pytest.raises(FileNotFoundError, match="no CSV file"):
        ImageClassifierData.from_csv(root, "images", "nothere.csv")


def test_from_arrays():
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, (20, 12, 12), dtype=np.uint8)
    y = rng.randint(0, 3, 20)
    data = ImageClassifierData.from_arrays("/tmp", (x[:15], y[:15]), (x[15:], y[15:]), bs=5,
                                           tfms=tfms_from_stats(imagenet_stats, 8), test=x[:4])
    assert data.c == 3 and data.classes == [0, 1, 2]
    xb, yb = next(iter(data.val_dl))
    assert xb.shape == (5, 3, 8, 8) and torch.equal(yb, torch.as_tensor(y[15:]))
    assert len(data.test_ds) == 4
    with pytest.raises(ValueError, match="float images must be in"):
        ImageClassifierData.from_arrays("/tmp", (x * 2.0, y), (x * 2.0, y))


def test_corrupt_image_is_named_or_skipped(tmp_path):
    root = export_digits_images(tmp_path, scale=2, n=30)
    bad = sorted((root / "train").rglob("*.png"))[0]
    bad.write_bytes(b"this is not a png")
    data = ImageClassifierData.from_paths(root, bs=4, num_workers=0)
    i = data.trn_ds.files.index(bad)
    with pytest.raises(ImageLoadError, match=rf"cannot read image {bad}.*skip_bad=True"):
        data.trn_ds[i]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        skipped = ImageClassifierData.from_paths(root, bs=4, num_workers=0, skip_bad=True)
    assert any("left out 1 unreadable image" in str(x.message) and str(bad) in str(x.message) for x in w)
    assert bad not in skipped.trn_ds.files and len(skipped.trn_ds) == len(data.trn_ds) - 1


def test_folder_errors(tmp_path, digit_folders):
    with pytest.raises(FileNotFoundError, match="no training folder"):
        ImageClassifierData.from_paths(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no validation folder .*val_name='validation'"):
        ImageClassifierData.from_paths(digit_folders, val_name="validation")
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "a" / "x.png")
    (tmp_path / "valid" / "b").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"classes that are not in .*\['b'\]"):
        ImageClassifierData.from_paths(tmp_path)


def test_transforms():
    trn, val = tfms_from_model(resnet18, 24, aug_tfms=transforms_side_on, max_zoom=1.2)
    img = Image.fromarray(np.random.RandomState(0).randint(0, 256, (30, 40, 3), dtype=np.uint8))
    assert trn(img).shape == (3, 24, 24) and val(img).shape == (3, 24, 24)
    assert torch.equal(val(img), val(img)), "validation transforms are deterministic"
    with pytest.raises(ValueError, match="sz must be a positive int"):
        tfms_from_model(resnet18, 0)
    t = torch.arange(16.0).reshape(1, 4, 4)
    dihedral = {tuple(torch.rot90(torch.flip(t, (-1,)) if f else t, k, (-2, -1)).flatten().tolist())
                for k in range(4) for f in (0, 1)}
    torch.manual_seed(0)
    seen = {tuple(RandomDihedral()(t).flatten().tolist()) for _ in range(200)}
    assert seen == dihedral and len(seen) == 8
    assert isinstance(trn, v2.Compose)
