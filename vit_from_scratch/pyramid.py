"""Chapter 10: a small Swin Transformer, a pyramid of window-attention stages (Liu et al., 2021).

The parts are :mod:`vit_from_scratch.windows`'s: a patch embedding makes a channels-last token map,
then every stage runs Swin blocks that alternate regular and shifted windows, and every stage after the
first starts with a :class:`~vit_from_scratch.windows.PatchMerging` (half the side, twice the channels).
A final LayerNorm, the mean over all tokens of the last stage and a linear head classify. There is no
class token and no absolute position embedding: the relative position bias inside each window is the
only position information, as in Swin.

Parameter names are timm's ``SwinTransformer``'s (``patch_embed.proj``, ``patch_embed.norm``,
``layers.{i}.downsample``, ``layers.{i}.blocks.{j}``, ``norm``), except the head: ours is ``head``,
timm's ``head.fc``.

Letters: B batch, C input channels, P patch size, h/w token grid of a stage, D_i channels of stage i,
K classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from torch import Tensor, nn

from .model import init_layer
from .patches import PatchEmbedding
from .positions import truncated_normal_
from .windows import PatchMerging, SwinBlock, pyramid_costs

__all__ = ["SwinConfig", "SwinPatchEmbedding", "SwinStage", "SwinTransformer"]


@dataclass(frozen=True)
class SwinConfig:
    """The shape of a Swin-style pyramid. Defaults: a small model for 32 x 32 CIFAR-10 images."""

    image_size: int = 32  # side of the (square) input images, in pixels
    patch_size: int = 2  # side of the patches stage 1 sees
    in_channels: int = 3
    num_classes: int = 10
    embed_dim: int = 64  # channels of stage 1; every later stage doubles them
    depths: tuple[int, ...] = field(default=(2, 4))  # Swin blocks per stage
    num_heads: tuple[int, ...] = field(default=(2, 4))  # attention heads per stage
    window_size: int = 4  # window side M; a stage whose grid is smaller uses its whole grid
    mlp_ratio: float = 2.0  # MLP hidden width over the stage's channels
    shift: bool = True  # odd blocks shift their windows by M // 2; False: every block regular (an ablation)

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(self.depths))
        object.__setattr__(self, "num_heads", tuple(self.num_heads))
        if not isinstance(self.shift, bool):
            raise ValueError(f"shift must be True (alternate regular and shifted windows) or False (regular "
                             f"windows only), got {self.shift!r}")
        if not self.depths or len(self.depths) != len(self.num_heads):
            raise ValueError(f"give one head count per stage: depths {self.depths}, num_heads {self.num_heads}")
        side, stages = self.image_size // self.patch_size, len(self.depths)
        if side * self.patch_size != self.image_size or side % 2 ** (stages - 1):
            raise ValueError(f"{stages} stages merge the {self.image_size // self.patch_size}-token grid "
                             f"{stages - 1} times: image_size / patch_size = {self.image_size} / {self.patch_size} "
                             f"must be a whole number divisible by {2 ** (stages - 1)}")
        for i, (dim, heads) in enumerate(zip(self.dims, self.num_heads)):
            if dim % heads:
                raise ValueError(f"stage {i + 1} has {dim} channels, not divisible by its {heads} heads")

    @property
    def dims(self) -> tuple[int, ...]:
        """Channels per stage: ``embed_dim``, then doubled by each merging."""
        return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))

    @property
    def grid_sizes(self) -> tuple[int, ...]:
        """Side of the token grid per stage: ``image_size / patch_size``, then halved by each merging."""
        side = self.image_size // self.patch_size
        return tuple(side // 2 ** i for i in range(len(self.depths)))

    def replace(self, **changes: Any) -> SwinConfig:
        return replace(self, **changes)

    def macs(self) -> int:
        """Multiply-accumulates of one forward pass for one image, from :func:`pyramid_costs`."""
        stages = pyramid_costs(image_size=self.image_size, patch_size=self.patch_size, dim=self.embed_dim,
                               depths=self.depths, window_size=self.window_size, mlp_ratio=self.mlp_ratio,
                               in_channels=self.in_channels, num_classes=self.num_classes)
        return sum(s["macs"] for s in stages)


class SwinPatchEmbedding(PatchEmbedding):
    """Chapter 1's patch embedding, then a LayerNorm, as a channels-last token map (timm's ``PatchEmbed``
    with ``norm_layer`` and ``output_fmt='NHWC'``).

    Shape:
        (B, C, H, W) -> (B, H/P, W/P, D)
    """

    def __init__(self, *, image_size: int = 32, patch_size: int = 2, in_channels: int = 3, dim: int = 64) -> None:
        super().__init__(image_size=image_size, patch_size=patch_size, in_channels=in_channels, dim=dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: Tensor) -> Tensor:
        h, w = self.grid_size
        x = self.norm(super().forward(images))  # (B, N, D), N = h * w in row-major order
        return x.reshape(-1, h, w, x.shape[-1])  # (B, h, w, D)


class SwinStage(nn.Module):
    """One stage: a :class:`PatchMerging` (unless it is the first), then ``depth`` Swin blocks whose
    windows alternate regular (even blocks) and shifted by ``M // 2`` (odd blocks). A window as large as
    the grid is the whole grid, and then nothing is shifted (as in Swin and timm). ``shift=False`` keeps
    every block's windows regular: Swin's ablation of the shift (Liu et al., 2021, table 4).

    Shape:
        (B, h, w, dim) -> (B, h', w', out_dim), h' = h/2 after a merging, else h
    """

    def __init__(self, dim: int, out_dim: int, *, input_resolution: int, depth: int, num_heads: int,
                 window_size: int, mlp_ratio: float, downsample: bool, shift: bool = True) -> None:
        super().__init__()
        if not downsample and dim != out_dim:
            raise ValueError(f"a stage without merging keeps its width: dim {dim} != out_dim {out_dim}")
        self.downsample = PatchMerging(dim, out_dim) if downsample else nn.Identity()
        side = input_resolution // 2 if downsample else input_resolution
        M = min(window_size, side)
        shift_size = M // 2 if M < side and shift else 0
        self.blocks = nn.Sequential(*[
            SwinBlock(out_dim, num_heads, input_resolution=(side, side), window_size=M,
                      shift_size=shift_size if j % 2 else 0, mlp_ratio=mlp_ratio)
            for j in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class SwinTransformer(nn.Module):
    """A Swin-style pyramid: patch embedding, stages of window attention with patch merging between
    them, final LayerNorm, mean over tokens, linear head (Liu et al., 2021, fig. 3).

    Args:
        config: a :class:`SwinConfig` (default: the small CIFAR-10 model).
        **overrides: config fields to change.

    Shape:
        (B, C, H, W) -> (B, K)
    """

    def __init__(self, config: SwinConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        c = self.config = (config or SwinConfig()).replace(**overrides)
        self.patch_embed = SwinPatchEmbedding(image_size=c.image_size, patch_size=c.patch_size,
                                              in_channels=c.in_channels, dim=c.embed_dim)
        dims, sides = c.dims, c.grid_sizes
        self.layers = nn.Sequential(*[
            SwinStage(dims[max(i - 1, 0)], dims[i], input_resolution=sides[max(i - 1, 0)], depth=depth,
                      num_heads=heads, window_size=c.window_size, mlp_ratio=c.mlp_ratio, downsample=i > 0,
                      shift=c.shift)
            for i, (depth, heads) in enumerate(zip(c.depths, c.num_heads))])
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], c.num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        """The package ViT's choices: truncated-normal linears (std 0.02) with zero biases, LayerNorms
        at ones and zeros, a LeCun-normal patch projection and a zero head; the relative position bias
        tables keep :class:`WindowAttention`'s truncated normal (std 0.02)."""
        for module in self.modules():
            init_layer(module)
        proj = self.patch_embed.proj
        truncated_normal_(proj.weight, (proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]) ** -0.5)
        nn.init.zeros_(proj.bias)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names AdamW should not decay: the relative position bias tables (as timm)."""
        return {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}

    def macs(self) -> int:
        """Multiply-accumulates of one forward pass for one image (see :meth:`SwinConfig.macs`)."""
        return self.config.macs()

    def forward_features(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, h, w, D_last): the last stage's token map, normalised."""
        x = self.patch_embed(images)  # (B, H/P, W/P, D_1)
        return self.norm(self.layers(x))  # (B, h, w, D_last)

    def forward_head(self, x: Tensor) -> Tensor:
        """(B, h, w, D_last) -> (B, K): the mean over all tokens, then the linear head."""
        return self.head(x.mean(dim=(1, 2)))

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images))
