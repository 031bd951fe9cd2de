"""use_clr, use_clr_beta (1cycle), best_save_name and decoupled weight decay: every batch's LR and momentum
against the formulas, written out here from fastai 0.7's definitions."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from snapfit import Callback, Learner
from tests.helpers import small_data

N, CYCLE_LEN, N_CYCLE = 7, 2, 2  # 7 batches per epoch, cycles of 14 batches


def three_groups():
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    return model, [model[0], model[2], model[4]]


def make(tmp_path, groups=1, opt_func=None):
    torch.manual_seed(0)
    model, layer_groups = three_groups()
    return Learner(model, small_data(n_trn=N * 8, n_val=16, bs=8), progress=False, device="cpu", path=tmp_path,
                   layer_groups=layer_groups if groups == 3 else None, opt_func=opt_func)


def clr_reference(base, div, cut_div, moms, nb, k):
    cut = nb // cut_div
    p = k / cut if k <= cut else 1 - (k - cut) / (nb - cut)
    lrs = [b * (1 + p * (div - 1)) / div for b in base]
    mom = None if moms is None else moms[1] + (1 - p) * (moms[0] - moms[1])
    return lrs, mom


def one_cycle_reference(base, div, pct, moms, nb, k):
    c = int(nb * (1 - pct / 100) / 2)
    if k <= c:
        lrs = [b * (1 + (k / c) * (div - 1)) / div for b in base]
    elif k <= 2 * c:
        lrs = [b * (1 + (1 - (k - c) / c) * (div - 1)) / div for b in base]
    else:
        lrs = [b / div * (1 - 0.99 * (k - 2 * c) / (nb - 2 * c)) for b in base]
    if moms is None:
        return lrs, None
    hi, lo = moms
    mom = hi + (k / c) * (lo - hi) if k <= c else hi + (1 - (k - c) / c) * (lo - hi) if k <= 2 * c else hi
    return lrs, mom


OPTIMIZERS = {"sgd": None, "adam": lambda groups: torch.optim.Adam(groups)}


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("kind,args", [
    ("use_clr", (20, 8)), ("use_clr", (10, 4, 0.95, 0.85)),
    ("use_clr_beta", (10, 20)), ("use_clr_beta", (20, 10, 0.95, 0.85)),
])
def test_every_batch_follows_the_formula(tmp_path, groups, opt, kind, args):
    learn = make(tmp_path, groups, OPTIMIZERS[opt])
    base = [0.01, 0.03, 0.1] if groups == 3 else [0.1]
    mom_before = 0.9 if opt == "sgd" else 0.9  # SGD's momentum 0.9 / Adam's betas[0] 0.9 by default
    learn.fit(base if groups == 3 else base[0], N_CYCLE, cycle_len=CYCLE_LEN, **{kind: args})
    nb = N * CYCLE_LEN
    ref = clr_reference if kind == "use_clr" else one_cycle_reference
    moms = args[2:] or None
    assert len(learn.sched.group_lrs) == N_CYCLE * nb
    for it, (lrs, got_moms) in enumerate(zip(learn.sched.group_lrs, learn.sched.group_moms)):
        want_lrs, want_mom = ref(base, *args[:2], moms, nb, it % nb)
        assert lrs == pytest.approx(want_lrs, rel=1e-12, abs=0), f"LR at iteration {it}"
        assert got_moms == pytest.approx([want_mom if moms else mom_before] * groups, rel=1e-12), f"momentum at {it}"
    assert learn.sched.cycle_ends == [nb, 2 * nb]


def test_snapshots_per_cycle_and_resume_with_one_cycle(tmp_path):
    seen = {}

    class Weights(Callback):
        order = 100

        def after_epoch(self, learn):
            seen[learn.position.iters_done] = {k: v.clone() for k, v in learn.model.state_dict().items()}

    learn = make(tmp_path)
    learn.fit(0.1, 2, cycle_len=2, use_clr_beta=(10, 10, 0.95, 0.85), cycle_save_name="one", callbacks=[Weights()])
    assert learn.saved_cycles("one") == [0, 1]
    for c, done in enumerate((14, 28)):
        saved = torch.load(learn.model_file(f"one_cyc_{c}"), weights_only=True)
        assert all(torch.equal(saved[k], seen[done][k]) for k in saved), f"snapshot of cycle {c}"


def test_plot_lr_shows_momentum_beside_the_lr(tmp_path):
    learn = make(tmp_path)
    learn.fit(0.1, 1, cycle_len=2, use_clr_beta=(10, 10, 0.95, 0.85))
    fig = learn.sched.plot_lr(show_moms=True)
    lr_ax, mom_ax = fig.axes
    assert (lr_ax.get_ylabel(), mom_ax.get_ylabel()) == ("learning rate", "momentum")
    assert list(mom_ax.get_lines()[0].get_ydata()) == learn.sched.moms
    learn.fit(0.1, 1)  # constant momentum: one axes only
    assert len(learn.sched.plot_lr(show_moms=True).axes) == 1


def test_best_save_name_keeps_the_best_epoch(tmp_path):
    from snapfit import accuracy
    epochs = []

    class Weights(Callback):
        order = 100

        def after_epoch(self, learn):
            epochs.append(({k: v.clone() for k, v in learn.model.state_dict().items()}, learn.sched.last_values))

    torch.manual_seed(0)
    learn = Learner(three_groups()[0], small_data(n_trn=56, n_val=40, bs=8), metrics=[accuracy], progress=False,
                    device="cpu", path=tmp_path)
    learn.fit(0.3, 6, best_save_name="best", callbacks=[Weights()])
    keys = [(vals[1], -vals[0]) for _, vals in epochs]
    best = keys.index(max(keys))  # the first epoch with the highest accuracy, then the lowest loss
    assert len(set(keys)) > 1, "the epochs differ, so the choice means something"
    saved = torch.load(learn.model_file("best"), weights_only=True)
    assert all(torch.equal(saved[k], epochs[best][0][k]) for k in saved), f"best is epoch {best}"


def test_best_save_name_follows_the_first_metric_then_the_loss(tmp_path):
    from snapfit.callbacks.snapshot import SaveBest

    class Fake:  # a learner whose epochs report chosen values
        def __init__(self):
            self.saves, self.position = [], type("P", (), {"epoch": 0})()
            self.recorder = type("R", (), {"last_values": None})()

        def save(self, name, **kw):
            self.saves.append(self.position.epoch)

    fake, cb = Fake(), SaveBest("best")
    for epoch, vals in enumerate([[0.5, 0.8], [0.4, 0.8], [0.6, 0.9], [0.3, 0.9], [0.2, 0.85], [float("nan"), 1.0]]):
        fake.position.epoch, fake.recorder.last_values = epoch, vals
        cb.after_epoch(fake)
    assert fake.saves == [0, 1, 2, 3], "higher accuracy wins; at equal accuracy the lower loss; NaN never"


def test_decoupled_weight_decay_equals_the_hand_update(tmp_path):
    data = small_data(n_trn=8, n_val=8, bs=8)  # one batch per epoch
    torch.manual_seed(0)
    learn = Learner(nn.Sequential(nn.Linear(6, 3)), data, progress=False, device="cpu", path=tmp_path,
                    opt_func=lambda groups: torch.optim.SGD(groups))  # no momentum: one step is explicit
    w0 = {k: v.clone() for k, v in learn.model.state_dict().items()}
    x, y = next(iter(data.train_dl))
    loss = nn.functional.cross_entropy(learn.model(x), y)
    grads = torch.autograd.grad(loss, list(learn.model.parameters()))
    mult = []

    def half(learn):
        mult.append(learn.position.iteration)
        return 0.5

    learn.fit(0.1, 1, wds=0.2, cycle_len=1, use_wd_sched=True, norm_wds=True, wds_sched_mult=half, warmup=False)
    lr, wd = 0.1, 0.2 / math.sqrt(1 * 1) * 0.5  # N = 1 batch, a cycle of 1 epoch, times the multiplier
    for (k, w), g in zip(w0.items(), grads):
        torch.testing.assert_close(learn.model.state_dict()[k], w * (1 - lr * wd) - lr * g, rtol=0, atol=1e-7)
    assert mult == [0] and learn.opt.param_groups[0]["weight_decay"] == 0.2, "the optimizer's own decay is back"


def test_decoupled_weight_decay_is_not_in_the_gradient(tmp_path):
    """Adam with use_wd_sched: the decay does not go through Adam's normalisation (that is the point)."""
    def run(**kw):
        torch.manual_seed(0)
        learn = Learner(nn.Sequential(nn.Linear(6, 3)), small_data(), progress=False, device="cpu", path=tmp_path,
                        opt_func=lambda groups: torch.optim.Adam(groups))
        learn.fit(0.01, 2, wds=0.1, **kw)
        return learn.model[0].weight.detach().clone()

    coupled, decoupled = run(), run(use_wd_sched=True)
    assert not torch.allclose(coupled, decoupled)
    assert decoupled.norm() < run().norm() * 1.2


