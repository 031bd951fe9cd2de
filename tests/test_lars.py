"""LARS against the per-tensor formula, with SGDR, param groups, resume, and without host syncs; LAMB against a
float64 AdamW replay; closure optimizers (LBFGS)."""
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from snapfit import Callback, DataBunch, Learner, load_digits_arrays
from snapfit.callbacks.lars import LAMB, LARS, default_lars_exclude
from tests.helpers import CrashAt, small_data


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


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("clip", [False, True])
def test_lars_ratios_match_the_per_tensor_formula(tmp_path, clip, fused):
    torch.manual_seed(0)
    model = Side()
    learn = Learner(model, small_data(n_trn=32, bs=8), opt_func=lambda ps: torch.optim.SGD(ps, momentum=0.9),
                    wd=1e-3, progress=False, device="cpu", path=tmp_path)
    before, after = Grads(order=5), Grads(order=15)
    lars = LARS(trust_coef=0.02, clip=clip, fused=fused)
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


def test_fused_application_equals_per_tensor_scaling_bit_for_bit(tmp_path):
    """The flat-buffer path (constant number of kernels) and the per-tensor path give the same weights."""
    def run(fused):
        torch.manual_seed(0)
        learn = Learner(Side(), small_data(n_trn=32, bs=8), opt_func=lambda ps: torch.optim.SGD(ps, momentum=0.9),
                        wd=1e-3, progress=False, device="cpu", path=tmp_path)
        lars = LARS(trust_coef=0.02, fused=fused, record_every=1)
        learn.fit(0.5, 2, cycle_len=1, callbacks=[lars])
        return learn.model.state_dict(), lars.history
    (w_per, r_per), (w_flat, r_flat) = run(False), run(True)
    assert r_per == r_flat and len(r_per) == 8
    for k in w_per:
        assert torch.equal(w_per[k], w_flat[k]), k
    with pytest.raises(ValueError, match=r"fused must be True, False or None \(fused for CUDA gradients\), got 'yes'"):
        LARS(fused="yes")


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


@pytest.mark.parametrize("kind", ["LARS", "LARS fused", "LAMB"])
def test_lars_adds_no_host_sync_per_batch(tmp_path, host_reads, kind):
    """What LARS/LAMB add to the reads of device values is the same for 2 and 20 batches an epoch (AdamW itself
    reads its step count per parameter and batch: that is the optimizer's, counted on both sides)."""
    counts = host_reads
    opt = (lambda ps: torch.optim.AdamW(ps)) if kind == "LAMB" else None

    def run(n_trn, with_cb):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        learn = Learner(model, small_data(n_trn=n_trn, bs=4), progress=False, device="cpu", path=tmp_path,
                        opt_func=opt)
        learn.sched.sync_every = 10_000
        counts["n"] = 0
        cb = {"LARS": LARS(), "LARS fused": LARS(fused=True), "LAMB": LAMB()}[kind]
        learn.fit(0.1, 2, callbacks=[cb] if with_cb else [])
        return counts["n"]

    added = [run(n, True) - run(n, False) for n in (8, 80)]
    assert added[0] == added[1] and added[0] <= 2 * 2, added  # the ratios, read back once per epoch


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


# ---------------------------------------------------------------------------- groups, exclusion, resume, LAMB
class GroupGrads(Callback):
    """Per batch and parameter: weight, gradient, and its param group's lr and weight decay (at `order`)."""

    def __init__(self, order, event="after_backward"):
        self.order, self.seen = order, []
        setattr(self, event, self.record)

    def record(self, learn):
        if learn.training:
            group_of = {id(p): g for g in learn.opt.param_groups for p in g["params"]}
            self.seen.append({n: (p.detach().clone(), None if p.grad is None else p.grad.detach().clone(),
                                  group_of[id(p)]["lr"], group_of[id(p)]["weight_decay"])
                              for n, p in learn.model.named_parameters()})


