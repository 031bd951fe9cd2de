"""learn.sched: what it records, the plots' data, the epoch table, host syncs, predictions."""
import math

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from snapfit import DataBunch, Learner, accuracy, accuracy_np, mlp
from snapfit.callbacks.recorder import smooth
from tests.helpers import small_data


def test_smooth_is_the_debiased_moving_average():
    vals = [3.0, 1.0, 2.0, 5.0]
    avg, out = 0.0, []
    for n, v in enumerate(vals, 1):
        avg = 0.98 * avg + 0.02 * v
        out.append(avg / (1 - 0.98 ** n))
    assert smooth(vals) == pytest.approx(out, rel=1e-12)
    assert smooth([2.0, float("nan"), 4.0])[1] == pytest.approx(2.0)


def test_recorded_losses_equal_a_manual_recompute(make_learner):
    """Record the loss of every batch independently (per-batch .item() in the test only) and compare."""
    from snapfit import Callback

    class Manual(Callback):
        order = 100
        def __init__(self): self.losses, self.val = [], []
        def after_loss(self, learn):
            (self.losses if learn.training else self.val).append((learn.loss.item(), len(learn.yb[0])))

    learn = make_learner(data=small_data(n_trn=40, n_val=20, bs=8))
    learn.sched.sync_every = 3
    man = Manual()
    out = learn.fit(0.1, 2, callbacks=[man], cycle_len=1)
    assert learn.sched.losses == pytest.approx([v for v, _ in man.losses], rel=1e-6)
    assert learn.sched.smooth_losses == pytest.approx(smooth([v for v, _ in man.losses]), rel=1e-6)
    # validation loss: batch-size weighted mean over the validation set, per epoch
    per_epoch = [man.val[:3], man.val[3:]]
    want = [sum(v * n for v, n in e) / sum(n for _, n in e) for e in per_epoch]
    assert learn.sched.val_losses == pytest.approx(want, rel=1e-6)
    assert out[0] == pytest.approx(want[-1], rel=1e-6)
    assert learn.sched.trn_losses[-1] == learn.sched.smooth_losses[-1]


def test_metrics_and_fit_return_value(make_learner):
    learn = make_learner(metrics=[accuracy])
    out = learn.fit(0.1, 2)
    log_preds, targs = learn.predict_with_targs()
    assert out[0] == pytest.approx(F.cross_entropy(torch.tensor(log_preds), torch.tensor(targs)).item(), rel=1e-5)
    assert out[1] == pytest.approx(accuracy_np(log_preds, targs), abs=1e-6)
    assert learn.sched.metric_names == ["accuracy"]
    assert learn.sched.metrics[-1] == pytest.approx([out[1]])


