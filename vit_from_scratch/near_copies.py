"""Chapter 6: near-copies across splits. A held-out image whose near-copy (the same photograph again,
re-encoded or re-exposed) is among the training images is not new to the model; a split leaks when its
held-out images have such copies more often than images collected apart from the training images do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["centred_unit", "nearest_similarity"]


def centred_unit(images: Tensor) -> Tensor:
    """Each image as one vector: its pixels minus their mean, scaled to length 1, so that the dot product
    of two is the cosine of their patterns, blind to brightness and contrast.

    Shape:
        (n, ...) -> (n, D) float32
    """
    x = images.reshape(len(images), -1).float()
    return F.normalize(x - x.mean(dim=1, keepdim=True), dim=1)


def nearest_similarity(query: Tensor, reference: Tensor, *, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """For every query image, its most similar reference image: ``(similarity, index)``.

    The similarity is the cosine between the two images' pixels after each image's own mean is
    subtracted: 1 for the same picture, also when one copy is brighter or has more contrast; near 0 for
    unrelated pictures. It finds near-copies across splits (the same photograph twice, re-encoded or
    re-exposed): a held-out set leaks when its images have near-copies among the training images more
    often than images collected apart from them do. An image of one flat colour has no pattern to match:
    its similarity is 0 to everything.

    Shape:
        query (n, C, H, W), reference (m, C, H, W), any dtype -> similarity (n,) float32, index (n,) int64
    """
    if query.ndim != 4 or reference.ndim != 4 or query.shape[1:] != reference.shape[1:]:
        raise ValueError(f"query and reference must be image batches (n, C, H, W) of one image shape, got "
                         f"{tuple(query.shape)} and {tuple(reference.shape)}")
    if len(query) == 0 or len(reference) == 0:
        raise ValueError(f"need at least one query and one reference image, got {len(query)} and {len(reference)}")
    q = centred_unit(query)  # (n, D)
    best = torch.full((len(q),), -2.0)
    where = torch.zeros(len(q), dtype=torch.int64)
    for start in range(0, len(reference), chunk):
        r = centred_unit(reference[start:start + chunk])  # (k, D)
        for q_start in range(0, len(q), chunk):
            sim = q[q_start:q_start + chunk] @ r.T  # (c, k)
            value, index = sim.max(dim=1)
            better = value > best[q_start:q_start + chunk]
            best[q_start:q_start + chunk][better] = value[better]
            where[q_start:q_start + chunk][better] = index[better] + start
    return best, where
