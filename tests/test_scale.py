"""Mixed precision, channels_last, torch.compile, host syncs in the hot path, and multi-process training
(torchrun with gloo on CPU). CUDA-only checks are skipped without a GPU."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from snapfit import Callback, DataBunch, Learner, accuracy, simple_cnn
from snapfit.callbacks.checkpoint import read_checkpoint
from snapfit.callbacks.lars import LARS
from tests.helpers import CrashAt, small_data

ROOT = Path(__file__).resolve().parent.parent
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def digits_data(digits):
    x_trn, y_trn, x_val, y_val = digits
    return DataBunch.from_arrays(x_trn[:512], y_trn[:512], x_val[:128], y_val[:128], bs=64)


@pytest.fixture
def digits_rgb(digits):
    x_trn, y_trn, x_val, y_val = digits
    rgb = [x.repeat(3, axis=1) for x in (x_trn[:512], x_val[:128])]
    return DataBunch.from_arrays(rgb[0], y_trn[:512], rgb[1], y_val[:128], bs=64)


class Dtypes(Callback):
    """What the loop sees: the prediction's dtype, the loss it backpropagates, the gradient scale."""

    def __init__(self):
        self.pred, self.scale = set(), []

    def after_pred(self, learn):
        self.pred.add(learn.pred.dtype)

    def after_backward(self, learn):
        if learn.scaler is not None:
            self.scale.append(learn.scaler.get_scale())


@pytest.mark.parametrize("amp,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_with_sgdr_snapshots_lars_and_lr_find(digits_data, tmp_path, amp, dtype):
    def run(amp, lars):
        torch.manual_seed(0)
        learn = Learner(simple_cnn(10, widths=(8, 16)), digits_data, metrics=[accuracy], path=tmp_path,
                        progress=False, device="cpu")
        seen = Dtypes()
        vals = learn.fit(0.1, 3, cycle_len=1, cycle_save_name=f"s{amp}", amp=amp, callbacks=[seen, lars])
        return learn, seen, vals

    _, _, full = run(None, LARS(trust_coef=0.1))
    lars = LARS(trust_coef=0.1)
    learn, seen, vals = run(amp, lars)
    assert seen.pred == {dtype}, "forward runs under autocast"
    assert learn.saved_cycles(f"s{amp}") == [0, 1, 2]
    assert vals[0] == pytest.approx(full[0], abs=0.05), "mixed precision follows the float32 fit"
    assert lars.history and all(0 < r < 1e3 for h in lars.history for r in h)
    assert all(p.dtype == torch.float32 for p in learn.model.parameters()), "weights stay float32"
    if amp == "fp16":
        assert seen.scale and seen.scale[0] == 65536.0
    else:
        assert not seen.scale
    assert learn.scaler is None, "the scaler belongs to the fit"
    learn.lr_find(num_it=10, amp=amp)
    assert len(learn.sched.finder.lrs) >= 5


def test_fp16_gradients_reach_callbacks_unscaled(digits_data, tmp_path):
    """after_backward sees the true gradient (unscaled): it matches an fp32 autocast-free backward closely."""
    torch.manual_seed(0)
    learn = Learner(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), digits_data, path=tmp_path, progress=False,
                    device="cpu", opt_func=lambda ps: torch.optim.SGD(ps))
    x, y = next(iter(digits_data.train_dl))
    ref = torch.autograd.grad(nn.functional.cross_entropy(learn.model(x), y), learn.model[1].weight)[0]
    grads = []

    class Grab(Callback):
        def after_backward(self, learn):
            grads.append(learn.model[1].weight.grad.clone())

    learn.fit(0.0, 1, amp="fp16", callbacks=[Grab()])
    torch.testing.assert_close(grads[0], ref, rtol=0.05, atol=1e-3)


