"""Chapter 6: training. ``fit`` runs the recipe (:mod:`.recipe`) and is what the chapter and
``python -m vit_from_scratch.cli`` call.

``fit`` is a short loop over epochs that calls named steps: enter a phase (the model at that phase's
image size, its loaders, a fresh warmup + cosine), train one epoch, evaluate (the test set or a validation
split, and then the test set once: :mod:`.evaluation`), save. Checkpoints (:mod:`.checkpoints`) are written
atomically and hold everything needed to resume exactly, across progressive resizing's change of size too.
Before the first step the output folder is checked: writable, room for a checkpoint's atomic replace, and no
earlier run unless it is resumed or explicitly overwritten. A run stopped by ``max_steps`` inside an epoch
resumes inside that epoch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .averaging import WeightAverage
from .checkpoints import (CheckpointError, atomic_write, check_room, checkpoint_bytes, data_differences,
                          load_checkpoint, prepare_out_dir, refuse_other_run, rng_state, save_checkpoint, set_rng_state)
from .data import ImageSet, channel_stats, check_classes, load_cifar10, resize_images
from .evaluation import LOG_NAMES, check_evaluated_on, evaluate, evaluate_shards, refuse_other_set, test_once
from .loaders import make_loader, mixup_cutmix
from .loss_guard import CHECK_EVERY, LossGuard, NonFiniteLossError, lr_at, non_finite_error
from .model import VisionTransformer, to_resolution
from .parallel import SingleProcess
from .recipe import Phase, TrainConfig, autocast_dtype, build_optimizer, config_differences
from .runtime import pick_device, seed_offset

__all__ = ["evaluate", "fit", "FitResult", "NonFiniteLossError"]


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict]
    checkpoint: Path | None  # out_dir/last.pt (written after each epoch), or None without an out_dir
    config: TrainConfig
    trained: nn.Module | None = None  # the trained weights themselves: ``model`` unless config.ema averages them
    final_test: dict | None = None  # final_test_set's numbers (test.json's) once the schedule finished, else None


# --------------------------------------------------------------------------- before training


def _check_arguments(resume: bool, out_dir, evaluated_on: str, test_set: ImageSet | None) -> None:
    if resume and out_dir is None:
        raise ValueError("resume=True continues the run in out_dir; give out_dir")
    check_evaluated_on(evaluated_on, test_set)


def _training_data(config: TrainConfig, train_set: ImageSet | None, test_set: ImageSet | None,
                   final_test_set: ImageSet | None = None) -> tuple[ImageSet, ImageSet, ImageSet | None]:
    """The run's subsets, checked: classes match the model, and an epoch holds at least one step."""
    if train_set is None or test_set is None:
        loaded = load_cifar10()
        train_set = train_set if train_set is not None else loaded[0]
        test_set = test_set if test_set is not None else loaded[1]
    n_all = len(train_set)
    train_set = train_set.subset(config.train_subset, seed=config.seed)
    test_set = test_set.subset(config.test_subset, seed=config.seed + 1)
    if len(train_set) < config.batch_size:  # the last incomplete batch of an epoch is dropped
        source = f"--train-subset {config.train_subset} of {n_all}" if len(train_set) < n_all else "all of them"
        raise ValueError(f"no optimiser step would run: {len(train_set)} training images ({source}) do not fill "
                         f"one batch of {config.batch_size}; use a batch size of at most {max(1, len(train_set))} "
                         "or more training images")
    check_classes(train_set.classes, test_set.classes, f"the test set ({test_set.source or 'test_set'})")
    if final_test_set is not None:
        final_test_set = final_test_set.subset(config.test_subset, seed=config.seed + 1)
        check_classes(train_set.classes, final_test_set.classes, f"the final test set ({final_test_set.source})")
    num_classes = config.model.num_classes
    if num_classes != len(train_set.classes):
        raise ValueError(f"the model has {num_classes} classes but the data has {len(train_set.classes)} "
                         f"({', '.join(train_set.classes)}); set model.num_classes")
    return train_set, test_set, final_test_set


# --------------------------------------------------------------------------- the run and its steps


