"""Exact resume: SIGKILL mid-cycle and resume in a fresh process (bit-identical weights and
histories), a kill inside a checkpoint write, Ctrl-C at a batch boundary, NaN losses, resuming at a
cycle snapshot, and the errors of resuming the wrong thing."""
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from snapfit import (
    Callback,
    Checkpoint,
    DataBunch,
    Learner,
    NonFiniteLossError,
    ProgressCallback,
)
from snapfit.callbacks.checkpoint import read_checkpoint
from snapfit.io import DamagedFileError
from snapfit.resume import unpack_lists
from tests import resume_job
from tests.helpers import CrashAt

ROOT = Path(__file__).resolve().parent.parent


def run_job(out, *args, expect_kill=False):
    out.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([sys.executable, "-m", "tests.resume_job", str(out), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    if expect_kill:
        assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-2000:])
    else:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def load_result(out):
    return torch.load(out / "final.pt", weights_only=True), json.loads((out / "history.json").read_text())


def assert_same_run(a, b):
    (wa, ha), (wb, hb) = a, b
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"weights differ at {k}"
    for k in ha:
        assert ha[k] == hb[k], f"history {k} differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    run_job(out, "full")
    return load_result(out)


def kill_iteration(seed, epochs=7):
    """A seeded random batch strictly inside a cycle (not at an epoch or cycle boundary, not on a checkpoint)."""
    rng = random.Random(seed)
    n = resume_job.BATCHES_PER_EPOCH * epochs
    candidates = [k for k in range(resume_job.CHECKPOINT_EVERY + 1, n - 1)
                  if k % resume_job.BATCHES_PER_EPOCH and k % resume_job.CHECKPOINT_EVERY]
    return rng.choice(candidates)


@pytest.mark.slow
def test_sigkill_mid_cycle_then_resume_in_a_fresh_process_is_bit_identical(tmp_path, reference):
    at = kill_iteration(seed=2026)
    out = tmp_path / "run"
    run_job(out, "kill", "--at", str(at), expect_kill=True)
    state = read_checkpoint(out / "models" / "ckpt.pt")  # weights_only load
    assert state["position"]["iteration"] == at // 10 * 10
    assert 0 < state["position"]["batch_idx"] < resume_job.BATCHES_PER_EPOCH, "the checkpoint is mid-epoch"
    run_job(out, "resume")
    assert_same_run(load_result(out), reference)
    assert sorted(p.name for p in (out / "models").glob("*.pt")) == [
        "ckpt.pt", "snap_cyc_0.pt", "snap_cyc_1.pt", "snap_cyc_2.pt"]


