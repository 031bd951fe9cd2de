"""Image transforms built on torchvision.transforms.v2, with fastai 0.7's names.

``trn_tfms, val_tfms = tfms_from_model(resnet34, sz, aug_tfms=transforms_side_on, max_zoom=1.1)``:
the training pipeline resizes (and zooms), augments, crops at random; the validation one resizes and
crops the centre; both end with the architecture's normalisation. Each takes a PIL image, an HWC
uint8 array or a CHW uint8 tensor and returns a normalised float32 CHW tensor."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchvision.transforms import v2

from ..checks import check_int

__all__ = [
    "imagenet_stats", "RandomDihedral", "transforms_basic", "transforms_side_on", "transforms_top_down",
    "tfms_from_stats", "tfms_from_model", "stats_for_arch",
]

#: Channel means and standard deviations of ImageNet, which torchvision's models were trained on.
imagenet_stats: Tuple[Tuple[float, ...], Tuple[float, ...]] = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class RandomDihedral(nn.Module):
    """One of the 8 symmetries of the square (rotations by 90 degrees, with or without a flip), chosen at
    random: the right augmentation for images seen from above (satellite, microscopy)."""

    def forward(self, img):
        k = int(torch.randint(4, ()))
        flip = bool(torch.randint(2, ()))
        img = torch.rot90(img, k, dims=(-2, -1))
        return torch.flip(img, dims=(-1,)) if flip else img

    def __repr__(self) -> str:
        return "RandomDihedral()"


#: Small rotations and lighting changes.
transforms_basic: List[nn.Module] = [v2.RandomRotation(10), v2.ColorJitter(brightness=0.05, contrast=0.05)]
#: Photos taken from the side (cats, dogs, digits would not want the flip): basic + horizontal flip.
transforms_side_on: List[nn.Module] = transforms_basic + [v2.RandomHorizontalFlip()]
#: Images seen from above: basic + the 8 dihedral symmetries.
transforms_top_down: List[nn.Module] = transforms_basic + [RandomDihedral()]


def tfms_from_stats(stats, sz: int, aug_tfms: Optional[Sequence[Callable]] = None,
                    max_zoom: Optional[float] = None, crop: str = "random") -> Tuple[v2.Compose, v2.Compose]:
    """(train, validation) pipelines for square `sz` images normalised with ``stats = (mean, std)``.
    Training: resize the short side to `sz` (to a random size up to ``sz * max_zoom`` with `max_zoom`),
    `aug_tfms`, crop `sz` at random (``crop='center'`` to crop the centre). Validation: resize, centre crop."""
    check_int("sz", sz, what="a positive int (image side in pixels)")
    if max_zoom is not None and max_zoom < 1:
        raise ValueError(f"max_zoom must be >= 1, got {max_zoom}")
    if crop not in ("random", "center"):
        raise ValueError(f"crop must be 'random' or 'center', got {crop!r}")
    mean, std = (list(s) for s in stats)
    finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    resize = v2.RandomResize(sz, int(round(sz * max_zoom)) + 1) if max_zoom and max_zoom > 1 else v2.Resize(sz)
    cropper = v2.RandomCrop(sz) if crop == "random" else v2.CenterCrop(sz)
    trn = v2.Compose([v2.ToImage(), resize, *(aug_tfms or []), cropper, *finish])
    val = v2.Compose([v2.ToImage(), v2.Resize(sz), v2.CenterCrop(sz), *finish])
    return trn, val


def stats_for_arch(arch) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Normalisation statistics of an architecture: ImageNet's for torchvision's models."""
    return imagenet_stats


def tfms_from_model(arch, sz: int, aug_tfms: Optional[Sequence[Callable]] = None, max_zoom: Optional[float] = None,
                    crop: str = "random") -> Tuple[v2.Compose, v2.Compose]:
    """`tfms_from_stats` with the normalisation `arch` was trained with (fastai 0.7's name)."""
    return tfms_from_stats(stats_for_arch(arch), sz, aug_tfms=aug_tfms, max_zoom=max_zoom, crop=crop)
