"""Chapter 13: a defect inspection a factory could run, and the evidence it rests on.

* **Tiles, not photographs.** The magnetic-tile set photographs each tile under up to six lightings
  (files ``exp1_num_<n>`` ... ``exp6_num_<n>``), so one physical defect appears in several images with
  almost the same mask. :func:`tile_groups` derives which photographs show one tile (consecutive file
  numbers, each lighting at most once, then merged where two defect masks overlap),
  :func:`group_split` keeps every group on one side of a split, :func:`leaked` counts the defect masks an
  image-level split repeats across it, and :func:`nearest_across`, which uses neither file names nor masks,
  measures how often a held-out photograph's closest image is a training one.
* **A binary detector.** Defect against defect-free: the precision-recall curve, ROC AUC, average
  precision, the threshold that catches a target share of the defects on validation
  (:func:`threshold_for_recall`) and what that threshold then does (:func:`detection_report`).
* **Imbalance.** :func:`focal_loss` and :func:`balanced_resample` beside chapter 13's class weights.
* **Intervals.** :func:`bootstrap_interval`, a percentile bootstrap of a mean over images.

Letters: N images, H/W mask height and width, G groups.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import ImageSet
from .near_copies import centred_unit

__all__ = ["parse_tile_name", "mask_iou", "tile_groups", "group_split", "leaked",
           "NearestCheck", "nearest_across", "pr_curve", "roc_auc",
           "average_precision", "threshold_for_recall", "detection_report", "focal_loss",
           "balanced_resample", "bootstrap_interval"]

_TILE_NAME = re.compile(r"exp(\d+)_num_(\d+)")


# Tiles, not photographs ------------------------------------------------------------------------
def parse_tile_name(name: str) -> tuple[int, int]:
    """``"exp3_num_36246"`` (with or without a suffix) -> ``(3, 36246)``: the lighting and the file number."""
    stem = str(name).rsplit("/", 1)[-1].split(".", 1)[0]
    match = _TILE_NAME.fullmatch(stem)
    if match is None:
        raise ValueError(f"{name!r} is not a magnetic-tile file name of the form exp<lighting>_num_<number>; "
                         "tile_groups needs the authors' file names (load_magnetic_tiles keeps them in .names)")
    return int(match[1]), int(match[2])


def _binary(masks: Tensor) -> Tensor:
    """uint8 (0..255) or float (0..1) masks, (N, [1,] H, W) -> bool (N, H*W)."""
    m = masks[:, 0] if masks.ndim == 4 else masks
    if m.ndim != 3:
        raise ValueError(f"masks must be shaped (N, [1,] H, W), got {tuple(masks.shape)}")
    return (m > 127 if m.dtype == torch.uint8 else m > 0.5).flatten(1)


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of every mask of ``a`` with every mask of ``b`` (two empty masks: 0).

    Shape:
        (A, [1,] H, W), (B, [1,] H, W) -> (A, B)
    """
    x, y = _binary(a).float(), _binary(b).float()  # (A, HW), (B, HW)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"masks of {tuple(a.shape[-2:])} and {tuple(b.shape[-2:])} pixels cannot be compared: "
                         "resize them to one size first")
    inter = x @ y.T  # (A, B)
    union = x.sum(1)[:, None] + y.sum(1)[None] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def _root(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def tile_groups(names: Sequence[str], labels: Tensor, masks: Tensor, *, max_gap: int = 200,
                iou: float = 0.5, small: float = 0.1) -> Tensor:
    """Which photographs show one physical tile: a group id per image, numbered 0.. in order of appearance.

    Two rules, both from the data:

    1. **File numbers.** Within a class, sorted by number, the photographs of one tile follow each other
       closely (gaps of about 10-60) with every lighting at most once; a run ends at a gap over
       ``max_gap`` or at a lighting it already holds.
    2. **Mask overlap.** Two photographs with a small defect (mask area over 0 and under ``small``) whose
       masks overlap with IoU > ``iou`` show one defect, so their groups are merged, whatever class each
       was filed under (the data set files a few photographs of one tile under two defect types).
       Large masks are left out: two of them overlap by their size alone (half-covered tiles would
       all merge into one group); so are empty ones, the defect-free tiles'.

    Shape:
        names (N,), labels (N,), masks (N, [1,] H, W) -> (N,) int64
    """
    n = len(names)
    if len(labels) != n or len(masks) != n:
        raise ValueError(f"names ({n}), labels ({len(labels)}) and masks ({len(masks)}) must describe the "
                         "same images")
    parsed = [parse_tile_name(name) for name in names]
    parent = list(range(n))
    labels = labels.cpu()
    for c in labels.unique().tolist():
        members = sorted(torch.nonzero(labels == c).flatten().tolist(), key=lambda i: parsed[i][1])
        run: list[int] = []
        for i in members:
            lights = {parsed[j][0] for j in run}
            if run and (parsed[i][1] - parsed[run[-1]][1] > max_gap or parsed[i][0] in lights):
                run = []
            if run:
                parent[_root(parent, i)] = _root(parent, run[0])
            run.append(i)
    area = _binary(masks).float().mean(1)
    marked = torch.nonzero((area > 0) & (area < small)).flatten().tolist()
    if len(marked) > 1:
        overlap = mask_iou(masks[marked], masks[marked])  # (M, M)
        for a, b in torch.nonzero(torch.triu(overlap > iou, diagonal=1)).tolist():
            parent[_root(parent, marked[a])] = _root(parent, marked[b])
    roots = [_root(parent, i) for i in range(n)]
    ids: dict[int, int] = {}
    return torch.tensor([ids.setdefault(r, len(ids)) for r in roots], dtype=torch.int64)


def group_split(labels: Tensor, groups: Tensor, *, val: float = 0.2, test: float = 0.2,
                seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``(train, validation, test)`` image indices that keep every group on one side, class by class.

    A group counts as the class most of its images have. Each class's groups are shuffled (seeded) and
    dealt out greedily: to test while it holds fewer than ``test`` of the class's images, then to validation
    while it holds fewer than ``val``, the rest to training. The last group dealt to a part can overshoot
    its fraction by up to a group's size (a class of few, large groups: about, not exactly, the fractions).
    """
    if not (0 < val and 0 < test and val + test < 1):
        raise ValueError(f"val and test must be positive fractions that leave training images, got {val}, {test}")
    labels, groups = labels.cpu(), groups.cpu()
    if labels.shape != groups.shape:
        raise ValueError(f"labels {tuple(labels.shape)} and groups {tuple(groups.shape)} must match")
    generator = torch.Generator().manual_seed(seed)
    ids = groups.unique()
    group_class = torch.stack([labels[groups == g].mode().values for g in ids])  # (G,): majority class
    parts: list[list[int]] = [[], [], []]
    for c in labels.unique().tolist():
        mine = ids[group_class == c]
        total = sum(int((groups == g).sum()) for g in mine.tolist())
        count = [0, 0, 0]
        for g in mine[torch.randperm(len(mine), generator=generator)].tolist():
            members = torch.nonzero(groups == g).flatten().tolist()
            side = 2 if count[2] < test * total else 1 if count[1] < val * total else 0
            parts[side] += members
            count[side] += len(members)
    return tuple(torch.tensor(sorted(p), dtype=torch.int64) for p in parts)


def leaked(train_masks: Tensor, held_masks: Tensor, *, small: float = 0.1, iou: float = 0.5) -> tuple[int, int]:
    """``(repeats, of)``: of the held-out images with a small defect (mask over 0 and under ``small`` of the
    image), how many repeat a training image's defect (mask IoU > ``iou`` with some training mask).
    Small defects only, because two large masks overlap by their size alone. :func:`tile_groups` merges
    exactly such pairs, so a :func:`group_split` of its groups scores 0 here by construction: check such a
    split with :func:`nearest_across`, which does not share the rule."""
    area = _binary(held_masks).float().mean(1)
    small_ones = torch.nonzero((area > 0) & (area < small)).flatten()
    if len(small_ones) == 0 or len(train_masks) == 0:
        return 0, len(small_ones)
    best = mask_iou(held_masks[small_ones], train_masks).amax(1)
    return int((best > iou).sum()), len(small_ones)


class NearestCheck(NamedTuple):
    """What :func:`nearest_across` found: ``across`` of ``of`` held-out images have their closest image in
    training; ``blind`` is the share a split blind to related images gives (training's share of the
    other images), the value of a leaking split."""
    across: int
    of: int
    blind: float


def _pixel_features(images: Tensor, side: int) -> Tensor:
    """(N, [C,] H, W) -> (N, D): gray, average-pooled to at most ``side`` px, centred, unit length."""
    x = images.detach().cpu().float()
    x = x.mean(1, keepdim=True) if x.ndim == 4 else x[:, None]
    return centred_unit(F.adaptive_avg_pool2d(x, (min(side, x.shape[-2]), min(side, x.shape[-1]))))


def nearest_across(train_images: Tensor, held_images: Tensor, *, side: int = 32) -> NearestCheck:
    """How many held-out images have their most similar image in training rather than among the other
    held-out images: a leak measure that needs no file names, masks or groups.

    Similarity is the pixel correlation of the images in gray, average-pooled to ``side`` px. Photographs
    of one object (one tile under other lightings) resemble each other more than other objects, so a split
    that keeps objects together finds each held-out image's closest match in its own part, and few across;
    a split blind to them finds it in training as often as training holds the other images
    (``blind``, about 0.6 for a 60/40 split). A tie counts as across. Compare ``across / of`` with
    ``blind``.

    Shape:
        (T, [C,] H, W), (M, [C,] H, W) -> NearestCheck
    """
    if len(held_images) < 2 or len(train_images) < 1:
        raise ValueError(f"need a training image and two held-out images, got {len(train_images)} and "
                         f"{len(held_images)}")
    if train_images.shape[1:] != held_images.shape[1:]:
        raise ValueError(f"training images {tuple(train_images.shape[1:])} and held-out images "
                         f"{tuple(held_images.shape[1:])} must have one shape")
    train, held = _pixel_features(train_images, side), _pixel_features(held_images, side)
    to_train = (held @ train.T).amax(1)  # (M,)
    within = held @ held.T  # (M, M)
    within.fill_diagonal_(-math.inf)
    across = int((to_train >= within.amax(1)).sum())
    return NearestCheck(across, len(held), len(train) / (len(train) + len(held) - 1))


# A binary detector -----------------------------------------------------------------------------
def _check_scores(scores: Tensor, positives: Tensor) -> tuple[Tensor, Tensor]:
    s, p = scores.detach().cpu().double().flatten(), positives.detach().cpu().bool().flatten()
    if s.shape != p.shape:
        raise ValueError(f"scores ({len(s)}) and positives ({len(p)}) must have one entry per image")
    if not torch.isfinite(s).all():
        raise ValueError("scores must be finite: a NaN score cannot be ranked")
    if p.all() or not p.any():
        raise ValueError(f"a curve needs positives and negatives, got {int(p.sum())} positives of {len(p)}")
    return s, p


def pr_curve(scores: Tensor, positives: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(precision, recall, thresholds)`` at every distinct score, highest threshold first; an image is
    flagged when its score is at least the threshold.

    Shape:
        (N,), (N,) -> (T,), (T,), (T,)
    """
    s, p = _check_scores(scores, positives)
    thresholds = s.unique().flip(0)  # descending
    flagged = s[None] >= thresholds[:, None]  # (T, N)
    tp = (flagged & p).sum(1).double()
    return tp / flagged.sum(1), tp / p.sum(), thresholds


def roc_auc(scores: Tensor, positives: Tensor) -> float:
    """The chance that a random defect scores above a random defect-free image (ties count half): the
    area under the ROC curve. 0.5 for a detector that knows nothing."""
    s, p = _check_scores(scores, positives)
    pos, neg = s[p], s[~p]
    above = (pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()
    return above.mean().item()


def average_precision(scores: Tensor, positives: Tensor) -> float:
    """The precision averaged over the recall levels of the curve, ``sum_t (R_t - R_{t-1}) P_t``; a
    detector that knows nothing gets the share of positives."""
    precision, recall, _ = pr_curve(scores, positives)
    steps = torch.diff(recall, prepend=torch.zeros(1, dtype=recall.dtype))
    return (steps * precision).sum().item()


def threshold_for_recall(scores: Tensor, positives: Tensor, recall: float = 0.95) -> float:
    """The highest threshold that flags at least ``recall`` of the positives (scores >= threshold)."""
    if not 0 < recall <= 1:
        raise ValueError(f"recall must be a share in (0, 1], got {recall}")
    s, p = _check_scores(scores, positives)
    ranked = s[p].sort(descending=True).values
    return ranked[math.ceil(recall * len(ranked) - 1e-9) - 1].item()


def detection_report(scores: Tensor, positives: Tensor, threshold: float,
                     kinds: Tensor | None = None, num_kinds: int | None = None) -> dict:
    """What a threshold does: ``recall`` (defects caught), ``precision``, ``false_alarm_rate`` (share of
    defect-free images flagged), the counts, and with ``kinds`` (each image's class) ``kind_recall``, the
    share flagged per class (for a defect-free class: its false alarms)."""
    s, p = _check_scores(scores, positives)
    flag = s >= threshold
    tp, fp = int((flag & p).sum()), int((flag & ~p).sum())
    fn, tn = int((~flag & p).sum()), int((~flag & ~p).sum())
    report = {"recall": tp / (tp + fn), "precision": tp / max(tp + fp, 1), "false_alarm_rate": fp / (fp + tn),
              "accuracy": (tp + tn) / len(s), "tp": tp, "fp": fp, "fn": fn, "tn": tn}
    if kinds is not None:
        k = kinds.cpu().long()
        count = torch.bincount(k, minlength=num_kinds or 0).double()
        hits = torch.bincount(k[flag], minlength=len(count)).double()
        report["kind_recall"] = hits / count.clamp(min=1)
    return report


# Imbalance -------------------------------------------------------------------------------------
def focal_loss(gamma: float = 2.0):
    """A ``loss_fn(output, targets, images)`` for :func:`~vit_from_scratch.training.fit`: the focal loss
    (Lin et al., 2017), ``-sum_k t_k (1 - p_k)^gamma log p_k``, which shrinks the loss of images the model
    already gets right, the many easy majority ones. ``gamma = 0`` is the cross-entropy."""
    if gamma < 0:
        raise ValueError(f"gamma must be 0 or more, got {gamma}")

    def loss_fn(output, targets: Tensor, images: Tensor) -> Tensor:
        logits = output[0] if isinstance(output, (tuple, list)) else output
        log_p = F.log_softmax(logits.float(), dim=-1)
        return -(targets * (1 - log_p.exp()).pow(gamma) * log_p).sum(-1).mean()

    return loss_fn


def balanced_resample(data: ImageSet, *, seed: int = 0) -> ImageSet:
    """As many images as ``data``, every class an equal share: a class larger than its share is sampled
    without replacement, a smaller one repeated (with replacement), so a shuffled epoch shows the classes
    equally often and has the same number of steps as one over ``data``."""
    k = len(data.classes)
    counts = torch.bincount(data.labels.cpu(), minlength=k)
    if (counts == 0).any():
        raise ValueError(f"class(es) {torch.nonzero(counts == 0).flatten().tolist()} have no images to resample")
    generator = torch.Generator().manual_seed(seed)
    share = [len(data) // k + (c < len(data) % k) for c in range(k)]
    picks = []
    for c in range(k):
        members = torch.nonzero(data.labels.cpu() == c).flatten()
        if share[c] <= len(members):
            picks.append(members[torch.randperm(len(members), generator=generator)[:share[c]]])
        else:
            picks.append(members[torch.randint(len(members), (share[c],), generator=generator)])
    index = torch.cat(picks)
    return ImageSet(data.images[index], data.labels[index], data.classes, data.source + " (class-balanced resample)")


# Intervals -------------------------------------------------------------------------------------
def bootstrap_interval(values: Tensor, *, level: float = 0.95, samples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval for the mean of ``values`` (NaNs left out): resample the values
    with replacement ``samples`` times and take the central ``level`` of the resampled means."""
    v = values.detach().cpu().double().flatten()
    v = v[~torch.isnan(v)]
    if len(v) < 2:
        raise ValueError(f"a bootstrap needs at least two values, got {len(v)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    generator = torch.Generator().manual_seed(seed)
    means = v[torch.randint(len(v), (samples, len(v)), generator=generator)].mean(1)
    low, high = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=means.dtype))
    return low.item(), high.item()
