"""Multi-process training that survives (torchrun, gloo, 2 processes on the CPU): a rank SIGKILLed mid-epoch and
restarted by ``torchrun --max-restarts`` resumes bit-identically with ``resume=True``; two "nodes" equal one;
``sync_bn`` follows the single process; predictions are gathered; validation values are global on uneven
shards; the LR range test agrees on every rank. Plus ``resume=True``, world-size checks and mixed-precision
resume in one process."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from snapfit import Learner
from snapfit.callbacks.checkpoint import read_checkpoint
from tests import ddp_resume_job as job
from tests.helpers import CrashAt, small_data

ROOT = Path(__file__).resolve().parent.parent


def torchrun(out, *args, nproc=2, extra=(), timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *extra,
           "-m", "tests.ddp_resume_job", str(out), *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def single(out, *args, expect_kill=False):
    done = subprocess.run([sys.executable, "-m", "tests.ddp_resume_job", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    if expect_kill:
        assert done.returncode == -9, done.stderr[-3000:]
    else:
        assert done.returncode == 0, done.stderr[-3000:]


def result(out, rank=0):
    return (torch.load(Path(out) / f"rank{rank}.pt", weights_only=True),
            json.loads((Path(out) / f"rank{rank}.json").read_text()))


def assert_same(a, b, ranks=(0, 1)):
    for r in ranks:
        (wa, ha), (wb, hb) = result(a, r), result(b, r)
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"rank {r}: weights differ at {k}"
        for key in ("lrs", "losses", "vals", "iteration"):
            assert ha[key] == hb[key], f"rank {r}: {key} differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 2-process run."""
    out = tmp_path_factory.mktemp("ddp_full")
    torchrun(out)
    return out


@pytest.mark.slow
def test_a_rank_killed_mid_epoch_is_restarted_by_torchrun_and_resumes_bit_identically(tmp_path, reference):
    out = tmp_path / "run"
    done = torchrun(out, "--resume", "--kill-rank", "1", "--kill-at", "30", extra=["--max-restarts=1"])
    assert "resume=True: continuing from checkpoint" in done.stderr
    assert_same(out, reference)
    assert result(out, 1)[1]["attempt"] == 1, "the ranks that finished are the restarted ones"
    for name in ("snap_cyc_0.pt", "snap_cyc_1.pt"):
        a, b = (torch.load(d / "run" / "models" / name, weights_only=True) for d in (out, reference))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    state = read_checkpoint(out / "run" / "models" / "ckpt.pt")
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2 and len(state["callbacks_ranks"]) == 2


@pytest.mark.slow
def test_two_nodes_of_one_process_equal_one_node_of_two(tmp_path, reference):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two_nodes"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=localhost:{port}", "--rdzv-id=snapfit-test", "-m", "tests.ddp_resume_job", str(out)]
    nodes = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [n.communicate(timeout=240) for n in nodes]
    assert all(n.returncode == 0 for n in nodes), [o[1][-2000:] for o in outs]
    assert_same(out, reference)


@pytest.fixture(scope="module")
def sync_bn_runs(tmp_path_factory):
    """Without Dropout: 2 ranks x 32 with and without sync_bn, 1 process x 64; the first with --checks."""
    root = tmp_path_factory.mktemp("sync_bn")
    torchrun(root / "synced", "--sync-bn", "--no-dropout", "--checks")
    torchrun(root / "plain", "--no-dropout")
    single(root / "single", "--bs", "64", "--no-dropout")
    return root


@pytest.mark.slow
def test_sync_bn_follows_the_single_process_with_the_global_batch(sync_bn_runs):
    (one, _), (synced0, _), (synced1, _), (plain, _) = (result(sync_bn_runs / d, r) for d, r in (
        ("single", 0), ("synced", 0), ("synced", 1), ("plain", 0)))
    assert all(torch.equal(synced0[k], synced1[k]) for k in one), "every rank holds the same model"
    assert max((synced0[k].float() - one[k].float()).abs().max().item() for k in one) < 1e-5
    assert max((plain[k].float() - one[k].float()).abs().max().item() for k in one) > 1e-3, \
        "without sync_bn each rank normalises with its own half of the batch"
    assert set(synced0) == set(one), "same state dict keys: snapshots load into a model without sync_bn"


