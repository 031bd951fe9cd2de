"""LARS against the per-tensor formula, with SGDR, and without host syncs; closure optimizers (LBFGS)."""
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from snapfit import Callback, DataBunch, Learner, load_digits_arrays
from snapfit.callbacks.lars import LARS, default_lars_exclude
from tests.helpers import small_data


class Side(nn.Module):
    """main(x) + 0 * side(x): `side` gets exact zero gradients; `zeroed` starts with zero weights."""

    def __init__(self):
        super().__init__()
        self.l1, self.bn, self.zeroed, self.l2 = nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.side = nn.Linear(6, 3)
        with torch.no_grad():
            self.zeroed.weight.zero_()

    def forward(self, x):
        h = torch.relu(self.bn(self.l1(x)))
        h = h + self.zeroed(h)
        return self.l2(h) + 0 * self.side(x)


class Grads(Callback):
    def __init__(self, order):
        self.order, self.seen = order, []

    def after_backward(self, learn):
        if learn.training:
            self.seen.append({n: (p.detach().clone(), p.grad.detach().clone(), learn.opt.param_groups[0]["lr"],
                                  learn.opt.param_groups[0]["weight_decay"])
                              for n, p in learn.model.named_parameters()})


def reference(w, g, wd, lr, trust, eps, clip, excluded):
    """The formula, per tensor, in float64."""
    w, g = w.double(), g.double()
    if excluded:
        return g + wd * w
    wn, gn = w.norm().item(), g.norm().item()
    ratio = trust * wn / (gn + wd * wn + eps) if wn > 0 and gn > 0 else 1.0
    if clip:
        ratio = min(ratio / lr, 1.0)
    return (g + wd * w) * ratio


@pytest.mark.parametrize("clip", [False, True])
def test_lars_ratios_match_the_per_tensor_formula(tmp_path, clip):
    torch.manual_seed(0)
    model = Side()
    learn = Learner(model, small_data(n_trn=32, bs=8), opt_func=lambda ps: torch.optim.SGD(ps, momentum=0.9),
                    wd=1e-3, progress=False, device="cpu", path=tmp_path)
    before, after = Grads(order=5), Grads(order=15)
    lars = LARS(trust_coef=0.02, clip=clip)
    learn.fit(0.5, 2, cycle_len=1, callbacks=[before, lars, after])
    checked = {"scaled": 0, "excluded": 0, "zero_w": 0, "zero_g": 0}
    for b, a in zip(before.seen, after.seen):
        for name, (w, g, lr, wd) in b.items():
            excluded = default_lars_exclude(name, w)
            want = reference(w, g, 1e-3, lr, 0.02, 1e-8, clip, excluded)
            torch.testing.assert_close(a[name][1].double(), want, rtol=1e-5, atol=1e-9)
            assert wd == 1e-3 and a[name][3] == 0.0, "weight decay is hidden from the optimizer's step"
            if excluded:
                checked["excluded"] += 1
            elif w.norm() == 0:
                checked["zero_w"] += 1
            elif g.norm() == 0:
                checked["zero_g"] += 1
            else:
                checked["scaled"] += 1
    assert all(v > 0 for v in checked.values()), checked
    assert learn.opt.param_groups[0]["weight_decay"] == 1e-3, "restored after the step"
    assert lars.names == ["l1.weight", "zeroed.weight", "l2.weight", "side.weight"]


