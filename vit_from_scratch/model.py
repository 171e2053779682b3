"""Chapter 5: the complete Vision Transformer (Dosovitskiy et al., 2021).

Letters: B batch, C channels, H/W image height/width, P patch size, N patches, T prefix tokens (1
with a class token, 2 with DeiT's distillation token too, else 0), D width, M MLP width, K classes.

The configuration and the named sizes live in :mod:`vit_from_scratch.config` (re-exported here),
weight loading from other libraries' layouts in :mod:`vit_from_scratch.interop`, the report on a
state dict that does not fit in :mod:`vit_from_scratch.state_dicts`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import NAMED_SIZES, ViTConfig, vit_config
from .encoder import Encoder
from .patches import PatchEmbedding, check_channels, to_2tuple
from .positions import (
    learned_pos_embed,
    resize_pos_embed,
    sincos_pos_embed_2d,
    truncated_normal_,
)
from .state_dicts import mismatch_report

__all__ = ["ViTConfig", "VisionTransformer", "NAMED_SIZES", "vit_config", "to_resolution", "init_layer"]


def _resolve_config(config: ViTConfig | str | None, overrides: Mapping[str, Any]) -> ViTConfig:
    """A config from a config, a size name or ``None`` (ViT-B/16), with ``overrides`` applied."""
    if isinstance(config, str):
        config = vit_config(config)
    config = config if config is not None else ViTConfig()
    if not isinstance(config, ViTConfig):
        raise TypeError(f"expected a ViTConfig or a size name, got {type(config).__name__}; "
                        "for a dict use ViTConfig.from_dict(d)")
    return config.replace(**overrides) if overrides else config


def init_layer(module: nn.Module) -> None:
    """The ViT's initialisation of one layer (not of its children): a linear layer's weight from a
    truncated normal (std 0.02) and its bias at zero, a LayerNorm at ones and zeros; other layers untouched.
    Models built from the same layers (chapter 10's Swin) call it too."""
    if isinstance(module, nn.Linear):
        truncated_normal_(module.weight, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class VisionTransformer(nn.Module):
    """ViT: patch embedding, class token, positions, encoder, final norm, pooling, linear head.

    ``state_dict()`` keys follow timm's names (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
    ``blocks.{i}...``, ``norm`` or ``fc_norm``, ``head``), so a timm ``VisionTransformer`` built with
    ``timm_kwargs(config)`` loads with plain ``load_state_dict``; torchvision's layout loads through
    :meth:`from_torchvision`.

    Args:
        config: a :class:`ViTConfig`, or the name of a size (``"B/16"``, ``"cifar-tiny"``); default
            ViT-B/16.
        embed_layer: the patch embedding, instead of a :class:`PatchEmbedding` (timm's hook of the
            same name): a module, or a function ``config -> module``. It must turn
            ``(B, C, H, W)`` images into ``(B, N, D)`` tokens and expose ``grid_size``, the config's
            ``(H/P, W/P)``; a ``proj`` convolution, if it has one, gets the patch projection's
            initialisation.
        weight_init: ``"vit"`` runs :meth:`init_weights`; ``"skip"`` leaves PyTorch's default
            initialisation, for a subclass that adds parts first and then calls :meth:`init_weights`
            itself (timm's ``weight_init='skip'``).
        **overrides: config fields to change, e.g. ``num_classes=10``.

    Shape:
        (B, C, H, W) -> (B, K)
    """

    extra_tokens: int = 0  # prefix tokens a subclass adds after the class token (DeiT's distillation token)

    def __init__(self, config: ViTConfig | str | None = None, *,
                 embed_layer: nn.Module | Callable[[ViTConfig], nn.Module] | None = None,
                 weight_init: Literal["vit", "skip"] = "vit", **overrides: Any) -> None:
        super().__init__()
        if weight_init not in ("vit", "skip"):
            raise ValueError(f"weight_init must be 'vit' (ViT's initialisation) or 'skip' (none, for a "
                             f"subclass that calls init_weights itself), got {weight_init!r}")
        self.config = c = _resolve_config(config, overrides)
        self.grad_checkpointing = False
        self.num_prefix_tokens = c.num_prefix_tokens + self.extra_tokens  # T
        self.patch_embed = self._patch_embedding(embed_layer)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim)) if c.use_class_token else None
        T, N = self.num_prefix_tokens, c.num_patches
        if c.pos_embed_type == "learned":
            self.pos_embed = learned_pos_embed(T + N, c.dim)  # (1, T+N, D)
        else:  # fixed, but saved in the state dict under timm's key
            self.register_buffer("pos_embed", sincos_pos_embed_2d(
                c.grid_size, c.dim, num_prefix_tokens=T))  # (1, T+N, D)
        self.pos_drop = nn.Dropout(c.dropout)
        self.blocks = Encoder(c.dim, c.depth, c.num_heads, mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias,
                              dropout=c.dropout, attn_dropout=c.attn_dropout, drop_path=c.drop_path,
                              norm_eps=c.norm_eps)
        self.norm = nn.Identity() if c.use_fc_norm else nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.fc_norm = nn.LayerNorm(c.dim, eps=c.norm_eps) if c.use_fc_norm else nn.Identity()
        self.head = nn.Linear(c.dim, c.num_classes)
        if weight_init == "vit":
            self.init_weights()

    def _patch_embedding(self, embed_layer: nn.Module | Callable[[ViTConfig], nn.Module] | None) -> nn.Module:
        """The default :class:`PatchEmbedding`, or ``embed_layer``'s module, checked against the config."""
        c = self.config
        if embed_layer is None:
            return PatchEmbedding(image_size=c.image_size, patch_size=c.patch_size,
                                  in_channels=c.in_channels, dim=c.dim)
        module = embed_layer if isinstance(embed_layer, nn.Module) else embed_layer(c)
        grid = getattr(module, "grid_size", None)
        if grid is None:
            raise TypeError(f"embed_layer gave a {type(module).__name__} without grid_size: a patch "
                            "embedding must expose its token grid (rows, columns), as PatchEmbedding does")
        if tuple(grid) != c.grid_size:
            raise ValueError(f"embed_layer makes a {tuple(grid)} grid of tokens, but the config's "
                             f"image_size={c.image_size} and patch_size={c.patch_size} give {c.grid_size}: "
                             "the position embedding would not fit. Build the embedding for the config's "
                             "grid, or change image_size / patch_size")
        return module

    # Initialisation ----------------------------------------------------------------------------
    def init_weights(self) -> None:
        """ViT's initialisation; each choice names the reference implementation it comes from.

        - Linear weights (qkv, projection, MLP): truncated normal, std 0.02, cut at 2 std; zero
          biases: timm's default. (The JAX code of the ViT paper and torchvision use Xavier-uniform
          linears instead.)
        - LayerNorm: ones and zeros (all three).
        - Patch embedding ``proj``: LeCun truncated normal, std ``1/sqrt(C·P²)``, as a Linear on a
          flattened patch: the JAX code's (flax's default ``lecun_normal``) and torchvision's.
        - Learned positions: truncated normal, std 0.02: timm's (JAX and torchvision: normal 0.02).
        - Class token: ``N(0, 1e-6)``: timm's (JAX and torchvision start it at zero).
        - Head: zeros, so every class starts equally likely (loss ``ln K``): the JAX code's and
          torchvision's, and timm's ``weight_init='jax'``.
        """
        self.apply(self._init_weights)
        proj = getattr(self.patch_embed, "proj", None)
        if isinstance(proj, nn.Conv2d):
            std = (proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]) ** -0.5
            truncated_normal_(proj.weight, std)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)
        if isinstance(self.pos_embed, nn.Parameter):
            truncated_normal_(self.pos_embed, 0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        init_layer(module)

    # Training helpers --------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """Parameter names that AdamW should not decay (position embedding, class token)."""
        params = dict(self.named_parameters())
        return {name for name in ("pos_embed", "cls_token") if name in params}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    # Forward -----------------------------------------------------------------------------------
    def _check_images(self, images: Tensor) -> None:
        c = self.config
        h, w = c.grid_size
        S, P = to_2tuple(c.image_size), c.patch_size
        if images.ndim != 4:
            raise ValueError(f"expected a batch of images shaped (B, {c.in_channels}, {S[0]}, {S[1]}), "
                             f"got shape {tuple(images.shape)}; for one image use image.unsqueeze(0)")
        B, C, H, W = images.shape
        check_channels(images, c.in_channels)
        if (H, W) != S:
            if H == W and H % P == 0:  # a model for these images exists: say how to build it
                other = (f", or build a model with image_size={H} and carry the trained position embedding "
                         "over with vit_from_scratch.positions.resize_pos_embed")
            else:  # image_size={H} would be refused: not square, or patches that do not fit
                other = (f" (a ViTConfig's images are square, with sides a multiple of its patch size, "
                         f"here {P} pixels; {H}x{W} is not)")
            raise ValueError(f"this model was built for {S[0]}x{S[1]} images (ViTConfig.image_size="
                             f"{c.image_size}: a grid of {h}×{w} patches of {P} pixels), got {H}x{W}. Resize the "
                             f"images to {S[0]}x{S[1]}{other}")

    def embed(self, images: Tensor) -> Tensor:
        """Patches, class token and positions (eq. 1 of the ViT paper).

        Shape:
            (B, C, H, W) -> (B, T+N, D)
        """
        x = self.patch_embed(images)  # (B, N, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+N, D)
        return self.pos_drop(x + self.pos_embed)  # (B, T+N, D)

    def forward_features(self, images: Tensor) -> Tensor:
        """Embed, run the encoder, normalise (unless the norm comes after pooling).

        Shape:
            (B, C, H, W) -> (B, T+N, D)
        """
        self._check_images(images)
        x = self.embed(images)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)

    def pool(self, x: Tensor) -> Tensor:
        """Class token, or the mean of the patch tokens (prefix tokens excluded, as in timm).

        Shape:
            (B, T+N, D) -> (B, D)
        """
        return x[:, 0] if self.config.pool == "cls" else x[:, self.num_prefix_tokens:].mean(dim=1)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool, normalise if ``fc_norm``, classify; ``pre_logits=True`` stops before the head.

        Shape:
            (B, T+N, D) -> (B, K), or (B, D) with ``pre_logits``
        """
        x = self.fc_norm(self.pool(x))  # (B, D)
        return x if pre_logits else self.head(x)

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images))

    # Loading -----------------------------------------------------------------------------------
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` with an error that lists every mismatch and suggests a fix
        (:func:`~vit_from_scratch.state_dicts.mismatch_report`)."""
        problems = mismatch_report(self, state_dict, strict=strict)
        if problems:
            raise RuntimeError(problems)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @classmethod
    def from_torchvision(cls, source: nn.Module | Mapping[str, Tensor], *, num_heads: int | None = None,
                         **overrides: Any) -> VisionTransformer:
        """A model with the weights of a torchvision ViT: :func:`vit_from_scratch.interop.from_torchvision`."""
        from .interop import (
            from_torchvision,  # at call time: interop imports this module
        )

        return from_torchvision(source, num_heads=num_heads, model_class=cls, **overrides)


def to_resolution(model: VisionTransformer, image_size: int, *, mode: str = "bicubic") -> VisionTransformer:
    """A new :class:`VisionTransformer` for ``image_size`` pixels carrying ``model``'s weights.

    Every weight is copied as it is, except the learned position embedding, which is interpolated to the
    new patch grid with :func:`~vit_from_scratch.positions.resize_pos_embed` (a fixed sin-cos table is
    rebuilt for the new grid). The patch size, and with it every other shape, is unchanged.
    """
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"expected a VisionTransformer, got {type(model).__name__}")
    config = replace(model.config, image_size=image_size)  # checks that patch_size divides image_size
    new = VisionTransformer(config).to(next(model.parameters()).device)
    state = model.state_dict()
    if model.config.pos_embed_type == "learned":
        state["pos_embed"] = resize_pos_embed(state["pos_embed"], config.grid_size,
                                              old_grid=model.config.grid_size,
                                              num_prefix_tokens=model.num_prefix_tokens, mode=mode)
    else:
        state["pos_embed"] = new.pos_embed
    new.load_state_dict(state)
    new.set_grad_checkpointing(model.grad_checkpointing)
    return new
