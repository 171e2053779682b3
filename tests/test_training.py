"""Training: schedule, parameter groups, exact resume, the non-finite guard, config checks, the CLI."""

import json
import math
from pathlib import Path
from dataclasses import replace

import pytest
import torch

from _tiny_runs import TEST, TINY_MODEL, TRAIN, tiny_config, write_image_folder
from vit_from_scratch import cli
from vit_from_scratch.data import ImageSet, default_data_dir, find_image_folder, load_image_folder
from vit_from_scratch.loaders import make_loader
from vit_from_scratch.model import VisionTransformer
from vit_from_scratch.checkpoints import export_weights, load_checkpoint, load_trained_model, save_checkpoint
from vit_from_scratch.recipe import TrainConfig, build_optimizer, param_groups, preset, warmup_cosine
from vit_from_scratch.training import NonFiniteLossError, evaluate, fit

_config = tiny_config


def test_schedule_warmup_peak_and_end():
    kw = dict(total_steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-5)
    assert warmup_cosine(0, **kw) == pytest.approx(1e-4)
    assert warmup_cosine(9, **kw) == pytest.approx(1e-3)  # the last warmup step reaches the peak
    assert warmup_cosine(10, **kw) == pytest.approx(1e-3)  # cosine starts at the peak
    assert warmup_cosine(55, **kw) == pytest.approx((1e-3 + 1e-5) / 2)  # half way down
    assert warmup_cosine(100, **kw) == pytest.approx(1e-5)
    values = [warmup_cosine(s, **kw) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:])), "cosine part must not increase"


def test_scheduler_follows_the_formula_per_step():
    model = VisionTransformer(_config().vit_config())
    config = _config(epochs=3, warmup_epochs=1)
    optimizer, scheduler = build_optimizer(model, config, steps_per_epoch=5)
    lrs = []
    for _ in range(15):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [warmup_cosine(s, total_steps=15, warmup_steps=5, lr=config.lr, min_lr=config.min_lr) for s in range(15)]
    assert lrs == pytest.approx(expected)
    assert lrs[4] == pytest.approx(config.lr)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(config.min_lr)


def test_param_groups_no_decay_on_norms_biases_positions_class_token():
    model = VisionTransformer(_config().vit_config())
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {"pos_embed", "cls_token", "norm.weight", "norm.bias", "head.bias", "blocks.0.attn.qkv.bias"} <= kept
    assert {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "head.weight"} <= decayed
    assert decayed.isdisjoint(kept) and len(decayed | kept) == len(list(model.parameters()))


def test_training_lowers_the_loss_and_writes_history(tmp_path):
    result = fit(_config(epochs=3), train_set=TRAIN, test_set=TEST, out_dir=tmp_path, device="cpu", progress=False,
                 log=None)
    h = result.history
    assert [r["epoch"] for r in h] == [1, 2, 3]
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["history"] == h and saved["classes"] == ["a", "b", "c"]
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "images_per_s", "epoch_time_s"):
        assert key in h[0]
    state = load_checkpoint(tmp_path / "last.pt")
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "rng", "config", "loader"} <= set(state)


@pytest.mark.parametrize("mix", [{}, dict(mixup=0.8, cutmix=1.0, model={**TINY_MODEL, "drop_path": 0.1})])
def test_two_epochs_equal_one_plus_resume_plus_one(tmp_path, mix):
    config = _config(**mix)
    straight = fit(config, train_set=TRAIN, test_set=TEST, out_dir=tmp_path / "a", device="cpu", progress=False,
                   log=None)
    fit(config, train_set=TRAIN, test_set=TEST, out_dir=tmp_path / "b", device="cpu", progress=False, log=None,
        stop_after_epochs=1)
    torch.manual_seed(12345)  # whatever happens between the two calls must not matter
    resumed = fit(config, train_set=TRAIN, test_set=TEST, out_dir=tmp_path / "b", device="cpu", progress=False,
                  log=None, resume=True)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]


