"""ConvLearner: torchvision bodies, snapfit's head, local pretrained weights, precompute, TTA."""
import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import densenet121, mobilenet_v2, resnet18

from snapfit import ConvLearner, ImageClassifierData, accuracy_np, tfms_from_model, transforms_basic
from snapfit.conv_learner import AdaptiveConcatPool2d, pretrained_weights_file
from snapfit.data import export_digits_images


@pytest.fixture(scope="module")
def digit_data(tmp_path_factory):
    root = export_digits_images(tmp_path_factory.mktemp("digits"), scale=2, n=240)
    tfms = tfms_from_model(resnet18, 16, aug_tfms=[transforms_basic[0]])
    return ImageClassifierData.from_paths(root, bs=32, tfms=tfms, num_workers=0)


def make(data, tmp_path, **kw):
    torch.manual_seed(0)
    kw.setdefault("pretrained", False)
    return ConvLearner.pretrained(resnet18, data, path=tmp_path, progress=False, device="cpu", **kw)


def test_structure_and_frozen_body(digit_data, tmp_path):
    learn = make(digit_data, tmp_path)
    body, head = learn.model[0], learn.model[1]
    assert isinstance(head[0], AdaptiveConcatPool2d) and isinstance(head[-1], nn.LogSoftmax)
    assert [type(m).__name__ for m in head[1:]] == ["Flatten", "BatchNorm1d", "Dropout", "Linear", "ReLU",
                                                   "BatchNorm1d", "Dropout", "Linear", "LogSoftmax"]
    assert head[2].num_features == 1024 and head[-2].out_features == 10
    assert [m.p for m in head if isinstance(m, nn.Dropout)] == [0.25, 0.5]
    assert len(learn.layer_groups) == 3 and learn.frozen_groups == [0, 1]
    assert not any(p.requires_grad for p in body.parameters()) and all(p.requires_grad for p in head.parameters())
    out = learn.model.eval()(next(iter(digit_data.val_dl))[0])
    torch.testing.assert_close(out.exp().sum(1), torch.ones(len(out)))
    custom = make(digit_data, tmp_path, ps=0.1, xtra_fc=[64, 32])
    assert [m.out_features for m in custom.model[1] if isinstance(m, nn.Linear)] == [64, 32, 10]
    assert [m.p for m in custom.model[1] if isinstance(m, nn.Dropout)] == [0.1] * 3


def test_frozen_body_does_not_change_during_fit(digit_data, tmp_path):
    learn = make(digit_data, tmp_path)
    body = {k: v.clone() for k, v in learn.model[0].state_dict().items()}
    learn.fit(1e-2, 1)
    for k, v in learn.model[0].state_dict().items():
        assert torch.equal(v, body[k]), k  # weights and BatchNorm statistics
    learn.unfreeze()
    learn.fit([1e-4, 1e-3, 1e-2], 1)
    assert not torch.equal(learn.model[0][0].weight, body["0.weight"])


