"""Chapter 10: shifted-window attention and pyramids (Swin, Liu et al., 2021; PVT, Wang et al., 2021).

Global self-attention compares every token with every other: its cost grows with the square of the
token count. Swin restricts attention to non-overlapping M x M windows (linear in the token count),
shifts the windows by M/2 in every other block so information crosses window borders, adds a learned
relative position bias inside each window, and merges 2 x 2 neighbouring tokens between stages to build
a pyramid of fewer, wider tokens.

Letters: B batch, H/W token grid height/width, C channels, M window side, A = M*M tokens per window,
nW = (H/M)(W/M) windows per image, nh heads, d = C/nh width per head, s shift.
Token maps are channels-last, (B, H, W, C), as in Swin and timm.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import attention
from .encoder import MLP

__all__ = [
    "window_partition", "window_reverse", "cyclic_shift", "shift_region_labels", "shifted_window_mask",
    "relative_position_index", "WindowAttention", "SwinBlock", "PatchMerging",
    "msa_macs", "pyramid_costs",
]


def _check_grid(H: int, W: int, window_size: int) -> None:
    if window_size < 1:
        raise ValueError(f"window_size must be a positive integer, got {window_size}")
    if H % window_size or W % window_size:
        raise ValueError(f"the window side {window_size} must divide the token grid {H}x{W}: "
                         f"{H}/{window_size} = {H / window_size:.3g}, {W}/{window_size} = {W / window_size:.3g}. "
                         f"Pick a window that divides both sides (for {H}x{W}: "
                         f"{[m for m in range(1, min(H, W) + 1) if H % m == 0 and W % m == 0]}) or pad the map")


def _check_map(x: Tensor, what: str = "x") -> None:
    if x.ndim != 4:
        raise ValueError(f"expected {what} as a channels-last token map (B, H, W, C), got shape {tuple(x.shape)}; "
                         "from (B, C, H, W) use x.permute(0, 2, 3, 1), from (B, N, C) use x.reshape(B, H, W, C)")


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """Cut a token map into non-overlapping ``M x M`` windows, windows of one image next to each other.

    Shape:
        (B, H, W, C) -> (B * nW, M, M, C), nW = (H/M)(W/M), windows in row-major order
    """
    _check_map(x)
    B, H, W, C = x.shape
    _check_grid(H, W, window_size)
    M = window_size
    x = x.reshape(B, H // M, M, W // M, M, C)  # split each side: (B, H/M, M, W/M, M, C)
    x = x.permute(0, 1, 3, 2, 4, 5)  # window index first: (B, H/M, W/M, M, M, C)
    return x.reshape(-1, M, M, C)  # (B * nW, M, M, C)


def window_reverse(windows: Tensor, window_size: int, H: int, W: int) -> Tensor:
    """Inverse of :func:`window_partition`: put windows back into token maps.

    Shape:
        (B * nW, M, M, C) -> (B, H, W, C)
    """
    if windows.ndim != 4 or windows.shape[1:3] != (window_size, window_size):
        raise ValueError(f"expected windows shaped (B * nW, {window_size}, {window_size}, C), "
                         f"got {tuple(windows.shape)}")
    _check_grid(H, W, window_size)
    M, C = window_size, windows.shape[-1]
    nW = (H // M) * (W // M)
    if windows.shape[0] % nW:
        raise ValueError(f"{windows.shape[0]} windows do not make whole {H}x{W} maps of {nW} windows each")
    x = windows.reshape(-1, H // M, W // M, M, M, C)  # (B, H/M, W/M, M, M, C)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B, H/M, M, W/M, M, C)
    return x.reshape(-1, H, W, C)  # (B, H, W, C)


def cyclic_shift(x: Tensor, shift: int) -> Tensor:
    """Roll a token map up and left by ``shift`` (``-shift`` rolls it back): Swin's cyclic shift.

    Rows and columns that leave at the top and left come back at the bottom and right, so the
    shifted map can be cut into as many windows as the unshifted one.

    Shape:
        (B, H, W, C) -> (B, H, W, C)
    """
    _check_map(x)
    return torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))


def shift_region_labels(H: int, W: int, window_size: int, shift: int, device: torch.device | None = None) -> Tensor:
    """Label every position of the *shifted* map with the region it came from (0..8).

    After the cyclic shift, the last window row and column hold tokens from two or three parts of the
    original map that were not neighbours. Along each axis there are three bands: ``[0, H-M)``,
    ``[H-M, H-s)`` and ``[H-s, H)``; a region is a pair of bands. Tokens may only attend to tokens with
    the same label (Liu et al., 2021, sec. 3.2, "efficient batch computation for shifted configuration").

    Shape:
        -> (H, W) integer labels
    """
    _check_grid(H, W, window_size)
    if not 0 <= shift < window_size:
        raise ValueError(f"shift must be in [0, window_size) = [0, {window_size}), got {shift}; Swin uses M // 2")

    def bands(n: int) -> Tensor:
        band = torch.zeros(n, dtype=torch.long, device=device)
        band[n - window_size:] = 1
        if shift:
            band[n - shift:] = 2
        return band

    return bands(H)[:, None] * 3 + bands(W)[None, :]  # (H, 1) * 3 + (1, W) -> (H, W)


def shifted_window_mask(H: int, W: int, window_size: int, shift: int,
                        device: torch.device | None = None) -> Tensor:
    """Which pairs of tokens in each window of the shifted map must *not* attend to each other.

    ``mask[w, i, j]`` is True when tokens ``i`` and ``j`` of window ``w`` came from different regions
    (see :func:`shift_region_labels`). With ``shift == 0`` nothing is blocked.

    Shape:
        -> (nW, A, A) boolean, A = M * M
    """
    labels = shift_region_labels(H, W, window_size, shift, device=device)  # (H, W)
    windows = window_partition(labels[None, :, :, None], window_size)  # (1, H, W, 1) -> (nW, M, M, 1)
    windows = windows.reshape(-1, window_size * window_size)  # (nW, A)
    return windows[:, :, None] != windows[:, None, :]  # (nW, A, 1) vs (nW, 1, A) -> (nW, A, A)


def relative_position_index(window_size: int) -> Tensor:
    """Index into the table of relative position biases for every (query, key) pair of one window.

    Two tokens at rows ``y1, y2`` and columns ``x1, x2`` are ``(dy, dx) = (y1 - y2, x1 - x2)`` apart,
    each in ``[-(M-1), M-1]``: ``(2M-1)²`` possible offsets, numbered
    ``(dy + M - 1) * (2M - 1) + (dx + M - 1)``. The same offset gets the same learned bias everywhere
    in the window (Liu et al., 2021, eq. 4; Shaw et al., 2018).

    Shape:
        -> (A, A) long, values in [0, (2M-1)²)
    """
    if window_size < 1:
        raise ValueError(f"window_size must be a positive integer, got {window_size}")
    M = window_size
    rows = torch.arange(M).repeat_interleave(M)  # (A,) row of each token: 0 0 0 1 1 1 ...
    cols = torch.arange(M).repeat(M)  # (A,) column of each token: 0 1 2 0 1 2 ...
    dy = rows[:, None] - rows[None, :]  # (A, A)
    dx = cols[:, None] - cols[None, :]  # (A, A)
    return (dy + M - 1) * (2 * M - 1) + (dx + M - 1)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a relative position bias (W-MSA / SW-MSA).

    ``softmax(q kᵀ / sqrt(d) + bias + mask) v`` where ``bias[n, i, j] = table[index[i, j], n]`` is a
    learned bias per head n and relative offset, and ``mask`` is ``-inf`` for the pairs
    :func:`shifted_window_mask` blocks (Liu et al., 2021, eq. 4). Parameter names are timm's
    (``qkv``, ``proj``, ``relative_position_bias_table``), so weights copy over with ``load_state_dict``.

    The fast path calls ``F.scaled_dot_product_attention``; ``return_attention=True`` computes the softmax
    explicitly and also returns the weights.

    Shape:
        (B * nW, A, C) -> (B * nW, A, C); with a mask (nW, A, A), windows of one image are consecutive
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, *, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim <= 0 or num_heads <= 0 or dim % num_heads:
            raise ValueError(f"the width {dim} must be divisible by the number of heads {num_heads}; for width "
                             f"{dim} try heads in {[n for n in range(1, min(dim, 16) + 1) if dim % n == 0]}")
        if window_size < 1:
            raise ValueError(f"window_size must be a positive integer, got {window_size}")
        self.dim, self.num_heads, self.window_size = dim, num_heads, window_size
        self.head_dim = dim // num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def relative_position_bias(self) -> Tensor:
        """The bias added to every window's scores, looked up from the table.

        Shape:
            -> (nh, A, A)
        """
        A = self.window_size ** 2
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]  # (A*A, nh)
        return bias.reshape(A, A, self.num_heads).permute(2, 0, 1)  # (A, A, nh) -> (nh, A, A)

    def forward(self, x: Tensor, mask: Tensor | None = None,
                return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if x.ndim != 3 or x.shape[1] != self.window_size ** 2 or x.shape[2] != self.dim:
            raise ValueError(f"expected windows of tokens shaped (B * nW, {self.window_size ** 2}, {self.dim}) "
                             f"(window {self.window_size}x{self.window_size}, width {self.dim}), got "
                             f"{tuple(x.shape)}; cut token maps with window_partition first")
        Bw, A, C = x.shape
        nh, d = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(Bw, A, 3, nh, d)  # (Bw, A, 3C) -> (Bw, A, 3, nh, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (3, Bw, nh, A, d) -> 3 x (Bw, nh, A, d)
        bias = self.relative_position_bias().unsqueeze(0)  # (1, nh, A, A)
        if mask is not None:
            nW = mask.shape[0]
            if mask.shape != (nW, A, A) or Bw % nW:
                raise ValueError(f"mask must be (nW, {A}, {A}) with nW dividing the {Bw} windows, "
                                 f"got {tuple(mask.shape)}; build it with shifted_window_mask")
            blocked = torch.zeros(mask.shape, dtype=bias.dtype, device=x.device).masked_fill(mask, float("-inf"))
            bias = bias.unsqueeze(1) + blocked[None, :, None]  # (1, 1, nh, A, A) + (1, nW, 1, A, A)
            bias = bias.expand(Bw // nW, nW, nh, A, A).reshape(Bw, nh, A, A)  # (B, nW, nh, A, A) -> (Bw, nh, A, A)
        if return_attention:
            out, weights = attention(q, k, v, bias=bias)  # (Bw, nh, A, d), weights (Bw, nh, A, A)
        else:
            out, weights = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype)), None
        out = self.proj(out.transpose(1, 2).reshape(Bw, A, C))  # (Bw, nh, A, d) -> (Bw, A, nh, d) -> (Bw, A, C)
        return (out, weights) if return_attention else out

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, window_size={self.window_size}"


class SwinBlock(nn.Module):
    """A Swin block: pre-norm window attention (shifted when ``shift_size > 0``) and an MLP, with residuals.

    ``x = x + reverse_shift(W-MSA(shift(LN(x))))``, then ``x = x + MLP(LN(x))`` (Liu et al., 2021, eq. 3).
    Swin alternates ``shift_size = 0`` and ``M // 2``. Parameter names match timm's ``SwinTransformerBlock``.

    Args:
        dim: channels C.
        num_heads: attention heads; must divide ``dim``.
        input_resolution: the token grid ``(H, W)`` this block runs on (the shifted mask is built for it).
        window_size: window side M; must divide H and W.
        shift_size: cyclic shift s, in ``[0, M)``.
        mlp_ratio: MLP hidden width over ``dim``.

    Shape:
        (B, H, W, C) -> (B, H, W, C)
    """

    def __init__(self, dim: int, num_heads: int, *, input_resolution: tuple[int, int], window_size: int = 7,
                 shift_size: int = 0, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        H, W = input_resolution
        self.input_resolution, self.window_size, self.shift_size = (H, W), window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio=mlp_ratio)
        mask = shifted_window_mask(H, W, window_size, shift_size) if shift_size else None  # checks the grid
        self.register_buffer("attn_mask", mask, persistent=False)  # (nW, A, A) or None

    def forward(self, x: Tensor) -> Tensor:
        _check_map(x)
        B, H, W, C = x.shape
        if (H, W) != self.input_resolution:
            raise ValueError(f"this block was built for a {self.input_resolution} token grid, got {(H, W)}")
        M, s = self.window_size, self.shift_size
        y = cyclic_shift(self.norm1(x), s) if s else self.norm1(x)  # (B, H, W, C)
        windows = window_partition(y, M).reshape(-1, M * M, C)  # (B * nW, M, M, C) -> (B * nW, A, C)
        windows = self.attn(windows, mask=self.attn_mask)  # (B * nW, A, C)
        y = window_reverse(windows.reshape(-1, M, M, C), M, H, W)  # (B, H, W, C)
        x = x + (cyclic_shift(y, -s) if s else y)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Merge each 2 x 2 group of neighbouring tokens into one: half the side, twice the channels.

    The four tokens' features are concatenated (4C, in Swin's order: top-left, bottom-left, top-right,
    bottom-right), normalised, and projected to ``out_dim`` (2C by default) without bias (Liu et al., 2021,
    sec. 3.1). Parameter names match timm's ``PatchMerging``.

    Shape:
        (B, H, W, C) -> (B, H/2, W/2, 2C)
    """

    def __init__(self, dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.dim, self.out_dim = dim, out_dim or 2 * dim
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, self.out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        _check_map(x)
        B, H, W, C = x.shape
        if H % 2 or W % 2 or C != self.dim:
            raise ValueError(f"PatchMerging({self.dim}) needs an even token grid with {self.dim} channels, got "
                             f"{tuple(x.shape)} (B, H, W, C); pad the map to even sides or fix the width")
        x = x.reshape(B, H // 2, 2, W // 2, 2, C)  # (B, H/2, dy, W/2, dx, C)
        x = x.permute(0, 1, 3, 4, 2, 5)  # (B, H/2, W/2, dx, dy, C): dy varies fastest, as Swin's x0, x1, x2, x3
        x = x.reshape(B, H // 2, W // 2, 4 * C)  # (B, H/2, W/2, 4C)
        return self.reduction(self.norm(x))  # (B, H/2, W/2, 2C)


def msa_macs(H: int, W: int, dim: int, window_size: int | None = None, *, projections: bool = True) -> int:
    """Multiply-accumulates of one self-attention layer on an ``H x W`` token grid, for one image.

    Global (``window_size=None``): ``4HWC² + 2(HW)²C``; windowed: ``4HWC² + 2M²HWC`` (Liu et al., 2021,
    eq. 1-2). The ``4HWC²`` are the q, k, v and output projections (left out with ``projections=False``);
    the rest are ``q kᵀ`` and the weighted sum of values. Softmax, bias and mask are not counted.
    """
    n = H * W
    keys = n if window_size is None else window_size * window_size
    if window_size is not None:
        _check_grid(H, W, window_size)
    return (4 * n * dim * dim if projections else 0) + 2 * n * keys * dim


def pyramid_costs(*, image_size: int = 224, patch_size: int = 4, dim: int = 96,
                  depths: tuple[int, ...] = (2, 2, 6, 2), window_size: int = 7, mlp_ratio: float = 4.0,
                  in_channels: int = 3, num_classes: int = 1000) -> list[dict]:
    """Tokens, channels and multiply-accumulates of each stage of a Swin-style pyramid, for one image.

    Stage 1 runs on the ``(image_size / patch_size)²`` patch grid with ``dim`` channels (timm's
    ``embed_dim``); every later stage starts with a :class:`PatchMerging` (4x fewer tokens, 2x the
    channels). Each block costs :func:`msa_macs` (windowed) plus its MLP, ``2 · N · C · mlp_ratio·C``.
    The patch embedding is counted in stage 1, the merging in the stage it starts, and the classifier
    head in the last stage. A window larger than the grid shrinks to the grid, as in Swin. Defaults:
    Swin-T at 224 px.

    Returns:
        one dict per stage: ``stage, grid, tokens, channels, window, depth, attention_macs`` (the
        ``q kᵀ`` and values part), ``macs`` (everything in the stage).
    """
    side = image_size // patch_size
    if side * patch_size != image_size:
        raise ValueError(f"patch_size {patch_size} must divide image_size {image_size}")
    C, stages = dim, []
    for i, depth in enumerate(depths):
        macs = side * side * in_channels * patch_size * patch_size * C if i == 0 else 0  # patch embedding
        if i > 0:
            if side % 2:
                raise ValueError(f"stage {i + 1} must merge a {side}x{side} grid, which is odd; "
                                 "choose image_size / patch_size divisible by 2**(len(depths)-1)")
            side //= 2
            macs += side * side * (4 * C) * (2 * C)  # merging: (N/4) tokens, 4C -> 2C
            C *= 2
        M = min(window_size, side)
        n = side * side
        attention = depth * msa_macs(side, side, C, M, projections=False)
        macs += depth * (msa_macs(side, side, C, M) + 2 * n * C * int(C * mlp_ratio))
        if i == len(depths) - 1:
            macs += C * num_classes
        stages.append(dict(stage=i + 1, grid=side, tokens=n, channels=C, window=M, depth=depth,
                           attention_macs=attention, macs=macs))
    return stages
