"""Snapshot ensembles, snapshot weight averaging, SWA, and the snapshot sidecars."""
import copy
import weakref

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.optim.swa_utils import update_bn as torch_update_bn

from snapfit import SWA, Callback, DataBunch, ImageClassifierData, Learner, accuracy, simple_cnn, tfms_from_stats
from snapfit import snapshots as snapshots_module
from snapfit.snapshots import softmax_np
from tests.helpers import CrashAt


@pytest.fixture
def trained(digits, tmp_path):
    x_trn, y_trn, x_val, y_val = digits
    data = DataBunch.from_arrays(x_trn[:400], y_trn[:400], x_val, y_val, bs=32)
    torch.manual_seed(0)
    learn = Learner(simple_cnn(10, widths=(8, 16)), data, metrics=[accuracy], path=tmp_path, progress=False,
                    device="cpu")
    learn.fit(0.1, 4, cycle_len=1, cycle_save_name="snap")
    return learn


def by_hand(learn, cycles):
    model = copy.deepcopy(learn.model).eval()
    probs = []
    for c in cycles:
        model.load_state_dict(torch.load(learn.model_file(f"snap_cyc_{c}"), weights_only=True))
        with torch.no_grad():
            out = torch.cat([model(x) for x, _ in learn.data.valid_dl])
        probs.append(torch.softmax(out, 1).numpy())
    return np.mean(probs, 0)


def test_predict_snapshots_is_the_mean_of_the_softmaxes(trained):
    own = {k: v.clone() for k, v in trained.model.state_dict().items()}
    probs, targs = trained.predict_snapshots("snap", cycles=[1, 2, 3])
    np.testing.assert_allclose(probs, by_hand(trained, [1, 2, 3]), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(targs, trained.data.valid_ds.tensors[1].numpy())
    for k, v in trained.model.state_dict().items():
        assert torch.equal(v, own[k]), "the learner's weights are restored"
    np.testing.assert_allclose(trained.predict_snapshots("snap")[0], by_hand(trained, [0, 1, 2, 3]), atol=1e-6)
    np.testing.assert_allclose(trained.predict_snapshots("snap", last=2)[0], by_hand(trained, [2, 3]), atol=1e-6)
    single, _ = trained.predict_snapshots("snap", cycles=[3])
    np.testing.assert_allclose(single, softmax_np(trained.predict()), atol=1e-6)  # cycle 3 = the final weights


def test_snapshots_stream_one_at_a_time(trained, monkeypatch):
    """Every snapshot's tensors are freed before the next one is loaded: memory does not grow with M."""
    loaded, alive_at_load = [], []
    real = snapshots_module.load_file

    def tracking(path, map_location=None):
        alive_at_load.append(sum(r() is not None for r in loaded))
        state = real(path, map_location=map_location)
        loaded.extend(weakref.ref(v) for v in state.values() if v.is_floating_point())
        return state

    monkeypatch.setattr(snapshots_module, "load_file", tracking)
    trained.predict_snapshots("snap")
    trained.average_snapshots("snap", update_bn=False)
    assert len(alive_at_load) == 8 and alive_at_load == [0] * 8


def test_average_snapshots_is_the_elementwise_mean(trained):
    states = [torch.load(trained.model_file(f"snap_cyc_{c}"), weights_only=True) for c in (1, 2, 3)]
    trained.average_snapshots("snap", cycles=[1, 2, 3], update_bn=False)
    for k, v in trained.model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, torch.stack([s[k] for s in states]).mean(0), atol=1e-6, rtol=0)


