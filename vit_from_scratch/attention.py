"""Chapter 3: scaled dot-product attention and multi-head self-attention.

Letters: B batch, N tokens (M keys when they differ), D width, nh heads, d = D/nh width per head.
(H and W stay the image's height and width, as in every chapter.)
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["attention", "MultiHeadSelfAttention"]


def attention(q: Tensor, k: Tensor, v: Tensor, *, dropout_p: float = 0.0,
              bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention, written out (Vaswani et al., 2017, eq. 1).

    ``softmax(q kᵀ / sqrt(d) + bias) v``, where ``d`` is the width of one query/key vector (per head).
    ``bias`` (broadcast to ``(..., N, M)``, default none) is added to the scores: a relative position
    bias, or ``-inf`` where a mask blocks a pair, as ``attn_mask`` in ``F.scaled_dot_product_attention``.
    Returns the output and the attention weights (after softmax, before dropout). Dropout, when
    ``dropout_p > 0``, is always applied: callers pass 0 in evaluation.

    Shape:
        q (..., N, d), k (..., M, d), v (..., M, d_v) -> output (..., N, d_v), weights (..., N, M)
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"queries and keys must have the same width to be compared, got q {tuple(q.shape)} "
                         f"and k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"every key needs one value: k has {k.shape[-2]} rows, v has {v.shape[-2]} "
                         f"(k {tuple(k.shape)}, v {tuple(v.shape)})")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., N, d) @ (..., d, M) -> (..., N, M)
    if bias is not None:
        scores = scores + bias
    weights = scores.softmax(dim=-1)  # each row sums to 1
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return dropped @ v, weights  # (..., N, M) @ (..., M, d_v) -> (..., N, d_v)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection (Vaswani et al., 2017, sec. 3.2.2).

    The fast path calls ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU);
    the explicit path, :func:`attention`, computes the softmax itself and is taken only when the
    weights are asked for. Both give the same output. Parameter names (``qkv``, ``proj``) are timm's.

    Args:
        dim: token width ``D``; must be divisible by ``num_heads``.
        num_heads: number of heads ``nh``; each works in ``d = D / nh`` channels.
        qkv_bias: give the ``qkv`` projection a bias (ViT does).
        attn_dropout: dropout probability on the attention weights, in training only.
        dropout: dropout probability after the output projection (``proj_drop``), in training only.

    Shape:
        (B, N, D) -> (B, N, D), and weights (B, nh, N, N) with ``return_attention=True``
    """

    def __init__(self, dim: int, num_heads: int = 8, *, qkv_bias: bool = True,
                 attn_dropout: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__()
        if dim <= 0 or num_heads <= 0 or dim % num_heads:
            raise ValueError(f"the width {dim} must be divisible by the number of heads {num_heads} "
                             f"(each head gets dim / heads channels); for width {dim} try heads in "
                             f"{[h for h in range(1, min(dim, 16) + 1) if dim % h == 0]}")
        if not 0.0 <= attn_dropout < 1.0:
            raise ValueError(f"attn_dropout must be in [0, 1), got {attn_dropout}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if x.ndim != 3:
            hint = "; for a single sequence use x.unsqueeze(0)" if x.ndim == 2 else ""
            raise ValueError(f"expected tokens shaped (batch, tokens, dim), got shape {tuple(x.shape)}{hint}")
        B, N, D = x.shape
        if D != self.qkv.in_features:
            raise ValueError(f"expected width {self.qkv.in_features}, got {D} (shape {tuple(x.shape)})")
        nh, d = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(B, N, 3, nh, d)  # (B, N, 3D) -> (B, N, 3, nh, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (3, B, nh, N, d) -> 3 x (B, nh, N, d)
        p = self.attn_dropout if self.training else 0.0
        if return_attention:
            out, weights = attention(q, k, v, dropout_p=p)  # (B, nh, N, d), (B, nh, N, N)
        else:
            out, weights = F.scaled_dot_product_attention(q, k, v, dropout_p=p), None  # (B, nh, N, d)
        out = out.transpose(1, 2).reshape(B, N, D)  # (B, nh, N, d) -> (B, N, nh, d) -> (B, N, D)
        out = self.proj_drop(self.proj(out))
        return (out, weights) if return_attention else out

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, attn_dropout={self.attn_dropout}"
