"""Chapter 3: scaled dot-product attention and multi-head self-attention.

Letters: B batch, N tokens, D width, H heads, d = D/H width per head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["attention", "MultiHeadSelfAttention"]


def attention(q: Tensor, k: Tensor, v: Tensor, *, dropout_p: float = 0.0) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention, written out: ``softmax(q kᵀ / sqrt(d)) v``.

    Returns the output and the attention weights (after softmax, before dropout).

    Shape:
        q, k, v (..., N, d) -> output (..., N, d), weights (..., N, N)
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., N, N)
    weights = scores.softmax(dim=-1)
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return dropped @ v, weights


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection (Vaswani et al., 2017).

    The fast path calls ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU);
    the explicit path computes the softmax itself and is taken only when the weights are asked for.

    Shape:
        (B, N, D) -> (B, N, D), and weights (B, H, N, N) with ``return_attention=True``
    """

    def __init__(self, dim: int, num_heads: int = 8, *, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f"the width {dim} must be divisible by the number of heads {num_heads} "
                             f"(each head gets dim / heads channels); try heads in "
                             f"{[h for h in range(1, min(dim, 16) + 1) if dim % h == 0]}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if x.ndim != 3:
            raise ValueError(f"expected tokens shaped (batch, tokens, dim), got shape {tuple(x.shape)}")
        B, N, D = x.shape
        if D != self.qkv.in_features:
            raise ValueError(f"expected width {self.qkv.in_features}, got {D} (shape {tuple(x.shape)})")
        H, d = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(B, N, 3, H, d)  # (B, N, 3D) -> (B, N, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, d)
        p = self.attn_drop if self.training else 0.0
        if return_attention:
            out, weights = attention(q, k, v, dropout_p=p)
        else:
            out, weights = F.scaled_dot_product_attention(q, k, v, dropout_p=p), None
        out = out.transpose(1, 2).reshape(B, N, D)  # (B, H, N, d) -> (B, N, H, d) -> (B, N, D)
        out = self.proj_drop(self.proj(out))
        return (out, weights) if return_attention else out