def test_average_snapshots_updates_batchnorm_like_torch(trained, tmp_path):
    trained.average_snapshots("snap", cycles=[1, 2, 3], update_bn=False)
    manual = copy.deepcopy(trained.model)
    torch_update_bn(trained.data.train_dl, manual)
    trained.average_snapshots("snap", cycles=[1, 2, 3], save_as="swa3")
    for k, v in trained.model.state_dict().items():
        if "running" in k:
            torch.testing.assert_close(v, manual.state_dict()[k], atol=1e-6, rtol=1e-6)
    saved = torch.load(tmp_path / "models" / "swa3.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in trained.model.state_dict().items())


def test_snapshot_sidecars(trained):
    recs = trained.snapshots("snap")
    assert [r["cycle"] for r in recs] == [0, 1, 2, 3] and [r["epoch"] for r in recs] == [0, 1, 2, 3]
    assert [r["iteration"] for r in recs] == trained.sched.cycle_ends
    assert [r["val_loss"] for r in recs] == pytest.approx(trained.sched.val_losses)
    assert [r["metrics"]["accuracy"] for r in recs] == pytest.approx([m[0] for m in trained.sched.metrics])
    assert recs[0]["file"].endswith("snap_cyc_0.pt")


def test_bad_snapshot_requests(trained, tmp_path):
    with pytest.raises(ValueError, match=r"cycle 7 of 'snap' was never saved; saved cycles: \[0, 1, 2, 3\]"):
        trained.predict_snapshots("snap", cycles=[1, 7])
    with pytest.raises(ValueError, match=r"cycles is empty: name at least one cycle of 'snap' \(saved: \[0, 1, 2, 3"):
        trained.average_snapshots("snap", cycles=[])
    with pytest.raises(ValueError, match=r"last must be an int in \[1, 4\]"):
        trained.predict_snapshots("snap", last=9)
    with pytest.raises(FileNotFoundError, match="no snapshots named 'other'"):
        trained.average_snapshots("other")
    # a snapshot from another architecture among them
    torch.save(nn.Sequential(nn.Linear(64, 10)).state_dict(), tmp_path / "models" / "snap_cyc_4.pt")
    with pytest.raises(ValueError, match=r"snap_cyc_4\.pt does not match the model.*missing keys: '0\.0\.weight'"):
        trained.average_snapshots("snap", cycles=[3, 4])


class TorchSWA(Callback):
    """The reference: torch's AveragedModel updated at the same epochs."""

    order = 76

    def __init__(self, start):
        self.start, self.avg = start, None

    def before_fit(self, learn):
        self.avg = AveragedModel(learn.model)

    def after_epoch(self, learn):
        if learn.epoch + 1 >= self.start:
            self.avg.update_parameters(learn.model)


def test_swa_callback_matches_torch_averaged_model(digits, tmp_path):
    x_trn, y_trn, x_val, y_val = digits
    data = DataBunch.from_arrays(x_trn[:300], y_trn[:300], x_val, y_val, bs=32)
    torch.manual_seed(0)
    learn = Learner(simple_cnn(10, widths=(8, 16)), data, path=tmp_path, progress=False, device="cpu")
    ref = TorchSWA(start=2)
    learn.fit(0.05, 5, callbacks=[SWA(start_epoch=2, update_bn=False), ref])
    ours = learn.swa_model
    for a, b in zip(ours.parameters(), ref.avg.module.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert int(ref.avg.n_averaged) == 4
    # with update_bn, BatchNorm statistics equal torch's update_bn on the averaged model
    torch.manual_seed(0)
    learn2 = Learner(simple_cnn(10, widths=(8, 16)), data, path=tmp_path, progress=False, device="cpu")
    ref2 = TorchSWA(start=2)
    learn2.fit(0.05, 5, use_swa=True, swa_start=2, callbacks=[ref2])
    torch_update_bn(data.train_dl, ref2.avg.module)
    for k, v in learn2.swa_model.state_dict().items():
        torch.testing.assert_close(v, ref2.avg.module.state_dict()[k], rtol=1e-6, atol=1e-6)


def small_cnn_learners(digits, tmp_path):
    """`make(seed)`: a fresh learner (a small CNN seeded with `seed`) on 300 training digits."""
    x_trn, y_trn, x_val, y_val = digits
    data = DataBunch.from_arrays(x_trn[:300], y_trn[:300], x_val, y_val, bs=32)

    def make(seed):
        torch.manual_seed(seed)
        return Learner(simple_cnn(10, widths=(8, 16)), data, path=tmp_path, progress=False, device="cpu")
    return make


def test_swa_survives_a_resume(digits, tmp_path):
    make = small_cnn_learners(digits, tmp_path)
    ref = make(0)
    ref.fit(0.05, 4, use_swa=True, swa_start=2)

    a = make(0)
    with pytest.raises(RuntimeError):
        a.fit(0.05, 4, use_swa=True, swa_start=2, checkpoint="c", checkpoint_every=5, callbacks=[CrashAt(30)])
    b = make(1)
    b.resume("c")
    for k, v in ref.swa_model.state_dict().items():
        assert torch.equal(v, b.swa_model.state_dict()[k]), k


def test_predict_snapshots_with_tta(digits, tmp_path):
    x_trn, y_trn, x_val, y_val = digits
    tfms = tfms_from_stats(((0.5,) * 3, (0.5,) * 3), 8, aug_tfms=[], crop="center")
    data = ImageClassifierData.from_arrays(tmp_path, (x_trn[:300, 0], y_trn[:300]), (x_val[:50, 0], y_val[:50]),
                                           bs=32, tfms=tfms)
    torch.manual_seed(0)
    learn = Learner(simple_cnn(10, in_channels=3, widths=(8,)), data, path=tmp_path, progress=False, device="cpu")
    learn.fit(0.05, 2, cycle_len=1, cycle_save_name="s")
    with pytest.warns(UserWarning, match="TTA: the training transforms changed nothing"):
        probs, y = learn.predict_snapshots("s", tta=True)
    # no random augmentation in these transforms: TTA passes equal the plain one (and TTA says so)
    np.testing.assert_allclose(probs, learn.predict_snapshots("s")[0], atol=1e-6)
    assert probs.shape == (50, 10) and np.array_equal(y, y_val[:50])


def test_a_finished_fit_resumed_recomputes_swa_batchnorm(digits, tmp_path):
    """The end of the fit writes no second checkpoint of the last epoch's end: SWA's BatchNorm statistics,
    computed in after_fit, are computed again when the finished fit is resumed."""
    make = small_cnn_learners(digits, tmp_path)
    ref = make(0)
    ref.fit(0.05, 3, use_swa=True, swa_start=1, checkpoint="c")
    b = make(1)
    b.resume("c")
    assert any("running_mean" in k for k in ref.swa_model.state_dict())
    for k, v in ref.swa_model.state_dict().items():
        assert torch.equal(v, b.swa_model.state_dict()[k]), k
