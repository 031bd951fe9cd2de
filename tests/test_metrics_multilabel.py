"""Multi-label metrics with fastai 0.7's names: accuracy_multi / accuracy_thresh per batch, micro-averaged
precision, recall and fbeta per epoch (also through functools.partial), checked against NumPy and scikit-learn."""
import math
import warnings
from functools import partial

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, fbeta_score, precision_score, recall_score

from snapfit import DataBunch, EpochMetric, Learner, accuracy, epoch_metric
from snapfit.metrics import (
    accuracy_multi,
    accuracy_multi_np,
    accuracy_thresh,
    as_epoch_metric,
    f1,
    fbeta,
    is_epoch_metric,
    metric_name,
    precision,
    recall,
    whole_epoch,
)


def multilabel(n=200, n_labels=6, p=0.35, seed=0):
    """Random scores in (0, 1) and n-hot float targets (N, n_labels), correlated so that the scores mean something."""
    g = torch.Generator().manual_seed(seed)
    targs = (torch.rand(n, n_labels, generator=g) < p).float()
    preds = torch.sigmoid(1.2 * (2 * targs - 1) + 1.5 * torch.randn(n, n_labels, generator=g))
    return preds, targs


def f2(preds, targs, start=0.17, end=0.24, step=0.01):
    """The fastai course's Planet metric: the best sample-averaged F2 over a few thresholds (a Python float)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return max(fbeta_score(targs, (preds > th), beta=2, average="samples") for th in np.arange(start, end, step))


def acc_f32(preds, targs):
    """A user metric that returns a NumPy float32 scalar."""
    return np.float32(((np.asarray(preds) > 0.5) == np.asarray(targs)).mean())


# ---------------------------------------------------------------------------- plain calls
@pytest.mark.parametrize("thresh", [0.2, 0.5, 0.8])
def test_accuracy_multi_is_the_fraction_of_right_elements(thresh):
    preds, targs = multilabel()
    p, t = preds.numpy(), targs.numpy()
    expected = ((p > thresh) == t).mean()
    assert 0.3 < expected < 0.95
    got = accuracy_multi(preds, targs, thresh)
    assert torch.is_tensor(got) and got.ndim == 0
    assert got.item() == pytest.approx(expected, abs=1e-7)
    metric = accuracy_thresh(thresh)
    assert metric(preds, targs).item() == pytest.approx(expected, abs=1e-7)
    assert metric.__name__ == "accuracy_thresh" and metric_name(metric) == "accuracy_thresh"
    assert repr(metric) == f"accuracy_thresh({thresh})" and not is_epoch_metric(metric)
    assert accuracy_multi_np(p, t, thresh) == pytest.approx(expected, abs=1e-7)
    assert accuracy_multi(p, t, thresh).item() == pytest.approx(expected, abs=1e-7)  # NumPy arrays work too


def test_accuracy_multi_default_threshold_and_logits():
    preds, targs = multilabel(seed=3)
    assert accuracy_multi(preds, targs).item() == accuracy_multi(preds, targs, 0.5).item()
    logits = torch.logit(preds.clamp(1e-4, 1 - 1e-4))
    assert accuracy_multi(logits, targs, 0.0).item() == pytest.approx(accuracy_multi(preds, targs).item(), abs=1e-7)


@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.7])
def test_precision_recall_fbeta_equal_scikit_learn_micro(thresh):
    preds, targs = multilabel(seed=1)
    t, hard = targs.numpy().astype(int), (preds.numpy() > thresh).astype(int)
    p_ref = precision_score(t, hard, average="micro", zero_division=0)
    r_ref = recall_score(t, hard, average="micro", zero_division=0)
    assert 0.05 < p_ref < 1 and 0.05 < r_ref < 1 and abs(p_ref - r_ref) > 1e-3
    assert precision(preds, targs, thresh) == pytest.approx(p_ref, abs=1e-12)
    assert recall(preds, targs, thresh) == pytest.approx(r_ref, abs=1e-12)
    for beta in (0.5, 1, 2, 3.5):
        ref = fbeta_score(t, hard, beta=beta, average="micro", zero_division=0)
        assert fbeta(preds, targs, beta, thresh) == pytest.approx(ref, abs=1e-12), beta
        assert partial(fbeta, beta=beta, thresh=thresh)(preds, targs) == pytest.approx(ref, abs=1e-12)
    assert f1(preds, targs, thresh) == pytest.approx(f1_score(t, hard, average="micro"), abs=1e-12)
    # NumPy arrays (what learn.predict_with_targs() returns) give the same numbers
    assert fbeta(preds.numpy(), targs.numpy(), 2, thresh) == fbeta(preds, targs, 2, thresh)
    assert isinstance(precision(preds, targs, thresh), float)


def test_fbeta_follows_fastai_formula_and_favours_recall_with_a_large_beta():
    preds, targs = multilabel(seed=2)
    p, r = precision(preds, targs, 0.3), recall(preds, targs, 0.3)
    assert r > p  # a low threshold: many positives found, many false ones
    for beta in (0.5, 2):
        b2 = beta ** 2
        assert fbeta(preds, targs, beta, 0.3) == pytest.approx((1 + b2) * p * r / (b2 * p + r + 1e-20), abs=1e-15)
    assert fbeta(preds, targs, 0.5, 0.3) < f1(preds, targs, 0.3) < fbeta(preds, targs, 2, 0.3)


def test_nothing_predicted_or_nothing_present_is_zero():
    preds, targs = multilabel(seed=4)
    assert precision(preds, targs, 2.0) == 0.0  # no label predicted
    assert recall(preds, targs, 2.0) == 0.0 and fbeta(preds, targs, 2, 2.0) == 0.0
    none = torch.zeros_like(targs)
    assert recall(preds, none) == 0.0 and precision(preds, none) == 0.0 and fbeta(preds, none, 1) == 0.0
    assert precision(targs, targs) == recall(targs, targs) == 1.0
    assert fbeta(targs, targs, 2) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("beta", [0, -1, 0.0, float("nan"), float("inf"), "2", None, True])
def test_a_bad_beta_is_a_value_error_naming_beta(beta):
    preds, targs = multilabel(n=8)
    with pytest.raises(ValueError, match=r"fbeta: beta must be a finite number > 0"):
        fbeta(preds, targs, beta)
    with pytest.raises(ValueError, match=r"beta must be"):
        partial(fbeta, beta=beta)(preds, targs)


def test_bad_shapes_and_thresholds_and_a_forgotten_call():
    preds, targs = multilabel(n=8)
    with pytest.raises(ValueError, match=r"precision: preds and targs must have the same shape .* got \(8, 6\) and "
                                         r"\(8,\)"):
        precision(preds, targs[:, 0])
    with pytest.raises(ValueError, match=r"accuracy_multi: preds and targs must have the same shape"):
        accuracy_multi(preds[:, :1], targs)
    with pytest.raises(ValueError, match=r"thresh must be a finite number"):
        accuracy_thresh(float("nan"))
    with pytest.raises(ValueError, match=r"thresh must be a finite number"):
        recall(preds, targs, "0.5")
    with pytest.raises(TypeError, match=r"pass metrics=\[accuracy_thresh\(0.5\)\], not metrics=\[accuracy_thresh\]"):
        accuracy_thresh(preds, targs)


# ---------------------------------------------------------------------------- epoch marker
def test_the_epoch_marker_survives_partial_and_names_the_metric():
    f_2 = partial(fbeta, beta=2)
    for m in (precision, recall, f1, fbeta, f_2, partial(f_2, thresh=0.3), partial(precision, thresh=0.2)):
        assert is_epoch_metric(m), m
    for m in (accuracy, accuracy_thresh(0.5), f2, partial(accuracy_multi, thresh=0.3)):
        assert not is_epoch_metric(m), m
    assert [metric_name(m) for m in (precision, recall, f_2, accuracy_thresh(0.2), partial(accuracy_multi))] == \
        ["precision", "recall", "fbeta", "accuracy_thresh", "accuracy_multi"]
    named = partial(fbeta, beta=2)
    named.__name__ = "f2_micro"
    assert metric_name(named) == "f2_micro"
    assert epoch_metric(f_2).__name__ == "fbeta"
    with pytest.raises(TypeError, match="metric accuracy is computed per batch"):
        as_epoch_metric(accuracy)


def test_as_epoch_metric_accumulates_batches_and_is_not_the_batch_mean():
    preds, targs = multilabel(n=90, seed=5)
    m = as_epoch_metric(partial(fbeta, beta=2))
    assert isinstance(m, EpochMetric) and m.__name__ == "fbeta"
    assert as_epoch_metric(m) is m and as_epoch_metric(partial(fbeta, beta=2)) is not m  # a fresh one each time
    m.reset()
    batches = [(preds[i:i + 16], targs[i:i + 16]) for i in range(0, 90, 16)]
    for p, t in batches:
        m.update(p, t)
    whole = fbeta(preds, targs, 2)
    assert m.compute() == pytest.approx(whole, abs=1e-12)
    batch_mean = sum(fbeta(p, t, 2) * len(t) for p, t in batches) / len(targs)
    assert abs(batch_mean - whole) > 1e-4


def test_whole_epoch_marks_a_user_function():
    def hamming_loss(preds, targs):
        return 1 - accuracy_multi(preds, targs).item()

    assert whole_epoch(hamming_loss) is hamming_loss and is_epoch_metric(hamming_loss)
    assert is_epoch_metric(partial(hamming_loss))
    with pytest.raises(TypeError, match="whole_epoch needs a function"):
        whole_epoch(3)


# ---------------------------------------------------------------------------- in a fit
def multilabel_data(n_trn=96, n_val=70, n_in=5, n_labels=4, bs=16, seed=0):
    """Features and n-hot float targets from a noisy linear rule (a learnable multi-label problem)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_trn + n_val, n_in, generator=g)
    w = torch.randn(n_in, n_labels, generator=g)
    y = ((x @ w + 0.8 * torch.randn(n_trn + n_val, n_labels, generator=g)) > 0.3).float()
    return DataBunch.from_arrays(x[:n_trn], y[:n_trn], x[n_trn:], y[n_trn:], bs=bs, seed=seed)


