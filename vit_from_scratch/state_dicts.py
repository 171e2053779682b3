"""Chapter 5: why a state dict does not fit a model, and how to fix it.

:meth:`VisionTransformer.load_state_dict <vit_from_scratch.model.VisionTransformer.load_state_dict>`
calls :func:`mismatch_report` before loading, so a wrong checkpoint fails with every missing,
unexpected and misshapen key listed, followed by the likely cause. This module does not import
:mod:`vit_from_scratch.model`: it reads the model's ``state_dict()``, ``config`` and
``num_prefix_tokens``, so the model can import it.

Letters: D width, C channels, P patch size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

__all__ = ["mismatch_report"]

_SHOWN = 8  # keys listed per kind of problem


def mismatch_report(model: nn.Module, state_dict: Mapping[str, Any], *, strict: bool = True) -> str:
    """Every way ``state_dict`` does not fit ``model``, with hints; ``""`` when it fits.

    Args:
        model: a :class:`~vit_from_scratch.model.VisionTransformer` (anything with ``state_dict()``,
            a ViT ``config`` and ``num_prefix_tokens``).
        state_dict: the weights to load.
        strict: also report missing and unexpected keys (as ``load_state_dict(strict=True)``);
            shape mismatches are reported either way.
    """
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, Tensor)}
    missing = [k for k in own if k not in theirs] if strict else []
    unexpected = [k for k in theirs if k not in own] if strict else []
    shapes = [k for k in own if k in theirs and own[k] != theirs[k]]
    if not (missing or unexpected or shapes):
        return ""
    msg = [f"the state dict does not fit this {type(model).__name__} ({_describe(model.config)}):"]
    if missing:
        msg += [f"  {len(missing)} missing key(s), in the model but not in the state dict:",
                _listing(missing)]
    if unexpected:
        msg += [f"  {len(unexpected)} unexpected key(s), in the state dict but not in the model:",
                _listing(unexpected)]
    if shapes:
        msg += [f"  {len(shapes)} shape mismatch(es), state dict vs model:",
                _listing([f"{k}: {theirs[k]} vs {own[k]}" for k in shapes])]
    hints = _hints(model, missing, unexpected, shapes, theirs, own)
    if hints:
        msg += ["How to fix:"] + [f"  - {h}" for h in hints]
    return "\n".join(msg)


def _listing(lines: list[str]) -> str:
    shown = [f"    {line}" for line in lines[:_SHOWN]]
    more = [f"    ... and {len(lines) - _SHOWN} more"] if len(lines) > _SHOWN else []
    return "\n".join(shown + more)


def _describe(c: Any) -> str:
    return (f"image_size={c.image_size}, patch_size={c.patch_size}, dim={c.dim}, depth={c.depth}, "
            f"num_classes={c.num_classes}, pool={c.pool!r}, class_token={c.use_class_token}, "
            f"fc_norm={c.use_fc_norm}")


def _hints(model: nn.Module, missing: list[str], unexpected: list[str], shapes: list[str],
           theirs: dict[str, tuple], own: dict[str, tuple]) -> list[str]:
    """The likely causes, one sentence each with its fix, in the order they are checked."""
    c, keys, hints = model.config, set(theirs), []
    for prefix, why in (("_orig_mod.", "torch.compile"), ("module.", "DistributedDataParallel")):
        if keys and all(k.startswith(prefix) for k in keys):
            hints.append(f"every key starts with {prefix!r} (saved from a {why} wrapper): strip it, "
                         f"{{k.removeprefix({prefix!r}): v for k, v in sd.items()}}")
    if any(k.startswith(("encoder.layers.", "conv_proj.")) for k in keys):
        hints.append("this is torchvision's layout: use VisionTransformer.from_torchvision("
                     "model_or_state_dict) or vit_from_scratch.interop.convert_torchvision_state_dict(sd)")
    class_token_differs = "cls_token" in missing or "cls_token" in unexpected
    if class_token_differs:
        hints.append("one side has a class token and the other not: match ViTConfig.pool / class_token")
    norms = {"norm.weight", "fc_norm.weight"}
    if norms & set(missing) and norms & set(unexpected):
        hints.append("the final LayerNorm sits before pooling on one side ('norm') and after it on the "
                     "other ('fc_norm'): set ViTConfig.fc_norm to match")
    depth = 1 + max((int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if depth and depth != c.depth:
        hints.append(f"the state dict has {depth} blocks, the model {c.depth}: set depth={depth}")
    if "pos_embed" in shapes and not class_token_differs:
        T = model.num_prefix_tokens
        hints.append(f"pos_embed holds {theirs['pos_embed'][1]} positions, the model {own['pos_embed'][1]} "
                     f"= {T} prefix + {c.num_patches} patches: the state dict was trained at another image "
                     "or patch size; interpolate it with sd['pos_embed'] = vit_from_scratch.positions."
                     f"resize_pos_embed(sd['pos_embed'], new_grid={c.grid_size}, num_prefix_tokens={T})")
    if "head.weight" in shapes:
        hints.append(f"the head has {theirs['head.weight'][0]} classes, the model {c.num_classes}: "
                     "set num_classes, or drop 'head.weight' and 'head.bias' from the state dict and load "
                     "with strict=False to fine-tune a new head")
    if "patch_embed.proj.weight" in shapes:
        hints.append(f"patch_embed.proj.weight is (D, C, P, P) = {theirs['patch_embed.proj.weight']}: "
                     "match dim, in_channels and patch_size")
    return hints
