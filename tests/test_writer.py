"""Snapshots and checkpoints written by the background writer: the same bytes as a synchronous write, at most
one write in flight, a failed write surfacing in the training thread naming the file, and files in place when
fit returns."""
import errno
import io
import threading
import time

import pytest
import torch

import snapfit.io as io_module
from snapfit import Learner
from snapfit.writer import BackgroundWriter, WriteError, host_copy
from tests.helpers import small_data, small_model


def run(tmp_path, background: bool, **fit):
    torch.manual_seed(0)
    learn = Learner(small_model(), small_data(), progress=False, device="cpu", path=tmp_path)
    learn.writer.enabled = background
    learn.fit(0.1, 2, cycle_len=1, cycle_save_name="snap", checkpoint="ckpt", checkpoint_every=2, **fit)
    return learn


def test_background_files_are_the_bytes_of_synchronous_ones(tmp_path):
    run(tmp_path / "bg", True)
    run(tmp_path / "sync", False)
    for name in ("snap_cyc_0.pt", "snap_cyc_1.pt", "ckpt.pt"):
        assert (tmp_path / "bg" / "models" / name).read_bytes() == (tmp_path / "sync" / "models" / name).read_bytes()


def test_at_most_one_write_in_flight_and_all_done_when_fit_returns(tmp_path, monkeypatch):
    spans, real, idents = [], io_module.atomic_write_bytes, set()

    def slow(data, path):
        start = time.perf_counter()
        time.sleep(0.05)
        real(data, path)
        spans.append((start, time.perf_counter(), threading.current_thread().name, str(path)))
        idents.add(threading.get_ident())

    monkeypatch.setattr(io_module, "atomic_write_bytes", slow)
    learn = run(tmp_path, True)
    pt_files = [p for *_, p in spans if p.endswith(".pt")]
    assert len(pt_files) == learn.writer.written == 5 + 1 + 2, "checkpoints every 2 batches and at the end, snapshots"
    assert len(spans) == len(pt_files) + 2, "and each snapshot's sidecar, after its weights"
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), "never two at once"
    assert all(name.startswith("snapfit writer") for _, _, name, _ in spans), "written by the writer thread"
    assert len(idents) == 1 and threading.get_ident() not in idents, "one writer thread for the learner's files"
    assert learn.saved_cycles("snap") == [0, 1] and not learn.writer.pending
    learn.load_cycle("snap", 1)  # right after fit: the file is there


def test_a_failed_write_surfaces_naming_the_file_and_keeps_the_previous(tmp_path, monkeypatch):
    learn = run(tmp_path, True)
    before = (tmp_path / "models" / "ckpt.pt").read_bytes()

    def full(data, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_module, "atomic_write_bytes", full)
    with pytest.raises(WriteError, match=r"writing .*models/ckpt\.pt failed: OSError: \[Errno 28\] No space left on "
                                         r"device; the previous ckpt\.pt \(if any\) is untouched"):
        learn.fit(0.1, 2, checkpoint="ckpt", checkpoint_every=2)
    assert learn.iteration <= 4, "stopped at the batch after the failed write, not at the end of the fit"
    assert (tmp_path / "models" / "ckpt.pt").read_bytes() == before
    monkeypatch.undo()
    learn.fit(0.1, 1, checkpoint="ckpt")  # the learner is usable again
    assert (tmp_path / "models" / "ckpt.pt").read_bytes() != before


def test_the_copy_is_the_state_of_that_moment(tmp_path):
    w = torch.ones(3)
    state = {"w": w, "hist": [[1.0], [2.0]], "n": 3}
    copy = host_copy(state)
    w.add_(1)
    state["hist"][0].append(9.0)
    assert torch.equal(copy["w"], torch.ones(3)) and copy["hist"] == [[1.0], [2.0]] and copy["n"] == 3


def test_writer_without_background(tmp_path):
    wr = BackgroundWriter(enabled=False)
    wr.write({"a": torch.zeros(2)}, tmp_path / "x.pt")
    assert (tmp_path / "x.pt").is_file() and not wr.pending


class TiedModel(torch.nn.Module):
    """An embedding whose weight the decoder shares, and a BatchNorm (its state dict carries versions)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(5, 3)
        self.bn = torch.nn.BatchNorm1d(3)
        self.dec = torch.nn.Linear(3, 5, bias=False)
        self.dec.weight = self.emb.weight


def test_a_background_file_is_the_bytes_of_torch_save(tmp_path):
    torch.manual_seed(0)
    state = TiedModel().state_dict()
    base = torch.arange(12.0)
    state.update(view=base[3:7], strided=base.view(3, 4).t(), whole=base, empty=torch.empty(0),
                 odd_strides=torch.arange(3.0).as_strided((3, 1), (1, 7)),  # contiguous, unusual strides kept
                 channels_last=torch.arange(24.0).view(1, 2, 3, 4).contiguous(memory_format=torch.channels_last))
    wr = BackgroundWriter()
    wr.write(state, tmp_path / "bg.pt")
    wr.wait()
    ref = io.BytesIO()
    torch.save(state, ref)
    assert (tmp_path / "bg.pt").read_bytes() == ref.getvalue()
    back = torch.load(tmp_path / "bg.pt", weights_only=True)
    assert back["emb.weight"].untyped_storage().data_ptr() == back["dec.weight"].untyped_storage().data_ptr()
    assert back._metadata["bn"]["version"] == 2, "module versions kept (load_state_dict reads them)"
    assert back["strided"].stride() == (1, 4) and torch.equal(back["view"], torch.tensor([3.0, 4, 5, 6]))
    assert back["odd_strides"].stride() == (1, 7)
    assert back["channels_last"].is_contiguous(memory_format=torch.channels_last)


def test_the_copy_keeps_sharing_and_is_independent():
    base = torch.arange(6.0)
    copy = host_copy({"a": base, "b": base[2:4]})
    assert copy["a"].untyped_storage().data_ptr() == copy["b"].untyped_storage().data_ptr()
    assert copy["a"].untyped_storage().data_ptr() != base.untyped_storage().data_ptr()
    base.zero_()
    assert torch.equal(copy["b"], torch.tensor([2.0, 3.0]))
    sparse = torch.eye(3).to_sparse()
    assert torch.equal(host_copy({"s": sparse})["s"].to_dense(), torch.eye(3)), "layouts without a plain storage too"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_state_is_written_from_pinned_copies_taken_at_the_handover(tmp_path):
    torch.manual_seed(0)
    state = TiedModel().cuda().state_dict()
    base = torch.arange(12.0, device="cuda")
    state.update(view=base[3:7], strided=base.view(3, 4).t())

    def on_cpu_bytes(s):  # what torch.save gives for the state moved to the host (sharing and metadata kept)
        buf = io.BytesIO()
        torch.save(s, buf)
        host, out = torch.load(io.BytesIO(buf.getvalue()), map_location="cpu", weights_only=True), io.BytesIO()
        torch.save(host, out)
        return out.getvalue()

    wr = BackgroundWriter()
    for i in range(2):  # the second write reuses the pinned buffers
        expected = on_cpu_bytes(state)
        wr.write(state, tmp_path / f"w{i}.pt")
        for t in state.values():
            if t.is_floating_point():
                t.add_(1)  # queued after the copies: not in the file
        wr.wait()
        assert (tmp_path / f"w{i}.pt").read_bytes() == expected
