"""Chapter 12: self-supervised pretraining with a masked autoencoder (MAE; He et al., 2022).

A random share of each image's patch tokens (75% by default) is dropped; the encoder, the package's
:class:`~vit_from_scratch.model.VisionTransformer` unchanged, sees only the visible ones; a small
decoder puts a learned mask token at every dropped place, adds fixed 2-D sin-cos positions and
predicts the pixels of every patch; the loss is the mean squared error on the masked patches only.

Letters: B batch, N patches, K kept (visible) patches, T prefix tokens (the class token), D encoder
width, E decoder width, L = C·P·P pixel values of one patch.

The encoder is stored as ``encoder``, a whole :class:`VisionTransformer`, so
``VisionTransformer(config).load_state_dict(mae.encoder.state_dict())`` takes its weights with
timm's names; :func:`vit_from_mae` returns that classifier with a new head in one call.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .checkpoints import (check_room, checkpoint_bytes, data_differences, load_checkpoint, prepare_out_dir,
                          refuse_other_run, save_checkpoint)
from .config import ViTConfig
from .data import ImageSet, channel_stats
from .encoder import Encoder
from .loaders import make_loader
from .model import VisionTransformer
from .patches import patchify, unpatchify
from .positions import sincos_pos_embed_2d, truncated_normal_
from .recipe import TrainConfig, build_optimizer, config_differences

MAE_FILES = ("mae_last.pt",)  # what pretraining writes into its output folder

__all__ = ["Masking", "random_masking", "gather_tokens", "patch_targets", "mae_loss", "MAEOutput",
           "MaskedAutoencoder", "vit_from_mae", "reconstruction_images", "pretrain", "PretrainResult"]


class Masking(NamedTuple):
    """Which patches each image keeps: ``keep`` (B, K) their indices, in shuffled order; ``mask``
    (B, N) 1.0 where a patch is dropped, 0.0 where it is visible, in the image's order; ``restore``
    (B, N) the permutation that puts the shuffled order back (the argsort of the shuffle)."""

    keep: Tensor
    mask: Tensor
    restore: Tensor


def random_masking(batch: int, num_patches: int, mask_ratio: float, *, device: torch.device | str = "cpu",
                   generator: torch.Generator | None = None) -> Masking:
    """Drop ``round(mask_ratio · N)`` random patches per image by shuffling the patch indices.

    Each image draws uniform noise per patch; ``argsort`` of the noise is a random permutation
    (the shuffle), its first ``K = N - round(mask_ratio · N)`` entries are kept, and the argsort of
    the shuffle is its inverse (the unshuffle).

    Shape:
        -> keep (B, K), mask (B, N), restore (B, N)
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1) (a share of the patches to drop, leaving at least one), "
                         f"got {mask_ratio}")
    K = num_patches - round(mask_ratio * num_patches)
    if K < 1:
        raise ValueError(f"mask_ratio={mask_ratio} drops all {num_patches} patches; use a smaller ratio")
    noise = torch.rand(batch, num_patches, generator=generator, device=device)  # (B, N)
    shuffle = noise.argsort(dim=1)  # (B, N): a random permutation of 0..N-1 per image
    restore = shuffle.argsort(dim=1)  # (B, N): its inverse, shuffle[restore] = 0..N-1
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :K] = 0.0  # in shuffled order: the first K are visible
    mask = mask.gather(1, restore)  # (B, N) back in the image's order
    return Masking(shuffle[:, :K], mask, restore)


def gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """Pick tokens per image: ``out[b, i] = tokens[b, index[b, i]]``.

    Shape:
        (B, N, D), (B, K) -> (B, K, D)
    """
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def patch_targets(images: Tensor, patch_size: int, *, norm_pix: bool = True, eps: float = 1e-6) -> Tensor:
    """What the decoder predicts: each patch's pixels, standardised per patch when ``norm_pix``.

    With ``norm_pix`` every patch's L values have their own mean subtracted and are divided by their own
    standard deviation, ``(t - mean) / sqrt(var + eps)`` (the paper's "normalized pixels").

    Shape:
        (B, C, H, W) -> (B, N, L)
    """
    target = patchify(images, patch_size)  # (B, N, L)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as the reference code
        target = (target - mean) / (var + eps).sqrt()
    return target