def test_resume_refuses_another_configuration(tmp_path):
    fit(_config(epochs=1), train_set=TRAIN, test_set=TEST, out_dir=tmp_path, device="cpu", progress=False, log=None)
    other = _config(epochs=1, model={**TINY_MODEL, "dim": 64}, lr=1e-3)
    with pytest.raises(ValueError) as info:
        fit(other, train_set=TRAIN, test_set=TEST, out_dir=tmp_path, device="cpu", progress=False, log=None,
            resume=True)
    assert "another configuration" in str(info.value) and "lr:" in str(info.value) and "model.dim: checkpoint 32, now 64" in str(info.value)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = _config(epochs=3)
    fit(config, train_set=TRAIN, test_set=TEST, out_dir=tmp_path, device="cpu", progress=False, log=None,
        stop_after_epochs=1)
    good = (tmp_path / "last.pt").read_bytes()
    bad = ImageSet(TRAIN.images, TRAIN.labels, TRAIN.classes)
    original = VisionTransformer.forward
    try:
        VisionTransformer.forward = lambda self, x: original(self, x) * float("nan")
        with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
            fit(config, train_set=bad, test_set=TEST, out_dir=tmp_path, device="cpu", progress=False, log=None,
                resume=True)
    finally:
        VisionTransformer.forward = original
    assert (tmp_path / "last.pt").read_bytes() == good
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left behind"


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, a=torch.ones(3))

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, a=Boom())
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(3)), "a failed write must leave the old file intact"
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_checkpoint_bytes_reach_the_disk_before_the_rename_and_the_rename_after(tmp_path, monkeypatch):
    """A power cut after a rename whose file was never flushed can leave an empty last.pt: atomic_write
    fsyncs the temporary file before os.replace and the folder after it."""
    import os

    from vit_from_scratch import checkpoints

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(checkpoints.os, "fsync", lambda fd: (events.append(("fsync", os.fstat(fd).st_ino)),
                                                             real_fsync(fd))[1])
    monkeypatch.setattr(checkpoints.os, "replace", lambda a, b: (events.append(("replace", str(b))),
                                                                  real_replace(a, b))[1])
    path = tmp_path / "ck.pt"
    save_checkpoint(path, a=torch.ones(3))
    assert events == [("fsync", path.stat().st_ino), ("replace", str(path)), ("fsync", tmp_path.stat().st_ino)]
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(3))


def test_class_count_mismatch_is_explained():
    with pytest.raises(ValueError, match="num_classes"):
        fit(_config(model={**TINY_MODEL, "num_classes": 10}), train_set=TRAIN, test_set=TEST, device="cpu",
            progress=False, log=None)


def test_fit_refuses_a_test_set_whose_classes_differ_from_the_training_set():
    renamed = ImageSet(TEST.images, TEST.labels, ("a", "b", "z"), "renamed")
    with pytest.raises(ValueError, match="missing c; not in the training split: z"):
        fit(_config(), train_set=TRAIN, test_set=renamed, device="cpu", progress=False, log=None)


def test_config_errors_and_presets():
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="unknown preset"):
        preset("imagenet")
    with pytest.raises(ValueError, match="low_res_epochs=0"):  # the chapter's preset starts with 10 epochs at 16 px
        preset("cifar10-cpu", epochs=3)
    config = preset("cifar10-cpu", epochs=3, low_res_epochs=0, model={"depth": 2})
    assert config.epochs == 3 and config.model.depth == 2 and config.model.dim == preset("cifar10-cpu").model.dim


@pytest.mark.parametrize("field, value, message", [
    ("grad_clip", float("nan"), "grad_clip must be a finite number"),
    ("grad_clip", -1.0, "grad_clip must be 0 or more"),
    ("mixup", -1.0, "mixup must be 0 or more"),
    ("mixup", float("nan"), "mixup must be a finite number"),
    ("cutmix", -1.0, "cutmix must be 0 or more"),
    ("cutmix", float("nan"), "cutmix must be a finite number"),
    ("warmup_epochs", -1.0, "warmup_epochs must be 0 or more"),
    ("warmup_epochs", float("inf"), "warmup_epochs must be a finite number"),
    ("padding", 1000, "padding must be from 0 to 15"),
    ("padding", -1, "padding must be from 0 to 15"),
    ("epochs", 99999999999999999999, "epochs must be from 1 to 1000000"),
    ("lr", float("nan"), "lr must be a finite number"),
    ("min_lr", float("nan"), "min_lr must be a finite number"),
    ("weight_decay", -0.1, "weight_decay must be 0 or more"),
    ("betas", (float("nan"), 0.9), "betas must be two numbers in"),
    ("seed", 2**64, "seed must be from 0 to"),
    ("epochs", "3", "epochs must be a whole number"),
    ("flip", "no", "flip must be True or False"),
])
def test_impossible_numbers_are_refused_naming_the_field(field, value, message):
    """Issue 28.9, 28.13: NaN, infinity, negative or absurd values, and values of the wrong type."""
    with pytest.raises((TypeError, ValueError), match=message.replace("(", r"\(")):
        _config(**{field: value})


