"""Image transforms built on torchvision.transforms.v2, with fastai 0.7's names.

``trn_tfms, val_tfms = tfms_from_model(resnet34, sz, aug_tfms=transforms_side_on, max_zoom=1.1)``:
the training pipeline resizes (and zooms), pads (``pad=``), augments, crops at random; the validation one
resizes and crops the centre; both end with the architecture's normalisation. Each takes a PIL image, an HWC
uint8 array or a CHW uint8 tensor and returns a normalised float32 CHW tensor.

The augmentations (`RandomFlip`, `RandomCrop`, `RandomRotate`, `RandomLighting`, `RandomZoom`,
`RandomDihedral`) take fastai 0.7's arguments. Each is an ``nn.Module`` whose ``forward`` takes an image
tensor ``(..., C, H, W)`` (a ``tv_tensors.Image`` stays one; uint8 in [0, 255] or float in [0, 1]; a PIL image is
converted) and returns the same dtype; random draws use torch's generator, so ``torch.manual_seed`` and the
DataLoader's per-worker seeding make them reproducible."""
from __future__ import annotations

import math
import numbers
from enum import IntEnum
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..checks import check_float, check_int

__all__ = [
    "imagenet_stats", "CropType", "RandomFlip", "RandomCrop", "RandomRotate", "RandomLighting", "RandomZoom",
    "RandomDihedral", "transforms_basic", "transforms_side_on", "transforms_top_down",
    "tfms_from_stats", "tfms_from_model", "stats_for_arch",
]

#: Channel means and standard deviations of ImageNet, which torchvision's models were trained on.
imagenet_stats: Tuple[Tuple[float, ...], Tuple[float, ...]] = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

#: Border modes of `RandomRotate` and `RandomZoom` -> ``grid_sample``'s padding modes.
_WARP_MODES = {"reflect": "reflection", "constant": "zeros", "border": "border"}
_PAD_MODES = ("reflect", "symmetric", "edge", "constant")


# ---------------------------------------------------------------------------------------------- helpers
def _as_image(img: Any) -> torch.Tensor:
    """`img` as a tensor with at least 2 dims (a PIL image or an array becomes a CHW ``tv_tensors.Image``)."""
    if not torch.is_tensor(img):
        img = v2.functional.to_image(img)
    if img.ndim < 2:
        raise ValueError(f"expected an image tensor (..., H, W), got shape {tuple(img.shape)}")
    return img


def _like(out: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """`out` with the tv_tensor type of `img` (torch ops return plain tensors)."""
    return tv_tensors.wrap(out, like=img) if isinstance(img, tv_tensors.TVTensor) else out


def _to_float(img: torch.Tensor) -> Tuple[torch.Tensor, float]:
    """`img` as a float tensor on the [0, 1] scale, and the scale it came on (255 for uint8, 1 for floats)."""
    if img.is_floating_point():
        return img.as_subclass(torch.Tensor), 1.0
    top = float(torch.iinfo(img.dtype).max) if img.dtype != torch.bool else 1.0
    return img.as_subclass(torch.Tensor).float() / top, top


def _from_float(x: torch.Tensor, like: torch.Tensor, top: float) -> torch.Tensor:
    """Undo `_to_float`: back to `like`'s dtype (integers rounded and clamped to their range)."""
    if like.is_floating_point():
        return x.to(like.dtype)
    return (x * top).round_().clamp_(0, top).to(like.dtype)


def _warp(img: torch.Tensor, deg: float, scale: float = 1.0, mode: str = "reflect") -> torch.Tensor:
    """`img` (..., H, W) rotated by `deg` degrees counter-clockwise and zoomed by `scale` about its centre,
    same size, bilinear. A pixel at offset ``p`` from the centre takes the value at ``R(-deg) p / scale``;
    outside the image, `mode` 'reflect' mirrors it, 'constant' gives 0, 'border' repeats the edge."""
    h, w = img.shape[-2:]
    ftype = img.dtype if img.is_floating_point() else torch.float32
    x = img.as_subclass(torch.Tensor).reshape(1, -1, h, w).to(ftype)
    rad = math.radians(deg)
    cos, sin = math.cos(rad) / scale, math.sin(rad) / scale
    yo = torch.arange(h, dtype=ftype, device=img.device) + 0.5 - h / 2
    xo = torch.arange(w, dtype=ftype, device=img.device) + 0.5 - w / 2
    yo, xo = torch.meshgrid(yo, xo, indexing="ij")
    grid = torch.stack([(xo * cos - yo * sin) / (w / 2), (xo * sin + yo * cos) / (h / 2)], dim=-1)[None]
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode=_WARP_MODES[mode], align_corners=False)
    out = out.reshape(img.shape)
    if not img.is_floating_point():
        out = out.round_().clamp_(0, torch.iinfo(img.dtype).max)
    return out.to(img.dtype)