def mae_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error per patch, averaged over the masked patches only.

    ``loss = Σ_i m_i · mean_l (pred_il - target_il)² / Σ_i m_i``. With nothing masked (mask ratio 0)
    it is the mean over all patches: an ordinary autoencoder's loss.

    Shape:
        (B, N, L), (B, N, L), (B, N) -> ()
    """
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(f"expected pred and target (B, N, L) and mask (B, N), got {tuple(pred.shape)}, "
                         f"{tuple(target.shape)} and {tuple(mask.shape)}")
    per_patch = (pred - target).pow(2).mean(dim=-1)  # (B, N)
    if not mask.any():
        return per_patch.mean()
    return (per_patch * mask).sum() / mask.sum()


class MAEOutput(NamedTuple):
    """The loss, the predicted pixels of every patch (B, N, L) and the masking used."""

    loss: Tensor
    pred: Tensor
    masking: Masking


class MaskedAutoencoder(nn.Module):
    """A ViT encoder over the visible patches and a small transformer decoder that fills in the rest.

    Args:
        config: the encoder's :class:`ViTConfig` (or a size name); ``**overrides`` change its fields.
        decoder_dim, decoder_depth, decoder_heads: the decoder's width E, blocks and heads.
        mask_ratio: share of the patches dropped per image.
        norm_pix: predict per-patch standardised pixels (:func:`patch_targets`).

    Shape:
        (B, C, H, W) -> :class:`MAEOutput` with pred (B, N, L)
    """

    def __init__(self, config: ViTConfig | str, *, decoder_dim: int = 64, decoder_depth: int = 2,
                 decoder_heads: int = 4, mask_ratio: float = 0.75, norm_pix: bool = True, **overrides: Any) -> None:
        super().__init__()
        self.encoder = VisionTransformer(config, **overrides)  # the classifier's parts, unchanged
        c = self.encoder.config
        if self.encoder.extra_tokens:
            raise TypeError("the masked autoencoder takes a plain VisionTransformer encoder (one class token at most)")
        self.mask_ratio, self.norm_pix = mask_ratio, norm_pix
        self.settings = dict(decoder_dim=decoder_dim, decoder_depth=decoder_depth, decoder_heads=decoder_heads,
                             mask_ratio=mask_ratio, norm_pix=norm_pix)
        T = self.encoder.num_prefix_tokens
        self.decoder_embed = nn.Linear(c.dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(c.grid_size, decoder_dim,
                                                                      num_prefix_tokens=T))  # (1, T+N, E), fixed
        self.decoder_blocks = Encoder(decoder_dim, decoder_depth, decoder_heads, mlp_ratio=c.mlp_ratio,
                                      norm_eps=c.norm_eps)
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=c.norm_eps)
        self.decoder_pred = nn.Linear(decoder_dim, c.in_channels * c.patch_size ** 2)  # E -> L
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(self._init_decoder)
        truncated_normal_(self.mask_token, 0.02)

    @staticmethod
    def _init_decoder(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            truncated_normal_(module.weight, 0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        """Positions, class token and mask token are not decayed (AdamW's groups, chapter 6)."""
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {"mask_token"}

    def forward_encoder(self, images: Tensor, masking: Masking) -> Tensor:
        """Embed every patch with its position, keep the visible ones, prepend the class token, encode.

        Shape:
            (B, C, H, W) -> (B, T+K, D)
        """
        vit, T = self.encoder, self.encoder.num_prefix_tokens
        x = vit.patch_embed(images) + vit.pos_embed[:, T:]  # (B, N, D), positions before dropping
        x = gather_tokens(x, masking.keep)  # (B, N, D) -> (B, K, D)
        if vit.cls_token is not None:
            cls = vit.cls_token + vit.pos_embed[:, :1]  # (1, 1, D)
            x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+K, D)
        x = vit.pos_drop(x)
        for block in vit.blocks:
            x = block(x)
        return vit.norm(x)

    def forward_decoder(self, latent: Tensor, masking: Masking) -> Tensor:
        """Mask tokens at the dropped places, positions, decoder blocks, pixels per patch.

        Shape:
            (B, T+K, D) -> (B, N, L)
        """
        T = self.encoder.num_prefix_tokens
        x = self.decoder_embed(latent)  # (B, T+K, E)
        prefix, visible = x[:, :T], x[:, T:]
        B, K, E = visible.shape
        N = masking.restore.shape[1]
        x = torch.cat([visible, self.mask_token.expand(B, N - K, E)], dim=1)  # (B, N, E), shuffled order
        x = gather_tokens(x, masking.restore)  # (B, N, E): unshuffled, each token at its patch
        x = torch.cat([prefix, x], dim=1) + self.decoder_pos_embed  # (B, T+N, E)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, T:]  # (B, T+N, E) -> (B, N, L)

    def forward(self, images: Tensor, *, mask_ratio: float | None = None, generator: torch.Generator | None = None,
                masking: Masking | None = None) -> MAEOutput:
        """Mask (a fresh random masking at ``mask_ratio``, default the model's, or the ``masking`` given),
        encode the visible patches, decode all, and the loss on the masked ones."""
        if masking is None:
            ratio = self.mask_ratio if mask_ratio is None else mask_ratio
            masking = random_masking(images.shape[0], self.encoder.config.num_patches, ratio,
                                     device=images.device, generator=generator)
        pred = self.forward_decoder(self.forward_encoder(images, masking), masking)
        target = patch_targets(images, self.encoder.config.patch_size, norm_pix=self.norm_pix)
        return MAEOutput(mae_loss(pred, target, masking.mask), pred, masking)


