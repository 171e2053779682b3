"""Chapter 12: using a pretrained encoder — the paper's learning-rate rule, fine-tuning with layer-wise
learning-rate decay, and the probes a pretrained encoder is compared with (raw pixels, kNN).

MAE (He et al., 2022) scales every learning rate with the batch, ``lr = base_lr · batch / 256``, and
fine-tunes with *layer-wise learning-rate decay*: the head and the final norm learn at the full rate, the
last block at ``layer_decay`` times it, each block below at ``layer_decay`` times the rate of the block
above it, the patch embedding, class token and positions at the lowest; early layers, which pretraining made most general, move least.

Letters: n images, D feature width, K classes, k neighbours.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import ImageSet, normalize
from .loaders import make_loader
from .model import VisionTransformer
from .probe import fit_linear_probe, probe_accuracy
from .recipe import TrainConfig, warmup_cosine

__all__ = ["scaled_lr", "layer_id", "layer_decay_groups", "FinetuneResult", "finetune", "pixel_features",
           "knn_accuracy", "probe_scores"]


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The paper's rule: ``lr = base_lr · batch_size / 256`` (He et al., 2022, appendix A.1)."""
    if base_lr <= 0 or batch_size < 1:
        raise ValueError(f"need base_lr > 0 and batch_size >= 1, got {base_lr} and {batch_size}")
    return base_lr * batch_size / 256


def layer_id(name: str, depth: int) -> int:
    """Which layer a :class:`VisionTransformer` parameter belongs to: 0 for the embeddings (patch
    embedding, class token, positions), ``i + 1`` for ``blocks.i``, ``depth + 1`` for the final norm and head."""
    if name.startswith(("patch_embed", "cls_token", "pos_embed", "reg_token", "dist_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_decay_groups(model: VisionTransformer, *, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW parameter groups with a learning-rate scale per layer, ``layer_decay ** (depth + 1 - layer)``,
    and weight decay on matrices only (not on norms, biases, positions or the class token, as chapter 6).
    ``layer_decay = 1`` gives every layer the full rate (training from scratch)."""
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1] (1: no decay; the paper uses 0.75), got {layer_decay}")
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"layer_decay_groups needs a VisionTransformer (it reads blocks.i), got {type(model).__name__}")
    depth = model.config.depth
    skip = set(model.no_weight_decay())
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer, decay = layer_id(name, depth), p.ndim > 1 and name not in skip
        group = groups.setdefault((layer, decay), {
            "params": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": layer_decay ** (depth + 1 - layer), "layer": layer})
        group["params"].append(p)
    return [groups[key] for key in sorted(groups)]


class FinetuneResult(NamedTuple):
    """The trained model, its loss per step (averaged over each ``log_every`` steps), steps and images seen."""

    model: VisionTransformer
    losses: list[float]
    steps: int
    images_seen: int
    seconds: float


def finetune(model: VisionTransformer, data: ImageSet, config: TrainConfig, *, steps: int, layer_decay: float = 1.0,
             mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu") -> FinetuneResult:
    """Train every weight of ``model`` on ``data``'s labelled images for exactly ``steps`` optimiser steps.

    The batches cycle through ``data`` (a new random order each pass) until ``steps · batch_size`` images
    have been seen, whatever the size of ``data``: arms with 10% and 100% of the labels see the same number
    of images. AdamW over :func:`layer_decay_groups`, a warmup (``config.warmup_epochs`` read as a share of
    the steps, e.g. 0.05) and cosine to ``min_lr``; cross-entropy with ``label_smoothing``; random crops
    (``padding``) and flips; ``grad_clip``. ``config.lr``, ``betas``, ``weight_decay``, ``batch_size`` and
    ``seed`` are read too.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if len(data) < config.batch_size:
        raise ValueError(f"{len(data)} labelled images are fewer than one batch of {config.batch_size}; "
                         "use a smaller batch_size or more labels")
    if not 0 <= config.warmup_epochs < 1:
        raise ValueError(f"finetune reads warmup_epochs as a share of the steps, in [0, 1), got {config.warmup_epochs}")
    device = torch.device(device)
    model.to(device).train()
    groups = layer_decay_groups(model, weight_decay=config.weight_decay, layer_decay=layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)
    warmup = max(1, round(config.warmup_epochs * steps))
    loader = make_loader(data, config.batch_size, train=True, mean=mean, std=std, device=device,
                         padding=config.padding, flip=config.flip, seed=config.seed)
    losses, step, t0 = [], 0, time.perf_counter()
    while step < steps:
        for images, labels in loader:
            lr = warmup_cosine(step, total_steps=steps, warmup_steps=warmup, lr=config.lr, min_lr=config.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            loss = F.cross_entropy(model(images), labels, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if step == steps:
                break
    if not all(map(torch.isfinite, torch.tensor(losses))):
        raise FloatingPointError(f"the fine-tuning loss became non-finite; try a lower lr than {config.lr}")
    return FinetuneResult(model.eval(), losses, steps, steps * config.batch_size, time.perf_counter() - t0)


def pixel_features(data: ImageSet, *, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """The raw-pixel baseline's features: every image's normalised pixels, flattened.

    Shape:
        images (n, C, H, W) -> (n, C·H·W)
    """
    return normalize(data.images, mean, std).flatten(1)


@torch.no_grad()
def knn_accuracy(train_features: Tensor, train_labels: Tensor, features: Tensor, labels: Tensor, *,
                 k: int = 20, temperature: float = 0.07, num_classes: int | None = None,
                 chunk: int = 1000) -> float:
    """Weighted k-nearest-neighbour accuracy on cosine similarity, as DINO's kNN evaluation (Caron et al., 2021).

    Every image votes for its ``k`` most similar training images' classes with weight
    ``exp(similarity / temperature)``; the class with the largest vote is the prediction.

    Shape:
        (n_train, D), (n_train,), (n, D), (n,) -> ()
    """
    if train_features.ndim != 2 or features.ndim != 2 or train_features.shape[1] != features.shape[1]:
        raise ValueError(f"expected features (n_train, D) and (n, D) of one width, got "
                         f"{tuple(train_features.shape)} and {tuple(features.shape)}")
    if not 1 <= k <= len(train_features):
        raise ValueError(f"k must be from 1 to the {len(train_features)} training images, got {k}")
    K = num_classes or int(train_labels.max()) + 1
    bank = F.normalize(train_features.float(), dim=1)  # (n_train, D)
    correct = 0
    for part, truth in zip(F.normalize(features.float(), dim=1).split(chunk), labels.split(chunk)):
        similarity, index = (part @ bank.T).topk(k, dim=1)  # (c, k)
        votes = torch.zeros(len(part), K).scatter_add_(1, train_labels[index], (similarity / temperature).exp())
        correct += (votes.argmax(1) == truth).sum().item()
    return correct / len(features)


def probe_scores(train_features: Tensor, train_labels: Tensor, features: Tensor, labels: Tensor, *,
                 num_classes: int, seed: int = 0, k: int = 20) -> dict[str, float]:
    """A frozen encoder's two probes on the same features: a linear classifier
    (:func:`~vit_from_scratch.probe.fit_linear_probe`, deterministic for a ``seed``) and :func:`knn_accuracy`."""
    probe = fit_linear_probe(train_features, train_labels, num_classes, seed=seed)
    return {"linear": probe_accuracy(probe, features, labels),
            "kNN": knn_accuracy(train_features, train_labels, features, labels, k=min(k, len(train_features)),
                                num_classes=num_classes)}
