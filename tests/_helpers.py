"""Helpers shared by the unit tests."""

import torch
import torch.nn.functional as F
from torch import nn


def randomise(module: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """Give every parameter random values (LayerNorm scales around 1), so that zero biases, unit norms
    and the zero-initialised head cannot hide a mistake."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_norm_scale = "norm" in name and name.endswith("weight")
            p.copy_(scale * torch.randn(p.shape, generator=g) + (1.0 if is_norm_scale else 0.0))
    return module


def fit_one_batch(model: nn.Module, x, y, *, lr: float, steps: int) -> list[float]:
    """Train ``model`` on one fixed batch with AdamW; the loss of every step (a model that can learn
    drives it well below its start)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
