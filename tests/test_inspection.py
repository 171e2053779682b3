"""Chapter 13's inspection tools: tiles grouped from file numbers and mask overlap, splits that keep a
tile on one side, the two leak measures (mask repeats, and the closest image across the split), the
binary detector's curves and threshold, the focal loss, the balanced resample and the bootstrap
interval, on cases whose answers are known (and the real tiles when VIT_DATA_DIR holds them)."""

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vit_from_scratch.data import ImageSet
from vit_from_scratch.inspection import (average_precision, balanced_resample, bootstrap_interval,
                                         detection_report, focal_loss, group_split, leaked, mask_iou,
                                         nearest_across, parse_tile_name, pr_curve, roc_auc,
                                         threshold_for_recall, tile_groups)

REAL = Path(os.environ.get("VIT_DATA_DIR", "/nonexistent"))


def _box(top: int, left: int, size: int = 3, side: int = 16) -> torch.Tensor:
    m = torch.zeros(1, side, side, dtype=torch.uint8)
    m[0, top:top + size, left:left + size] = 255
    return m


# Tiles, not photographs --------------------------------------------------------------------------
def test_tile_names_are_parsed_and_foreign_names_refused():
    assert parse_tile_name("exp3_num_36246.jpg") == (3, 36246)
    assert parse_tile_name("MT_Free/Imgs/exp1_num_10") == (1, 10)
    with pytest.raises(ValueError, match="exp<lighting>_num_<number>"):
        parse_tile_name("IMG_0001.jpg")


def test_mask_iou_of_known_boxes():
    a = torch.stack([_box(0, 0), _box(0, 0), torch.zeros(1, 16, 16, dtype=torch.uint8)])
    b = torch.stack([_box(0, 0), _box(0, 1)])
    iou = mask_iou(a, b)
    assert iou.shape == (3, 2)
    assert iou[0, 0] == 1 and abs(iou[0, 1].item() - 6 / 12) < 1e-6  # 3x3 boxes shifted by one column
    assert (iou[2] == 0).all()  # an empty mask overlaps nothing


def test_lighting_series_are_grouped_by_numbers_and_masks():
    # class 0: tile A (exp1..exp3, numbers 100..130), tile B (exp1, exp2 at 5000), and a photograph at
    # 9000 whose small defect repeats tile A's: mask overlap merges it into A
    # class 1 (defect-free): two lighting series; a repeated lighting starts a new tile even when close
    names = ["exp1_num_100", "exp2_num_115", "exp3_num_130", "exp1_num_5000", "exp2_num_5020",
             "exp4_num_9000", "exp1_num_20", "exp2_num_40", "exp2_num_60"]
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1])
    empty = torch.zeros(1, 16, 16, dtype=torch.uint8)
    masks = torch.stack([_box(2, 2), _box(2, 2), _box(2, 3), _box(10, 10), _box(10, 10), _box(2, 2),
                         empty, empty, empty])
    g = tile_groups(names, labels, masks).tolist()
    assert g[0] == g[1] == g[2] == g[5]  # tile A, and its repeat found by the mask
    assert g[3] == g[4] != g[0]  # tile B
    assert g[6] == g[7] != g[8]  # a second exp2 starts a new tile
    assert len(set(g)) == 4 and g[0] == 0  # numbered in order of appearance
    only_numbers = tile_groups(names, labels, masks, iou=2.0).tolist()  # no IoU can exceed 2
    assert only_numbers[5] != only_numbers[0]


def test_large_masks_do_not_merge_tiles_by_their_size():
    names = ["exp1_num_100", "exp1_num_9000"]
    half = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    half[:, :, :8] = 255  # half the image: overlap by size alone
    g = tile_groups(names, torch.tensor([0, 0]), half)
    assert g[0] != g[1]


def test_group_split_keeps_every_tile_on_one_side_and_every_class_in_every_part():
    labels = torch.tensor([c for c in range(3) for _ in range(60)])
    groups = torch.arange(180) // 6  # tiles of six photographs
    train, val, test = group_split(labels, groups, val=0.2, test=0.2, seed=0)
    assert len(train) + len(val) + len(test) == 180
    sides = [set(groups[p].tolist()) for p in (train, val, test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    for p, share in ((train, 0.6), (val, 0.2), (test, 0.2)):
        assert torch.bincount(labels[p], minlength=3).tolist() == [round(60 * share)] * 3
    again = group_split(labels, groups, val=0.2, test=0.2, seed=0)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again))
    with pytest.raises(ValueError, match="positive fractions"):
        group_split(labels, groups, val=0.5, test=0.5)


def test_leak_counts_held_out_small_defects_that_repeat_a_training_one():
    train = torch.stack([_box(2, 2), _box(10, 10)])
    held = torch.stack([_box(2, 2), _box(2, 3), _box(6, 6), torch.full((1, 16, 16), 255, dtype=torch.uint8)])
    # the first two repeat a training defect (IoU 1 and 0.5 -> only the first is over 0.5), the third is
    # new, the fourth is not small
    assert leaked(train, held) == (1, 3)
    assert leaked(train, held, iou=0.4) == (2, 3)


