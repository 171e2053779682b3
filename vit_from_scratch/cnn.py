"""Chapter 9: a small convolutional network, the ViT's rival on small data and its distillation teacher.

A ResNet in miniature (He et al., 2016): a 3×3 convolution stem, then stages of residual blocks, each
stage halving the resolution and doubling the width, then global average pooling and a linear head.
Convolutions build in what a ViT must learn from data: locality (a 3×3 kernel sees only neighbours)
and translation equivariance (the same kernel slides over every position).

Letters: B batch, C channels, H/W height and width, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ResidualBlock", "SmallResNet"]


class ResidualBlock(nn.Module):
    """Two 3×3 convolutions with batch norm and a skip connection: ``relu(x' + F(x))``.

    ``F(x) = BN(conv(relu(BN(conv(x)))))``; the skip ``x'`` is ``x`` itself, or a strided 1×1
    convolution with batch norm when the block changes the width or the resolution (ResNet's "option B").

    Shape:
        (B, C_in, H, W) -> (B, C_out, H/stride, W/stride)
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, C_out, H/s, W/s)
        out = self.bn2(self.conv2(out))  # (B, C_out, H/s, W/s)
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A small ResNet for small images: stem, one residual block per stage, average pool, linear head.

    The first stage keeps the stem's resolution; every later stage halves it (stride 2) and uses the
    next width. With the default widths (32, 64, 128) a 32×32 image is seen at 32², 16² and 8².

    Args:
        num_classes: K, the width of the head.
        widths: channels of each stage (at least one).
        in_channels: 3 for RGB.

    Shape:
        (B, C, H, W) -> (B, K)
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128), in_channels: int = 3) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be one or more positive channel counts, one per stage, got {widths}")
        if num_classes < 1 or in_channels < 1:
            raise ValueError(f"num_classes and in_channels must be positive, got {num_classes} and {in_channels}")
        self.in_channels, self.num_classes, self.widths = in_channels, num_classes, widths
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(*(ResidualBlock(widths[max(i - 1, 0)], w, stride=1 if i == 0 else 2)
                                      for i, w in enumerate(widths)))
        self.head = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, images: Tensor) -> Tensor:
        """Stem and stages.

        Shape:
            (B, C, H, W) -> (B, widths[-1], H / 2^(S-1), W / 2^(S-1)) for S stages
        """
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected images shaped (B, {self.in_channels}, H, W), got {tuple(images.shape)}; "
                             "for one image use image.unsqueeze(0), for channels-last use .permute(0, 3, 1, 2)")
        return self.stages(self.stem(images))

    def forward(self, images: Tensor) -> Tensor:
        x = self.forward_features(images)  # (B, C', H', W')
        return self.head(x.mean(dim=(2, 3)))  # global average pool: (B, C', H', W') -> (B, C') -> (B, K)
