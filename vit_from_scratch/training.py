"""Chapter 6: training. One recipe, used by the chapter and by ``python -m vit_from_scratch.train``.

AdamW without weight decay on norms, biases, position embedding and class token; linear warmup then
cosine decay, stepped every batch; label smoothing; gradient clipping; mixed precision (bf16 where the
hardware has it, fp16 with a gradient scaler otherwise); optional gradient checkpointing and
``torch.compile``; optional progressive resizing (the first epochs on downsampled images, then the model
moves to full size and a second warmup + cosine starts). Checkpoints are written atomically and hold
everything needed to resume exactly, across the change of size too.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoints import atomic_write
from .data import ImageSet, channel_stats, load_cifar10, make_loader, mixup_cutmix, resize_images
from .model import ViTConfig, VisionTransformer, to_resolution
from .runtime import pick_device

__all__ = [
    "TrainConfig", "Phase", "PRESETS", "preset", "param_groups", "warmup_cosine", "build_optimizer", "autocast_dtype",
    "evaluate", "fit", "FitResult", "NonFiniteLossError", "save_checkpoint", "load_checkpoint",
    "load_trained_model", "export_weights", "WEIGHTS_DIR",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything that defines a training run. Every field is also a command-line option."""

    model: dict = _opt(None, "ViTConfig fields as JSON, e.g. '{\"dim\": 192, \"depth\": 6}' (default: the preset's)")
    epochs: int = _opt(30, "passes over the training set; the schedule is laid out for exactly this many")
    batch_size: int = _opt(128, "images per optimiser step")
    lr: float = _opt(1e-3, "peak learning rate, reached at the end of the warmup")
    min_lr: float = _opt(1e-5, "learning rate at the end of the cosine decay")
    warmup_epochs: float = _opt(2.0, "linear warmup length in epochs (fractions allowed)")
    low_res_epochs: int = _opt(0, "progressive resizing: train the first this many of the epochs on images "
                                  "downsampled to low_res_size, then move the model to full size (0: off)")
    low_res_size: int = _opt(16, "image side in pixels for the low_res_epochs (a multiple of the patch size); the "
                                 "crop padding shrinks in proportion")
    full_res_lr: float = _opt(None, "peak learning rate of the second warmup + cosine, which starts when the model "
                                    "moves to full size (default: lr)")
    full_res_warmup_epochs: float = _opt(None, "warmup of that second schedule in epochs (default: warmup_epochs)")
    weight_decay: float = _opt(0.05, "AdamW weight decay (never applied to norms, biases, positions, class token)")
    betas: tuple = _opt((0.9, 0.999), "AdamW betas")
    label_smoothing: float = _opt(0.1, "label smoothing of the cross-entropy")
    grad_clip: float = _opt(1.0, "clip the global gradient norm to this (0: off)")
    padding: int = _opt(4, "random-crop padding in pixels (0: no crop)")
    flip: bool = _opt(True, "random horizontal flips")
    policy: str = _opt("none", "per-image augmentation policy: none, trivialaugment, randaugment, autoaugment")
    mixup: float = _opt(0.0, "MixUp Beta(alpha, alpha); 0: off")
    cutmix: float = _opt(0.0, "CutMix Beta(alpha, alpha); 0: off")
    amp: str = _opt("auto", "mixed precision: auto (bf16 on GPUs that have it, fp16 on others, off on CPU), bf16, fp16, off")
    compile: bool = _opt(False, "torch.compile the model")
    grad_checkpointing: bool = _opt(False, "recompute activations in the backward pass to save memory")
    train_subset: int = _opt(None, "use only this many training images (a fixed random subset)")
    test_subset: int = _opt(None, "evaluate on only this many test images")
    max_steps: int = _opt(None, "stop after this many optimiser steps in all (the schedule still spans all epochs)")
    seed: int = _opt(0, "seed for weights, data order and augmentation")
    num_workers: int = _opt(None, "DataLoader workers for per-image policies on CPU (default: cores - 1)")

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if self.full_res_lr is not None and not 0 <= self.min_lr <= self.full_res_lr:
            raise ValueError(f"need min_lr <= full_res_lr, got full_res_lr={self.full_res_lr}, min_lr={self.min_lr}")
        if self.low_res_epochs < 0:
            raise ValueError(f"low_res_epochs must be 0 (off) or more, got {self.low_res_epochs}")
        if self.low_res_epochs:
            if self.low_res_epochs >= self.epochs:
                raise ValueError(f"low_res_epochs ({self.low_res_epochs}) must be fewer than epochs ({self.epochs}), "
                                 "so that training ends at full size; or set low_res_epochs=0 to train at one size")
            vit = self.vit_config()
            P = vit.patch_size
            if not 0 < self.low_res_size < vit.image_size or self.low_res_size % P:
                raise ValueError(f"low_res_size must be a multiple of the patch size ({P}) below the image size "
                                 f"({vit.image_size}), got {self.low_res_size}; e.g. "
                                 f"low_res_size={max(P, vit.image_size // 2 // P * P)}")

    def vit_config(self) -> ViTConfig:
        return ViTConfig.from_dict(self.model or {})

    def to_dict(self) -> dict:
        return asdict(self)

    def phases(self) -> list[Phase]:
        """The stretches of training at one image size, each with its own warmup + cosine: one, or two with
        progressive resizing (``low_res_epochs`` at ``low_res_size``, then the rest at full size)."""
        full = self.vit_config().image_size
        if not self.low_res_epochs:
            return [Phase(full, 0, self.epochs, self.lr, self.warmup_epochs, self.padding)]
        low_padding = round(self.padding * self.low_res_size / full)
        return [Phase(self.low_res_size, 0, self.low_res_epochs, self.lr, self.warmup_epochs, low_padding),
                Phase(full, self.low_res_epochs, self.epochs,
                      self.lr if self.full_res_lr is None else self.full_res_lr,
                      self.warmup_epochs if self.full_res_warmup_epochs is None else self.full_res_warmup_epochs,
                      self.padding)]


