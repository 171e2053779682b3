"""Chapter 5: the complete Vision Transformer (Dosovitskiy et al., 2021).

Letters: B batch, C channels, H/W image size, N patches, D width, K classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .encoder import Encoder
from .patches import PatchEmbedding
from .positions import learned_pos_embed, sincos_pos_embed_2d

__all__ = ["ViTConfig", "VisionTransformer"]


@dataclass
class ViTConfig:
    """Everything that defines a ViT's architecture."""

    image_size: int = 224  # input side in pixels (square images)
    patch_size: int = 16  # side of one patch; must divide image_size
    in_channels: int = 3  # 3 for RGB
    num_classes: int = 1000  # width of the classification head
    dim: int = 768  # token width D
    depth: int = 12  # number of encoder blocks
    num_heads: int = 12  # attention heads; must divide dim
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * dim
    qkv_bias: bool = True  # bias in the fused qkv projection
    pool: Literal["cls", "mean"] = "cls"  # class token, or mean of the patch tokens
    pos_embed: Literal["learned", "sincos"] = "learned"  # learned parameter, or fixed 2-D sin-cos
    dropout: float = 0.0  # dropout after the embeddings, in the MLP and after attention's projection
    attn_dropout: float = 0.0  # dropout on the attention weights
    drop_path: float = 0.0  # stochastic depth of the last block (linear from 0 in the first)
    norm_eps: float = 1e-6  # LayerNorm epsilon (1e-6 as in the reference implementations)

    def __post_init__(self) -> None:
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {self.pool!r}")
        if self.pos_embed not in ("learned", "sincos"):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {self.pos_embed!r}")

    def to_dict(self) -> dict:
        """A plain dict (JSON-friendly) of the fields."""
        return asdict(self)


class VisionTransformer(nn.Module):
    """ViT: patch embedding, class token, positions, encoder, final norm, linear head.

    ``state_dict()`` keys follow timm's names (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
    ``blocks.{i}...``, ``norm``, ``head``).

    Shape:
        (B, C, H, W) -> (B, K)
    """

    def __init__(self, config: ViTConfig | None = None, **overrides) -> None:
        super().__init__()
        config = config if config is not None else ViTConfig()
        if overrides:
            config = ViTConfig(**{**asdict(config), **overrides})
        self.config = c = config
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbedding(image_size=c.image_size, patch_size=c.patch_size,
                                          in_channels=c.in_channels, embed_dim=c.dim)
        n = self.patch_embed.num_patches
        self.num_prefix_tokens = 1 if c.pool == "cls" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim)) if c.pool == "cls" else None
        if c.pos_embed == "learned":
            self.pos_embed = learned_pos_embed(self.num_prefix_tokens + n, c.dim)
        else:
            self.register_buffer("pos_embed", sincos_pos_embed_2d(
                self.patch_embed.grid_size, c.dim, num_prefix_tokens=self.num_prefix_tokens), persistent=False)
        self.pos_drop = nn.Dropout(c.dropout)
        self.blocks = Encoder(c.dim, c.depth, c.num_heads, mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias,
                              dropout=c.dropout, attn_dropout=c.attn_dropout, drop_path=c.drop_path,
                              norm_eps=c.norm_eps)
        self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.head = nn.Linear(c.dim, c.num_classes)
        self.apply(self._init_weights)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that AdamW should not decay (position embedding, class token)."""
        return {"pos_embed", "cls_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    def embed(self, images: Tensor) -> Tensor:
        """Patches, class token and positions. (B, C, H, W) -> (B, T+N, D)"""
        x = self.patch_embed(images)  # (B, N, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+N, D)
        return self.pos_drop(x + self.pos_embed)

    def forward_features(self, images: Tensor) -> Tensor:
        """Embed, run the encoder, normalise. (B, C, H, W) -> (B, T+N, D)"""
        x = self.embed(images)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """Pool (class token or mean of patch tokens) and classify. (B, T+N, D) -> (B, K)"""
        x = x[:, 0] if self.config.pool == "cls" else x[:, self.num_prefix_tokens:].mean(dim=1)  # (B, D)
        return self.head(x)

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images))