@dataclass
class _Run:
    """Everything a run changes as it trains; ``fit``'s steps read and update it."""

    config: TrainConfig
    device: torch.device
    train_set: ImageSet
    test_set: ImageSet
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model: nn.Module
    checkpoint: Path | None
    parallel: SingleProcess  # one process, or chapter 11's many (DDP, FSDP2)
    phases: list[Phase] = field(init=False)
    dtype: torch.dtype | None = field(init=False)  # autocast's
    scaler: torch.amp.GradScaler = field(init=False)
    guard: LossGuard = field(init=False)  # the first non-finite loss
    index: int = 0  # the phase
    epoch: int = 0  # epochs finished
    step: int = 0  # optimiser steps taken
    history: list[dict] = field(default_factory=list)
    partial: dict | None = None  # an epoch stopped by max_steps: its batches done and running sums, resumed
    loader_start: dict | None = None  # the training loader's state when the current epoch began
    resized: dict[int, tuple[ImageSet, ImageSet]] = field(default_factory=dict)
    train_model: nn.Module | None = None  # the model, or its DDP / torch.compile wrapper
    train_loader: Any = None
    test_loader: Any = None
    optimizer: Any = None
    scheduler: Any = None
    average: WeightAverage | None = None  # config.ema's average of the weights, which is evaluated
    evaluated_on: str = "test"  # what test_set is: "test", or "validation" carved from the training images

    def __post_init__(self) -> None:
        self.phases = self.config.phases()
        self.dtype = autocast_dtype(self.config.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.guard = LossGuard(self.device)
        self.resized[self.config.model.image_size] = (self.train_set, self.test_set)


def _enter_phase(run: _Run, index: int) -> None:
    """Move the model to phase ``index``'s size; make its loaders and a fresh optimiser and schedule."""
    c, phase = run.config, run.phases[index]
    if isinstance(run.model, VisionTransformer) and run.model.config.image_size != phase.image_size:
        run.model = to_resolution(run.model, phase.image_size)  # the position embedding is interpolated
    if c.ema:
        run.average = run.average or WeightAverage(run.model, c.ema)
        run.average.resize(phase.image_size)
    if phase.image_size not in run.resized:
        run.resized[phase.image_size] = (resize_images(run.train_set, phase.image_size),
                                         resize_images(run.test_set, phase.image_size))
    train_data, test_data = run.resized[phase.image_size]
    common, p = dict(mean=run.mean, std=run.std, device=run.device), run.parallel
    run.train_loader = make_loader(train_data, c.batch_size, train=True, padding=phase.padding, flip=c.flip,
                                   policy=None if c.policy == "none" else c.policy, seed=c.seed + index,
                                   num_workers=c.num_workers, rank=p.rank, world_size=p.world_size,
                                   augment_on=c.augment_on, erasing=c.erasing, repeats=c.repeats, **common)
    run.test_loader = make_loader(p.eval_shard(test_data), 500, train=False, **common)
    run.train_model = p.wrap(run.model)  # before the optimiser: FSDP2 replaces the parameters by shards
    run.optimizer, run.scheduler = build_optimizer(run.model, c, len(run.train_loader), phase)
    run.train_model = torch.compile(run.train_model) if c.compile else run.train_model
    run.index = index


def _start(config: TrainConfig, train_set: ImageSet, test_set: ImageSet, device: torch.device,
           model: nn.Module | None, out: Path | None, resume: bool, parallel: SingleProcess, evaluated_on: str) -> _Run:
    """A new run, or the one in ``out/last.pt`` restored exactly, in the phase of its next epoch."""
    phases = config.phases()
    if model is not None and len(phases) > 1 and not isinstance(model, VisionTransformer):
        raise TypeError(f"progressive resizing (low_res_epochs={config.low_res_epochs}) moves a VisionTransformer "
                        f"to a new image size; a {type(model).__name__} cannot; set low_res_epochs=0")
    # Normalise with the statistics of the data it trains on (the full-size images, in every phase).
    mean, std = channel_stats(train_set.images)
    torch.manual_seed(config.seed + seed_offset())  # VIT_SEED shifts it in a stress run; 0 by default
    if model is None:
        model = VisionTransformer(replace(config.model, image_size=phases[0].image_size))
    model = model.to(device)
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    run = _Run(config, device, train_set, test_set, mean, std, model, out / "last.pt" if out else None, parallel,
               evaluated_on=evaluated_on)
    parallel.seed(config.seed)  # after the weights, which every process draws alike
    if not resume:
        _enter_phase(run, 0)
        return run
    state = load_checkpoint(run.checkpoint)
    needed = {"model", "optimizer", "scheduler", "scaler", "loader", "rng", "epoch", "step", "history", "config"}
    if not needed <= set(state):
        raise CheckpointError(f"{run.checkpoint} is not a training checkpoint (it lacks "
                              f"{sorted(needed - set(state))}); resume from another run's last.pt, or start over "
                              "with --overwrite")
    refuse_other_set(run.checkpoint, state["history"], run.evaluated_on)
    refuse_other_run(run.checkpoint, config_differences(state["config"], config),
                     data_differences(state, mean, std, train_set.classes))
    own = parallel.own(state)  # this process's random state; refused if another number of processes wrote it
    # A checkpoint is saved after the move to the next phase, so it belongs to the phase of its next epoch.
    _enter_phase(run, next(i for i, ph in enumerate(phases) if min(state["epoch"], config.epochs - 1) < ph.end_epoch))
    parallel.load_state_dicts(run.model, run.optimizer, state["model"], state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    if run.average is not None:
        run.average.load_state_dict(state["average"])
    run.train_loader.load_state_dict(state["loader"])  # at the start of an epoch stopped by max_steps, if one was
    set_rng_state(own["rng"])
    run.partial = own.get("partial")
    run.epoch, run.step = state["epoch"], state["step"]
    run.history = [r for r in state["history"] if not r.get("partial")]  # a stopped epoch is recorded when it ends
    return run


def _train_step(run: _Run, images: Tensor, labels: Tensor, loss_fn) -> tuple[Tensor, Tensor]:
    """One optimiser step on a batch; returns the loss and the logits."""
    c = run.config
    images_in, targets = mixup_cutmix(images, labels, c.model.num_classes, mixup_alpha=c.mixup,
                                      cutmix_alpha=c.cutmix)
    with torch.autocast(run.device.type, dtype=run.dtype, enabled=run.dtype is not None):
        output = run.train_model(images_in)
    logits = output[0] if isinstance(output, (tuple, list)) else output
    if loss_fn is None:
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=c.label_smoothing)
    else:
        loss = loss_fn(output, targets, images_in)
    run.guard.note(loss, run.step)
    if not run.guard.deferred:  # on a CPU: at once, before the step
        _check_finite(run)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if c.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), c.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    if run.average is not None:
        run.average.update(run.model)
    run.step += 1
    return loss, logits