def test_a_fit_computes_precision_recall_fbeta_over_the_epoch_and_batch_metrics_per_batch(tmp_path):
    data = multilabel_data()
    assert data.c == 4  # float n-hot targets: a regression bunch (MSE by default), so pass the loss explicitly
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Sigmoid())
    metrics = [accuracy_thresh(0.5), precision, recall, partial(fbeta, beta=2), f2, acc_f32]
    learn = Learner(model, data, loss_func=torch.nn.functional.binary_cross_entropy, metrics=metrics,
                    progress=False, device="cpu", path=tmp_path)
    vals = learn.fit(0.5, 1)
    rec = learn.sched
    assert rec.metric_names == ["accuracy_thresh", "precision", "recall", "fbeta", "f2", "acc_f32"]
    assert len(rec.metrics) == 1 and rec.metrics[-1] == vals[1:]
    got = dict(zip(rec.metric_names, rec.metrics[-1]))

    preds, targs = learn.predict_with_targs()
    assert preds.shape == targs.shape == (70, 4)
    # whole epoch: the functions on all the validation predictions at once
    assert got["precision"] == pytest.approx(precision(preds, targs), abs=1e-9)
    assert got["recall"] == pytest.approx(recall(preds, targs), abs=1e-9)
    assert got["fbeta"] == pytest.approx(fbeta(preds, targs, 2), abs=1e-9)
    hard = (preds > 0.5).astype(int)
    assert got["fbeta"] == pytest.approx(fbeta_score(targs.astype(int), hard, beta=2, average="micro"), abs=1e-9)
    assert 0.2 < got["precision"] < 1 and 0.2 < got["recall"] < 1

    # per batch (16, 16, 16, 16, 6): the mean over samples, each batch weighted by its size
    chunks = [(preds[i:i + 16], targs[i:i + 16]) for i in range(0, 70, 16)]
    assert [len(t) for _, t in chunks] == [16, 16, 16, 16, 6]

    def batch_mean(fn):
        return sum(float(fn(torch.from_numpy(p), torch.from_numpy(t))) * len(t) for p, t in chunks) / 70

    assert got["accuracy_thresh"] == pytest.approx(((preds > 0.5) == targs).mean(), abs=1e-6)
    assert got["accuracy_thresh"] == pytest.approx(batch_mean(accuracy_thresh(0.5)), abs=1e-6)
    assert got["f2"] == pytest.approx(batch_mean(f2), abs=1e-6)
    assert got["acc_f32"] == pytest.approx(got["accuracy_thresh"], abs=1e-6)
    # the batch mean of fbeta is another number: that is why it is computed over the epoch
    assert abs(batch_mean(partial(fbeta, beta=2)) - got["fbeta"]) > 1e-4
    assert all(math.isfinite(v) for v in vals)
