"""TensorBoard and CSV logs (read back and compared with learn.sched, across a kill and a resume), torchmetrics
and epoch metrics against scikit-learn, and ClassificationInterpretation."""
import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from sklearn.metrics import f1_score, precision_score, roc_auc_score

from snapfit import (
    ClassificationInterpretation,
    CSVLogger,
    DataBunch,
    ImageClassifierData,
    Learner,
    TensorBoardCallback,
    TensorBoardLogger,
    accuracy,
    epoch_metric,
    mlp,
    simple_cnn,
    tfms_from_stats,
)
from snapfit.callbacks.lars import LARS

ROOT = Path(__file__).resolve().parent.parent


def read_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture
def digits_learner(digits_flat, tmp_path):
    def make(**kw):
        x, y, xv, yv = digits_flat
        torch.manual_seed(0)
        data = DataBunch.from_arrays(x[:640], y[:640], xv[:200], yv[:200], bs=64)
        return Learner(mlp(64, 10, hidden=(32,)), data, metrics=[accuracy], progress=False, device="cpu",
                       path=tmp_path, **kw)
    return make


def test_tensorboard_scalars_equal_the_recorder(digits_learner, tmp_path):
    tb = TensorBoardLogger(tmp_path / "tb")
    learn = digits_learner(callbacks=[tb])
    learn.sched.sync_every = 3
    lars = LARS(record_every=4)
    learn.fit(0.1, 2, cycle_len=1, use_clr_beta=(10, 10, 0.95, 0.85), callbacks=[lars])
    ev, rec = read_events(tmp_path / "tb"), learn.sched
    assert ev["train/loss"] == [(i, pytest.approx(v, rel=1e-6)) for i, v in enumerate(rec.losses)]
    assert [v for _, v in ev["lr/group_0"]] == pytest.approx(rec.lrs, rel=1e-6)
    assert [v for _, v in ev["momentum/group_0"]] == pytest.approx(rec.moms, rel=1e-6)
    assert ev["valid/loss"] == [(s, pytest.approx(v, rel=1e-6)) for s, v in zip(rec.epoch_iterations, rec.val_losses)]
    assert [v for _, v in ev["valid/accuracy"]] == pytest.approx([m[0] for m in rec.metrics], rel=1e-6)
    assert [s for s, _ in ev["lars/0.weight"]] == lars.iterations
    assert TensorBoardCallback is TensorBoardLogger
    hp = list((tmp_path / "tb" / "hparams").glob("events.*"))
    assert hp, "the fit's arguments are written as hparams"


def test_tensorboard_default_folder_and_a_new_one_per_fit(digits_learner, tmp_path):
    tb = TensorBoardLogger()
    learn = digits_learner(callbacks=[tb])
    learn.fit(0.1, 1)
    first = Path(tb.log_dir)
    learn.fit(0.1, 1)
    assert first.parent == tmp_path / "runs" and Path(tb.log_dir) != first, "each fit logs into its own run"
    assert len(read_events(first)["train/loss"]) == len(read_events(tb.log_dir)["train/loss"]) == 10


def test_tensorboard_missing_is_a_clear_error(digits_learner, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name == "torch.utils.tensorboard":
            raise ImportError("TensorBoard logging requires TensorBoard version 1.15 or above")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'snapfit\[tensorboard\]'"):
        digits_learner(callbacks=[TensorBoardLogger()]).fit(0.1, 1)


def test_csv_logger_one_row_per_epoch(digits_learner, tmp_path):
    learn = digits_learner(callbacks=[CSVLogger()])
    learn.fit(0.1, 3)
    rows = list(csv.reader(open(tmp_path / "history.csv")))
    assert rows[0] == ["epoch", "trn_loss", "val_loss", "accuracy", "time"]
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2]
    rec = learn.sched
    assert [float(r[2]) for r in rows[1:]] == pytest.approx(rec.val_losses)
    assert [float(r[3]) for r in rows[1:]] == pytest.approx([m[0] for m in rec.metrics])
    learn.fit(0.1, 2)  # append=False: a new file
    assert len(list(csv.reader(open(tmp_path / "history.csv")))) == 3
    learn.cbs[-1].append = True
    learn.fit(0.1, 2)
    assert len(list(csv.reader(open(tmp_path / "history.csv")))) == 5


