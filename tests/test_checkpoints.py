"""Checkpoints and shipped weights: safe loading, clear errors for damaged files, full disks, interrupted
saves, stale temporaries, export names (issue 13, items 1, 6, 8, 11)."""

import errno
import os
import random

import numpy as np
import pytest
import torch

from _tiny_runs import TEST, TRAIN, tiny_config
from vit_from_scratch import checkpoints
from vit_from_scratch.checkpoints import (CheckpointError, export_weights, load_checkpoint, load_trained_model,
                                          rng_state, save_checkpoint, set_rng_state)
from vit_from_scratch.training import fit


def _fit(config=None, **kw):
    return fit(config or tiny_config(epochs=1),
               **{**dict(train_set=TRAIN, test_set=TEST, device="cpu", progress=False, log=None), **kw})


class _WritesAFile:
    """A pickle payload that would create ``marker`` when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.mark.parametrize("entry", ["load_checkpoint", "resume", "export_weights", "load_trained_model"])
def test_a_planted_pickle_is_refused_and_runs_nothing(tmp_path, entry):
    """Issue 13.1: every loader reads with weights_only=True and says why it refuses."""
    marker = tmp_path / "pwned"
    planted = tmp_path / ("run/last.pt" if entry != "load_trained_model" else "w/evil.pt")
    planted.parent.mkdir()
    torch.save({"model": {"x": torch.ones(1)}, "payload": _WritesAFile(marker)}, planted)
    (tmp_path / "w" / "evil.json").write_text('{"model": {}}') if entry == "load_trained_model" else None
    calls = {"load_checkpoint": lambda: load_checkpoint(planted),
             "resume": lambda: _fit(out_dir=planted.parent, resume=True),
             "export_weights": lambda: export_weights(planted, "x", note="", directory=tmp_path / "out"),
             "load_trained_model": lambda: load_trained_model("evil", directory=planted.parent, device="cpu")}
    with pytest.raises(CheckpointError, match="refusing to load") as info:
        calls[entry]()
    assert str(planted) in str(info.value) and "run arbitrary code" in str(info.value)
    assert not marker.exists(), "loading must not have run the planted code"
    torch.load(planted, weights_only=False)  # the danger is real: the unsafe loader runs it
    assert marker.read_text() == "ran"


def test_checkpoints_hold_only_plain_data_and_restore_every_generator(tmp_path):
    """Issue 13.1: what fit saves loads with weights_only=True; the RNG states round-trip as plain data."""
    result = _fit(out_dir=tmp_path)
    state = torch.load(result.checkpoint, weights_only=True)
    assert state["config"]["model"]["dim"] == 32 and state["classes"] == ["a", "b", "c"]
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path / "rng.pt", rng=rng_state())
    expected = random.random(), np.random.rand(), torch.rand(1)
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_the_shipped_weights_load_with_the_safe_loader():
    model, info = load_trained_model(device="cpu")
    assert info["classes"] and model.config.num_classes == len(info["classes"])


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_damaged_checkpoint_names_the_file_and_what_to_do(tmp_path, damage):
    """Issue 13.8: EOFError, zip errors and unpickling errors become one error with the path."""
    _fit(out_dir=tmp_path)
    path = tmp_path / "last.pt"
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[:len(data) // 2], "garbage": b"\x80\x02junk" * 50}[damage])
    for load in (lambda: load_checkpoint(path), lambda: _fit(out_dir=tmp_path, resume=True)):
        with pytest.raises(CheckpointError) as info:
            load()
        assert str(path) in str(info.value) and "--resume" in str(info.value), str(info.value)


@pytest.mark.parametrize("damage", ["pt", "json"])
def test_damaged_shipped_weights_name_the_file_and_say_re_export(tmp_path, damage):
    """Issue 13.8, the shipped weights' two files."""
    result = _fit(out_dir=tmp_path / "run")
    export_weights(result, "tiny", note="", directory=tmp_path / "w")
    broken = tmp_path / "w" / f"tiny.{damage}"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(CheckpointError) as info:
        load_trained_model("tiny", directory=tmp_path / "w", device="cpu")
    assert str(broken) in str(info.value) and "re-export" in str(info.value)


