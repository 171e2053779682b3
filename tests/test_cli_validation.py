"""The command line chooses on validation and reads the test set once (issue 27, item 5): by default it trains
on the training images less the book's validation split, evaluates on that split after every epoch (the history
says so), and evaluates the test set once, after the schedule's last epoch, into OUT/test.json."""

import json

import pytest
import torch

from _tiny_runs import TEST, TINY_MODEL, TRAIN, tiny_config, write_image_folder
from vit_from_scratch import cli, evaluation, training
from vit_from_scratch.data import ImageSet, load_cifar10, validation_split
from vit_from_scratch.evaluation import standard_validation_split
from vit_from_scratch.matched import accuracy_on


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture
def seen(monkeypatch):
    """What the command line gave ``fit`` and the number of images of every evaluation ``fit`` made."""
    record = {"fit": [], "evaluated": [], "result": None}
    real_fit, real_evaluate = cli.fit, evaluation.evaluate

    def fit(*args, **kwargs):
        record["fit"].append(kwargs)
        record["result"] = real_fit(*args, **kwargs)
        return record["result"]

    def evaluate(*args, **kwargs):
        numbers = real_evaluate(*args, **kwargs)
        record["evaluated"].append(numbers["count"])
        return numbers

    monkeypatch.setattr(cli, "fit", fit)
    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    return record


def _args(data_dir, out, *more):
    return ["--data-dir", str(data_dir), "--out", str(out), "--device", "cpu", "--model", json.dumps(TINY_MODEL),
            "--epochs", "2", "--low-res-epochs", "0", "--batch-size", "16", "--no-progress", *more]


def _ids(data: ImageSet) -> set[bytes]:
    return {image.numpy().tobytes() for image in data.images}


def _done(out: str) -> str:
    (line,) = [line for line in out.splitlines() if line.startswith("done:")]
    return line


def test_the_default_run_trains_without_the_validation_split_and_evaluates_on_it(tmp_path, data_dir, capsys, seen):
    out = tmp_path / "run"
    assert cli.main(_args(data_dir, out)) == 0
    stdout = capsys.readouterr().out
    (given,) = seen["fit"]
    train_full, test_full = load_cifar10(data_dir)
    ref_train, ref_val = validation_split(train_full, 10, seed=0)  # a tenth of the 96 fake training images
    assert given["evaluated_on"] == "validation"
    assert _ids(given["train_set"]) == _ids(ref_train) and _ids(given["test_set"]) == _ids(ref_val)
    assert not _ids(given["train_set"]) & _ids(given["test_set"]), "a validation image is trained on"
    assert _ids(given["final_test_set"]) == _ids(test_full)
    assert seen["evaluated"] == [10, 10, 30], "validation after each of 2 epochs, then the test set once"
    history = json.loads((out / "history.json").read_text())
    assert history["evaluated_on"] == "validation"
    assert [r["evaluated_on"] for r in history["history"]] == ["validation", "validation"]
    assert "| val loss" in stdout and "| test loss" not in stdout
    test = json.loads((out / "test.json").read_text())
    result = seen["result"]
    assert result.final_test == test
    assert (test["evaluated_on"], test["images"], test["epoch"]) == ("test", 30, 2)
    assert test["trained_on"]["images"] == 86 and test["monitored_on"] == {"set": "validation", "images": 10}
    expected = accuracy_on(result.model, test_full, train_set=given["train_set"])
    assert test["accuracy"] == pytest.approx(expected, abs=1e-9)
    assert _done(stdout) == (f"done: validation accuracy {history['history'][-1]['test_accuracy']:.4f} after 2 "
                             f"epochs; test accuracy {test['accuracy']:.4f} (read once, at the end); "
                             f"checkpoint {out / 'last.pt'}")


def test_a_resume_of_the_finished_run_does_not_read_the_test_set_again(tmp_path, data_dir, capsys, seen):
    out = tmp_path / "run"
    assert cli.main(_args(data_dir, out)) == 0
    written = (out / "test.json").read_bytes()
    done = _done(capsys.readouterr().out)
    seen["evaluated"].clear()
    assert cli.main(_args(data_dir, out, "--resume", "--max-steps", "0")) == 0
    stdout = capsys.readouterr().out
    assert seen["evaluated"] == [] and (out / "test.json").read_bytes() == written
    assert "the test set is not read again" in stdout and _done(stdout) == done
    (out / "test.json").unlink()  # as if killed between the last checkpoint and test.json: read it now, once
    assert cli.main(_args(data_dir, out, "--resume", "--max-steps", "0")) == 0
    again, first = json.loads((out / "test.json").read_text()), json.loads(written)
    same = ("accuracy", "loss", "images", "epoch", "step", "trained_on")
    assert seen["evaluated"] == [30] and [again[k] for k in same] == [first[k] for k in same]
    assert _done(capsys.readouterr().out) == done
    weights = tmp_path / "weights"  # an export carries the test numbers beside the validation history
    assert cli.main(_args(data_dir, out, "--resume", "--max-steps", "0", "--export", "tiny", "--export-dir",
                          str(weights))) == 0
    info = json.loads((weights / "tiny.json").read_text())
    assert info["final_test"]["accuracy"] == first["accuracy"] and info["history"][-1]["evaluated_on"] == "validation"
    assert cli.main(_args(data_dir, out, "--overwrite", "--max-steps", "0")) == 0
    assert not (out / "test.json").exists()  # --overwrite starts over: the old run's test numbers go with it


