"""The pixel-optimisation journey: style transfer with LBFGS through fit, on scikit-learn's photos."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.vgg import cfgs, make_layers

from snapfit.style import (
    VGG16_CONTENT_LAYER,
    VGG16_STYLE_LAYERS,
    RandomMultiScaleNet,
    StyleLoss,
    VGGFeatures,
    gram,
    load_sample_image,
    save_image,
    style_learner,
)


@pytest.fixture(scope="module")
def images():
    return load_sample_image("china.jpg", 48), load_sample_image("flower.jpg", 48)


def test_style_transfer_with_lbfgs_halves_the_loss_and_writes_the_image(images, tmp_path):
    content, style = images
    learn = style_learner(content, style, steps_per_epoch=4, path=tmp_path)
    with torch.no_grad():
        start = learn.loss_func(learn.model.tensor).item()
    learn.fit(1.0, 2)
    with torch.no_grad():
        end = learn.loss_func(learn.model.tensor).item()
    assert end <= 0.5 * start, (start, end)
    assert len(learn.sched.losses) == 8 and learn.sched.losses[0] == pytest.approx(start, rel=1e-5)
    out = save_image(learn.model.tensor, tmp_path / "styled.png")
    img = np.asarray(Image.open(out))
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    assert not np.array_equal(img, (content.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def test_adam_can_be_compared_at_the_same_number_of_evaluations(images, tmp_path):
    content, style = images
    lb = style_learner(content, style, steps_per_epoch=2, path=tmp_path)
    lb.fit(1.0, 1)
    n = lb.loss_func.n_evals
    adam = style_learner(content, style, optimizer="adam", steps_per_epoch=n, path=tmp_path)
    adam.fit(0.02, 1)
    assert adam.loss_func.n_evals == n > 2


def test_gram_and_features():
    f = torch.randn(2, 4, 3, 5)
    g = gram(f)
    torch.testing.assert_close(g[1], f[1].reshape(4, 15) @ f[1].reshape(4, 15).T / 60)
    net = RandomMultiScaleNet(sizes=(3, 7), n_filters=5, seed=1)
    outs = net(torch.rand(1, 3, 16, 16))
    assert [o.shape for o in outs] == [torch.Size([1, 5, 16, 16])] * 2
    assert not any(p.requires_grad for p in net.parameters())
    assert torch.equal(RandomMultiScaleNet(seed=1).convs[0].weight, RandomMultiScaleNet(seed=1).convs[0].weight)


def test_vgg_features_from_a_local_file(tmp_path, images):
    torch.manual_seed(0)
    feats = make_layers(cfgs["D"])
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, tmp_path / "vgg16.pth")
    vgg = VGGFeatures(tmp_path / "vgg16.pth")
    assert torch.equal(vgg.features[0].weight, feats[0].weight)
    outs = vgg(images[0][None])
    assert len(outs) == 6 and outs[vgg.content_layer].shape[1] == 512
    assert vgg.layers == sorted((*VGG16_STYLE_LAYERS, VGG16_CONTENT_LAYER))
    loss = StyleLoss(vgg, *images)
    assert loss(images[0]).item() > 0 and loss.parts(images[0])[0].item() == 0  # content loss of the content
    with pytest.raises(FileNotFoundError, match="VGG16 weights file not found"):
        VGGFeatures(tmp_path / "nope.pth")


def test_style_learner_bad_input(images):
    with pytest.raises(ValueError, match="optimizer must be 'lbfgs' or 'adam'"):
        style_learner(*images, optimizer="sgd")
    with pytest.raises(ValueError, match=r"content must be an image tensor shaped \(3, H, W\)"):
        style_learner(images[0][0], images[1])
