"""The loop: event order, callback order, fit-only callbacks, and the Cancel* exceptions."""
import pytest
import torch

from snapfit import (
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
    CancelValidException,
)
from snapfit.core import EVENTS
from tests.helpers import small_data


class Log(Callback):
    """Records (event, training?, epoch, batch_idx, iteration) for every event."""

    def __init__(self, order=0):
        self.order, self.log = order, []

    def __getattr__(self, name):
        if name in EVENTS:
            return lambda learn: self.log.append((name, learn.training, learn.epoch, learn.batch_idx, learn.iteration))
        raise AttributeError(name)


def names(log):
    return [e[0] for e in log]


TRAIN_BATCH = ["before_batch", "after_pred", "after_loss", "after_backward", "after_step", "after_batch"]
VALID_BATCH = ["before_batch", "after_pred", "after_loss", "after_batch"]


def test_event_order_two_epochs(make_learner):
    data = small_data(n_trn=16, n_val=8, bs=8)  # 2 training batches, 1 validation batch
    log = Log()
    make_learner(data=data).fit(0.1, 2, callbacks=[log])
    epoch = (["before_epoch", "before_train"] + TRAIN_BATCH * 2 + ["after_train", "before_validate"]
             + VALID_BATCH + ["after_validate", "after_epoch"])
    assert names(log.log) == ["before_fit"] + epoch * 2 + ["after_fit", "cleanup_fit"]
    # position as the callbacks see it
    train_batches = [(e[2], e[3], e[4]) for e in log.log if e[0] == "before_batch" and e[1]]
    assert train_batches == [(0, 0, 0), (0, 1, 1), (1, 0, 2), (1, 1, 3)]
    after_epochs = [(e[2], e[3], e[4]) for e in log.log if e[0] == "after_epoch"]
    assert after_epochs == [(0, 2, 2), (1, 2, 4)]


def test_callbacks_run_in_order_and_fit_callbacks_are_removed(make_learner):
    calls = []

    class A(Callback):
        order = 5
        def before_fit(self, learn): calls.append("A")

    class B(Callback):
        order = -5
        def before_fit(self, learn): calls.append("B")

    learn = make_learner(callbacks=[A()])
    n = len(learn.cbs)
    learn.fit(0.1, 1, callbacks=[B()])
    assert calls == ["B", "A"]
    assert len(learn.cbs) == n and not any(isinstance(c, B) for c in learn.cbs)
    learn.fit(0.1, 1)
    assert calls == ["B", "A", "A"]


def test_fit_callbacks_are_removed_even_after_an_error(make_learner):
    class Boom(Callback):
        def before_batch(self, learn):
            raise RuntimeError("boom")

    learn = make_learner()
    n = len(learn.cbs)
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(0.1, 1, callbacks=[Boom()])
    assert len(learn.cbs) == n


def test_cancel_batch_skips_the_step_but_after_batch_runs(make_learner):
    data = small_data(n_trn=16, n_val=8, bs=8)
    learn = make_learner(data=data)
    before = [p.detach().clone() for p in learn.model.parameters()]

    class SkipAll(Callback):
        def after_loss(self, learn):
            if learn.training:
                raise CancelBatchException()

    log = Log(order=-10)  # sees each event before SkipAll raises
    learn.fit(0.5, 2, callbacks=[SkipAll(), log])
    for p, b in zip(learn.model.parameters(), before):
        assert torch.equal(p, b), "a cancelled batch must not step"
    train = [e for e in log.log if e[1] and e[0] in TRAIN_BATCH]
    assert names(train) == ["before_batch", "after_pred", "after_loss", "after_batch"] * 4
    assert learn.iteration == 4  # cancelled batches still count: the data was consumed
    assert len(learn.sched.lrs) == 4


def test_cancel_epoch_skips_rest_of_epoch_and_validation(make_learner):
    data = small_data(n_trn=24, n_val=8, bs=8)  # 3 batches

    class StopEpoch0(Callback):
        def before_batch(self, learn):
            if learn.training and learn.epoch == 0 and learn.batch_idx == 1:
                raise CancelEpochException()

    log = Log(order=-10)
    learn = make_learner(data=data)
    learn.fit(0.1, 2, callbacks=[StopEpoch0(), log])
    ep0 = [e for e in log.log if e[2] == 0 and e[0] != "before_fit"]
    # the batch in progress is abandoned (no after_batch), the train and epoch units are closed
    assert names(ep0) == (["before_epoch", "before_train"] + TRAIN_BATCH + ["before_batch",
                          "after_train", "after_epoch"])
    ep1 = [e for e in log.log if e[2] == 1]
    assert names(ep1).count("before_validate") == 1 and names(ep1).count("before_batch") == 3 + 1
    assert learn.iteration == 1 + 3, "the abandoned batch does not count"