@dataclass(frozen=True)
class Phase:
    """Epochs ``first_epoch`` (0-based) to ``end_epoch`` (exclusive) at ``image_size`` pixels, under one linear
    warmup to ``lr`` and cosine decay laid out for exactly these epochs, with crops padded by ``padding``."""

    image_size: int
    first_epoch: int
    end_epoch: int
    lr: float
    warmup_epochs: float
    padding: int

    @property
    def epochs(self) -> int:
        return self.end_epoch - self.first_epoch


# The chapter's model and recipe, chosen to fit a 2-core CPU budget (see book/06_training.ipynb). On a CPU a
# batch of 64 trains nearly as many images per second as 128 and gives twice the optimiser steps, which
# in short probes (tests/benchmarks/recipe_probe.py) beat batch 128. Progressive resizing: 14 epochs at
# 16 px cost about as much as 4 at 32 px (a quarter of the tokens), then 11 epochs at 32 px with a second,
# gentler schedule. The 25 epochs took 41.4 minutes of training in book/06_training.ipynb. The runs that
# chose the split are in tests/benchmarks/results/: 10 + 11 epochs reached 74.99%, 10 + 12 epochs 74.97%.
PRESETS: dict[str, dict[str, Any]] = {
    "cifar10-cpu": dict(
        model=dict(image_size=32, patch_size=4, num_classes=10, dim=128, depth=6, num_heads=4, mlp_ratio=2.0),
        epochs=25, batch_size=64, lr=1e-3, min_lr=1e-5, warmup_epochs=1.0, weight_decay=0.05,
        low_res_epochs=14, low_res_size=16, full_res_lr=5e-4, full_res_warmup_epochs=0.25,
        label_smoothing=0.1, grad_clip=1.0, padding=4, flip=True, policy="none"),
    "cifar10-gpu": dict(
        model=dict(image_size=32, patch_size=4, num_classes=10, dim=384, depth=8, num_heads=6, mlp_ratio=2.0,
                   drop_path=0.1),
        epochs=100, batch_size=512, lr=1e-3, min_lr=1e-5, warmup_epochs=5.0, weight_decay=0.05,
        label_smoothing=0.1, grad_clip=1.0, padding=4, flip=True, policy="trivialaugment", mixup=0.8, cutmix=1.0),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A named :class:`TrainConfig` (``PRESETS``), with fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    values = {**PRESETS[name], **overrides}
    if overrides.get("model") is not None:
        values["model"] = {**PRESETS[name]["model"], **overrides["model"]}
    return TrainConfig(**values)


# --------------------------------------------------------------------------- the recipe's parts


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices decay; norms, biases (1-D), position embedding and class token do not."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Learning rate at ``step`` (0-based): linear from lr/warmup to ``lr`` over ``warmup_steps``, then a
    cosine from ``lr`` down to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, config: TrainConfig, steps_per_epoch: int, phase: Phase | None = None):
    """AdamW over :func:`param_groups` and a per-step LambdaLR following :func:`warmup_cosine` over ``phase``
    (default: the config's first phase, which is the whole run without progressive resizing)."""
    phase = phase or config.phases()[0]
    fused = all(p.is_cuda for p in model.parameters())
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=phase.lr, betas=config.betas,
                                  **({"fused": True} if fused else {}))
    total = phase.epochs * steps_per_epoch
    warmup = max(1, round(phase.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total_steps=total, warmup_steps=warmup, lr=phase.lr,
                                           min_lr=config.min_lr) / phase.lr)
    return optimizer, scheduler


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (``None``: full float32)."""
    if amp == "off":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None  # on the CPUs measured (book/06, book/08) bf16 autocast was slower than float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# --------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, **state: Any) -> None:
    """``torch.save(state)`` to a temporary file beside ``path``, then an atomic rename."""
    atomic_write(lambda tmp: torch.save(state, tmp), Path(path))


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; train first, or drop --resume")
    return torch.load(path, map_location=map_location, weights_only=False)


# Fields that may differ between a checkpoint and the run resuming it.
_RESUMABLE_CHANGES = {"num_workers"}


def _config_differences(saved: dict, current: dict) -> list[str]:
    keys = sorted((set(saved) | set(current)) - _RESUMABLE_CHANGES)
    diffs = []
    for k in keys:
        a, b = saved.get(k), current.get(k)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            a, b = list(a), list(b)
        if a != b:
            diffs.append(f"{k}: checkpoint {a!r}, now {b!r}")
    return diffs


# --------------------------------------------------------------------------- evaluation and training


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device: torch.device | str | None = None, amp: str = "auto",
             return_predictions: bool = False) -> dict:
    """Mean cross-entropy and accuracy over ``loader``; optionally every prediction and label."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = autocast_dtype(amp, device)
    was_training = model.training
    model.eval()
    loss_sum, correct, count, preds, labels_all = 0.0, 0, 0, [], []
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        pred = logits.argmax(dim=1)
        correct += (pred == labels).sum().item()
        count += labels.numel()
        if return_predictions:
            preds.append(pred.cpu())
            labels_all.append(labels.cpu())
    model.train(was_training)
    result = {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1), "count": count}
    if return_predictions:
        result["predictions"], result["labels"] = torch.cat(preds), torch.cat(labels_all)
    return result


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict]
    checkpoint: Path | None
    config: TrainConfig


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    # refresh about once a second: each refresh of a notebook's widget is a message the front end must process
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0)


