"""Chapter 5: the configuration of a Vision Transformer, and its named sizes.

:class:`ViTConfig` holds every architectural choice of :class:`~vit_from_scratch.model.VisionTransformer`,
checks them, and counts parameters and multiply-accumulates by formula; ``NAMED_SIZES`` and
:func:`vit_config` give the sizes of the ViT and DeiT papers and three small CIFAR-10 ones
(``cifar-cpu`` is the model chapter 6 trains).

Letters: C channels, H/W image height/width, P patch size, N patches, T prefix tokens, D width,
M MLP width, K classes, L = T + N tokens.
"""

from __future__ import annotations

import math
import numbers
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from .encoder import block_num_params
from .patches import check_patch_grid

__all__ = ["ViTConfig", "NAMED_SIZES", "LEGACY_FIELDS", "vit_config", "check_field_types"]

# Renamed config fields: old name -> new name. ViTConfig.from_dict accepts the old names, so configs
# saved before the rename (checkpoints, the shipped weights' JSON) still load.
LEGACY_FIELDS = {"pos_embed": "pos_embed_type"}

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
    # The model chapter 6 trains on a CPU and ships (the preset "cifar10-cpu" of recipe.py; a test keeps
    # the two equal field by field).
    "cifar-cpu": dict(image_size=32, patch_size=4, num_classes=10, dim=128, depth=6, num_heads=4,
                      mlp_ratio=2.0),
}


# Beyond these a config is a typing mistake: no machine holds the model (torch would overflow or fail to allocate).
_MAX_SIZE = 2**24  # any one size (pixels, width, depth, classes, heads, MLP ratio) and the tokens per image
_MAX_PARAMS = 2**40  # about 1.1e12 parameters, 4.4 TB in float32


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
    pos_embed_type: Literal["learned", "sincos"] = "learned"  # learned parameter, or fixed 2-D sin-cos
    dropout: float = 0.0  # dropout after the embeddings, in the MLP and after attention's projection
    attn_dropout: float = 0.0  # dropout on the attention weights
    drop_path: float = 0.0  # stochastic depth of the last block (linear from 0 in the first)
    norm_eps: float = 1e-6  # LayerNorm epsilon (1e-6 as in the reference implementations)
    class_token: bool | None = None  # None: a class token exactly when pool == "cls"
    fc_norm: bool | None = None  # final LayerNorm after pooling; None: only for pool == "mean" (as timm)

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' (class token) or 'mean' (average of the patch tokens), "
                             f"got {self.pool!r}")
        if self.pos_embed_type not in ("learned", "sincos"):
            raise ValueError(f"pos_embed_type must be 'learned' or 'sincos', got {self.pos_embed_type!r}")
        for name in ("image_size", "patch_size", "in_channels", "num_classes", "dim", "depth", "num_heads"):
            if not 1 <= getattr(self, name) <= _MAX_SIZE:
                raise ValueError(f"{name} must be a positive integer up to {_MAX_SIZE}, got {getattr(self, name)}")
        if not 0 < self.mlp_ratio <= _MAX_SIZE:
            raise ValueError(f"mlp_ratio must be positive and at most {_MAX_SIZE}, got {self.mlp_ratio}")
        check_patch_grid(self.image_size, self.patch_size)
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} must be divisible by num_heads={self.num_heads} (each head gets "
                             f"dim / num_heads channels); divisors of {self.dim} up to 16: "
                             f"{[h for h in range(1, 17) if self.dim % h == 0]}")
        if self.num_params() > _MAX_PARAMS or self.num_tokens > _MAX_SIZE:
            raise ValueError(f"this ViT would have {self.num_params():.3g} parameters and {self.num_tokens:.3g} tokens "
                             f"per image, beyond any machine (at most {_MAX_PARAMS:.2g} and {_MAX_SIZE:.2g}); check "
                             "image_size, patch_size, dim, depth, num_classes and mlp_ratio")
        for name in ("dropout", "attn_dropout", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {getattr(self, name)}")
        if self.pos_embed_type == "sincos" and self.dim % 4:
            raise ValueError(f"pos_embed_type='sincos' splits the width into 4 parts, so dim must be "
                             f"divisible by 4; got dim={self.dim}. Use pos_embed_type='learned' or "
                             "another width.")
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
        learned = self.pos_embed_type == "learned"
        tokens = (D if self.use_class_token else 0) + (self.num_tokens * D if learned else 0)
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
        """Build a config from :meth:`to_dict`'s output; unknown keys are an error.

        Old field names (``LEGACY_FIELDS``, e.g. ``pos_embed`` for ``pos_embed_type``) are read as the
        new ones, so configs saved before a rename still load.
        """
        values = dict(values)
        for old, new in LEGACY_FIELDS.items():
            if old in values:
                if new in values:
                    raise ValueError(f"ViTConfig.from_dict: both {old!r} (the old name) and {new!r} are "
                                     f"given; keep only {new!r}")
                values[new] = values.pop(old)
        _check_field_names(values, "ViTConfig.from_dict")
        return cls(**values)

    def replace(self, **changes: Any) -> ViTConfig:
        """A copy with some fields changed (checked, like a new config), e.g. ``c.replace(depth=6)``."""
        _check_field_names(changes, "ViTConfig.replace")
        return replace(self, **changes)

    @classmethod
    def named(cls, name: str, **overrides: Any) -> ViTConfig:
        """A named size (see ``NAMED_SIZES``), e.g. ``ViTConfig.named("B/16", num_classes=10)``."""
        return vit_config(name, **overrides)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# What an annotation asks of a value, and how an error says it.
_TYPE_RULES = {int: ("a whole number", _is_int), float: ("a finite number", _is_number),
               bool: ("True or False (JSON: true or false, without quotes)", lambda v: isinstance(v, bool)),
               str: ("a string", lambda v: isinstance(v, str))}


def check_field_types(config: Any) -> None:
    """Refuse a dataclass field whose value does not have its annotated type: ``int``, ``float``, ``bool``
    or ``str``, each optionally ``| None``. A JSON ``"32"`` or ``1.7`` is not a whole number, ``"false"`` is
    not a bool (a non-empty string would be true), and a float must be finite (no NaN or infinity).
    Other annotations (``Literal``, tuples, nested configs) are left to the class's own checks."""
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
            if value is None:
                continue
            rest = [a for a in typing.get_args(hint) if a is not type(None)]
            hint = rest[0] if len(rest) == 1 else hint
        if hint not in _TYPE_RULES:
            continue
        what, fits = _TYPE_RULES[hint]
        if not fits(value):
            raise TypeError(f"{f.name} must be {what}, got {value!r} ({type(value).__name__})")
        if hint is float and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value!r}")


