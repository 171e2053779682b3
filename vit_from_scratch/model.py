"""Chapter 5: the complete Vision Transformer (Dosovitskiy et al., 2021).

Letters: B batch, C channels, H/W image size, P patch size, N patches, T prefix tokens (1 with a
class token, else 0), D width, M MLP width, K classes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .encoder import Encoder, block_num_params
from .patches import PatchEmbedding, check_patch_grid
from .positions import learned_pos_embed, resize_pos_embed, sincos_pos_embed_2d

__all__ = [
    "ViTConfig", "VisionTransformer", "NAMED_SIZES", "vit_config", "to_resolution",
    "timm_kwargs", "torchvision_kwargs", "config_from_torchvision", "convert_torchvision_state_dict",
]

# Named sizes. B, L and H are the ViT paper's Table 1; Ti and S come from DeiT (Touvron et al., 2021).
# "X/P" means size X with P x P patches, at 224 px and 1000 classes (ImageNet). The cifar sizes take
# 32 px CIFAR-10 images in 4 x 4 patches (an 8 x 8 grid, 64 tokens) and have 10 classes.
NAMED_SIZES: dict[str, dict[str, Any]] = {
    "Ti/16": dict(image_size=224, patch_size=16, num_classes=1000, dim=192, depth=12, num_heads=3),
    "S/16": dict(image_size=224, patch_size=16, num_classes=1000, dim=384, depth=12, num_heads=6),
    "B/16": dict(image_size=224, patch_size=16, num_classes=1000, dim=768, depth=12, num_heads=12),
    "B/32": dict(image_size=224, patch_size=32, num_classes=1000, dim=768, depth=12, num_heads=12),
    "L/16": dict(image_size=224, patch_size=16, num_classes=1000, dim=1024, depth=24, num_heads=16),
    "L/32": dict(image_size=224, patch_size=32, num_classes=1000, dim=1024, depth=24, num_heads=16),
    "H/14": dict(image_size=224, patch_size=14, num_classes=1000, dim=1280, depth=32, num_heads=16),
    "cifar-tiny": dict(image_size=32, patch_size=4, num_classes=10, dim=64, depth=4, num_heads=4),
    "cifar-small": dict(image_size=32, patch_size=4, num_classes=10, dim=192, depth=6, num_heads=3),
}


@dataclass
class ViTConfig:
    """Everything that defines a ViT's architecture; ``ViTConfig.named("B/16")`` gives a named size."""

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
    class_token: bool | None = None  # None: a class token exactly when pool == "cls"
    fc_norm: bool | None = None  # final LayerNorm after pooling; None: only for pool == "mean" (as timm)

    def __post_init__(self) -> None:
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' (class token) or 'mean' (average of the patch tokens), "
                             f"got {self.pool!r}")
        if self.pos_embed not in ("learned", "sincos"):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {self.pos_embed!r}")
        for name in ("image_size", "patch_size", "in_channels", "num_classes", "dim", "depth", "num_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        check_patch_grid(self.image_size, self.patch_size)
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} must be divisible by num_heads={self.num_heads} (each head gets "
                             f"dim / num_heads channels); divisors of {self.dim} up to 16: "
                             f"{[h for h in range(1, 17) if self.dim % h == 0]}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        for name in ("dropout", "attn_dropout", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {getattr(self, name)}")
        if self.pos_embed == "sincos" and self.dim % 4:
            raise ValueError(f"pos_embed='sincos' splits the width into 4 parts, so dim must be divisible "
                             f"by 4; got dim={self.dim}. Use pos_embed='learned' or another width.")
        if self.pool == "cls" and self.class_token is False:
            raise ValueError("pool='cls' reads the class token, but class_token=False; "
                             "use pool='mean' or class_token=None")

    # Derived sizes ---------------------------------------------------------------------------
    @property
    def use_class_token(self) -> bool:
        """Whether a class token is prepended (``class_token``, or by default ``pool == 'cls'``)."""
        return self.pool == "cls" if self.class_token is None else bool(self.class_token)

    @property
    def use_fc_norm(self) -> bool:
        """Whether the final LayerNorm comes after pooling (timm's ``fc_norm``) instead of before."""
        return self.pool == "mean" if self.fc_norm is None else bool(self.fc_norm)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches per column and per row, ``(H/P, W/P)``."""
        return check_patch_grid(self.image_size, self.patch_size)

    @property
    def num_patches(self) -> int:
        """N = (H/P)(W/P)."""
        h, w = self.grid_size
        return h * w

    @property
    def num_prefix_tokens(self) -> int:
        """T: 1 with a class token, else 0."""
        return int(self.use_class_token)

    @property
    def num_tokens(self) -> int:
        """Sequence length T + N that the encoder sees."""
        return self.num_prefix_tokens + self.num_patches

    @property
    def mlp_dim(self) -> int:
        """M, the MLP's hidden width."""
        return int(self.dim * self.mlp_ratio)

    # Counting ----------------------------------------------------------------------------------
    def num_params(self) -> int:
        """Trainable parameters, by formula (equals ``sum(p.numel())`` of the model)."""
        P, C, D, K = self.patch_size, self.in_channels, self.dim, self.num_classes
        embed = C * P * P * D + D  # Conv2d(C, D, P, stride=P)
        tokens = (D if self.use_class_token else 0) + (self.num_tokens * D if self.pos_embed == "learned" else 0)
        blocks = self.depth * block_num_params(D, mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias)
        return embed + tokens + blocks + 2 * D + D * K + K  # ... + final LayerNorm + head

    def macs(self) -> int:
        """Multiply-accumulates of one forward pass for one image (matrix products only).

        Patch embedding ``N·CP²·D``; per block ``L(4D² + 2DM) + 2L²D`` with ``L = T + N`` (qkv,
        projection, MLP, then ``QKᵀ`` and ``AV``); head ``DK``. Norms, softmax, GELU, biases and
        additions are left out, as in the usual tables (fvcore, DeiT), which call MACs "FLOPs".
        """
        P, C, D, M, K = self.patch_size, self.in_channels, self.dim, self.mlp_dim, self.num_classes
        N, L = self.num_patches, self.num_tokens
        block = L * (4 * D * D + 2 * D * M) + 2 * L * L * D
        return N * C * P * P * D + self.depth * block + D * K

    def flops(self) -> int:
        """Floating-point operations of one forward pass for one image: ``2 * macs()``."""
        return 2 * self.macs()

    # Construction ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """A plain dict (JSON-friendly) of the fields; ``ViTConfig.from_dict`` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ViTConfig:
        """Build a config from :meth:`to_dict`'s output; unknown keys are an error."""
        _check_field_names(values, "ViTConfig.from_dict")
        return cls(**values)

    @classmethod
    def named(cls, name: str, **overrides: Any) -> ViTConfig:
        """A named size (see ``NAMED_SIZES``), e.g. ``ViTConfig.named("B/16", num_classes=10)``."""
        return vit_config(name, **overrides)


