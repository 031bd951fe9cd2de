"""A tensor as a model, for optimising the tensor itself (the pixels of an image in style transfer)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["TensorModel", "as_module"]


class TensorModel(nn.Module):
    """Wraps a tensor to optimise (e.g. the pixels of an image) as a model whose output is the tensor:
    ``Learner(image_tensor, DataBunch.fixed(), loss_func=lambda img: ...)``. `tensor` is the parameter."""

    def __init__(self, tensor: torch.Tensor):
        super().__init__()
        self.tensor = tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor.detach().clone())

    def forward(self, *args) -> torch.Tensor:
        return self.tensor


def as_module(model) -> nn.Module:
    """`model` when it is an nn.Module, a `TensorModel` when it is a tensor to optimise, else a TypeError."""
    if isinstance(model, torch.Tensor):
        return TensorModel(model)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (or a tensor to optimise), got {type(model).__name__}")
    return model
