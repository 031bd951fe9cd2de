"""The SGDR schedule: per-batch LRs against torch's CosineAnnealingWarmRestarts and the fastai
0.7 warm-up formula, epoch counts, and per-group scaling."""
import math

import pytest
import torch
from torch import nn

from snapfit import SGDR, ConstantLR
from tests.helpers import small_data


def torch_trace(base_lrs, T_0, T_mult, n):
    params = [nn.Parameter(torch.zeros(1)) for _ in base_lrs]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs)], momentum=0.9)
    sch = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=T_0, T_mult=T_mult, eta_min=0)
    out = []
    for _ in range(n):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sch.step()
    return out


@pytest.mark.parametrize("n_cycle,cycle_len,cycle_mult", [(3, 1, 2), (4, 2, 1), (2, 3, 3), (1, 1, 1)])
def test_fit_lr_trace_equals_torch_cosine_warm_restarts(make_learner, n_cycle, cycle_len, cycle_mult):
    data = small_data(n_trn=56, bs=8)  # 7 batches per epoch
    learn = make_learner(data=data)
    learn.fit(0.3, n_cycle, cycle_len=cycle_len, cycle_mult=cycle_mult, warmup=False)
    got = learn.sched.group_lrs
    nb = 7 * cycle_len
    n_epochs = cycle_len * sum(cycle_mult ** i for i in range(n_cycle))
    assert len(got) == 7 * n_epochs
    want = torch_trace([0.3], nb, cycle_mult, len(got))
    for it, (g, w) in enumerate(zip(got, want)):
        assert g[0] == pytest.approx(w[0], abs=1e-12), f"iteration {it}"


def test_per_group_lrs_scale_with_the_same_cosine():
    s = SGDR([1e-3, 1e-2, 1e-1], batches_per_epoch=5, n_cycle=3, cycle_len=1, cycle_mult=2, warmup=False)
    want = torch_trace([1e-3, 1e-2, 1e-1], 5, 2, s.total_iterations)
    for it in range(s.total_iterations):
        assert s.lrs_at(it) == pytest.approx(want[it], abs=1e-12)


def test_warmup_first_twentieth_of_first_cycle_at_lr_over_100():
    # nb = 23 * 2 = 46 -> iterations 0, 1, 2 (< 2.3) at lr/100; then the cosine continues (not restarted)
    s = SGDR([0.5], batches_per_epoch=23, n_cycle=2, cycle_len=2, cycle_mult=1, warmup=True)
    lrs = [s.lrs_at(i)[0] for i in range(s.total_iterations)]
    assert lrs[:3] == [0.005] * 3
    for t in range(3, 46):
        assert lrs[t] == pytest.approx(0.25 * (1 + math.cos(math.pi * t / 46)), abs=1e-15)
    # the second cycle has no warm-up: it restarts at lr_max
    assert lrs[46] == 0.5
    assert lrs[47] == pytest.approx(0.25 * (1 + math.cos(math.pi / 46)), abs=1e-15)


def test_warmup_in_a_real_fit(make_learner):
    learn = make_learner(data=small_data(n_trn=200, bs=8))  # 25 batches, nb/20 = 1.25 -> 2 warm-up batches
    learn.fit(0.2, 1, cycle_len=1)
    lrs = learn.sched.lrs
    assert lrs[:2] == [0.002, 0.002]
    assert lrs[2] == pytest.approx(0.1 * (1 + math.cos(math.pi * 2 / 25)), abs=1e-15)


@pytest.mark.parametrize("n_cycle,cycle_len,cycle_mult,epochs", [
    (1, 1, 1, 1), (3, 1, 1, 3), (3, 1, 2, 7), (2, 2, 3, 8), (4, 1, 2, 15), (3, 2, 2, 14)])
def test_epoch_count_and_cycle_ends(make_learner, n_cycle, cycle_len, cycle_mult, epochs):
    learn = make_learner(data=small_data(n_trn=16, bs=8))  # 2 batches per epoch
    learn.fit(0.1, n_cycle, cycle_len=cycle_len, cycle_mult=cycle_mult, cycle_save_name="s")
    assert len(learn.sched.val_losses) == epochs
    assert len(learn.sched.lrs) == 2 * epochs
    ends, total = [], 0
    for c in range(n_cycle):
        total += 2 * cycle_len * cycle_mult ** c
        ends.append(total)
    assert learn.sched.cycle_ends == ends
    assert learn.saved_cycles("s") == list(range(n_cycle))


def test_constant_lr_without_cycle_len(make_learner):
    learn = make_learner()
    learn.fit([0.05], 3)
    assert len(learn.sched.val_losses) == 3
    assert set(learn.sched.lrs) == {0.05}
    assert learn.sched.cycle_ends == []


def test_schedule_is_a_pure_function_of_the_iteration():
    s = SGDR([1.0], batches_per_epoch=10, n_cycle=4, cycle_len=1, cycle_mult=2)
    forward = [s.lrs_at(i) for i in range(s.total_iterations)]
    backward = [s.lrs_at(i) for i in reversed(range(s.total_iterations))][::-1]
    assert forward == backward
    assert [s.locate(i)[0] for i in (0, 9, 10, 29, 30, 69, 70, 149)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [i for i in range(1, 151) if s.is_cycle_end(i)] == [10, 30, 70, 150] == s.cycle_ends()
    assert ConstantLR([0.1, 0.2], 3, 2).lrs_at(5) == [0.1, 0.2]


def test_step_decay_through_fit_schedule(make_learner):
    from snapfit import StepDecay

    learn = make_learner(data=small_data(n_trn=16, bs=8))  # 2 batches per epoch
    learn.fit_schedule(StepDecay([0.1], 2, 5, milestones=(2, 4), gamma=0.1))
    assert learn.sched.lrs == pytest.approx([0.1] * 4 + [0.01] * 4 + [0.001] * 2)
    with pytest.raises(ValueError, match="the schedule has 3 batches per epoch but the training loader has 2"):
        learn.fit_schedule(StepDecay([0.1], 3, 5))
    with pytest.raises(TypeError, match="schedule must be a snapfit Schedule"):
        learn.fit_schedule("cosine")