def _check_field_names(values: Mapping[str, Any], where: str) -> None:
    valid = [f.name for f in fields(ViTConfig)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise TypeError(f"{where}: unknown ViTConfig field(s) {unknown}; valid fields: {valid}")


def _size_key(name: str) -> str:
    """``"ViT-B/16"``, ``"vit_b_16"`` and ``"b16"`` all become ``"b16"``; ``"vit_cifar_tiny"`` ``"cifartiny"``."""
    key = re.sub(r"[^a-z0-9]", "", name.strip().lower())
    return key[3:] if key.startswith("vit") else key


def vit_config(name: str, **overrides: Any) -> ViTConfig:
    """The config of a named size, with optional field overrides.

    ``name`` is one of ``NAMED_SIZES`` (``"Ti/16"``, ``"S/16"``, ``"B/16"``, ``"B/32"``, ``"L/16"``,
    ``"L/32"``, ``"H/14"``, ``"cifar-tiny"``, ``"cifar-small"``). Case, a ``"ViT"`` prefix and the
    separators are ignored, so ``"ViT-B/16"``, ``"vit_b_16"`` and ``"vit_cifar_tiny"`` work too.
    """
    matches = [n for n in NAMED_SIZES if _size_key(n) == _size_key(name)]
    if not matches:
        raise ValueError(f"unknown ViT size {name!r}; known sizes: {list(NAMED_SIZES)} "
                         "(or build ViTConfig(...) with your own fields)")
    _check_field_names(overrides, f"vit_config({name!r})")
    return ViTConfig(**{**NAMED_SIZES[matches[0]], **overrides})


def _trunc_normal_(tensor: Tensor, std: float) -> Tensor:
    """Fill with N(0, std²), redrawn outside ±2 std (the cut-off in std units, unlike timm's default)."""
    return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


class VisionTransformer(nn.Module):
    """ViT: patch embedding, class token, positions, encoder, final norm, pooling, linear head.

    ``state_dict()`` keys follow timm's names (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
    ``blocks.{i}...``, ``norm`` or ``fc_norm``, ``head``), so a timm ``VisionTransformer`` built with
    ``timm_kwargs(config)`` loads with plain ``load_state_dict``; torchvision's layout loads through
    :meth:`from_torchvision`.

    Args:
        config: a :class:`ViTConfig`, or the name of a size (``"B/16"``, ``"cifar-tiny"``); default ViT-B/16.
        **overrides: config fields to change, e.g. ``num_classes=10``.

    Shape:
        (B, C, H, W) -> (B, K)
    """

    def __init__(self, config: ViTConfig | str | None = None, **overrides: Any) -> None:
        super().__init__()
        if isinstance(config, str):
            config = vit_config(config)
        config = config if config is not None else ViTConfig()
        if not isinstance(config, ViTConfig):
            raise TypeError(f"expected a ViTConfig or a size name, got {type(config).__name__}; "
                            "for a dict use ViTConfig.from_dict(d)")
        if overrides:
            _check_field_names(overrides, "VisionTransformer")
            config = replace(config, **overrides)
        self.config = c = config
        self.grad_checkpointing = False
        self.num_prefix_tokens = c.num_prefix_tokens
        self.patch_embed = PatchEmbedding(image_size=c.image_size, patch_size=c.patch_size,
                                          in_channels=c.in_channels, embed_dim=c.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim)) if c.use_class_token else None
        if c.pos_embed == "learned":
            self.pos_embed = learned_pos_embed(c.num_tokens, c.dim)  # (1, T+N, D)
        else:  # fixed, but saved in the state dict under timm's key
            self.register_buffer("pos_embed", sincos_pos_embed_2d(
                c.grid_size, c.dim, num_prefix_tokens=c.num_prefix_tokens))  # (1, T+N, D)
        self.pos_drop = nn.Dropout(c.dropout)
        self.blocks = Encoder(c.dim, c.depth, c.num_heads, mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias,
                              dropout=c.dropout, attn_dropout=c.attn_dropout, drop_path=c.drop_path,
                              norm_eps=c.norm_eps)
        self.norm = nn.Identity() if c.use_fc_norm else nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.fc_norm = nn.LayerNorm(c.dim, eps=c.norm_eps) if c.use_fc_norm else nn.Identity()
        self.head = nn.Linear(c.dim, c.num_classes)
        self.init_weights()

    # Initialisation ----------------------------------------------------------------------------
    def init_weights(self) -> None:
        """ViT's initialisation, as in timm, torchvision and big_vision.

        Linear weights: truncated normal (std 0.02, cut at 2 std), zero biases; LayerNorm: ones and
        zeros; patch embedding: LeCun normal (std ``1/sqrt(C·P²)``) like a Linear on a flattened patch;
        learned positions: truncated normal 0.02; class token: ``N(0, 1e-6)``; head: zeros, so every
        class starts equally likely.
        """
        self.apply(self._init_weights)
        proj = self.patch_embed.proj
        std = (proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]) ** -0.5
        _trunc_normal_(proj.weight, std)
        nn.init.zeros_(proj.bias)
        if isinstance(self.pos_embed, nn.Parameter):
            _trunc_normal_(self.pos_embed, 0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            _trunc_normal_(module.weight, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

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
        S, P = self.patch_embed.image_size, c.patch_size
        if images.ndim != 4:
            raise ValueError(f"expected a batch of images shaped (B, {c.in_channels}, {S[0]}, {S[1]}), "
                             f"got shape {tuple(images.shape)}; for one image use image.unsqueeze(0)")
        B, C, H, W = images.shape
        if C != c.in_channels:
            layout = (" It looks channels-last: use images.permute(0, 3, 1, 2)."
                      if images.shape[-1] == c.in_channels else "")
            raise ValueError(f"this model takes {c.in_channels}-channel images (ViTConfig.in_channels="
                             f"{c.in_channels}), got {C} channels in shape {tuple(images.shape)}.{layout} "
                             f"Convert the images (grayscale to RGB: images.expand(-1, 3, -1, -1)) or build "
                             f"the model with in_channels={C}.")
        if (H, W) != S:
            raise ValueError(f"this model was built for {S[0]}x{S[1]} images (ViTConfig.image_size="
                             f"{c.image_size}: a {h}x{w} grid of {P}-pixel patches), got {H}x{W}. Resize the "
                             f"images to {S[0]}x{S[1]}, or build a model with image_size={H} and carry the "
                             "trained position embedding over with vit_from_scratch.positions.resize_pos_embed")

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
        """``nn.Module.load_state_dict`` with an error that lists every mismatch and suggests a fix."""
        problems = self._state_dict_problems(state_dict, strict)
        if problems:
            raise RuntimeError(problems)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _state_dict_problems(self, state_dict: Mapping[str, Any], strict: bool) -> str:
        own = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, Tensor)}
        missing = [k for k in own if k not in theirs] if strict else []
        unexpected = [k for k in theirs if k not in own] if strict else []
        shapes = [k for k in own if k in theirs and own[k] != theirs[k]]
        if not (missing or unexpected or shapes):
            return ""

        def listing(keys: list[str], show=lambda k: k) -> str:
            lines = [f"    {show(k)}" for k in keys[:8]]
            return "\n".join(lines + ([f"    ... and {len(keys) - 8} more"] if len(keys) > 8 else []))

        msg = [f"the state dict does not fit this VisionTransformer ({self._describe()}):"]
        if missing:
            msg += [f"  {len(missing)} missing key(s), in the model but not in the state dict:", listing(missing)]
        if unexpected:
            msg += [f"  {len(unexpected)} unexpected key(s), in the state dict but not in the model:",
                    listing(unexpected)]
        if shapes:
            msg += [f"  {len(shapes)} shape mismatch(es), state dict vs model:",
                    listing(shapes, lambda k: f"{k}: {theirs[k]} vs {own[k]}")]
        hints = self._hints(set(theirs), missing, unexpected, shapes, theirs, own)
        if hints:
            msg += ["How to fix:"] + [f"  - {h}" for h in hints]
        return "\n".join(msg)

    def _describe(self) -> str:
        c = self.config
        return (f"image_size={c.image_size}, patch_size={c.patch_size}, dim={c.dim}, depth={c.depth}, "
                f"num_classes={c.num_classes}, pool={c.pool!r}, class_token={c.use_class_token}, "
                f"fc_norm={c.use_fc_norm}")

    def _hints(self, keys: set[str], missing: list[str], unexpected: list[str], shapes: list[str],
               theirs: dict[str, tuple], own: dict[str, tuple]) -> list[str]:
        hints = []
        for prefix, why in (("_orig_mod.", "torch.compile"), ("module.", "DistributedDataParallel")):
            if keys and all(k.startswith(prefix) for k in keys):
                hints.append(f"every key starts with {prefix!r} (saved from a {why} wrapper): strip it, "
                             f"{{k.removeprefix({prefix!r}): v for k, v in sd.items()}}")
        if any(k.startswith(("encoder.layers.", "conv_proj.")) for k in keys):
            hints.append("this is torchvision's layout: use VisionTransformer.from_torchvision(model_or_state_dict) "
                         "or convert_torchvision_state_dict(sd)")
        if "cls_token" in missing or "cls_token" in unexpected:
            hints.append("one side has a class token and the other not: match ViTConfig.pool / class_token")
        if {"norm.weight", "fc_norm.weight"} & set(missing) and {"norm.weight", "fc_norm.weight"} & set(unexpected):
            hints.append("the final LayerNorm sits before pooling on one side ('norm') and after it on the other "
                         "('fc_norm'): set ViTConfig.fc_norm to match")
        depth = 1 + max((int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
        if depth and depth != self.config.depth:
            hints.append(f"the state dict has {depth} blocks, the model {self.config.depth}: set depth={depth}")
        if "pos_embed" in shapes and not ("cls_token" in missing or "cls_token" in unexpected):
            n_old, n_new = theirs["pos_embed"][1], own["pos_embed"][1]
            hints.append(f"pos_embed holds {n_old} positions, the model {n_new} = {self.num_prefix_tokens} prefix + "
                         f"{self.config.num_patches} patches: the state dict was trained at another image or patch "
                         "size; interpolate it with sd['pos_embed'] = vit_from_scratch.positions.resize_pos_embed("
                         f"sd['pos_embed'], new_grid={self.config.grid_size}, "
                         f"num_prefix_tokens={self.num_prefix_tokens})")
        if "head.weight" in shapes:
            hints.append(f"the head has {theirs['head.weight'][0]} classes, the model {self.config.num_classes}: "
                         "set num_classes, or drop 'head.weight' and 'head.bias' from the state dict and load "
                         "with strict=False to fine-tune a new head")
        if "patch_embed.proj.weight" in shapes:
            hints.append(f"patch_embed.proj.weight is (D, C, P, P) = {theirs['patch_embed.proj.weight']}: "
                         "match dim, in_channels and patch_size")
        return hints

    @classmethod
    def from_torchvision(cls, source: nn.Module | Mapping[str, Tensor], *, num_heads: int | None = None,
                         **overrides: Any) -> VisionTransformer:
        """A model with the weights of a torchvision ViT (``vit_b_16`` and friends, or their state dict).

        The configuration is read from the module, or from the state dict's shapes; a state dict does
        not record the number of heads, so ``num_heads`` defaults to torchvision's choice for the width
        (12 for 768, 16 for 1024 and 1280), else ``dim // 64``.
        """
        config = config_from_torchvision(source, num_heads=num_heads)
        if overrides:
            _check_field_names(overrides, "from_torchvision")
            config = replace(config, **overrides)
        model = cls(config)
        state_dict = source.state_dict() if isinstance(source, nn.Module) else source
        model.load_state_dict(convert_torchvision_state_dict(state_dict))
        return model


# Other libraries' layouts ------------------------------------------------------------------------
def timm_kwargs(config: ViTConfig) -> dict[str, Any]:
    """Arguments for ``timm.models.vision_transformer.VisionTransformer`` that build the same model.

    timm has no fixed sin-cos option: for ``pos_embed="sincos"`` its learned ``pos_embed`` takes our
    table with ``load_state_dict`` (we save it under the same key).
    """
    c = config
    kwargs = dict(img_size=c.image_size, patch_size=c.patch_size, in_chans=c.in_channels,
                  num_classes=c.num_classes, global_pool="token" if c.pool == "cls" else "avg",
                  class_token=c.use_class_token, fc_norm=c.use_fc_norm, embed_dim=c.dim, depth=c.depth,
                  num_heads=c.num_heads, mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias,
                  pos_drop_rate=c.dropout, proj_drop_rate=c.dropout, attn_drop_rate=c.attn_dropout,
                  drop_path_rate=c.drop_path)
    if c.norm_eps != 1e-6:
        kwargs["norm_layer"] = partial(nn.LayerNorm, eps=c.norm_eps)
    return kwargs


def torchvision_kwargs(config: ViTConfig) -> dict[str, Any]:
    """Arguments for ``torchvision.models.VisionTransformer`` that build the same model.

    torchvision's ViT always has a class token, class-token pooling, learned positions, RGB input,
    qkv biases and no stochastic depth; other configs raise a ``ValueError``.
    """
    c = config
    unsupported = {"pool": c.pool != "cls", "class_token": not c.use_class_token, "fc_norm": c.use_fc_norm,
                   "pos_embed": c.pos_embed != "learned", "in_channels": c.in_channels != 3,
                   "qkv_bias": not c.qkv_bias, "drop_path": c.drop_path > 0}
    bad = [name for name, flag in unsupported.items() if flag]
    if bad:
        raise ValueError(f"torchvision's VisionTransformer cannot express {bad} of this config "
                         f"({ {name: getattr(c, name) for name in bad} })")
    kwargs = dict(image_size=c.image_size, patch_size=c.patch_size, num_layers=c.depth, num_heads=c.num_heads,
                  hidden_dim=c.dim, mlp_dim=c.mlp_dim, dropout=c.dropout, attention_dropout=c.attn_dropout,
                  num_classes=c.num_classes)
    if c.norm_eps != 1e-6:
        kwargs["norm_layer"] = partial(nn.LayerNorm, eps=c.norm_eps)
    return kwargs


_TV_HEADS = {768: 12, 1024: 16, 1280: 16}  # torchvision's B, L and H widths -> heads (H/14 has 80-wide heads)
_TV_BLOCK = r"encoder\.layers\.encoder_layer_(\d+)\."
_TV_RULES = [  # torchvision key -> our (timm's) key
    (r"class_token", "cls_token"),
    (r"conv_proj\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.pos_embedding", "pos_embed"),
    (_TV_BLOCK + r"ln_1\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (_TV_BLOCK + r"self_attention\.in_proj_(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    (_TV_BLOCK + r"self_attention\.out_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (_TV_BLOCK + r"ln_2\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (_TV_BLOCK + r"mlp\.(?:0|linear_1)\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),  # linear_1: before 0.13
    (_TV_BLOCK + r"mlp\.(?:3|linear_2)\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"encoder\.ln\.(weight|bias)", r"norm.\1"),
    (r"heads\.head\.(weight|bias)", r"head.\1"),
]


def convert_torchvision_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a torchvision ViT state dict to our (timm's) keys; the tensors are shared, not copied.

    torchvision's ``in_proj_weight`` stacks q, k, v in the same order as our fused ``qkv``, so no
    tensor needs reshaping. A representation layer (``heads.pre_logits``) or a convolutional stem
    has no counterpart here and raises a ``ValueError``.
    """
    out, unknown = {}, []
    for key, value in state_dict.items():
        for pattern, target in _TV_RULES:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, target, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        why = []
        if any(k.startswith("heads.pre_logits") for k in unknown):
            why.append("heads.pre_logits is a representation layer (representation_size), which this model lacks")
        if any(k.startswith("conv_proj.") for k in unknown):
            why.append("conv_proj.* beyond weight/bias is a convolutional stem (conv_stem_configs), not supported")
        raise ValueError(f"{len(unknown)} key(s) of this state dict are not part of torchvision's plain ViT "
                         f"layout: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}"
                         + ("; " + "; ".join(why) if why else ""))
    return out


def config_from_torchvision(source: nn.Module | Mapping[str, Tensor], *, num_heads: int | None = None) -> ViTConfig:
    """The :class:`ViTConfig` of a torchvision ViT module, or inferred from its state dict's shapes."""
    module = source if isinstance(source, nn.Module) else None
    sd = module.state_dict() if module is not None else source
    for key in ("conv_proj.weight", "encoder.pos_embedding", "heads.head.weight"):
        if key not in sd:
            raise ValueError(f"{key!r} is missing: this does not look like a torchvision VisionTransformer "
                             f"state dict (first keys: {list(sd)[:4]})")
    D, C, P, _ = sd["conv_proj.weight"].shape  # (D, C, P, P)
    n = sd["encoder.pos_embedding"].shape[1] - 1  # patches, after the class token
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"encoder.pos_embedding holds {n} patch positions, not a square grid")
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(_TV_BLOCK, k)))
    mlp_dim = sd["encoder.layers.encoder_layer_0.mlp.0.weight" if "encoder.layers.encoder_layer_0.mlp.0.weight"
                 in sd else "encoder.layers.encoder_layer_0.mlp.linear_1.weight"].shape[0]
    fields_: dict[str, Any] = dict(image_size=side * P, patch_size=P, in_channels=C,
                                   num_classes=sd["heads.head.weight"].shape[0], dim=D, depth=depth,
                                   mlp_ratio=mlp_dim / D,
                                   qkv_bias="encoder.layers.encoder_layer_0.self_attention.in_proj_bias" in sd)
    if module is not None:
        fields_.update(num_heads=module.encoder.layers[0].num_heads, dropout=module.dropout,
                       attn_dropout=module.attention_dropout, norm_eps=module.encoder.ln.eps)
    else:
        if num_heads is None:
            num_heads = _TV_HEADS.get(D, D // 64 if D % 64 == 0 else None)
        if num_heads is None:
            raise ValueError(f"cannot guess the number of heads for width {D} from a state dict; pass num_heads=")
        fields_["num_heads"] = num_heads
    if module is not None and num_heads is not None and num_heads != fields_["num_heads"]:
        raise ValueError(f"num_heads={num_heads} disagrees with the module's {fields_['num_heads']}")
    return ViTConfig(**fields_)


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
    if model.config.pos_embed == "learned":
        state["pos_embed"] = resize_pos_embed(state["pos_embed"], config.grid_size,
                                              old_grid=model.config.grid_size,
                                              num_prefix_tokens=model.num_prefix_tokens, mode=mode)
    else:
        state["pos_embed"] = new.pos_embed
    new.load_state_dict(state)
    new.set_grad_checkpointing(model.grad_checkpointing)
    return new
