"""The recipe probes in tests/benchmarks choose on the validation split and never report a test number."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from vit_from_scratch.data import ImageSet, validation_split

BENCHMARKS = Path(__file__).parent / "benchmarks"


def _module(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def _images(n: int, seed: int, source: str) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 10
    return ImageSet(images, labels, [f"class{i}" for i in range(10)], source)


@pytest.fixture(scope="module")
def fake_cifar():
    return _images(5300, 0, "fake train"), _images(500, 1, "fake test")


@pytest.mark.parametrize("name, argv", [("recipe_probe", ["--variant", "{}"]), ("progressive_probe", [])])
def test_probes_select_on_validation_by_default(name, argv):
    args = _module(name).build_parser().parse_args(argv)
    assert args.select_on == "val"


def test_probe_sets_are_the_books_validation_split(fake_cifar):
    probe_data = _module("probe_data")
    train_full, test_full = fake_cifar
    train, held, name = probe_data.probe_sets("val", fake_cifar)
    ref_train, ref_val = validation_split(train_full, 5000, seed=0)
    assert name == "validation" and len(held) == 5000 and len(train) == 300
    assert torch.equal(held.images, ref_val.images) and torch.equal(train.images, ref_train.images)
    assert held is not test_full and not any(torch.equal(held.images[:1], t[None]) for t in test_full.images)
    train_t, held_t, name_t = probe_data.probe_sets("test", fake_cifar)
    assert (name_t, train_t, held_t) == ("test", train_full, test_full)
    with pytest.raises(ValueError, match="choose recipes on 'val'"):
        probe_data.probe_sets("validation", fake_cifar)


def test_named_history_leaves_no_test_column():
    probe_data = _module("probe_data")
    history = [{"epoch": 0, "train_accuracy": 0.5, "test_loss": 1.0, "test_accuracy": 0.4}]
    (record,) = probe_data.named_history(history, "validation")
    assert record == {"epoch": 0, "train_accuracy": 0.5, "validation_loss": 1.0, "validation_accuracy": 0.4}


def test_recipe_probe_reports_validation_only(fake_cifar):
    recipe_probe = _module("recipe_probe")
    overrides = {"epochs": 1, "low_res_epochs": 0, "batch_size": 100, "policy": "none", "mixup": 0.0,
                 "cutmix": 0.0, "model": {"dim": 16, "depth": 1, "num_heads": 2}}
    result = recipe_probe.probe(overrides, data=fake_cifar)
    assert result["evaluated_on"] == "validation" and result["train_images"] == 300
    assert 0.0 <= result["validation_accuracy"] <= 1.0
    assert "test" not in json.dumps(result).lower()
    lines = recipe_probe.summary([result, {**result, "overrides": {**overrides, "seed": 1},
                                           "validation_accuracy": result["validation_accuracy"] + 0.02}])
    assert len(lines) == 1 and "spread 2.00%" in lines[0] and "2 seeds" in lines[0]


def test_timm_reference_writes_its_per_epoch_history(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    reference = _module("timm_reference")
    from vit_from_scratch.recipe import preset

    small = {"dim": 16, "depth": 1, "num_heads": 2}
    monkeypatch.setattr(reference, "preset", lambda name, **kw: preset(name, **kw, model=small))
    monkeypatch.setattr(reference, "load_cifar10", lambda: (_images(256, 0, "train"), _images(100, 1, "test")))
    out = tmp_path / "reference.json"
    monkeypatch.setattr(sys, "argv", ["timm_reference.py", "--epochs", "2", "--json", str(out),
                                      "--out", str(tmp_path / "run")])
    reference.main()
    report = json.loads(out.read_text())
    assert [r["epoch"] for r in report["history"]] == [1, 2]
    assert all(0 <= r["test_accuracy"] <= 1 for r in report["history"]) and report["training_minutes"] > 0
    assert report["config"]["low_res_epochs"] == 0 and report["config"]["model"]["dim"] == 16
    assert report["parameters"] == preset("cifar10-cpu", model=small).vit_config().num_params()


def test_a_probe_log_cut_short_still_gives_every_finished_epoch():
    """The GPU probes ran out of time mid-schedule; their log is what chapter 6's choice is read from."""
    probe_data = _module("probe_data")
    line = "{} epoch {:3d}/25 | train loss 1.900 acc 0.300 | val loss 1.700 acc {} | lr 1.00e-03 | 2000 img/s | 22 s"
    text = "\n".join([line.format('{"seed": 0}', 1, "0.350"), "== probes start (283 s left)",
                      line.format('{"optimizer": "muon", "seed": 1}', 1, "0.450"),
                      line.format('{"seed": 0}', 2, "0.400"), "epoch 3/25 | a line of another program"])
    runs = probe_data.histories_from_log(text)
    assert [(r["overrides"], r["seed"], len(r["history"])) for r in runs] == [
        ({}, 0, 2), ({"optimizer": "muon"}, 1, 1)]
    assert [h["validation_accuracy"] for h in runs[0]["history"]] == [0.35, 0.40]
    assert all("test" not in key for r in runs for h in r["history"] for key in h)


def test_recipe_probe_defaults_to_the_cpu_two_at_a_time_and_short_schedules():
    args = _module("recipe_probe").build_parser().parse_args(["--variant", "{}"])
    assert (args.device, args.parallel, args.full_schedule, args.select_on) == ("cpu", 2, False, "val")