def test_export_and_load_trained_model_round_trip(tmp_path):
    result = fit(_config(epochs=1), train_set=TRAIN, test_set=TEST, out_dir=tmp_path / "run", device="cpu",
                 progress=False, log=None)
    path = export_weights(result.checkpoint, "tiny", note="unit test", directory=tmp_path / "w")
    model, info = load_trained_model("tiny", directory=tmp_path / "w", device="cpu")
    assert path.exists() and info["note"] == "unit test" and info["classes"] == ["a", "b", "c"]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = result.model.eval()(x)
        torch.testing.assert_close(model(x), expected, atol=2e-2, rtol=2e-2)  # float16 storage
    with pytest.raises(FileNotFoundError, match="06_training"):
        load_trained_model("missing", directory=tmp_path / "w")


def test_shipped_weights_reproduce_the_test_accuracy_their_run_reported():
    """The weights in the package, evaluated on the whole CIFAR-10 test set (the JPEG copy they were trained
    on), give the final test accuracy in their history; float16 storage may move it by a few images."""
    folder = find_image_folder(default_data_dir())
    if folder is None:
        pytest.skip("CIFAR-10 is not in VIT_DATA_DIR")
    model, info = load_trained_model(device="cpu")
    test_set = load_image_folder(folder / "test")
    loader = make_loader(test_set, 500, train=False, mean=info["mean"], std=info["std"], device=torch.device("cpu"))
    result = evaluate(model, loader)
    assert result["count"] == 10_000 and info["classes"] == list(test_set.classes)
    assert abs(result["accuracy"] - info["history"][-1]["test_accuracy"]) <= 0.005, (result, info["history"][-1])


def test_cli_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for f in TrainConfig.__dataclass_fields__:
        assert "--" + f.replace("_", "-") in text


def test_cli_tiny_run_end_to_end(tmp_path, capsys):
    write_image_folder(tmp_path / "data")  # an image-folder tree the test writes itself, 16 px, 3 classes
    args = ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--device", "cpu",
            "--model", json.dumps(TINY_MODEL), "--epochs", "2", "--batch-size", "16", "--no-progress", "--low-res-epochs", "1", "--low-res-size", "8"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "epoch   2/2" in out and "done: validation accuracy" in out and "moves from 8 to 16 px" in out
    assert "; test accuracy" in out and (tmp_path / "run" / "test.json").exists()  # read once, at 16 px
    assert cli.main(args + ["--resume"]) == 0  # already finished: resumes and does nothing more
    assert cli.main(args + ["--resume", "--lr", "0.5"]) == 1
    assert "another configuration" in capsys.readouterr().err
    assert math.isfinite(json.loads((tmp_path / "run" / "history.json").read_text())["history"][-1]["test_loss"])


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_paths_train(amp):
    """bf16 autocast, and fp16 with its gradient scaler (the Colab T4 path), both run and learn on CPU."""
    result = fit(_config(epochs=2, amp=amp), train_set=TRAIN, test_set=TEST, device="cpu", progress=False, log=None)
    h = result.history
    assert all(math.isfinite(r["train_loss"]) for r in h) and h[-1]["train_loss"] < h[0]["train_loss"]


