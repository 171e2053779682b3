"""Chapter 12: linear probing — what a frozen encoder's features already say about the labels.

The encoder is run once over the images (no gradients); a linear classifier is then trained on the
pooled features, standardised with the training features' mean and standard deviation (the role of
the MAE paper's BatchNorm without affine parameters before the linear head).

Letters: n images, D feature width, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import ImageSet
from .loaders import make_loader
from .model import VisionTransformer
from .runtime import seed_offset

__all__ = ["extract_features", "LinearProbe", "fit_linear_probe", "probe_accuracy"]


@torch.no_grad()
def extract_features(model: VisionTransformer, data: ImageSet, *, mean: Sequence[float], std: Sequence[float],
                     batch_size: int = 500, device: torch.device | str | None = None) -> Tensor:
    """The head's input for every image (the pooled, normalised token), with the model frozen.

    Shape:
        images (n, C, H, W) -> (n, D)
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = make_loader(data, batch_size, train=False, mean=mean, std=std, device=device)
    features = [model.forward_head(model.forward_features(x), pre_logits=True).float().cpu() for x, _ in loader]
    model.train(was_training)
    return torch.cat(features)


class LinearProbe(nn.Module):
    """Standardise the features with fixed statistics, then one linear layer.

    Shape:
        (n, D) -> (n, K)
    """

    def __init__(self, mean: Tensor, std: Tensor, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(mean.numel(), num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear((features - self.mean) / self.std)


def fit_linear_probe(features: Tensor, labels: Tensor, num_classes: int, *, steps: int = 300, lr: float = 0.01,
                     weight_decay: float = 1e-4, seed: int = 0) -> LinearProbe:
    """Train a :class:`LinearProbe` on frozen features: full-batch AdamW on the cross-entropy, ``steps``
    steps with a cosine decay of ``lr`` (a convex problem; the encoder is not touched)."""
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"expected features (n, D) and labels (n,), got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}")
    torch.manual_seed(seed + seed_offset())  # VIT_SEED shifts it in a stress run; 0 by default
    probe = LinearProbe(features.mean(0), features.std(0) + 1e-6, num_classes)
    optimizer = torch.optim.AdamW(probe.linear.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        loss = F.cross_entropy(probe(features), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return probe.eval()


@torch.no_grad()
def probe_accuracy(probe: LinearProbe, features: Tensor, labels: Tensor) -> float:
    """Share of ``labels`` that the probe predicts from ``features``."""
    return (probe(features).argmax(1) == labels).float().mean().item()