def test_pretrained_weights_from_a_local_file(digit_data, tmp_path):
    torch.manual_seed(5)
    ref = resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    learn = make(digit_data, tmp_path, weights=tmp_path / "r18.pth")
    torch.testing.assert_close(learn.model[0][0].weight, ref.conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(learn.model[0][7][1].bn2.running_var, ref.layer4[1].bn2.running_var, rtol=0, atol=0)


def test_pretrained_without_a_local_file_says_what_to_do(digit_data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path, url = pretrained_weights_file(resnet18)
    assert path == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(FileNotFoundError, match=r"never downloads: put the file resnet18-f37072fd\.pth \(from "
                                                r"https://download\.pytorch\.org/models/resnet18-f37072fd\.pth\) at "
                                                + str(path).replace(".", r"\.")):
        ConvLearner.pretrained(resnet18, digit_data)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        ConvLearner.pretrained(resnet18, digit_data, weights=tmp_path / "nope.pth")
    # a file in the hub cache is used without being asked for
    path.parent.mkdir(parents=True)
    torch.manual_seed(9)
    ref = resnet18(weights=None)
    torch.save(ref.state_dict(), path)
    learn = ConvLearner.pretrained(resnet18, digit_data, path=tmp_path, device="cpu")
    assert torch.equal(learn.model[0][0].weight, ref.conv1.weight)


def test_weights_trained_for_other_classes_load_into_the_body(digit_data, tmp_path):
    """Fine-tuning from a network trained on another task: its classifier (fc: 7 classes) is not used."""
    torch.manual_seed(3)
    other = resnet18(num_classes=7)
    torch.save(other.state_dict(), tmp_path / "r18_7.pth")
    learn = make(digit_data, tmp_path, weights=tmp_path / "r18_7.pth")
    torch.testing.assert_close(learn.body[4][0].conv1.weight, other.layer1[0].conv1.weight, rtol=0, atol=0)
    assert learn.head[-2].out_features == 10
    state = other.state_dict()
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"][:, :3]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"shape mismatches: layer1\.0\.conv1\.weight"):
        make(digit_data, tmp_path, weights=tmp_path / "bad.pth")


def test_wrong_weights_file_names_the_keys(digit_data, tmp_path):
    torch.save(mobilenet_v2(weights=None).state_dict(), tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"m\.pth does not match the model \(ResNet\): missing keys: 'conv1\.weight'"):
        make(digit_data, tmp_path, weights=tmp_path / "m.pth")


@pytest.mark.parametrize("arch", [densenet121, mobilenet_v2])
def test_other_architectures(digit_data, tmp_path, arch):
    torch.manual_seed(0)
    learn = ConvLearner.pretrained(arch, digit_data, pretrained=False, path=tmp_path, device="cpu")
    x = torch.randn(4, 3, 32, 32)
    assert learn.model.eval()(x).shape == (4, 10)
    assert len(learn.layer_groups) == 3


def test_unknown_architecture(digit_data):
    def mynet(weights=None):
        return nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="does not know how to cut 'mynet'"):
        ConvLearner.pretrained(mynet, digit_data, pretrained=False)


def test_tta_shape_and_first_slice(digit_data, tmp_path):
    learn = make(digit_data, tmp_path)
    learn.fit(1e-2, 1)
    torch.manual_seed(0)
    log_preds, y = learn.TTA(n_aug=3)
    assert log_preds.shape == (4, 48, 10) and y.shape == (48,)
    np.testing.assert_array_equal(log_preds[0], learn.predict())
    assert not np.allclose(log_preds[1], log_preds[0]), "augmented passes differ"
    probs = np.mean(np.exp(log_preds), 0)
    assert 0 <= accuracy_np(probs, y) <= 1 and np.allclose(probs.sum(1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="n_aug must be an int >= 0"):
        learn.TTA(n_aug=-1)


def test_precompute_matches_the_full_frozen_model(digit_data, tmp_path):
    learn = make(digit_data, tmp_path)
    learn.fit(1e-2, 1)
    full = learn.predict()
    learn.precompute = True
    cached = sorted(p.name for p in (tmp_path / "tmp").iterdir())
    assert len(cached) == 2 and all(n.startswith("resnet18_") for n in cached)
    np.testing.assert_allclose(learn.predict(), full, atol=1e-5, rtol=0)
    head = {k: v.clone() for k, v in learn.model.state_dict().items()}
    learn.fit(1e-2, 2, cycle_len=1, cycle_save_name="pre")
    assert not all(torch.equal(v, head[k]) for k, v in learn.model.state_dict().items())
    on_acts = learn.predict()
    learn.precompute = False
    np.testing.assert_allclose(learn.predict(), on_acts, atol=1e-5, rtol=0)
    # snapshots taken with precompute on hold the whole network
    saved = torch.load(tmp_path / "models" / "pre_cyc_1.pt", weights_only=True)
    assert saved.keys() == learn.model.state_dict().keys()


def test_precompute_and_unfreeze_do_not_mix(digit_data, tmp_path):
    learn = make(digit_data, tmp_path, precompute=True)
    with pytest.raises(ValueError, match=r"precompute is on: .*Set learn.precompute = False first"):
        learn.unfreeze()
    with pytest.raises(ValueError, match="precompute is on"):
        learn.freeze_to(1)
    learn.precompute = False
    learn.unfreeze()
    with pytest.raises(ValueError, match=r"precompute needs the body frozen \(learn.freeze\(\)\)"):
        learn.precompute = True
