"""Unit tests for vit_from_scratch.matched (Chapter 10): the learning-rate search on validation, seeds
at the chosen rate, the test set scored once per final run, verdicts in points, step times in rounds."""

import pytest
import torch
from torch import nn

from _tiny_runs import TEST, TINY_MODEL, TRAIN, tiny_config, tiny_data
from vit_from_scratch.learning_curve import compare_seeds
from vit_from_scratch.matched import (accuracy_on, difference_sentence, matched_comparison, step_times,
                                      train_run)
from vit_from_scratch.model import VisionTransformer, ViTConfig

VAL = tiny_data(30, 2)
CONFIG = tiny_config(model=TINY_MODEL)


def vit():
    return VisionTransformer(ViTConfig(**TINY_MODEL))


def test_train_run_records_steps_images_and_clean_training_accuracy():
    run = train_run("vit", vit, CONFIG, lr=3e-3, seed=0, train_set=TRAIN, val_set=VAL)
    assert {record["evaluated_on"] for record in run.history} == {"validation"}, "the history names its set"
    assert run.steps == 2 * (len(TRAIN) // CONFIG.batch_size)  # two epochs of full batches
    assert run.images_seen == run.steps * CONFIG.batch_size and run.lr == 3e-3
    assert run.val_accuracy == run.history[-1]["test_accuracy"]
    # clean accuracy: the same number as scoring the returned model on the training images directly
    assert run.train_accuracy == accuracy_on(run.model, TRAIN, train_set=TRAIN)
    assert run.train_accuracy > 0.6  # the tiny classes are learnable in two epochs


def test_train_run_uses_the_given_lr_not_the_configs():
    low = train_run("vit", vit, CONFIG, lr=2e-5, seed=0, train_set=TRAIN, val_set=VAL)
    assert max(e["lr"] for e in low.history) <= 2e-5


def test_search_chooses_on_validation_trains_fresh_seeds_and_scores_test_once(monkeypatch):
    import vit_from_scratch.matched as matched

    scored, trained = [], []

    def fake_run(name, build, config, *, lr, seed, train_set, val_set, device="cpu"):
        trained.append((name, lr, seed))  # validation accuracy peaks at lr 1e-3, higher for seed 1
        val = {1e-4: 0.3, 1e-3: 0.5, 1e-2: 0.4}[lr] + 0.01 * seed
        return matched.Run(name, lr, seed, [], 1, 16, 0.0, val, 0.9, model=build())

    def counting(model, data, **kw):
        scored.append(data)
        return 0.25

    monkeypatch.setattr(matched, "train_run", fake_run)
    monkeypatch.setattr(matched, "accuracy_on", counting)
    search, runs = matched_comparison({"a": vit, "b": vit}, CONFIG, lrs=(1e-4, 1e-3, 1e-2), seeds=(0, 1, 2),
                                      train_set=TRAIN, val_set=VAL, test_set=TEST, lr_from={"b": "a"},
                                      log=None)
    assert {r.seed for r in search["a"].values()} == {3}  # the search has its own seed
    assert all(r is not s for r in runs["a"] for s in search["a"].values()), "no final run is a search run"
    assert [(r.lr, r.seed) for r in runs["a"]] == [(1e-3, 0), (1e-3, 1), (1e-3, 2)]
    assert search["b"] == {} and [(r.lr, r.seed) for r in runs["b"]] == [(1e-3, 0), (1e-3, 1), (1e-3, 2)]
    assert len(trained) == 3 + 3 + 3  # a: three rates, then three seeds; b: three seeds, no search
    assert scored == [TEST] * 6  # once per final run, never for a search run
    assert all(r.test_accuracy == 0.25 and r.model is None for rs in runs.values() for r in rs)
    assert all(r.test_accuracy is None and r.model is None for r in search["a"].values())


def test_the_search_seed_must_not_be_a_final_seed():
    with pytest.raises(ValueError, match="search_seed=1 is one of the final seeds"):
        matched_comparison({"a": vit}, CONFIG, lrs=(1e-3,), seeds=(0, 1), train_set=TRAIN, val_set=VAL,
                           test_set=TEST, search_seed=1)


def test_a_tie_in_validation_goes_to_the_smaller_rate(monkeypatch):
    import vit_from_scratch.matched as matched

    def fake_run(name, build, config, *, lr, seed, train_set, val_set, device="cpu"):
        return matched.Run(name, lr, seed, [], 1, 16, 0.0, 0.5, 0.9, model=build())

    monkeypatch.setattr(matched, "train_run", fake_run)
    monkeypatch.setattr(matched, "accuracy_on", lambda model, data, **kw: 0.5)
    _, runs = matched_comparison({"a": vit}, CONFIG, lrs=(1e-2, 1e-3), seeds=(0, 1), train_set=TRAIN,
                                 val_set=VAL, test_set=TEST, log=None)
    assert {r.lr for r in runs["a"]} == {1e-3}


def test_comparison_rejects_one_seed_and_a_borrowed_rate_from_a_later_model():
    with pytest.raises(ValueError, match="at least two different seeds"):
        matched_comparison({"a": vit}, CONFIG, lrs=(1e-3,), seeds=(0,), train_set=TRAIN, val_set=VAL,
                           test_set=TEST)
    with pytest.raises(ValueError, match="must come before"):
        matched_comparison({"b": vit, "a": vit}, CONFIG, lrs=(1e-3,), seeds=(0, 1), train_set=TRAIN,
                           val_set=VAL, test_set=TEST, lr_from={"b": "a"})


def test_difference_sentence_follows_compare_seeds_and_says_points():
    a, b = [0.52, 0.53, 0.51], [0.40, 0.41, 0.42]
    sentence = difference_sentence("hybrid", "ViT", a, b, n_images=2000)
    c = compare_seeds(a, b, n_images=2000)
    assert c.verdict == "higher" and "hybrid is higher than ViT by 11.0 points" in sentence
    assert f"noise bar is {100 * c.noise:.1f} points" in sentence and "%" in sentence
    flipped = difference_sentence("ViT", "hybrid", b, a, n_images=2000)
    assert flipped.startswith("hybrid is higher than ViT by 11.0 points")
    close = difference_sentence("x", "y", [0.50, 0.53], [0.51, 0.52], n_images=2000)
    assert close.startswith("x and y are within noise")


def test_step_times_alternate_rounds_and_give_ratios_to_the_first_model():
    builders = {"small": lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)),
                "big": lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 512), nn.Linear(512, 10))}
    times = step_times(builders, batch_size=8, rounds=3, repeats=2, image_size=8)
    assert times["small"].ratio == 1.0 and times["small"].ratio_low == times["small"].ratio_high == 1.0
    for t in times.values():
        assert 0 < t.low <= t.median <= t.high and t.ratio_low <= t.ratio <= t.ratio_high
    with pytest.raises(ValueError, match="at least one model"):
        step_times({}, batch_size=8)