def _check_finite(run: _Run) -> None:
    """Stop for a non-finite loss the guard has noted (:mod:`.loss_guard`)."""
    bad = run.guard.found()
    if bad is not None:
        step, loss = bad
        raise non_finite_error(loss, epoch=run.epoch, step=step, lr=lr_at(run.scheduler, run.step, step),
                               checkpoint=run.checkpoint)


def _steps_done(run: _Run) -> bool:
    return run.config.max_steps is not None and run.step >= run.config.max_steps


def _train_one_epoch(run: _Run, loss_fn, progress: bool) -> dict:
    """One pass over the training loader (or up to ``max_steps``); the epoch's training numbers, ``finished``
    False when ``max_steps`` stopped it. An epoch stopped so before is continued where it stopped: its batches
    are drawn again (and skipped) from the loader's state at the epoch's start, its running sums restored."""
    run.model.train()
    done = run.partial or {"batches": 0, "loss_sum": 0.0, "correct": 0.0, "seen": 0, "seconds": 0.0}
    run.loader_start = run.train_loader.state_dict()
    loss_sum = torch.tensor(done["loss_sum"], device=run.device)  # float32, summed on as an unstopped epoch is
    correct = torch.tensor(done["correct"], device=run.device)
    seen, t0, steps, batch = done["seen"], time.perf_counter(), len(run.train_loader), done["batches"]
    batches = iter(run.train_loader)
    with torch.random.fork_rng(devices=[]):  # a per-image policy draws from the global stream: not twice
        for _ in range(batch):
            next(batches)
    bar = _progress(batches, steps, f"epoch {run.epoch + 1}/{run.config.epochs}", progress, initial=batch)
    for images, labels in bar:
        images, labels = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
        loss, logits = _train_step(run, images, labels, loss_fn)
        loss_sum += loss.detach() * labels.numel()
        correct += (logits.argmax(1) == labels).sum()
        seen += labels.numel()
        batch += 1
        if progress and (batch % 50 == 1 or batch == steps):
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                            img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        if batch % CHECK_EVERY == 0:
            _check_finite(run)
        if _steps_done(run):
            break
    _check_finite(run)  # before the epoch is recorded or saved
    seconds = done["seconds"] + time.perf_counter() - t0
    finished = batch == steps
    run.partial = None if finished else {"batches": batch, "loss_sum": loss_sum.item(), "correct": correct.item(),
                                         "seen": seen, "seconds": seconds}  # this process's, saved per process
    loss_sum, correct, seen = run.parallel.sum([loss_sum.item(), correct.item(), seen])  # every process's
    return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
            "images_per_s": seen / seconds, "epoch_time_s": seconds, "finished": finished}