def test_shipped_weights_without_their_json_name_the_missing_file(tmp_path):
    """Issue 13.11: a .pt without its .json."""
    export_weights(_fit(out_dir=tmp_path / "run"), "tiny", note="", directory=tmp_path / "w")
    (tmp_path / "w" / "tiny.json").unlink()
    with pytest.raises(FileNotFoundError, match="tiny.json is missing"):
        load_trained_model("tiny", directory=tmp_path / "w", device="cpu")


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")])
def test_a_full_disk_during_a_save_says_so_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    """Issue 13.6: 'no space left', the path, and the old file intact."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, a=torch.ones(3))

    def full(obj, f, *args, **kwargs):
        open(f, "wb").write(b"partial")
        raise failure

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="no space left") as info:
        save_checkpoint(path, a=torch.zeros(3))
    assert str(path) in str(info.value) and "previous file is kept" in str(info.value)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("where, call", [("save", 1), ("replace", 1), ("replace", 2), ("save", 2),
                                         ("replace", 3), ("replace", 4)])
def test_a_run_killed_during_any_save_resumes_bit_exactly(tmp_path, monkeypatch, where, call):
    """Kill at any moment: interrupt torch.save or the rename of last.pt / history.json in epoch 1 or 2,
    then start again (resume if a checkpoint exists); the weights equal an uninterrupted run's."""
    config = tiny_config(epochs=3)
    straight = _fit(config, out_dir=tmp_path / "a")
    calls = {"save": 0, "replace": 0}
    real = {"save": torch.save, "replace": os.replace}

    def interrupt(name):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            if name == where and calls[name] == call:
                raise KeyboardInterrupt
            return real[name](*args, **kwargs)
        return wrapped

    with monkeypatch.context() as m:
        m.setattr(torch, "save", interrupt("save"))
        m.setattr(checkpoints.os, "replace", interrupt("replace"))
        with pytest.raises(KeyboardInterrupt):
            _fit(config, out_dir=tmp_path / "b")
    out = tmp_path / "b"
    assert not (out / "last.pt").exists() or load_checkpoint(out / "last.pt")["epoch"] >= 1
    resumed = _fit(config, out_dir=out, resume=(out / "last.pt").exists())
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), f"{k} differs after the interruption"
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]