def test_fp16_scaler_state_is_checkpointed_and_resumed(digits_data, tmp_path):
    torch.manual_seed(0)
    learn = Learner(simple_cnn(10, widths=(8,)), digits_data, path=tmp_path, progress=False, device="cpu")
    learn.fit(0.05, 2, amp="fp16", checkpoint="c", checkpoint_every=3)
    state = read_checkpoint(tmp_path / "models" / "c.pt")
    assert state["callbacks"]["mixed_precision"]["scaler"]["scale"] > 0
    with pytest.raises(ValueError, match="continues a different fit: amp: checkpoint has 'fp16', this call None"):
        learn.fit(0.05, 2, resume="c")
    with pytest.raises(ValueError, match="amp must be 'bf16', 'fp16' or None"):
        learn.fit(0.05, 1, amp="fp8")


class ChannelsLastInputs(Callback):
    def __init__(self):
        self.seen = []

    def before_batch(self, learn):
        self.seen.append(learn.xb[0].is_contiguous(memory_format=torch.channels_last))


def test_channels_last_gives_the_same_results(digits_rgb, tmp_path):
    outs = []
    for cl in (False, True):
        torch.manual_seed(0)
        learn = Learner(simple_cnn(10, in_channels=3, widths=(8, 16)), digits_rgb, path=tmp_path, progress=False,
                        device="cpu", channels_last=cl)
        peek = ChannelsLastInputs()
        learn.fit(0.05, 1, callbacks=[peek])
        outs.append(learn.predict())
        assert all(peek.seen) == cl
        if cl:
            assert learn.model[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(torch.tensor(outs[0]), torch.tensor(outs[1]), rtol=1e-4, atol=1e-4)


def test_compile_trains_and_saves_plain_weights(digits_data, tmp_path):
    torch.manual_seed(0)
    learn = Learner(simple_cnn(10, widths=(8,)), digits_data, path=tmp_path, progress=False, device="cpu")
    learn.compile(backend="eager")
    assert type(learn.model).__name__ == "OptimizedModule"
    learn.fit(0.05, 1, cycle_len=1, cycle_save_name="c")
    saved = torch.load(tmp_path / "models" / "c_cyc_0.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in saved)
    plain = Learner(simple_cnn(10, widths=(8,)), digits_data, path=tmp_path, progress=False, device="cpu")
    plain.load_cycle("c", 0)
    torch.testing.assert_close(torch.tensor(plain.predict()), torch.tensor(learn.predict()))


def test_reads_of_device_values_only_at_the_sync_interval_and_epoch_end(tmp_path, host_reads):
    """Per batch: no .item/.cpu/.tolist/.numpy/torch.cuda.synchronize in the training hot path."""
    counts = host_reads

    def run(n_batches, sync_every, epochs=2):
        learn = Learner(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)),
                        small_data(n_trn=4 * n_batches, n_val=8, bs=4), progress=True, device="cpu", path=tmp_path)
        learn.sched.sync_every = sync_every
        counts["n"] = 0
        learn.fit(0.1, epochs, cycle_len=1, cycle_save_name="s")
        return counts["n"]

    base = run(2, 10_000)
    assert run(20, 10_000) == base, "no read per batch"
    # every 5 batches: 20 batches -> 4 reads per epoch instead of 1
    assert run(20, 5) == base + 2 * 3


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    """torchrun --nproc_per_node=2 with gloo on CPU: both ranks end with the same weights, equal to a
    single process with the same global batch (to 1e-5); only rank 0 writes files."""
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "tests.ddp_job", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    files = sorted(p.name for p in (tmp_path / "run" / "models").iterdir())
    assert files == ["snap_cyc_0.json", "snap_cyc_0.pt", "snap_cyc_1.json", "snap_cyc_1.pt"]
    snap = torch.load(tmp_path / "run" / "models" / "snap_cyc_1.pt", weights_only=True)
    single = subprocess.run([sys.executable, "-m", "tests.ddp_job", str(tmp_path), "--single"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    w0, w1, ws = (torch.load(tmp_path / f"{t}.pt", weights_only=True) for t in ("rank0", "rank1", "single"))
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks differ at {k}"
        torch.testing.assert_close(w0[k], ws[k], rtol=0, atol=1e-5)
    r0, r1, s = (json.loads((tmp_path / f"{t}.json").read_text()) for t in ("rank0", "rank1", "single"))
    assert r0["distributed"] and r0["main"] and not r1["main"] and not s["distributed"]
    assert r0["n_batches"] == r1["n_batches"] == s["n_batches"] == 22
    assert r0["lrs"] == s["lrs"]
    assert r0["vals"] == pytest.approx(s["vals"], abs=1e-5) and r0["vals"] == r1["vals"], "metrics are global"
    assert r1["writes"] == [], "rank 1 writes nothing"
    assert sorted(Path(p).name for p in r0["writes"]) == ["snap_cyc_0.json", "snap_cyc_0.pt", "snap_cyc_1.json",
                                                           "snap_cyc_1.pt"]
    assert set(snap) == set(w0) and all(torch.equal(snap[k], w0[k]) for k in snap), "plain keys, no 'module.'"


# ---------------------------------------------------------------------------- CUDA only
@cuda
@pytest.mark.cuda
def test_cuda_fit_pinned_batches_amp_and_snapshots(tmp_path, digits):
    x_trn, y_trn, x_val, y_val = digits
    data = DataBunch.from_arrays(x_trn, y_trn, x_val, y_val, bs=128)
    assert data.train_dl.pin_memory
    torch.manual_seed(0)
    learn = Learner(simple_cnn(10), data, metrics=[accuracy], path=tmp_path, progress=False, channels_last=True)
    assert learn.device.type == "cuda"
    for amp in (None, "bf16", "fp16"):
        vals = learn.fit(0.1, 2, cycle_len=1, cycle_save_name=f"s{amp}", amp=amp)
        assert vals[1] > 0.8, (amp, vals)
    lars = LARS(trust_coef=0.1)
    vals = learn.fit(0.1, 1, amp="fp16", callbacks=[lars])
    assert vals[1] > 0.8 and lars.history and all(0 < r < 1e3 for r in lars.history[-1])
    learn.lr_find(num_it=20, amp="bf16")
    cpu = Learner(simple_cnn(10), data, path=tmp_path, progress=False, device="cpu")
    cpu.load_cycle("sbf16", 1)
    assert next(cpu.model.parameters()).device.type == "cpu"


@cuda
@pytest.mark.cuda
def test_cuda_no_host_sync_per_batch(tmp_path, host_reads, digits):
    counts = host_reads
    x_trn, y_trn, x_val, y_val = digits

    def run(n):
        data = DataBunch.from_arrays(x_trn[:n], y_trn[:n], x_val[:64], y_val[:64], bs=16)
        learn = Learner(simple_cnn(10, widths=(8,)), data, path=tmp_path, progress=False)
        learn.sched.sync_every = 10_000
        counts["n"] = 0
        learn.fit(0.05, 2, cycle_len=1, callbacks=[LARS()])
        return counts["n"]

    assert run(32) == run(320)


@cuda
@pytest.mark.cuda
def test_cuda_resume_from_checkpoint(tmp_path, digits):
    x_trn, y_trn, x_val, y_val = digits
    data = DataBunch.from_arrays(x_trn, y_trn, x_val, y_val, bs=64)

    torch.manual_seed(0)
    learn = Learner(simple_cnn(10), data, metrics=[accuracy], path=tmp_path, progress=False)
    with pytest.raises(RuntimeError):
        learn.fit(0.1, 2, cycle_len=1, amp="fp16", checkpoint="c", checkpoint_every=10, callbacks=[CrashAt(30)])
    state = read_checkpoint(tmp_path / "models" / "c.pt")
    assert "cuda" in state["rng"] and state["position"]["iteration"] == 30
    fresh = Learner(simple_cnn(10), data, metrics=[accuracy], path=tmp_path, progress=False)
    vals = fresh.resume("c")
    assert fresh.iteration == 2 * fresh.n_batches == 2 * len(data.train_dl) and vals[1] > 0.8