def two_group_learner(tmp_path, opt_func, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    return Learner(model, small_data(n_trn=32, bs=8), layer_groups=[model[0:2], model[2:]], opt_func=opt_func,
                   progress=False, device="cpu", path=tmp_path)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("clip", [False, True])
def test_lars_with_two_groups_of_different_lr_and_wd_and_a_custom_exclude(tmp_path, clip, fused):
    learn = two_group_learner(tmp_path, lambda ps: torch.optim.SGD(ps, momentum=0.9))
    custom = lambda name, p: name in ("2.weight", "0.bias")  # noqa: E731  (a weight left out, other biases in)
    before, after = GroupGrads(order=5), GroupGrads(order=15)
    lars = LARS(trust_coef=0.02, clip=clip, exclude=custom, fused=fused)
    learn.fit([0.05, 0.5], 2, cycle_len=1, wds=[1e-2, 1e-3], callbacks=[before, lars, after])
    assert lars.names == ["0.weight", "2.bias", "4.weight", "4.bias"], "per group, in order, as `exclude` says"
    seen_lrs = set()
    for b, a in zip(before.seen, after.seen):
        for name, (w, g, lr, wd) in b.items():
            assert wd == (1e-2 if name.startswith("0.") else 1e-3)
            seen_lrs.add((name[0], lr))
            want = reference(w, g, wd, lr, 0.02, 1e-8, clip, custom(name, w))
            torch.testing.assert_close(a[name][1].double(), want, rtol=1e-5, atol=1e-9)
    lr_by_group = {}
    for group, lr in seen_lrs:
        lr_by_group.setdefault(group in "0", []).append(lr)
    assert max(lr_by_group[True]) == pytest.approx(0.05) and max(lr_by_group[False]) == pytest.approx(0.5)
    assert [g["weight_decay"] for g in learn.opt.param_groups] == [1e-2, 1e-3], "restored after each step"


@pytest.mark.parametrize("opt", ["Adam", "AdamW", "RMSprop", "Adagrad"])
def test_lars_refuses_adaptive_optimizers_before_any_step(tmp_path, opt):
    learn = two_group_learner(tmp_path, lambda ps: getattr(torch.optim, opt)(ps, lr=1e-3))
    w0 = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match=rf"LARS scales each tensor's gradient, which {opt} divides by per-element "
                                         r"running statistics .* use callbacks=\[LAMB\(\)\] with an adaptive "
                                         r"optimizer, or LARS with SGD"):
        learn.fit(1e-3, 1, callbacks=[LARS()])
    assert all(torch.equal(p, w) for p, w in zip(learn.model.parameters(), w0)), "nothing was trained"


def test_lars_refuses_an_adaptive_optimizer_a_training_phase_switches_to(tmp_path):
    from snapfit import TrainingPhase
    learn = two_group_learner(tmp_path, lambda ps: torch.optim.SGD(ps, lr=1e-2))
    phases = [TrainingPhase(1, opt_fn=torch.optim.SGD, lr=1e-2), TrainingPhase(1, opt_fn=torch.optim.Adam, lr=1e-3)]
    with pytest.raises(ValueError, match=r"which Adam divides by per-element running statistics"):
        learn.fit_opt_sched(phases, callbacks=[LARS()])
    assert learn.position.epoch == 1, "the SGD phase ran; the Adam phase stopped at its first batch"


@pytest.mark.parametrize("kind", ["LARS", "LAMB"])
def test_lars_and_lamb_resume_bit_identically_with_their_recorded_ratios(tmp_path, kind):
    opt = (lambda ps: torch.optim.SGD(ps, momentum=0.9)) if kind == "LARS" else (lambda ps: torch.optim.AdamW(ps))
    make = (lambda: LARS(trust_coef=0.02, record_every=3)) if kind == "LARS" else (lambda: LAMB(record_every=3))
    lrs, wds = [1e-2, 1e-1] if kind == "LARS" else [1e-3, 1e-2], [1e-2, 1e-3]

    ref = two_group_learner(tmp_path / "ref", opt)
    ref_cb = make()
    ref.fit(lrs, 3, cycle_len=1, wds=wds, callbacks=[ref_cb])

    learn = two_group_learner(tmp_path / "run", opt)
    with pytest.raises(RuntimeError, match="power cut"):
        learn.fit(lrs, 3, cycle_len=1, wds=wds, checkpoint="ck", checkpoint_every=5,
                  callbacks=[make(), CrashAt(7, RuntimeError("power cut"), order=-100)])
    fresh = two_group_learner(tmp_path / "run", opt, seed=99)
    cb = make()
    fresh.resume("ck", callbacks=[cb])
    for k, v in ref.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[k], v), f"weights differ at {k}"
    assert cb.iterations == ref_cb.iterations == [2, 5, 8, 11]
    assert cb.history == ref_cb.history


