"""Bad input gets a clear error that names the argument (and nothing is trained or written)."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from snapfit import DataBunch, ImageClassifierData, Learner, TerminateOnNaN, accuracy
from snapfit.callbacks.lars import LARS
from snapfit.data import export_digits_images
from snapfit.io import DamagedFileError
from tests.helpers import small_data, small_model


@pytest.mark.parametrize("kwargs,message", [
    (dict(n_cycle=0), "n_cycle must be a positive int, got 0"),
    (dict(n_cycle=-2), "n_cycle must be a positive int, got -2"),
    (dict(n_cycle=1.5), "n_cycle must be a positive int, got 1.5"),
    (dict(n_cycle=2, cycle_len=0), "cycle_len must be a positive int, got 0"),
    (dict(n_cycle=2, cycle_len=-1), "cycle_len must be a positive int, got -1"),
    (dict(n_cycle=2, cycle_len=0.5), "cycle_len must be a positive int, got 0.5"),
    (dict(n_cycle=2, cycle_len=1, cycle_mult=0), "cycle_mult must be an int >= 1"),
    (dict(n_cycle=2, cycle_len=1, cycle_mult=1.5), "cycle_mult must be an int >= 1"),
    (dict(n_cycle=2, cycle_mult=2), "cycle_mult=2 needs cycle_len"),
    (dict(n_cycle=2, cycle_len=1, cycle_save_name="a/b"), "cycle_save_name must be a plain file name"),
    (dict(n_cycle=2, cycle_len=1, cycle_save_name="..\\x"), "cycle_save_name must be a plain file name"),
    (dict(n_cycle=2, cycle_len=1, cycle_save_name=""), "cycle_save_name must be a non-empty str"),
    (dict(n_cycle=2, cycle_save_name="snap"), "cycle_save_name needs cycle_len"),
    (dict(n_cycle=1, wds=[0.1, 0.2]), "wds has 2 values but the optimizer has 1 param group"),
])
def test_fit_arguments(make_learner, tmp_path, kwargs, message):
    learn = make_learner()
    w = learn.model[0].weight.detach().clone()
    with pytest.raises(ValueError, match=_re(message)):
        learn.fit(0.1, **kwargs)
    assert torch.equal(learn.model[0].weight, w), "nothing may be trained on bad input"
    assert not (tmp_path / "models").exists(), "nothing may be written on bad input"


def _re(s):
    import re
    return re.escape(s)


@pytest.mark.parametrize("lrs,message", [
    ([0.1, 0.2], "lrs has 2 values but the optimizer has 1 param group(s)"),
    (np.array([0.1, 0.2, 0.3]), "lrs has 3 values but the optimizer has 1 param group(s)"),
    (-0.1, "lrs must be finite and >= 0"),
    (float("nan"), "lrs must be finite and >= 0"),
    ("fast", "lrs must be a float or a sequence of floats"),
])
def test_lrs_per_group(make_learner, lrs, message):
    with pytest.raises(ValueError, match=_re(message)):
        make_learner().fit(lrs, 1)


def test_a_one_group_optimizer_with_two_layer_groups(tmp_path):
    model = small_model()
    with pytest.raises(ValueError, match=r"opt_func could not build an optimizer with 2 param groups \(one per layer "
                                         r"group\): LBFGS doesn't support per-parameter options .*Use this optimizer "
                                         r"with a single layer group \(leave layer_groups= out\)"):
        learn = Learner(model, small_data(), layer_groups=[model[0], model[2]], progress=False, device="cpu",
                        path=tmp_path, opt_func=lambda ps: torch.optim.LBFGS(ps))
        learn.fit(0.1, 1)


def test_lrs_length_with_two_layer_groups(tmp_path):
    model = small_model()
    learn = Learner(model, small_data(), layer_groups=[model[0], model[2]], progress=False, device="cpu", path=tmp_path)
    with pytest.raises(ValueError, match=_re("lrs has 3 values but the optimizer has 2 param group(s)")):
        learn.fit([0.1, 0.2, 0.3], 1)
    learn.fit([0.01, 0.1], 1, cycle_len=1, warmup=False)
    assert learn.sched.group_lrs[0] == [0.01, 0.1]


def test_empty_train_loader(tmp_path):
    empty = DataLoader(TensorDataset(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long)), batch_size=4)
    learn = Learner(small_model(), DataBunch(empty), loss_func=nn.CrossEntropyLoss(), progress=False, device="cpu")
    with pytest.raises(ValueError, match=_re("the training loader is empty (len(data.train_dl) == 0)")):
        learn.fit(0.1, 1)
    with pytest.raises(ValueError, match="x_trn is empty"):
        DataBunch.from_arrays(np.zeros((0, 3)), np.zeros(0, dtype=int))


def test_load_cycle_never_saved_lists_the_saved_ones(make_learner):
    learn = make_learner()
    learn.fit(0.1, 2, cycle_len=1, cycle_save_name="snap")
    want = _re("cycle 5 of 'snap' was never saved") + ".*" + _re("saved cycles of 'snap': [0, 1]")
    with pytest.raises(FileNotFoundError, match=want):
        learn.load_cycle("snap", 5)
    with pytest.raises(FileNotFoundError, match=_re("no cycles of 'other' are saved")):
        learn.load_cycle("other", 0)
    with pytest.raises(ValueError, match="cycle must be an int >= 0, got -1"):
        learn.load_cycle("snap", -1)


def test_load_mismatched_state_dict_names_keys(make_learner, tmp_path):
    learn = make_learner()
    learn.save("small")
    bigger = make_learner(model=nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3), nn.Linear(3, 3)))
    want = r"missing keys: '3\.weight', '3\.bias'.*shape mismatches: 0\.weight: file \(16, 6\) vs model \(32, 6\)"
    with pytest.raises(ValueError, match=want):
        bigger.load("small")
    other = make_learner(model=nn.Sequential(nn.Linear(6, 3)))
    with pytest.raises(ValueError, match=r"unexpected keys: '2\.weight', '2\.bias'"):
        other.load("small")


def test_load_missing_file(make_learner):
    learn = make_learner()
    learn.save("exists")
    with pytest.raises(FileNotFoundError, match=r"no such file: .*nope\.pt; files in .*\['exists\.pt'\]"):
        learn.load("nope")


@pytest.mark.parametrize("kwargs,exc,message", [
    (dict(model="resnet"), TypeError, "model must be a torch.nn.Module (or a tensor to optimise), got str"),
    (dict(data=[1, 2]), TypeError, "data must be a DataBunch"),
    (dict(metrics=[3]), TypeError, "metrics must be callables"),
    (dict(callbacks=["x"]), TypeError, "callbacks must be Callback instances"),
    (dict(callbacks=TerminateOnNaN()), TypeError, "callbacks must be a list of Callback instances, got a single "
                                                  "TerminateOnNaN: pass callbacks=[...]"),
    (dict(metrics=accuracy), TypeError, "metrics must be a list of callables f(preds, targets), got a single one "
                                        "(accuracy): pass metrics=[accuracy]"),
    (dict(loss_func="cross_entropy"), TypeError, "loss_func must be a callable loss(preds, targets) such as "
                                                 "nn.CrossEntropyLoss(), got 'cross_entropy'"),
    (dict(opt_func="adam"), TypeError, "opt_func must be an optimizer class such as torch.optim.Adam, got 'adam'"),
    (dict(path=3), TypeError, "path must be a folder path (a str or a pathlib.Path), got 3"),
    (dict(model_dir="a/b"), ValueError, "model_dir must be a plain file name"),
    (dict(device="gpu"), ValueError, "device must be 'cpu', 'cuda', 'cuda:N' (or a torch.device), got 'gpu'"),
    (dict(wd="0.1"), ValueError, "wd must be a finite number >= 0 (the weight decay), got '0.1'"),
    (dict(wd=-1e-4), ValueError, "wd must be a finite number >= 0 (the weight decay), got -0.0001"),
])
def test_learner_arguments(kwargs, exc, message):
    args = dict(model=small_model(), data=small_data(), progress=False, device="cpu")
    args.update(kwargs)
    with pytest.raises(exc, match=_re(message)):
        Learner(**args)


def test_learner_needs_loss_func_when_data_has_none():
    dl = DataLoader(TensorDataset(torch.zeros(4, 6), torch.zeros(4, dtype=torch.long)), batch_size=2)
    with pytest.raises(ValueError, match="loss_func is required"):
        Learner(small_model(), DataBunch(dl), device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_device_without_cuda():
    with pytest.raises(ValueError, match="CUDA is not available"):
        Learner(small_model(), small_data(), device="cuda")


@pytest.mark.parametrize("kwargs,message", [
    (dict(bs=0), "bs must be a positive int, got 0"),
    (dict(y_trn=np.zeros(3, dtype=int)), "x_trn has 10 rows but y_trn has 3"),
    (dict(x_val=np.zeros((2, 3))), "x_val and y_val go together"),
])
def test_from_arrays_arguments(kwargs, message):
    args = dict(x_trn=np.zeros((10, 3), np.float32), y_trn=np.zeros(10, dtype=int))
    args.update(kwargs)
    with pytest.raises(ValueError, match=_re(message)):
        DataBunch.from_arrays(**args)


def test_save_name_with_separator(make_learner):
    with pytest.raises(ValueError, match="name must be a plain file name"):
        make_learner().save("../escape")


# A table of bad inputs across the public API: (what is called, exception, message it must carry).
def _fit(**kw):
    def call(learn):
        args = dict(lrs=0.1, n_cycle=2, cycle_len=1)
        args.update(kw)
        return learn.fit(args.pop("lrs"), args.pop("n_cycle"), **args)
    return call


BAD_INPUTS = [
    ("checkpoint_every=0", _fit(checkpoint="c", checkpoint_every=0), ValueError,
     "checkpoint_every must be a positive int (batches), 'epoch' or 'cycle', got 0"),
    ("checkpoint_every='hourly'", _fit(checkpoint="c", checkpoint_every="hourly"), ValueError,
     "checkpoint_every must be a positive int (batches), 'epoch' or 'cycle', got 'hourly'"),
    ("checkpoint with a path", _fit(checkpoint="runs/c"), ValueError, "checkpoint must be a plain file name"),
    ("checkpoint == cycle_save_name", _fit(checkpoint="s", cycle_save_name="s"), ValueError,
     "checkpoint and cycle_save_name must differ, both are 's'"),
    ("start_cycle without cycle_len", _fit(cycle_len=None, start_cycle=1), ValueError,
     "start_cycle needs cycle_len"),
    ("start_cycle negative", _fit(start_cycle=-1), ValueError, "start_cycle must be an int in [0, n_cycle=2), got -1"),
    ("warmup not a bool", _fit(warmup="yes"), ValueError, "warmup must be True or False, got 'yes'"),
    ("wds negative", _fit(wds=-1e-4), ValueError, "wds must be finite and >= 0"),
    ("resume with a path", _fit(resume="../ckpt"), ValueError, "resume must be a plain file name"),
    ("resume of a missing file", _fit(resume="ckpt"), FileNotFoundError, "no such file:"),
    ("resume() name empty", lambda learn: learn.resume(""), ValueError, "name must be a non-empty str"),
    ("load_cycle name with a path", lambda learn: learn.load_cycle("a/b", 0), ValueError,
     "name must be a plain file name"),
    ("load_cycle cycle not an int", lambda learn: learn.load_cycle("snap", "1"), ValueError,
     "cycle must be an int >= 0, got '1'"),
    ("load name not a str", lambda learn: learn.load(3), ValueError, "name must be a non-empty str, got 3"),
    ("predict on a missing test set", lambda learn: learn.predict(is_test=True), ValueError,
     "this DataBunch has no test loader"),
    ("fit lrs a string", lambda learn: learn.fit("0.1", 1), ValueError,
     "lrs must be a float or a sequence of floats (one per param group), got '0.1'"),
    ("fit lrs a list of strings", lambda learn: learn.fit(["0.1"], 1), ValueError,
     "lrs must be a float or a sequence of floats, got ['0.1']"),
    ("lr_find start_lr a string", lambda learn: learn.lr_find(start_lr="1e-5"), ValueError,
     "start_lr must be a float or a sequence of floats (one per param group), got '1e-5'"),
    ("predict_snapshots cycles an int", lambda learn: learn.predict_snapshots("snap", cycles=1), TypeError,
     "cycles must be a list of cycle indices, got 1: pass cycles=[1]"),
    ("fit callbacks a single callback", lambda learn: learn.fit(0.1, 1, callbacks=TerminateOnNaN()), TypeError,
     "callbacks must be a list of Callback instances, got a single TerminateOnNaN: pass callbacks=[...]"),
    ("fit with every parameter frozen", lambda learn: (learn.freeze_to(1), learn.fit(0.1, 1)), ValueError,
     "the model has no trainable parameters (none, or every one has requires_grad=False)"),
]


@pytest.mark.parametrize("what,call,exc,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_public_api_bad_inputs(make_learner, tmp_path, what, call, exc, message):
    learn = make_learner()
    learn.save("before")
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()}
    w = learn.model[0].weight.detach().clone()
    with pytest.raises(exc, match=_re(message)):
        call(learn)
    assert torch.equal(learn.model[0].weight, w)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()} == files


@pytest.mark.parametrize("call,message", [
    (lambda: __import__("snapfit").Recorder(sync_every=0), "sync_every must be a positive int"),
    (lambda: __import__("snapfit").load_digits_arrays(valid_pct=1.5), "valid_pct must be in (0, 1), got 1.5"),
    (lambda: __import__("snapfit").Checkpoint("c", every=-3), "checkpoint_every must be a positive int"),
    (lambda: __import__("snapfit").simple_cnn(0), "n_classes must be >= 1, got 0"),
])
def test_constructor_bad_inputs(call, message):
    with pytest.raises(ValueError, match=_re(message)):
        call()


def test_fit_keyword_typo_names_the_argument(make_learner):
    learn = make_learner()
    with pytest.raises(TypeError, match=_re("fit() got an unexpected keyword argument 'cycle_length'; "
                                            "did you mean 'cycle_len'?")):
        learn.fit(0.1, 2, cycle_length=1)
    assert learn.opt is None and learn.sched.losses == [], "nothing ran"


def test_fit_signature_lists_every_fit_argument():
    import dataclasses
    import inspect

    from snapfit import FitArgs
    params = inspect.signature(Learner.fit).parameters
    assert [f.name for f in dataclasses.fields(FitArgs)] == [
        p for p in params if p not in ("self", "callbacks", "resume", "allow_nonfinite")]
    assert params["cycle_mult"].default == 1 and params["checkpoint_every"].default == "epoch"


def test_resuming_a_fit_schedule_checkpoint_is_refused_clearly(make_learner):
    from snapfit import Checkpoint, StepDecay
    learn = make_learner()
    learn.fit_schedule(StepDecay([0.1], 5, 2, milestones=(1,)), callbacks=[Checkpoint("c")])
    with pytest.raises(ValueError, match="checkpoint 'c' was not written by learn.fit"):
        learn.resume("c")


@pytest.mark.parametrize("kwargs,message", [
    (dict(x_trn=np.array([[0.0, np.nan, 1.0]] * 10)), "x_trn holds NaN or infinite values (first in row 0)"),
    (dict(x_val=np.full((4, 3), np.inf), y_val=np.zeros(4, dtype=int)), "x_val holds NaN or infinite values"),
    (dict(y_trn=np.full(10, -1)), "y_trn holds the label -1: class indices are ints from 0"),
    (dict(y_trn=np.full(10, 3), classes=["a", "b", "c"]), "y_trn holds the label 3, outside range(3)"),
    (dict(y_trn=np.zeros((10, 2), dtype=int)), "y_trn holds class indices and must be 1-d, got shape (10, 2)"),
    (dict(x_trn=np.array([["a", "b", "c"]] * 10)), "x_trn must hold numbers, got an array of <U1"),
    (dict(y_trn=np.array(["cat"] * 10)), "y_trn must hold numbers, got an array of <U3"),
    (dict(seed="a"), "seed must be an int >= 0, got 'a'"),
])
def test_from_arrays_checks_the_data_once(kwargs, message):
    args = dict(x_trn=np.zeros((10, 3), np.float32), y_trn=np.zeros(10, dtype=int))
    args.update(kwargs)
    with pytest.raises(ValueError, match=_re(message)):
        DataBunch.from_arrays(**args)


@pytest.mark.parametrize("kwargs,exc,message", [
    (dict(eps=-1), ValueError, "eps must be a finite number >= 0 (added to the norms' denominator), got -1"),
    (dict(trust_coef=float("inf")), ValueError, "trust_coef must be > 0 and finite (the trust coefficient), got inf"),
    (dict(trust_coef="0.01"), ValueError, "trust_coef must be > 0 and finite (the trust coefficient), got '0.01'"),
    (dict(exclude=3), TypeError, "exclude must be a function exclude(name, param) -> bool or a list of parameter "
                                 "names, got 3"),
    (dict(exclude=["0.bias", 2]), TypeError, "exclude must be a function"),
    (dict(clip="yes"), ValueError, "clip must be True or False, got 'yes'"),
])
def test_lars_arguments(kwargs, exc, message):
    with pytest.raises(exc, match=_re(message)):
        LARS(**kwargs)


def test_lars_exclude_by_name(make_learner):
    lars = LARS(exclude=["0.weight", "0.bias", "2.bias"])
    make_learner().fit(0.1, 1, callbacks=[lars])
    assert lars.names == ["2.weight"]


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory):
    return export_digits_images(tmp_path_factory.mktemp("img"), scale=2, n=40)


def test_image_data_arguments(digit_images, tmp_path):
    with pytest.raises(ValueError, match=_re("tfms must be a pair (training transforms, validation transforms)")):
        ImageClassifierData.from_paths(digit_images, tfms=None)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        ImageClassifierData.from_paths(digit_images, seed=-1)
    files = sorted((digit_images / "train").rglob("*.png"))
    rows = "".join(f"{f.relative_to(digit_images / 'train')},{f.parent.name}\n" for f in files)
    (tmp_path / "labels.csv").write_text("file,label\n" + rows)
    with pytest.raises(ValueError, match=_re(f"val_idxs covers all {len(files)} rows of")):
        ImageClassifierData.from_csv(digit_images, "train", tmp_path / "labels.csv", val_idxs=range(len(files)))


def test_an_empty_class_folder_warns(digit_images, tmp_path):
    import shutil
    root = tmp_path / "copy"
    shutil.copytree(digit_images, root)
    for f in (root / "train" / "3").iterdir():
        f.unlink()
    with pytest.warns(UserWarning, match=r"train/3 holds no images: class '3' has zero images in train"):
        data = ImageClassifierData.from_paths(root, num_workers=0)
    assert 3 not in data.trn_y.tolist() and data.classes[3] == "3"


def test_a_file_that_is_not_a_torch_file(make_learner, tmp_path):
    learn = make_learner()
    learn.save("good")
    learn.model_file("notes").write_text("these are my notes")
    with pytest.raises(DamagedFileError, match=r"notes\.pt is not a snapfit/torch file \(it starts with b'thes'\); "
                                               r"other files in .*\['good\.pt'\]"):
        learn.load("notes")
    learn.model_file("empty").write_bytes(b"")
    with pytest.raises(DamagedFileError, match=r"empty\.pt is empty"):
        learn.load("empty")


def test_loading_a_checkpoint_as_weights_says_to_resume(make_learner):
    learn = make_learner()
    learn.fit(0.1, 1, checkpoint="ckpt")
    with pytest.raises(ValueError, match=_re("is a checkpoint of a whole fit, not a weights file: continue its fit "
                                             "with learn.resume('ckpt')")):
        learn.load("ckpt")


def test_a_model_without_parameters(tmp_path):
    learn = Learner(torch.nn.Flatten(), small_data(), loss_func=torch.nn.MSELoss(), progress=False, device="cpu",
                    path=tmp_path)
    with pytest.raises(ValueError, match="the model has no parameters to train"):
        learn.fit(0.1, 1)


@pytest.mark.parametrize("metric,message", [
    (lambda p, y: "great", "metric <lambda> returned str 'great'; a metric returns one number per batch"),
    (lambda p, y: (p.argmax(1) == y).float(), "metric <lambda> returned a tensor of shape (8,); a metric returns"),
])
def test_a_metric_that_is_not_a_number_is_named(make_learner, metric, message):
    with pytest.raises(TypeError, match=_re(message)):
        make_learner(metrics=[metric]).fit(0.1, 1)
