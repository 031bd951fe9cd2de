"""The position: what each field means in every event, and that a checkpoint written from any event resumes
bit-identically (weights, optimizer state and the recorder's whole history)."""
import pytest
import torch

from snapfit import Callback, Checkpoint, Position
from snapfit.callbacks.checkpoint import read_checkpoint
from snapfit.core import EVENTS
from tests import resume_job
from tests.helpers import CrashAt, small_data

FIELDS = ("training", "epoch", "batch_idx", "iteration", "stage", "iters_done", "batches_done", "epochs_done")


class RecordPosition(Callback):
    order = 100

    def __init__(self):
        self.seen = []

    def __getattr__(self, name):
        if name in EVENTS:
            def record(learn):
                p = learn.position
                self.seen.append((name, learn.training, p.epoch, p.batch_idx, p.iteration, p.stage, p.iters_done,
                                  p.batches_done, p.epochs_done))
            return record
        raise AttributeError(name)


def batch(training, epoch, idx, it):
    """The events of one batch: inside it the batch is in progress; in after_batch a training batch is done."""
    if not training:
        names = ["before_batch", "after_pred", "after_loss", "after_batch"]
        return [(n, False, epoch, idx, it, "validate", it, idx, epoch) for n in names]
    inside = ["before_batch", "after_pred", "after_loss", "after_backward", "after_step"]
    return ([(n, True, epoch, idx, it, "batch", it, idx, epoch) for n in inside]
            + [("after_batch", True, epoch, idx, it, "batch_end", it + 1, idx + 1, epoch)])


def test_every_position_field_in_every_event(make_learner):
    data = small_data(n_trn=16, n_val=8, bs=8)  # 2 training batches, 1 validation batch
    rec = RecordPosition()
    make_learner(data=data).fit(0.1, 2, callbacks=[rec])
    want = [("before_fit", False, 0, 0, 0, "start", 0, 0, 0)]
    for e in (0, 1):
        it0 = 2 * e
        want += [("before_epoch", False, e, 0, it0, "start", it0, 0, e),
                 ("before_train", True, e, 0, it0, "train", it0, 0, e)]
        want += batch(True, e, 0, it0) + batch(True, e, 1, it0 + 1)
        want += [("after_train", True, e, 2, it0 + 2, "validate", it0 + 2, 2, e),
                 ("before_validate", False, e, 2, it0 + 2, "validate", it0 + 2, 2, e)]
        want += batch(False, e, 2, it0 + 2)
        want += [("after_validate", False, e, 2, it0 + 2, "validate", it0 + 2, 2, e),
                 ("after_epoch", False, e, 2, it0 + 2, "end", it0 + 2, 2, e + 1)]
    want += [("after_fit", False, 2, 0, 4, "start", 4, 0, 2), ("cleanup_fit", False, 2, 0, 4, "start", 4, 0, 2)]
    assert rec.seen == want


def test_position_moves_and_settles():
    p = Position(n_epochs=2, n_batches=3)
    p.start_train(), p.start_batch(), p.finish_batch()
    assert (p.iteration, p.iters_done, p.batches_done, p.stage) == (0, 1, 1, "batch_end")
    assert p.settled() == Position(iteration=1, batch_idx=1, n_epochs=2, n_batches=3, stage="train")
    assert p.stage == "batch_end", "settled() is a copy"
    p.next_batch(), p.finish_train(), p.finish_epoch()
    assert (p.epochs_done, p.settled().epoch, p.settled().stage, p.settled().iteration) == (1, 1, "start", 1)
    q = Position()
    q.load_state_dict(p.state_dict())
    assert q == p
    with pytest.raises(ValueError, match="unknown position stage 'lunch'"):
        q.load_state_dict({**p.state_dict(), "stage": "lunch"})


# ---------------------------------------------------------------------------- a checkpoint from every event
FIT = dict(lrs=0.05, n_cycle=2, cycle_len=1, cycle_save_name="snap")  # 2 epochs of 19 batches
CRASH_AT = 25  # a training batch of the second epoch


class WriteAt(Callback):
    """Writes the checkpoint once, in `event` of the first epoch (batch events: training batch 7, or the
    first validation batch), then crashes at the start of training batch CRASH_AT. Runs after every
    default callback (order 100), as a user's checkpointing callback would."""

    order = 100

    def __init__(self, ck, event, training=True):
        self.ck, self.event, self.training, self.done = ck, event, training, False

    def __getattr__(self, name):
        if name not in EVENTS:
            raise AttributeError(name)

        def handler(learn):
            pos = learn.position
            in_batch = name in ("before_batch", "after_pred", "after_loss", "after_backward", "after_step",
                                "after_batch")
            if name != self.event or self.done:
                return
            if name in ("after_fit", "cleanup_fit") or pos.epoch == 0 and (
                    not in_batch or (learn.training == self.training and (not learn.training or pos.batch_idx == 7))):
                self.done = True
                self.ck.write(learn)
        return handler


def crash():
    """A power cut when training batch CRASH_AT starts, before any other before_batch handler touched it."""
    return CrashAt(CRASH_AT, RuntimeError("power cut"), order=-100)


def history(learn):
    return ({k: v.clone() for k, v in learn.model.state_dict().items()}, learn.opt.state_dict()["state"],
            learn.sched.state_dict())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    learn = resume_job.build(str(tmp_path_factory.mktemp("ref")))
    learn.fit(**FIT)
    return history(learn)


def assert_same(a, b):
    (wa, oa, ha), (wb, ob, hb) = a, b
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"weights differ at {k}"
    for i in oa:
        assert torch.equal(oa[i]["momentum_buffer"], ob[i]["momentum_buffer"]), f"momentum of param {i} differs"
    assert ha == hb, "the recorder's history differs"


CASES = [(e, True) for e in EVENTS if e not in ("after_fit", "cleanup_fit")] + [
    (e, False) for e in ("before_batch", "after_pred", "after_loss", "after_batch")] + [
    ("after_fit", True), ("cleanup_fit", True)]


@pytest.mark.parametrize("event,training", CASES, ids=[f"{e}-{'train' if t else 'valid'}" for e, t in CASES])
def test_a_checkpoint_written_in_any_event_resumes_bit_identically(tmp_path, reference, event, training):
    learn = resume_job.build(str(tmp_path))
    ck = Checkpoint("ck", every=10 ** 9)
    cbs = [ck, WriteAt(ck, event, training)] if event != "cleanup_fit" else [ck, crash(), WriteAt(ck, event)]
    if event not in ("after_fit", "cleanup_fit"):
        cbs.append(crash())
    if event == "after_fit":
        learn.fit(**FIT, callbacks=cbs)
    else:
        with pytest.raises(RuntimeError, match="power cut"):
            learn.fit(**FIT, callbacks=cbs)
    assert ck.written, "a checkpoint was written"
    pos = read_checkpoint(tmp_path / "models" / "ck.pt")["position"]
    if event in ("before_batch", "after_pred", "after_loss", "after_backward", "after_step") and training:
        assert (pos["iteration"], pos["stage"]) == (8, "train"), "written when the batch was done"
    fresh = resume_job.build(str(tmp_path), seed=1234)  # other weights and RNG: all must come from the file
    fresh.resume("ck")
    assert_same(history(fresh), reference)
