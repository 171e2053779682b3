"""Chapter 7, the pictures: attention maps over images, the gallery, Figure 7, the explorer.

Everything here draws what :mod:`vit_from_scratch.attention_maps` computes (that module never
imports matplotlib). Letters as there: B batch, L layers, nh heads, S tokens, N = h*w patches,
C channels, K components.
"""

from __future__ import annotations

import math
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from torch import Tensor

from .attention_maps import (FUSIONS, METHODS, Fusion, TokenLayout, attention_rollout, attention_view,
                             pooled_attention, rank_heads, to_grid, uniform_attention_distance,
                             upsample_maps)
from .plotting import show_image, to_numpy_image

__all__ = [
    "UNIFORM_UNITS", "as_uniform_multiple", "show_attention", "shared_colorbar", "show_view", "plot_gallery",
    "plot_mean_distance", "show_position_similarity", "show_filter_components", "attention_explorer",
]

UNIFORM_UNITS = "share of attention, × uniform"  # the colour bar's label for maps on a shared scale


def _check_batch(images: Tensor, weights: Tensor, titles: list[str]) -> None:
    """One image, one set of weights and one title per row of the batch."""
    if images.shape[0] != weights.shape[0] or len(titles) != weights.shape[0]:
        raise ValueError(f"got {images.shape[0]} images, {weights.shape[0]} sets of weights and "
                         f"{len(titles)} titles; they must match")


def as_uniform_multiple(maps: Tensor) -> Tensor:
    """Patch-grid maps as multiples of the uniform share: each renormalised to sum to one, times ``h*w``.

    1 everywhere for a map that spreads evenly over the patches; the units of a shared colour scale.

    Shape:
        (..., h, w) -> (..., h, w)
    """
    m = maps.detach().cpu().double()
    total = m.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)  # (..., 1, 1)
    return (m / total * (m.shape[-2] * m.shape[-1])).float()


def show_attention(image: Tensor, grid_map: Tensor, ax: plt.Axes | None = None, title: str | None = None,
                   *, alpha: float = 0.6, cmap: str = "inferno", vmax: float | None = None) -> plt.Axes:
    """Overlay one patch-grid map, upsampled, on its image.

    Without ``vmax`` the map is scaled from its own smallest to its largest value (where it looks,
    not how sharply). With ``vmax`` it is drawn in multiples of the uniform share
    (:func:`as_uniform_multiple`) on the shared scale ``[0, vmax]``, so maps compare across panels;
    :func:`shared_colorbar` labels that scale.

    Shape:
        image (C, H, W) in [0, 1], grid_map (h, w)
    """
    ax = show_image(image, ax, title)
    H, W = to_numpy_image(image).shape[:2]
    if vmax is None:
        m, lo, hi = grid_map.detach().cpu().float(), 0.0, 1.0
        m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
    else:
        m, lo, hi = as_uniform_multiple(grid_map), 0.0, vmax
    up = upsample_maps(m, (H, W))  # (h, w) -> (H, W)
    ax.imshow(up.numpy(), cmap=cmap, alpha=alpha, vmin=lo, vmax=hi)
    if title:
        ax.set_title(title, fontsize=8)
    return ax


def shared_colorbar(fig: plt.Figure, axes, label: str = UNIFORM_UNITS) -> None:
    """One colour bar for panels drawn by :func:`show_attention` with the same ``vmax``."""
    axes = list(np.ravel(axes))
    overlay = next(ax.images[-1] for ax in reversed(axes) if ax.images)
    opaque = ScalarMappable(norm=overlay.norm, cmap=overlay.cmap)  # the overlay's colours, without its alpha
    fig.colorbar(opaque, ax=axes, label=label, shrink=0.8, aspect=30, pad=0.02)


def _view_title(layer: int, head: int | str, method: str) -> str:
    if method == "rollout":
        return f"rollout to layer {layer} ({head} of heads)"
    return f"layer {layer}, " + (f"head {head}" if isinstance(head, int) else f"{head} of heads")


def show_view(image: Tensor, weights: Tensor, layout: TokenLayout, *, layer: int, head: int | Fusion = "mean",
              method: Literal["attention", "rollout"] = "attention", ax: plt.Axes | None = None,
              title: str | None = None, vmax: float | None = None) -> plt.Axes:
    """Draw :func:`attention_view` over the image (``vmax`` as :func:`show_attention`); the explorer
    widget draws with this too.

    Shape:
        image (C, H, W), weights (L, nh, S, S)
    """
    grid = attention_view(weights, layout, layer=layer, head=head, method=method)
    layer_shown = layer if layer > 0 else weights.shape[0] + 1 + layer
    title = title if title is not None else _view_title(layer_shown, head, method)
    return show_attention(image, grid, ax, title, vmax=vmax)