def test_cancel_train_still_validates(make_learner):
    class StopTrain(Callback):
        def after_batch(self, learn):
            if learn.training:
                raise CancelTrainException()

    log = Log(order=10)
    make_learner().fit(0.1, 1, callbacks=[StopTrain(), log])
    n = names(log.log)
    assert n.count("after_step") == 1
    assert n.index("after_train") < n.index("before_validate") < n.index("after_validate") < n.index("after_epoch")


def test_cancel_valid_ends_validation(make_learner):
    data = small_data(n_trn=16, n_val=24, bs=8)  # 3 validation batches

    class StopValid(Callback):
        def after_batch(self, learn):
            if not learn.training:
                raise CancelValidException()

    log = Log(order=-10)
    make_learner(data=data).fit(0.1, 1, callbacks=[StopValid(), log])
    n = names(log.log)
    valid = n[n.index("before_validate"):n.index("after_validate") + 1]
    assert valid == ["before_validate"] + VALID_BATCH + ["after_validate"]


def test_cancel_fit_runs_after_fit_and_stops(make_learner):
    class StopAtEpoch1(Callback):
        def before_epoch(self, learn):
            if learn.epoch == 1:
                raise CancelFitException()

    log = Log(order=-10)
    learn = make_learner()
    out = learn.fit(0.1, 5, callbacks=[StopAtEpoch1(), log])
    n = names(log.log)
    assert n[-3:] == ["after_epoch", "after_fit", "cleanup_fit"]
    assert n.count("before_epoch") == 2 and n.count("after_epoch") == 2
    assert len(learn.sched.val_losses) == 2  # the cancelled epoch is closed (NaN validation)
    assert out is not None


def test_cleanup_runs_on_error_but_after_events_do_not(make_learner):
    class Boom(Callback):
        def after_step(self, learn):
            raise ValueError("bad step")

    log = Log(order=10)
    with pytest.raises(ValueError, match="bad step"):
        make_learner().fit(0.1, 1, callbacks=[Boom(), log])
    n = names(log.log)
    assert n[-1] == "cleanup_fit" and "after_fit" not in n and "after_epoch" not in n


def test_learner_state_visible_to_callbacks(make_learner):
    seen = {}

    class Peek(Callback):
        def after_loss(self, learn):
            if learn.training and "x" not in seen:
                seen.update(x=learn.xb[0].shape, y=learn.yb[0].shape, pred=learn.pred.shape,
                            loss=learn.loss.ndim, opt=type(learn.opt).__name__)

    make_learner(data=small_data(bs=8)).fit(0.1, 1, callbacks=[Peek()])
    assert seen == {"x": torch.Size([8, 6]), "y": torch.Size([8]), "pred": torch.Size([8, 3]), "loss": 0, "opt": "SGD"}


def test_default_optimizer_is_sgd_momentum_09_and_wd(make_learner):
    learn = make_learner(wd=1e-4)
    learn.fit(0.1, 1)
    g = learn.opt.param_groups[0]
    assert type(learn.opt) is torch.optim.SGD and g["momentum"] == 0.9 and g["weight_decay"] == 1e-4
    learn.fit(0.1, 1, wds=0.01)
    assert learn.opt.param_groups[0]["weight_decay"] == 0.01


def test_one_sgd_step_matches_a_hand_written_update(make_learner):
    """The loop is plain SGD: one batch, momentum buffer empty, update = -lr * grad."""
    data = small_data(n_trn=8, n_val=8, bs=8)
    learn = make_learner(data=data)
    model = learn.model
    x, y = next(iter(data.train_dl))
    w0 = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    learn.fit(0.1, 1)
    for p, w, g in zip(model.parameters(), w0, grads):
        torch.testing.assert_close(p.detach(), w - 0.1 * g, rtol=0, atol=1e-7)
