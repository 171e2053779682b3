"""Chapter 5: the same ViT in timm's and torchvision's layouts.

Our :class:`~vit_from_scratch.model.VisionTransformer` saves its weights under timm's names, so a timm
ViT built with :func:`timm_kwargs` loads with plain ``load_state_dict``. torchvision names the same
tensors differently: :func:`convert_torchvision_state_dict` renames them, :func:`config_from_torchvision`
reads the architecture, and :func:`from_torchvision` (also ``VisionTransformer.from_torchvision``)
does both and loads the weights.

Letters: D width, C channels, P patch size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from functools import partial
from typing import Any

from torch import Tensor, nn

from .model import VisionTransformer, ViTConfig

__all__ = ["timm_kwargs", "torchvision_kwargs", "convert_torchvision_state_dict", "config_from_torchvision",
           "from_torchvision"]


def timm_kwargs(config: ViTConfig) -> dict[str, Any]:
    """Arguments for ``timm.models.vision_transformer.VisionTransformer`` that build the same model.

    timm has no fixed sin-cos option: for ``pos_embed_type="sincos"`` its learned ``pos_embed`` takes
    our table with ``load_state_dict`` (we save it under the same key).
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
                   "pos_embed_type": c.pos_embed_type != "learned", "in_channels": c.in_channels != 3,
                   "qkv_bias": not c.qkv_bias, "drop_path": c.drop_path > 0}
    bad = [name for name, flag in unsupported.items() if flag]
    if bad:
        raise ValueError(f"torchvision's VisionTransformer cannot express {bad} of this config "
                         f"({ {name: getattr(c, name) for name in bad} })")
    kwargs = dict(image_size=c.image_size, patch_size=c.patch_size, num_layers=c.depth,
                  num_heads=c.num_heads, hidden_dim=c.dim, mlp_dim=c.mlp_dim, dropout=c.dropout,
                  attention_dropout=c.attn_dropout, num_classes=c.num_classes)
    if c.norm_eps != 1e-6:
        kwargs["norm_layer"] = partial(nn.LayerNorm, eps=c.norm_eps)
    return kwargs


_TV_HEADS = {768: 12, 1024: 16, 1280: 16}  # torchvision's B, L, H widths -> heads (H/14: 80-wide heads)
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
            why.append("heads.pre_logits is a representation layer (representation_size), which this "
                       "model lacks")
        if any(k.startswith("conv_proj.") for k in unknown):
            why.append("conv_proj.* beyond weight/bias is a convolutional stem (conv_stem_configs), "
                       "not supported")
        raise ValueError(f"{len(unknown)} key(s) of this state dict are not part of torchvision's plain ViT "
                         f"layout: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}"
                         + ("; " + "; ".join(why) if why else ""))
    return out


def config_from_torchvision(source: nn.Module | Mapping[str, Tensor], *,
                            num_heads: int | None = None) -> ViTConfig:
    """The :class:`ViTConfig` of a torchvision ViT module, or inferred from its state dict's shapes.

    A state dict does not record the number of heads, so ``num_heads`` defaults to torchvision's
    choice for the width (12 for 768, 16 for 1024 and 1280), else ``dim // 64``.
    """
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
    first = "encoder.layers.encoder_layer_0."
    fc1 = first + ("mlp.0.weight" if first + "mlp.0.weight" in sd else "mlp.linear_1.weight")
    values: dict[str, Any] = dict(image_size=side * P, patch_size=P, in_channels=C,
                                  num_classes=sd["heads.head.weight"].shape[0], dim=D, depth=depth,
                                  mlp_ratio=sd[fc1].shape[0] / D,
                                  qkv_bias=first + "self_attention.in_proj_bias" in sd)
    if module is not None:
        values.update(num_heads=module.encoder.layers[0].num_heads, dropout=module.dropout,
                      attn_dropout=module.attention_dropout, norm_eps=module.encoder.ln.eps)
        if num_heads is not None and num_heads != values["num_heads"]:
            raise ValueError(f"num_heads={num_heads} disagrees with the module's {values['num_heads']}")
    else:
        if num_heads is None:
            num_heads = _TV_HEADS.get(D, D // 64 if D % 64 == 0 else None)
        if num_heads is None:
            raise ValueError(f"cannot guess the number of heads for width {D} from a state dict; "
                             "pass num_heads=")
        values["num_heads"] = num_heads
    return ViTConfig(**values)


def from_torchvision(source: nn.Module | Mapping[str, Tensor], *, num_heads: int | None = None,
                     model_class: type[VisionTransformer] = VisionTransformer,
                     **overrides: Any) -> VisionTransformer:
    """A model with the weights of a torchvision ViT (``vit_b_16`` and friends, or their state dict).

    The configuration comes from :func:`config_from_torchvision`, changed by ``overrides`` (fields
    such as ``dropout`` that do not alter any weight's shape); the weights from
    :func:`convert_torchvision_state_dict`.
    """
    config = config_from_torchvision(source, num_heads=num_heads).replace(**overrides)
    model = model_class(config)
    state_dict = source.state_dict() if isinstance(source, nn.Module) else source
    model.load_state_dict(convert_torchvision_state_dict(state_dict))
    return model
