"""Chapter 10: a hybrid ViT, a small convolutional stem in place of the patch embedding.

The ViT paper's hybrid feeds the transformer with the feature map of a ResNet instead of raw patches
(Dosovitskiy et al., 2021, sec. 3.1). Later work showed that a few 3x3 convolutions are enough: a
"convolutional stem" makes ViTs train faster, more stably and to higher accuracy, especially on small
data (Xiao et al., 2021; Hassani et al., 2021). Here the stem replaces only ``patch_embed`` of the
package's :class:`~vit_from_scratch.model.VisionTransformer`, passed in through its ``embed_layer`` hook;
the class token, positions, encoder and head are the same modules.

Letters: B batch, C input channels, H/W image size, c_i stem channels, D width, h/w token grid, N = h*w.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .model import VisionTransformer, ViTConfig
from .patches import check_patch_grid, to_2tuple

__all__ = ["ConvStem", "HybridViT"]


class ConvStem(nn.Module):
    """3x3 conv-BatchNorm-ReLU layers, then a 1x1 convolution to the token width, flattened to tokens.

    The strides multiply to the *effective patch size*: strides ``(2, 2)`` turn a 32 x 32 image into an
    8 x 8 grid, the grid of 4 x 4 patches. The defaults follow Xiao et al. (2021): every 3x3 layer has
    stride 2 and doubles the channels. (Their design space also allows stride-1 layers that keep the
    channels; a stride-1 layer at full resolution costs far more.) The last 1x1 convolution is called ``proj`` like the patch
    embedding's, so :meth:`VisionTransformer.init_weights` initialises it the same way (Xiao et al., 2021).
    Exposes ``image_size``, ``patch_size``, ``grid_size`` and ``num_patches`` like ``PatchEmbedding``.

    Shape:
        (B, C, H, W) -> (B, N, D), N = (H / prod(strides)) * (W / prod(strides))
    """

    def __init__(self, *, image_size: int | tuple[int, int] = 32, in_channels: int = 3, dim: int = 192,
                 channels: Sequence[int] = (64, 128), strides: Sequence[int] = (2, 2)) -> None:
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"give one stride per stem layer: {len(channels)} channel counts {tuple(channels)} "
                             f"but {len(strides)} strides {tuple(strides)}")
        if any(s not in (1, 2) for s in strides):
            raise ValueError(f"stem strides must be 1 or 2, got {tuple(strides)}")
        self.image_size = to_2tuple(image_size)
        self.in_channels = in_channels
        self.patch_size = math.prod(strides)  # effective stride: one token per patch_size x patch_size pixels
        self.grid_size = check_patch_grid(self.image_size, self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out, stride in zip(channels, strides):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),  # BN brings the bias
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c_in, dim, kernel_size=1)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != self.in_channels or tuple(images.shape[2:]) != self.image_size:
            raise ValueError(f"expected images shaped (B, {self.in_channels}, {self.image_size[0]}, "
                             f"{self.image_size[1]}), got {tuple(images.shape)}; resize the images or build the "
                             "stem for their size")
        x = self.proj(self.convs(images))  # (B, C, H, W) -> (B, c_last, h, w) -> (B, D, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, D, h*w) -> (B, N, D)

    def macs(self) -> int:
        """Multiply-accumulates of the convolutions for one image (BatchNorm and ReLU not counted)."""
        total, (H, W) = 0, self.image_size
        for conv in [m for m in self.convs if isinstance(m, nn.Conv2d)] + [self.proj]:
            H, W = math.ceil(H / conv.stride[0]), math.ceil(W / conv.stride[1])  # padding 1 keeps ceil(H / s)
            total += H * W * conv.out_channels * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        return total


class HybridViT(VisionTransformer):
    """A :class:`VisionTransformer` whose patch embedding is a :class:`ConvStem`; everything else is reused.

    The stem's strides must multiply to ``config.patch_size``, so the token grid, and with it the class
    token, the position embedding and the encoder, are exactly those of the plain ViT with that config.
    The stem goes in through ``VisionTransformer``'s ``embed_layer`` hook, so no patch embedding is
    built and thrown away. Xiao et al. (2021) size the stem to cost about one transformer block and
    remove one block (``depth=config.depth - 1``), so that the hybrid matches the ViT's compute.

    Args:
        config: a :class:`ViTConfig` or a size name, as for ``VisionTransformer``.
        stem_channels: output channels of the 3x3 stem layers.
        stem_strides: their strides (1 or 2); their product must equal ``config.patch_size``.
        **overrides: config fields to change.

    Shape:
        (B, C, H, W) -> (B, K)
    """

    def __init__(self, config: ViTConfig | str | None = None, *, stem_channels: Sequence[int] = (64, 128),
                 stem_strides: Sequence[int] = (2, 2), **overrides: Any) -> None:
        def stem(c: ViTConfig) -> ConvStem:
            stride = math.prod(stem_strides)
            if stride != c.patch_size:
                raise ValueError(f"the stem's strides {tuple(stem_strides)} downsample by {stride}, but the "
                                 f"config's patch_size is {c.patch_size}: the token grid and the position "
                                 f"embedding would not match. Make the strides multiply to {c.patch_size} "
                                 f"(e.g. (2, 2) for 4), or set patch_size={stride}")
            return ConvStem(image_size=c.image_size, in_channels=c.in_channels, dim=c.dim,
                            channels=stem_channels, strides=stem_strides)

        # the ViT initialisation then treats the stem's 1x1 `proj` as the patch projection
        super().__init__(config, embed_layer=stem, **overrides)

    def macs(self) -> int:
        """Multiply-accumulates of one forward pass for one image: the ViT's, with the stem for the
        patch embedding."""
        c = self.config
        patch_embed = c.num_patches * c.in_channels * c.patch_size ** 2 * c.dim
        return c.macs() - patch_embed + self.patch_embed.macs()
