"""Chapter 13: putting a trained ViT to work on new images, and checking where it looks.

* Transfer: the shipped CIFAR-10 ViT with a new head for the new classes, at a new resolution when the
  images need one (the position embedding interpolated by :func:`~vit_from_scratch.model.to_resolution`),
  and optionally all but its last blocks frozen.
* Imbalanced classes: the confusion matrix and what it gives that plain accuracy hides (per-class recall,
  balanced accuracy, macro-F1), and a class-weighted cross-entropy for :func:`~vit_from_scratch.training.fit`.
* Localisation: does a patch-level map (an attention map) fall on a pixel-level mask? The pointing game
  and the attention mass inside the mask, each beside what a map that knows nothing scores.

Letters: B images, K classes, (h, w) the patch grid, H/W image height and width.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoints import load_trained_model
from .data import ImageSet
from .model import VisionTransformer, to_resolution

__all__ = ["transfer_model", "freeze_all_but", "transfer_cnn", "equal_steps_set", "confusion_matrix", "class_report", "class_weights",
           "weighted_cross_entropy", "patch_fractions", "Localisation", "pointing_game", "mass_inside"]


# Transfer --------------------------------------------------------------------------------------
def freeze_all_but(model: VisionTransformer, trainable_blocks: int) -> VisionTransformer:
    """Freeze everything except the last ``trainable_blocks`` encoder blocks, the final norm and the head
    (``0``: only the head and norm learn, a linear probe on the trained features). Returns ``model``."""
    blocks = list(model.blocks)  # the Encoder is a sequence of blocks
    depth = len(blocks)
    if not 0 <= trainable_blocks <= depth:
        raise ValueError(f"trainable_blocks must be between 0 and the depth {depth}, got {trainable_blocks}")
    for p in model.parameters():
        p.requires_grad_(False)
    for part in [*blocks[depth - trainable_blocks:], model.norm, model.fc_norm, model.head]:
        for p in part.parameters():
            p.requires_grad_(True)
    return model


def transfer_model(num_classes: int, *, image_size: int | None = None, trainable_blocks: int | None = None,
                   name: str = "cifar10_vit", device: torch.device | str = "cpu") -> VisionTransformer:
    """The shipped trained ViT (``name``) with a new, zero-initialised head of ``num_classes`` outputs.

    Args:
        image_size: move the model to this many pixels (position embedding interpolated); ``None``: keep
            the size it was trained at.
        trainable_blocks: ``None`` fine-tunes everything; ``k`` freezes all but the last ``k`` blocks, the
            final norm and the head (:func:`freeze_all_but`).

    The zero head makes every class equally likely at the start (loss ``ln K``), as a fresh model's head.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    model, _ = load_trained_model(name, device=device)
    if image_size is not None and image_size != model.config.image_size:
        model = to_resolution(model, image_size)
    model.head = nn.Linear(model.config.dim, num_classes).to(next(model.parameters()).device)
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    model.config = replace(model.config, num_classes=num_classes)
    model.train()
    return freeze_all_but(model, trainable_blocks) if trainable_blocks is not None else model


