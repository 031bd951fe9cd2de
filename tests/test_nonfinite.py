"""Nothing non-finite is written: weights (and a checkpoint's optimizer state) are checked right before every
write, the last good files stay on disk and resume bit-identically; loading refuses NaN/inf weights unless
asked; the check reads nothing back per batch."""
import os
import re

import pytest
import torch

from snapfit import Callback, Learner
from snapfit.callbacks.checkpoint import read_checkpoint
from snapfit.finite import NonFiniteError, NonFiniteLossError, NonFiniteWeightsError, nonfinite_tensors
from snapfit.io import atomic_save, load_file
from tests import resume_job
from tests.helpers import small_data, small_model

FIT = dict(resume_job.FIT, checkpoint="ckpt", checkpoint_every=3)  # 7 epochs of 19 batches, 3 cycles


class Poison(Callback):
    """At training batch `iteration`, after `event`, put an inf into the first conv's weight or gradient."""

    def __init__(self, iteration, event, what):
        self.iteration, self.what = iteration, what
        setattr(self, event, self.poison)

    def poison(self, learn):
        if learn.training and learn.iteration == self.iteration:
            t = learn.model[0].weight
            with torch.no_grad():
                (t.grad if self.what == "grad" else t).view(-1)[0] = float("inf")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    learn = resume_job.build(str(tmp_path_factory.mktemp("ref")))
    learn.fit(**resume_job.FIT)
    return {k: v.clone() for k, v in learn.model.state_dict().items()}, learn.sched.state_dict()


def assert_finite_file(path):
    assert nonfinite_tensors(load_file(path)) == [], f"{path.name} holds NaN or inf"


@pytest.mark.parametrize("case,iteration,event,what,kept_at,message", [
    # a gradient set to inf after the backward of a checkpoint batch: weight and momentum become inf
    ("grad at a checkpoint batch", 29, "after_backward", "grad", 27,
     r"the weights hold NaN or infinite values at epoch 1, batch 10 \(iteration 29\) in 1 tensor\(s\): '0\.weight': "
     r"ckpt\.pt was not written; the fit was stopped and the files written before it are untouched: "
     r"\['ckpt\.pt', 'snap_cyc_0\.pt'\]"),
    # a weight set to inf after the step of batch 50: the checkpoint after batch 50 is refused
    ("weight after a step", 50, "after_step", "weight", 48, r"at epoch 2, batch 12 \(iteration 50\) in 1 tensor"),
    # a gradient overflow on the last batch of cycle 0: validation loss is NaN, and no snapshot of that cycle
    ("overflow at a cycle end", 18, "after_backward", "grad", 18,
     r"at the end of epoch 0 \(iteration 19\) in 1 tensor\(s\): '0\.weight': snap_cyc_0\.pt was not written; the fit "
     r"was stopped and the files written before it are untouched: \['ckpt\.pt'\]"),
])
def test_nonfinite_weights_are_never_written(tmp_path, reference, case, iteration, event, what, kept_at, message):
    learn = resume_job.build(str(tmp_path))
    with pytest.raises(NonFiniteWeightsError, match=message):
        learn.fit(**FIT, callbacks=[Poison(iteration, event, what)])
    models = tmp_path / "models"
    state = read_checkpoint(models / "ckpt.pt")
    assert state["position"]["iteration"] == kept_at, "the last good checkpoint is the one on disk"
    for f in models.glob("*.pt"):
        assert_finite_file(f)
    assert (models / "snap_cyc_0.pt").exists() == (iteration > 18)
    fresh = resume_job.build(str(tmp_path), seed=99)
    fresh.resume("ckpt")
    weights, history = reference
    for k, v in fresh.model.state_dict().items():
        assert torch.equal(v, weights[k]), f"resuming from the kept checkpoint differs at {k}"
    assert fresh.sched.state_dict() == history


def test_nonfinite_errors_share_a_base():
    assert issubclass(NonFiniteWeightsError, NonFiniteError) and issubclass(NonFiniteLossError, NonFiniteError)
    assert issubclass(NonFiniteError, FloatingPointError)


