"""Chapter 4: the transformer encoder: MLP, LayerNorm, residuals, the pre-norm block and the stack.

Letters: B batch, N tokens, D width, M = mlp_ratio * D hidden width of the MLP, nh heads.
"""

from __future__ import annotations

from torch import Tensor, nn

from .attention import MultiHeadSelfAttention

__all__ = ["MLP", "DropPath", "EncoderBlock", "Encoder", "block_num_params"]


def _check_rate(name: str, p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {p}; use 0.0 to switch it off")
    return float(p)


class MLP(nn.Module):
    """The position-wise feed-forward network: ``fc2(GELU(fc1(x)))``, applied to every token alone.

    ``hidden_dim`` defaults to ``mlp_ratio * dim`` (4D in ViT and in Vaswani et al., 2017).

    Shape:
        (B, N, D) -> (B, N, D), through a hidden width M
    """

    def __init__(self, dim: int, hidden_dim: int | None = None, *, mlp_ratio: float = 4.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if hidden_dim is None:
            if mlp_ratio <= 0:
                raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
            hidden_dim = int(dim * mlp_ratio)
        if dim <= 0 or hidden_dim <= 0:
            raise ValueError(f"MLP widths must be positive, got dim={dim}, hidden_dim={hidden_dim}")
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(_check_rate("dropout", dropout))
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop1(self.act(self.fc1(x)))  # (B, N, D) -> (B, N, M)
        return self.drop2(self.fc2(x))  # (B, N, M) -> (B, N, D)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016): in training, drop a residual branch for whole samples.

    Each sample's branch is zeroed with probability ``p`` and kept ones are scaled by ``1 / (1 - p)``,
    so the expected output is unchanged. In eval mode, and when ``p == 0``, it is the identity.

    Shape:
        (B, ...) -> (B, ...)
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = _check_rate("drop_path", p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)  # (B, 1, 1)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p:.3g}"


class EncoderBlock(nn.Module):
    """Pre-norm transformer block (Dosovitskiy et al., 2021, eq. 2-3).

    ``x = x + MSA(LN(x))`` then ``x = x + MLP(LN(x))``; each branch may pass through
    :class:`DropPath` and dropout when training.

    Shape:
        (B, N, D) -> (B, N, D); with ``return_attention=True`` also the weights (B, nh, N, N)
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 dropout: float = 0.0, attn_dropout: float = 0.0, drop_path: float = 0.0,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MultiHeadSelfAttention(dim, num_heads, qkv_bias=qkv_bias,
                                           attn_dropout=_check_rate("attn_dropout", attn_dropout),
                                           dropout=_check_rate("dropout", dropout))
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, mlp_ratio=mlp_ratio, dropout=dropout)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if x.ndim != 3 or x.shape[-1] != self.norm1.normalized_shape[0]:
            raise ValueError(f"expected tokens shaped (batch, tokens, {self.norm1.normalized_shape[0]}), "
                             f"got shape {tuple(x.shape)}")
        if return_attention:
            a, weights = self.attn(self.norm1(x), return_attention=True)
        else:
            a, weights = self.attn(self.norm1(x)), None
        x = x + self.drop_path1(a)  # (B, N, D)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))  # (B, N, D)
        return (x, weights) if return_attention else x


def block_num_params(dim: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> int:
    """Parameters of one :class:`EncoderBlock` of width ``dim``, counted layer by layer.

    Two LayerNorms (2D each), qkv (3D² + 3D), the output projection (D² + D) and the MLP
    (2DM + M + D). With ``M = 4D`` and biases this is ``12 D² + 13 D``.
    """
    D, M = dim, int(dim * mlp_ratio)
    norms = 2 * (2 * D)
    attention = 3 * D * D + (3 * D if qkv_bias else 0) + D * D + D
    mlp = D * M + M + M * D + D
    return norms + attention + mlp


class Encoder(nn.Sequential):
    """A stack of ``depth`` encoder blocks; the drop-path rate grows linearly from 0 to ``drop_path``.

    Shape:
        (B, N, D) -> (B, N, D); with ``return_attention=True`` also one (B, nh, N, N) per block
    """

    def __init__(self, dim: int, depth: int, num_heads: int, *, drop_path: float = 0.0, **block_kwargs) -> None:
        if depth < 1:
            raise ValueError(f"an encoder needs at least one block, got depth={depth}")
        _check_rate("drop_path", drop_path)
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # timm's linear decay rule
        super().__init__(*[EncoderBlock(dim, num_heads, drop_path=r, **block_kwargs) for r in rates])

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        if not return_attention:
            return super().forward(x)
        maps = []
        for block in self:
            x, weights = block(x, return_attention=True)
            maps.append(weights)
        return x, maps