@pytest.mark.parametrize("max_steps", [5, 7])  # the end of epoch 1 of 2 (86 // 16 = 5 steps), inside epoch 2
def test_a_max_steps_stop_inside_the_schedule_reads_no_test_set(tmp_path, data_dir, capsys, seen, max_steps):
    out = tmp_path / "run"
    assert cli.main(_args(data_dir, out, "--max-steps", str(max_steps))) == 0
    stdout = capsys.readouterr().out
    assert not (out / "test.json").exists() and 30 not in seen["evaluated"]
    assert "test accuracy" not in _done(stdout) and "the test set is read once" in _done(stdout)
    assert cli.main(_args(data_dir, out, "--resume")) == 0  # finishes the schedule: now, once
    assert seen["evaluated"].count(30) == 1 and json.loads((out / "test.json").read_text())["epoch"] == 2
    assert "; test accuracy" in _done(capsys.readouterr().out)


def test_monitor_test_keeps_the_old_behaviour(tmp_path, data_dir, capsys, seen):
    """All training images, the test set after every epoch, no test.json (chapter 6's final run, seed_run.py)."""
    out = tmp_path / "run"
    assert cli.main(_args(data_dir, out, "--monitor", "test")) == 0
    stdout = capsys.readouterr().out
    (given,) = seen["fit"]
    train_full, test_full = load_cifar10(data_dir)
    assert given["evaluated_on"] == "test" and given["final_test_set"] is None
    assert _ids(given["train_set"]) == _ids(train_full) and _ids(given["test_set"]) == _ids(test_full)
    assert seen["evaluated"] == [30, 30] and not (out / "test.json").exists()
    history = json.loads((out / "history.json").read_text())
    assert [r["evaluated_on"] for r in history["history"]] == ["test", "test"]
    assert "| test loss" in stdout and "| val loss" not in stdout
    assert _done(stdout).startswith(f"done: test accuracy {history['history'][-1]['test_accuracy']:.4f} after 2 "
                                    "epochs; checkpoint")


def test_subsets_are_taken_after_the_validation_split(tmp_path, data_dir, capsys, seen):
    """--train-subset slices the 86 training images left after the split, --test-subset the validation set and the
    test set read at the end; nothing trained on is evaluated as validation."""
    out = tmp_path / "run"
    assert cli.main(_args(data_dir, out, "--train-subset", "40", "--test-subset", "5")) == 0
    assert ("data: trains on 40 training images, evaluates on 5 validation images held out of the training images "
            "after every epoch; reads 5 test images once") in capsys.readouterr().out
    (given,) = seen["fit"]
    assert (len(given["train_set"]), len(given["test_set"])) == (86, 10)
    assert not _ids(given["train_set"]) & _ids(given["test_set"])
    assert seen["evaluated"] == [5, 5, 5]
    test = json.loads((out / "test.json").read_text())
    assert test["images"] == 5 and test["trained_on"]["images"] == 40


def test_a_resume_in_the_other_mode_is_refused_in_one_line(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert cli.main(_args(data_dir, out, "--epochs", "2", "--max-steps", "5")) == 0
    before = (out / "last.pt").read_bytes()
    assert cli.main(_args(data_dir, out, "--resume", "--monitor", "test")) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "evaluated on the validation set" in err and "--monitor validation" in err
    assert "Traceback" not in err and (out / "last.pt").read_bytes() == before


@pytest.mark.parametrize("value", ["val", "TEST", ""])
def test_a_bad_monitor_value_is_one_line(tmp_path, data_dir, capsys, value):
    out = tmp_path / "run"
    assert cli.main(_args(data_dir, out, "--monitor", value)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --monitor must be validation or test, got {value!r}") and err.count("\n") == 1
    assert not out.exists()


def test_the_standard_split_is_the_chapters_on_cifar10_and_a_tenth_of_a_smaller_set():
    n = 50_000  # CIFAR-10's size, with 1-pixel images: the split reads only the labels
    data = ImageSet(torch.zeros(n, 3, 1, 1, dtype=torch.uint8), torch.arange(n) % 10, [str(c) for c in range(10)])
    train, val = standard_validation_split(data)
    ref_train, ref_val = validation_split(data, 5000, seed=0)  # as every chapter and probe writes it
    assert len(val) == 5000 and torch.equal(val.labels, ref_val.labels) and len(train) == 45_000
    assert [len(part) for part in standard_validation_split(TRAIN)] == [86, 10]
    with pytest.raises(ValueError, match="too few.*--monitor test"):
        standard_validation_split(TRAIN.subset(9))


def test_fit_names_the_evaluated_set_only_as_told():
    with pytest.raises(ValueError, match="evaluated_on must be one of"):
        training.fit(tiny_config(), train_set=TRAIN, test_set=TEST, evaluated_on="val", device="cpu")
    with pytest.raises(ValueError, match="needs the validation set as test_set"):
        training.fit(tiny_config(), train_set=TRAIN, evaluated_on="validation", device="cpu")
    result = training.fit(tiny_config(epochs=1), train_set=TRAIN, test_set=TEST, device="cpu", progress=False,
                          log=None)
    assert result.history[-1]["evaluated_on"] == "test" and result.final_test is None  # every caller as before
