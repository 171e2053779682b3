"""Chapter 9: a small convolutional network, the ViT's rival on small data and its distillation teacher.

A ResNet in miniature (He et al., 2016): a 3×3 convolution stem, then stages of residual blocks, each
stage halving the resolution and doubling the width, then global average pooling and a linear head.
Convolutions build in what a ViT must learn from data: locality (a 3×3 kernel sees only neighbours)
and translation equivariance (the same kernel slides over every position).

A stride-2 stem (``stem_stride=2``, as ImageNet ResNets start) runs every stage at half the side,
a quarter of the multiply-adds: how chapter 9 matches the CNN to its ViT in parameters and in compute.

Letters: B batch, C channels, H/W height and width, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
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
        stem_stride: 1 keeps the image's resolution in the first stage; 2 halves it in the stem.

    Shape:
        (B, C, H, W) -> (B, K)
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128), in_channels: int = 3,
                 stem_stride: int = 1) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be one or more positive channel counts, one per stage, got {widths}")
        if num_classes < 1 or in_channels < 1:
            raise ValueError(f"num_classes and in_channels must be positive, got {num_classes} and {in_channels}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 (first stage at the image's resolution) or 2 (at half of it), "
                             f"got {stem_stride}")
        self.in_channels, self.num_classes, self.widths = in_channels, num_classes, widths
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, stride=stem_stride, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(*(ResidualBlock(widths[max(i - 1, 0)], w, stride=1 if i == 0 else 2)
                                      for i, w in enumerate(widths)))
        self.head = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def macs(self, image_size: int = 32) -> int:
        """Multiply-accumulates of one forward pass for one ``image_size`` square image: every convolution
        (3×3 and 1×1 shortcuts) at the output size it gives on a traced image, and the head. Batch norm,
        ReLU, pooling and additions are left out, as in :meth:`ViTConfig.macs`."""
        counts: list[int] = []

        def count(conv: nn.Conv2d, _inputs, output: Tensor) -> None:
            kh, kw = conv.kernel_size
            counts.append(output.shape[2] * output.shape[3] * conv.out_channels * conv.in_channels // conv.groups
                          * kh * kw)

        hooks = [m.register_forward_hook(count) for m in self.modules() if isinstance(m, nn.Conv2d)]
        was_training = self.training
        self.eval()  # a traced image must not move batch norm's running statistics
        try:
            with torch.no_grad():
                self.forward_features(torch.zeros(1, self.in_channels, image_size, image_size,
                                                  device=self.head.weight.device))
        finally:
            self.train(was_training)
            for hook in hooks:
                hook.remove()
        return sum(counts) + self.head.in_features * self.head.out_features

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
