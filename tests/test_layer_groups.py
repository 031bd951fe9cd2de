"""Layer groups, discriminative LRs, freeze/unfreeze and BatchNorm freezing."""
import numpy as np
import pytest
import torch
from torch import nn

from snapfit import Callback, Learner
from tests.helpers import small_data


def three_groups(tmp_path, bn=False, **kw):
    torch.manual_seed(0)
    layers = [nn.Linear(6, 16), nn.BatchNorm1d(16) if bn else nn.Identity(), nn.ReLU(), nn.Linear(16, 16),
              nn.ReLU(), nn.Linear(16, 3)]
    model = nn.Sequential(*layers)
    groups = [model[0:3], model[3:5], model[5]]
    kw.setdefault("opt_func", lambda ps: torch.optim.SGD(ps))
    return Learner(model, small_data(n_trn=40, bs=8), layer_groups=groups, progress=False, device="cpu",
                   path=tmp_path, **kw)


class CheckUpdates(Callback):
    """After every step: each param moved by exactly -lr_of_its_group * grad (plain SGD)."""

    order = 100

    def __init__(self):
        self.checked = 0

    def after_backward(self, learn):
        self.before = [[(p.detach().clone(), None if p.grad is None else p.grad.detach().clone())
                        for p in g.parameters()] for g in learn.layer_groups]
        self.lrs = learn.schedule.lrs_at(learn.iteration)

    def after_step(self, learn):
        for gi, g in enumerate(learn.layer_groups):
            assert learn.opt.param_groups[gi]["lr"] == self.lrs[gi]
            for p, (w, grad) in zip(g.parameters(), self.before[gi]):
                want = w if grad is None else w - self.lrs[gi] * grad
                torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-7)
        self.checked += 1


def test_discriminative_lrs_reach_the_right_groups_every_batch(tmp_path):
    learn = three_groups(tmp_path)
    chk = CheckUpdates()
    learn.fit(np.array([1e-3, 1e-2, 1e-1]), 2, cycle_len=1, cycle_mult=2, callbacks=[chk])
    assert chk.checked == 5 * 3
    lrs = np.array(learn.sched.group_lrs)
    assert np.allclose(lrs[:, 1] / lrs[:, 0], 10) and np.allclose(lrs[:, 2] / lrs[:, 1], 10)
    # each param group holds exactly its layer group's parameters
    for g, pg in zip(learn.layer_groups, learn.opt.param_groups):
        assert [id(p) for p in g.parameters()] == [id(p) for p in pg["params"]]


def test_single_float_applies_to_every_group(tmp_path):
    learn = three_groups(tmp_path)
    learn.fit(0.05, 1)
    assert all(g == [0.05, 0.05, 0.05] for g in learn.sched.group_lrs)


def test_frozen_groups_get_no_gradient_and_do_not_change(tmp_path):
    learn = three_groups(tmp_path, wd=1e-2, opt_func=lambda ps: torch.optim.SGD(ps, momentum=0.9))
    learn.freeze()
    assert learn.frozen_groups == [0, 1]
    frozen = [p.detach().clone() for g in learn.layer_groups[:2] for p in g.parameters()]
    head = [p.detach().clone() for p in learn.layer_groups[2].parameters()]

    class NoGrad(Callback):
        def after_backward(self, learn):
            for g in learn.layer_groups[:2]:
                for p in g.parameters():
                    assert p.grad is None and not p.requires_grad

    learn.fit(0.1, 2, callbacks=[NoGrad()])
    now = [p for g in learn.layer_groups[:2] for p in g.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(now, frozen))
    assert not all(torch.equal(a, b) for a, b in zip(learn.layer_groups[2].parameters(), head))
    # momentum and weight decay do not move frozen params after an unfreeze/freeze round trip either
    learn.unfreeze()
    learn.fit(0.1, 1)
    learn.freeze()
    again = [p.detach().clone() for g in learn.layer_groups[:2] for p in g.parameters()]
    learn.fit(0.1, 1)
    assert all(torch.equal(a, b) for a, b in zip([p for g in learn.layer_groups[:2] for p in g.parameters()], again))


def test_freeze_to_and_unfreeze(tmp_path):
    learn = three_groups(tmp_path)
    learn.freeze_to(1)
    assert learn.frozen_groups == [0]
    assert [p.requires_grad for g in learn.layer_groups for p in g.parameters()] == [False] * 2 + [True] * 4
    learn.unfreeze()
    assert learn.frozen_groups == [] and all(p.requires_grad for p in learn.model.parameters())
    learn.freeze_to(-2)
    assert learn.frozen_groups == [0]
    with pytest.raises(ValueError, match=r"freeze_to takes a group index in \[-3, 3\] \(this learner has 3 layer"):
        learn.freeze_to(4)


def bn_stats(learn):
    bn = learn.model[1]
    return bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)


def test_batchnorm_of_frozen_groups_keeps_its_statistics(tmp_path):
    learn = three_groups(tmp_path, bn=True)
    learn.freeze()
    before = bn_stats(learn)
    learn.fit(0.1, 1)
    after = bn_stats(learn)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1]) and before[2] == after[2]
    learn.unfreeze()
    learn.fit(0.1, 1)
    assert bn_stats(learn)[2] == before[2] + 5, "trainable BatchNorm updates its statistics"


def test_bn_freeze_fixes_every_batchnorm(tmp_path):
    learn = three_groups(tmp_path, bn=True)
    learn.bn_freeze(True)
    before = bn_stats(learn)
    gamma = learn.model[1].weight.detach().clone()
    learn.fit(0.1, 1)
    assert torch.equal(bn_stats(learn)[0], before[0]) and bn_stats(learn)[2] == before[2]
    assert not torch.equal(learn.model[1].weight, gamma), "the statistics are fixed, the affine params still train"
    learn.bn_freeze(False)
    learn.fit(0.1, 1)
    assert bn_stats(learn)[2] == before[2] + 5


def test_layer_groups_must_cover_the_model(tmp_path):
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"layer_groups leave 2 model parameter\(s\) out, e\.g\. \['2\.weight', "):
        Learner(model, small_data(), layer_groups=[model[0]], device="cpu")
    with pytest.raises(ValueError, match="parameters that are not in the model"):
        Learner(model, small_data(), layer_groups=[model, nn.Linear(2, 2)], device="cpu")
    with pytest.raises(TypeError, match=r"layer_groups\[1\] must be an nn.Module"):
        Learner(model, small_data(), layer_groups=[model, "head"], device="cpu")
