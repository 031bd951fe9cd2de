"""`snapfit.summary.summary`: fastai 0.7's ``learn.summary()`` (leaf layers, call order, shapes with -1, params)."""
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from snapfit import DataBunch, Learner, simple_cnn
from snapfit.summary import model_summary, summary
from tests.helpers import small_data, small_model


def digits_data(digits, bs=16):
    x_trn, y_trn, x_val, y_val = digits
    return DataBunch.from_arrays(x_trn, y_trn, x_val, y_val, bs=bs)


def conv_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Sequential(nn.MaxPool2d(2), nn.Flatten()), nn.Linear(36, 10), nn.LogSoftmax(dim=1))


def learner(model, data, tmp_path):
    return Learner(model, data, progress=False, device="cpu", path=tmp_path)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_conv_net_entries_names_shapes_and_params(digits, tmp_path):
    model = conv_net()
    res = summary(learner(model, digits_data(digits), tmp_path), print_table=False)
    assert isinstance(res, OrderedDict)
    assert list(res) == ["Conv2d-1", "BatchNorm2d-2", "ReLU-3", "MaxPool2d-4", "Flatten-5", "Linear-6",
                         "LogSoftmax-7"]
    assert res["Conv2d-1"] == {"input_shape": [-1, 1, 8, 8], "output_shape": [-1, 4, 6, 6], "trainable": True,
                               "nb_params": 4 * 1 * 3 * 3 + 4}
    assert list(res["Conv2d-1"]) == ["input_shape", "output_shape", "trainable", "nb_params"]  # 0.7's key order
    assert res["BatchNorm2d-2"]["nb_params"] == 4 + 4
    assert res["MaxPool2d-4"]["output_shape"] == [-1, 4, 3, 3]
    assert res["Flatten-5"] == {"input_shape": [-1, 4, 3, 3], "output_shape": [-1, 36], "nb_params": 0}
    assert res["Linear-6"] == {"input_shape": [-1, 36], "output_shape": [-1, 10], "trainable": True,
                               "nb_params": 36 * 10 + 10}
    # fastai 0.7: a layer without weights has nb_params 0 and no 'trainable' key
    assert res["ReLU-3"] == {"input_shape": [-1, 4, 6, 6], "output_shape": [-1, 4, 6, 6], "nb_params": 0}
    assert sum(e["nb_params"] for e in res.values()) == n_params(model)


def test_table_prints_layers_and_totals(digits, tmp_path, capsys):
    model = conv_net()
    res = summary(learner(model, digits_data(digits), tmp_path))
    out = capsys.readouterr().out
    total = n_params(model)
    assert total == 40 + 8 + 370
    assert f"Total params: {total:,}" in out and f"Trainable params: {total:,}" in out
    assert "Non-trainable params: 0" in out
    for name in res:
        assert name in out
    row = next(line for line in out.splitlines() if line.startswith("Conv2d-1"))
    assert row.split() == ["Conv2d-1", "[-1,", "4,", "6,", "6]", "40", "True"]
    summary(learner(model, digits_data(digits), tmp_path), print_table=False)
    assert capsys.readouterr().out == ""


def test_frozen_layer_is_not_trainable(digits, tmp_path, capsys):
    model = conv_net()
    for p in model[0].parameters():
        p.requires_grad_(False)
    res = summary(learner(model, digits_data(digits), tmp_path))
    out = capsys.readouterr().out
    assert res["Conv2d-1"]["trainable"] is False and res["Conv2d-1"]["nb_params"] == 40
    assert res["Linear-6"]["trainable"] is True
    total = n_params(model)
    assert f"Total params: {total:,}" in out
    assert f"Trainable params: {total - 40:,}" in out and "Non-trainable params: 40" in out
    row = next(line for line in out.splitlines() if line.startswith("Conv2d-1"))
    assert row.split()[-1] == "False"


