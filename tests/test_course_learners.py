"""Course-notebook learners (fastai 0.7 lessons 2 and 7, the CIFAR and DAWNBench notebooks): multi-label and
regression heads, from_model_data and crit, user metrics such as Planet's f2, set_data (progressive resizing),
half(), predict_array, TTA (is_test, precompute, a deterministic flip) and the precompute cache's key."""
import math
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import fbeta_score
from torch import nn
from torchvision.models import resnet18

from snapfit import (
    Callback,
    ConvLearner,
    ImageClassifierData,
    Learner,
    RandomFlip,
    accuracy,
    export_digit_mosaics,
    get_cv_idxs,
    tfms_from_stats,
)
from snapfit.data import export_digits_images
from snapfit.metrics import accuracy_thresh

STATS = ((0.1, 0.1, 0.1), (0.3, 0.3, 0.3))


def f2(preds, targs, start=0.17, end=0.24, step=0.01):
    """The Planet notebook's metric, as written in the course (scikit-learn on the batch's tensors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return max(fbeta_score(targs, (preds > th), beta=2, average="samples") for th in np.arange(start, end, step))


@pytest.fixture(scope="module")
def planet(tmp_path_factory):
    return export_digit_mosaics(tmp_path_factory.mktemp("planet"), n=120, scale=2, test_count=6)


def planet_data(root, sz=32, bs=16, aug=None, csv="train_v2.csv", **kw):
    rows = sum(1 for _ in open(root / csv)) - 1
    return ImageClassifierData.from_csv(root, "train-jpg", csv, bs=bs, tfms=tfms_from_stats(STATS, sz, aug_tfms=aug),
                                        suffix=".png", val_idxs=get_cv_idxs(rows), num_workers=0, **kw)


def conv(data, tmp_path, **kw):
    torch.manual_seed(0)
    return ConvLearner.pretrained(resnet18, data, pretrained=False, path=tmp_path, progress=False, device="cpu", **kw)


class LogSoftmaxNet(nn.Module):
    """A lesson-7 style model: flatten, two linear layers, log_softmax."""

    def __init__(self, n_in=3 * 16 * 16, c=10, log_softmax=True):
        super().__init__()
        self.l1, self.l2, self.log_softmax = nn.Linear(n_in, 40), nn.Linear(40, c), log_softmax

    def forward(self, x):
        x = self.l2(F.relu(self.l1(x.flatten(1))))
        return F.log_softmax(x, dim=-1) if self.log_softmax else x


@pytest.fixture(scope="module")
def digit_folders(tmp_path_factory):
    return export_digits_images(tmp_path_factory.mktemp("digits"), scale=2, n=160)


def digit_data(root, bs=32, sz=16, aug=None):
    return ImageClassifierData.from_paths(root, bs=bs, tfms=tfms_from_stats(STATS, sz, aug_tfms=aug), num_workers=0)


# ------------------------------------------------------------------------------------------- multi-label
def test_multi_label_head_loss_metrics_predict_and_tta(planet, tmp_path):
    data = planet_data(planet, aug=[RandomFlip()], test_name="test-jpg")
    learn = conv(data, tmp_path)
    assert isinstance(learn.model[1][-1], nn.Sigmoid) and isinstance(learn.crit, nn.BCELoss)
    assert [m.__name__ for m in learn.metrics] == ["accuracy_thresh"]
    learn.metrics = [f2, accuracy_thresh(0.5)]
    learn.fit(1e-2, 1)
    assert learn.sched.metric_names == ["f2", "accuracy_thresh"]
    probs, targs = learn.predict_with_targs()
    assert probs.shape == (len(data.val_ds), data.c) and probs.min() >= 0 and probs.max() <= 1
    assert np.array_equal(targs, data.val_y)
    # the recorder's f2 is the per-batch f2 averaged over samples (each batch weighted by its size)
    sizes = [len(y) for _, y in data.val_dl]
    bounds = np.cumsum([0] + sizes)
    batch_f2 = [f2(torch.from_numpy(probs[a:b]), torch.from_numpy(targs[a:b])) for a, b in zip(bounds, bounds[1:])]
    assert learn.sched.metrics[-1][0] == pytest.approx(np.average(batch_f2, weights=sizes), abs=1e-6)
    acc = np.mean((probs > 0.5) == targs)
    assert learn.sched.metrics[-1][1] == pytest.approx(acc, abs=1e-6)
    torch.manual_seed(1)
    tta, y = learn.TTA(n_aug=2)
    assert tta.shape == (3, len(data.val_ds), data.c) and 0 <= tta.min() and tta.max() <= 1
    np.testing.assert_array_equal(tta[0], probs)
    test_tta, _ = learn.TTA(n_aug=1, is_test=True)
    assert test_tta.shape == (2, 6, data.c)
    np.testing.assert_allclose(test_tta[0], learn.predict(is_test=True), atol=1e-6)


def test_regression_head_is_linear_and_trains_with_l1(planet, tmp_path):
    data = planet_data(planet, csv="counts.csv", continuous=True)
    learn = conv(data, tmp_path, metrics=[])
    assert isinstance(learn.model[1][-1], nn.Linear) and learn.model[1][-1].out_features == 1
    assert isinstance(learn.crit, nn.L1Loss) and learn.metrics == []
    learn.fit(1e-2, 1)
    preds, targs = learn.predict_with_targs()
    assert preds.shape == targs.shape == (len(data.val_ds), 1)
    assert learn.sched.val_losses[-1] == pytest.approx(np.abs(preds - targs).mean(), rel=1e-5)
    assert (preds < 0).any() or (preds > 1).any(), "no activation squashes the values"


# ------------------------------------------------------------------------------------------- from_model_data
def test_from_model_data_defaults_to_nll_loss_and_crit_reads_and_sets(digit_folders, tmp_path):
    data = digit_data(digit_folders)
    torch.manual_seed(0)
    learn = Learner.from_model_data(LogSoftmaxNet(), data, path=tmp_path, progress=False, device="cpu",
                                    metrics=[accuracy])
    assert repr(learn.crit) == "NLLLoss()" and isinstance(learn.crit, nn.NLLLoss)
    x, y = next(iter(data.val_dl))
    out = learn.model(x)
    assert torch.equal(learn.crit(out, y), F.nll_loss(out, y))
    learn.fit(1e-2, 1)
    assert learn.sched.val_losses[-1] == pytest.approx(F.nll_loss(torch.from_numpy(learn.predict()),
                                                                  torch.from_numpy(data.val_y)).item(), rel=1e-5)
    assert ConvLearner.from_model_data(LogSoftmaxNet(), data, progress=False, path=tmp_path).frozen_groups == []
    table = learn.summary()  # lesson 7: the layers of a custom model, from one batch of its data
    assert list(table) == ["Linear-1", "Linear-2"]
    assert table["Linear-1"] == {"input_shape": [-1, 768], "output_shape": [-1, 40], "trainable": True,
                                 "nb_params": 3 * 16 * 16 * 40 + 40}
    assert table["Linear-2"]["nb_params"] == 40 * 10 + 10

    seen = []

    def spy_loss(preds, targs):
        seen.append(preds.shape)
        return F.nll_loss(preds, targs)

    learn.crit = spy_loss
    assert learn.loss_func is spy_loss
    learn.metrics = []
    learn.fit(1e-2, 1)
    assert len(seen) == len(data.trn_dl) + len(data.val_dl) and learn.sched.metric_names == []


def test_from_model_data_refuses_raw_scores_under_nll_loss(digit_folders, tmp_path):
    learn = Learner.from_model_data(LogSoftmaxNet(log_softmax=False), digit_data(digit_folders), path=tmp_path,
                                    progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"nll_loss, which takes log-probabilities.*learn.crit = "
                                         r"nn.CrossEntropyLoss\(\)"):
        learn.fit(1e-2, 1)
    learn.crit = nn.CrossEntropyLoss()
    learn.fit(1e-2, 1)
    assert math.isfinite(learn.sched.val_losses[-1])


def test_from_model_data_loss_follows_multi_label_and_regression_data(planet, tmp_path):
    multi = planet_data(planet, sz=16)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, multi.c), nn.Sigmoid())
    learn = Learner.from_model_data(net, multi, path=tmp_path, progress=False, device="cpu")
    assert isinstance(learn.crit, nn.BCELoss)
    learn.fit(1e-2, 1)
    reg = planet_data(planet, sz=16, csv="counts.csv", continuous=True)
    learn = Learner.from_model_data(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 1)), reg, path=tmp_path,
                                    progress=False, device="cpu")
    assert isinstance(learn.crit, nn.L1Loss)
    own = nn.SmoothL1Loss()
    assert Learner.from_model_data(nn.Linear(2, 1), reg, loss_func=own, path=tmp_path).crit is own
    with pytest.raises(TypeError, match="from_model_data needs an nn.Module, got function"):
        Learner.from_model_data(lambda x: x, reg)


# ------------------------------------------------------------------------------------------- set_data
def test_set_data_schedule_follows_the_new_loader(digit_folders, tmp_path):
    small = digit_data(digit_folders, bs=32)
    learn = Learner.from_model_data(LogSoftmaxNet(), small, path=tmp_path, progress=False, device="cpu")
    learn.fit(1e-2, 1)
    assert len(learn.sched.losses) == len(small.trn_dl)
    large = digit_data(digit_folders, bs=8, sz=16)
    learn.set_data(large)
    assert learn.data is large
    learn.fit(1e-2, 1, cycle_len=1)
    n = len(large.trn_dl)
    assert n == 4 * len(small.trn_dl) and len(learn.sched.losses) == n
    lrs = [g[0] for g in learn.sched.group_lrs]
    expect = [1e-2 / 2 * (1 + math.cos(math.pi * i / n)) for i in range(n)]  # one cosine over the new length
    expect[0] = 1e-2 / 100  # fastai 0.7's warm-up: lr / 100 for the first n / 20 iterations of a fit
    np.testing.assert_allclose(lrs, expect, rtol=1e-6)


def test_conv_learner_set_data_refreezes_recomputes_and_checks_classes(planet, tmp_path):
    data16 = planet_data(planet, sz=16)
    learn = conv(data16, tmp_path)
    learn.unfreeze()
    learn.fit(1e-3, 1)
    data32 = planet_data(planet, sz=32)
    learn.set_data(data32)
    assert learn.frozen_groups == [0, 1] and not any(p.requires_grad for p in learn.body.parameters())
    assert learn.data is data32 and next(iter(learn.data.trn_dl))[0].shape[-1] == 32
    learn.fit(1e-3, 1)
    # precompute on: set_data computes the new images' activations
    learn.precompute = True
    files = set((tmp_path / "tmp").iterdir())
    learn.set_data(planet_data(planet, sz=24))
    assert learn.precompute and learn.data.train_dl.dataset[0][0].shape == (1024,)
    assert len(set((tmp_path / "tmp").iterdir()) - files) == 2, "new activations for trn and val"
    learn.precompute = False
    counts = planet_data(planet, csv="counts.csv", continuous=True)
    with pytest.raises(ValueError, match=r"same kind and number of classes as the head .*build a new learner"):
        learn.set_data(counts)
    digits = digit_data(export_digits_images(tmp_path / "d", scale=2, n=50))
    with pytest.raises(ValueError, match=rf"c={data16.c}\), got c=10: build a new learner"):
        learn.set_data(digits)


# ------------------------------------------------------------------------------------------- half precision
class DtypeSpy(Callback):
    order = 1000

    def __init__(self):
        self.dtypes, self.scales = [], []

    def after_loss(self, learn):
        self.dtypes.append(learn.pred.dtype)
        if learn.scaler is not None:
            self.scales.append(learn.scaler.get_scale())


def test_half_runs_later_fits_in_bf16_on_cpu_until_float(digit_folders, tmp_path):
    spy = DtypeSpy()
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10), nn.LogSoftmax(dim=1))
    learn = Learner.from_model_data(net, digit_data(digit_folders), path=tmp_path, progress=False, device="cpu",
                                    callbacks=[spy])
    assert learn.half() is learn and learn.amp == "bf16"
    learn.fit(1e-2, 1)
    assert set(spy.dtypes) == {torch.bfloat16} and net[1].weight.dtype == torch.float32
    assert math.isfinite(learn.sched.val_losses[-1])
    spy.dtypes.clear()
    assert learn.float() is learn and learn.amp is None
    learn.fit(1e-2, 1)
    assert set(spy.dtypes) == {torch.float32}
    spy.dtypes.clear()
    learn.fit(1e-2, 1, amp="fp16", loss_scale=512)  # fp16 + GradScaler also run on the CPU
    assert set(spy.dtypes) == {torch.float16} and spy.scales[0] == 512.0
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="loss_scale must be a positive number"):
            learn.fit(1e-2, 1, loss_scale=bad)


# ------------------------------------------------------------------------------------------- predict_array
def test_predict_array_in_eval_mode_also_with_precompute(planet, tmp_path):
    data = planet_data(planet)
    learn = conv(data, tmp_path)
    learn.fit(1e-2, 1)
    x = np.stack([data.val_ds[i][0].numpy() for i in range(5)])
    learn.model.train()
    out = learn.predict_array(x)
    assert learn.model.training, "the model's mode is put back"
    np.testing.assert_allclose(out, learn.predict()[:5], atol=1e-6)
    learn.precompute = True
    np.testing.assert_allclose(learn.predict_array(x), out, atol=1e-5)
    assert learn.precompute
    with pytest.raises(TypeError, match="predict_array takes a NumPy array .a batch of inputs., got list"):
        learn.predict_array(x.tolist())
    with pytest.raises(ValueError, match=r"batch shaped \(N, 3, 32, 32\).*got an array of shape \(3, 32, 32\)"):
        learn.predict_array(x[0])


# ------------------------------------------------------------------------------------------- TTA
def test_tta_augmented_passes_are_the_model_on_flipped_inputs(digit_folders, tmp_path):
    data = digit_data(digit_folders, aug=[RandomFlip(p=1.0)])
    learn = conv(data, tmp_path)
    learn.fit(1e-2, 1)
    preds, y = learn.TTA(n_aug=2)
    xs = torch.cat([x for x, _ in data.val_dl])
    learn.model.eval()
    with torch.no_grad():
        plain, flipped = learn.model(xs).numpy(), learn.model(torch.flip(xs, dims=(-1,))).numpy()
    np.testing.assert_allclose(preds[0], plain, atol=1e-5)
    np.testing.assert_allclose(preds[1], flipped, atol=1e-5)
    np.testing.assert_allclose(preds[2], flipped, atol=1e-5)
    assert not np.allclose(plain, flipped, atol=1e-3)
    assert np.array_equal(y, data.val_y)
    learn.precompute = True  # TTA runs the full model on the images, whatever precompute says
    on = learn.TTA(n_aug=1)[0]
    np.testing.assert_allclose(on[0], plain, atol=1e-5)
    np.testing.assert_allclose(on[1], flipped, atol=1e-5)


# ------------------------------------------------------------------------------------------- precompute cache
def test_precompute_cache_is_keyed_by_images_labels_tfms_size_and_body(planet, tmp_path):
    calls = []
    data = planet_data(planet, sz=16)
    learn = conv(data, tmp_path)
    real = learn.activations
    learn.activations = lambda dl: calls.append(dl) or real(dl)

    def toggle():
        calls.clear()
        learn.precompute = False
        learn.precompute = True
        return len(calls)

    assert toggle() == 2  # trn and val computed
    assert toggle() == 0  # nothing changed: read from the cache
    # an image rewritten
    f = data.trn_ds.files[3]
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert toggle() == 2
    assert toggle() == 0
    # labels changed (same images)
    relabel = planet_data(planet, sz=16)
    relabel.trn_ds.labels[0] = 1 - relabel.trn_ds.labels[0]
    learn.precompute = False
    learn.set_data(relabel)
    assert toggle() == 2
    # validation transforms changed (other statistics), and another size
    other = ImageClassifierData.from_csv(planet, "train-jpg", "train_v2.csv", bs=16, suffix=".png", num_workers=0,
                                         tfms=tfms_from_stats(((0.2,) * 3, (0.3,) * 3), 16),
                                         val_idxs=get_cv_idxs(120))
    learn.precompute = False
    learn.set_data(other)
    assert toggle() == 2
    learn.precompute = False
    learn.set_data(planet_data(planet, sz=20))
    assert toggle() == 2
    # body weights changed (loading other weights recomputes, also with precompute left on)
    learn.save("before")
    with torch.no_grad():
        learn.body[0].weight.mul_(1.5)
    assert toggle() == 2
    before = learn.predict()
    calls.clear()
    learn.load("before")
    assert len(calls) == 0, "those weights' activations are cached already"
    on_cache = learn.predict()
    assert not np.allclose(on_cache, before, atol=1e-4)
    learn.precompute = False
    np.testing.assert_allclose(on_cache, learn.predict(), atol=1e-5)  # the cache matches the loaded body


# ------------------------------------------------------------------------------------------- metrics needing host data
def test_a_metric_converting_device_tensors_to_numpy_is_recognised_and_cpu_errors_propagate(digit_folders, tmp_path):
    from snapfit.callbacks.recorder import needs_host_copy
    with pytest.raises(TypeError) as info:  # torch's message for any non-CPU device (meta here, cuda on a GPU)
        np.asarray(torch.zeros(2, device="meta"))
    assert needs_host_copy(info.value)
    assert not needs_host_copy(TypeError("unsupported operand type(s) for +: 'int' and 'str'"))

    def broken(preds, targs):
        raise TypeError("a bug in the metric")

    learn = Learner.from_model_data(LogSoftmaxNet(), digit_data(digit_folders), path=tmp_path, progress=False,
                                    device="cpu", metrics=[broken])
    with pytest.raises(TypeError, match="a bug in the metric"):
        learn.fit(1e-2, 1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_planet_f2_runs_on_cuda_with_host_copies(planet, tmp_path):
    data = planet_data(planet, sz=16)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, data.c), nn.Sigmoid())
    learn = Learner.from_model_data(net, data, path=tmp_path, progress=False, device="cuda", metrics=[f2])
    learn.fit(1e-2, 1)
    probs, targs = learn.predict_with_targs()
    sizes = [len(y) for _, y in data.val_dl]
    bounds = np.cumsum([0] + sizes)
    batch_f2 = [f2(probs[a:b], targs[a:b]) for a, b in zip(bounds, bounds[1:])]
    assert learn.sched.metrics[-1][0] == pytest.approx(np.average(batch_f2, weights=sizes), abs=1e-5)
