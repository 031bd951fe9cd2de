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
only when recorded (every `record_every` batches, default once per epoch)."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..checks import check_bool, check_float, check_int
from ..core import Callback
from ..plots import finish_figure, new_figure

__all__ = ["LARS", "default_lars_exclude"]


def default_lars_exclude(name: str, param: nn.Parameter) -> bool:
    """Biases and normalisation parameters (any 0- or 1-dimensional tensor) are left out of LARS."""
    return param.ndim <= 1 or name.endswith(".bias")


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
    last batch of each epoch) for ``learn.sched.plot_lars()``."""

    order = 10  # in after_backward, before callbacks that step the optimizer themselves
    state_key = "lars"

    def __init__(self, trust_coef: float = 0.001, eps: float = 1e-8, clip: bool = False,
                 exclude: Union[Callable[[str, nn.Parameter], bool], Sequence[str], None] = None,
                 record_every: Optional[int] = None):
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
        self._opt = learn.opt
        named = dict((id(p), n) for n, p in learn.saved_model.named_parameters())
        self._groups = []
        self.names = []
        for g in learn.opt.param_groups:
            inc = [p for p in g["params"] if not self.exclude(named.get(id(p), ""), p)]
            exc = [p for p in g["params"] if self.exclude(named.get(id(p), ""), p)]
            self._groups.append((g, inc, exc))
            self.names += [named.get(id(p), f"param{len(self.names)}") for p in inc]

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
        for g, _, _ in self._groups:
            if id(g) in self._saved_wd:
                g["weight_decay"] = self._saved_wd.pop(id(g))

    def after_batch(self, learn) -> None:
        self.after_step(learn)  # restore weight decay also when the step was skipped
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
        ax.set_ylabel("LARS trust ratio" + (" (clipped: min(ratio/lr, 1))" if self.clip else ""))
        return finish_figure(fig)

    def state_dict(self):
        """The recorded ratios (for checkpoints)."""
        self._read_back()
        return {"iterations": list(self.iterations), "history": [list(h) for h in self.history]}

    def load_state_dict(self, state) -> None:
        """Restore what `state_dict` saved."""
        self.iterations, self.history = list(state["iterations"]), [list(h) for h in state["history"]]
