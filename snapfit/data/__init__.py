"""Data: DataBunch and its seeded sampler, bundled datasets."""
from .core import DataBunch, EpochShuffleSampler, to_tensor
from .datasets import load_digits_arrays

__all__ = ["DataBunch", "EpochShuffleSampler", "to_tensor", "load_digits_arrays"]
