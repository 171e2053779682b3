"""Chapter 7: what the model attends to: attention maps, rollout, attention distance, Figure 7.

Letters: B batch, L layers (encoder blocks), nh heads, T prefix tokens (1 with a class token, else 0), N = h*w
patches on an (h, w) grid, S = T + N tokens, P patch size in pixels, C channels, D width, K components.

Collecting the weights is opt-in: :class:`AttentionRecorder` hooks every
:class:`~vit_from_scratch.attention.MultiHeadSelfAttention` only inside a ``with`` block, so the
model's ordinary forward pass keeps its fast fused path and nothing of this module slows it.
Computation only (torch): the pictures are drawn by :mod:`vit_from_scratch.attention_plots`, so
computing maps does not import matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiHeadSelfAttention

__all__ = ["Fusion", "FUSIONS", "METHODS", "TokenLayout", "AttentionRecorder", "collect_attention",
           "fuse_heads", "pooled_attention", "to_grid", "upsample_maps", "attention_rollout", "patch_distances",
           "mean_attention_distance", "uniform_attention_distance", "patch_embedding_components",
           "rank_heads", "attention_view"]

Fusion = Literal["mean", "max", "min"]
FUSIONS: tuple[Fusion, ...] = ("mean", "max", "min")  # the ways to fuse heads into one map
METHODS = ("attention", "rollout")  # one layer's attention, or the rollout through the layers


# Where the tokens are -------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenLayout:
    """How a model's token sequence maps back to the image: what a map needs to be drawn.

    Args:
        grid_size: patches per column and per row, ``(h, w)``.
        patch_size: side of one patch in pixels.
        num_prefix_tokens: tokens before the patches (1 for a class token, else 0).
        pool: ``"cls"`` (the class token is read out) or ``"mean"`` (the patch tokens are averaged).
    """

    grid_size: tuple[int, int]
    patch_size: int
    num_prefix_tokens: int = 1
    pool: Literal["cls", "mean"] = "cls"

    def __post_init__(self) -> None:
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {self.pool!r}")
        if self.pool == "cls" and self.num_prefix_tokens < 1:
            raise ValueError("pool='cls' reads the class token, so num_prefix_tokens must be at least 1; "
                             "use pool='mean' for a model without a class token")

    @classmethod
    def of(cls, model: nn.Module) -> TokenLayout:
        """The layout of a :class:`~vit_from_scratch.model.VisionTransformer`."""
        return cls(grid_size=tuple(model.patch_embed.grid_size), patch_size=int(model.patch_embed.patch_size),
                   num_prefix_tokens=int(model.num_prefix_tokens), pool=model.config.pool)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.num_patches

    @property
    def image_size(self) -> tuple[int, int]:
        return self.grid_size[0] * self.patch_size, self.grid_size[1] * self.patch_size

    @property
    def map_label(self) -> str:
        """What a map of this model shows, in a few words (for titles)."""
        if self.pool == "cls":
            return "class token's attention to each patch"
        return "mean attention each patch receives from the patches"


def _check_square(weights: Tensor, layout: TokenLayout | None = None, what: str = "attention weights") -> None:
    if weights.ndim < 2 or weights.shape[-1] != weights.shape[-2]:
        raise ValueError(f"{what} must end in a square (queries, keys) pair of axes, got shape "
                         f"{tuple(weights.shape)}")
    if layout is not None and weights.shape[-1] != layout.num_tokens:
        raise ValueError(f"{what} cover {weights.shape[-1]} tokens but the layout has {layout.num_tokens} "
                         f"({layout.num_prefix_tokens} prefix + {layout.num_patches} patches); pass the "
                         "layout of the model that produced them, TokenLayout.of(model)")


def _check_rows_sum_to_one(matrix: Tensor, what: str, atol: float = 1e-4) -> None:
    worst = (matrix.sum(dim=-1) - 1).abs().max().item()
    if not worst <= atol:  # also catches NaN
        raise ValueError(f"{what}: rows must sum to 1 (every query distributes one unit of attention), "
                         f"but a row sum is off by {worst:.3g}; were these softmax weights?")


# Collecting the weights -----------------------------------------------------------------------
class AttentionRecorder:
    """Record the attention weights of every :class:`MultiHeadSelfAttention` in a model.

    Inside ``with AttentionRecorder(model) as rec:`` each attention module is called with
    ``return_attention=True`` (so it takes the explicit-softmax path), its weights are appended to
    ``rec.weights`` in call order, and the caller still gets the plain output it asked for. On exit
    the hooks are removed and the model is exactly as before: its forward pass takes the fused
    fast path again. A recorder can be entered again; each entry starts an empty list.

    Shape:
        ``rec.weights``: one (B, nh, S, S) tensor per attention call (per layer, for one forward pass)
    """

    def __init__(self, model: nn.Module) -> None:
        self.modules = [m for m in model.modules() if isinstance(m, MultiHeadSelfAttention)]
        if not self.modules:
            raise ValueError(f"{type(model).__name__} contains no MultiHeadSelfAttention module, so there "
                             "is no attention to record; pass a VisionTransformer (or a module built from "
                             "vit_from_scratch.attention)")
        self.weights: list[Tensor] = []
        self._handles: list = []
        self._caller_asked: list[bool] = []

    def _before(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        asked = bool(kwargs.get("return_attention", False))
        if len(args) > 1:  # return_attention passed by position
            asked, args = bool(args[1]), args[:1]
        self._caller_asked.append(asked)
        return args, {**kwargs, "return_attention": True}

    def _after(self, module: nn.Module, args: tuple, kwargs: dict, output: tuple[Tensor, Tensor]):
        out, weights = output
        self.weights.append(weights.detach())
        return output if self._caller_asked.pop() else out

    def __enter__(self) -> AttentionRecorder:
        if self._handles:
            raise RuntimeError("this AttentionRecorder is already active; leave its `with` block first")
        self.weights, self._caller_asked = [], []
        for m in self.modules:
            self._handles.append(m.register_forward_pre_hook(self._before, with_kwargs=True))
            self._handles.append(m.register_forward_hook(self._after, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@torch.no_grad()
def collect_attention(model: nn.Module, images: Tensor, *, check: bool = True,
                      atol: float = 1e-4) -> tuple[Tensor, Tensor]:
    """Run ``model(images)`` once with an :class:`AttentionRecorder`; return the logits and every weight.

    With ``check=True`` the model also runs once without the recorder, and the two sets of logits
    must agree (to ``atol``, relative to the largest logit): collecting must not change what the
    model computes. The model must be in eval mode, so that dropout does not differ between runs.

    Shape:
        images (B, C, H, W) -> logits (B, K), weights (B, L, nh, S, S)
    """
    if model.training:
        raise ValueError("the model is in training mode, where dropout makes every forward pass differ; "
                         "call model.eval() before collecting attention")
    recorder = AttentionRecorder(model)
    with recorder:
        logits = model(images)
    if len(recorder.weights) != len(recorder.modules):
        raise RuntimeError(f"expected one attention call per module ({len(recorder.modules)}), recorded "
                           f"{len(recorder.weights)}; does the model call a block twice or skip one?")
    weights = torch.stack(recorder.weights, dim=1)  # L x (B, nh, S, S) -> (B, L, nh, S, S)
    if check:
        plain = model(images)
        tol = atol * max(1.0, plain.abs().max().item())
        diff = (plain - logits).abs().max().item()
        if not diff <= tol:
            raise RuntimeError(f"logits with attention collection differ from the plain forward pass by "
                               f"{diff:.3g} (tolerance {tol:.3g}): recording must not change the model")
    return logits, weights


# From weights to maps -------------------------------------------------------------------------
def fuse_heads(weights: Tensor, how: Fusion = "mean") -> Tensor:
    """Fuse the heads of one or more layers by their mean, maximum or minimum.

    Shape:
        (..., nh, S, S) -> (..., S, S)
    """
    _check_square(weights)
    reduce = {"mean": torch.mean, "max": torch.amax, "min": torch.amin}
    if how not in reduce:
        raise ValueError(f"head fusion must be one of {FUSIONS}, got {how!r}")
    return reduce[how](weights, dim=-3)  # (..., nh, S, S) -> (..., S, S)


def pooled_attention(weights: Tensor, layout: TokenLayout) -> Tensor:
    """The attention of what the head reads out, to every patch.

    With ``pool="cls"``: the class token's row, restricted to the patch columns (its attention to
    itself is left out, so a map sums to at most 1). With ``pool="mean"``: the patch rows averaged,
    i.e. the mean attention each patch *receives* from the patch tokens, which the mean-pooled head
    reads out.

    Shape:
        (..., S, S) -> (..., N)
    """
    _check_square(weights, layout)
    T = layout.num_prefix_tokens
    if layout.pool == "cls":
        return weights[..., 0, T:]  # (..., S, S) -> (..., N): row of the class token
    return weights[..., T:, T:].mean(dim=-2)  # (..., N, N) -> (..., N): column means over patch queries


def to_grid(maps: Tensor, layout: TokenLayout) -> Tensor:
    """Lay patch values out on the patch grid (tokens are in row-major order).

    Shape:
        (..., N) -> (..., h, w)
    """
    h, w = layout.grid_size
    if maps.shape[-1] != h * w:
        raise ValueError(f"expected {h * w} patch values (a {h}x{w} grid), got shape {tuple(maps.shape)}; "
                         "drop the prefix tokens first (pooled_attention does)")
    return maps.reshape(*maps.shape[:-1], h, w)  # (..., N) -> (..., h, w)


def upsample_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of patch-grid maps to image size, for overlays.

    Shape:
        (..., h, w) -> (..., H, W)
    """
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()  # (..., h, w) -> (M, 1, h, w)
    up = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)  # (M, 1, H, W)
    return up.reshape(*lead, *up.shape[-2:])  # (M, 1, H, W) -> (..., H, W)


