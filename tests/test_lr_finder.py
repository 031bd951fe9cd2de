"""The LR range test: LR sequence, divergence stop, suggestion, plot, and exact restoration."""
import math
import random

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from snapfit import DataBunch, Learner, SuggestedLRs, simple_cnn
from snapfit.callbacks.lr_finder import LRFinderResult, LRRangeSchedule
from snapfit.rng import get_rng_states
from tests.helpers import small_data


def digits_learner(digits, tmp_path, **kw):
    x_trn, y_trn, x_val, y_val = digits
    data = DataBunch.from_arrays(x_trn, y_trn, x_val, y_val, bs=32)
    return Learner(simple_cnn(10, widths=(8, 16)), data, path=tmp_path, progress=False, device="cpu", **kw)


def test_lr_find_restores_everything_bit_identically(digits, tmp_path):
    learn = digits_learner(digits, tmp_path, wd=1e-4)
    learn.fit(0.05, 2, cycle_len=1, cycle_save_name="s")
    model = {k: v.clone() for k, v in learn.model.state_dict().items()}
    opt_state = {i: {k: v.clone() for k, v in s.items()} for i, s in enumerate(learn.opt.state.values())}
    groups = [{k: v for k, v in g.items() if k != "params"} for g in learn.opt.param_groups]
    rec = learn.sched.state_dict()
    pos, sched = learn.position.state_dict(), learn.schedule
    rng = get_rng_states()
    py_rand, np_rand, t_rand = random.random(), np.random.rand(), torch.rand(1)
    from snapfit.rng import set_rng_states
    set_rng_states(rng)

    res = learn.lr_find(end_lr=100)
    assert isinstance(res, SuggestedLRs)

    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, model[k]), k  # weights and BatchNorm running statistics
    assert any("running_mean" in k for k in model)
    for i, s in enumerate(learn.opt.state.values()):
        for k, v in s.items():
            assert torch.equal(v, opt_state[i][k]), "momentum buffers"
    assert [{k: v for k, v in g.items() if k != "params"} for g in learn.opt.param_groups] == groups
    assert learn.sched.state_dict() == rec, "the recorder of the earlier fit"
    assert learn.position.state_dict() == pos and learn.schedule is sched
    assert (random.random(), np.random.rand(), torch.rand(1)) == (py_rand, np_rand, t_rand), "RNG states"
    assert learn.saved_cycles("s") == [0, 1]


def test_lr_find_then_fit_equals_fit_alone(digits, tmp_path):
    torch.manual_seed(1)
    a = digits_learner(digits, tmp_path)
    a.fit(0.05, 1)
    torch.manual_seed(1)
    b = digits_learner(digits, tmp_path)
    b.lr_find()
    b.fit(0.05, 1)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])
    assert b.opt is not None


def test_lr_find_without_an_optimizer_leaves_none(digits, tmp_path):
    learn = digits_learner(digits, tmp_path)
    learn.lr_find(num_it=20)
    assert learn.opt is None


def test_exponential_and_linear_sequences(make_learner):
    learn = make_learner(data=small_data(n_trn=80, bs=4))  # 20 batches
    learn.lr_find(start_lr=1e-4, end_lr=1.0, num_it=20)
    lrs = learn.sched.finder.lrs
    want = [1e-4 * (1e4) ** (i / 19) for i in range(20)]
    assert len(lrs) == 20 and lrs == pytest.approx(want, rel=1e-12)
    learn.lr_find(start_lr=0.01, end_lr=0.2, num_it=20, linear=True)
    assert learn.sched.finder.lrs == pytest.approx([0.01 + 0.19 * i / 19 for i in range(20)], rel=1e-12)


def test_per_group_start_lrs_move_together():
    s = LRRangeSchedule([1e-6, 1e-5, 1e-4], ratio=1e5, num_it=11, batches_per_epoch=4)
    for i in range(11):
        lrs = s.lrs_at(i)
        assert lrs[1] / lrs[0] == pytest.approx(10) and lrs[2] / lrs[1] == pytest.approx(10)
    assert s.lrs_at(10)[-1] == pytest.approx(10.0) and s.n_epochs == 3


