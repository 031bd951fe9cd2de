"""Synchronised BatchNorm for multi-process training (``Learner(..., sync_bn=True)`` under torchrun).

Each rank holds ``bs`` samples of a global batch of ``world_size * bs``; plain BatchNorm normalises with the
statistics of the rank's part only, so a model with BatchNorm trained on N ranks does not follow the single
process with the same global batch. `SyncBatchNorm` (a callback) makes every BatchNorm layer normalise, while
training, with the statistics of the global batch, on any backend (gloo on the CPU included, which
``torch.nn.SyncBatchNorm`` does not support):

    mean = sum_ranks(sum x) / n,   var = sum_ranks(sum (x - mean)^2) / n     (n: samples x positions, all ranks)
    y = (x - mean) / sqrt(var + eps) * weight + bias

both sums all-reduced with autograd (the backward of a sum over ranks is a sum over ranks), so the gradients are
those of the global batch too; the running statistics are updated with the global mean and unbiased
variance. The layers keep their identity (their class is swapped for the fit, then put back), so the
optimizer, layer groups, frozen BatchNorm and state dicts are untouched."""
from __future__ import annotations

import warnings
from typing import Dict, List, Tuple, Type

import torch
import torch.distributed as dist
from torch import nn

from .core import Callback

__all__ = ["SyncBatchNorm", "synced_batch_norm", "all_reduce"]

_SYNCED: Dict[type, type] = {}


class _SumOverRanks(torch.autograd.Function):
    """``sum_ranks(t)`` with its gradient, ``sum_ranks(grad)``."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over the ranks, differentiable."""
    return _SumOverRanks.apply(t)


def synced_batch_norm(x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """`bn` applied to `x` with the statistics of the global batch (every rank calls it at the same point)."""
    dtype, x = x.dtype, x.float()  # statistics in float32, also under autocast
    c = x.shape[1]
    dims = [0] + list(range(2, x.dim()))
    shape = [1, c] + [1] * (x.dim() - 2)
    n_local = torch.tensor([x.numel() // c], dtype=x.dtype, device=x.device)
    sums = all_reduce(torch.cat([x.sum(dims), n_local]))
    n = sums[c]
    mean = sums[:c] / n
    var = all_reduce((x - mean.view(shape)).pow(2).sum(dims)) / n
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            m = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            bn.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=m)
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y.to(dtype)


class _SyncedMixin:
    """Forward of a BatchNorm whose training statistics come from every rank."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self._check_input_dim(x)
            return synced_batch_norm(x, self)
        return super().forward(x)


def _synced_class(cls: type) -> type:
    if cls not in _SYNCED:
        _SYNCED[cls] = type(f"Synced{cls.__name__}", (_SyncedMixin, cls), {"__module__": __name__})
    return _SYNCED[cls]


class SyncBatchNorm(Callback):
    """Makes the model's BatchNorm layers use the global batch's statistics while it trains under torchrun
    (see the module docstring); installed by ``Learner(..., sync_bn=True)``. Outside torchrun it does nothing
    (the learner warns once)."""

    order = -950  # before DistributedTraining wraps the model

    def __init__(self):
        self._swapped: List[Tuple[nn.Module, Type[nn.Module]]] = []

    def before_fit(self, learn) -> None:
        for m in learn.saved_model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, _SyncedMixin) \
                    and not isinstance(m, nn.SyncBatchNorm):
                self._swapped.append((m, type(m)))
                m.__class__ = _synced_class(type(m))

    def cleanup_fit(self, learn) -> None:
        for m, cls in self._swapped:
            m.__class__ = cls
        self._swapped = []


def sync_bn_callbacks(sync_bn: bool, distributed: bool, model: nn.Module) -> List[Callback]:
    """``[SyncBatchNorm()]`` when `sync_bn` applies: under torchrun and with BatchNorm in `model`."""
    if not sync_bn:
        return []
    if not distributed:
        warnings.warn("sync_bn=True does nothing outside torchrun (one process already sees the whole batch)",
                      stacklevel=3)
        return []
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return [SyncBatchNorm()] if has_bn else []
