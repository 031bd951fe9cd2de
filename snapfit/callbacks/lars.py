"""LARS: layer-wise adaptive rate scaling (You, Gitman, Ginsburg 2017, "Large Batch Training of
Convolutional Networks"), as a callback over any optimizer.

For every parameter tensor w with gradient g in a group with weight decay wd and learning rate lr:

    ratio = trust_coef * ||w|| / (||g|| + wd * ||w|| + eps)      (1 when ||w|| or ||g|| is 0)
    clip=True (LARC):  ratio = min(ratio / lr, 1)
    g <- (g + wd * w) * ratio

and the group's own weight decay is switched off for the optimizer step (it is folded in above), so
momentum SGD performs the paper's update ``v <- m v + lr * ratio * (g + wd w); w <- w - v``. Excluded
tensors (biases and normalisation parameters by default) keep the plain update ``g + wd * w``. All
norms are computed with ``torch._foreach_norm`` on the device: no host sync; the ratios are read back
only when recorded (every `record_every` batches, default once per epoch).

Applying the ratios (`fused`, on by default for CUDA gradients) takes a constant number of kernels whatever the
number of tensors: the group's gradients (and weights, for the decay) are concatenated into one flat buffer,
multiplied by the ratios repeated over each tensor's elements (``repeat_interleave``), and copied back with one
grouped ``_foreach_copy_``. Per-tensor scaling (``fused=False``, the CPU default, where a kernel costs no launch
but the flat buffer costs memory passes) multiplies each gradient by its ratio.

LARS is defined for SGD. An adaptive optimizer (Adam, AdamW, RMSprop, Adagrad, ... : anything with
per-element second moments or ``betas``) divides each gradient element by its own running scale, which
undoes a per-tensor gradient scale, and folding weight decay into the gradient would turn AdamW's decoupled
decay into L2; so LARS refuses them. `LAMB` (You et al. 2019, "Large Batch Optimization for Deep Learning")
is the layer-wise rule for those: it rescales the optimizer's *update* u of each included tensor instead,

    w <- w - lr * (||w|| / ||u||) * u        (u = the step the optimizer took, divided by lr; ratio 1 when
                                              ||w|| or ||u|| is 0; clip=True: the ratio is at most 1)

so with AdamW, u = m_hat / (sqrt(v_hat) + eps) + wd * w, exactly the paper's update."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..checks import check_bool, check_float, check_int
from ..core import Callback
from ..optim import needs_closure
from ..plots import finish_figure, new_figure

__all__ = ["LARS", "LAMB", "default_lars_exclude", "is_adaptive"]


def default_lars_exclude(name: str, param: nn.Parameter) -> bool:
    """Biases and normalisation parameters (any 0- or 1-dimensional tensor) are left out of LARS."""
    return param.ndim <= 1 or name.endswith(".bias")


_ADAPTIVE = tuple(getattr(torch.optim, n) for n in ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop",
                                                    "Adagrad", "Adadelta", "SparseAdam") if hasattr(torch.optim, n))


def is_adaptive(opt: torch.optim.Optimizer) -> bool:
    """True for optimizers that scale each gradient element by its own running statistics (torch's Adam family,
    RMSprop, Adagrad, Adadelta, or any optimizer whose param groups have ``betas``)."""
    return isinstance(opt, _ADAPTIVE) or any("betas" in g for g in opt.param_groups)


def _exclusion(exclude) -> Callable[[str, nn.Parameter], bool]:
    if exclude is None:
        return default_lars_exclude
    if callable(exclude):
        return exclude
    names = list(exclude) if isinstance(exclude, (list, tuple, set, frozenset)) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise TypeError(f"exclude must be a function exclude(name, param) -> bool or a list of parameter names, "
                        f"got {exclude!r}")
    names = frozenset(names)
    return lambda name, param: name in names


class LARS(Callback):
    """Scale each layer's update by its trust ratio (see the module docstring). `exclude` picks the tensors
    left out: a function ``exclude(name, param) -> bool`` or a list of parameter names (default: biases and
    1-d tensors). The ratios of the included tensors are recorded every `record_every` batches (None: at the
    last batch of each epoch) for ``learn.sched.plot_lars()``. `fused`: apply the ratios through one flat buffer
    (a constant number of kernels; default: for CUDA gradients)."""

    order = 10  # in after_backward, before callbacks that step the optimizer themselves
    state_key = "lars"
    _clip_label = " (clipped: min(ratio/lr, 1))"

    def __init__(self, trust_coef: float = 0.001, eps: float = 1e-8, clip: bool = False,
                 exclude: Union[Callable[[str, nn.Parameter], bool], Sequence[str], None] = None,
                 record_every: Optional[int] = None, fused: Optional[bool] = None):
        if fused is not None and not isinstance(fused, bool):
            raise ValueError(f"fused must be True, False or None (fused for CUDA gradients), got {fused!r}")
        self.fused = fused  # None: fused for CUDA gradients (launch-bound), per tensor on the CPU
        self._counts: Dict[tuple, torch.Tensor] = {}  # (device, numels) -> the numels as a device tensor
        self.trust_coef = check_float("trust_coef", trust_coef, what="> 0 and finite (the trust coefficient)")
        if self.trust_coef == 0:
            raise ValueError(f"trust_coef must be > 0 and finite (the trust coefficient), got {trust_coef!r}")
        self.eps = check_float("eps", eps, what="a finite number >= 0 (added to the norms' denominator)")
        self.clip = check_bool("clip", clip)
        if record_every is not None:
            check_int("record_every", record_every, what="a positive int or None (once per epoch)")
        self.exclude = _exclusion(exclude)
        self.record_every = record_every
        self.names: List[str] = []
        self.iterations: List[int] = []
        self.history: List[List[float]] = []
        self._pending: list = []
        self._last: Optional[List[Optional[torch.Tensor]]] = None  # this batch's ratios, until after_batch

    def before_fit(self, learn) -> None:
        self._setup(learn)
        self.iterations, self.history, self._pending, self._last = [], [], [], None
        self._saved_wd: Dict[int, float] = {}

    def _setup(self, learn) -> None:
        """Split each param group of ``learn.opt`` into the tensors LARS adapts and those it leaves out."""
        self._check_optimizer(learn.opt)
        self._opt = learn.opt
        named = dict((id(p), n) for n, p in learn.saved_model.named_parameters())
        self._groups = []
        self.names = []
        for g in learn.opt.param_groups:
            inc = [p for p in g["params"] if not self.exclude(named.get(id(p), ""), p)]
            exc = [p for p in g["params"] if self.exclude(named.get(id(p), ""), p)]
            self._groups.append((g, inc, exc))
            self.names += [named.get(id(p), f"param{len(self.names)}") for p in inc]

    def _check_optimizer(self, opt) -> None:
        if is_adaptive(opt):
            raise ValueError(f"LARS scales each tensor's gradient, which {type(opt).__name__} divides by per-element "
                             "running statistics (undoing the scale), and would turn decoupled weight decay into "
                             "L2: use callbacks=[LAMB()] with an adaptive optimizer, or LARS with SGD")

    def ratios(self, learn) -> List[Optional[torch.Tensor]]:
        """Compute the trust ratio of every included tensor (one device tensor per param group) and fold
        them into the gradients; returns the per-group ratio tensors."""
        out = []
        for g, inc, exc in self._groups:
            wd, lr = float(g.get("weight_decay", 0.0)), float(g["lr"])
            ws = [p.detach() for p in inc if p.grad is not None]
            gs = [p.grad for p in inc if p.grad is not None]
            if ws:
                w_norm = torch.stack(torch._foreach_norm(ws))
                g_norm = torch.stack(torch._foreach_norm(gs))
                ratio = self.trust_coef * w_norm / (g_norm + wd * w_norm + self.eps)
                ratio = torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
                if self.clip:
                    ratio = torch.clamp(ratio / lr, max=1.0) if lr > 0 else torch.ones_like(ratio)
                if self._use_fused(gs):
                    self._apply_flat(gs, ws, wd, ratio)
                else:
                    if wd:
                        torch._foreach_add_(gs, ws, alpha=wd)
                    torch._foreach_mul_(gs, list(ratio.unbind()))
                out.append(ratio)
            else:
                out.append(None)
            ex_w = [p.detach() for p in exc if p.grad is not None]
            if wd and ex_w:
                torch._foreach_add_([p.grad for p in exc if p.grad is not None], ex_w, alpha=wd)
        return out

    def _use_fused(self, gs: List[torch.Tensor]) -> bool:
        fused = gs[0].is_cuda if self.fused is None else self.fused
        return fused and len({(g.device, g.dtype) for g in gs}) == 1

    def _apply_flat(self, gs: List[torch.Tensor], ws: List[torch.Tensor], wd: float, ratio: torch.Tensor) -> None:
        """``g <- (g + wd * w) * ratio`` for every tensor at once: flat buffers, one ``repeat_interleave`` of the
        ratios, one grouped copy back (a constant number of kernels)."""
        numels = tuple(g.numel() for g in gs)
        key = (gs[0].device, numels)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = torch.tensor(numels, device=gs[0].device)
        flat = torch.cat([g.reshape(-1) for g in gs])
        if wd:
            flat.add_(torch.cat([w.reshape(-1) for w in ws]), alpha=wd)
        flat.mul_(torch.repeat_interleave(ratio.to(flat.dtype), counts, output_size=flat.numel()))
        torch._foreach_copy_(gs, [v.view_as(g) for v, g in zip(flat.split(numels), gs)])

    def after_backward(self, learn) -> None:
        if not learn.training:
            return
        if learn.opt is not self._opt:  # a training phase swapped the optimizer
            self._setup(learn)
        self._last = self.ratios(learn)
        for g, _, _ in self._groups:  # weight decay is folded into the gradients: hide it from the step
            if "weight_decay" in g:
                self._saved_wd[id(g)] = g["weight_decay"]
                g["weight_decay"] = 0.0

    def after_step(self, learn) -> None:
        self._restore_weight_decay()

    def _restore_weight_decay(self) -> None:
        for g, _, _ in self._groups:
            if id(g) in self._saved_wd:
                g["weight_decay"] = self._saved_wd.pop(id(g))

    def after_batch(self, learn) -> None:
        self._restore_weight_decay()  # also when the step was skipped
        ratios, self._last = self._last, None
        if ratios is None or not learn.training:
            return
        pos = learn.position
        due = pos.iters_done % self.record_every == 0 if self.record_every else pos.batches_done == pos.epoch_size
        if due:  # kept on the device until the epoch ends
            flat = [r for r in ratios if r is not None]
            self._pending.append((pos.iteration, torch.cat(flat) if flat else None))

    def after_epoch(self, learn) -> None:
        self._read_back()

    def after_fit(self, learn) -> None:
        self._read_back()

    def _read_back(self) -> None:
        for it, r in self._pending:
            if r is not None:
                self.iterations.append(it)
                self.history.append(r.float().cpu().tolist())
        self._pending = []

    def plot(self, ax=None, max_layers: int = 12):
        """Trust ratio of each included tensor against iteration (log scale). Returns the Figure."""
        fig, ax = new_figure(ax)
        h = np.asarray(self.history, dtype=float)
        if h.size:
            idx = np.linspace(0, h.shape[1] - 1, min(max_layers, h.shape[1])).round().astype(int)
            for j in dict.fromkeys(idx):
                ax.plot(self.iterations, h[:, j], "o-", ms=3, label=self.names[j])
            ax.set_yscale("log")
            ax.legend(loc="best", fontsize=7)
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"{type(self).__name__} trust ratio" + (self._clip_label if self.clip else ""))
        return finish_figure(fig)

    def state_dict(self):
        """The recorded ratios (for checkpoints)."""
        self._read_back()
        return {"iterations": list(self.iterations), "history": [list(h) for h in self.history]}

    def load_state_dict(self, state) -> None:
        """Restore what `state_dict` saved."""
        self.iterations, self.history = list(state["iterations"]), [list(h) for h in state["history"]]


class LAMB(LARS):
    """Layer-wise trust ratio applied to the optimizer's update (see the module docstring): after each step,
    every included tensor's step is rescaled to length ``lr * ||w||``. Works over any optimizer (meant for
    Adam/AdamW); the optimizer keeps its own weight decay. `exclude`, `record_every` and ``plot()`` as in
    LARS; `clip=True` caps the ratio at 1; `fused` as in LARS. Keeps a copy of the included weights (one step's
    worth)."""

    state_key = "lamb"
    _clip_label = " (clipped: at most 1)"

    def __init__(self, clip: bool = False, eps: float = 0.0,
                 exclude: Union[Callable[[str, nn.Parameter], bool], Sequence[str], None] = None,
                 record_every: Optional[int] = None, fused: Optional[bool] = None):
        super().__init__(trust_coef=1.0, eps=eps, clip=clip, exclude=exclude, record_every=record_every,
                         fused=fused)
        self._before: List[List[torch.Tensor]] = []
        self._stepping = False  # between after_backward (weights copied) and after_step

    def _check_optimizer(self, opt) -> None:
        pass  # any optimizer: the ratio applies to its update

    def _setup(self, learn) -> None:
        super()._setup(learn)
        if needs_closure(learn.opt):
            raise ValueError(f"LAMB rescales one step per batch; {type(learn.opt).__name__} takes several inside "
                             "its closure: use LAMB with a one-step optimizer such as AdamW")
        self._before = [[torch.empty_like(p) for p in inc] for _, inc, _ in self._groups]

    def after_backward(self, learn) -> None:
        if not learn.training:
            return
        if learn.opt is not self._opt:  # a training phase swapped the optimizer
            self._setup(learn)
        for (_, inc, _), before in zip(self._groups, self._before):
            if inc:
                torch._foreach_copy_(before, [p.detach() for p in inc])
        self._stepping = True

    def after_step(self, learn) -> None:
        if not self._stepping:
            return
        self._stepping = False
        out = []
        for (g, inc, _), before in zip(self._groups, self._before):
            lr = float(g["lr"])
            if not inc:
                out.append(None)
                continue
            ws = [p.detach() for p in inc]
            w_norm = torch.stack(torch._foreach_norm(before))
            torch._foreach_sub_(before, ws)  # before = w_old - w_new = -(step)
            step_norm = torch.stack(torch._foreach_norm(before))
            ratio = lr * w_norm / (step_norm + self.eps) if lr > 0 else torch.ones_like(w_norm)
            ratio = torch.where((w_norm > 0) & (step_norm > 0), ratio, torch.ones_like(ratio))
            if self.clip:
                ratio = torch.clamp(ratio, max=1.0)
            # w_old - ratio * (w_old - w_new) = w_new - (ratio - 1) * (w_old - w_new)
            if self._use_fused(before):
                self._apply_flat(before, ws, 0.0, ratio - 1)
            else:
                torch._foreach_mul_(before, list((ratio - 1).unbind()))
            torch._foreach_sub_(ws, before)
            out.append(ratio)
        self._last = out

    def after_batch(self, learn) -> None:
        self._stepping = False
        super().after_batch(learn)
