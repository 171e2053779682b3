"""A tiny ViT with random weights everywhere, and images for it: shared by the attention-map tests."""

import torch

from vit_from_scratch.model import VisionTransformer

TINY = dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=3, num_heads=2)


def tiny_model(pool="cls", **overrides):
    torch.manual_seed(0)
    model = VisionTransformer(**{**TINY, "pool": pool, **overrides}).eval()
    with torch.no_grad():  # random, non-zero weights everywhere so every path matters
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def images(batch=3):
    return torch.rand(batch, 3, TINY["image_size"], TINY["image_size"], generator=torch.Generator().manual_seed(1))
