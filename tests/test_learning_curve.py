"""Learning curves: nested, class-balanced subsets, and comparisons read against the seeds' spread."""

import math

import pytest
import torch

from vit_from_scratch.data import ImageSet
from vit_from_scratch.learning_curve import compare_seeds, nested_subsets, stratified_order


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
    import math

    from vit_from_scratch.learning_curve import epochs_for_steps

    epochs = epochs_for_steps([2000, 250, 500], 800, 25)
    assert epochs == {250: 80, 500: 40, 2000: 10}
    assert {n * e // 25 for n, e in epochs.items()} == {800}
    assert epochs_for_steps([30], 6, 25) == {30: 3} and math.ceil(30 / 25) * 3 == 6  # last batch smaller
    with pytest.raises(ValueError, match="whole epochs"):
        epochs_for_steps([250, 300], 100, 25)