def test_stale_temporaries_of_a_crash_are_removed_at_the_next_start(tmp_path):
    """Issue 13.11: ``.last.pt.tmp-PID`` left by a killed process does not pile up."""
    _fit(out_dir=tmp_path)
    stale = [tmp_path / ".last.pt.tmp-99999", tmp_path / ".history.json.tmp-12345"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    _fit(tiny_config(epochs=2), out_dir=tmp_path, resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json", "last.pt"]


def test_export_takes_a_plain_name_and_replaces_weights_only_when_asked(tmp_path):
    """Issue 13.11: no path separators in the name; existing (e.g. shipped) weights are kept by default."""
    result = _fit(out_dir=tmp_path / "run")
    for bad in ("../escape", "sub/name", "", ".hidden", "a\\b"):
        with pytest.raises(ValueError, match="plain name"):
            export_weights(result, bad, note="", directory=tmp_path / "w")
    export_weights(result, "tiny", note="first", directory=tmp_path / "w")
    with pytest.raises(FileExistsError, match="--overwrite-export"):
        export_weights(result, "tiny", note="second", directory=tmp_path / "w")
    assert load_trained_model("tiny", directory=tmp_path / "w", device="cpu")[1]["note"] == "first"
    export_weights(result, "tiny", note="second", directory=tmp_path / "w", overwrite=True)
    assert load_trained_model("tiny", directory=tmp_path / "w", device="cpu")[1]["note"] == "second"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny run's weights exported as ``tiny.pt`` and ``tiny.json``."""
    root = tmp_path_factory.mktemp("exported")
    export_weights(_fit(out_dir=root / "run"), "tiny", note="", directory=root / "w")
    return root / "w"


def _copy_of(exported, tmp_path):
    import shutil

    return shutil.copytree(exported, tmp_path / "w")


def _edit_json(folder, **changes):
    import json

    meta = folder / "tiny.json"
    info = json.loads(meta.read_text())
    for key, value in changes.items():
        if key in info["model"]:
            info["model"][key] = value
        elif value is None:
            info.pop(key, None)
        else:
            info[key] = value
    meta.write_text(json.dumps(info, indent=1))


@pytest.mark.parametrize("change", ["64 zero bytes in the .pt", "num_heads", "norm_eps", "classes", "mean", "std"])
def test_exported_weights_are_refused_when_the_file_or_its_description_changed(exported, tmp_path, change):
    """Issue 28.6: the JSON holds the SHA-256 of the .pt and of its own model, classes, mean and std;
    load_trained_model verifies both, so damage that still unpickles, or a JSON edited by hand, is refused."""
    folder = _copy_of(exported, tmp_path)
    if change == "64 zero bytes in the .pt":
        weights = folder / "tiny.pt"
        data = bytearray(weights.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(64)
        weights.write_bytes(bytes(data))
        torch.load(weights, weights_only=True)  # the damage does not stop the unpickler
        expected, named = "SHA-256", weights
    else:
        edits = {"num_heads": 4, "norm_eps": 1e-5, "classes": ["a", "b", "x"], "mean": [0.5, 0.5, 0.5],
                 "std": [0.2, 0.2, 0.2]}  # each fits the tensors' shapes: only the hash can tell
        _edit_json(folder, **{change: edits[change]})
        expected, named = "changed after the export", folder / "tiny.json"
    with pytest.raises(CheckpointError, match=expected) as info:
        load_trained_model("tiny", directory=folder, device="cpu")
    assert str(named) in str(info.value) and "re-export" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("change, expected", [
    (dict(classes=["a", "b"]), "2 class names for a head of 3"),
    (dict(classes=["a", "a", "b"]), "distinct"),
    (dict(mean=[0.5, 0.5]), "mean must be 3 numbers"),
    (dict(std=[0.2, 0.0, 0.2]), "std must be 3 numbers"),
    (dict(mean=[0.5, float("nan"), 0.5]), "mean must be 3 numbers"),
    (dict(dim=64), "do not fit the model"),
])
def test_a_description_that_cannot_match_the_weights_is_refused_even_without_hashes(exported, tmp_path, change,
                                                                                     expected):
    """Issue 28.6: what can be checked without the hashes (weights exported before them) is checked: the
    tensors' shapes against the config, the class names against the head, mean and std for plausibility."""
    folder = _copy_of(exported, tmp_path)
    _edit_json(folder, sha256=None, fields_sha256=None)
    load_trained_model("tiny", directory=folder, device="cpu")  # an export without hashes still loads
    _edit_json(folder, **change)
    with pytest.raises(CheckpointError, match=expected) as info:
        load_trained_model("tiny", directory=folder, device="cpu")
    assert "re-export" in str(info.value) and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize("name", ["cifar10_vit", "cifar10_vit_seed1"] + [f"cifar10_mae_16px_seed{k}" for k in range(3)])
def test_the_shipped_weights_carry_their_hashes_and_match_them(name):
    """Issue 28.6: the shipped JSON files hold both SHA-256s, and the shipped files pass the check."""
    _, info = load_trained_model(name, device="cpu")
    assert len(info["sha256"]) == 64 and len(info["fields_sha256"]) == 64


def test_export_refuses_a_checkpoint_whose_classes_do_not_fit_its_head(exported, tmp_path):
    """Issue 28.6: export checks what loading checks, so it never writes weights that cannot load."""
    state = load_checkpoint(exported.parent / "run" / "last.pt")
    state["classes"] = ["a", "b"]
    with pytest.raises(CheckpointError, match="2 class names for a head of 3"):
        export_weights(state, "bad", note="", directory=tmp_path)
    assert not list(tmp_path.iterdir())