def _check_field_names(values: Mapping[str, Any], where: str) -> None:
    valid = [f.name for f in fields(ViTConfig)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        renamed = [f"{old!r} is now {LEGACY_FIELDS[old]!r}" for old in unknown if old in LEGACY_FIELDS]
        raise TypeError(f"{where}: unknown ViTConfig field(s) {unknown}"
                        + (f" ({'; '.join(renamed)})" if renamed else "") + f"; valid fields: {valid}")


def _size_key(name: str) -> str:
    """``"ViT-B/16"``, ``"vit_b_16"`` and ``"b16"`` all become ``"b16"``; ``"vit_cifar_tiny"`` ``"cifartiny"``."""
    key = re.sub(r"[^a-z0-9]", "", name.strip().lower())
    return key[3:] if key.startswith("vit") else key


def vit_config(name: str, **overrides: Any) -> ViTConfig:
    """The config of a named size, with optional field overrides.

    ``name`` is one of ``NAMED_SIZES`` (``"Ti/16"``, ``"S/16"``, ``"B/16"``, ``"B/32"``, ``"L/16"``,
    ``"L/32"``, ``"H/14"``, ``"cifar-tiny"``, ``"cifar-small"``, ``"cifar-cpu"``). Case, a ``"ViT"`` prefix and the
    separators are ignored, so ``"ViT-B/16"``, ``"vit_b_16"`` and ``"vit_cifar_tiny"`` work too.
    """
    matches = [n for n in NAMED_SIZES if _size_key(n) == _size_key(name)]
    if not matches:
        raise ValueError(f"unknown ViT size {name!r}; known sizes: {list(NAMED_SIZES)} "
                         "(or build ViTConfig(...) with your own fields)")
    _check_field_names(overrides, f"vit_config({name!r})")
    return ViTConfig(**{**NAMED_SIZES[matches[0]], **overrides})
