"""Chapter 9: learning curves, accuracy against the amount of training data, read with seeds.

Two pieces the chapter's data sweep needs. :func:`nested_subsets` cuts training sets of growing size
from one data set so that every smaller set lies inside every larger one and each keeps the classes
in proportion: a curve then changes only by the images added, not by a new draw. :func:`compare_seeds`
compares two arms (e.g. a ViT and a CNN, or a recipe and its reference) trained with several seeds:
a difference of the means counts only when it exceeds the seeds' spread (and, if given, two standard
errors of a difference of two accuracies measured on ``n_images`` images). :func:`epochs_for_steps`
gives every set size the same number of optimiser steps, so that a curve does not mix the amount of data
with the amount of training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from dataclasses import dataclass

import torch
from torch import Tensor

from .data import ImageSet

__all__ = ["Comparison", "accuracy_interval", "compare_seeds", "epochs_for_steps", "nested_subsets", "stratified_order"]


def stratified_order(labels: Tensor, *, seed: int = 0) -> Tensor:
    """A seeded permutation of ``range(len(labels))`` whose every prefix keeps the classes in proportion.

    Each class is shuffled on its own; its ``r``-th image gets the key ``(r + 1/2) / n_c`` (``n_c``
    the class's size), and the images are sorted by key (ties by class index). The first ``n`` images
    then hold each class's share of ``n``, to within one image when the classes are equally large.
    """
    labels = labels.cpu()
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty 1-D tensor of class indices, got shape {tuple(labels.shape)}")
    generator = torch.Generator().manual_seed(seed)
    keys = torch.empty(len(labels), dtype=torch.float64)
    for c in labels.unique().tolist():
        members = torch.nonzero(labels == c).flatten()
        shuffled = members[torch.randperm(len(members), generator=generator)]
        keys[shuffled] = (torch.arange(len(members), dtype=torch.float64) + 0.5) / len(members)
    by_class = torch.argsort(labels, stable=True)  # ties in key: the lower class first
    return by_class[torch.argsort(keys[by_class], stable=True)]


def nested_subsets(data: ImageSet, sizes: Sequence[int], *, seed: int = 0) -> dict[int, ImageSet]:
    """``{n: the first n images of data's stratified order}`` for each size: nested and class-balanced.

    Every smaller subset lies inside every larger one (the same ``seed`` gives the same images), so a
    learning curve differs from point to point only by the images added.
    """
    sizes = [int(n) for n in sizes]
    if not sizes or min(sizes) < 1 or max(sizes) > len(data):
        raise ValueError(f"sizes must be between 1 and the {len(data)} images available, got {sizes}")
    order = stratified_order(data.labels, seed=seed)
    return {n: ImageSet(data.images[order[:n]], data.labels[order[:n]], data.classes,
                        data.source + f" (nested subset of {n}, seed {seed})") for n in sorted(sizes)}


def epochs_for_steps(sizes: Sequence[int], steps: int, batch_size: int) -> dict[int, int]:
    """``{n: epochs}`` such that a training set of ``n`` images gets exactly ``steps`` optimiser steps.

    An epoch of ``n`` images at ``batch_size`` is ``n // batch_size`` steps: ``fit``'s training loader
    drops the last, incomplete batch. Every size must divide ``steps`` into whole epochs.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    epochs = {}
    for n in sorted(int(n) for n in sizes):
        per_epoch = n // batch_size
        if per_epoch < 1:
            raise ValueError(f"{n} images make no full batch of {batch_size}, and fit's training loader drops "
                             "an incomplete batch; use at least batch_size images or a smaller batch")
        if steps % per_epoch:
            raise ValueError(f"{n} images at batch {batch_size} make {per_epoch} steps per epoch, which does not "
                             f"divide {steps} steps into whole epochs; choose steps as a multiple of the steps "
                             "per epoch of every size (e.g. sizes that are multiples of the batch size)")
        epochs[n] = steps // per_epoch
    return epochs


@dataclass(frozen=True)
class Comparison:
    """Arm ``a`` against arm ``b``: the difference of their mean accuracies and the noise it must beat."""

    mean_a: float
    mean_b: float
    noise: float

    @property
    def difference(self) -> float:
        """``mean(a) - mean(b)``."""
        return self.mean_a - self.mean_b

    @property
    def verdict(self) -> str:
        """``"higher"`` or ``"lower"`` when the difference exceeds the noise, else ``"within noise"``."""
        if abs(self.difference) <= self.noise:
            return "within noise"
        return "higher" if self.difference > 0 else "lower"

    def phrase(self, other: str) -> str:
        """The verdict in words against ``other`` (what arm ``b`` is), for generated sentences:
        ``"2.1 points higher than other (noise 1.8)"`` or ``"within noise of other (+0.3 points, noise 1.8)"``."""
        if self.verdict == "within noise":
            return f"within noise of {other} ({100 * self.difference:+.1f} points, noise {100 * self.noise:.1f})"
        return f"{100 * abs(self.difference):.1f} points {self.verdict} than {other} (noise {100 * self.noise:.1f})"


def compare_seeds(a: Sequence[float], b: Sequence[float], *, n_images: int | None = None) -> Comparison:
    """Compare two arms' accuracies, one per seed (at least two seeds each).

    The noise is the larger of the two arms' spreads (max - min over seeds). With ``n_images`` (the
    number of evaluation images) it is at least two standard errors of a difference of two independent
    accuracies, ``2 sqrt(p_a (1 - p_a) / n + p_b (1 - p_b) / n)``, a floor for when the seeds happen to
    agree.
    """
    a, b = [float(x) for x in a], [float(x) for x in b]
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"each arm needs at least two seeds to measure its spread, got {len(a)} and {len(b)}")
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    noise = max(max(a) - min(a), max(b) - min(b))
    if n_images is not None:
        if n_images < 1:
            raise ValueError(f"n_images must be a positive count of evaluation images, got {n_images}")
        se = math.sqrt((mean_a * (1 - mean_a) + mean_b * (1 - mean_b)) / n_images)
        noise = max(noise, 2 * se)
    return Comparison(mean_a, mean_b, noise)


def accuracy_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of an accuracy, ``correct`` right out of ``n`` images.

    It is what ``n`` test images can say about the accuracy on every image like them: the images vary,
    the model is fixed (a second seed varies the model, which this interval does not cover). Unlike
    ``p +- z sqrt(p (1 - p) / n)`` it stays inside [0, 1] and is not zero-width at 0 or ``n`` right.
    """
    if n < 1 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n and n >= 1 (counts of images), got correct={correct}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence is a probability strictly between 0 and 1, e.g. 0.95; got {confidence}")
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    p, z2 = correct / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)