def plot_gallery(images: Tensor, weights: Tensor, layout: TokenLayout, titles: list[str], *,
                 rows: list[int] | None = None, num_heads: int = 3, head_fusion: Fusion = "mean",
                 by: Literal["specific", "focused"] = "specific", shared: bool = True) -> plt.Figure:
    """One row per image: the image, the rollout through each layer, and its most telling heads.

    Heads are ranked by :func:`rank_heads` against the whole batch given; ``rows`` picks the images to
    draw (default: all), so a large batch gives a fair reference and a few rows a readable figure.
    With ``shared=True`` every map is drawn on one colour scale, in multiples of the uniform share,
    with a colour bar; otherwise each map on its own.

    Shape:
        images (B, C, H, W) in [0, 1], weights (B, L, nh, S, S)
    """
    B, L, nh = weights.shape[:3]
    _check_batch(images, weights, titles)
    rows = list(range(B)) if rows is None else list(rows)
    maps = pooled_attention(weights, layout)  # (B, L, nh, N)
    scores = rank_heads(maps, by=by).flatten(1)  # (B, L*nh)
    top = scores[rows].topk(min(num_heads, L * nh), dim=1).indices  # (R, k)
    roll = to_grid(pooled_attention(attention_rollout(weights[rows], head_fusion=head_fusion), layout),
                   layout)  # (R, L, h, w)
    heads = [[to_grid(maps[b, f // nh, f % nh], layout) for f in top[r].tolist()] for r, b in enumerate(rows)]
    drawn = [roll.flatten(0, 1)] + [torch.stack(h) for h in heads]  # every map the figure draws
    vmax = max(as_uniform_multiple(m).max().item() for m in drawn) if shared else None
    cols = 1 + L + top.shape[1]
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.45 * cols + (0.8 if shared else 0), 1.75 * len(rows) + 0.5),
                             squeeze=False, layout="constrained")
    for r, b in enumerate(rows):
        show_image(images[b], axes[r, 0], titles[b])
        axes[r, 0].title.set_fontsize(8)
        for layer in range(L):
            show_attention(images[b], roll[r, layer], axes[r, 1 + layer],
                           f"rollout ≤ {layer + 1}" if r == 0 else None, vmax=vmax)
        for j, flat in enumerate(top[r].tolist()):
            show_attention(images[b], heads[r][j], axes[r, 1 + L + j], f"layer {flat // nh + 1} head {flat % nh}",
                           vmax=vmax)
    what = {"specific": "most image-specific", "focused": "most focused"}[by]
    fig.suptitle(f"{layout.map_label}: rollout ({head_fusion} of heads) through layers 1..{L}, "
                 f"then the {top.shape[1]} {what} heads", fontsize=10)
    if shared:
        shared_colorbar(fig, axes)
    return fig


def plot_mean_distance(distance: Tensor, layout: TokenLayout | None = None, ax: plt.Axes | None = None,
                       title: str | None = None) -> plt.Axes:
    """The ViT paper's Figure 7 (right): one dot per head, network depth on the x axis.

    With a ``layout``, a dashed line marks the distance of uniform attention over all patches.

    Shape:
        distance (L, nh), in pixels
    """
    ax = ax if ax is not None else plt.gca()
    L, H = distance.shape
    d = distance.detach().cpu().float().numpy()
    colors = plt.get_cmap("tab20")(np.arange(H) % 20)
    for head in range(H):
        ax.scatter(np.arange(1, L + 1), d[:, head], s=18, color=colors[head],
                   label=f"head {head}" if H <= 16 else None)
    ax.plot(np.arange(1, L + 1), d.mean(axis=1), color="black", lw=1, label="mean of heads")
    if layout is not None:
        ax.axhline(uniform_attention_distance(layout), color="gray", ls="--", lw=1, label="uniform attention")
        ax.set_ylim(0, max(float(d.max()), uniform_attention_distance(layout)) * 1.1)
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_xticks(np.arange(1, L + 1))
    ax.set_title(title or "mean attention distance")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)  # beside, hiding nothing
    return ax


def show_position_similarity(similarity: Tensor, ax: plt.Axes | None = None, title: str | None = None,
                             *, cmap: str = "viridis") -> plt.Axes:
    """All ``h*w`` similarity maps in one picture: tile ``(i, j)`` is position ``(i, j)``'s map.

    The layout of the ViT paper's Figure 7 (centre), drawn as one image with thin gaps.

    Shape:
        similarity (h, w, h, w), e.g. from :func:`vit_from_scratch.positions.position_similarity`
    """
    ax = ax if ax is not None else plt.gca()
    h, w, h2, w2 = similarity.shape
    canvas = np.full((h * (h2 + 1) - 1, w * (w2 + 1) - 1), np.nan)
    sim = similarity.detach().cpu().float().numpy()
    for i in range(h):
        for j in range(w):
            canvas[i * (h2 + 1):i * (h2 + 1) + h2, j * (w2 + 1):j * (w2 + 1) + w2] = sim[i, j]
    image = ax.imshow(np.ma.masked_invalid(canvas), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([(w2 + 1) * j + (w2 - 1) / 2 for j in range(w)], [str(j + 1) for j in range(w)], fontsize=9)
    ax.set_yticks([(h2 + 1) * i + (h2 - 1) / 2 for i in range(h)], [str(i + 1) for i in range(h)], fontsize=9)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title)
    plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    return ax


def show_filter_components(components: Tensor, explained: Tensor | None = None, *, ncols: int = 7,
                           fig: plt.Figure | None = None, title: str | None = None) -> plt.Figure:
    """Draw principal components of the patch filters as small images, each scaled to [0, 1].

    Shape:
        components (K, C, P, P), explained (K,)
    """
    K = components.shape[0]
    rows = math.ceil(K / ncols)
    fig = fig if fig is not None else plt.figure(figsize=(1.1 * ncols, 1.25 * rows + 0.3))
    axes = fig.subplots(rows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= K:
            ax.axis("off")
            continue
        c = components[k].detach().cpu().float()
        c = (c - c.min()) / (c.max() - c.min()).clamp_min(1e-12)
        ax.imshow(to_numpy_image(c), interpolation="nearest", cmap="gray" if c.shape[0] == 1 else None)
        ax.set_xticks([])
        ax.set_yticks([])
        label = f"{k + 1}" + (f": {100 * explained[k].item():.1f}%" if explained is not None else "")
        ax.set_title(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def attention_explorer(images: Tensor, weights: Tensor, layout: TokenLayout, titles: list[str]):
    """An ipywidgets explorer: pick the image, layer, head and method; the view is :func:`show_view`.

    Needs ``ipywidgets`` and a live kernel (Colab, Jupyter). Rollout fuses the heads, so with
    ``method="rollout"`` only the fusions are offered.

    Shape:
        images (B, C, H, W) in [0, 1], weights (B, L, nh, S, S)
    """
    try:
        import ipywidgets as widgets
    except ImportError as err:  # pragma: no cover - ipywidgets is in requirements.txt
        raise ImportError("the explorer needs ipywidgets: pip install ipywidgets") from err
    L, H = weights.shape[1:3]
    _check_batch(images, weights, titles)
    fusions = [(f"{f} of heads", f) for f in FUSIONS]
    image_w = widgets.Dropdown(options=[(t, b) for b, t in enumerate(titles)], value=0, description="image")
    layer_w = widgets.IntSlider(value=L, min=1, max=L, description="layer")
    method_w = widgets.ToggleButtons(options=list(METHODS), value="attention", description="method")
    head_w = widgets.Dropdown(options=fusions + [(f"head {h}", h) for h in range(H)], value="mean",
                              description="head")
    out = widgets.Output()

    def redraw(_=None) -> None:
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(1, 2, figsize=(6, 3.2))
            b = image_w.value
            show_image(images[b], ax[0], titles[b])
            show_view(images[b], weights[b], layout, layer=layer_w.value, head=head_w.value,
                      method=method_w.value, ax=ax[1])
            fig.suptitle(layout.map_label, fontsize=9)
            plt.show()

    def method_changed(change) -> None:
        if change["new"] == "rollout":
            keep = head_w.value if head_w.value in FUSIONS else "mean"
            head_w.options, head_w.value = fusions, keep
        else:
            keep = head_w.value
            head_w.options = fusions + [(f"head {h}", h) for h in range(H)]
            head_w.value = keep
        redraw()

    method_w.observe(method_changed, names="value")
    for w in (image_w, layer_w, head_w):
        w.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([image_w, head_w]), widgets.HBox([layer_w, method_w]), out])