def test_gradient_checkpointing_gives_the_same_weights():
    plain = fit(_config(epochs=1), train_set=TRAIN, test_set=TEST, device="cpu", progress=False, log=None)
    saved = fit(_config(epochs=1, grad_checkpointing=True), train_set=TRAIN, test_set=TEST, device="cpu",
                progress=False, log=None)
    assert saved.model.grad_checkpointing
    for (k, a), b in zip(plain.model.state_dict().items(), saved.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_max_steps_stops_early_but_keeps_the_schedule():
    result = fit(_config(epochs=3, max_steps=5), train_set=TRAIN, test_set=TEST, device="cpu", progress=False,
                 log=None)
    assert result.history[-1]["step"] == 5 and len(result.history) == 1


def test_fit_trains_a_given_model_with_a_given_loss():
    class TwoHeads(torch.nn.Module):  # a CNN-like module with a tuple output in training mode
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
            self.a, self.b = torch.nn.Linear(8, 3), torch.nn.Linear(8, 3)

        def forward(self, x):
            h = self.body(x)
            return (self.a(h), self.b(h)) if self.training else (self.a(h) + self.b(h)) / 2

    calls = []

    def loss_fn(output, targets, images):
        calls.append(images.shape)
        return sum(torch.nn.functional.cross_entropy(o, targets) for o in output) / 2

    model = TwoHeads()
    result = fit(_config(epochs=3), train_set=TRAIN, test_set=TEST, device="cpu", progress=False, log=None,
                 model=model, loss_fn=loss_fn)
    assert result.model is model and len(calls) == 3 * len(TRAIN.labels) // 16
    assert calls[0] == (16, 3, 16, 16)
    h = result.history
    assert h[-1]["train_loss"] < h[0]["train_loss"] and 0 <= h[-1]["test_accuracy"] <= 1


def _progressive(**kw):
    return _config(**{**dict(epochs=3, low_res_epochs=1, low_res_size=8, full_res_lr=1e-3,
                             full_res_warmup_epochs=0.25), **kw})


def test_progressive_resizing_phases_schedules_and_sizes():
    config = _progressive()
    low, full = config.phases()
    assert (low.image_size, low.first_epoch, low.end_epoch, low.lr, low.warmup_epochs, low.padding) == \
        (8, 0, 1, 3e-3, 0.5, 2)  # the crop padding shrinks with the image
    assert (full.image_size, full.first_epoch, full.end_epoch, full.lr, full.warmup_epochs, full.padding) == \
        (16, 1, 3, 1e-3, 0.25, 4)
    assert [p.image_size for p in _config().phases()] == [16]
    result = fit(config, train_set=TRAIN, test_set=TEST, device="cpu", progress=False, log=None)
    h = result.history
    assert [r["image_size"] for r in h] == [8, 16, 16]
    assert result.model.config.image_size == 16 and result.model.pos_embed.shape[1] == 1 + 16
    steps = len(TRAIN) // config.batch_size
    # each phase has its own warmup + cosine: the first ends at min_lr, the second restarts to full_res_lr
    assert h[0]["lr"] == pytest.approx(config.min_lr)
    expected = warmup_cosine(steps, total_steps=2 * steps, warmup_steps=round(0.25 * steps), lr=1e-3,
                             min_lr=config.min_lr)
    assert h[1]["lr"] == pytest.approx(expected) and expected > 10 * config.min_lr
    assert h[2]["lr"] == pytest.approx(config.min_lr)


@pytest.mark.parametrize("first", [1, 2])
def test_progressive_resizing_resumes_exactly_across_the_change_of_size(tmp_path, first):
    config = _progressive()
    straight = fit(config, train_set=TRAIN, test_set=TEST, out_dir=tmp_path / "a", device="cpu", progress=False,
                   log=None)
    fit(config, train_set=TRAIN, test_set=TEST, out_dir=tmp_path / "b", device="cpu", progress=False, log=None,
        stop_after_epochs=first)
    saved = load_checkpoint(tmp_path / "b" / "last.pt")
    assert saved["model"]["pos_embed"].shape[1] == 1 + 16, "the checkpoint after epoch 1 is already at full size"
    torch.manual_seed(999)
    resumed = fit(config, train_set=TRAIN, test_set=TEST, out_dir=tmp_path / "b", device="cpu", progress=False,
                  log=None, resume=True)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), f"{k} differs after resume"
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]


def test_progressive_resizing_config_errors():
    with pytest.raises(ValueError, match="fewer than epochs"):
        _progressive(low_res_epochs=3)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        _progressive(low_res_size=10)
    with pytest.raises(ValueError, match="below the image size"):
        _progressive(low_res_size=16)
    with pytest.raises(ValueError, match="low_res_epochs must be"):
        _progressive(low_res_epochs=-1)
    with pytest.raises(ValueError, match="full_res_lr"):
        _progressive(full_res_lr=1e-7)
    cnn = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    with pytest.raises(TypeError, match="low_res_epochs=0"):
        fit(_progressive(), train_set=TRAIN, test_set=TEST, device="cpu", progress=False, log=None, model=cnn)
    chapter = preset("cifar10-cpu")
    assert [(p.image_size, p.epochs) for p in chapter.phases()] == [(16, 10), (32, 7)]
    assert [p.image_size for p in preset("cifar10-cpu", low_res_epochs=0).phases()] == [32]


