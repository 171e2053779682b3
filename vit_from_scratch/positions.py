"""Chapter 2: telling the model where each patch came from.

Letters: N patches on an (h, w) grid, D embedding width, T prefix tokens (the class token).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .patches import to_2tuple

__all__ = ["learned_pos_embed", "sincos_pos_embed_1d", "sincos_pos_embed_2d", "resize_pos_embed"]


def learned_pos_embed(num_tokens: int, dim: int, std: float = 0.02) -> nn.Parameter:
    """A learned position embedding ``(1, num_tokens, dim)``, truncated-normal initialised (the ViT default)."""
    param = nn.Parameter(torch.zeros(1, num_tokens, dim))
    nn.init.trunc_normal_(param, std=std, a=-2 * std, b=2 * std)
    return param


def sincos_pos_embed_1d(positions: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sine-cosine embedding of 1-D positions (Vaswani et al., 2017), sines first then cosines.

    ``emb[p, i] = sin(p * w_i)`` and ``emb[p, dim/2 + i] = cos(p * w_i)`` with
    ``w_i = temperature ** (-i / (dim/2))``, ``i = 0 .. dim/2 - 1``.

    Shape:
        (L,) -> (L, dim)
    """
    if dim % 2:
        raise ValueError(f"a sine-cosine embedding needs an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim // 2)
    omega = temperature ** -omega  # (dim/2,)
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # (L, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()  # (L, dim)


def sincos_pos_embed_2d(grid_size: int | tuple[int, int], dim: int, *, num_prefix_tokens: int = 1,
                        temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D sine-cosine position embedding: half the channels for the row, half for the column.

    Prefix tokens (the class token) get zeros. Tokens are in row-major order, as patchify emits them.

    Shape:
        -> (1, num_prefix_tokens + h*w, dim)
    """
    if dim % 4:
        raise ValueError(f"2-D sine-cosine position embedding splits the width into 4 equal parts "
                         f"(sin/cos of the row and of the column), so it must be divisible by 4; got {dim}. "
                         f"Use a width such as {dim - dim % 4} or {dim + 4 - dim % 4}, or learned positions.")
    h, w = to_2tuple(grid_size)
    rows = torch.arange(h).repeat_interleave(w)  # (N,) row of each token: 0,0,..,1,1,..
    cols = torch.arange(w).repeat(h)  # (N,) column of each token: 0,1,..,0,1,..
    emb = torch.cat([sincos_pos_embed_1d(rows, dim // 2, temperature),
                     sincos_pos_embed_1d(cols, dim // 2, temperature)], dim=1)  # (N, D)
    prefix = torch.zeros(num_prefix_tokens, dim)
    return torch.cat([prefix, emb], dim=0).unsqueeze(0)  # (1, T+N, D)


def resize_pos_embed(pos_embed: Tensor, new_grid: int | tuple[int, int], *,
                     old_grid: int | tuple[int, int] | None = None, num_prefix_tokens: int = 1,
                     mode: str = "bicubic") -> Tensor:
    """Interpolate a position embedding to a new patch grid, keeping prefix tokens apart.

    Lets a model trained at one resolution run at another (Dosovitskiy et al., 2021, sec. 3.2).
    ``old_grid`` defaults to the square grid the token count implies.

    Shape:
        (1, T + h*w, D) -> (1, T + h'*w', D)
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"expected a position embedding shaped (1, tokens, dim), got {tuple(pos_embed.shape)}")
    _, L, D = pos_embed.shape
    n = L - num_prefix_tokens
    if old_grid is None:
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError(f"{n} patch positions do not form a square grid; pass old_grid=(h, w)")
        old_grid = (side, side)
    oh, ow = to_2tuple(old_grid)
    if oh * ow != n:
        raise ValueError(f"old grid {(oh, ow)} has {oh * ow} positions but the embedding holds {n} "
                         f"patch positions after {num_prefix_tokens} prefix token(s); pass the grid the "
                         "embedding was trained with")
    nh, nw = to_2tuple(new_grid)
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if (nh, nw) == (oh, ow):
        return pos_embed.clone()
    grid = grid.reshape(1, oh, ow, D).permute(0, 3, 1, 2)  # (1, D, h, w)
    grid = F.interpolate(grid.float(), size=(nh, nw), mode=mode, align_corners=False).to(pos_embed.dtype)
    grid = grid.permute(0, 2, 3, 1).reshape(1, nh * nw, D)  # (1, h'*w', D)
    return torch.cat([prefix, grid], dim=1)
