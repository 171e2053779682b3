"""Learning curves: nested, class-balanced subsets, and comparisons read against the seeds' spread."""

import math

import pytest
import torch

from vit_from_scratch.data import ImageSet
from vit_from_scratch.learning_curve import accuracy_interval, compare_seeds, nested_subsets, stratified_order


def _data(per_class=(30, 30, 30), seed=0):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    images = torch.arange(len(labels), dtype=torch.int64).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)
    return ImageSet((images % 256).to(torch.uint8).contiguous(), labels, ("a", "b", "c"))


def test_order_is_a_permutation_whose_prefixes_keep_classes_within_one():
    data = _data()
    order = stratified_order(data.labels, seed=3)
    assert sorted(order.tolist()) == list(range(len(data)))
    for n in range(1, len(data) + 1):
        counts = torch.bincount(data.labels[order[:n]], minlength=3)
        assert counts.max() - counts.min() <= 1, (n, counts)


def test_order_keeps_unequal_classes_in_proportion():
    data = _data((60, 30, 10))
    order = stratified_order(data.labels, seed=0)
    counts = torch.bincount(data.labels[order[:50]], minlength=3)
    assert (counts - torch.tensor([30, 15, 5])).abs().max() <= 1


def test_order_depends_on_the_seed_and_only_on_it():
    labels = _data().labels
    assert torch.equal(stratified_order(labels, seed=1), stratified_order(labels, seed=1))
    assert not torch.equal(stratified_order(labels, seed=1), stratified_order(labels, seed=2))


def test_subsets_are_nested_and_of_the_asked_sizes():
    data = _data()
    subsets = nested_subsets(data, [40, 10, 90], seed=0)
    assert list(subsets) == [10, 40, 90]
    ids = {n: set(s.images[:, 0, 0, 0].tolist()) for n, s in subsets.items()}  # image i holds i
    assert ids[10] < ids[40] < ids[90] and len(ids[40]) == 40
    assert all(len(s) == n for n, s in subsets.items())
    small = subsets[10]
    assert torch.equal(small.labels, data.labels[small.images[:, 0, 0, 0].long()])


def test_subsets_refuse_sizes_beyond_the_data():
    with pytest.raises(ValueError, match="between 1 and the 90"):
        nested_subsets(_data(), [10, 91])


def test_compare_counts_a_difference_only_beyond_the_seeds_spread():
    clear = compare_seeds([0.50, 0.52], [0.40, 0.41])
    assert clear.verdict == "higher" and clear.difference == pytest.approx(0.105)
    assert clear.noise == pytest.approx(0.02)
    assert compare_seeds([0.40, 0.41], [0.50, 0.52]).verdict == "lower"
    noisy = compare_seeds([0.45, 0.55], [0.44, 0.46])  # means differ by 0.05, spread 0.10
    assert noisy.verdict == "within noise"


def test_compare_uses_a_binomial_floor_for_a_difference():
    c = compare_seeds([0.50, 0.50], [0.47, 0.47], n_images=1000)
    floor = 2 * math.sqrt((0.5 * 0.5 + 0.47 * 0.53) / 1000)  # about 0.045
    assert c.noise == pytest.approx(floor)
    assert c.verdict == "within noise"
    assert compare_seeds([0.50, 0.50], [0.47, 0.47]).verdict == "higher"


def test_compare_needs_two_seeds_per_arm():
    with pytest.raises(ValueError, match="at least two seeds"):
        compare_seeds([0.5], [0.4, 0.41])


def test_epochs_for_steps_gives_every_size_the_same_number_of_steps():
    from vit_from_scratch.learning_curve import epochs_for_steps

    epochs = epochs_for_steps([2000, 250, 500], 800, 25)
    assert epochs == {250: 80, 500: 40, 2000: 10}
    assert {n * e // 25 for n, e in epochs.items()} == {800}
    with pytest.raises(ValueError, match="whole epochs"):
        epochs_for_steps([250, 300], 100, 25)
    with pytest.raises(ValueError, match="no full batch"):
        epochs_for_steps([20], 6, 25)


def test_epochs_for_steps_counts_the_steps_fits_loader_makes():
    """fit's training loader drops the last, incomplete batch: 130 images at batch 12 are 10 steps an epoch,
    not 11, so 20 steps are 2 epochs."""
    from vit_from_scratch.learning_curve import epochs_for_steps
    from vit_from_scratch.loaders import make_loader

    data = ImageSet(torch.zeros(130, 3, 8, 8, dtype=torch.uint8), torch.arange(130) % 10,
                    tuple(str(i) for i in range(10)))
    loader = make_loader(data, 12, train=True, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert len(loader) == 10 == sum(1 for _ in loader)
    assert epochs_for_steps([130], 20, 12) == {130: 2}
    with pytest.raises(ValueError, match="whole epochs"):
        epochs_for_steps([130], 22, 12)  # 11 steps an epoch would have fitted twice


def test_accuracy_interval_is_wilsons():
    # 79 of 100: Wilson's 95% interval is 0.7002-0.8584 (e.g. statsmodels' proportion_confint, method wilson)
    low, high = accuracy_interval(79, 100)
    assert low == pytest.approx(0.70020, abs=1e-4) and high == pytest.approx(0.85835, abs=1e-4)
    # it narrows as 1/sqrt(n) and holds the observed accuracy
    low4, high4 = accuracy_interval(7954, 10_000)
    assert low4 < 0.7954 < high4 and 0.015 < high4 - low4 < 0.017
    # at the edges it stays inside [0, 1] and keeps a width
    assert accuracy_interval(0, 50)[0] == 0.0 and accuracy_interval(0, 50)[1] > 0.05
    assert accuracy_interval(50, 50)[1] == 1.0 and accuracy_interval(50, 50)[0] < 0.95
    assert accuracy_interval(79, 100, confidence=0.99)[0] < low


@pytest.mark.parametrize("args, message", [((5, 0), "n >= 1"), ((11, 10), "correct <= n"), ((-1, 10), "0 <= correct"),
                                           ((5, 10, 1.5), "strictly between 0 and 1")])
def test_accuracy_interval_refuses_bad_counts(args, message):
    with pytest.raises(ValueError, match=message):
        accuracy_interval(*args)


def test_a_comparison_says_its_verdict_in_words():
    clear = compare_seeds([0.60, 0.61], [0.50, 0.50])
    assert clear.phrase("B") == "10.5 points higher than B (noise 1.0)"
    assert compare_seeds([0.40, 0.41], [0.50, 0.52]).phrase("B") == "10.5 points lower than B (noise 2.0)"
    assert compare_seeds([0.50, 0.56], [0.52, 0.53]).phrase("B") == "within noise of B (+0.5 points, noise 6.0)"