def _progress(iterable, total: int, desc: str, enabled: bool, initial: int = 0):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    # refresh about once a second: each refresh of a notebook's widget is a message the front end must process
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0, initial=initial)


def _record(run: _Run, train: dict, test: dict, eval_time: float, log) -> None:
    """Append the epoch's numbers to the history; an epoch stopped by ``max_steps`` is not counted as finished,
    and its record (marked ``partial``) is replaced by the whole epoch's when a resume finishes it."""
    finished = train.pop("finished")
    run.epoch += finished
    record = {"epoch": run.epoch + (not finished), "step": run.step, "image_size": run.phases[run.index].image_size,
              "train_loss": train["train_loss"], "train_accuracy": train["train_accuracy"],
              "test_loss": test["loss"], "test_accuracy": test["accuracy"], "lr": run.scheduler.get_last_lr()[0],
              "images_per_s": train["images_per_s"], "epoch_time_s": train["epoch_time_s"], "eval_time_s": eval_time,
              "evaluated_on": run.evaluated_on, **({} if finished else {"partial": True})}
    run.history.append(record)
    if log:
        log(f"epoch {record['epoch']:3d}/{run.config.epochs} | train loss {record['train_loss']:.3f} "
            f"acc {record['train_accuracy']:.3f} | {LOG_NAMES[run.evaluated_on]} loss {record['test_loss']:.3f} "
            f"acc {record['test_accuracy']:.3f} | lr {record['lr']:.2e} | {record['images_per_s']:.0f} img/s "
            f"| {record['epoch_time_s']:.0f} s"
            + ("" if finished else f" | stopped at step {run.step} by max_steps; --resume continues this epoch"))


def _evaluated(run: _Run) -> nn.Module:
    return run.model if run.average is None else run.average.model


def _final_test(run: _Run, test_set: ImageSet | None, out: Path | None, log) -> dict | None:
    """The finished schedule's test numbers (:func:`.evaluation.test_once`); ``None`` before its last epoch."""
    if test_set is None or run.epoch < run.config.epochs:
        return None
    size = run.phases[run.index].image_size
    data = test_set if size == run.config.model.image_size else resize_images(test_set, size)
    facts = {"epoch": run.epoch, "step": run.step,
             "trained_on": {"images": len(run.train_set), "source": run.train_set.source},
             "monitored_on": {"set": run.evaluated_on, "images": len(run.test_set)}, "config": run.config.to_dict()}
    return test_once(_evaluated(run), data, mean=run.mean, std=run.std, device=run.device, amp=run.config.amp,
                     parallel=run.parallel, out=out, facts=facts, log=log)


def _save(run: _Run, out: Path) -> None:
    """``last.pt`` (everything to resume exactly; tensors and plain data only) and ``history.json``; every
    process takes part (the state may be sharded), the main one writes."""
    model, optimizer = run.parallel.state_dicts(run.model, run.optimizer)
    partial = {"partial": run.partial} if run.partial else {}  # with the loader's state at the epoch's start
    ranks = run.parallel.gather({"rng": rng_state(), **partial})
    if not run.parallel.is_main:
        return
    loader = run.loader_start if run.partial else run.train_loader.state_dict()
    save_checkpoint(out / "last.pt", model=model, optimizer=optimizer, **({"ranks": ranks} if ranks else {}),
                    scheduler=run.scheduler.state_dict(), scaler=run.scaler.state_dict(), **partial,
                    loader=loader, rng=rng_state(), epoch=run.epoch, step=run.step,
                    history=run.history, config=run.config.to_dict(), mean=run.mean, std=run.std,
                    classes=list(run.train_set.classes),
                    **({"average": run.average.state_dict()} if run.average is not None else {}))
    summary = {"config": run.config.to_dict(), "classes": list(run.train_set.classes), "mean": run.mean,
               "std": run.std, "evaluated_on": run.evaluated_on, "history": run.history}
    atomic_write(lambda tmp: tmp.write_text(json.dumps(summary, indent=1)), out / "history.json")