def transfer_cnn(pretrained: nn.Module, num_classes: int) -> nn.Module:
    """A copy of a trained CNN (anything with a ``head`` ``nn.Linear``, e.g. chapter 9's ``SmallResNet``)
    with a new zero-initialised head of ``num_classes`` outputs, as :func:`transfer_model` gives the ViT.
    The original is left untouched."""
    head = getattr(pretrained, "head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"expected a model whose .head is an nn.Linear (e.g. SmallResNet), got {type(head).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    model = copy.deepcopy(pretrained)
    model.head = nn.Linear(head.in_features, num_classes).to(head.weight.device)
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return model.train()


def equal_steps_set(data: ImageSet, steps: int, batch_size: int, *, seed: int = 0) -> ImageSet:
    """Exactly ``steps * batch_size`` images drawn from ``data``: whole shuffled passes over it (each pass a
    new order), the last one cut short. One epoch over the result is ``steps`` steps whatever the size of
    ``data``, so a small labelled set and a large one train for the same number of steps with a schedule
    that runs to its end (a small set is seen many times, a large one maybe only in part)."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    need = steps * batch_size
    passes = -(-need // len(data))  # ceil
    index = torch.cat([torch.randperm(len(data), generator=generator) for _ in range(passes)])[:need]
    return ImageSet(data.images[index], data.labels[index], data.classes,
                    data.source + f" ({steps} steps of {batch_size})")


# Imbalanced classes ----------------------------------------------------------------------------
def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Counts ``[true class, predicted class]``.

    Shape:
        (B,), (B,) -> (K, K), int64
    """
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape")
    index = labels.long().cpu() * num_classes + predictions.long().cpu()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def class_report(matrix: Tensor) -> dict[str, Tensor | float]:
    """What a confusion matrix says: ``recall`` and ``precision`` per class, ``accuracy``,
    ``balanced_accuracy`` (the mean recall, chance = 1/K whatever the imbalance) and ``macro_f1``.
    A class that never occurs (or is never predicted) counts 0 in its recall (precision)."""
    m = matrix.double()
    true_positive = m.diagonal()
    recall = true_positive / m.sum(dim=1).clamp(min=1)  # per true class (rows)
    precision = true_positive / m.sum(dim=0).clamp(min=1)  # per predicted class (columns)
    f1 = torch.where(recall + precision > 0, 2 * recall * precision / (recall + precision).clamp(min=1e-12),
                     torch.zeros_like(recall))
    return {"recall": recall, "precision": precision, "accuracy": (true_positive.sum() / m.sum()).item(),
            "balanced_accuracy": recall.mean().item(), "macro_f1": f1.mean().item()}


def class_weights(labels: Tensor, num_classes: int) -> Tensor:
    """Inverse-frequency weights ``n / (K * n_k)``: every class carries the same total weight, and a
    balanced data set gets weight 1 everywhere."""
    counts = torch.bincount(labels.cpu(), minlength=num_classes).double()
    if (counts == 0).any():
        raise ValueError(f"class(es) {torch.nonzero(counts == 0).flatten().tolist()} have no images to weight")
    return (counts.sum() / (num_classes * counts)).float()


def weighted_cross_entropy(weights: Tensor | None, *, label_smoothing: float = 0.0):
    """A ``loss_fn(output, targets, images)`` for :func:`~vit_from_scratch.training.fit`: cross-entropy
    with per-class ``weights`` (``None``: unweighted), each image's loss times its class's weight,
    averaged over the batch. ``targets`` are the (soft) class distributions ``fit`` passes; with
    :func:`class_weights` the weights average to 1 over the training set, so the loss keeps its scale."""

    def loss_fn(output, targets: Tensor, images: Tensor) -> Tensor:
        logits = output[0] if isinstance(output, (tuple, list)) else output
        w = (torch.ones(targets.shape[-1], device=targets.device) if weights is None
             else weights.to(targets.device))
        return F.cross_entropy(logits.float(), targets, weight=w, label_smoothing=label_smoothing)

    return loss_fn


# Localisation ----------------------------------------------------------------------------------
class Localisation(NamedTuple):
    """Per-image ``score`` of a map against a mask, and ``chance``: the score a map that knows nothing
    of the image gets on average (a uniform map, or a patch drawn at random)."""

    score: Tensor
    chance: Tensor


def patch_fractions(masks: Tensor, grid_size: tuple[int, int]) -> Tensor:
    """The share of each patch covered by the mask: the mask (values in 0..1, or uint8 0..255) averaged
    over the pixels of every patch; the patches must tile the image exactly.

    Shape:
        (B, H, W) or (B, 1, H, W) -> (B, h, w), values in [0, 1]
    """
    m = masks.float() / 255 if masks.dtype == torch.uint8 else masks.float()
    m = m[:, 0] if m.ndim == 4 else m  # (B, 1, H, W) -> (B, H, W)
    (h, w), (H, W) = grid_size, m.shape[-2:]
    if H % h or W % w:
        raise ValueError(f"a {h}x{w} patch grid does not tile {H}x{W} masks; resize the masks to the model's "
                         "image size first")
    return F.avg_pool2d(m[:, None], kernel_size=(H // h, W // w))[:, 0]  # (B, 1, H, W) -> (B, h, w)


def _check_maps(maps: Tensor, fractions: Tensor) -> None:
    if maps.shape != fractions.shape:
        raise ValueError(f"maps {tuple(maps.shape)} must lie on the masks' patch grid {tuple(fractions.shape)} "
                         "(B, h, w): lay token maps out with attention_maps.to_grid")
    if not torch.isfinite(maps).all():
        bad = torch.nonzero(~torch.isfinite(maps).flatten(1).all(1)).flatten().tolist()  # which maps
        raise ValueError(f"maps must be finite, but map(s) {bad} hold NaN or infinite values: a NaN map has no "
                         "answer to score; check how the maps were computed (e.g. a division by zero)")
    if (maps < 0).any():
        raise ValueError("maps must be non-negative (attention weights are)")


def pointing_game(maps: Tensor, masks: Tensor) -> Localisation:
    """Does the most-attended patch touch the defect? A hit when that patch holds any mask pixel; ties
    between maxima count as the share of them that hit.

    Chance: the share of patches that touch the mask (a patch drawn at random hits that often), i.e. the
    mask's area once enlarged to whole patches. Images with an empty mask get NaN. An all-zero map points
    nowhere in particular: all its patches tie, so it scores exactly chance (as a uniform map does, and as
    in :func:`mass_inside`). NaN or infinite maps are refused.

    Shape:
        maps (B, h, w), masks (B, [1,] H, W) -> score (B,), chance (B,)
    """
    fractions = patch_fractions(masks, tuple(maps.shape[-2:]))  # (B, h, w)
    _check_maps(maps, fractions)
    flat_maps, touched = maps.flatten(1).double(), (fractions.flatten(1) > 0).double()  # (B, N)
    top = (flat_maps == flat_maps.amax(dim=1, keepdim=True)).double()  # (B, N): the maxima
    score = (top * touched).sum(1) / top.sum(1)
    chance = touched.mean(1)
    empty = chance == 0
    return Localisation(score.masked_fill(empty, float("nan")), chance.masked_fill(empty, float("nan")))


def mass_inside(maps: Tensor, masks: Tensor) -> Localisation:
    """The share of a map's mass that lies on the defect, each patch counted by the share of it the
    mask covers: ``sum(map * fraction) / sum(map)``.

    Chance: a uniform map's share, which is the mask's area fraction. Images with an empty mask get NaN.
    An all-zero map has no mass to share out and is read as a uniform one, so it scores exactly chance (as
    in :func:`pointing_game`). NaN or infinite maps are refused.

    Shape:
        maps (B, h, w), masks (B, [1,] H, W) -> score (B,), chance (B,)
    """
    fractions = patch_fractions(masks, tuple(maps.shape[-2:]))  # (B, h, w)
    _check_maps(maps, fractions)
    flat_maps, flat_fractions = maps.flatten(1).double(), fractions.flatten(1).double()  # (B, N)
    blank = flat_maps.sum(1, keepdim=True) == 0  # (B, 1): all-zero maps, read as uniform
    flat_maps = torch.where(blank, torch.ones_like(flat_maps), flat_maps)
    score = (flat_maps * flat_fractions).sum(1) / flat_maps.sum(1)
    chance = flat_fractions.mean(1)
    empty = chance == 0
    return Localisation(score.masked_fill(empty, float("nan")), chance.masked_fill(empty, float("nan")))