@pytest.mark.slow
def test_predictions_are_gathered_and_validation_values_are_global_on_uneven_shards(sync_bn_runs):
    n_val = 359  # odd: the two validation shards are 180 and 179 samples
    for r in (0, 1):
        c = torch.load(sync_bn_runs / "synced" / f"checks{r}.pt", weights_only=True)
        assert c["preds"].shape == c["direct"].shape == (n_val, 10)
        torch.testing.assert_close(c["preds"], c["direct"], rtol=0, atol=1e-6)  # the whole set, in order
        torch.testing.assert_close(c["preds_t"], c["direct"], rtol=0, atol=1e-6)
        assert torch.equal(c["targs"], c["y_val"]) and torch.equal(c["snap_targs"], c["y_val"])
        assert c["snap_probs"].shape == (n_val, 10)
        assert c["vals"][0] == pytest.approx(c["direct_loss"], abs=1e-6), "no sample counted twice or dropped"
        assert c["vals"][1] == pytest.approx(c["direct_acc"], abs=1e-9)
        assert c["tta"].shape == (3, n_val, 10), "TTA: the plain pass and 2 augmented ones, each of the whole set"
        torch.testing.assert_close(c["tta"][0], c["tta_direct"], rtol=0, atol=1e-6)
    c0, c1 = (torch.load(sync_bn_runs / "synced" / f"checks{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(c0["snap_probs"], c1["snap_probs"]) and torch.equal(c0["tta"], c1["tta"])


@pytest.mark.slow
def test_lr_find_under_torchrun_is_the_same_on_every_rank(sync_bn_runs):
    c0, c1 = (torch.load(sync_bn_runs / "synced" / f"checks{r}.pt", weights_only=True) for r in (0, 1))
    assert c0["finder_lrs"] == c1["finder_lrs"], "same LRs, stopped at the same batch"
    assert 10 < len(c0["finder_lrs"]) < 40, "the range test stopped when the (all-reduced) loss diverged"
    assert c0["restored"] and c1["restored"], "every rank put its weights back"


@pytest.mark.slow
def test_a_checkpoint_from_two_processes_is_refused_by_one(tmp_path, reference):
    learn = job.build(str(tmp_path), bs=32)
    (tmp_path / "run" / "models").mkdir(parents=True)
    (tmp_path / "run" / "models" / "ckpt.pt").write_bytes((reference / "run" / "models" / "ckpt.pt").read_bytes())
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    fit = dict(job.FIT)
    with pytest.raises(ValueError, match=r"checkpoint 'ckpt' was written by a fit on 2 process\(es\) but this run "
                                         r"has 1: .*resume it with 2 \(torchrun --nproc_per_node=2\)"):
        learn.fit(fit.pop("lrs"), fit.pop("n_cycle"), **fit, resume=True)
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in before.items()), "nothing was loaded"


# ---------------------------------------------------------------------------- one process
@pytest.mark.slow
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_fit_killed_and_resumed_is_bit_identical_on_cpu(tmp_path, amp):
    single(tmp_path / "full", "--amp", amp)
    single(tmp_path / "run", "--amp", amp, "--kill-rank", "0", "--kill-at", "30", expect_kill=True)
    assert read_checkpoint(tmp_path / "run" / "run" / "models" / "ckpt.pt")["position"]["iteration"] == 28
    single(tmp_path / "run", "--amp", amp, "--resume")
    assert_same(tmp_path / "run", tmp_path / "full", ranks=(0,))


def fit_small(learn, **kw):
    return learn.fit(0.1, 2, cycle_len=1, checkpoint="ck", checkpoint_every=3, **kw)


def small_learner(path, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))
    return Learner(model, small_data(n_trn=80, bs=8), progress=False, device="cpu", path=path)