def fit(config: TrainConfig, *, train_set: ImageSet | None = None, test_set: ImageSet | None = None,
        out_dir: str | os.PathLike | None = None, resume: bool = False, device: torch.device | str | None = None,
        stop_after_epochs: int | None = None, progress: bool = True, log=print, model: nn.Module | None = None,
        loss_fn: Callable[[Any, Tensor, Tensor], Tensor] | None = None) -> FitResult:
    """Train a :class:`VisionTransformer` with ``config`` and return it with its history.

    Args:
        model: train this module instead of ``VisionTransformer(config.vit_config())`` (a CNN, a hybrid, a
            student with a distillation head); ``config.model['num_classes']`` must still match the data.
            Its output may be a tuple in training mode; accuracy is read from the first element.
        loss_fn: ``loss_fn(output, targets, images) -> loss`` replaces the label-smoothed cross-entropy
            (``images`` are the augmented inputs, e.g. for a distillation teacher).
        train_set, test_set: decoded data (default: CIFAR-10 from ``VIT_DATA_DIR``).
        out_dir: where ``last.pt`` (atomic, every epoch) and ``history.json`` go; ``None``: nowhere.
        resume: continue from ``out_dir/last.pt``; refused if that run's config differs.
        stop_after_epochs: end this call after that many epochs (the schedule still spans
            ``config.epochs``); a later ``resume=True`` call continues exactly.
        progress: show a tqdm progress bar per epoch.
        log: called with one line per epoch (``None``: silent).
    """
    device = torch.device(device) if device is not None else pick_device()
    out = Path(out_dir) if out_dir is not None else None
    checkpoint_path = out / "last.pt" if out is not None else None
    if train_set is None or test_set is None:
        loaded = load_cifar10()
        train_set, test_set = train_set or loaded[0], test_set or loaded[1]
    train_set = train_set.subset(config.train_subset, seed=config.seed)
    test_set = test_set.subset(config.test_subset, seed=config.seed + 1)
    vit_config = config.vit_config()
    if vit_config.num_classes != len(train_set.classes):
        raise ValueError(f"the model has {vit_config.num_classes} classes but the data has {len(train_set.classes)} "
                         f"({', '.join(train_set.classes)}); set model.num_classes")

    # Normalise with the statistics of the data it trains on (the full-size images, in every phase).
    mean, std = channel_stats(train_set.images)
    phases = config.phases()
    if model is not None and len(phases) > 1 and not isinstance(model, VisionTransformer):
        raise TypeError(f"progressive resizing (low_res_epochs={config.low_res_epochs}) moves a VisionTransformer "
                        f"to a new image size; a {type(model).__name__} cannot; set low_res_epochs=0")
    torch.manual_seed(config.seed)
    if model is None:
        model = VisionTransformer(replace(vit_config, image_size=phases[0].image_size))
    model = model.to(device)
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    resized: dict[int, tuple[ImageSet, ImageSet]] = {vit_config.image_size: (train_set, test_set)}

    def enter(index: int, model: nn.Module):
        """The model at phase ``index``'s size, its loaders and a fresh optimiser and schedule."""
        phase = phases[index]
        if isinstance(model, VisionTransformer) and model.config.image_size != phase.image_size:
            model = to_resolution(model, phase.image_size)  # the position embedding is interpolated
        if phase.image_size not in resized:
            resized[phase.image_size] = (resize_images(train_set, phase.image_size),
                                         resize_images(test_set, phase.image_size))
        train_data, test_data = resized[phase.image_size]
        train_loader = make_loader(train_data, config.batch_size, train=True, mean=mean, std=std, device=device,
                                   policy=None if config.policy == "none" else config.policy,
                                   padding=phase.padding, flip=config.flip, seed=config.seed + index,
                                   num_workers=config.num_workers)
        test_loader = make_loader(test_data, 500, train=False, mean=mean, std=std, device=device)
        optimizer, scheduler = build_optimizer(model, config, len(train_loader), phase)
        return model, train_loader, test_loader, optimizer, scheduler

    history: list[dict] = []
    start_epoch, step, index = 0, 0, 0
    state = None
    if resume:
        state = load_checkpoint(checkpoint_path)
        diffs = _config_differences(state["config"], config.to_dict())
        if diffs:
            raise ValueError(f"{checkpoint_path} was written by a run with another configuration:\n  "
                             + "\n  ".join(diffs) + "\nresume with the same options, or start fresh in another --out")
        # A checkpoint is saved after the move to the next phase, so it belongs to the phase of its next epoch.
        index = next(i for i, ph in enumerate(phases) if min(state["epoch"], config.epochs - 1) < ph.end_epoch)
    model, train_loader, test_loader, optimizer, scheduler = enter(index, model)
    steps_per_epoch = len(train_loader)
    dtype = autocast_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        train_loader.load_state_dict(state["loader"])
        _set_rng_state(state["rng"])
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
        if log:
            log(f"resumed from {checkpoint_path} after epoch {start_epoch}")

    train_model = torch.compile(model) if config.compile else model
    end_epoch = config.epochs if stop_after_epochs is None else min(config.epochs, start_epoch + stop_after_epochs)
    for epoch in range(start_epoch, end_epoch):
        if config.max_steps is not None and step >= config.max_steps:
            break
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen, t0 = 0, time.perf_counter()
        bar = _progress(train_loader, steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", progress)
        for i, (images, labels) in enumerate(bar):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            images_in, targets = mixup_cutmix(images, labels, vit_config.num_classes,
                                              mixup_alpha=config.mixup, cutmix_alpha=config.cutmix)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                output = train_model(images_in)
            logits = output[0] if isinstance(output, (tuple, list)) else output
            if loss_fn is None:
                loss = F.cross_entropy(logits.float(), targets, label_smoothing=config.label_smoothing)
            else:
                loss = loss_fn(output, targets, images_in)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} (learning rate "
                    f"{scheduler.get_last_lr()[0]:.3g}); training stopped. "
                    + (f"The last good checkpoint is kept at {checkpoint_path}. " if checkpoint_path else "")
                    + "Try a lower --lr, a longer --warmup-epochs, --grad-clip 1, or --amp off.")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            loss_sum += loss.detach() * labels.numel()
            correct += (logits.argmax(1) == labels).sum()
            seen += labels.numel()
            if progress and (i % 50 == 0 or i == steps_per_epoch - 1):
                elapsed = time.perf_counter() - t0
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                                img_s=f"{seen / elapsed:.0f}")
            if config.max_steps is not None and step >= config.max_steps:
                break
        train_time = time.perf_counter() - t0
        test = evaluate(model, test_loader, device=device, amp=config.amp)
        record = {"epoch": epoch + 1, "step": step, "image_size": phases[index].image_size,
                  "train_loss": loss_sum.item() / max(seen, 1),
                  "train_accuracy": correct.item() / max(seen, 1), "test_loss": test["loss"],
                  "test_accuracy": test["accuracy"], "lr": scheduler.get_last_lr()[0],
                  "images_per_s": seen / train_time, "epoch_time_s": train_time,
                  "eval_time_s": time.perf_counter() - t0 - train_time}
        history.append(record)
        if log:
            log(f"epoch {epoch + 1:3d}/{config.epochs} | train loss {record['train_loss']:.3f} "
                f"acc {record['train_accuracy']:.3f} | test loss {record['test_loss']:.3f} "
                f"acc {record['test_accuracy']:.3f} | lr {record['lr']:.2e} | {record['images_per_s']:.0f} img/s "
                f"| {train_time:.0f} s")
        if epoch + 1 == phases[index].end_epoch and index + 1 < len(phases):
            index += 1
            model, train_loader, test_loader, optimizer, scheduler = enter(index, model)
            train_model = torch.compile(model) if config.compile else model
            if log:
                log(f"progressive resizing: the model moves from {phases[index - 1].image_size} to "
                    f"{phases[index].image_size} px; a new warmup + cosine to lr {phases[index].lr:g} starts")
        if out is not None:
            save_checkpoint(checkpoint_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                            loader=train_loader.state_dict(), rng=_rng_state(), epoch=epoch + 1, step=step,
                            history=history, config=config.to_dict(), mean=mean, std=std,
                            classes=list(train_set.classes))
            atomic_write(lambda tmp: tmp.write_text(json.dumps(
                {"config": config.to_dict(), "classes": list(train_set.classes), "mean": mean, "std": std,
                 "history": history}, indent=1)), out / "history.json")
    return FitResult(model, history, checkpoint_path, config)


