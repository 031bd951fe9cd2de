"""Training phases (fit_opt_sched): every decay type at every batch, optimizer swaps, per-phase data and weight
decay, stop_div, and the bad inputs."""
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from snapfit import Callback, DecayType, Learner, TrainingPhase
from tests.helpers import small_data


def make(tmp_path, n_trn=40, groups=False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    return Learner(model, small_data(n_trn=n_trn, n_val=16, bs=8), progress=False, device="cpu", path=tmp_path,
                   layer_groups=[model[0], model[2]] if groups else None)


def hand(start, end, t, kind, p=None):
    return {DecayType.NO: start, DecayType.LINEAR: start + t * (end - start),
            DecayType.COSINE: end + (start - end) / 2 * (1 + math.cos(math.pi * t)),
            DecayType.EXPONENTIAL: start * (end / start) ** t if start else None,
            DecayType.POLYNOMIAL: end + (start - end) * (1 - t) ** (p or 1)}[kind]


@pytest.mark.parametrize("kind,lr,mom", [
    (DecayType.NO, 0.05, 0.9),
    (DecayType.LINEAR, (0.01, 0.1), (0.95, 0.85)),
    (DecayType.LINEAR, 0.1, 0.9),  # a value with a decay ends at 0
    (DecayType.COSINE, (0.1, 0.001), (0.85, 0.95)),
    (DecayType.EXPONENTIAL, (1e-4, 1e-1), (0.8, 0.9)),
    ((DecayType.POLYNOMIAL, 2.0), (0.1, 0.01), (0.9, 0.8)),
])
def test_every_decay_type_at_every_batch(tmp_path, kind, lr, mom):
    learn = make(tmp_path)  # 5 batches per epoch
    phase = TrainingPhase(epochs=1.4, lr=lr, lr_decay=kind, momentum=mom, momentum_decay=kind)
    learn.fit_opt_sched([TrainingPhase(epochs=1, lr=0.02), phase])
    k, p = (kind if not isinstance(kind, tuple) else kind[0]), (kind[1] if isinstance(kind, tuple) else None)
    n = math.ceil(1.4 * 5)
    assert len(learn.sched.lrs) == 5 + n
    lr0, lr1 = lr if isinstance(lr, tuple) else (lr, lr if k == DecayType.NO else 0.0)
    m0, m1 = mom if isinstance(mom, tuple) else (mom, mom if k == DecayType.NO else 0.0)
    for j in range(n):
        assert learn.sched.lrs[5 + j] == pytest.approx(hand(lr0, lr1, j / n, k, p), rel=1e-12, abs=1e-15), j
        assert learn.sched.moms[5 + j] == pytest.approx(hand(m0, m1, j / n, k, p), rel=1e-12, abs=1e-15), j
    assert learn.sched.lrs[:5] == [0.02] * 5
    assert learn.sched.epoch_iterations == [5, 10, 12], "the phases share epochs; the last one is partial"


def test_per_group_values(tmp_path):
    learn = make(tmp_path, groups=True)
    learn.fit_opt_sched([TrainingPhase(1, lr=(np.array([1e-3, 1e-2]), np.array([1e-2, 1e-1])),
                                       lr_decay=DecayType.LINEAR)])
    assert learn.sched.group_lrs[0] == pytest.approx([1e-3, 1e-2])
    assert learn.sched.group_lrs[4] == pytest.approx([1e-3 + 0.8 * 9e-3, 1e-2 + 0.8 * 9e-2])


class OptLog(Callback):
    order = 100

    def __init__(self):
        self.opts, self.bufs = [], []

    def before_batch(self, learn):
        if learn.training:
            self.opts.append(learn.opt)
            st = learn.opt.state.get(learn.opt.param_groups[0]["params"][0], {})
            self.bufs.append(None if not st else next(iter(st.values())).clone())


def test_optimizer_swaps_keep_or_drop_state(tmp_path):
    learn = make(tmp_path)
    log = OptLog()
    learn.fit_opt_sched([TrainingPhase(1, torch.optim.SGD, lr=0.05), TrainingPhase(1, torch.optim.SGD, lr=0.01),
                         TrainingPhase(1, torch.optim.Adam, lr=1e-3, momentum=0.9, beta=0.99)], callbacks=[log])
    sgd, adam = log.opts[0], log.opts[10]
    assert all(o is sgd for o in log.opts[:10]), "same optimizer class: the same optimizer, its state kept"
    assert log.bufs[5] is not None, "the momentum buffer carried into the second SGD phase"
    assert isinstance(adam, torch.optim.Adam) and all(o is adam for o in log.opts[10:])
    assert log.bufs[10] is None, "a new optimizer starts without state"
    assert adam.param_groups[0]["betas"] == (0.9, 0.99), "beta sets Adam's betas[1]"
    assert learn.sched.phase_starts == [[0, "SGD"], [5, "SGD"], [10, "Adam"]]
    fig = learn.sched.plot_lr(show_text=True)
    assert [t.get_text().strip() for t in fig.axes[0].texts] == ["SGD", "SGD", "Adam"]


def test_phase_weight_decay_in_the_optimizer_or_decoupled(tmp_path):
    seen = []

    class Wd(Callback):
        order = 850  # after the decoupled decay (800) in after_backward, before the step

        def after_backward(self, learn):
            seen.append(learn.opt.param_groups[0]["weight_decay"])

    learn = make(tmp_path)
    learn.fit_opt_sched([TrainingPhase(1, lr=0.05, wds=1e-2), TrainingPhase(1, lr=0.05, wds=1e-2, wd_loss=False)],
                        callbacks=[Wd()])
    assert seen == [1e-2] * 5 + [0.0] * 5


def test_data_list_gives_each_phase_its_loader(tmp_path):
    learn = make(tmp_path)
    big = small_data(n_trn=64, n_val=16, bs=8)  # 8 batches per epoch
    lengths = []

    class Lengths(Callback):
        def before_train(self, learn):
            lengths.append(len(learn.data.train_dl))

    own = learn.data
    learn.fit_opt_sched([TrainingPhase(1.5, lr=0.05), TrainingPhase(1, lr=0.01)], data_list=[learn.data, big],
                        callbacks=[Lengths()])
    assert lengths == [5, 5, 8], "ceil(1.5 * 5) = 8 batches in two epochs, then 8 batches of the second data"
    assert learn.sched.epoch_iterations == [5, 8, 16]
    assert learn.data is own, "the learner's data is its own again after the fit"


def test_stop_div_uses_the_lr_finders_rule(tmp_path):
    from snapfit.callbacks.lr_finder import DivergenceRule
    learn = make(tmp_path, n_trn=400)  # 50 batches
    learn.fit_opt_sched([TrainingPhase(1, lr=(1e-3, 1e4), lr_decay=DecayType.EXPONENTIAL)], stop_div=True)
    n = len(learn.sched.losses)
    assert n < 50, "stopped before the end"
    rule = DivergenceRule()
    first = next(i for i, v in enumerate(learn.sched.losses) if rule.diverged(v))
    assert n == (first // 5 + 1) * 5, "stopped at the check (every 5 batches) that saw the divergence"


@pytest.mark.parametrize("call,message", [
    (lambda learn: learn.fit_opt_sched([]), "phases must be a non-empty list of TrainingPhase, got []"),
    (lambda learn: learn.fit_opt_sched(TrainingPhase(1)), "phases must be a non-empty list of TrainingPhase"),
    (lambda learn: learn.fit_opt_sched([1]), "phases must be TrainingPhase objects, got 1"),
    (lambda learn: TrainingPhase(epochs=0), "epochs must be a number of epochs > 0, got 0"),
    (lambda learn: TrainingPhase(epochs=-1), "epochs must be a number of epochs > 0"),
    (lambda learn: TrainingPhase(lr_decay="fast"), "lr_decay must be a DecayType (NO, LINEAR, COSINE, EXPONENTIAL)"),
    (lambda learn: TrainingPhase(lr_decay=DecayType.POLYNOMIAL), "lr_decay=DecayType.POLYNOMIAL needs its power"),
    (lambda learn: TrainingPhase(lr=0.1, lr_decay=DecayType.EXPONENTIAL), "needs lr=(start, end): it cannot decay"),
    (lambda learn: learn.fit_opt_sched([TrainingPhase(lr=(0.0, 1.0), lr_decay=DecayType.EXPONENTIAL)]),
     "lr_decay=DecayType.EXPONENTIAL cannot start or end at 0"),
    (lambda learn: learn.fit_opt_sched([TrainingPhase(1)], data_list=[learn.data, learn.data]),
     "data_list must hold one data object per phase (1), got 2"),
    (lambda learn: learn.fit_opt_sched([TrainingPhase(1, lr="0.1")]), "lr must be a float or a sequence of floats"),
    (lambda learn: TrainingPhase(opt_fn="sgd"), "opt_fn must be an optimizer class such as torch.optim.SGD"),
    (lambda learn: learn.fit_opt_sched([TrainingPhase(1)], cycle_save_name="a/b"),
     "cycle_save_name must be a plain file name"),
])
def test_bad_phases(tmp_path, call, message):
    learn = make(tmp_path)
    w = learn.model[0].weight.detach().clone()
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        call(learn)
    assert torch.equal(learn.model[0].weight, w)
