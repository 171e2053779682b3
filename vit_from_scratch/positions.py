"""Chapter 2: telling the model where each patch came from.

Letters: N patches on an (h, w) grid, D embedding width, T prefix tokens (the class token).
Patch tokens are in row-major order, as :func:`~vit_from_scratch.patches.patchify` emits them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .patches import to_2tuple

__all__ = ["truncated_normal_", "learned_pos_embed", "sincos_pos_embed_1d", "sincos_pos_embed_2d",
           "resize_pos_embed", "position_similarity"]

_INTERPOLATING_MODES = ("bilinear", "bicubic")


def _check_grid(grid_size: int | tuple[int, int], name: str) -> tuple[int, int]:
    h, w = to_2tuple(grid_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive (rows, columns) of patches, got {(h, w)}")
    return h, w


def truncated_normal_(tensor: Tensor, std: float) -> Tensor:
    """Fill ``tensor`` in place with N(0, std²), redrawing values outside ±2·std; return it.

    The cut-off is in units of ``std``, unlike ``nn.init.trunc_normal_``'s default absolute ±2. The
    ViT initialisation (learned positions here, linear layers in chapter 5) uses it.
    """
    return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


def learned_pos_embed(num_tokens: int, dim: int, std: float = 0.02) -> nn.Parameter:
    """A learned position embedding, one row per token, truncated-normal initialised (the ViT default).

    Values are drawn from N(0, std²) and redrawn outside ±2·std. (The ViT code draws N(0, 0.02²);
    timm calls ``trunc_normal_(std=0.02)``, whose default cut-off ±2 is absolute, i.e. 100 std away.)

    Args:
        num_tokens: prefix tokens plus patches, ``T + N`` (197 for ViT-B/16 at 224 pixels).
        dim: the embedding width ``D``.
        std: standard deviation before truncation.

    Shape:
        -> (1, num_tokens, dim)
    """
    if num_tokens <= 0 or dim <= 0:
        raise ValueError(f"a position embedding needs a positive token count and width, got "
                         f"num_tokens={num_tokens}, dim={dim}")
    param = nn.Parameter(torch.zeros(1, num_tokens, dim))
    truncated_normal_(param, std)
    return param


def sincos_pos_embed_1d(positions: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sine-cosine embedding of 1-D positions (Vaswani et al., 2017), sines first then cosines.

    ``emb[p, i] = sin(p * w_i)`` and ``emb[p, dim/2 + i] = cos(p * w_i)`` with
    ``w_i = temperature ** (-i / (dim/2))``, ``i = 0 .. dim/2 - 1``. Computed in float64, returned
    in float32. Positions may be fractional.

    Shape:
        (L,) -> (L, dim)
    """
    if positions.ndim != 1:
        raise ValueError(f"expected a 1-D tensor of positions, got shape {tuple(positions.shape)}; "
                         "flatten it first (positions.flatten())")
    if dim <= 0 or dim % 2:
        raise ValueError(f"a sine-cosine embedding pairs each sine with a cosine, so its width must be "
                         f"positive and even; got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim // 2)  # i / (dim/2)
    omega = temperature ** -omega  # (dim/2,) frequencies w_i, from 1 down towards 1/temperature
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # (L, 1) * (1, dim/2) -> (L, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()  # (L, dim)


def sincos_pos_embed_2d(grid_size: int | tuple[int, int], dim: int, *, num_prefix_tokens: int = 1,
                        temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D sine-cosine position embedding: half the channels for the row, half for the column.

    Channels ``[0, D/2)`` are :func:`sincos_pos_embed_1d` of the row index, channels ``[D/2, D)`` of the
    column index, so ``D`` must be divisible by 4. Prefix tokens (the class token) get zeros.

    Shape:
        -> (1, num_prefix_tokens + h*w, dim)
    """
    if dim <= 0:
        raise ValueError(f"the embedding width must be positive, got {dim}")
    if dim % 4:
        below, above = dim - dim % 4, dim - dim % 4 + 4  # the multiples of 4 around dim
        widths = f"{below} or {above}" if below else f"{above}"
        raise ValueError(f"2-D sine-cosine position embedding splits the width into 4 equal parts "
                         f"(sin/cos of the row and of the column), so it must be divisible by 4; got {dim}. "
                         f"Use a width such as {widths}, or learned positions.")
    if num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be 0 or more, got {num_prefix_tokens}")
    h, w = _check_grid(grid_size, "grid_size")
    rows = torch.arange(h).repeat_interleave(w)  # (N,) row of each token: 0,0,..,1,1,..
    cols = torch.arange(w).repeat(h)  # (N,) column of each token: 0,1,..,0,1,..
    emb = torch.cat([sincos_pos_embed_1d(rows, dim // 2, temperature),
                     sincos_pos_embed_1d(cols, dim // 2, temperature)], dim=1)  # (N, D/2) + (N, D/2) -> (N, D)
    prefix = torch.zeros(num_prefix_tokens, dim)
    return torch.cat([prefix, emb], dim=0).unsqueeze(0)  # (T+N, D) -> (1, T+N, D)


def _split_grid(pos_embed: Tensor, old_grid: int | tuple[int, int] | None,
                num_prefix_tokens: int, name: str = "old_grid") -> tuple[int, int]:
    """Check a ``(1, T + h*w, D)`` embedding against its grid; return ``(h, w)``.

    ``name`` is the caller's parameter for the grid, so that the messages name what to pass.
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"expected a position embedding shaped (1, tokens, dim), got {tuple(pos_embed.shape)}")
    if not 0 <= num_prefix_tokens < pos_embed.shape[1]:
        raise ValueError(f"num_prefix_tokens={num_prefix_tokens} leaves no patch positions in an embedding "
                         f"of {pos_embed.shape[1]} tokens")
    n = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError(f"{n} patch positions (after {num_prefix_tokens} prefix token(s)) do not form "
                             f"a square grid; pass {name}=(rows, columns)")
        return side, side
    oh, ow = _check_grid(old_grid, name)
    if oh * ow != n:
        raise ValueError(f"{name}={(oh, ow)} has {oh * ow} positions but the embedding holds {n} "
                         f"patch positions after {num_prefix_tokens} prefix token(s); pass the grid the "
                         "embedding was trained with (image size // patch size)")
    return oh, ow


def resize_pos_embed(pos_embed: Tensor, new_grid: int | tuple[int, int], *,
                     old_grid: int | tuple[int, int] | None = None, num_prefix_tokens: int = 1,
                     mode: str = "bicubic", antialias: bool = False) -> Tensor:
    """Interpolate a position embedding to a new patch grid, keeping prefix tokens apart.

    Lets a model trained at one resolution run at another (Dosovitskiy et al., 2021, sec. 3.2): the
    patch rows are laid out as a ``D``-channel image of size ``(h, w)``, resized like an image, and
    flattened back; the prefix rows (class token) are copied unchanged. Resizing to the same grid
    returns the same values. ``old_grid`` defaults to the square grid the token count implies.

    Args:
        pos_embed: the embedding, prefix rows first.
        new_grid: the patch grid to resize to, ``(rows, columns)`` or one int for a square.
        old_grid: the grid the embedding was made for; needed when it is not square.
        num_prefix_tokens: rows at the start that are not patches (1 for the class token).
        mode: ``"bicubic"`` (default, as timm and torchvision), ``"bilinear"`` or ``"nearest"``.
        antialias: PyTorch's antialiased resize (timm uses it; torchvision does not). It low-pass filters
            when shrinking, and changes the result when growing too: with ``"bicubic"`` it uses another
            cubic kernel (PIL's, a = -0.5, instead of a = -0.75).

    Shape:
        (1, T + h*w, D) -> (1, T + h'*w', D)
    """
    oh, ow = _split_grid(pos_embed, old_grid, num_prefix_tokens)
    nh, nw = _check_grid(new_grid, "new_grid")
    D = pos_embed.shape[2]
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    grid = grid.reshape(1, oh, ow, D).permute(0, 3, 1, 2)  # (1, h*w, D) -> (1, h, w, D) -> (1, D, h, w)
    work_dtype = torch.promote_types(grid.dtype, torch.float32)  # bf16/fp16 -> fp32, fp64 stays fp64
    grid = F.interpolate(grid.to(work_dtype), size=(nh, nw), mode=mode, antialias=antialias,
                         align_corners=False if mode in _INTERPOLATING_MODES else None).to(pos_embed.dtype)
    grid = grid.permute(0, 2, 3, 1).reshape(1, nh * nw, D)  # (1, D, h', w') -> (1, h', w', D) -> (1, h'*w', D)
    return torch.cat([prefix, grid], dim=1)


def position_similarity(pos_embed: Tensor, grid_size: int | tuple[int, int] | None = None, *,
                        num_prefix_tokens: int = 1) -> Tensor:
    """Cosine similarity of every patch position to every other, laid out on the patch grid.

    ``sim[i, j]`` is the ``(h, w)`` map of how similar position ``(i, j)`` is to each position: the
    panels of Figure 7 of Dosovitskiy et al. (2021). Prefix tokens are left out.

    Shape:
        (1, T + h*w, D) -> (h, w, h, w)
    """
    h, w = _split_grid(pos_embed, grid_size, num_prefix_tokens, "grid_size")
    grid = F.normalize(pos_embed[0, num_prefix_tokens:].detach().float(), dim=-1)  # (N, D), unit rows
    sim = grid @ grid.T  # (N, N) cosine similarities
    return sim.reshape(h, w, h, w)  # (N, N) -> (h, w, h, w): query position first, then the map