def test_simple_cnn_summary(digits, tmp_path):
    model = simple_cnn(10, widths=(8, 16))
    res = summary(learner(model, digits_data(digits), tmp_path), print_table=False)
    assert [k.rsplit("-", 1)[0] for k in res] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU",
                                                  "AdaptiveAvgPool2d", "Flatten", "Linear", "LogSoftmax"]
    assert res["Conv2d-1"]["nb_params"] == 8 * 1 * 3 * 3  # bias=False
    assert res["Conv2d-4"]["output_shape"] == [-1, 16, 4, 4]
    assert res["LogSoftmax-10"]["output_shape"] == [-1, 10]
    assert sum(e["nb_params"] for e in res.values()) == n_params(model)


def test_plain_sequential_and_a_model_that_is_one_layer(tmp_path):
    res = summary(learner(small_model(), small_data(bs=8), tmp_path), print_table=False)
    assert list(res) == ["Linear-1", "ReLU-2", "Linear-3"]
    assert res["Linear-1"]["input_shape"] == [-1, 6] and res["Linear-3"]["output_shape"] == [-1, 3]
    res = summary(learner(nn.Linear(6, 3), small_data(bs=8), tmp_path), print_table=False)
    assert res == {"Linear-1": {"input_shape": [-1, 6], "output_shape": [-1, 3], "trainable": True, "nb_params": 21}}


def test_resnet18_summary(tmp_path, capsys):
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    x, y = torch.rand(12, 3, 32, 32), torch.randint(0, 10, (12,))
    res = summary(learner(model, DataBunch.from_arrays(x[:8], y[:8], x[8:], y[8:], bs=4), tmp_path))
    # stem: conv, bn, relu, maxpool (4); 8 BasicBlocks: conv, bn, relu, conv, bn, relu (the same ReLU twice) (6 each),
    # 3 of them with a downsample conv + bn (2 each); then avgpool and fc (2): 4 + 48 + 6 + 2 = 60
    assert len(res) == 60
    assert list(res)[:5] == ["Conv2d-1", "BatchNorm2d-2", "ReLU-3", "MaxPool2d-4", "Conv2d-5"]
    assert list(res)[-2:] == ["AdaptiveAvgPool2d-59", "Linear-60"]
    assert res["Conv2d-1"]["input_shape"] == [-1, 3, 32, 32] and res["Conv2d-1"]["output_shape"] == [-1, 64, 16, 16]
    assert res["AdaptiveAvgPool2d-59"]["output_shape"] == [-1, 512, 1, 1]
    assert res["Linear-60"] == {"input_shape": [-1, 512], "output_shape": [-1, 10], "trainable": True,
                                "nb_params": 5130}
    total = n_params(model)
    assert total == 11_181_642
    assert sum(e["nb_params"] for e in res.values()) == total  # every parameterised layer runs once
    assert f"Total params: {total:,}" in capsys.readouterr().out
    assert no_hooks(model)


class Twice(nn.Module):
    """One ReLU called twice, two Linear layers sharing a weight."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.act = nn.Linear(6, 6), nn.Linear(6, 6), nn.ReLU()
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.act(self.b(self.act(self.a(x))))


def test_layer_called_twice_gets_two_entries_and_shared_params_count_once(tmp_path, capsys):
    model = Twice()
    res = summary(learner(model, small_data(bs=8), tmp_path))
    assert list(res) == ["Linear-1", "ReLU-2", "Linear-3", "ReLU-4"]
    assert res["Linear-3"]["nb_params"] == 42  # the layer's own parameters, shared or not
    assert n_params(model) == 36 + 6 + 6
    out = capsys.readouterr().out
    assert "Total params: 48" in out and "Trainable params: 48" in out


class Pair(nn.Module):
    """A leaf returning a tuple: fastai 0.7 lists each output's shape."""

    def forward(self, x, y):
        return x * 2, y.sum(1)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.pair, self.lin = Pair(), nn.Linear(4, 2)

    def forward(self, x, y):
        a, b = self.pair(x, y)
        return self.lin(a) + b