@pytest.mark.slow
@pytest.mark.parametrize("schedule,epochs", [("onecycle", 4), ("phases", 7)])
def test_sigkill_and_resume_of_one_cycle_and_of_training_phases_is_bit_identical(tmp_path, schedule, epochs):
    ref = tmp_path / "full"
    run_job(ref, "full", "--schedule", schedule)
    at = kill_iteration(seed=7, epochs=epochs)
    out = tmp_path / "run"
    run_job(out, "kill", "--at", str(at), "--schedule", schedule, expect_kill=True)
    assert read_checkpoint(out / "models" / "ckpt.pt")["position"]["iteration"] == at // 10 * 10
    run_job(out, "resume", "--schedule", schedule)
    assert_same_run(load_result(out), load_result(ref))
    for f in (ref / "models").glob("snap_cyc_*.pt"):  # the snapshots of the resumed run are the same files
        a, b = torch.load(f, weights_only=True), torch.load(out / "models" / f.name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), f.name


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, reference):
    out = tmp_path / "run"
    run_job(out, "kill-in-write", "--write", "3", expect_kill=True)
    state = read_checkpoint(out / "models" / "ckpt.pt")
    assert state["position"]["iteration"] == 20, "the second checkpoint (batch 20) is intact"
    leftovers = [p.name for p in (out / "models").iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1, "the complete-but-unrenamed third checkpoint is a temp file"
    run_job(out, "resume")
    assert_same_run(load_result(out), reference)
    assert not [p for p in (out / "models").iterdir() if p.name.endswith(".tmp")], "stale temp files are removed"


# ---------------------------------------------------------------------------- in-process
def result(learn):
    rec = learn.sched
    return ({k: v.clone() for k, v in learn.model.state_dict().items()},
            dict(group_lrs=rec.group_lrs, losses=rec.losses, val_losses=rec.val_losses, metrics=rec.metrics))


@pytest.fixture(scope="module")
def in_process_reference(tmp_path_factory):
    learn = resume_job.build(str(tmp_path_factory.mktemp("ref")))
    learn.fit(**resume_job.FIT)
    return result(learn)


class SendSigint(Callback):
    def __init__(self, iteration, training=True):
        self.iteration, self.training = iteration, training

    def after_pred(self, learn):  # mid-batch: the loop must finish this batch before stopping
        if learn.training == self.training and learn.iteration == self.iteration:
            os.kill(os.getpid(), signal.SIGINT)
            self.iteration = -1


def test_ctrl_c_stops_at_the_batch_boundary_and_writes_a_checkpoint(tmp_path, in_process_reference, capsys):
    learn = resume_job.build(str(tmp_path))
    learn.get_cb(ProgressCallback).bars = True
    with pytest.raises(KeyboardInterrupt, match="interrupted before epoch 2, batch 6"):
        learn.fit(**resume_job.FIT, checkpoint="ckpt", checkpoint_every=1000, callbacks=[SendSigint(43)])
    assert learn.get_cb(ProgressCallback)._bar is None, "progress bars are closed"
    assert learn.iteration == 44 and learn.interrupted == "train"
    assert "continue with learn.resume('ckpt')" in capsys.readouterr().err
    state = read_checkpoint(tmp_path / "models" / "ckpt.pt")
    assert state["position"] == dict(epoch=2, batch_idx=6, iteration=44, n_epochs=7, n_batches=19, stage="train")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the SIGINT handler is restored"
    # the same learner stays usable, and a fresh one resumes bit-identically
    fresh = resume_job.build(str(tmp_path), seed=99)
    fresh.resume("ckpt")
    assert_same_run(result(fresh), in_process_reference)


def test_ctrl_c_during_validation_resumes_exactly(tmp_path, in_process_reference):
    learn = resume_job.build(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        learn.fit(**resume_job.FIT, checkpoint="ckpt", callbacks=[SendSigint(38, training=False)])
    assert learn.interrupted == "validate"
    assert read_checkpoint(tmp_path / "models" / "ckpt.pt")["position"]["batch_idx"] == 19
    fresh = resume_job.build(str(tmp_path), seed=5)
    fresh.resume("ckpt")
    assert_same_run(result(fresh), in_process_reference)


def test_second_ctrl_c_interrupts_at_once(tmp_path):
    class TwoSignals(Callback):
        def after_pred(self, learn):
            if learn.iteration == 3:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    learn = resume_job.build(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        learn.fit(**resume_job.FIT, checkpoint="ckpt", callbacks=[TwoSignals()])
    assert learn.interrupted is None and learn.iteration == 3, "stopped inside batch 3"
    assert not (tmp_path / "models" / "ckpt.pt").exists(), "no checkpoint of an inconsistent state"
    learn.fit(0.01, 1)  # still usable


@pytest.mark.parametrize("every,expected", [
    (25, [25, 50, 75, 100, 125, 133]),
    ("epoch", [19, 38, 57, 76, 95, 114, 133]),  # the end of the fit is the last epoch's end: written once
    ("cycle", [19, 57, 133]),
])
def test_checkpoint_cadence(tmp_path, every, expected):
    learn = resume_job.build(str(tmp_path))
    ck = Checkpoint("ck", every)
    learn.fit(**resume_job.FIT, callbacks=[ck])
    assert [it for it, _ in ck.written] == expected


def test_epoch_checkpoint_resume_and_completed_fit(tmp_path, in_process_reference):
    learn = resume_job.build(str(tmp_path))

    with pytest.raises(RuntimeError, match="power cut"):
        learn.fit(**resume_job.FIT, checkpoint="ckpt", checkpoint_every="epoch",
                  callbacks=[CrashAt(60, RuntimeError("power cut"))])
    assert read_checkpoint(tmp_path / "models" / "ckpt.pt")["position"]["epoch"] == 3
    fresh = resume_job.build(str(tmp_path), seed=7)
    out = fresh.resume("ckpt")
    assert_same_run(result(fresh), in_process_reference)
    # resuming a completed fit changes nothing and returns its last values
    again = resume_job.build(str(tmp_path), seed=8)
    assert again.resume("ckpt") == out
    for k, v in again.model.state_dict().items():
        assert torch.equal(v, fresh.model.state_dict()[k])


def test_resume_through_fit_checks_the_arguments(tmp_path):
    learn = resume_job.build(str(tmp_path))
    with pytest.raises(RuntimeError):
        learn.fit(0.05, 2, cycle_len=1, checkpoint="ckpt", checkpoint_every=5, callbacks=[CrashAt(27)])
    with pytest.raises(ValueError, match=r"resume='ckpt' continues a different fit: lrs: checkpoint has \[0\.05\], "
                                         r"this call \[0\.1\]"):
        learn.fit(0.1, 2, cycle_len=1, resume="ckpt")
    with pytest.raises(ValueError, match="cycle_len: checkpoint has 1, this call 2"):
        learn.fit(0.05, 2, cycle_len=2, resume="ckpt")
    learn.fit(0.05, 2, cycle_len=1, resume="ckpt")  # same arguments: continues
    assert learn.iteration == 38


def test_plain_dataloader_resumes_by_skipping(tmp_path):
    """A loader whose sampler cannot start mid-epoch (sequential here): the done batches are skipped."""
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    data = DataBunch(DataLoader(TensorDataset(x, y), batch_size=8), loss_func=nn.CrossEntropyLoss())

    def make(seed):
        torch.manual_seed(seed)
        return Learner(nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 2)), data, path=tmp_path,
                       progress=False, device="cpu")

    ref = make(0)
    ref.fit(0.1, 2, cycle_len=1)
    learn = make(0)
    with pytest.raises(RuntimeError):
        learn.fit(0.1, 2, cycle_len=1, checkpoint="c", checkpoint_every=3, callbacks=[CrashAt(11)])
    fresh = make(1)
    fresh.resume("c")
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, fresh.model.state_dict()[k])
    assert fresh.sched.losses == ref.sched.losses