def attention_rollout(weights: Tensor, *, head_fusion: Fusion = "mean", add_residual: bool = True) -> Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each token draws on each input token.

    Per layer ``l``: fuse the heads, ``Ã_l = fuse(A_l) + I`` (the residual connection carries each
    token on; skipped with ``add_residual=False``), then renormalise every row to sum to one. The
    rollout through layer ``l`` is ``Ã_l Ã_(l-1) ... Ã_1``. Every step is checked: rows sum to one.
    Computed in float64.

    Shape:
        (B, L, nh, S, S) -> (B, L, S, S): entry ``[:, l]`` is the rollout through layers 1..l+1
    """
    if weights.ndim != 5:
        raise ValueError(f"expected attention weights shaped (B, L, nh, S, S) as collect_attention returns, "
                         f"got {tuple(weights.shape)}; for one image use weights.unsqueeze(0)")
    _check_square(weights)
    _check_rows_sum_to_one(weights, "attention weights given to attention_rollout")
    fused = fuse_heads(weights.double(), head_fusion)  # (B, L, S, S)
    B, L, S, _ = fused.shape
    eye = torch.eye(S, dtype=fused.dtype, device=fused.device)  # (S, S)
    joint = eye.expand(B, S, S)  # (B, S, S): before any layer, each token is itself
    steps = []
    for layer in range(L):
        a = fused[:, layer] + eye if add_residual else fused[:, layer]  # (B, S, S)
        sums = a.sum(dim=-1, keepdim=True)  # (B, S, 1)
        if not bool((sums > 0).all()):
            raise ValueError(f"layer {layer + 1}: a row of the fused attention sums to zero, so it cannot be "
                             "renormalised; use add_residual=True or another head fusion")
        a = a / sums
        _check_rows_sum_to_one(a, f"rollout, layer {layer + 1}, after renormalising")
        joint = a @ joint  # (B, S, S) @ (B, S, S) -> (B, S, S)
        _check_rows_sum_to_one(joint, f"rollout through layer {layer + 1}")
        steps.append(joint)
    return torch.stack(steps, dim=1).to(weights.dtype)  # L x (B, S, S) -> (B, L, S, S)


# How far attention reaches ---------------------------------------------------------------------
def patch_distances(grid_size: tuple[int, int], patch_size: int) -> Tensor:
    """Euclidean distance in pixels between the centres of every pair of patches.

    Shape:
        -> (N, N)
    """
    h, w = grid_size
    rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)  # (N,) row of each patch
    cols = torch.arange(w, dtype=torch.float64).repeat(h)  # (N,) column of each patch
    centres = torch.stack([rows, cols], dim=1) * patch_size  # (N, 2), in pixels
    return torch.cdist(centres, centres)  # (N, N)


def mean_attention_distance(weights: Tensor, layout: TokenLayout) -> Tensor:
    """Mean attention distance in pixels (Dosovitskiy et al., 2021, Figure 7, right).

    For each patch query, the distance to every patch key weighted by the attention it pays it, then
    averaged over the queries. Only patch-to-patch attention counts: the prefix tokens have no place
    in the image, so each query's row is restricted to the patches and renormalised. A head that
    attends only to the token itself has distance 0; one that attends uniformly has
    :func:`uniform_attention_distance`.

    Shape:
        (..., S, S) -> (...), e.g. (B, L, nh, S, S) -> (B, L, nh)
    """
    _check_square(weights, layout)
    T = layout.num_prefix_tokens
    a = weights[..., T:, T:].double()  # (..., N, N) patch queries to patch keys
    a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)  # rows renormalised over the patches
    dist = patch_distances(layout.grid_size, layout.patch_size).to(a.device)  # (N, N)
    per_query = (a * dist).sum(dim=-1)  # (..., N)
    return per_query.mean(dim=-1).to(weights.dtype)  # (...)


def uniform_attention_distance(layout: TokenLayout) -> float:
    """The mean attention distance of a head that spreads its attention evenly over all patches."""
    return patch_distances(layout.grid_size, layout.patch_size).mean().item()


# Figure 7, left: the patch-embedding filters -------------------------------------------------------
def patch_embedding_components(proj_weight: Tensor, k: int = 28) -> tuple[Tensor, Tensor]:
    """Principal components of the patch-embedding filters (Dosovitskiy et al., 2021, Figure 7, left).

    Each of the D filters of the patch projection is a vector of ``C*P*P`` numbers. Centred on the
    mean filter, their principal directions (right singular vectors) are the patterns the embedding
    is most sensitive to. Signs are fixed so that each component's largest entry is positive.

    Returns:
        the first ``k`` components as images, and the fraction of the filters' variance each explains.

    Shape:
        (D, C, P, P) -> components (k, C, P, P), explained (k,)
    """
    if proj_weight.ndim != 4:
        raise ValueError(f"expected a Conv2d weight shaped (D, C, P, P), got {tuple(proj_weight.shape)}; "
                         "pass model.patch_embed.proj.weight")
    D, C, P, Q = proj_weight.shape
    flat = proj_weight.detach().double().reshape(D, C * P * Q)  # (D, C, P, P) -> (D, C*P*P)
    flat = flat - flat.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(flat, full_matrices=False)  # vh (min(D, CPP), CPP)
    k = min(k, vh.shape[0])
    comps = vh[:k]  # (k, C*P*P)
    sign = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))  # (k, 1)
    comps = comps * sign
    explained = (s**2 / (s**2).sum())[:k]
    return comps.reshape(k, C, P, Q).float(), explained.float()  # (k, C*P*P) -> (k, C, P, P)


# Choosing heads --------------------------------------------------------------------------------
def rank_heads(maps: Tensor, by: Literal["specific", "focused"] = "specific") -> Tensor:
    """Score every head of every image, higher = more telling.

    ``"focused"``: minus the entropy of the head's map (renormalised to sum to one): heads that look at
    few patches. ``"specific"``: the KL divergence of the head's map for this image from that head's
    mean map over the batch: heads that look somewhere *particular to this image*, rather than where
    they always look (a fixed corner, the whole image).

    Shape:
        maps (B, L, nh, N) -> scores (B, L, nh)
    """
    if maps.ndim != 4:
        raise ValueError(f"expected per-head maps shaped (B, L, nh, N), got {tuple(maps.shape)}")
    p = maps.double().clamp_min(1e-12)
    p = p / p.sum(dim=-1, keepdim=True)  # (B, L, nh, N), each map a distribution over patches
    if by == "focused":
        return (p * p.log()).sum(dim=-1).float()  # minus the entropy
    if by == "specific":
        ref = p.mean(dim=0, keepdim=True)  # (1, L, nh, N)
        return (p * (p.log() - ref.log())).sum(dim=-1).float()  # KL(p || mean over the batch)
    raise ValueError(f"by must be 'specific' or 'focused', got {by!r}")


def attention_view(weights: Tensor, layout: TokenLayout, *, layer: int, head: int | Fusion = "mean",
                   method: Literal["attention", "rollout"] = "attention") -> Tensor:
    """One map of one image: a layer's attention (one head or fused heads), or the rollout to a layer.

    ``layer`` counts from 1 (``-1`` for the last). ``method="rollout"`` fuses the heads of every layer
    up to ``layer`` by ``head``, which must then be ``"mean"``, ``"max"`` or ``"min"``.

    Shape:
        (L, nh, S, S) -> (h, w)
    """
    if weights.ndim != 4:
        raise ValueError(f"expected one image's weights shaped (L, nh, S, S), got {tuple(weights.shape)}; "
                         "index the batch first, weights[b]")
    L, nh = weights.shape[:2]
    index = layer - 1 if layer > 0 else L + layer
    if not 0 <= index < L:
        raise ValueError(f"layer must be in 1..{L} (or negative from the end), got {layer}")
    if method == "attention":
        if isinstance(head, str):
            a = fuse_heads(weights[index], head)  # (S, S)
        elif 0 <= head < nh:
            a = weights[index, head]  # (S, S)
        else:
            raise ValueError(f"head must be in 0..{nh - 1} or one of {FUSIONS}, got {head!r}")
    elif method == "rollout":
        if head not in FUSIONS:
            raise ValueError(f"rollout combines all heads of every layer; head must be one of {FUSIONS}, "
                             f"got {head!r}")
        a = attention_rollout(weights[None, : index + 1], head_fusion=head)[0, -1]  # (S, S)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return to_grid(pooled_attention(a, layout), layout)  # (S, S) -> (N,) -> (h, w)