def test_lars_update_is_the_papers(tmp_path):
    """With plain SGD (no momentum) the step is w - lr * ratio * (g + wd w)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    learn = Learner(model, small_data(n_trn=8, bs=8), opt_func=lambda ps: torch.optim.SGD(ps), wd=1e-2,
                    progress=False, device="cpu", path=tmp_path)
    x, y = next(iter(learn.data.train_dl))
    w0 = [p.detach().clone() for p in model.parameters()]
    grads = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), list(model.parameters()))
    learn.fit(0.1, 1, callbacks=[LARS(trust_coef=0.01)])
    for (name, p), w, g in zip(model.named_parameters(), w0, grads):
        upd = reference(w, g, 1e-2, 0.1, 0.01, 1e-8, False, default_lars_exclude(name, p))
        torch.testing.assert_close(p.detach().double(), w.double() - 0.1 * upd, rtol=0, atol=1e-7)


def test_lars_with_sgdr_keeps_the_schedule_and_clips_with_the_scheduled_lr(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    learn = Learner(model, small_data(n_trn=80, bs=8), progress=False, device="cpu", path=tmp_path)
    before, after = Grads(order=5), Grads(order=15)
    learn.fit(0.2, 2, cycle_len=1, cycle_mult=2, warmup=False, callbacks=[before, LARS(clip=True), after])
    lrs = learn.sched.lrs
    want = [0.1 * (1 + math.cos(math.pi * t / 10)) for t in range(10)] + \
           [0.1 * (1 + math.cos(math.pi * t / 20)) for t in range(20)]
    assert lrs == pytest.approx(want, abs=1e-12)
    for b, a, lr in zip(before.seen, after.seen, lrs):
        w, g, _, _ = b["0.weight"]
        torch.testing.assert_close(a["0.weight"][1].double(), reference(w, g, 0.0, lr, 0.001, 1e-8, True, False),
                                   rtol=1e-5, atol=1e-10)


def test_lars_records_ratios_and_plots_them(tmp_path):
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    learn = Learner(model, small_data(n_trn=40, bs=8), progress=False, device="cpu", path=tmp_path)
    with pytest.raises(ValueError, match=r"fit with callbacks=\[LARS\(\)\] first"):
        learn.sched.plot_lars()
    lars = LARS()
    learn.fit(0.1, 3, callbacks=[lars])
    assert lars.iterations == [4, 9, 14] and len(lars.history[0]) == 2  # once per epoch, two weight tensors
    fig = learn.sched.plot_lars()
    assert isinstance(fig, Figure) and [ln.get_label() for ln in fig.axes[0].get_lines()] == ["0.weight", "2.weight"]
    assert list(fig.axes[0].get_lines()[0].get_ydata()) == [h[0] for h in lars.history]
    every = LARS(record_every=2)
    learn.fit(0.1, 1, callbacks=[every])
    assert every.iterations == [1, 3]


def test_lars_adds_no_host_sync_per_batch(tmp_path, host_reads):
    counts = host_reads

    def run(n_trn):
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        learn = Learner(model, small_data(n_trn=n_trn, bs=4), progress=False, device="cpu", path=tmp_path)
        learn.sched.sync_every = 10_000
        counts["n"] = 0
        learn.fit(0.1, 2, callbacks=[LARS()])
        return counts["n"]

    assert run(8) == run(80)


def test_lars_bad_input():
    with pytest.raises(ValueError, match="trust_coef must be > 0"):
        LARS(trust_coef=0)
    with pytest.raises(ValueError, match="record_every must be a positive int or None"):
        LARS(record_every=0)


# ---------------------------------------------------------------------------- closure optimizers
def test_lbfgs_fit_equals_a_plain_lbfgs_loop(tmp_path):
    """Logistic regression on digits: the fit loop and a hand-written LBFGS loop, same number of steps."""
    x_trn, y_trn, _, _ = load_digits_arrays(flat=True)
    X, Y = torch.tensor(x_trn), torch.tensor(y_trn)

    def make():
        torch.manual_seed(0)
        return nn.Linear(64, 10)

    def objective(model):
        return lambda out, y: nn.functional.cross_entropy(out, y) + 1e-3 * model.weight.pow(2).sum()

    plain = make()
    f = objective(plain)
    opt = torch.optim.LBFGS(plain.parameters(), lr=1, max_iter=20, history_size=10)
    evals = {"n": 0}
    for _ in range(6):
        def closure():
            evals["n"] += 1
            opt.zero_grad()
            loss = f(plain(X), Y)
            loss.backward()
            return loss
        opt.step(closure)

    model = make()
    f2 = objective(model)
    counted = {"n": 0}

    def loss_func(out, y):
        counted["n"] += 1
        return f2(out, y)

    learn = Learner(model, DataBunch.fixed((X, Y), n_batches=3), loss_func=loss_func,
                    opt_func=lambda g: torch.optim.LBFGS(g, max_iter=20, history_size=10), progress=False,
                    device="cpu", path=tmp_path)
    seen = []

    class Once(Callback):
        def after_loss(self, learn):
            seen.append("loss")

        def after_backward(self, learn):
            seen.append("backward")

    learn.fit(1.0, 2, callbacks=[Once()])
    final_plain, final_fit = f(plain(X), Y).item(), f2(model(X), Y).item()
    assert abs(final_plain - final_fit) < 1e-6
    assert counted["n"] == evals["n"], "the same number of function evaluations"
    assert seen == ["loss", "backward"] * 6, "events fire once per batch"
    assert len(learn.sched.losses) == 6 and learn.sched.losses[0] == pytest.approx(
        nn.functional.cross_entropy(make()(X), Y).item() + 1e-3 * make().weight.pow(2).sum().item(), rel=1e-6)


def test_a_tensor_is_a_model(tmp_path):
    target = torch.arange(6.0)
    learn = Learner(torch.zeros(6), DataBunch.fixed(n_batches=20), loss_func=lambda img: ((img - target) ** 2).sum(),
                    opt_func=lambda g: torch.optim.SGD(g), progress=False, device="cpu", path=tmp_path)
    learn.fit(0.25, 1)
    torch.testing.assert_close(learn.model.tensor.detach(), target, atol=1e-4, rtol=0)
    assert np.isnan(learn.sched.val_losses[0]), "no validation data"
    with pytest.raises(ValueError, match="n_batches must be a positive int"):
        DataBunch.fixed(n_batches=0)