@pytest.mark.slow
def test_sigkill_and_resume_leave_one_row_per_epoch_and_one_point_per_step(tmp_path):
    """A SIGKILL mid-epoch (after a checkpoint), then a resume: the CSV has each epoch once, TensorBoard each
    step once, with the values of an uninterrupted run."""
    def job(out, *args, kill=False):
        p = subprocess.run([sys.executable, "-m", "tests.logging_job", str(out), *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == (-signal.SIGKILL if kill else 0), p.stderr[-3000:]

    job(tmp_path / "ref", "full")
    job(tmp_path / "run", "kill", kill=True)
    job(tmp_path / "run", "resume")
    ref, run = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("ref", "run"))
    for name in ("ref", "run"):
        ev = read_events(tmp_path / name / "tb")
        steps = [s for s, _ in ev["train/loss"]]
        assert steps == list(range(len(ref["losses"]))), f"{name}: one point per step, none missing"
        assert [v for _, v in ev["train/loss"]] == pytest.approx(ref["losses"], rel=1e-6)
        assert [s for s, _ in ev["valid/loss"]] == ref["epoch_iterations"]
    rows = [list(csv.reader(open(tmp_path / d / "history.csv"))) for d in ("ref", "run")]
    assert [r[:4] for r in rows[0]] == [r[:4] for r in rows[1]], "the same rows, each epoch once"
    assert run["losses"] == ref["losses"]


# ---------------------------------------------------------------------------- metrics
def test_torchmetrics_and_epoch_metrics_equal_scikit_learn(digits_learner):
    from torchmetrics.classification import MulticlassAUROC, MulticlassF1Score
    macro_f1 = MulticlassF1Score(num_classes=10, average="macro")

    def precision(preds, targs):
        return precision_score(targs.numpy(), preds.argmax(1).numpy(), average="macro", zero_division=0)

    learn = digits_learner()
    learn.metrics = [accuracy, macro_f1, MulticlassAUROC(num_classes=10), epoch_metric(precision)]
    vals = learn.fit(0.05, 2)
    assert learn.sched.metric_names == ["accuracy", "MulticlassF1Score", "MulticlassAUROC", "precision"]
    out, targs = learn.predict_with_targs()
    probs = np.exp(out)
    assert vals[1] == pytest.approx((out.argmax(1) == targs).mean(), abs=1e-6)
    assert vals[2] == pytest.approx(f1_score(targs, out.argmax(1), average="macro"), abs=1e-6)
    assert vals[3] == pytest.approx(roc_auc_score(targs, probs / probs.sum(1, keepdims=True), multi_class="ovr"),
                                    abs=1e-5)
    assert vals[4] == pytest.approx(precision_score(targs, out.argmax(1), average="macro", zero_division=0), abs=1e-9)
    # the mean of per-batch F1 values is not the epoch's F1: that is why F1 is an epoch metric
    batch_f1 = []
    for x, y in learn.data.valid_dl:
        with torch.no_grad():
            p = learn.model(x).argmax(1).numpy()
        batch_f1.append(f1_score(y.numpy(), p, average="macro") * len(y))
    out, targs = learn.predict_with_targs()
    assert sum(batch_f1) / len(targs) != pytest.approx(f1_score(targs, out.argmax(1), average="macro"), abs=1e-4)


def test_an_epoch_metric_that_returns_several_values_is_named(digits_learner):
    from torchmetrics.classification import MulticlassF1Score
    learn = digits_learner()
    learn.metrics = [MulticlassF1Score(num_classes=10, average=None)]
    with pytest.raises(TypeError, match=r"metric MulticlassF1Score computed a tensor of shape \(10,\)"):
        learn.fit(0.05, 1)


# ---------------------------------------------------------------------------- interpretation
def test_interpretation_on_images(digits, tmp_path):
    x_trn, y_trn, x_val, y_val = digits
    tfms = tfms_from_stats(((0.5,) * 3, (0.25,) * 3), 8, crop="center")
    data = ImageClassifierData.from_arrays(tmp_path, (x_trn[:300, 0], y_trn[:300]), (x_val[:60, 0], y_val[:60]),
                                           bs=32, tfms=tfms)
    torch.manual_seed(0)
    learn = Learner(simple_cnn(10, in_channels=3, widths=(8,)), data, path=tmp_path, progress=False, device="cpu")
    learn.fit(0.05, 1)
    interp = ClassificationInterpretation.from_learner(learn)
    out, targs = learn.predict_with_targs()
    nll = -out[np.arange(len(targs)), targs]  # simple_cnn outputs log-probabilities
    losses, idx = interp.top_losses(5)
    assert list(idx) == list(np.argsort(-nll, kind="stable")[:5])
    assert losses == pytest.approx(nll[idx], rel=1e-5)
    cm = interp.confusion_matrix()
    assert cm.sum() == 60 and np.trace(cm) == (out.argmax(1) == targs).sum()
    confused = interp.most_confused()
    assert confused == sorted(confused, key=lambda c: -c[2]) and all(a != p for a, p, _ in confused)
    assert sum(c for _, _, c in confused) == 60 - np.trace(cm)
    fig = interp.plot_top_losses(4)
    assert isinstance(fig, Figure) and len(fig.axes[0].images) == 1
    shown = fig.axes[0].images[0].get_array()
    raw = x_val[idx[0], 0]  # the image as it was before normalisation: [0, 1]
    assert float(np.asarray(shown).min()) >= 0 and np.asarray(shown).shape[:2] == raw.shape
    np.testing.assert_allclose(np.asarray(shown)[..., 0], raw, atol=1 / 255 + 1e-6)  # stored as uint8
    assert isinstance(interp.plot_confusion_matrix(), Figure)


def test_interpretation_on_arrays_plots_a_table(digits_learner):
    learn = digits_learner()
    learn.fit(0.05, 1)
    interp = ClassificationInterpretation.from_learner(learn)
    fig = interp.plot_top_losses(3)
    assert isinstance(fig, Figure) and fig.axes[0].tables, "not images: a table of the top losses"
    with pytest.raises(ValueError, match="ds_type must be 'valid'"):
        ClassificationInterpretation.from_learner(learn, ds_type="test")


def test_the_loggers_read_nothing_back_per_batch(tmp_path, host_reads):
    def run(n_batches):
        torch.manual_seed(0)
        from tests.helpers import small_data, small_model
        learn = Learner(small_model(), small_data(n_trn=4 * n_batches, n_val=8, bs=4), progress=False, device="cpu",
                        path=tmp_path, callbacks=[TensorBoardLogger(tmp_path / f"tb{n_batches}"), CSVLogger()])
        learn.sched.sync_every = 10_000
        host_reads["n"] = 0
        learn.fit(0.1, 2)
        return host_reads["n"]

    assert run(2) == run(20)
