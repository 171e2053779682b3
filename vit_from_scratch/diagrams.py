"""Pictures of the model's structure (shared by chapters 1 and 5 and the intro page).

:func:`vit_stages` lists what the whole ViT does to an image, step by step, with the tensor shape after
each step, read from a config; :func:`draw_vit` draws it as the ViT paper's Figure 1 does, top to bottom
so that it stays legible on a phone: patches, linear embedding, class token, positions, ``L`` encoder
blocks ``[LN -> MSA -> + -> LN -> MLP -> +]``, the final LayerNorm and the head.

The config is a :class:`~vit_from_scratch.config.ViTConfig` (or any object with its fields and
derived sizes); this module reads it and imports nothing else from the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle

__all__ = ["Stage", "vit_stages", "draw_vit"]

# Colours of the three parts: embedding, encoder, head.
EMBED, ENCODER, HEAD, BLOCK = "#dbe9f6", "#fde9c9", "#d9f0d3", "#fff7ea"
FONT, SMALL, SHAPE = 17, 13.5, 15  # label, detail and shape font sizes (points, on a 7-inch figure)
XMAX = 10.5  # the drawing's width in axis units


@dataclass(frozen=True)
class Stage:
    """One step of the forward pass: what it does, a detail line, and the shape it hands on."""

    label: str
    detail: str
    shape: tuple[int | str, ...]
    part: str  # "input", "embed", "encoder" or "head"


def vit_stages(config: Any, batch: int | str = "B") -> list[Stage]:
    """The forward pass of a ViT of this config as a list of steps, each with its output shape.

    Shape:
        the first stage holds the images ``(B, C, H, W)``; the last the logits ``(B, K)``.
    """
    c = config
    B, C, H, P, D = batch, c.in_channels, c.image_size, c.patch_size, c.dim
    (h, w), N, L = c.grid_size, c.num_patches, c.num_tokens
    cls = c.use_class_token
    positions = "fixed 2-D sin-cos" if c.pos_embed_type == "sincos" else "learned"
    stages = [
        Stage("image", f"{C} channels, {H}×{H} pixels", (B, C, H, H), "input"),
        Stage("cut into patches", f"{h}×{w} = {N} patches of {P}×{P}×{C}", (B, N, P * P * C), "embed"),
        Stage("linear embedding", f"$\\mathbf{{x}}_p\\mathbf{{E}}$, $\\mathbf{{E}}$: {P * P * C} × {D}",
              (B, N, D), "embed"),
    ]
    if cls:
        stages.append(Stage("prepend class token", f"{N} + 1 = {L} tokens", (B, L, D), "embed"))
    stages += [
        Stage("+ position embedding", f"{positions}, one row per token", (B, L, D), "embed"),
        Stage(f"{c.depth} × encoder block", f"{c.num_heads} heads; MLP {D} → {c.mlp_dim} → {D}",
              (B, L, D), "encoder"),
    ]
    if cls:
        stages.append(Stage("LayerNorm, class token", "the output of token 0", (B, D), "head"))
    elif c.use_fc_norm:
        stages.append(Stage("mean of tokens, LayerNorm", f"average of the {N} patch outputs", (B, D), "head"))
    else:
        stages.append(Stage("LayerNorm, mean of tokens", f"average of the {N} patch outputs", (B, D), "head"))
    stages.append(Stage("linear head", f"{D} → {c.num_classes} class scores", (B, c.num_classes), "head"))
    return stages


def _shape_text(shape: tuple[int | str, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _box(ax: plt.Axes, x: float, y: float, width: float, height: float, color: str, text: str,
         detail: str = "", fontsize: float = FONT) -> None:
    """A rounded box centred on (x, y) with a bold label and an optional smaller detail line under it."""
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, facecolor=color,
                                edgecolor="#444444", lw=1.3, boxstyle="round,pad=0.02,rounding_size=0.12"))
    if detail:
        ax.text(x, y + 0.17, text, ha="center", va="center", fontsize=fontsize, fontweight="bold")
        ax.text(x, y - 0.2, detail, ha="center", va="center", fontsize=SMALL, color="#333333")
    else:
        ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, fontweight="bold")


def _arrow(ax: plt.Axes, x0: float, y0: float, x1: float, y1: float, **kwargs: Any) -> None:
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=16,
                                 color=kwargs.pop("color", "#444444"), lw=1.5, shrinkA=0, shrinkB=0, **kwargs))


def _image_icon(ax: plt.Axes, x: float, y: float, size: float, grid: int) -> None:
    """A small square cut into a grid of patches, left of the image box."""
    cells = min(grid, 4)
    step = size / cells
    for i in range(cells):
        for j in range(cells):
            shade = 0.55 + 0.4 * ((i + j) % 2)
            ax.add_patch(Rectangle((x + j * step, y - size / 2 + i * step), step, step,
                                   facecolor=(shade * 0.6, shade * 0.75, shade), edgecolor="white", lw=1))


def _encoder_block(ax: plt.Axes, x: float, top: float, width: float, stage: Stage) -> float:
    """The encoder block [LN -> MSA -> + -> LN -> MLP -> +] with its two residual paths; returns its bottom.

    Kept in one piece: the coordinates of the six boxes and the two skips depend on each other."""
    row, gap = 0.8, 0.34
    ys = [top - 0.95 - k * (row + gap) for k in range(6)]
    bottom = ys[-1] - 0.45
    ax.add_patch(FancyBboxPatch((x - width / 2, bottom), width, top - bottom, facecolor=BLOCK,
                                edgecolor="#b36b00", lw=1.8, boxstyle="round,pad=0.02,rounding_size=0.15"))
    repeat, name = stage.label.split(" × ")
    ax.text(x - width / 2 - 0.3, (top + bottom) / 2, f"{repeat} × {name}", rotation=90, ha="center",
            va="center", fontsize=FONT, fontweight="bold", color="#8a4f00")
    heads, mlp = stage.detail.split("; ")
    boxes = [("LayerNorm", ""), ("multi-head attention", heads), None,
             ("LayerNorm", ""), ("MLP", mlp.removeprefix("MLP ")), None]
    _arrow(ax, x, top, x, ys[0] + row / 2)
    for k, (y, label) in enumerate(zip(ys, boxes)):
        if label is None:
            ax.add_patch(Circle((x, y), 0.22, facecolor="white", edgecolor="#444444", lw=1.4))
            ax.text(x, y, "+", ha="center", va="center", fontsize=FONT, fontweight="bold")
        else:
            _box(ax, x, y, width * 0.76, row, ENCODER, label[0], label[1], fontsize=FONT - 1.5)
        if k:
            start = ys[k - 1] - (0.22 if boxes[k - 1] is None else row / 2)
            _arrow(ax, x, start, x, y + (0.22 if label is None else row / 2))
    skip_x = x - width / 2 + 0.3  # residual paths on the left: from above each LN to the next "+"
    for start, end in ((ys[0] + row / 2 + 0.2, ys[2]), (ys[3] + row / 2 + 0.14, ys[5])):
        ax.add_patch(Circle((x, start), 0.06, color="#b36b00"))
        ax.plot([x, skip_x, skip_x], [start, start, end], color="#b36b00", lw=1.5)
        _arrow(ax, skip_x, end, x - 0.22, end, color="#b36b00")
    return bottom


def draw_vit(config: Any, title: str | None = None, batch: int | str = "B", width: float = 7.2) -> plt.Figure:
    """The whole ViT of ``config``, top to bottom, with the tensor shape after every step.

    A tall, narrow figure (``width`` inches, fonts of 13-17 points) that stays legible when a phone
    shrinks it to 390 pixels. The shapes on the right are those of :func:`vit_stages`.
    """
    stages = vit_stages(config, batch)
    box_h, gap, block_h = 0.92, 0.55, 7.2
    heights = [block_h if s.part == "encoder" else box_h for s in stages]
    total = sum(heights) + gap * (len(stages) - 1) + (1.0 if title else 0.2) + 0.2
    fig, ax = plt.subplots(figsize=(width, width * total / XMAX))
    ax.set_xlim(0, XMAX)
    ax.set_ylim(0, total)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.text(XMAX / 2, total - 0.45, title, ha="center", va="center", fontsize=FONT + 2, fontweight="bold")
    x, box_w, shape_x = 4.25, 5.9, 7.4
    top = total - (1.0 if title else 0.2)
    colors = {"input": "white", "embed": EMBED, "head": HEAD}
    for k, (stage, height) in enumerate(zip(stages, heights)):
        if stage.part == "encoder":
            bottom = _encoder_block(ax, x, top, box_w, stage)
            centre = (top + bottom) / 2
        else:
            _box(ax, x, top - height / 2, box_w, height, colors[stage.part], stage.label, stage.detail)
            centre, bottom = top - height / 2, top - height
            if stage.part == "input":
                _image_icon(ax, x - box_w / 2 + 0.18, centre, 0.66, config.grid_size[0])
        ax.text(shape_x, centre, _shape_text(stage.shape), ha="left", va="center", fontsize=SHAPE,
                family="monospace", color="#1f3d7a")
        if k + 1 < len(stages):
            _arrow(ax, x, bottom, x, bottom - gap)
        top = bottom - gap
    fig.subplots_adjust(0, 0, 1, 1)
    return fig