# --------------------------------------------------------------------------- fault tolerance (issue 13)


def _quiet(config, **kw):
    return fit(config, **{**dict(train_set=TRAIN, test_set=TEST, device="cpu", progress=False, log=None), **kw})


def test_a_new_run_refuses_a_folder_that_holds_a_run(tmp_path):
    """Issue 13.3: without resume or overwrite an old run is never overwritten."""
    first = _quiet(_config(epochs=1), out_dir=tmp_path)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a run") as info:
        _quiet(_config(epochs=1, seed=1), out_dir=tmp_path)
    assert "--resume" in str(info.value) and "--overwrite" in str(info.value)
    assert (tmp_path / "last.pt").read_bytes() == before
    again = _quiet(_config(epochs=1, seed=1), out_dir=tmp_path, overwrite=True)
    assert load_checkpoint(tmp_path / "last.pt")["config"]["seed"] == 1 and again.history != first.history
    with pytest.raises(ValueError, match="choose one"):
        _quiet(_config(epochs=1), out_dir=tmp_path, overwrite=True, resume=True)


@pytest.mark.parametrize("kw, numbers", [(dict(batch_size=128), ["96 training images", "batch of 128"]),
                                         (dict(train_subset=10), ["10 training images", "--train-subset 10 of 96",
                                                                  "batch of 16"])])
def test_a_run_that_would_take_no_step_is_refused(tmp_path, kw, numbers):
    """Issue 13.5: a batch larger than the training set or a subset smaller than a batch."""
    with pytest.raises(ValueError, match="no optimiser step would run") as info:
        _quiet(_config(**kw), out_dir=tmp_path)
    assert all(n in str(info.value) for n in numbers), str(info.value)
    assert not (tmp_path / "last.pt").exists()
    for bad in (0, -5):
        with pytest.raises(ValueError, match="train_subset must be a positive"):
            _config(train_subset=bad)


def test_an_output_folder_that_cannot_take_checkpoints_is_found_before_training(tmp_path, monkeypatch):
    """Issue 13.6: a file, an unwritable folder, a disk without room: refused before the first step."""
    from collections import namedtuple

    from vit_from_scratch import checkpoints

    epochs = []
    file = tmp_path / "a-file"
    file.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="is a file"):
        _quiet(_config(), out_dir=file, log=epochs.append)

    def refuse(self, data):
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as m:
        m.setattr(checkpoints.Path, "write_bytes", refuse)
        with pytest.raises(OSError, match="cannot write into .*locked"):
            _quiet(_config(), out_dir=tmp_path / "locked", log=epochs.append)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OSError, match="no space left for checkpoints in .*full"):
        _quiet(_config(), out_dir=tmp_path / "full", log=epochs.append)
    assert epochs == [], "nothing may train before the output folder is known to work"
    assert not list((tmp_path / "full").iterdir())


def test_nan_stop_says_when_no_checkpoint_was_written_yet(tmp_path, monkeypatch):
    """Issue 13.7: the NaN stop in the first epoch names no checkpoint that does not exist."""
    original = VisionTransformer.forward
    monkeypatch.setattr(VisionTransformer, "forward", lambda self, x: original(self, x) * float("nan"))
    with pytest.raises(NonFiniteLossError) as info:
        _quiet(_config(), out_dir=tmp_path)
    assert "No checkpoint was written yet" in str(info.value) and "kept at" not in str(info.value)
    assert not (tmp_path / "last.pt").exists()


def test_resume_with_a_per_image_policy_in_worker_processes_is_exact(tmp_path):
    """Issue 13.4: TrivialAugment in DataLoader workers; stopped after epoch 1 and resumed equals straight."""
    config = _config(policy="trivialaugment", num_workers=2)
    straight = _quiet(config, out_dir=tmp_path / "a")
    _quiet(config, out_dir=tmp_path / "b", stop_after_epochs=1)
    torch.manual_seed(4321)
    resumed = _quiet(config, out_dir=tmp_path / "b", resume=True)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), f"{k} differs after resume"
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]


