"""Vision learners on torchvision architectures, fastai 0.7 style.

``ConvLearner.pretrained(resnet34, data)``: the architecture without its classifier (the body), then a
head of concatenated adaptive average + max pooling, flatten, and BatchNorm-Dropout-Linear blocks to
``data.c`` classes ending in LogSoftmax (trained with nll_loss); on multi-label data in a Sigmoid (binary
cross-entropy), on regression data with no activation (L1). Layer groups: the body split in two, and the
head; the body starts frozen. ImageNet weights come from a local file (`weights=`) or torch's hub cache when they are
already there: snapfit never downloads.
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .data.core import DataBunch
from .io import atomic_save, load_file, load_state, unwrap_model
from .learner import Learner
from .metrics import accuracy, accuracy_thresh
from .models.layers import AdaptiveConcatPool2d
from .predict import evaluating

__all__ = ["ConvLearner", "AdaptiveConcatPool2d", "build_body", "pretrained_weights_file", "head_for"]


def _arch_name(arch) -> str:
    return getattr(arch, "__name__", type(arch).__name__)


# family prefix -> (how to take the body, index splitting it into two layer groups; None = the middle)
_FAMILIES = {
    "resnet": ("children[:-2]", 6), "resnext": ("children[:-2]", 6), "wide_resnet": ("children[:-2]", 6),
    "densenet": ("features+relu", 7), "vgg": ("features", None), "mobilenet": ("features", None),
    "efficientnet": ("features", None), "convnext": ("features", None), "squeezenet": ("features", None),
    "regnet": ("stem+trunk", 1),
}


def _family(name: str) -> Optional[str]:
    return next((f for f in sorted(_FAMILIES, key=len, reverse=True) if name.startswith(f)), None)


def build_body(arch, model: nn.Module) -> Tuple[nn.Sequential, int]:
    """The convolutional body of a torchvision `model` built by `arch`, and the index where it is split
    into two layer groups."""
    name = _arch_name(arch)
    fam = _family(name)
    if fam is None:
        raise ValueError(f"ConvLearner does not know how to cut {name!r}; supported families: "
                         f"{sorted(_FAMILIES)} (torchvision builders such as resnet34, densenet121, vgg16_bn)")
    how, cut = _FAMILIES[fam]
    if how == "children[:-2]":
        layers = list(model.children())[:-2]
    elif how == "features+relu":
        layers = list(model.features.children()) + [nn.ReLU(inplace=True)]
    elif how == "features":
        layers = list(model.features.children())
    else:  # regnet
        layers = [model.stem, *model.trunk_output.children()]
    body = nn.Sequential(*layers)
    return body, (cut if cut is not None else len(layers) // 2)


def pretrained_weights_file(arch) -> Tuple[Path, str]:
    """Where torch's hub cache keeps `arch`'s default ImageNet weights, and the URL they come from."""
    from torchvision.models import get_model_weights

    try:
        url = get_model_weights(arch).DEFAULT.url
    except Exception as e:  # not a torchvision builder
        raise ValueError(f"no known pretrained weights for {_arch_name(arch)!r}; pass weights='file.pth' or "
                         "pretrained=False") from e
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


def _load_pretrained(arch, model: nn.Module, weights, body: nn.Module) -> None:
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
    else:
        path, url = pretrained_weights_file(arch)
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained=True needs the ImageNet weights of {_arch_name(arch)} and snapfit never downloads: "
                f"put the file {path.name} (from {url}) at {path}, or pass weights='path/to/{path.name}', or "
                f"use pretrained=False to train from scratch")
    state = load_file(path, map_location="cpu")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if isinstance(state, dict):  # the classifier is replaced by snapfit's head: its size (classes) may differ
        in_body = {id(t) for t in body.state_dict(keep_vars=True).values()}
        own = model.state_dict(keep_vars=True)
        state = dict(state, **{k: t.detach() for k, t in own.items() if id(t) not in in_body})
    load_state(model, state, source=str(path))


def head_for(data) -> Tuple[Optional[nn.Module], nn.Module, list]:
    """The last activation, the loss and the default metrics for `data`'s kind of target (fastai 0.7):
    LogSoftmax + nll_loss + accuracy (classes), Sigmoid + binary cross-entropy + accuracy_thresh(0.5)
    (multi-label), nothing + L1 (regression)."""
    if getattr(data, "is_reg", False):
        return None, nn.L1Loss(), []
    if getattr(data, "is_multi", False):
        return nn.Sigmoid(), nn.BCELoss(), [accuracy_thresh(0.5)]
    return nn.LogSoftmax(dim=1), nn.NLLLoss(), [accuracy]


def _fc_layers(nf: int, c: int, xtra_fc: Sequence[int], ps: Sequence[float],
               last: Optional[nn.Module] = None) -> List[nn.Module]:
    layers, ni = [], nf
    for i, n in enumerate(list(xtra_fc) + [c]):
        layers.append(nn.BatchNorm1d(ni))
        if ps[i]:
            layers.append(nn.Dropout(ps[i]))
        layers.append(nn.Linear(ni, n))
        if i < len(xtra_fc):
            layers.append(nn.ReLU(inplace=True))
        ni = n
    if last is not None:
        layers.append(last)
    for m in layers:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)
    return layers


class ConvLearner(Learner):
    """A Learner whose model is ``nn.Sequential(body, head)``: build it with `ConvLearner.pretrained`.
    ``precompute=True`` trains the head on cached activations of the frozen body."""

    def __init__(self, model: nn.Sequential, data, arch_name: str, lr_cut: int, precompute: bool = False,
                 **kwargs):
        body, head = model[0], model[1]
        _, loss, metrics = head_for(data)
        kwargs.setdefault("metrics", metrics)
        kwargs.setdefault("loss_func", loss)
        groups = [body[:lr_cut], body[lr_cut:], head]
        super().__init__(model, data, layer_groups=groups, **kwargs)
        self.arch_name, self.full_model, self.image_data = arch_name, self.model, data
        self._precompute = False
        self.freeze()
        self.precompute = precompute

    @classmethod
    def pretrained(cls, arch: Callable, data, ps: Union[float, Sequence[float], None] = None,
                   xtra_fc: Optional[Sequence[int]] = None, pretrained: bool = True, weights=None,
                   precompute: bool = False, **kwargs) -> "ConvLearner":
        """`arch` (a torchvision builder: resnet18/34/50, densenet121, vgg16_bn, ...) with its classifier
        replaced by snapfit's head for ``data.c`` classes, body frozen. `xtra_fc` are hidden layer sizes
        (default [512]); `ps` the dropout of each head layer (default 0.25 for hidden, 0.5 for the last);
        `weights` a local file of the architecture's weights (else torch's hub cache), `pretrained=False`
        for random weights."""
        if not callable(arch):
            raise TypeError(f"arch must be a torchvision model builder such as torchvision.models.resnet34, "
                            f"got {arch!r}")
        if getattr(data, "c", None) is None:
            raise ValueError("data must know its number of classes (data.c): use ImageClassifierData")
        model = arch(weights=None)
        body, lr_cut = build_body(arch, model)
        if pretrained or weights is not None:
            _load_pretrained(arch, model, weights, body)
        with evaluating(body):
            nf = body(torch.zeros(1, 3, 64, 64)).shape[1] * 2
        xtra_fc = [512] if xtra_fc is None else list(xtra_fc)
        if ps is None:
            ps = [0.25] * len(xtra_fc) + [0.5]
        elif isinstance(ps, (int, float)):
            ps = [float(ps)] * (len(xtra_fc) + 1)
        if len(ps) != len(xtra_fc) + 1:
            raise ValueError(f"ps needs one dropout per head layer ({len(xtra_fc) + 1}), got {list(ps)}")
        last = head_for(data)[0]
        head = nn.Sequential(AdaptiveConcatPool2d(), nn.Flatten(), *_fc_layers(nf, data.c, xtra_fc, ps, last))
        return cls(nn.Sequential(body, head), data, _arch_name(arch), lr_cut, precompute=precompute, **kwargs)

    @classmethod
    def from_model_data(cls, model: nn.Module, data, **kwargs) -> Learner:
        """Any `nn.Module` on `data` (fastai 0.7's ``ConvLearner.from_model_data``): a custom model has no pretrained
        body to freeze or precompute, so this is `Learner.from_model_data`, unfrozen, with the loss for the data."""
        return Learner.from_model_data(model, data, **kwargs)

    def set_data(self, data) -> None:
        """Train later fits on `data` (progressive resizing): the body is frozen again (fastai 0.7), and with
        precompute on the activations are computed for the new images. The classes must match the head's."""
        old = self.image_data
        if getattr(data, "c", None) != old.c or bool(getattr(data, "is_multi", False)) != bool(old.is_multi) \
                or bool(getattr(data, "is_reg", False)) != bool(old.is_reg):
            raise ValueError(f"set_data needs data of the same kind and number of classes as the head "
                             f"(c={old.c}), got c={getattr(data, 'c', None)}: build a new learner for other classes "
                             "(ConvLearner.pretrained(arch, data)), or load these weights into it")
        with self._on_images():  # precompute, if on, comes back with the new images' activations
            super().set_data(data)
            self.image_data = self.data
            self.freeze()

    # ------------------------------------------------------------------ weights
    @property
    def saved_model(self) -> nn.Module:
        """The whole network (body and head), also while training on precomputed activations."""
        return unwrap_model(self.full_model)

    @property
    def body(self) -> nn.Module:
        """The convolutional body."""
        return self.full_model[0]

    @property
    def head(self) -> nn.Module:
        """Pooling and fully connected layers."""
        return self.full_model[1]

    def load(self, name: str, allow_nonfinite: bool = False) -> "ConvLearner":
        """As `Learner.load`; with precompute on, the activations follow the loaded body (recomputed or read from
        their cache), so no prediction uses a body that is no longer there."""
        super().load(name, allow_nonfinite)
        return self._refresh_activations()

    def load_cycle(self, name: str, cycle: int, allow_nonfinite: bool = False) -> "ConvLearner":
        """As `Learner.load_cycle`, with the activations following the loaded body (see `load`)."""
        super().load_cycle(name, cycle, allow_nonfinite)
        return self._refresh_activations()

    def _refresh_activations(self) -> "ConvLearner":
        if self._precompute:
            self.data = self._activation_data()
        return self

    # ------------------------------------------------------------------ freezing
    def freeze_to(self, n: int) -> None:
        """As `Learner.freeze_to`; with precompute on, the body must stay frozen."""
        n_groups = len(self.layer_groups)
        if self._precompute and isinstance(n, int) and (n % n_groups if n < 0 else n) < n_groups - 1:
            raise ValueError("precompute is on: the head trains on cached activations of the frozen body, so "
                             "the body cannot be unfrozen. Set learn.precompute = False first")
        super().freeze_to(n)

    # ------------------------------------------------------------------ precompute
    @property
    def precompute(self) -> bool:
        """True: train the head on the frozen body's cached activations (no augmentation); False: full model."""
        return self._precompute

    @precompute.setter
    def precompute(self, value: bool) -> None:
        value = bool(value)
        if value == self._precompute:
            return
        if value:
            if self.frozen_groups != list(range(len(self.layer_groups) - 1)):
                raise ValueError("precompute needs the body frozen (learn.freeze()): its activations are cached once")
            self.data = self._activation_data()
            self.model = self.head[2:]
        else:
            self.data, self.model = self.image_data, self.full_model
        self._precompute = value

    def _cache_file(self, split: str, digest: str) -> Path:
        return self.path / "tmp" / f"{self.arch_name}_{digest[:16]}_{split}.pt"

    def _body_digest(self) -> str:
        h = hashlib.sha1(self.arch_name.encode())
        h.update(self.image_data.fingerprint().encode())
        for k, v in self.body.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def activations(self, dl) -> torch.Tensor:
        """Pooled, flattened activations of the frozen body over `dl` (eval mode), on the CPU."""
        out = []
        with evaluating(nn.Sequential(self.body, self.head[0], self.head[1])) as feats:
            for batch in dl:
                xb, _ = self.to_device(batch)
                out.append(feats(*xb).float())
        return torch.cat(out).cpu()

    def _activation_data(self) -> DataBunch:
        """A DataBunch of cached activations (computed once per arch, body weights and data; kept under
        ``{path}/tmp/``) with the image data's labels and training order."""
        data = self.image_data
        digest = self._body_digest()
        splits = {"trn": (data.fix_dl, data.trn_ds), "val": (data.val_dl, data.val_ds)}
        if data.test_dl is not None:
            splits["test"] = (data.test_dl, data.test_ds)
        acts = {}
        for split, (dl, ds) in splits.items():
            f = self._cache_file(split, digest)
            if f.is_file():
                acts[split] = load_file(f)["act"]
            else:
                acts[split] = self.activations(dl)
                if self.is_main_process:
                    atomic_save({"act": acts[split], "y": ds.labels.clone()}, f)
        return DataBunch.from_arrays(
            acts["trn"], data.trn_ds.labels, acts["val"], data.val_ds.labels, bs=data.bs, seed=data.seed,
            x_test=acts.get("test"), classes=data.classes, num_workers=0)

    # ------------------------------------------------------------------ predictions
    @contextlib.contextmanager
    def _on_images(self):
        """Run on the full model and the images, precompute or not (snapshots may hold another body)."""
        pre = self._precompute
        self.precompute = False
        try:
            yield
        finally:
            if pre:
                self.precompute = True

    def predict_array(self, x):
        """As `Learner.predict_array`, always on the full model (also with precompute on): `x` holds images."""
        with self._on_images():
            return super().predict_array(x)

    def TTA(self, n_aug: int = 4, is_test: bool = False):
        """As `Learner.TTA`, always on the full model and the images (also with precompute on)."""
        with self._on_images():
            return super().TTA(n_aug, is_test)

    def predict_snapshots(self, name: str, *args, **kwargs):
        """As `Learner.predict_snapshots`, always on the full model and the images."""
        with self._on_images():
            return super().predict_snapshots(name, *args, **kwargs)

    def average_snapshots(self, name: str, *args, **kwargs):
        """As `Learner.average_snapshots`; BatchNorm statistics are re-estimated on the images."""
        with self._on_images():
            return super().average_snapshots(name, *args, **kwargs)

    def __repr__(self) -> str:
        return (f"ConvLearner({self.arch_name}, device={self.device}, frozen_groups={self.frozen_groups}, "
                f"precompute={self.precompute})")
