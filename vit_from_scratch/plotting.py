"""Image plotting helpers shared by the chapters."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

__all__ = ["to_numpy_image", "show_image", "draw_patch_grid", "show_patch_tokens"]


def to_numpy_image(image: Tensor | np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W, C) tensor/array -> (H, W, C) float array clipped to [0, 1].

    Floats are taken to be in [0, 1]; integers (uint8 pixels) in [0, 255].
    """
    if isinstance(image, Tensor):
        scale = 255.0 if not (image.is_floating_point() or image.dtype == torch.bool) else 1.0
        image = image.detach().cpu().float() / scale
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    elif np.issubdtype(np.asarray(image).dtype, np.integer):
        image = np.asarray(image, dtype=np.float32) / 255.0
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return np.clip(image, 0.0, 1.0)


def show_image(image: Tensor | np.ndarray, ax: plt.Axes | None = None, title: str | None = None) -> plt.Axes:
    """Show one image without axes ticks."""
    ax = ax if ax is not None else plt.gca()
    ax.imshow(to_numpy_image(image), cmap="gray" if to_numpy_image(image).ndim == 2 else None)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return ax


def draw_patch_grid(image: Tensor | np.ndarray, patch_size: int, ax: plt.Axes | None = None,
                    title: str | None = None, numbers: bool = True, color: str = "white",
                    fontsize: float = 6) -> plt.Axes:
    """Show an image with its patch grid drawn on top, each patch numbered in token order.

    The numbers are drawn at ``fontsize`` points; a figure that gives each patch more room can
    afford larger ones.
    """
    if fontsize <= 0:
        raise ValueError(f"fontsize={fontsize}: the numbers need a positive size in points")
    ax = show_image(image, ax, title)
    H, W = to_numpy_image(image).shape[:2]
    for y in range(0, H + 1, patch_size):
        ax.axhline(y - 0.5, color=color, lw=0.8)
    for x in range(0, W + 1, patch_size):
        ax.axvline(x - 0.5, color=color, lw=0.8)
    if numbers and (H // patch_size) * (W // patch_size) <= 256:
        for i in range(H // patch_size):
            for j in range(W // patch_size):
                ax.text(j * patch_size + 2, i * patch_size + 2, str(i * (W // patch_size) + j),
                        color=color, fontsize=fontsize, va="top", ha="left",
                        bbox=dict(facecolor="black", alpha=0.4, pad=0.5, lw=0))
    return ax


def show_patch_tokens(patches: Tensor, patch_size: int, count: int | None = None,
                      fig: plt.Figure | None = None, title: str | None = None,
                      per_row: int = 14) -> plt.Figure:
    """Lay flattened patches (N, C*P*P) out as a sequence: one small image per token, left to right,
    ``per_row`` tokens to a row (14, one row of a 224-pixel image's grid of 16-pixel patches)."""
    N = patches.shape[0] if count is None else min(count, patches.shape[0])
    if per_row < 1:
        raise ValueError(f"per_row={per_row}: need at least one token per row")
    C = patches.shape[1] // (patch_size * patch_size)
    cols, rows = min(N, per_row), -(-N // per_row)
    fig = fig if fig is not None else plt.figure(figsize=(cols * 0.8, rows * 1.0 + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for n, ax in enumerate(axes.flat):
        if n >= N:
            ax.axis("off")
            continue
        show_image(patches[n].reshape(C, patch_size, patch_size), ax)
        ax.set_xlabel(str(n), fontsize=9, labelpad=1)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