# --------------------------------------------------------------------------- fault tolerance (issue 28)


@pytest.mark.parametrize("stop", [3, 8])  # inside the first epoch and inside the second (6 steps each)
def test_max_steps_then_resume_gives_the_uninterrupted_run_bit_for_bit(tmp_path, stop):
    """Issue 28.2: a run stopped by max_steps inside an epoch resumes inside that epoch, not at the next."""
    config = _config(mixup=0.8, cutmix=1.0, model={**TINY_MODEL, "drop_path": 0.1})
    straight = _quiet(config, out_dir=tmp_path / "a")
    stopped = _quiet(replace(config, max_steps=stop), out_dir=tmp_path / "b")
    assert stopped.history[-1]["step"] == stop and stopped.history[-1]["partial"]
    torch.manual_seed(12345)  # whatever happens between the two calls must not matter
    resumed = _quiet(config, out_dir=tmp_path / "b", resume=True)
    assert [r["step"] for r in resumed.history] == [r["step"] for r in straight.history] == [6, 12]
    assert resumed.history[-1]["lr"] == straight.history[-1]["lr"] == pytest.approx(config.min_lr)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), f"{k} differs after resume"
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]
    saved = load_checkpoint(tmp_path / "b" / "last.pt")
    assert saved["step"] == 12 and "partial" not in saved and [r["epoch"] for r in saved["history"]] == [1, 2]


def test_resume_refuses_other_training_data(tmp_path):
    """Issue 28.4: another --data-dir would change the normalisation (and the data) in the middle of a run."""
    config = _config()
    _quiet(config, out_dir=tmp_path, stop_after_epochs=1)
    before = (tmp_path / "last.pt").read_bytes()
    other = ImageSet(TRAIN.images // 2, TRAIN.labels, TRAIN.classes, "darker")
    with pytest.raises(ValueError, match="other training data") as info:
        _quiet(config, out_dir=tmp_path, resume=True, train_set=other)
    assert "mean" in str(info.value) and "--data-dir" in str(info.value)
    assert (tmp_path / "last.pt").read_bytes() == before
    copy = ImageSet(TRAIN.images.clone(), TRAIN.labels.clone(), TRAIN.classes, "a copy elsewhere")
    assert [r["epoch"] for r in _quiet(config, out_dir=tmp_path, resume=True, train_set=copy).history] == [1, 2]


def test_the_room_check_counts_the_old_and_the_new_checkpoint(tmp_path, monkeypatch):
    """Issue 28.14: the atomic replace holds the old checkpoint and the new one at once."""
    from collections import namedtuple

    from vit_from_scratch import checkpoints

    size = checkpoints.checkpoint_bytes(VisionTransformer(_config().vit_config()))
    usage = namedtuple("usage", "total used free")
    free = [int(1.5 * size)]
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda p: usage(10**12, 0, free[0]))
    epochs = []
    with pytest.raises(OSError, match="no space left for checkpoints") as info:
        _quiet(_config(), out_dir=tmp_path / "run", log=epochs.append)
    assert "two" in str(info.value) and epochs == []
    free[0] = 2 * size
    _quiet(_config(), out_dir=tmp_path / "run", stop_after_epochs=1)
    held = (tmp_path / "run" / "last.pt").stat().st_size  # a resume replaces a file that already holds its room
    free[0] = 2 * size - held - 1
    with pytest.raises(OSError, match="no space left for checkpoints"):
        _quiet(_config(), out_dir=tmp_path / "run", resume=True)
    free[0] = 2 * size - held
    assert len(_quiet(_config(), out_dir=tmp_path / "run", resume=True).history) == 2


def test_the_committed_seed_1_run_is_still_the_cpu_preset_with_seed_1():
    """Chapter 6 sets the committed seed-1 run (tests/benchmarks/results) beside its own seed-0 run and asserts
    that both ran one recipe: the stored config, read with today's defaults for the fields added since (random
    erasing and repeated augmentation, both off), must be the preset's with seed 1."""
    path = Path(__file__).parent / "benchmarks" / "results" / "cifar10-cpu-seed1-cpu-2core.json"
    stored = json.loads(path.read_text())["config"]
    assert TrainConfig.from_dict(stored) == preset("cifar10-cpu", seed=1)