def test_epoch_table_is_printed(make_learner, capsys):
    make_learner(metrics=[accuracy]).fit(0.1, 2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["epoch", "trn_loss", "val_loss", "accuracy"]
    assert [ln.split()[0] for ln in lines[1:]] == ["0", "1"]
    assert all(len(ln.split()) == 4 for ln in lines[1:])
    assert all(len(v.split(".")[1]) == 6 for v in lines[1].split()[1:])


def test_plot_lr_data_and_cycle_marks(make_learner):
    learn = make_learner(data=small_data(n_trn=16, bs=8))
    learn.fit(0.1, 3, cycle_len=1, cycle_mult=2)
    fig = learn.sched.plot_lr()
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    lr_line = ax.get_lines()[0]
    assert list(lr_line.get_ydata()) == learn.sched.lrs
    assert list(lr_line.get_xdata()) == list(range(14))
    vlines = [ln.get_xdata()[0] for ln in ax.get_lines()[1:]]
    assert vlines == [1.5, 5.5, 13.5] and learn.sched.cycle_ends == [2, 6, 14]
    assert ax.get_xlabel() == "iteration" and ax.get_ylabel() == "learning rate"


def test_plot_lr_two_groups(tmp_path):
    model = mlp(6, 3, hidden=(8,))
    learn = Learner(model, small_data(), layer_groups=[model[0], model[2]], progress=False, device="cpu", path=tmp_path)
    learn.fit([0.01, 0.1], 1, cycle_len=1, warmup=False)
    ax = learn.sched.plot_lr().axes[0]
    ys = [list(ln.get_ydata()) for ln in ax.get_lines()[:2]]
    assert ys[0][0] == 0.01 and ys[1][0] == 0.1
    assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["group 0", "group 1"]


def test_plot_loss_data(make_learner):
    learn = make_learner()
    learn.fit(0.1, 2)
    fig = learn.sched.plot_loss()
    raw, smoothed, val = fig.axes[0].get_lines()
    assert list(raw.get_ydata()) == learn.sched.losses
    assert list(smoothed.get_ydata()) == learn.sched.smooth_losses
    assert list(val.get_ydata()) == learn.sched.val_losses
    assert list(val.get_xdata()) == [4, 9]  # last iteration of each epoch
    assert matplotlib.get_backend().lower() == "agg"


def test_no_host_sync_per_training_batch(make_learner, host_reads):
    """Reads of device values (.item/.tolist/.cpu/.numpy) do not grow with the number of batches."""
    counts = host_reads

    def run(n_trn):
        learn = make_learner(data=small_data(n_trn=n_trn, n_val=8, bs=4))
        learn.sched.sync_every = 10_000
        counts["n"] = 0
        learn.fit(0.1, 2, cycle_len=1)
        return counts["n"]

    few, many = run(8), run(80)  # 2 vs 20 batches per epoch
    assert few == many, f"{few} reads for 2 batches/epoch vs {many} for 20"
    # per epoch: one read of the training losses, one of the validation sums, and CPU-side reads by the
    # data pipeline (each DataLoader iterator draws its base seed with .item(); the sampler's permutation)
    assert few == 2 * 5


def test_sync_every_reads_back_at_the_interval(make_learner):
    learn = make_learner(data=small_data(n_trn=80, bs=4))  # 20 batches
    rec = learn.sched
    rec.sync_every = 7
    seen = []
    from snapfit import Callback

    class Watch(Callback):
        order = 100
        def after_batch(self, learn):
            if learn.training:
                seen.append(len(rec.losses))

    learn.fit(0.1, 1, callbacks=[Watch()])
    assert seen == [0] * 6 + [7] * 7 + [14] * 6 + [14]
    assert len(rec.losses) == 20


def test_predict_returns_log_probabilities(digits_flat, tmp_path):
    x_trn, y_trn, x_val, y_val = digits_flat
    data = DataBunch.from_arrays(x_trn, y_trn, x_val, y_val, bs=64, x_test=x_val[:10])
    learn = Learner(mlp(64, 10), data, metrics=[accuracy], progress=False, device="cpu", path=tmp_path)
    out = learn.fit(0.1, 2, cycle_len=1)
    log_preds = learn.predict()
    assert log_preds.shape == (len(x_val), 10) and log_preds.dtype == np.float32
    np.testing.assert_allclose(np.exp(log_preds).sum(1), 1, rtol=1e-5)
    preds = np.argmax(log_preds, 1)
    assert (preds == y_val).mean() == pytest.approx(out[1], abs=1e-6) and out[1] > 0.8
    learn.model.train()
    test = learn.predict(is_test=True)
    np.testing.assert_allclose(test, log_preds[:10], rtol=1e-5, atol=1e-5)  # other batch shapes: other BLAS sums
    assert learn.model.training, "predict restores the model's mode"


def test_no_validation_loader(tmp_path):
    data = DataBunch(small_data().train_dl, loss_func=torch.nn.CrossEntropyLoss())
    learn = Learner(mlp(6, 3, hidden=(8,)), data, progress=False, device="cpu", path=tmp_path)
    out = learn.fit(0.1, 2)
    assert math.isnan(out[0]) and len(learn.sched.val_losses) == 2
    with pytest.raises(ValueError, match="no validation loader"):
        learn.predict()


def test_plot_metrics_data(make_learner):
    learn = make_learner(metrics=[accuracy])
    learn.fit(0.1, 3)
    ax = learn.sched.plot_metrics().axes[0]
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [1, 2, 3] and list(line.get_ydata()) == [m[0] for m in learn.sched.metrics]
    assert line.get_label() == "accuracy"
