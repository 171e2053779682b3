"""Chapter 6: the training recipe as data and formulas. ``TrainConfig`` (every field a command-line option),
the named presets, AdamW's parameter groups, warmup + cosine, and the autocast choice; ``training.fit`` runs it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from .config import ViTConfig, check_field_types
from .loaders import AUGMENT_ON

__all__ = ["TrainConfig", "Phase", "PRESETS", "preset", "gpu_epochs_estimate", "param_groups", "warmup_cosine", "build_optimizer",
           "MuonAdamW", "muon_parameters", "autocast_dtype", "config_differences"]

OPTIMIZERS = ("adamw", "muon")
MAX_EPOCHS = 1_000_000  # more is a typing mistake, not a run (a million passes even over 16 images take hours)
# Fields that must be finite and 0 or more, and what 0 means.
_NON_NEGATIVE = {"warmup_epochs": "0: no warmup", "full_res_warmup_epochs": "0: no warmup",
                 "weight_decay": "0: none", "grad_clip": "0: off", "mixup": "0: off", "cutmix": "0: off"}


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything that defines a training run. Every field is also a command-line option."""

    model: ViTConfig = field(default_factory=ViTConfig, metadata={
        "help": "ViTConfig fields as JSON, e.g. '{\"dim\": 192, \"depth\": 6}' (default: the preset's); "
                "a dict is turned into a ViTConfig"})
    epochs: int = _opt(30, "passes over the training set; the schedule is laid out for exactly this many")
    batch_size: int = _opt(128, "images per optimiser step")
    lr: float = _opt(1e-3, "peak learning rate, reached at the end of the warmup")
    min_lr: float = _opt(1e-5, "learning rate at the end of the cosine decay")
    warmup_epochs: float = _opt(2.0, "linear warmup length in epochs (fractions allowed)")
    low_res_epochs: int = _opt(0, "progressive resizing: train the first this many of the epochs on images "
                                  "downsampled to low_res_size, then move the model to full size (0: off)")
    low_res_size: int = _opt(16, "image side in pixels for the low_res_epochs (a multiple of the patch size); the "
                                 "crop padding shrinks in proportion")
    full_res_lr: float | None = _opt(None, "peak learning rate of the second warmup + cosine, which starts when the "
                                           "model moves to full size (default: lr)")
    full_res_warmup_epochs: float | None = _opt(None, "warmup of that second schedule in epochs (default: "
                                                      "warmup_epochs)")
    optimizer: str = _opt("adamw", "adamw, or muon: Muon for the encoder blocks' weight matrices (AdamW's learning "
                                   "rate and decay, RMS-matched) and AdamW for every other parameter")
    ema: float = _opt(0.0, "exponential moving average of the weights, its decay per step (e.g. 0.999): "
                           "evaluation, the returned model and exported weights use the average (0: off)")
    weight_decay: float = _opt(0.05, "AdamW weight decay (never applied to norms, biases, positions, class token)")
    betas: tuple[float, float] = _opt((0.9, 0.999), "AdamW betas")
    label_smoothing: float = _opt(0.1, "label smoothing of the cross-entropy")
    grad_clip: float = _opt(1.0, "clip the global gradient norm to this (0: off)")
    padding: int = _opt(4, "random-crop padding in pixels (0: no crop)")
    flip: bool = _opt(True, "random horizontal flips")
    policy: str = _opt("none", "per-image augmentation policy: none, trivialaugment, randaugment, autoaugment")
    augment_on: str = _opt("auto", "where the policy runs: auto (batched on a GPU, worker processes on a CPU), "
                           "device (the GPU's batched path, on any device) or workers")
    erasing: float = _opt(0.0, "random erasing (Zhong et al. 2020): the probability per training image of "
                               "replacing a random rectangle (a fiftieth to a third of the image) with noise; 0: off")
    repeats: int = _opt(1, "repeated augmentation (Hoffer et al. 2020): every epoch shows 1/repeats of the "
                           "training images, each this many times, augmented anew; 1: off")
    mixup: float = _opt(0.0, "MixUp Beta(alpha, alpha); 0: off")
    cutmix: float = _opt(0.0, "CutMix Beta(alpha, alpha); 0: off")
    amp: str = _opt("auto", "mixed precision: auto (bf16 on GPUs that have it, fp16 on others, off on CPU), bf16, "
                            "fp16, off")
    compile: bool = _opt(False, "torch.compile the model")
    grad_checkpointing: bool = _opt(False, "recompute activations in the backward pass to save memory")
    train_subset: int | None = _opt(None, "use only this many training images (a fixed random subset; of those "
                                          "left after a validation split)")
    test_subset: int | None = _opt(None, "evaluate on only this many images of the evaluated set (a fixed random "
                                         "subset; of the validation set and of the test set read at the end)")
    max_steps: int | None = _opt(None, "stop after this many optimiser steps in all (the schedule still spans all "
                                       "epochs; 0: train nothing)")
    seed: int = _opt(0, "seed for weights, data order and augmentation")
    num_workers: int | None = _opt(None, "DataLoader workers for per-image policies on CPU (default: cores - 1)")

    def __post_init__(self) -> None:
        if isinstance(self.model, Mapping):
            try:
                self.model = ViTConfig.from_dict(self.model)  # the one place a model dict becomes a ViTConfig
            except (TypeError, ValueError) as error:
                raise type(error)(f"model: {error}") from error  # says which of the two configs is wrong
        elif not isinstance(self.model, ViTConfig):
            raise TypeError(f"model must be a ViTConfig or a dict of its fields, got {type(self.model).__name__}")
        self.betas = tuple(self.betas)
        check_field_types(self)  # whole numbers, finite floats, real bools: NaN and "false" stop here
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.epochs > MAX_EPOCHS:
            raise ValueError(f"epochs must be from 1 to {MAX_EPOCHS}, got {self.epochs}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be from 0 to {2**32 - 1}, got {self.seed}")
        if not 0 <= self.padding < self.model.image_size:
            raise ValueError(f"padding must be from 0 to {self.model.image_size - 1} pixels (less than the image "
                             f"size, so that a crop keeps part of the image; 0: no crop), got {self.padding}")
        for name, zero in _NON_NEGATIVE.items():
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be 0 or more ({zero}), got {value}")
        if len(self.betas) != 2 or not all(isinstance(b, numbers.Real) and not isinstance(b, bool) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), e.g. (0.9, 0.999), got {self.betas}")
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive number of images (or None: all), got {value}")
        for name in ("max_steps", "num_workers"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more (or None), got {getattr(self, name)}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be 0 (off) or a decay in (0, 1) such as 0.999, got {self.ema}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {self.augment_on!r}")
        if not 0 <= self.erasing <= 1:
            raise ValueError(f"erasing must be a probability from 0 (off) to 1, got {self.erasing}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be 1 (off) or more, got {self.repeats}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lr <= 0:
            raise ValueError(f"lr must be above 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be from 0 to lr ({self.lr}), got {self.min_lr}")
        if self.full_res_lr is not None and not self.min_lr <= self.full_res_lr:
            raise ValueError(f"full_res_lr must be at least min_lr ({self.min_lr}), got {self.full_res_lr}")
        self._check_low_res()

    def _check_low_res(self) -> None:
        if self.low_res_epochs < 0:
            raise ValueError(f"low_res_epochs must be 0 (off) or more, got {self.low_res_epochs}")
        if not self.low_res_epochs:
            return
        if self.low_res_epochs >= self.epochs:
            raise ValueError(f"low_res_epochs ({self.low_res_epochs}) must be fewer than epochs ({self.epochs}), "
                             "so that training ends at full size; or set low_res_epochs=0 to train at one size")
        P, full = self.model.patch_size, self.model.image_size
        if not 0 < self.low_res_size < full or self.low_res_size % P:
            raise ValueError(f"low_res_size must be a multiple of the patch size ({P}) below the image size "
                             f"({full}), got {self.low_res_size}; e.g. low_res_size={max(P, full // 2 // P * P)}")

    def vit_config(self) -> ViTConfig:
        """The model's configuration (the same object as ``model``)."""
        return self.model

    def to_dict(self) -> dict:
        """Plain data (JSON-friendly); :meth:`from_dict` reads it back."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**values, "model": self.model.to_dict(), "betas": list(self.betas)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build a config from :meth:`to_dict`'s output; unknown keys are an error."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown TrainConfig field(s) {unknown}")
        return cls(**{**values, "model": ViTConfig.from_dict(values.get("model", {}))})

    def phases(self) -> list[Phase]:
        """The stretches of training at one image size, each with its own warmup + cosine: one, or two with
        progressive resizing (``low_res_epochs`` at ``low_res_size``, then the rest at full size)."""
        full = self.model.image_size
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


# The chapter's model and recipe for a 2-core CPU (book/06_training.ipynb). Its levers were chosen on
# validation (45,000 training images, the 5,000-image validation split) at the end of this very schedule
# (10 epochs at 16 px + 7 at 32 px), two seeds each, one rule (learning_curve.compare_seeds with the binomial
# floor; tests/benchmarks/results/select-full-schedule-cpu-2core.json): Muon 78.2% against AdamW 72.0%
# (+6.2 points, noise 1.7); a moving average of the weights (EMA, decay capped at 0.9995) +0.1 points on
# Muon, within noise, so the plainer choice (no EMA) stands. The phase lengths are a budget decision: Muon's CPU cost per step
# (tests/benchmarks/results/optimizer-cpu-2core.json) times the old recipe's epoch times, shortened until
# the expected training time leaves a margin under 45 minutes. Batch 64 is an older default, from two-epoch
# probes on test accuracy before the book had a validation split; it has not been measured again.
# cifar10-gpu ran once on an H200 (tests/benchmarks/results/cifar10-gpu-h200.json): 100 epochs in 5.7 min
# of training, 79.0% test accuracy, short of its 93% goal.
# cifar10-t4 is cifar10-gpu for Colab's free T4, cut to the epochs that end within 30 minutes there. It is an
# ESTIMATE, not a measurement (no T4 was available): `gpu_epochs_estimate` below, with the H200 run's
# measured images/s scaled by the two GPUs' peak half-precision matrix rates, i.e. assuming the T4 is kept
# as busy as the H200 was. That is pessimistic (the H200's step is far from compute-bound), so the run should
# end early rather than late. amp "auto" gives fp16 with a gradient scaler there (a T4 has no bf16 units).
# tests/test_gpu_path.py recomputes the epochs from the committed H200 results.
H200_BF16_PEAK = 989e12  # FLOP/s, dense bf16 tensor cores, NVIDIA's H200 (SXM) datasheet
T4_FP16_PEAK = 65e12  # FLOP/s, fp16 tensor cores with fp32 accumulation, NVIDIA's T4 datasheet


def gpu_epochs_estimate(measured_images_per_s: float, *, measured_peak: float, target_peak: float,
                        budget_s: float, reserve_s: float, images_per_epoch: int,
                        eval_s_per_epoch: float = 0.0) -> dict[str, float]:
    """How many epochs fit in ``budget_s`` on another GPU, from a run measured on one (an estimate).

    The other GPU is assumed as busy as the measured one: images/s scale with the peak matrix rates,
    ``measured · target_peak / measured_peak``; evaluation time scales the same way. ``reserve_s`` is
    kept for start-up, data loading and the final evaluation. Returns the estimated images/s, seconds
    per epoch and the whole number of epochs that fit (at least 1).
    """
    if min(measured_images_per_s, measured_peak, target_peak, images_per_epoch) <= 0:
        raise ValueError("images/s, peak rates and images per epoch must be positive")
    if not 0 <= reserve_s < budget_s:
        raise ValueError(f"the reserve ({reserve_s} s) must be non-negative and below the budget ({budget_s} s)")
    slowdown = measured_peak / target_peak
    images_per_s = measured_images_per_s / slowdown
    epoch_s = images_per_epoch / images_per_s + eval_s_per_epoch * slowdown
    return {"images_per_s": images_per_s, "epoch_s": epoch_s,
            "epochs": max(1, int((budget_s - reserve_s) // epoch_s))}


# From cifar10-gpu-h200.json: 100 epochs of 50,000 images in 340.7 s of training epochs (14,675 images/s over
# the run) and 0.14 s of evaluation per epoch. With a 30-minute budget and 5 minutes kept for start-up, the
# data download and decoding: 964 images/s, 53.9 s per epoch on a T4, 27 epochs (about 24.3 min).
T4_EPOCHS = 27

PRESETS: dict[str, dict[str, Any]] = {
    "cifar10-cpu": dict(
        model=dict(image_size=32, patch_size=4, num_classes=10, dim=128, depth=6, num_heads=4, mlp_ratio=2.0),
        epochs=17, batch_size=64, lr=1e-3, min_lr=1e-5, warmup_epochs=1.0, weight_decay=0.05,
        low_res_epochs=10, low_res_size=16, full_res_lr=5e-4, full_res_warmup_epochs=0.25, optimizer="muon",
        label_smoothing=0.1, grad_clip=1.0, padding=4, flip=True, policy="none"),
    "cifar10-gpu": dict(
        model=dict(image_size=32, patch_size=4, num_classes=10, dim=384, depth=8, num_heads=6, mlp_ratio=2.0,
                   drop_path=0.1),
        epochs=100, batch_size=512, lr=1e-3, min_lr=1e-5, warmup_epochs=5.0, weight_decay=0.05,
        label_smoothing=0.1, grad_clip=1.0, padding=4, flip=True, policy="trivialaugment", mixup=0.8, cutmix=1.0),
}
PRESETS["cifar10-t4"] = {**PRESETS["cifar10-gpu"], "epochs": T4_EPOCHS, "amp": "auto"}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A named :class:`TrainConfig` (``PRESETS``), with fields replaced by ``overrides``; a ``model`` dict
    changes only the fields it names, a ``ViTConfig`` replaces the preset's model."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    model = overrides.get("model")
    values = {**PRESETS[name], **overrides}
    if model is None or isinstance(model, Mapping):
        values["model"] = {**PRESETS[name]["model"], **(model or {})}
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


def muon_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters Muon updates: the 2-D weight matrices inside the encoder blocks (attention's ``qkv`` and
    ``proj``, the MLP's ``fc1`` and ``fc2``). Embeddings, the head, norms and biases stay with AdamW, as in
    Muon's own recipe (Jordan et al., 2024)."""
    return [p for name, p in model.named_parameters()
            if p.requires_grad and p.ndim == 2 and name.split(".")[0] == "blocks"]


class MuonAdamW(torch.optim.Optimizer):
    """One optimiser made of two: ``torch.optim.Muon`` on :func:`muon_parameters` and AdamW (with
    :func:`param_groups`' decay rule) on the rest. Muon orthogonalises each matrix's momentum with a few
    Newton-Schulz steps; ``adjust_lr_fn="match_rms_adamw"`` scales its update to AdamW's size, so both halves
    share one learning rate, one weight decay and one schedule (a scheduler sees all groups). Its state dict
    holds both halves."""

    def __init__(self, model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float],
                 fused: bool = False) -> None:
        if not hasattr(torch.optim, "Muon"):
            raise RuntimeError(f"optimizer='muon' needs torch.optim.Muon, which this torch ({torch.__version__}) "
                               "does not have: upgrade torch (pip install -U torch) or use optimizer='adamw'")
        matrices = muon_parameters(model)
        if not matrices:
            raise ValueError(f"optimizer='muon' needs a transformer whose encoder blocks live in `blocks`; "
                             f"{type(model).__name__} has no 2-D weights there; use optimizer='adamw'")
        taken = {id(p) for p in matrices}
        rest = [{**g, "params": [p for p in g["params"] if id(p) not in taken]}
                for g in param_groups(model, weight_decay)]
        self.muon = torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW([g for g in rest if g["params"]], lr=lr, betas=betas,
                                       **({"fused": True} if fused else {}))
        super().__init__([{"params": []}], {})  # the Optimizer machinery, with no parameters of its own
        self._join()

    def _join(self) -> None:
        self.param_groups = self.muon.param_groups + self.adamw.param_groups  # the same dicts: one schedule

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self._join()  # loading replaces the halves' group dicts


def build_optimizer(model: nn.Module, config: TrainConfig, steps_per_epoch: int, phase: Phase | None = None):
    """The optimiser (AdamW over :func:`param_groups`, or :class:`MuonAdamW` with ``optimizer="muon"``) and a
    per-step LambdaLR following :func:`warmup_cosine` over ``phase`` (default: the config's first phase, which
    is the whole run without progressive resizing)."""
    phase = phase or config.phases()[0]
    fused = all(p.is_cuda for p in model.parameters())
    if config.optimizer == "muon":
        optimizer = MuonAdamW(model, lr=phase.lr, weight_decay=config.weight_decay, betas=config.betas,
                              fused=fused)
    else:
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
        # a T4 or V100 only emulates bf16 (slowly): ask for real bf16 units
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


# Fields that may differ between a checkpoint and the run resuming it: how many workers, and where to stop
# (the schedule spans all epochs whatever max_steps says; `--resume --max-steps 0 --export` exports a run).
_RESUMABLE_CHANGES = {"num_workers", "max_steps"}


def config_differences(saved: Mapping[str, Any], config: TrainConfig) -> list[str]:
    """The fields in which a checkpoint's saved config and ``config`` differ, one line each (resume refuses those)."""
    try:  # read through from_dict, so that an older checkpoint's field names count as today's
        saved = TrainConfig.from_dict(saved).to_dict()
    except (TypeError, ValueError):
        pass

    def flat(d: Mapping[str, Any]) -> dict:
        return {**{k: v for k, v in d.items() if k != "model"},
                **{f"model.{k}": v for k, v in dict(d.get("model") or {}).items()}}

    a, b = flat(saved), flat(config.to_dict())
    diffs = []
    for k in sorted((set(a) | set(b)) - _RESUMABLE_CHANGES):
        x, y = a.get(k), b.get(k)
        x, y = (list(x), list(y)) if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) else (x, y)
        if x != y:
            diffs.append(f"{k}: checkpoint {x!r}, now {y!r}")
    return diffs