def _photographed(objects: int, shots: int, seed: int = 0) -> torch.Tensor:
    """``objects`` random gray patterns, each photographed ``shots`` times under another lighting (gain,
    offset, a brightness ramp) with sensor noise: (objects * shots, 3, 16, 16), one object's shots in a row."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(objects, 1, 1, 16, 16, generator=g)
    ramp = torch.linspace(-1, 1, 16).view(1, 1, 1, 1, 16)
    gain, offset, slope = (torch.rand(objects, shots, 1, 1, 1, generator=g) for _ in range(3))
    shots_ = (0.5 + gain) * base + 2 * offset + slope * ramp + 0.3 * torch.randn(objects, shots, 1, 16, 16,
                                                                                 generator=g)
    return shots_.flatten(0, 1).expand(-1, 3, -1, -1)


def test_nearest_across_flags_a_split_by_photograph_and_passes_a_split_by_object():
    images = _photographed(objects=50, shots=5)  # 250 images, object = index // 5
    by_object = nearest_across(images[:150], images[150:])  # objects 0..29 train, 30..49 held out
    assert by_object.across == 0 and by_object.of == 100 and by_object.blind == pytest.approx(150 / 249)
    order = torch.randperm(250, generator=torch.Generator().manual_seed(1))  # a split blind to objects
    blind = nearest_across(images[order[:150]], images[order[150:]])
    se = math.sqrt(blind.blind * (1 - blind.blind) / blind.of)
    assert blind.across / blind.of > blind.blind - 4 * se  # the leak, at the value a blind split gives
    assert by_object.across / by_object.of < by_object.blind / 4  # the chapter's bar
    # half of the held-out objects leak one shot each into training: seen, though only where that shot
    # is closer than the object's three other held-out shots (about a quarter of the 40)
    leak = torch.cat([torch.arange(150), torch.arange(150, 250, 10)])
    kept = torch.tensor([i for i in range(150, 250) if i % 10])
    partial = nearest_across(images[leak], images[kept])
    assert by_object.across < 10 <= partial.across < partial.of * partial.blind / 2


def test_nearest_across_without_related_images_gives_the_blind_share_and_counts_ties_as_across():
    unrelated = _photographed(objects=400, shots=1)  # every image its own object: no pair is closer
    check = nearest_across(unrelated[:240], unrelated[240:])
    se = math.sqrt(check.blind * (1 - check.blind) / check.of)
    assert abs(check.across / check.of - check.blind) < 4 * se
    twin = torch.cat([unrelated[:1], unrelated[:1]])  # a held-out pair whose copy is also in training
    assert nearest_across(unrelated[:3], twin).across == 2
    assert nearest_across(unrelated[:3].float(), unrelated[3:5].float() * 7 + 100) == nearest_across(
        unrelated[:3], unrelated[3:5])  # a correlation: gain and offset do not matter
    with pytest.raises(ValueError, match="two held-out"):
        nearest_across(unrelated[:3], unrelated[3:4])


@pytest.mark.skipif(not (REAL / "magnetic-tile" / "MT_Free").is_dir(), reason="needs the magnetic-tile data")
def test_real_tiles_split_by_tile_leak_nothing_that_an_image_split_leaks():
    from vit_from_scratch.datasets import load_magnetic_tiles, split_masked

    tiles = load_magnetic_tiles(REAL, size=32)
    groups = tile_groups(tiles.names, tiles.data.labels, tiles.masks)
    assert 200 < len(groups.unique()) < 300  # about six lightings per tile
    by_image = split_masked(tiles, val=0.2, test=0.2, seed=0)
    before, of = leaked(by_image[0].masks, torch.cat([by_image[1].masks, by_image[2].masks]))
    assert before > of / 3  # the image split repeats many held-out defects
    train, val, test = group_split(tiles.data.labels, groups, val=0.2, test=0.2, seed=0)
    assert leaked(tiles.masks[train], tiles.masks[torch.cat([val, test])])[0] == 0  # by construction
    # the check that shares nothing with the grouping rules: closest photograph across the split
    images = [p.data.images for p in by_image]
    naive = nearest_across(images[0], torch.cat(images[1:]))
    assert naive.across / naive.of > naive.blind - 4 * math.sqrt(naive.blind * (1 - naive.blind) / naive.of)
    by_tile = nearest_across(tiles.data.images[train], tiles.data.images[torch.cat([val, test])])
    assert by_tile.across / by_tile.of < by_tile.blind / 4
    for p in (train, val, test):
        assert torch.bincount(tiles.data.labels[p], minlength=6).min() > 0


# A binary detector -----------------------------------------------------------------------------
def test_curves_of_a_perfect_and_of_a_blind_detector():
    positives = torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool)
    perfect = torch.tensor([0.9, 0.8, 0.3, 0.2, 0.1, 0.0])
    assert roc_auc(perfect, positives) == 1 and average_precision(perfect, positives) == pytest.approx(1)
    blind = torch.full((6,), 0.5)  # every image tied: knows nothing
    assert roc_auc(blind, positives) == 0.5
    assert average_precision(blind, positives) == pytest.approx(2 / 6)  # the share of positives
    precision, recall, thresholds = pr_curve(perfect, positives)
    assert thresholds.tolist() == sorted(perfect.tolist(), reverse=True)
    assert recall.tolist()[:2] == [0.5, 1.0] and precision.tolist()[:2] == [1.0, 1.0]


def test_auc_and_ap_agree_with_a_brute_force_count():
    g = torch.Generator().manual_seed(0)
    scores, positives = torch.rand(40, generator=g), torch.rand(40, generator=g) < 0.3
    pos, neg = scores[positives], scores[~positives]
    assert roc_auc(scores, positives) == pytest.approx((pos[:, None] > neg[None]).double().mean().item())
    order = scores.argsort(descending=True)
    hits = positives[order].double()
    precision_at_hits = (hits.cumsum(0) / torch.arange(1, 41))[hits.bool()]
    assert average_precision(scores, positives) == pytest.approx(precision_at_hits.mean().item())


def test_threshold_catches_the_target_share_and_the_report_counts_right():
    positives = torch.tensor([1] * 20 + [0] * 10, dtype=torch.bool)
    scores = torch.cat([torch.linspace(0.3, 1.0, 20), torch.linspace(0.0, 0.6, 10)])
    t = threshold_for_recall(scores, positives, 0.95)
    report = detection_report(scores, positives, t)
    assert report["recall"] >= 0.95 and report["tp"] == 19  # the highest threshold that reaches 95%
    assert report["tp"] + report["fn"] == 20 and report["fp"] + report["tn"] == 10
    assert report["false_alarm_rate"] == pytest.approx(report["fp"] / 10)
    kinds = torch.tensor([0] * 10 + [1] * 10 + [2] * 10)
    per_kind = detection_report(scores, positives, t, kinds, 3)["kind_recall"]
    assert per_kind[2].item() == pytest.approx(report["false_alarm_rate"])
    with pytest.raises(ValueError, match="positives and negatives"):
        roc_auc(scores, torch.ones(30, dtype=torch.bool))
    with pytest.raises(ValueError, match="finite"):
        roc_auc(torch.full((30,), float("nan")), positives)


# Imbalance and intervals -----------------------------------------------------------------------
def test_focal_loss_is_cross_entropy_at_gamma_zero_and_shrinks_easy_images():
    logits = torch.tensor([[4.0, -4.0], [0.1, 0.0]])
    targets = F.one_hot(torch.tensor([0, 0]), 2).float()
    ce = F.cross_entropy(logits, targets)
    assert focal_loss(0.0)(logits, targets, None) == pytest.approx(ce.item())
    per_image = [focal_loss(2.0)(logits[i:i + 1], targets[i:i + 1], None) for i in range(2)]
    plain = [F.cross_entropy(logits[i:i + 1], targets[i:i + 1]) for i in range(2)]
    assert per_image[0] / plain[0] < 0.01 < 0.2 < per_image[1] / plain[1]  # the easy image counts less
    with pytest.raises(ValueError):
        focal_loss(-1.0)


def test_balanced_resample_keeps_the_size_and_equalises_the_classes():
    labels = torch.tensor([0] * 90 + [1] * 10)
    data = ImageSet(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 2, 2).contiguous(),
                    labels, ("good", "bad"), "toy")
    out = balanced_resample(data, seed=0)
    assert len(out) == 100 and torch.bincount(out.labels).tolist() == [50, 50]
    ids = out.images[:, 0, 0, 0].long()
    assert (labels[ids] == out.labels).all()  # every image keeps its own label
    assert len(ids[out.labels == 0].unique()) == 50  # the majority sampled without replacement
    assert set(ids[out.labels == 1].tolist()) <= set(range(90, 100))


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_values():
    g = torch.Generator().manual_seed(0)
    few, many = torch.randn(20, generator=g), torch.randn(2000, generator=g)
    lo, hi = bootstrap_interval(few)
    assert lo < few.mean().item() < hi
    lo2, hi2 = bootstrap_interval(many)
    assert hi2 - lo2 < (hi - lo) / 5 and lo2 < 0 < hi2
    assert abs((hi2 - lo2) - 2 * 1.96 / math.sqrt(2000)) < 0.03  # about the normal interval
    assert bootstrap_interval(torch.tensor([1.0, float("nan"), 3.0])) != (None, None)  # NaN left out
    with pytest.raises(ValueError, match="at least two"):
        bootstrap_interval(torch.tensor([1.0, float("nan")]))
