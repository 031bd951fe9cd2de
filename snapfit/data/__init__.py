"""Data: DataBunch and its seeded sampler, image classification data and transforms, bundled datasets."""
from .core import DataBunch, EpochShuffleSampler, to_tensor
from .datasets import export_digit_mosaics, export_digits_images, load_digits_arrays
from .images import ImageClassifierData, ImageLoadError, get_cv_idxs
from .transforms import (
    CropType,
    RandomCrop,
    RandomDihedral,
    RandomFlip,
    RandomLighting,
    RandomRotate,
    RandomZoom,
    imagenet_stats,
    tfms_from_model,
    tfms_from_stats,
    transforms_basic,
    transforms_side_on,
    transforms_top_down,
)

__all__ = [
    "DataBunch", "EpochShuffleSampler", "to_tensor", "load_digits_arrays", "export_digits_images",
    "export_digit_mosaics", "ImageClassifierData", "ImageLoadError", "get_cv_idxs", "CropType", "RandomCrop",
    "RandomDihedral", "RandomFlip", "RandomLighting", "RandomRotate", "RandomZoom", "imagenet_stats",
    "tfms_from_model", "tfms_from_stats", "transforms_basic", "transforms_side_on", "transforms_top_down",
]
