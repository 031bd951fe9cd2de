"""Neural style transfer by optimising pixels (Gatys, Ecker, Bethge 2016) through ``learn.fit``.

The "model" is the image itself (a `TensorModel`), the data one fixed empty batch per step, the loss
``content_weight * MSE(features(img), features(content)) + style_weight * sum_l MSE(G_l(img), G_l(style))``
with Gram matrices ``G = F F^T / (C H W)``, and the optimizer ``torch.optim.LBFGS`` (a closure
optimizer, driven by the normal fit loop). Features come from VGG16 when the user gives a local weights
file, else from a random-weight multi-scale conv net: random filters already give good texture
statistics (Ustyuzhaninov, Brendel, Gatys, Bethge 2016), and no download is ever needed."""
from __future__ import annotations

import io
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.core import DataBunch
from .data.transforms import imagenet_stats
from .distributed import default_device
from .io import atomic_write_bytes, load_file
from .learner import Learner
from .models.tensor import TensorModel

__all__ = ["load_sample_image", "RandomMultiScaleNet", "VGGFeatures", "gram", "StyleLoss", "style_learner",
           "save_image", "VGG16_STYLE_LAYERS", "VGG16_CONTENT_LAYER"]

#: Indices in torchvision's ``vgg16().features`` of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 ...
VGG16_STYLE_LAYERS = (1, 6, 11, 18, 25)
#: ... and of relu4_2, the content layer of Gatys et al.
VGG16_CONTENT_LAYER = 20


def load_sample_image(name: str = "china.jpg", size: int = 128) -> torch.Tensor:
    """One of scikit-learn's bundled photos (``'china.jpg'``, ``'flower.jpg'``) as a (3, size, size) float
    tensor in [0, 1]: short side resized to `size`, centre crop. No download."""
    from PIL import Image
    from sklearn.datasets import load_sample_image as sk_load

    img = Image.fromarray(sk_load(name))
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1).contiguous()