def test_multiple_inputs_and_outputs(tmp_path):
    x, x2, y = torch.randn(8, 4), torch.randn(8, 5, 2), torch.randint(0, 2, (8,))
    data = DataBunch(DataLoader(TensorDataset(x, x2, y), batch_size=4))
    learn = Learner(TwoInputs(), data, loss_func=nn.CrossEntropyLoss(), progress=False, device="cpu",
                    path=tmp_path)
    res = summary(learn, print_table=False)
    assert res["Pair-1"] == {"input_shape": [-1, 4], "output_shape": [[-1, 4], [-1, 2]], "nb_params": 0}
    assert res["Linear-2"]["input_shape"] == [-1, 4]


class Probe(nn.Module):
    """Records the mode and grad state it ran in; raises when `fail`."""

    def __init__(self, fail=False):
        super().__init__()
        self.fail, self.seen = fail, []

    def forward(self, x):
        self.seen.append((self.training, torch.is_grad_enabled()))
        if self.fail:
            raise RuntimeError("probe failed")
        return x


def test_eval_no_grad_modes_restored_hooks_removed(tmp_path):
    probe = Probe()
    model = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), probe, nn.Linear(6, 3))
    model.train()
    model[1].eval()  # a frozen BatchNorm, as FreezeBatchNorm leaves it
    user_hook = model[0].register_forward_hook(lambda m, i, o: None)
    modes = [m.training for m in model.modules()]
    bn_stats = model[1].running_mean.clone()
    learn = learner(model, small_data(bs=8), tmp_path)
    summary(learn, print_table=False)
    assert probe.seen == [(False, False)]  # eval mode, no gradients
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(model[1].running_mean, bn_stats)
    assert list(model[0]._forward_hooks) == [user_hook.id]  # only the user's hook is left
    user_hook.remove()
    assert no_hooks(model)
    model.eval()
    summary(learn, print_table=False)
    assert not any(m.training for m in model.modules())


def test_hooks_removed_and_modes_restored_when_forward_raises(tmp_path):
    model = nn.Sequential(nn.Linear(6, 6), Probe(fail=True), nn.Linear(6, 3)).train()
    with pytest.raises(RuntimeError, match="probe failed"):
        summary(learner(model, small_data(bs=8), tmp_path), print_table=False)
    assert no_hooks(model)
    assert all(m.training for m in model.modules())


def test_global_random_state_is_left_alone(digits, tmp_path):
    learn = learner(conv_net(), digits_data(digits), tmp_path)
    before = torch.get_rng_state()
    summary(learn, print_table=False)
    assert torch.equal(torch.get_rng_state(), before)


def test_first_training_batch_is_used(tmp_path):
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    data = DataBunch(DataLoader(TensorDataset(x, y), batch_size=4), DataLoader(TensorDataset(x, y), batch_size=10))
    seen = []
    model = small_model()
    model[0].register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    learn = Learner(model, data, loss_func=nn.CrossEntropyLoss(), progress=False, device="cpu", path=tmp_path)
    summary(learn, print_table=False)
    assert len(seen) == 1 and torch.equal(seen[0], x[:4])


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.unused = nn.Linear(6, 3)

    def forward(self, x):
        return x[:, :3] * 2


def test_errors(tmp_path):
    model = Functional()
    with pytest.raises(ValueError, match="nothing to summarise.*Functional.*called none of its leaf layers"):
        summary(learner(model, small_data(bs=8), tmp_path))
    assert no_hooks(model)
    with pytest.raises(ValueError, match="has no leaf layer"):
        model_summary(nn.Sequential(), [torch.randn(2, 6)])
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        model_summary(lambda x: x, [torch.randn(2, 6)])

    learn = learner(small_model(), small_data(bs=8), tmp_path)
    learn.data.train_dl = None
    with pytest.raises(ValueError, match=r"no training loader \(learn.data.train_dl is None\)"):
        summary(learn)
    learn.data.train_dl = DataLoader(TensorDataset(torch.empty(0, 6), torch.empty(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="the training loader is empty"):
        summary(learn)