def _check_p(p: Any) -> float:
    p = check_float("p", p, what="a probability in [0, 1]")
    if p > 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    return p


def _check_mode(mode: Any) -> str:
    if mode not in _WARP_MODES:
        raise ValueError(f"mode must be one of {sorted(_WARP_MODES)}, got {mode!r}")
    return mode


def _uniform(lo: float, hi: float) -> float:
    """One draw from U(lo, hi) with torch's generator."""
    return lo + (hi - lo) * float(torch.rand(()))


# ---------------------------------------------------------------------------------------------- augmentations
class RandomFlip(nn.Module):
    """Horizontal flip (reverse the last dim, ``torch.flip(img, (-1,))``) with probability `p`."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = _check_p(p)

    def get_params(self) -> bool:
        """Whether to flip: ``u < p`` with ``u ~ U(0, 1)``."""
        return float(torch.rand(())) < self.p

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        img = _as_image(img)
        return _like(torch.flip(img, dims=(-1,)), img) if self.get_params() else img

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class RandomCrop(nn.Module):
    """A `targ_sz` x `targ_sz` crop at a uniformly random position (top in ``[0, H - targ_sz]``, left in
    ``[0, W - targ_sz]``); an image smaller than that is a ValueError."""

    def __init__(self, targ_sz: int):
        super().__init__()
        self.targ_sz = check_int("targ_sz", targ_sz, what="a positive int (crop side in pixels)")

    def get_params(self, h: int, w: int) -> Tuple[int, int]:
        """``(top, left)`` of the crop in an `h` x `w` image."""
        sz = self.targ_sz
        if h < sz or w < sz:
            raise ValueError(f"RandomCrop({sz}) cannot crop a {h}x{w} image: it is smaller than the crop")
        return int(torch.randint(h - sz + 1, ())), int(torch.randint(w - sz + 1, ()))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        img = _as_image(img)
        top, left = self.get_params(*img.shape[-2:])
        return _like(img[..., top:top + self.targ_sz, left:left + self.targ_sz], img)

    def extra_repr(self) -> str:
        return f"targ_sz={self.targ_sz}"


class RandomRotate(nn.Module):
    """With probability `p`, rotate by an angle ``a ~ U(-deg, deg)`` degrees (counter-clockwise for a > 0)
    about the centre, bilinear; corners outside the image are filled by `mode` ('reflect', fastai 0.7's default,
    'constant' for black, or 'border')."""

    def __init__(self, deg: float, p: float = 0.75, mode: str = "reflect"):
        super().__init__()
        self.deg = check_float("deg", deg, what="a finite number of degrees >= 0")
        self.p = _check_p(p)
        self.mode = _check_mode(mode)

    def get_params(self) -> Tuple[bool, float]:
        """``(rotate?, angle)``: ``u < p`` and ``a ~ U(-deg, deg)`` (both always drawn)."""
        do = float(torch.rand(())) < self.p
        return do, _uniform(-self.deg, self.deg)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        img = _as_image(img)
        do, angle = self.get_params()
        return _like(_warp(img, angle, 1.0, self.mode), img) if do and angle != 0 else img

    def extra_repr(self) -> str:
        return f"deg={self.deg:g}, p={self.p:g}, mode={self.mode!r}"


class RandomLighting(nn.Module):
    """fastai 0.7's brightness and contrast change on the [0, 1] scale (uint8 images are divided by 255 and
    rounded back): ``x' = clip((x - mu) * c + mu + b, 0, 1)`` with ``mu`` the image's mean (all channels),
    ``b ~ U(-b, b)`` and ``c = 1 + t`` for ``t ~ U(-c, c)``, ``t >= 0``, else ``1 / (1 - t)``:
    ``c`` in [1/(1+c), 1+c]."""

    def __init__(self, b: float, c: float):
        super().__init__()
        self.b = check_float("b", b, what="a finite brightness change >= 0")
        self.c = check_float("c", c, what="a finite contrast change >= 0")

    def get_params(self) -> Tuple[float, float]:
        """``(b, c)``: the brightness shift and the contrast factor."""
        b = _uniform(-self.b, self.b)
        t = _uniform(-self.c, self.c)
        return b, (1 + t if t >= 0 else 1 / (1 - t))

    @staticmethod
    def lighting(img: torch.Tensor, b: float, c: float) -> torch.Tensor:
        """``clip((x - mu) * c + mu + b, 0, 1)`` on the [0, 1] scale, ``mu`` the mean of each image (last 3 dims)."""
        x, top = _to_float(img)
        mu = x.mean(dim=tuple(range(-min(3, x.ndim), 0)), keepdim=True)
        return _like(_from_float(((x - mu) * c + mu + b).clamp(0, 1), img, top), img)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        img = _as_image(img)
        b, c = self.get_params()
        return img if b == 0 and c == 1 else self.lighting(img, b, c)

    def extra_repr(self) -> str:
        return f"b={self.b:g}, c={self.c:g}"


class RandomZoom(nn.Module):
    """Zoom into the centre by ``1 + z``, ``z ~ U(zoom_min, zoom_max)``, keeping the size (bilinear); a negative
    `zoom_min` can zoom out, the border then filled by `mode` ('reflect', 'constant' or 'border')."""

    def __init__(self, zoom_max: float, zoom_min: float = 0.0, mode: str = "reflect"):
        super().__init__()
        self.zoom_max = check_float("zoom_max", zoom_max, minimum=-math.inf, what="a finite number > -1")
        self.zoom_min = check_float("zoom_min", zoom_min, minimum=-math.inf, what="a finite number > -1")
        if self.zoom_min <= -1 or self.zoom_max <= -1:
            raise ValueError(f"zoom_min and zoom_max must be > -1 (the zoom is 1 + z), got {zoom_min!r}, {zoom_max!r}")
        if self.zoom_max < self.zoom_min:
            raise ValueError(f"zoom_max must be >= zoom_min, got zoom_max={zoom_max!r}, zoom_min={zoom_min!r}")
        self.mode = _check_mode(mode)

    def get_params(self) -> float:
        """The zoom factor ``1 + z``."""
        return 1 + _uniform(self.zoom_min, self.zoom_max)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        img = _as_image(img)
        s = self.get_params()
        return img if s == 1 else _like(_warp(img, 0.0, s, self.mode), img)

    def extra_repr(self) -> str:
        return f"zoom_max={self.zoom_max:g}, zoom_min={self.zoom_min:g}, mode={self.mode!r}"


class RandomDihedral(nn.Module):
    """One of the 8 symmetries of the square (``rot90`` by ``k ~ U{0..3}`` quarter turns, then a horizontal flip
    with probability 1/2), chosen at random: the right augmentation for images seen from above."""

    def get_params(self) -> Tuple[int, bool]:
        """``(k, flip)``."""
        return int(torch.randint(4, ())), bool(torch.randint(2, ()))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        img = _as_image(img)
        k, flip = self.get_params()
        out = torch.rot90(img, k, dims=(-2, -1))
        return _like(torch.flip(out, dims=(-1,)) if flip else out, img)

    def __repr__(self) -> str:
        return "RandomDihedral()"


#: Small rotations and lighting changes (fastai 0.7's).
transforms_basic: List[nn.Module] = [RandomRotate(10), RandomLighting(0.05, 0.05)]
#: Photos taken from the side: basic + horizontal flip.
transforms_side_on: List[nn.Module] = transforms_basic + [RandomFlip()]
#: Images seen from above: basic + the 8 dihedral symmetries.
transforms_top_down: List[nn.Module] = transforms_basic + [RandomDihedral()]


# ---------------------------------------------------------------------------------------------- pipelines
class CropType(IntEnum):
    """How the training pipeline crops to `sz` (fastai 0.7's values). RANDOM: a random square; CENTER: the
    centre; NO: squash the whole image to sz x sz; GOOGLENET: a random crop of 8-100% of the area and aspect
    3/4-4/3 resized to sz; NOOP: no crop (sides stay as resized). Validation crops the centre for RANDOM and
    GOOGLENET, else does the same as training."""
    RANDOM = 1
    CENTER = 2
    NO = 3
    GOOGLENET = 4
    NOOP = 5


def _parse_crop(name: str, v: Any) -> CropType:
    if isinstance(v, CropType):
        return v
    if isinstance(v, str) and v.upper() in CropType.__members__:
        return CropType[v.upper()]
    if isinstance(v, numbers.Integral) and not isinstance(v, bool) and v in CropType._value2member_map_:
        return CropType(v)
    names = ", ".join(CropType.__members__)
    raise ValueError(f"{name} must be a CropType ({names}) or its name (e.g. 'random', 'center'), got {v!r}")


def _check_stats(stats: Any) -> Tuple[List[float], List[float]]:
    """``(means, stds)`` as two equal-length lists of finite floats (stds > 0), else a ValueError naming stats."""
    bad = ValueError(f"stats must be (means, stds) with one value per channel, e.g. ((0.5, 0.5, 0.5), "
                     f"(0.25, 0.25, 0.25)), got {stats!r}")
    try:
        if isinstance(stats, (str, bytes)) or len(stats) != 2:
            raise bad
        mean, std = ([float(v) for v in s] for s in stats)
    except (TypeError, ValueError):
        raise bad from None
    if not mean or len(mean) != len(std) or not all(math.isfinite(v) for v in mean + std):
        raise bad
    if any(v <= 0 for v in std):
        raise ValueError(f"stats must be (means, stds) with every std > 0, got stds {std}")
    return mean, std


def tfms_from_stats(stats: Any, sz: int, aug_tfms: Optional[Union[Callable, Sequence[Callable]]] = None,
                    max_zoom: Optional[float] = None, pad: int = 0,
                    crop_type: Union[CropType, str] = CropType.RANDOM, crop: Optional[Union[CropType, str]] = None,
                    pad_mode: str = "reflect") -> Tuple[v2.Compose, v2.Compose]:
    """(train, validation) pipelines for `sz` images normalised with ``stats = (means, stds)``: ``(x - mean) / std``.
    Training: resize the short side to `sz` (random in ``[sz, sz * max_zoom]`` with `max_zoom`), pad `pad` pixels
    each side (`pad_mode`), `aug_tfms`, crop by `crop_type` (`crop` is its older name).
    Validation: resize, centre crop."""
    check_int("sz", sz, what="a positive int (image side in pixels)")
    check_int("pad", pad, minimum=0, what="an int >= 0 (pixels added on each side before the crop)")
    if max_zoom is not None and not (isinstance(max_zoom, numbers.Real) and max_zoom >= 1):
        raise ValueError(f"max_zoom must be >= 1, got {max_zoom}")
    if pad_mode not in _PAD_MODES:
        raise ValueError(f"pad_mode must be one of {list(_PAD_MODES)}, got {pad_mode!r}")
    ct = _parse_crop("crop_type", crop_type)
    if crop is not None:
        old = _parse_crop("crop", crop)
        if ct not in (CropType.RANDOM, old):
            raise ValueError(f"give crop_type or crop (its older name), not both: got crop_type={ct.name}, "
                             f"crop={crop!r}")
        ct = old
    if aug_tfms is None:
        aug_tfms = []
    elif callable(aug_tfms) and not isinstance(aug_tfms, (list, tuple)):
        aug_tfms = [aug_tfms]  # fastai 0.7 took a single transform too
    aug = list(aug_tfms)
    for t in aug:
        if not callable(t):
            raise TypeError(f"aug_tfms must be a list of transforms (callables), got {t!r} in it")
    mean, std = _check_stats(stats)

    finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    resize = v2.RandomResize(sz, int(round(sz * max_zoom)) + 1) if max_zoom and max_zoom > 1 else v2.Resize(sz)
    padding = [v2.Pad(pad, padding_mode=pad_mode)] if pad else []
    crops = {CropType.RANDOM: [RandomCrop(sz)], CropType.CENTER: [v2.CenterCrop(sz)],
             CropType.NO: [v2.Resize((sz, sz)), v2.CenterCrop(sz)], CropType.NOOP: []}
    if ct == CropType.GOOGLENET:  # fastai 0.7 skipped the resize and the padding for it
        trn = [v2.ToImage(), *aug, v2.RandomResizedCrop(sz, scale=(0.08, 1.0), ratio=(0.75, 1.333)), *finish]
    else:
        trn = [v2.ToImage(), resize, *padding, *aug, *crops[ct], *finish]
    if ct in (CropType.RANDOM, CropType.CENTER, CropType.GOOGLENET):  # centre crop: the padding would be cut off
        val = [v2.ToImage(), v2.Resize(sz), v2.CenterCrop(sz), *finish]
    else:
        val = [v2.ToImage(), v2.Resize(sz), *padding, *crops[ct], *finish]
    return v2.Compose(trn), v2.Compose(val)


def stats_for_arch(arch) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Normalisation statistics of an architecture: ImageNet's for torchvision's models."""
    return imagenet_stats


def tfms_from_model(arch, sz: int, aug_tfms: Optional[Union[Callable, Sequence[Callable]]] = None,
                    max_zoom: Optional[float] = None, pad: int = 0,
                    crop_type: Union[CropType, str] = CropType.RANDOM, crop: Optional[Union[CropType, str]] = None,
                    pad_mode: str = "reflect") -> Tuple[v2.Compose, v2.Compose]:
    """`tfms_from_stats` with the normalisation `arch` was trained with (fastai 0.7's name)."""
    return tfms_from_stats(stats_for_arch(arch), sz, aug_tfms=aug_tfms, max_zoom=max_zoom, pad=pad,
                           crop_type=crop_type, crop=crop, pad_mode=pad_mode)
