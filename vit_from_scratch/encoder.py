"""Chapter 4: the transformer encoder block: MLP, LayerNorm, residuals, pre-norm.

Letters: B batch, N tokens, D width.
"""

from __future__ import annotations

from torch import Tensor, nn

from .attention import MultiHeadSelfAttention

__all__ = ["MLP", "DropPath", "EncoderBlock", "Encoder"]


class MLP(nn.Module):
    """Two linear layers with a GELU between: ``fc2(GELU(fc1(x)))``.

    Shape:
        (B, N, D) -> (B, N, D), through a hidden width ``mlp_ratio * D``
    """

    def __init__(self, dim: int, hidden_dim: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for whole samples with probability ``p``.

    Kept samples are scaled by ``1 / (1 - p)`` so the expectation is unchanged; identity in eval mode.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)  # (B, 1, 1)
        return x * keep / (1.0 - self.p)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + MSA(LN(x))`` then ``x + MLP(LN(x))``.

    Shape:
        (B, N, D) -> (B, N, D)
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 dropout: float = 0.0, attn_dropout: float = 0.0, drop_path: float = 0.0,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MultiHeadSelfAttention(dim, num_heads, qkv_bias=qkv_bias,
                                           attn_drop=attn_dropout, proj_drop=dropout)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout=dropout)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if return_attention:
            a, weights = self.attn(self.norm1(x), return_attention=True)
        else:
            a, weights = self.attn(self.norm1(x)), None
        x = x + self.drop_path1(a)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return (x, weights) if return_attention else x


class Encoder(nn.Sequential):
    """A stack of ``depth`` encoder blocks; drop-path grows linearly from 0 to ``drop_path``."""

    def __init__(self, dim: int, depth: int, num_heads: int, *, drop_path: float = 0.0, **block_kwargs) -> None:
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        super().__init__(*[EncoderBlock(dim, num_heads, drop_path=r, **block_kwargs) for r in rates])