def vit_from_mae(mae: MaskedAutoencoder | Mapping[str, Tensor], config: ViTConfig | None = None, *,
                 num_classes: int | None = None) -> VisionTransformer:
    """A :class:`VisionTransformer` with the pretrained encoder's weights and a new, zero head.

    Args:
        mae: a :class:`MaskedAutoencoder`, or its encoder's state dict (then ``config`` is needed).
        num_classes: the new head's width (default: the config's).
    """
    if isinstance(mae, MaskedAutoencoder):
        config, state = mae.encoder.config, mae.encoder.state_dict()
    elif config is None:
        raise ValueError("give the encoder's ViTConfig with a state dict: vit_from_mae(state, config)")
    else:
        state = dict(mae)
    vit = VisionTransformer(config if num_classes is None else config.replace(num_classes=num_classes))
    device = next(iter(state.values())).device
    head = {k: v for k, v in vit.state_dict().items() if k.startswith("head.")}  # the new head (zeros)
    vit.load_state_dict({**{k: v for k, v in state.items() if not k.startswith("head.")}, **head})
    return vit.to(device)


def reconstruction_images(mae: MaskedAutoencoder, images: Tensor, output: MAEOutput) -> tuple[Tensor, Tensor]:
    """The masked input (dropped patches zero) and the reconstruction with the visible patches pasted in.

    With ``norm_pix`` the model predicts each patch's pattern, not its brightness and contrast: the
    picture puts each patch's true mean and standard deviation back (as the paper's figures do).

    Shape:
        (B, C, H, W) -> (B, C, H, W), (B, C, H, W)
    """
    P, size = mae.encoder.config.patch_size, images.shape[-2:]
    patches = patchify(images, P)  # (B, N, L)
    pred = output.pred.detach()
    if mae.norm_pix:
        pred = pred * (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt() + patches.mean(dim=-1, keepdim=True)
    m = output.masking.mask.unsqueeze(-1)  # (B, N, 1)
    masked = unpatchify(patches * (1 - m), P, size)
    pasted = unpatchify(patches * (1 - m) + pred * m, P, size)
    return masked, pasted


class PretrainResult(NamedTuple):
    """The pretraining's history (one record per epoch) and the normalisation it used."""

    history: list[dict]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _pretrain_epoch(mae: MaskedAutoencoder, loader, optimizer, scheduler, generator: torch.Generator,
                    config: TrainConfig, step: int, done: dict | None = None) -> tuple[dict, int]:
    """One pass over the images (their labels unused), or up to ``max_steps``; continues an epoch that such a
    stop left, ``done`` (its batches are drawn again from the loader's state at the epoch's start, and
    skipped). Returns the epoch's batches, summed loss, images and seconds so far, and the step count."""
    mae.train()
    done = dict(done or {"batches": 0, "total": 0.0, "seen": 0, "seconds": 0.0})
    t0, batches = time.perf_counter(), iter(loader)
    for _ in range(done["batches"]):
        next(batches)
    for images, _ in batches:  # labels are never read: self-supervised
        loss = mae(images, generator=generator).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(mae.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        done["batches"], done["total"] = done["batches"] + 1, done["total"] + loss.item() * images.shape[0]
        done["seen"] += images.shape[0]
        if not math.isfinite(done["total"]):
            raise FloatingPointError(f"the MAE loss became {loss.item()} at step {step}; try a lower lr")
        if _steps_done(config, step):
            break
    done["seconds"] += time.perf_counter() - t0
    return done, step


def _steps_done(config: TrainConfig, step: int) -> bool:
    return config.max_steps is not None and step >= config.max_steps


def _settings(mae: MaskedAutoencoder) -> dict:
    """What a checkpoint must share with the model that resumes it: the decoder, masking and encoder."""
    return {**mae.settings, "encoder": mae.encoder.config.to_dict()}


def _resume_differences(state: dict, mae: MaskedAutoencoder, config: TrainConfig) -> list[str]:
    """How a pretraining checkpoint's config and settings differ from this run's, one line each."""
    def flat(settings: dict) -> dict:
        encoder = {f"encoder.{k}": v for k, v in settings.get("encoder", {}).items()}
        return {**{k: v for k, v in settings.items() if k != "encoder"}, **encoder}

    saved, now = flat(state.get("settings", {})), flat(_settings(mae))
    return config_differences(state["config"], config) + [  # an older checkpoint lacks the encoder's settings
        f"{k}: checkpoint {saved[k]!r}, now {now.get(k)!r}" for k in sorted(saved) if saved[k] != now.get(k)]


def pretrain(mae: MaskedAutoencoder, train_set: ImageSet, config: TrainConfig, *,
             device: torch.device | str = "cpu", out_dir: str | os.PathLike | None = None, resume: bool = False,
             overwrite: bool = False, on_epoch: Callable[[int, MaskedAutoencoder], Any] | None = None,
             log: Callable[[str], Any] | None = print) -> PretrainResult:
    """Pretrain ``mae`` on ``train_set``'s images without their labels, with ``config``'s recipe.

    AdamW and warmup + cosine from :func:`~vit_from_scratch.recipe.build_optimizer` (``epochs``,
    ``batch_size``, ``lr``, ``min_lr``, ``warmup_epochs``, ``weight_decay``, ``betas``, ``grad_clip``,
    ``padding``, ``flip``, ``seed``, ``max_steps`` are read). With ``out_dir``, ``mae_last.pt`` is written
    atomically after every epoch and ``resume=True`` continues from it exactly (masks included); as with
    :func:`~vit_from_scratch.training.fit`, a folder that holds a run is refused unless ``resume`` or
    ``overwrite``, and a resume whose config, settings or data differ from the checkpoint's is refused.
    ``on_epoch(epoch, mae)`` is called after each epoch (e.g. to draw reconstructions).
    """
    if resume and out_dir is None:
        raise ValueError("resume=True continues the pretraining in out_dir; give out_dir")
    out = None if out_dir is None else prepare_out_dir(out_dir, resume=resume, overwrite=overwrite, files=MAE_FILES)
    device = torch.device(device)
    mae.to(device)
    mean, std = channel_stats(train_set.images)
    loader = make_loader(train_set, config.batch_size, train=True, mean=mean, std=std, device=device,
                         padding=config.padding, flip=config.flip, seed=config.seed)
    optimizer, scheduler = build_optimizer(mae, config, len(loader))
    generator = torch.Generator(device).manual_seed(config.seed + 1)  # the masks' own stream
    history, step, partial, path = [], 0, None, out / MAE_FILES[0] if out is not None else None
    if path is not None:
        check_room(out, checkpoint_bytes(mae), replaces=path)
    if resume:
        state = load_checkpoint(path, map_location=device)
        # the labels are never read: not their classes
        refuse_other_run(path, _resume_differences(state, mae, config), data_differences(state, mean, std),
                         data_option="the run's own images", fresh="overwrite=True, or another out_dir")
        mae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
        generator.set_state(state["mask_generator"].cpu())
        partial = state.get("partial")  # an epoch that max_steps stopped: continued, its record replaced
        history, step = [r for r in state["history"] if not r.get("partial")], state["step"]
    while len(history) < config.epochs and not _steps_done(config, step):
        epoch, start = len(history) + 1, loader.state_dict()
        done, step = _pretrain_epoch(mae, loader, optimizer, scheduler, generator, config, step, partial)
        partial = None if done["batches"] == len(loader) else done
        loss, seconds = done["total"] / max(done["seen"], 1), done["seconds"]
        history.append({"epoch": epoch, "step": step, "loss": loss, "epoch_time_s": seconds,
                        "images_per_s": done["seen"] / seconds, **({"partial": True} if partial else {})})
        if path is not None:
            save_checkpoint(path, model=mae.state_dict(), optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), loader=start if partial else loader.state_dict(),
                            mask_generator=generator.get_state(), history=history, step=step,
                            config=config.to_dict(), settings=_settings(mae), mean=mean, std=std,
                            **({"partial": partial} if partial else {}))
        if log:
            stopped = f" | stopped at step {step} by max_steps; resume=True continues this epoch" if partial else ""
            log(f"pretraining epoch {epoch}/{config.epochs} | loss {loss:.4f} | {seconds:.0f} s{stopped}")
        if on_epoch is not None:
            on_epoch(epoch, mae)
    return PretrainResult(history, mean, std)