@pytest.mark.parametrize("kwargs,message", [
    (dict(use_clr=(20,)), "use_clr takes (div, cut_div) or (div, cut_div, mom_hi, mom_lo), got 1 values"),
    (dict(use_clr_beta=(10, 10, 0.95)), "got 3 values (fastai 0.7 silently dropped the momentum of a 3-tuple)"),
    (dict(use_clr_beta=(1, 10)), "use_clr_beta's div must be > 1 (the LR starts at lr/div), got 1"),
    (dict(use_clr_beta=(10, 100)), "use_clr_beta's pct must be in (0, 100)"),
    (dict(use_clr_beta=(10, 0)), "use_clr_beta's pct must be in (0, 100)"),
    (dict(use_clr=(10, 0.5)), "use_clr's cut_div must be >= 1"),
    (dict(use_clr=(10, 8), use_clr_beta=(10, 10)), "use_clr and use_clr_beta are two schedules: pass one of them"),
    (dict(use_clr=(10, 8), cycle_len=None), "use_clr needs cycle_len"),
    (dict(use_clr_beta=(10, 10), cycle_mult=2), "use_clr_beta takes no cycle_mult"),
    (dict(use_clr=(10, "8")), "use_clr[1] must be a finite number, got '8'"),
    (dict(use_clr=(10, 200)), "use_clr: cut_div=200 leaves no batch to rise over in a cycle of 7 batches"),
    (dict(best_save_name="a/b"), "best_save_name must be a plain file name"),
    (dict(norm_wds=True), "norm_wds and wds_sched_mult shape the decoupled weight decay: they need use_wd_sched=True"),
    (dict(use_wd_sched="yes"), "use_wd_sched must be True or False, got 'yes'"),
])
def test_bad_schedule_arguments(tmp_path, kwargs, message):
    import re
    learn = make(tmp_path)
    args = dict(cycle_len=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        learn.fit(0.1, 1, **{k: v for k, v in args.items() if v is not None or k != "cycle_len"})
    assert not (tmp_path / "models").exists()


def test_momentum_needs_an_optimizer_with_momentum(tmp_path):
    learn = make(tmp_path, opt_func=lambda groups: torch.optim.Adagrad(groups))
    with pytest.raises(ValueError, match="this schedule sets the momentum but Adagrad has neither momentum nor betas"):
        learn.fit(0.1, 1, cycle_len=1, use_clr_beta=(10, 10, 0.95, 0.85))
    learn.fit(0.1, 1, cycle_len=1, use_clr_beta=(10, 10))  # without momentum values: fine
    assert np.isnan(np.asarray(learn.sched.moms, dtype=float)).all()