def test_save_refuses_nonfinite_weights_outside_a_fit(make_learner, tmp_path):
    learn = make_learner()
    learn.save("good")
    with torch.no_grad():
        learn.model[2].bias[1] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"in 1 tensor\(s\): '2\.bias': bad\.pt was not written and the "
                                                    r"files written before it are untouched: \['good\.pt'\]"):
        learn.save("bad")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["good.pt"]


def poisoned_file(learn, name):
    state = {k: v.clone() for k, v in learn.model.state_dict().items()}
    state["0.weight"][0, 0] = float("inf")
    atomic_save(state, learn.model_file(name))


def test_loading_nonfinite_weights_is_refused_unless_allowed(make_learner):
    learn = make_learner()
    learn.fit(0.1, 2, cycle_len=1, cycle_save_name="snap", checkpoint="ckpt")
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    poisoned_file(learn, "w")
    poisoned_file(learn, "snap_cyc_1")
    want = r"holds NaN or infinite values in 1 tensor\(s\): '0\.weight'; it was not loaded \(pass allow_nonfinite=True"
    with pytest.raises(NonFiniteWeightsError, match=r"w\.pt " + want):
        learn.load("w")
    with pytest.raises(NonFiniteWeightsError, match=r"snap_cyc_1\.pt " + want):
        learn.load_cycle("snap", 1)
    with pytest.raises(NonFiniteWeightsError, match=want):
        learn.predict_snapshots("snap")
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, before[k]), "a refused file changes nothing"
    learn.load("w", allow_nonfinite=True)
    assert torch.isinf(learn.model[0].weight[0, 0])
    learn.load_cycle("snap", 1, allow_nonfinite=True)


def test_resuming_a_nonfinite_checkpoint_is_refused_unless_allowed(make_learner, tmp_path):
    learn = make_learner()
    learn.fit(0.1, 2, checkpoint="ckpt")
    path = tmp_path / "models" / "ckpt.pt"
    state = read_checkpoint(path)
    state["opt"]["state"][0]["momentum_buffer"][0, 0] = float("nan")
    atomic_save(state, path)
    with pytest.raises(NonFiniteWeightsError, match=r"checkpoint 'ckpt' holds NaN or infinite values in 1 tensor\(s\): "
                                                    r"'optimizer\.0\.momentum_buffer'"):
        make_learner().resume("ckpt")
    # allowed, it loads; the fit (completed: nothing left to run) then ends by writing its checkpoint, which
    # refuses the NaN it still holds
    with pytest.raises(NonFiniteWeightsError, match=r"the optimizer state holds NaN .*ckpt\.pt was not written"):
        make_learner().resume("ckpt", allow_nonfinite=True)


def test_checks_at_writes_read_nothing_back_per_batch(tmp_path, host_reads):
    def run(n_batches):
        learn = Learner(small_model(), small_data(n_trn=4 * n_batches, n_val=8, bs=4), progress=False, device="cpu",
                        path=tmp_path)
        learn.sched.sync_every = 10_000
        host_reads["n"] = 0
        learn.fit(0.1, 2, cycle_len=1, cycle_save_name="s", checkpoint="c", checkpoint_every="epoch")
        return host_reads["n"]

    assert run(2) == run(20)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_permissions_of_the_umask(make_learner, tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        learn = make_learner()
        learn.fit(0.1, 1, cycle_len=1, cycle_save_name="snap", checkpoint="ckpt")
        path = learn.save("w")
    finally:
        os.umask(old)
    for f in (path, tmp_path / "models" / "ckpt.pt", tmp_path / "models" / "snap_cyc_0.pt",
              tmp_path / "models" / "snap_cyc_0.json"):
        assert f.stat().st_mode & 0o777 == mode, f"{f.name}: {oct(f.stat().st_mode & 0o777)}"


def test_nonfinite_tensors_names_nested_tensors():
    state = {"a": torch.ones(3), "b": {"c": torch.tensor([1.0, float("nan")]), "d": [torch.zeros(2),
                                                                                     torch.full((2,), -float("inf"))]},
             "i": torch.tensor([1, 2])}
    assert nonfinite_tensors(state) == ["b.c", "b.d[1]"]
    assert re.search("b.c", ", ".join(nonfinite_tensors(state)))