# --------------------------------------------------------------------------- the shipped model


def export_weights(result_or_checkpoint, name: str, *, note: str, extra: dict | None = None,
                   directory: str | os.PathLike = WEIGHTS_DIR, half: bool = True) -> Path:
    """Write a weights-only file ``<name>.pt`` (float16 by default) and ``<name>.json`` (config, class names,
    normalisation, history, ``note``) for :func:`load_trained_model`."""
    if isinstance(result_or_checkpoint, (str, os.PathLike)):
        state = load_checkpoint(result_or_checkpoint)
    else:
        state = result_or_checkpoint
    directory = Path(directory)
    weights = {k: (v.half() if half and v.is_floating_point() else v).contiguous()
               for k, v in state["model"].items()}
    atomic_write(lambda tmp: torch.save(weights, tmp), directory / f"{name}.pt")
    info = {"name": name, "model": state["config"]["model"], "train_config": state["config"],
            "classes": state["classes"], "mean": list(state["mean"]), "std": list(state["std"]),
            "history": state["history"], "note": note, "dtype": "float16" if half else "float32", **(extra or {})}
    atomic_write(lambda tmp: tmp.write_text(json.dumps(info, indent=1)), directory / f"{name}.json")
    return directory / f"{name}.pt"


def load_trained_model(name: str = "cifar10_vit", *, device: torch.device | str | None = None,
                       directory: str | os.PathLike = WEIGHTS_DIR) -> tuple[VisionTransformer, dict]:
    """The model the training chapter trained and the package ships, in eval mode, with its info
    (config, classes, mean/std for normalisation, history, how it was made)."""
    directory = Path(directory)
    weights, meta = directory / f"{name}.pt", directory / f"{name}.json"
    if not weights.exists() or not meta.exists():
        available = sorted(p.stem for p in directory.glob("*.pt")) if directory.is_dir() else []
        raise FileNotFoundError(f"no shipped weights {name!r} in {directory} (found: {available or 'none'}); "
                                "run book/06_training.ipynb or `python -m vit_from_scratch.train` to make them")
    info = json.loads(meta.read_text())
    model = VisionTransformer(ViTConfig.from_dict(info["model"]))
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    device = torch.device(device) if device is not None else pick_device()
    return model.to(device).eval(), info
