"""Chapter 9: two answers of the field to ViTs on small data, as parts a ViT takes in.

**Shifted Patch Tokenization and Locality Self-Attention** (Lee, Lee and Song, 2021, "Vision Transformer
for Small-Size Datasets"). SPT (their eq. 2) gives every token a wider view: the image and four copies
shifted by half a patch along the diagonals are stacked along the channels, cut into patches, flattened,
layer-normalised and projected, ``S(x) = LN(P([x, s_1, s_2, s_3, s_4])) E_S``. LSA (their eqs. 4-5)
sharpens attention: a token may not attend to itself (the diagonal of ``q kᵀ`` is set to ``-inf``,
"diagonal masking") and the softmax's temperature ``τ`` is learned (per head, starting at ``sqrt(d)``),
``softmax(R^M / τ) V``.

**Compact Convolutional Transformer** (Hassani et al., 2021, "Escaping the Big Data Paradigm with Compact
Transformers"). Its tokenizer is a few convolutions, each followed by ReLU and a 3×3 max-pool of stride 2;
the positions of the last feature map are the tokens. There is no class token: *sequence pooling* weighs
the encoder's output tokens by a learned score, ``z = softmax(g(x_L)ᵀ) x_L`` with ``g`` a linear map to one
number per token.

Letters: B batch, C channels, H/W image height/width, P patch size, N tokens, D width, nh heads, d = D/nh.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiHeadSelfAttention, attention
from .config import ViTConfig
from .model import VisionTransformer
from .patches import patchify

__all__ = ["shift_image", "ShiftedPatchTokenization", "LocalitySelfAttention", "SPTLSAViT",
           "ConvTokenizer", "SequencePooling", "CompactConvTransformer"]

DIAGONALS = ((-1, -1), (-1, 1), (1, -1), (1, 1))  # (rows, columns): up-left, up-right, down-left, down-right


def shift_image(images: Tensor, rows: int, columns: int) -> Tensor:
    """The images translated by ``rows`` pixels down and ``columns`` right (negative: up, left), with zeros
    where no pixel comes in: ``out[..., i, j] = images[..., i - rows, j - columns]``.

    Shape:
        (B, C, H, W) -> (B, C, H, W)
    """
    H, W = images.shape[-2:]
    if abs(rows) >= H or abs(columns) >= W:
        raise ValueError(f"a shift of ({rows}, {columns}) pixels moves a {H}x{W} image out of view")
    padded = F.pad(images, (max(columns, 0), max(-columns, 0), max(rows, 0), max(-rows, 0)))  # zeros in front
    top, left = max(-rows, 0), max(-columns, 0)
    return padded[..., top:top + H, left:left + W]


class ShiftedPatchTokenization(nn.Module):
    """SPT: ``LN(P([x, s_1, s_2, s_3, s_4])) E_S``, the image with its four diagonal half-patch shifts.

    Exposes ``grid_size`` and ``num_patches`` like :class:`~vit_from_scratch.patches.PatchEmbedding`, so it
    plugs into :class:`VisionTransformer` through ``embed_layer``.

    Shape:
        (B, C, H, W) -> (B, N, D)
    """

    def __init__(self, *, image_size: int, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        if patch_size < 2 or image_size % patch_size:
            raise ValueError(f"SPT shifts by half a patch, so patch_size must be at least 2 and divide the image "
                             f"size; got patch_size={patch_size}, image_size={image_size}")
        self.patch_size, self.shift = patch_size, patch_size // 2
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        patch_dim = 5 * in_channels * patch_size * patch_size  # the image and four shifted copies
        self.norm = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, dim)

    def forward(self, images: Tensor) -> Tensor:
        s = self.shift
        stacked = torch.cat([images, *(shift_image(images, s * r, s * c) for r, c in DIAGONALS)], dim=1)
        patches = patchify(stacked, self.patch_size)  # (B, 5C, H, W) -> (B, N, 5C·P²)
        return self.proj(self.norm(patches))  # (B, N, D)

    def macs(self) -> int:
        """Multiply-accumulates of the projection for one image."""
        return self.num_patches * self.proj.in_features * self.proj.out_features


class LocalitySelfAttention(MultiHeadSelfAttention):
    """LSA: multi-head self-attention with diagonal masking and a learned temperature per head.

    ``scale`` holds ``1/τ`` per head, starting at ``1/sqrt(d)`` (plain attention's value), as in the
    authors' code; it is learned with the rest. The diagonal of the scores is ``-inf``: every token's
    output is a mix of the *other* tokens' values.

    Shape:
        (B, N, D) -> (B, N, D), and weights (B, nh, N, N) with ``return_attention=True``
    """

    def __init__(self, dim: int, num_heads: int = 8, **kwargs: Any) -> None:
        super().__init__(dim, num_heads, **kwargs)
        self.scale = nn.Parameter(torch.full((num_heads,), self.head_dim ** -0.5))  # 1/τ per head

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if x.ndim != 3 or x.shape[-1] != self.qkv.in_features:
            raise ValueError(f"expected tokens shaped (batch, tokens, {self.qkv.in_features}), got {tuple(x.shape)}")
        B, N, D = x.shape
        if N < 2:
            raise ValueError("diagonal masking needs at least two tokens: with one, nothing is left to attend to")
        nh, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).reshape(B, N, 3, nh, d).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, N, d)
        q = q * self.scale.view(1, nh, 1, 1)  # the learned 1/τ, per head
        mask = torch.zeros(N, N, dtype=q.dtype, device=q.device).fill_diagonal_(float("-inf"))  # (N, N)
        p = self.attn_dropout if self.training else 0.0
        if return_attention:  # attention() divides by sqrt(d): multiply it back so that 1/τ is the scale
            out, weights = attention(q * math.sqrt(d), k, v, dropout_p=p, bias=mask)
        else:
            out, weights = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=1.0), None
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, D)))  # (B, nh, N, d) -> (B, N, D)
        return (out, weights) if return_attention else out


class SPTLSAViT(VisionTransformer):
    """A :class:`VisionTransformer` with Shifted Patch Tokenization and/or Locality Self-Attention.

    Everything else (class token, positions, MLPs, norms, head, initialisation) is the plain ViT's, so
    ``spt=False, lsa=False`` gives exactly a ViT, and each part can be switched off for an ablation.

    Shape:
        (B, C, H, W) -> (B, K)
    """

    def __init__(self, config: ViTConfig | str | None = None, *, spt: bool = True, lsa: bool = True,
                 **overrides: Any) -> None:
        def tokenizer(c: ViTConfig) -> ShiftedPatchTokenization:
            return ShiftedPatchTokenization(image_size=c.image_size, patch_size=c.patch_size,
                                            in_channels=c.in_channels, dim=c.dim)

        super().__init__(config, embed_layer=tokenizer if spt else None, weight_init="skip", **overrides)
        self.spt, self.lsa = spt, lsa
        if lsa:
            c = self.config
            for block in self.blocks:
                block.attn = LocalitySelfAttention(c.dim, c.num_heads, qkv_bias=c.qkv_bias,
                                                   attn_dropout=c.attn_dropout, dropout=c.dropout)
        self.init_weights()  # once, after the parts are in place (LSA's scale keeps its 1/sqrt(d))

    def macs(self) -> int:
        """Multiply-accumulates of one forward pass for one image (LSA costs what attention costs)."""
        c = self.config
        plain_embed = c.num_patches * c.in_channels * c.patch_size ** 2 * c.dim
        return c.macs() - plain_embed + (self.patch_embed.macs() if self.spt else plain_embed)


class ConvTokenizer(nn.Module):
    """CCT's tokenizer: per layer ``Conv2d(k×k, stride 1, no bias) -> ReLU -> MaxPool(3, stride 2)``;
    the last layer has ``dim`` channels and its positions are the tokens, row by row.

    Shape:
        (B, C, H, W) -> (B, N, D) with N = (H / 2^L) (W / 2^L) for L layers
    """

    def __init__(self, *, image_size: int, in_channels: int, dim: int, channels: Sequence[int] = (),
                 kernel_size: int = 3) -> None:
        super().__init__()
        widths = [in_channels, *[int(c) for c in channels], dim]  # hidden widths, then D
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
                       nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)]
        self.convs = nn.Sequential(*layers)
        self.image_size, self.in_channels = image_size, in_channels
        side = image_size
        for _ in range(len(widths) - 1):
            side = math.ceil(side / 2)  # a 3x3 max-pool of stride 2 and padding 1
        self.grid_size = (side, side)
        self.num_patches = side * side

    def forward(self, images: Tensor) -> Tensor:
        return self.convs(images).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, N, D)

    def macs(self) -> int:
        """Multiply-accumulates of the convolutions for one image (ReLU and pooling not counted)."""
        total, side = 0, self.image_size
        for conv in (m for m in self.convs if isinstance(m, nn.Conv2d)):
            total += side * side * conv.in_channels * conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
            side = math.ceil(side / 2)
        return total


class SequencePooling(nn.Module):
    """CCT's sequence pooling: ``z = softmax(g(x)ᵀ) x``, a learned weighted mean of the tokens.

    Shape:
        (B, N, D) -> (B, D)
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attention_pool = nn.Linear(dim, 1)  # g: one score per token (CCT's name)

    def weights(self, x: Tensor) -> Tensor:
        """The tokens' weights, summing to one per image. Shape: (B, N, D) -> (B, N)"""
        return self.attention_pool(x).squeeze(-1).softmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return (self.weights(x).unsqueeze(1) @ x).squeeze(1)  # (B, 1, N) @ (B, N, D) -> (B, D)


class CompactConvTransformer(VisionTransformer):
    """CCT: a :class:`ConvTokenizer` instead of patches, no class token, learned positions, the ViT's
    encoder and final norm, then :class:`SequencePooling` and the head.

    The tokenizer has ``log2(patch_size)`` layers, so that its grid is the config's (for ``patch_size=4``:
    two layers, 32² -> 16² -> 8²); ``channels`` are the hidden layers' widths (one fewer than the layers).

    Shape:
        (B, C, H, W) -> (B, K)
    """

    def __init__(self, config: ViTConfig | str | None = None, *, channels: Sequence[int] = (32,),
                 **overrides: Any) -> None:
        def tokenizer(c: ViTConfig) -> ConvTokenizer:
            layers = round(math.log2(c.patch_size))
            if 2 ** layers != c.patch_size or len(channels) != layers - 1:
                raise ValueError(f"the tokenizer halves the image once per layer, so patch_size must be a power "
                                 f"of 2 and channels must name log2(patch_size) - 1 hidden widths; got "
                                 f"patch_size={c.patch_size} and channels={tuple(channels)}")
            return ConvTokenizer(image_size=c.image_size, in_channels=c.in_channels, dim=c.dim, channels=channels)

        overrides = {"pool": "mean", "class_token": False, "fc_norm": False, **overrides}
        super().__init__(config, embed_layer=tokenizer, weight_init="skip", **overrides)
        if self.config.use_class_token or self.config.use_fc_norm:
            raise ValueError("CCT pools with sequence pooling after the final norm: build it without a class "
                             "token and with fc_norm=False")
        self.seq_pool = SequencePooling(self.config.dim)
        self.init_weights()

    def init_weights(self) -> None:
        """The ViT's initialisation; the tokenizer's convolutions Kaiming-normal, as in CCT."""
        super().init_weights()
        for m in self.patch_embed.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def pool(self, x: Tensor) -> Tensor:
        """Sequence pooling of the (normalised) output tokens. Shape: (B, N, D) -> (B, D)"""
        return self.seq_pool(x)

    def macs(self) -> int:
        """Multiply-accumulates of one forward pass for one image: tokenizer, encoder, pooling, head."""
        c = self.config
        plain_embed = c.num_patches * c.in_channels * c.patch_size ** 2 * c.dim
        return c.macs() - plain_embed + self.patch_embed.macs() + c.num_patches * c.dim