def test_lr_find_with_discriminative_lrs(tmp_path):
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    learn = Learner(model, small_data(n_trn=80, bs=4), layer_groups=[model[0], model[2]], progress=False,
                    device="cpu", path=tmp_path)
    seen = []
    from snapfit import Callback

    class Peek(Callback):
        order = 100
        def before_batch(self, learn):
            if learn.training:
                seen.append([g["lr"] for g in learn.opt.param_groups])

    learn.add_cbs([Peek()])
    learn.lr_find(start_lr=np.array([1e-5, 1e-4]), end_lr=1.0, num_it=10)
    assert len(seen) == 10 == len(learn.sched.finder.lrs)
    assert all(g[1] / g[0] == pytest.approx(10) for g in seen)
    assert seen[-1][1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="start_lr has 3 values but the optimizer has 2 param group"):
        learn.lr_find(start_lr=[1e-5, 1e-4, 1e-3])


def test_stops_on_divergence(make_learner):
    learn = make_learner(data=small_data(n_trn=400, bs=4))  # 100 batches
    learn.lr_find(start_lr=1e-3, end_lr=1e6)
    f = learn.sched.finder
    assert f.diverged and 10 < len(f.lrs) < 100
    best = min(f.smooth_losses[10:-1])
    last = f.smooth_losses[-1]
    assert not math.isfinite(last) or last > 4 * best
    assert len(f.losses) == len(f.lrs)


def test_suggestion_lies_in_the_descending_region_of_a_quadratic(tmp_path):
    """Minimise 0.5*||w - y||^2 (y ~ 3 + noise) with plain SGD: the loss falls for lr in (0, 2) and
    explodes above 2. The steepest-descent suggestion must lie where the smoothed loss is falling."""
    torch.manual_seed(0)

    class Quad(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(16))

        def forward(self, x):
            return self.w.expand(len(x), -1)

    x = torch.zeros(1600, 1)
    y = 3.0 + 0.3 * torch.randn(1600, 16)  # noise: the optimum is never hit exactly
    data = DataBunch.from_arrays(x, y, bs=4)
    learn = Learner(Quad(), data, loss_func=lambda p, t: 0.5 * ((p - t) ** 2).sum(1).mean(),
                    opt_func=lambda ps: torch.optim.SGD(ps), progress=False, device="cpu", path=tmp_path)
    s = learn.lr_find(start_lr=1e-4, end_lr=100)
    f = learn.sched.finder
    lrs, sm = np.array(f.lrs), np.array(f.smooth_losses)
    falling = np.gradient(sm, np.log10(lrs)) < 0
    i = int(np.argmin(np.abs(lrs - s.steep)))
    assert falling[i], f"suggested {s.steep} where the loss is not falling"
    assert 1e-2 < s.steep < 2, s
    assert f.diverged and lrs[-1] > 2
    assert s.min_div10 == pytest.approx(lrs[10:-5][np.argmin(sm[10:-5])] / 10)


def test_suggest_on_a_known_curve():
    lrs = list(np.logspace(-4, 0, 40))
    losses = [2.0 - math.tanh(3 * (math.log10(lr) + 2)) for lr in lrs]  # steepest drop at lr = 1e-2
    r = LRFinderResult(lrs, losses, beta=0.0)
    assert r.suggest(0, 0).steep == pytest.approx(1e-2, rel=0.3)


def test_sched_plot(make_learner):
    learn = make_learner(data=small_data(n_trn=200, bs=4))
    with pytest.raises(ValueError, match=r"run learn.lr_find\(\) first"):
        learn.sched.plot()
    s = learn.lr_find(end_lr=100)
    fig = learn.sched.plot(n_skip=5, n_skip_end=2)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    raw, smoothed = ax.get_lines()[:2]
    f = learn.sched.finder
    n = len(f.lrs)
    assert list(smoothed.get_xdata()) == f.lrs[5:n - 2] and list(smoothed.get_ydata()) == f.smooth_losses[5:n - 2]
    assert ax.get_xscale() == "log"
    marker = [ln for ln in ax.get_lines() if ln.get_marker() == "o"][0]
    assert marker.get_xdata()[0] == learn.sched.finder.suggest(5, 2).steep
    assert s == learn.sched.finder.suggest()


def test_lr_find_bad_input(make_learner):
    learn = make_learner()
    with pytest.raises(ValueError, match="0 < start_lr < end_lr"):
        learn.lr_find(start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="num_it must be an int >= 2"):
        learn.lr_find(num_it=1)


def test_lr_find_runs_past_one_epoch(make_learner):
    learn = make_learner(data=small_data(n_trn=40, bs=8))  # 5 batches per epoch
    learn.lr_find(num_it=12, end_lr=1.0)
    assert len(learn.sched.finder.lrs) == 12