def test_nan_loss_stops_with_epoch_and_batch_and_keeps_files(tmp_path):
    learn = resume_job.build(str(tmp_path))

    class Poison(Callback):
        order = 10
        def after_loss(self, learn):
            if learn.training and learn.iteration == 44:
                learn.loss = learn.loss_grad = learn.loss * float("nan")

    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at epoch 2, batch 6 \(iteration 44\).*"
                                                 r"untouched: \['ckpt\.pt', 'snap_cyc_0\.pt'\]"):
        learn.fit(**resume_job.FIT, checkpoint="ckpt", checkpoint_every=10, callbacks=[Poison()])
    state = read_checkpoint(tmp_path / "models" / "ckpt.pt")
    assert state["position"]["iteration"] == 40, "no checkpoint after the NaN"
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert learn.sched.nonfinite_at == 44


def test_nan_is_found_without_a_per_batch_sync(tmp_path):
    """With the default sync interval the check lags behind the bad batch but still names it."""
    learn = resume_job.build(str(tmp_path))
    seen = []

    class Poison(Callback):
        def after_loss(self, learn):
            if learn.training and learn.iteration == 3:
                learn.loss = learn.loss_grad = learn.loss + float("inf")

        def after_batch(self, learn):
            seen.append(learn.iteration)

    with pytest.raises(NonFiniteLossError, match=r"training loss is inf at epoch 0, batch 3"):
        learn.fit(0.05, 1, callbacks=[Poison()])
    assert seen[-1] == 18, "detected when the epoch's losses were read back, not per batch"


