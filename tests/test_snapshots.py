"""Per-cycle snapshots on disk, load_cycle, save/load, and the atomic writer."""
import os
import pickle

import pytest
import torch

from snapfit import Callback, Learner
from snapfit.io import DamagedFileError, atomic_save, load_file
from tests.helpers import small_data, small_model


class EpochEndWeights(Callback):
    """Copies the model's state dict at every epoch end."""

    order = 100

    def __init__(self):
        self.states = []

    def after_epoch(self, learn):
        self.states.append({k: v.detach().clone() for k, v in learn.model.state_dict().items()})


def test_one_snapshot_per_cycle_equal_to_the_weights_at_cycle_end(make_learner, tmp_path):
    learn = make_learner(data=small_data(n_trn=24, bs=8))
    rec = EpochEndWeights()
    learn.fit(0.2, 3, cycle_len=1, cycle_mult=2, cycle_save_name="snap", callbacks=[rec])
    files = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert files == ["snap_cyc_0.json", "snap_cyc_0.pt", "snap_cyc_1.json", "snap_cyc_1.pt", "snap_cyc_2.json",
                     "snap_cyc_2.pt"]
    assert len(rec.states) == 7
    for cycle, epoch in [(0, 0), (1, 2), (2, 6)]:  # cycles of 1, 2, 4 epochs
        saved = torch.load(tmp_path / "models" / f"snap_cyc_{cycle}.pt", weights_only=True)
        assert saved.keys() == rec.states[epoch].keys()
        for k in saved:
            assert torch.equal(saved[k], rec.states[epoch][k]), (cycle, k)
        # and it differs from the next epoch's weights (the snapshot is not just the last state)
        if epoch + 1 < 7:
            assert not torch.equal(saved["0.weight"], rec.states[epoch + 1]["0.weight"])


def test_load_cycle_restores_the_snapshot(make_learner):
    learn = make_learner()
    rec = EpochEndWeights()
    learn.fit(0.2, 2, cycle_len=1, cycle_save_name="snap", callbacks=[rec])
    learn.load_cycle("snap", 0)
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, rec.states[0][k])
    learn.load_cycle("snap", 1)
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, rec.states[1][k])


def test_save_and_load_round_trip_into_a_fresh_learner(make_learner, tmp_path):
    learn = make_learner()
    learn.fit(0.1, 1)
    path = learn.save("final")
    assert path == tmp_path / "models" / "final.pt"
    other = make_learner(model=small_model())
    assert not torch.equal(other.model[0].weight, learn.model[0].weight)
    other.load("final")
    for a, b in zip(other.model.state_dict().values(), learn.model.state_dict().values()):
        assert torch.equal(a, b)
    p1, _ = learn.predict_with_targs()
    p2, _ = other.predict_with_targs()
    assert (p1 == p2).all()


def test_snapshot_files_hold_only_tensors(make_learner, tmp_path):
    learn = make_learner()
    learn.fit(0.1, 1, cycle_len=1, cycle_save_name="s")
    state = torch.load(tmp_path / "models" / "s_cyc_0.pt", weights_only=True)
    assert all(torch.is_tensor(v) for v in state.values())


def test_atomic_save_crash_mid_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    atomic_save({"a": torch.ones(3)}, path)

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_file(path)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"], "the temp file must be cleaned up"


def test_crash_during_snapshot_leaves_previous_snapshot(make_learner, tmp_path, monkeypatch):
    learn = make_learner()
    learn.fit(0.1, 1, cycle_len=1, cycle_save_name="s")
    before = load_file(tmp_path / "models" / "s_cyc_0.pt")
    real_replace = os.replace

    def crash(src, dst):
        raise KeyboardInterrupt()

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        learn.fit(0.5, 1, cycle_len=1, cycle_save_name="s")
    monkeypatch.setattr(os, "replace", real_replace)
    after = load_file(tmp_path / "models" / "s_cyc_0.pt")
    for k in before:
        assert torch.equal(before[k], after[k])
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["s_cyc_0.json", "s_cyc_0.pt"]
    # the learner is still usable
    learn.fit(0.1, 1)


def test_damaged_file_is_a_clear_error(make_learner, tmp_path):
    learn = make_learner()
    learn.fit(0.1, 1, cycle_len=1, cycle_save_name="s")
    learn.save("good")
    p = tmp_path / "models" / "bad.pt"
    data = (tmp_path / "models" / "good.pt").read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedFileError, match=r"bad\.pt is damaged .*good\.pt"):
        learn.load("bad")


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    p = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, p)
    with pytest.raises(pickle.UnpicklingError, match="refused to load .*weights_only=True"):
        load_file(p)


def test_learner_path_and_model_dir(tmp_path):
    learn = Learner(small_model(), small_data(), path=tmp_path / "run", model_dir="weights",
                    progress=False, device="cpu")
    learn.fit(0.1, 1, cycle_len=1, cycle_save_name="x")
    assert (tmp_path / "run" / "weights" / "x_cyc_0.pt").is_file()