def adamw_reference(seen_b, seen_a, excluded, betas=(0.9, 0.999), eps=1e-8, clip=False):
    """Replays AdamW + LAMB in float64 from the recorded weights and gradients, step by step; returns the largest
    difference from the weights snapfit produced, relative to ``1 + |w|`` (float32 rounds to ~1e-7 of |w|, and the
    step rescaled by the ratio carries that rounding), and the ratios it applied."""
    m, v, worst, ratios = {}, {}, 0.0, []
    for t, (b, a) in enumerate(zip(seen_b, seen_a), start=1):
        step_ratios = {}
        for name, (w, g, lr, wd) in b.items():
            w, g = w.double(), g.double()
            m[name] = betas[0] * m.get(name, 0) + (1 - betas[0]) * g
            v[name] = betas[1] * v.get(name, 0) + (1 - betas[1]) * g * g
            mh, vh = m[name] / (1 - betas[0] ** t), v[name] / (1 - betas[1] ** t)
            u = mh / (vh.sqrt() + eps) + wd * w
            ratio = 1.0
            if not excluded(name, w) and w.norm() > 0 and u.norm() > 0:
                ratio = (w.norm() / u.norm()).item()
                ratio = min(ratio, 1.0) if clip else ratio
                step_ratios[name] = ratio
            want = w - lr * ratio * u
            worst = max(worst, ((a[name][0].double() - want).abs() / (1 + want.abs())).max().item())
        ratios.append(step_ratios)
    return worst, ratios


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("clip", [False, True])
def test_lamb_with_adamw_is_the_papers_update(tmp_path, clip, fused):
    """w <- w - lr * (||w|| / ||u||) * u with u = m_hat / (sqrt(v_hat) + eps) + wd * w, per tensor, per group."""
    learn = two_group_learner(tmp_path, lambda ps: torch.optim.AdamW(ps))
    with torch.no_grad():
        learn.model[0].weight.mul_(10)  # ||w|| > ||u|| for this tensor: a ratio above 1, for clip to cap
    before, after = GroupGrads(order=5), GroupGrads(order=15, event="after_step")
    lamb = LAMB(clip=clip, record_every=1, fused=fused)
    # no warm-up: at lr/100 the step is ~1e-5 of weights ~0.3, and float32 weights resolve it only to ~1e-3
    learn.fit([1e-3, 1e-2], 2, cycle_len=1, wds=[1e-2, 1e-1], warmup=False, callbacks=[before, lamb, after])
    worst, ratios = adamw_reference(before.seen, after.seen, default_lars_exclude, clip=clip)
    assert worst < 1e-6
    assert lamb.names == ["0.weight", "2.weight", "4.weight"]
    recorded = np.array(lamb.history)
    want = np.array([[r[n] for n in lamb.names] for r in ratios])
    # the ratio is measured on the step the float32 weights took: near a cycle's end (lr ~1e-4, |w| ~3) they
    # resolve it to ~1e-3 per element, ~3e-4 in its norm; the weights themselves agree to 1e-6 (above)
    np.testing.assert_allclose(recorded, want, rtol=1e-3)
    if clip:
        assert recorded.max() == 1.0 and recorded.min() < 1.0
    else:
        assert recorded[:, 0].min() > 1.0 > recorded[:, 1:].max(), "the clip test caps the first tensor only"
    assert learn.opt.param_groups[1]["weight_decay"] == 1e-1, "LAMB leaves AdamW its decoupled weight decay"


def test_lamb_refuses_closure_optimizers(tmp_path):
    torch.manual_seed(0)
    learn = Learner(nn.Linear(6, 3), small_data(n_trn=8, bs=8), opt_func=lambda ps: torch.optim.LBFGS(ps),
                    progress=False, device="cpu", path=tmp_path)
    with pytest.raises(ValueError, match=r"LAMB rescales one step per batch; LBFGS takes several"):
        learn.fit(0.1, 1, callbacks=[LAMB()])


def test_lamb_skipped_step_leaves_weights_alone(tmp_path):
    """A step cancelled by a callback (as an AMP overflow does) moves nothing, and LAMB moves nothing either."""
    from snapfit import CancelStepException

    class Skip(Callback):
        order = 20

        def after_backward(self, learn):
            raise CancelStepException()

    learn = two_group_learner(tmp_path, lambda ps: torch.optim.AdamW(ps))
    w0 = [p.detach().clone() for p in learn.model.parameters()]
    learn.fit(1e-2, 1, callbacks=[LAMB(), Skip()])
    assert all(torch.equal(p, w) for p, w in zip(learn.model.parameters(), w0))