class RandomMultiScaleNet(nn.Module):
    """One layer of random conv filters at several sizes followed by ReLU, one feature map per size
    (Ustyuzhaninov et al. 2016). Weights are fixed by `seed` and never trained."""

    def __init__(self, sizes: Sequence[int] = (3, 5, 7, 11), n_filters: int = 32, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList()
        for k in sizes:
            conv = nn.Conv2d(3, n_filters, k, padding=k // 2)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / (3 * k * k) ** 0.5)
                conv.bias.zero_()
            self.convs.append(conv)
        for p in self.parameters():
            p.requires_grad_(False)
        self.style_layers = tuple(range(len(sizes)))
        self.content_layer = 0

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = x - 0.5
        return [F.relu(c(x)) for c in self.convs]


class VGGFeatures(nn.Module):
    """VGG16's convolutional layers with weights from a local file (a torchvision ``vgg16`` state dict,
    or one of its ``features`` only); returns the activations after the layers in `layers`."""

    def __init__(self, weights: Union[str, Path], layers: Sequence[int] = (*VGG16_STYLE_LAYERS, VGG16_CONTENT_LAYER)):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"VGG16 weights file not found: {path} (snapfit never downloads; without "
                                    "weights= style transfer uses a random multi-scale net)")
        self.features = make_layers(cfgs["D"])
        state = load_file(path, map_location="cpu")
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")} or state
        missing, unexpected = self.features.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path} is not a VGG16 state dict: missing {list(missing)[:3]}, "
                             f"unexpected {list(unexpected)[:3]}")
        self.features.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        self.layers = sorted(set(layers))
        self.style_layers = tuple(self.layers.index(i) for i in VGG16_STYLE_LAYERS if i in self.layers)
        self.content_layer = self.layers.index(VGG16_CONTENT_LAYER) if VGG16_CONTENT_LAYER in self.layers else -1
        self.register_buffer("mean", torch.tensor(imagenet_stats[0]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(imagenet_stats[1]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = (x - self.mean) / self.std
        out, last = [], max(self.layers)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.layers:
                out.append(x)
            if i == last:
                break
        return out


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix of feature maps (B, C, H, W) -> (B, C, C), divided by C*H*W."""
    b, c, h, w = f.shape
    f = f.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


class StyleLoss(nn.Module):
    """``content_weight * MSE(content features) + style_weight * sum of MSE(Gram matrices)``, with the
    targets computed once. `n_evals` counts the evaluations (to compare optimizers fairly)."""

    def __init__(self, features: nn.Module, content: torch.Tensor, style: torch.Tensor,
                 content_weight: float = 10.0, style_weight: float = 1e6):
        super().__init__()
        self.features, self.content_weight, self.style_weight = features, content_weight, style_weight
        with torch.no_grad():
            fc, fs = features(content[None]), features(style[None])
        self.content_target = fc[features.content_layer].detach()
        self.style_targets = [gram(fs[i]).detach() for i in features.style_layers]
        self.n_evals = 0

    def parts(self, img: torch.Tensor):
        """(content loss, style loss) of an image (3, H, W) or a batch of one."""
        feats = self.features(img if img.ndim == 4 else img[None])
        content = F.mse_loss(feats[self.features.content_layer], self.content_target)
        style = sum(F.mse_loss(gram(feats[i]), t) for i, t in zip(self.features.style_layers, self.style_targets))
        return content, style

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        self.n_evals += 1
        content, style = self.parts(img)
        return self.content_weight * content + self.style_weight * style


def style_learner(content: torch.Tensor, style: torch.Tensor, weights: Optional[Union[str, Path]] = None,
                  optimizer: str = "lbfgs", steps_per_epoch: int = 10, init: str = "content",
                  content_weight: float = 10.0, style_weight: float = 1e6, max_iter: int = 20,
                  device=None, path=".", seed: int = 0, **kwargs) -> Learner:
    """A Learner whose model is the image being optimised: ``learn.fit(1.0, n)`` runs
    ``n * steps_per_epoch`` optimizer steps (each LBFGS step evaluates the loss up to ``1.25 * max_iter``
    times). `optimizer` is ``'lbfgs'`` or ``'adam'``; `init` starts from the content image or from noise.
    The loss is ``learn.loss_func`` (a `StyleLoss`); the image is ``learn.model.tensor``."""
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
    if init not in ("content", "noise"):
        raise ValueError(f"init must be 'content' or 'noise', got {init!r}")
    for name, t in (("content", content), ("style", style)):
        if not torch.is_tensor(t) or t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"{name} must be an image tensor shaped (3, H, W), got "
                             f"{tuple(t.shape) if torch.is_tensor(t) else type(t).__name__}")
    features = VGGFeatures(weights) if weights is not None else RandomMultiScaleNet(seed=seed)
    dev = torch.device(device) if device is not None else default_device()
    features, content, style = features.to(dev), content.to(dev), style.to(dev)
    loss = StyleLoss(features, content, style, content_weight, style_weight)
    g = torch.Generator().manual_seed(seed)
    start = content.clone() if init == "content" else torch.rand(content.shape, generator=g).to(dev)
    if optimizer == "lbfgs":
        opt_func = lambda groups: torch.optim.LBFGS(groups, max_iter=max_iter, history_size=50)  # noqa: E731
    else:
        opt_func = lambda groups: torch.optim.Adam(groups)  # noqa: E731
    kwargs.setdefault("progress", False)
    return Learner(TensorModel(start), DataBunch.fixed((), steps_per_epoch), loss_func=loss, opt_func=opt_func,
                   path=path, device=dev, **kwargs)


def save_image(img: torch.Tensor, path: Union[str, Path]) -> Path:
    """Write an image tensor (3, H, W) in [0, 1] (values are clipped) as a PNG, atomically."""
    from PIL import Image

    arr = (img.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return atomic_write_bytes(buf.getvalue(), path)
