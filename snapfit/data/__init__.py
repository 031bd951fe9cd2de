"""Data: DataBunch and its seeded sampler, image classification data and transforms, bundled datasets."""
from .core import DataBunch, EpochShuffleSampler, to_tensor
from .datasets import export_digits_images, load_digits_arrays
from .images import ImageClassifierData, ImageLoadError, get_cv_idxs
from .transforms import (
    RandomDihedral,
    imagenet_stats,
    tfms_from_model,
    tfms_from_stats,
    transforms_basic,
    transforms_side_on,
    transforms_top_down,
)

__all__ = [
    "DataBunch", "EpochShuffleSampler", "to_tensor", "load_digits_arrays", "export_digits_images",
    "ImageClassifierData", "ImageLoadError", "get_cv_idxs", "RandomDihedral", "imagenet_stats", "tfms_from_model",
    "tfms_from_stats", "transforms_basic", "transforms_side_on", "transforms_top_down",
]
