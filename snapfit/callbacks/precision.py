"""Mixed precision: ``fit(..., amp='bf16')`` or ``amp='fp16'``.

The forward pass and the loss run under ``torch.autocast``; backward and the optimizer step run outside
it. fp16 also scales the loss with ``torch.amp.GradScaler`` (published as ``learn.scaler``): this callback
runs the backward of the scaled loss itself at the end of after_loss and unscales the gradients (so
after_backward callbacks such as LARS see true gradients; CancelBackwardException tells the loop the
backward is done), then steps through the scaler at the end of after_backward, which skips steps whose
gradients overflowed (CancelStepException). The scaler's state is part of checkpoints. bf16 needs no scaler."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from ..core import Callback, CancelBackwardException, CancelStepException
from ..optim import needs_closure

__all__ = ["MixedPrecision", "AMP_DTYPES", "half", "to_float"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def half(learn):
    """Later fits run in mixed precision (fastai 0.7's ``learn.half()``): fp16 with a loss scaler on CUDA, bf16 on
    the CPU; the weights stay float32 (autocast keeps master weights and BatchNorm in fp32). Returns `learn`."""
    learn.amp = "fp16" if learn.device.type == "cuda" else "bf16"
    return learn


def to_float(learn):
    """Later fits run in float32 again (undoes `half`). Returns `learn`."""
    learn.amp = None
    return learn


class MixedPrecision(Callback):
    """Autocast forward and loss to `dtype` (``'bf16'`` or ``'fp16'``); fp16 adds dynamic loss scaling."""

    order = 900  # last in before_batch (autocast covers the forward only), after_loss and after_backward
    state_key = "mixed_precision"

    def __init__(self, dtype: str = "bf16", init_scale: Optional[float] = None):
        if dtype not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)} or None, got {dtype!r}")
        self.dtype, self.init_scale = dtype, init_scale
        self.scaler: Optional[torch.amp.GradScaler] = None
        self._ctx = None
        self._scaled_backward = False
        self._scaler_state: Optional[Dict[str, Any]] = None

    def before_fit(self, learn) -> None:
        if self.dtype == "fp16":
            if needs_closure(learn.opt):
                raise ValueError("amp='fp16' cannot drive an optimizer that needs a closure (LBFGS): torch's "
                                 "GradScaler takes no closure; use amp='bf16' or amp=None")
            if self.scaler is None:
                kw = {} if self.init_scale is None else {"init_scale": float(self.init_scale)}
                self.scaler = torch.amp.GradScaler(learn.device.type, **kw)
                if self._scaler_state is not None:
                    self.scaler.load_state_dict(self._scaler_state)
            learn.scaler = self.scaler

    def before_batch(self, learn) -> None:
        self._exit()
        self._scaled_backward = False
        self._ctx = torch.autocast(device_type=learn.device.type, dtype=AMP_DTYPES[self.dtype])
        self._ctx.__enter__()

    def after_loss(self, learn) -> None:
        self._exit()
        if learn.training and self.scaler is not None:
            self.scaler.scale(learn.loss_grad).backward()
            self.scaler.unscale_(learn.opt)
            self._scaled_backward = True
            raise CancelBackwardException()

    def after_backward(self, learn) -> None:
        if self._scaled_backward:
            self.scaler.step(learn.opt)
            self.scaler.update()
            raise CancelStepException()

    def after_batch(self, learn) -> None:
        self._exit()

    def cleanup_fit(self, learn) -> None:
        self._exit()
        learn.scaler = None

    def _exit(self) -> None:
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            ctx.__exit__(None, None, None)

    def state_dict(self) -> Dict[str, Any]:
        """The GradScaler's state (scale, growth tracker), for checkpoints."""
        return {"dtype": self.dtype, "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""
        if state.get("scaler"):
            if self.scaler is not None:
                self.scaler.load_state_dict(state["scaler"])
            else:
                self._scaler_state = state["scaler"]
