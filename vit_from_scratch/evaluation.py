"""Chapter 6: evaluating a model. :func:`evaluate` gives the mean loss and accuracy over a loader;
:func:`evaluate_shards` sums them over the processes of a run. A run evaluates one set after every epoch,
the test set or a validation split (``EVALUATED_ON``), and :func:`test_once` reads the test set once, when a
schedule has finished, into the run's ``test.json``: choose on validation, report the test set once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import TEST_FILE, atomic_write
from .data import VALIDATION_SEED, VALIDATION_SIZE, ImageSet, validation_split
from .loaders import make_loader
from .parallel import SingleProcess
from .recipe import autocast_dtype

__all__ = ["EVALUATED_ON", "LOG_NAMES", "standard_validation_split", "check_evaluated_on", "refuse_other_set",
           "evaluate", "evaluate_shards", "test_once"]

EVALUATED_ON = ("test", "validation")  # what a run evaluates after every epoch (fit's evaluated_on)
LOG_NAMES = {"test": "test", "validation": "val"}  # how its per-epoch log line names that set


def standard_validation_split(data: ImageSet) -> tuple[ImageSet, ImageSet]:
    """``(train, validation)`` as the command line splits ``data``, the training images: the book's split,
    :data:`~vit_from_scratch.data.VALIDATION_SIZE` images with seed ``VALIDATION_SEED`` (CIFAR-10's 45,000 +
    5,000). A set of fewer than 10 x VALIDATION_SIZE images (a quick run's, a test's) holds out a tenth of it
    instead, so that the size changes continuously and CIFAR-10 gets exactly the chapters' split."""
    if len(data) < 10:
        raise ValueError(f"{len(data)} training images are too few to hold a tenth out for validation; use at "
                         "least 10, or evaluate on the test set instead (--monitor test)")
    return validation_split(data, min(VALIDATION_SIZE, round(len(data) / 10)), seed=VALIDATION_SEED)


def check_evaluated_on(evaluated_on: str, test_set: ImageSet | None) -> None:
    """``evaluated_on`` names a known set, and a validation set is given, never loaded (the test set would be)."""
    if evaluated_on not in EVALUATED_ON:
        raise ValueError(f"evaluated_on must be one of {EVALUATED_ON}, got {evaluated_on!r}")
    if evaluated_on == "validation" and test_set is None:
        raise ValueError("evaluated_on='validation' needs the validation set as test_set (e.g. the second part of "
                         "vit_from_scratch.data.validation_split(train_set)); without it the test set is loaded")


def refuse_other_set(path: Path, history: list[dict], evaluated_on: str) -> None:
    """A resume evaluates the set its run evaluated (a record from before records named their set was a test one)."""
    measured = sorted({r.get("evaluated_on", "test") for r in history} - {evaluated_on})
    if measured:
        raise ValueError(f"{path} was evaluated on the {measured[0]} set after every epoch, this call evaluates on "
                         f"the {evaluated_on} set; resume it with evaluated_on={measured[0]!r} (the command line: "
                         f"--monitor {measured[0]}), or start over")


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
        count += (labels >= 0).sum().item()  # labels < 0 pad a shard (cross_entropy ignores -100)
        if return_predictions:
            preds.append(pred.cpu())
            labels_all.append(labels.cpu())
    model.train(was_training)
    result = {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1), "count": count,
              "loss_sum": loss_sum, "correct": correct}
    if return_predictions:
        result["predictions"], result["labels"] = torch.cat(preds), torch.cat(labels_all)
    return result


def evaluate_shards(model: nn.Module, loader, *, device: torch.device, amp: str, parallel: SingleProcess) -> dict:
    """Loss, accuracy and image count over every process's shard (``loader`` holds this one's), each image once."""
    numbers = evaluate(model, loader, device=device, amp=amp)
    loss_sum, correct, count = parallel.sum([numbers["loss_sum"], numbers["correct"], numbers["count"]])
    return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1), "count": int(count)}


def test_once(model: nn.Module, test_set: ImageSet, *, mean: tuple[float, ...], std: tuple[float, ...],
              device: torch.device, amp: str, parallel: SingleProcess, out: Path | None, facts: dict,
              log: Callable[[str], Any] | None = None) -> dict | None:
    """A finished schedule's test numbers, with ``facts`` (its ``epoch`` and ``step``, what it trained on).

    The test set (at the model's image size) is evaluated once and the numbers written to ``out/test.json``;
    when that file already holds this run's numbers (the same epoch and step: a resume of the finished run),
    they are returned and the test set is not read again. ``None`` on processes other than the main one.
    """
    path = None if out is None else out / TEST_FILE
    saved = _saved(path, facts) if parallel.is_main else None
    if parallel.sum([float(saved is not None)])[0]:  # the main process decides for all
        if log and saved is not None:
            log(f"test acc {saved['accuracy']:.4f} on {saved['images']} images, read once when this schedule "
                f"finished (from {path}); the test set is not read again")
        return saved
    t0 = time.perf_counter()
    loader = make_loader(parallel.eval_shard(test_set), 500, train=False, mean=mean, std=std, device=device)
    numbers = evaluate_shards(model, loader, device=device, amp=amp, parallel=parallel)
    if not parallel.is_main:
        return None
    result = {"evaluated_on": "test", "accuracy": numbers["accuracy"], "loss": numbers["loss"],
              "images": numbers["count"], **facts, "eval_time_s": time.perf_counter() - t0}
    if path is not None:
        atomic_write(lambda tmp: tmp.write_text(json.dumps(result, indent=1)), path)
    if log:
        log(f"test loss {result['loss']:.3f} acc {result['accuracy']:.4f} on {result['images']} images, read "
            "once, after the schedule's last epoch" + (f" (written to {path})" if path else ""))
    return result


def _saved(path: Path | None, facts: dict) -> dict | None:
    """``test.json`` if it holds the numbers of the run ``facts`` describe (its epoch and step), else ``None``."""
    if path is None or not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: evaluated again and rewritten
    return saved if all(saved.get(k) == facts[k] for k in ("epoch", "step")) else None