def test_resume_true_starts_fresh_then_continues_after_a_crash(tmp_path):
    ref = small_learner(tmp_path / "ref")
    fit_small(ref)
    fresh = small_learner(tmp_path / "run")
    with pytest.raises(RuntimeError, match="power cut"):
        fit_small(fresh, resume=True, callbacks=[CrashAt(13, RuntimeError("power cut"))])  # no file yet: fresh
    again = small_learner(tmp_path / "run", seed=99)
    fit_small(again, resume=True)
    for k, v in ref.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v), k
    assert again.sched.lrs == ref.sched.lrs
    done = small_learner(tmp_path / "run", seed=7)
    fit_small(done, resume=True)  # the checkpoint of a finished fit: nothing left to train
    assert all(torch.equal(done.model.state_dict()[k], v) for k, v in ref.model.state_dict().items())


def test_resume_true_needs_a_checkpoint_and_refuses_another_fits(tmp_path):
    learn = small_learner(tmp_path)
    with pytest.raises(ValueError, match=r"resume=True continues from the fit's own checkpoint when it exists: give "
                                         r"checkpoint='name' too"):
        learn.fit(0.1, 1, resume=True)
    with pytest.raises(ValueError, match=r"resume must be a checkpoint name, True \(continue from checkpoint= when "
                                         r"it exists\) or None, got 3"):
        learn.fit(0.1, 1, resume=3)
    fit_small(learn)
    with pytest.raises(ValueError, match=r"resume='ck' continues a different fit: lrs: checkpoint has \[0\.1\], "
                                         r"this call \[0\.2\]"):
        learn.fit(0.2, 2, cycle_len=1, checkpoint="ck", resume=True)
    assert learn.fit(0.1, 1, resume=False) is not None, "resume=False: a plain fit"


def test_sync_bn_outside_torchrun_warns_and_does_nothing(tmp_path):
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    with pytest.warns(UserWarning, match=r"sync_bn=True does nothing outside torchrun"):
        learn = Learner(model, small_data(), progress=False, device="cpu", path=tmp_path, sync_bn=True)
    learn.fit(0.1, 1)
    assert type(model[1]) is nn.BatchNorm1d
    with pytest.raises(ValueError, match=r"sync_bn must be True or False, got 'yes'"):
        Learner(model, small_data(), progress=False, device="cpu", path=tmp_path, sync_bn="yes")


def test_synced_batch_norm_alone_is_batch_norm():
    """The synced formula (one process: the sums are the local ones) equals BatchNorm's, values and gradients,
    running statistics included; `os.environ` has no torchrun here."""
    assert "WORLD_SIZE" not in os.environ or os.environ["WORLD_SIZE"] == "1"
    import torch.distributed as dist

    from snapfit.sync_batchnorm import synced_batch_norm

    torch.manual_seed(0)
    x = torch.randn(16, 5, 4, 4, requires_grad=True)
    bn, ref = nn.BatchNorm2d(5), nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    ref.load_state_dict(bn.state_dict())
    x2 = x.detach().clone().requires_grad_(True)
    y_ref = ref(x2)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        y = synced_batch_norm(x, bn)
        y.backward(g)  # the all-reduces run in the backward too
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(bn.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-6)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(bn, name), getattr(ref, name), rtol=1e-5, atol=1e-7)


def test_closure_optimizers_stay_a_clear_error_under_torchrun(tmp_path):
    """The check torchrun's DistributedTraining runs before wrapping the model (no process group needed)."""
    from snapfit.distributed import DistributedTraining

    learn = Learner(nn.Linear(6, 3), small_data(), opt_func=lambda ps: torch.optim.LBFGS(ps), progress=False,
                    device="cpu", path=tmp_path)
    learn.create_opt()
    with pytest.raises(ValueError, match=r"optimizers that need a closure \(LBFGS\) are not supported under "
                                         r"torchrun: their line searches would take different numbers of steps"):
        DistributedTraining().before_fit(learn)