def test_start_cycle_continues_the_schedule_from_a_snapshot(tmp_path, in_process_reference):
    ref_lrs = in_process_reference[1]["group_lrs"]
    learn = resume_job.build(str(tmp_path))
    learn.fit(**resume_job.FIT)
    ends = learn.sched.cycle_ends  # [19, 57, 133]
    other = resume_job.build(str(tmp_path), seed=3)
    other.load_cycle("snap", 0)
    other.fit(**resume_job.FIT, start_cycle=1)
    assert other.sched.iterations[0] == ends[0] and other.sched.group_lrs == ref_lrs[ends[0]:]
    assert other.sched.cycle_ends == ends[1:]
    assert len(other.sched.val_losses) == 6 and other.sched.epoch_iterations[0] == 38
    assert other.saved_cycles("snap") == [0, 1, 2]
    with pytest.raises(ValueError, match=r"start_cycle must be an int in \[0, n_cycle=3\), got 3"):
        other.fit(**resume_job.FIT, start_cycle=3)


def test_resume_errors(tmp_path):
    learn = resume_job.build(str(tmp_path))
    learn.fit(0.05, 1, checkpoint="ckpt")
    learn.save("weights")
    with pytest.raises(DamagedFileError, match="is not a snapfit checkpoint .*a state dict of weights"):
        learn.resume("weights")
    with pytest.raises(FileNotFoundError, match=r"no such file: .*nope\.pt; files in .*\['ckpt\.pt', 'weights\.pt'\]"):
        learn.resume("nope")
    # a different model
    other = Learner(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), learn.data, path=tmp_path, progress=False,
                    device="cpu")
    with pytest.raises(ValueError, match=r"checkpoint 'ckpt'.*unexpected keys: '0\.weight', '0\.bias'.*"
                                         r"shape mismatches: 1\.weight: file \(16,\) vs model \(10, 64\)"):
        other.resume("ckpt")
    # truncated
    p = tmp_path / "models" / "ckpt.pt"
    p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(DamagedFileError, match=r"ckpt\.pt is damaged .*\['weights\.pt'\]"):
        learn.resume("ckpt")


def test_resume_with_other_data_is_refused(tmp_path):
    learn = resume_job.build(str(tmp_path))
    with pytest.raises(RuntimeError):
        learn.fit(0.05, 1, checkpoint="c", checkpoint_every=5, callbacks=[CrashAt(7)])
    x_trn, y_trn, x_val, y_val = (np.asarray(a) for a in resume_job.load_digits_arrays(seed=0))
    learn.data = DataBunch.from_arrays(x_trn[:600], y_trn[:600], x_val, y_val, bs=32, seed=2)  # other order
    with pytest.raises(ValueError, match="data order of the resumed epoch differs"):
        learn.resume("c")
    learn.data = DataBunch.from_arrays(x_trn[:300], y_trn[:300], x_val, y_val, bs=32, seed=1)
    with pytest.raises(ValueError, match="1 epochs x 19 batches but this one has 1 x 10"):
        learn.resume("c")


def test_checkpoint_holds_only_plain_data(tmp_path):
    learn = resume_job.build(str(tmp_path))
    learn.fit(0.05, 1, checkpoint="c", checkpoint_every=4)
    state = torch.load(tmp_path / "models" / "c.pt", weights_only=True)
    assert set(state) == {"format", "version", "torch_version", "model", "opt", "position", "fit_args", "callbacks",
                          "rng", "world_size", "data"}
    assert state["world_size"] == 1 and "rng_ranks" not in state, "one process: its RNG only"
    assert set(state["rng"]) >= {"torch", "python", "numpy"}
    assert state["opt"]["state"], "momentum buffers are saved"
    callbacks = unpack_lists(state["callbacks"])  # long lists of numbers are stored as tensors
    assert "recorder" in callbacks and len(callbacks["recorder"]["losses"]) == 19
    assert state["data"]["order"].shape == (600,)


def test_checkpointing_with_a_random_sampler_warns(tmp_path):
    x, y = torch.randn(32, 6), torch.randint(0, 2, (32,))
    data = DataBunch(DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True), loss_func=nn.CrossEntropyLoss())
    learn = Learner(nn.Linear(6, 2), data, path=tmp_path, progress=False, device="cpu")
    with pytest.warns(UserWarning, match="RandomSampler draws each epoch's order from the global RNG"):
        learn.fit(0.1, 1, checkpoint="c")