# --------------------------------------------------------------------------- fit


def fit(config: TrainConfig, *, train_set: ImageSet | None = None, test_set: ImageSet | None = None,
        out_dir: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
        device: torch.device | str | None = None, stop_after_epochs: int | None = None, progress: bool = True,
        log: Callable[[str], Any] | None = print, model: nn.Module | None = None,
        loss_fn: Callable[[Any, Tensor, Tensor], Tensor] | None = None, parallel: SingleProcess | None = None,
        evaluated_on: str = "test", final_test_set: ImageSet | None = None) -> FitResult:
    """Train a :class:`VisionTransformer` with ``config`` and return it with its history.

    Args:
        model: train this module instead of ``VisionTransformer(config.model)`` (a CNN, a hybrid, a
            student with a distillation head); ``config.model.num_classes`` must still match the data.
            Its output may be a tuple in training mode; accuracy is read from the first element.
        loss_fn: ``loss_fn(output, targets, images) -> loss`` replaces the label-smoothed cross-entropy
            (``images`` are the augmented inputs, e.g. for a distillation teacher).
        train_set, test_set: decoded data (default: CIFAR-10 from ``VIT_DATA_DIR``); test_set: every epoch.
        evaluated_on: what ``test_set`` is, "test" or "validation": in every history record and log line.
        final_test_set: read once after the schedule's last epoch (:func:`.evaluation.test_once`, test.json).
        out_dir: where ``last.pt`` (atomic, every epoch), ``history.json`` and ``test.json`` go; ``None``: nowhere.
            A folder that already holds a run is refused unless ``resume`` or ``overwrite``.
        resume: continue from ``out_dir/last.pt``, exactly (inside an epoch that ``max_steps`` stopped, too);
            refused if that run's config, training data (normalisation, classes) or number of processes differs.
        overwrite: delete the run in ``out_dir`` and start over.
        stop_after_epochs: end this call after that many epochs (the schedule still spans
            ``config.epochs``); a later ``resume=True`` call continues exactly.
        progress: show a tqdm progress bar per epoch.
        log: called with one line per epoch (``None``: silent).
        parallel: the processes this run shares (default: this one alone); chapter 11's
            ``Distributed`` runs it on many, with progress, log and files on the main one only.
    """
    _check_arguments(resume, out_dir, evaluated_on, test_set)
    parallel = parallel or SingleProcess()
    parallel.check(config)
    main = parallel.is_main  # the others neither prepare nor write the folder, show nor log
    out = None if out_dir is None else prepare_out_dir(out_dir, resume=resume, overwrite=overwrite) if main \
        else Path(out_dir)
    log, progress = (log, progress) if main else (None, False)
    device = torch.device(device) if device is not None else pick_device()
    train_set, test_set, final_test_set = _training_data(config, train_set, test_set, final_test_set)
    run = _start(config, train_set, test_set, device, model, out, resume, parallel, evaluated_on)
    if out is not None and main:
        check_room(out, checkpoint_bytes(run.model), replaces=run.checkpoint)
    if resume and log:
        inside = f", inside epoch {run.epoch + 1} at step {run.step}" if run.partial else ""
        log(f"resumed from {run.checkpoint} after epoch {run.epoch}{inside}")
    end = config.epochs if stop_after_epochs is None else min(config.epochs, run.epoch + stop_after_epochs)
    while run.epoch < end and not _steps_done(run):
        train = _train_one_epoch(run, loss_fn, progress)
        t0 = time.perf_counter()
        test = evaluate_shards(_evaluated(run), run.test_loader, device=device, amp=config.amp, parallel=parallel)
        _record(run, train, test, time.perf_counter() - t0, log)
        if run.epoch == run.phases[run.index].end_epoch and run.index + 1 < len(run.phases):
            _enter_phase(run, run.index + 1)
            if log:
                log(f"progressive resizing: the model moves from {run.phases[run.index - 1].image_size} to "
                    f"{run.phases[run.index].image_size} px; a new warmup + cosine to lr "
                    f"{run.phases[run.index].lr:g} starts")
        if out is not None:
            _save(run, out)
    final = _final_test(run, final_test_set, out, log)
    return FitResult(_evaluated(run), run.history, run.checkpoint, config, run.model, final)
