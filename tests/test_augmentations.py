"""fastai 0.7's augmentations and tfms_from_stats(pad=, crop_type=) on small synthetic images, checked on values."""
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.models import resnet18
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from snapfit.data.transforms import (
    CropType,
    RandomCrop,
    RandomDihedral,
    RandomFlip,
    RandomLighting,
    RandomRotate,
    RandomZoom,
    tfms_from_model,
    tfms_from_stats,
    transforms_basic,
    transforms_side_on,
    transforms_top_down,
)

STATS = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def ramp(h=8, w=8, c=3):
    """A uint8 CHW image whose pixels all differ."""
    return (torch.arange(c * h * w) % 256).to(torch.uint8).reshape(c, h, w)


def draw(module, seed, *args):
    """The parameters `module` draws after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return module.get_params(*args)


def test_random_flip():
    img = ramp()
    assert torch.equal(RandomFlip(p=1.0)(img), torch.flip(img, (-1,)))
    assert torch.equal(RandomFlip(p=0.0)(img), img)
    flip = RandomFlip()
    torch.manual_seed(0)
    outs = [flip(img) for _ in range(400)]
    n = sum(torch.equal(o, torch.flip(img, (-1,))) for o in outs)
    assert all(torch.equal(o, img) or torch.equal(o, torch.flip(img, (-1,))) for o in outs)
    assert 150 < n < 250, n
    for seed in range(5):
        want = torch.flip(img, (-1,)) if draw(flip, seed) else img
        torch.manual_seed(seed)
        assert torch.equal(flip(img), want)
    out = RandomFlip(p=1.0)(tv_tensors.Image(img))
    assert isinstance(out, tv_tensors.Image) and out.dtype == torch.uint8
    assert repr(flip) == "RandomFlip(p=0.5)"
    with pytest.raises(ValueError, match="p must be a probability"):
        RandomFlip(p=1.5)


def test_random_crop():
    img = ramp(10, 12)
    crop = RandomCrop(6)
    torch.manual_seed(0)
    corners = set()
    for _ in range(200):
        out = crop(img)
        assert out.shape == (3, 6, 6)
        top, left = [int(i) for i in torch.nonzero(img[0] == out[0, 0, 0])[0]]
        assert torch.equal(out, img[:, top:top + 6, left:left + 6])
        corners.add((top, left))
    assert corners == {(t, left) for t in range(5) for left in range(7)}, "every position is drawn"
    assert repr(crop) == "RandomCrop(targ_sz=6)"
    with pytest.raises(ValueError, match="smaller than the crop"):
        RandomCrop(11)(img)
    with pytest.raises(ValueError, match="targ_sz must be a positive int"):
        RandomCrop(0)


def test_random_rotate_matches_torchvision():
    img = ramp(9, 11)
    fimg = img.float() / 255
    for seed in range(4):
        rot = RandomRotate(90, p=1.0, mode="constant")
        do, angle = draw(rot, seed)
        assert do and -90 <= angle <= 90
        torch.manual_seed(seed)
        out = rot(img)
        assert out.dtype == torch.uint8 and out.shape == img.shape and not torch.equal(out, img)
        want = TF.rotate(img, angle, interpolation=InterpolationMode.BILINEAR)
        assert (out.int() - want.int()).abs().max() <= 1
        torch.manual_seed(seed)
        torch.testing.assert_close(rot(fimg), TF.rotate(fimg, angle, interpolation=InterpolationMode.BILINEAR),
                                   atol=1e-5, rtol=0)
    square = ramp(8, 8)
    rot = RandomRotate(90, p=1.0)
    rot.get_params = lambda: (True, 90.0)
    assert torch.equal(rot(square), torch.rot90(square, 1, (-2, -1))), "a quarter turn is exact, counter-clockwise"


def test_random_rotate_probability_and_reflect_border():
    img = ramp(16, 16) // 2 + 100  # no zero pixel
    rot = RandomRotate(10)
    assert rot.p == 0.75 and repr(rot) == "RandomRotate(deg=10, p=0.75, mode='reflect')"
    torch.manual_seed(0)
    changed = sum(not torch.equal(rot(img), img) for _ in range(400))
    assert 260 < changed < 340, changed
    reflect, constant = RandomRotate(30, p=1.0), RandomRotate(30, p=1.0, mode="constant")
    reflect.get_params = constant.get_params = lambda: (True, 30.0)
    r, c = reflect(img), constant(img)
    assert (c[:, 0, 0] == 0).all() and (r[:, 0, 0] > 0).all(), "reflect fills the corners, constant leaves 0"
    yy, xx = torch.meshgrid(torch.arange(16) + 0.5 - 8, torch.arange(16) + 0.5 - 8, indexing="ij")
    inside = (yy ** 2 + xx ** 2) < 6.5 ** 2
    assert torch.equal(r[:, inside], c[:, inside]), "inside the image both agree"
    assert torch.equal(RandomRotate(10, p=0.0)(img), img)
    with pytest.raises(ValueError, match="mode must be one of"):
        RandomRotate(10, mode="wrap")


def test_random_lighting_formula_and_bounds():
    img = ramp(8, 8)
    x = img.float() / 255
    light = RandomLighting(0.05, 0.05)
    for seed in range(10):
        b, c = draw(light, seed)
        assert abs(b) <= 0.05 and 1 / 1.05 <= c <= 1.05
        torch.manual_seed(seed)
        out = light(img)
        mu = x.mean()
        want = ((x - mu) * c + mu + b).clamp(0, 1)
        assert out.dtype == torch.uint8
        assert (out.float() / 255 - want).abs().max() <= 0.5 / 255 + 1e-6
        torch.manual_seed(seed)
        torch.testing.assert_close(light(x), want)
    # the effect on mean and contrast, on an image far from 0 and 1 so nothing is clipped
    mid = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.4 + 0.3
    big = RandomLighting(0.2, 0.5)
    torch.manual_seed(1)
    shifts, ratios = [], []
    for _ in range(200):
        out = big(mid)
        shifts.append(float(out.mean() - mid.mean()))
        ratios.append(float(out.std() / mid.std()))
    assert max(abs(s) for s in shifts) <= 0.2 + 1e-5 and max(shifts) > 0.15 and min(shifts) < -0.15
    assert 1 / 1.5 - 1e-4 <= min(ratios) < 0.75 and 1.4 < max(ratios) <= 1.5 + 1e-4
    assert torch.equal(RandomLighting(0, 0)(img), img)
    assert repr(light) == "RandomLighting(b=0.05, c=0.05)"


def test_random_lighting_clips_uint8():
    img = torch.tensor([[[0, 250], [5, 255]]], dtype=torch.uint8)
    out = RandomLighting.lighting(img, 0.2, 1.0)  # +0.2 * 255 = +51, clipped at 255
    assert out.tolist() == [[[51, 255], [56, 255]]]
    out = RandomLighting.lighting(img, 0.0, 2.0)  # (x - 127.5) * 2 + 127.5, clipped to [0, 255]
    assert out.tolist() == [[[0, 255], [0, 255]]]


def test_random_zoom_matches_torchvision_affine():
    img = ramp(12, 12)
    fimg = img.float() / 255
    zoom = RandomZoom(0.5)
    assert repr(zoom) == "RandomZoom(zoom_max=0.5, zoom_min=0, mode='reflect')"
    for seed in range(4):
        s = draw(zoom, seed)
        assert 1 <= s <= 1.5
        torch.manual_seed(seed)
        want = TF.affine(fimg, angle=0.0, translate=[0, 0], scale=s, shear=[0.0, 0.0],
                         interpolation=InterpolationMode.BILINEAR)
        torch.testing.assert_close(zoom(fimg), want, atol=1e-5, rtol=0)
    out = RandomZoom(0.0, zoom_min=-0.5, mode="constant")
    out.get_params = lambda: 0.5
    small = out(img)
    assert (small[:, 0, :] == 0).all() and (small[:, 5:7, 5:7] > 0).all(), "zooming out leaves a black border"
    with pytest.raises(ValueError, match="zoom_max must be >= zoom_min"):
        RandomZoom(0.1, zoom_min=0.2)


def test_dihedral_and_the_0_7_lists():
    assert [type(t) for t in transforms_basic] == [RandomRotate, RandomLighting]
    assert (transforms_basic[0].deg, transforms_basic[0].p, transforms_basic[1].b, transforms_basic[1].c) == (
        10, 0.75, 0.05, 0.05)
    assert isinstance(transforms_side_on[-1], RandomFlip) and isinstance(transforms_top_down[-1], RandomDihedral)
    assert transforms_side_on[:2] == transforms_basic == transforms_top_down[:2]
    img = ramp(6, 6)
    dihedral = {tuple(torch.flip(torch.rot90(img, k, (-2, -1)), (-1,)).flatten().tolist() if f else
                      torch.rot90(img, k, (-2, -1)).flatten().tolist()) for k in range(4) for f in (0, 1)}
    assert len(dihedral) == 8
    torch.manual_seed(0)
    seen = {tuple(RandomDihedral()(img).flatten().tolist()) for _ in range(200)}
    assert seen == dihedral
    # the whole top-down list: the dihedral images, lightly rotated and lit, still reach all 8 variants
    compose = v2.Compose(transforms_top_down)
    torch.manual_seed(0)
    nearest = set()
    for _ in range(300):
        out = compose(img).int()
        nearest.add(min(dihedral, key=lambda d: (out.flatten() - torch.tensor(d)).abs().sum().item()))
    assert nearest == dihedral


def test_pad_reflects_then_crops():
    img = ramp(32, 32)
    trn, val = tfms_from_stats(STATS, 32, aug_tfms=[RandomFlip()], pad=4)
    torch.manual_seed(0)
    assert trn(img).shape == (3, 32, 32) and val(img).shape == (3, 32, 32)
    crop = next(t for t in trn.transforms if isinstance(t, RandomCrop))
    seen = set()
    orig = crop.get_params
    crop.get_params = lambda h, w: seen.add((h, w)) or orig(h, w)
    trn(img)
    assert seen == {(40, 40)}, "the crop sees the padded 40x40 image"
    padded = F.pad(img[None].float(), (4, 4, 4, 4), mode="reflect")[0]
    norm = lambda x: (x / 255 - 0.5) / 0.25
    no_flip = tfms_from_stats(STATS, 32, pad=4)[0]
    crop = next(t for t in no_flip.transforms if isinstance(t, RandomCrop))
    crop.get_params = lambda h, w: (0, 0)
    torch.testing.assert_close(no_flip(img), norm(padded[:, :32, :32]))
    crop.get_params = lambda h, w: (8, 8)
    torch.testing.assert_close(no_flip(img), norm(padded[:, 8:, 8:]))
    crop.get_params = lambda h, w: (4, 4)
    torch.testing.assert_close(no_flip(img), norm(img.float()))
    # fastai 0.7's cv2.BORDER_REFLECT repeats the edge pixel: pad_mode="symmetric"
    sym = tfms_from_stats(STATS, 32, pad=4, pad_mode="symmetric", crop_type=CropType.NOOP)[0]
    want = torch.cat([img[:, :4].flip(1), img, img[:, -4:].flip(1)], 1)
    want = torch.cat([want[:, :, :4].flip(2), want, want[:, :, -4:].flip(2)], 2)
    torch.testing.assert_close(sym(img), norm(want.float()))
    torch.testing.assert_close(val(img), norm(img.float()))


def test_crop_types():
    img = ramp(16, 24)
    center = tfms_from_stats(STATS, 8, crop_type=CropType.CENTER)[0]
    old = tfms_from_stats(STATS, 8, crop="center")[0]
    assert repr(center) == repr(old) and torch.equal(center(img), old(img))
    assert torch.equal(center(img), tfms_from_stats(STATS, 8, crop_type="center")[0](img))
    no_trn, no_val = tfms_from_stats(STATS, 8, crop_type=CropType.NO)
    want = TF.resize(TF.resize(img, [8]), [8, 8])
    torch.testing.assert_close(no_val(img), (want.float() / 255 - 0.5) / 0.25)
    assert no_trn(img).shape == (3, 8, 8)
    g_trn, g_val = tfms_from_stats(STATS, 8, crop_type=CropType.GOOGLENET)
    assert g_trn(img).shape == (3, 8, 8) and g_val(img).shape == (3, 8, 8)
    assert tfms_from_stats(STATS, 8, crop_type=CropType.NOOP)[0](img).shape == (3, 8, 12)
    assert [c.value for c in CropType] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="crop_type must be a CropType"):
        tfms_from_stats(STATS, 8, crop_type="middle")
    with pytest.raises(ValueError, match="crop must be a CropType"):
        tfms_from_stats(STATS, 8, crop="middle")
    with pytest.raises(ValueError, match="not both"):
        tfms_from_stats(STATS, 8, crop_type=CropType.NO, crop="center")


def test_argument_errors():
    for bad in [(0.5, 0.5), ((0.5, 0.5), (0.5,)), ((), ()), "ab", None, ((0.5,), (0.5,), (0.5,)), (("a",), (1,)),
                ((math.nan,), (1,))]:
        with pytest.raises(ValueError, match=r"stats must be \(means, stds\) with one value per channel"):
            tfms_from_stats(bad, 8)
    with pytest.raises(ValueError, match="every std > 0"):
        tfms_from_stats(((0.5,), (0.0,)), 8)
    for pad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="pad must be an int >= 0"):
            tfms_from_stats(STATS, 8, pad=pad)
    with pytest.raises(ValueError, match="pad_mode must be one of"):
        tfms_from_stats(STATS, 8, pad=2, pad_mode="wrap")
    with pytest.raises(TypeError, match="aug_tfms must be a list of transforms"):
        tfms_from_stats(STATS, 8, aug_tfms=[RandomFlip(), 3])
    import numpy as np
    trn, _ = tfms_from_stats(np.array(STATS), 8, aug_tfms=RandomFlip(p=1.0))  # 0.7's array stats, one transform
    assert any(isinstance(t, RandomFlip) for t in trn.transforms)


def test_tfms_from_model_passes_pad():
    trn, val = tfms_from_model(resnet18, 16, aug_tfms=transforms_side_on, pad=2, crop_type="random")
    pads = [t for t in trn.transforms if isinstance(t, v2.Pad)]
    assert len(pads) == 1 and pads[0].padding in (2, [2, 2, 2, 2]) and pads[0].padding_mode == "reflect"
    assert not any(isinstance(t, v2.Pad) for t in val.transforms)
    img = ramp(20, 24)
    torch.manual_seed(0)
    assert trn(img).shape == (3, 16, 16) and trn(img).dtype == torch.float32
