"""The data every recipe probe trains and chooses on: CIFAR-10's training images split by the package.

Probes choose the recipe, so they never see the test set. ``probe_sets("val")`` (every probe's default,
``--select-on val``) trains on 45,000 training images and evaluates on the other 5,000, the fixed, seeded,
class-stratified split of :func:`vit_from_scratch.data.validation_split` that every chapter and the command
line use (``VALIDATION_SIZE`` images, seed ``VALIDATION_SEED``, both from :mod:`vit_from_scratch.data`). Only a
final run of an already chosen recipe may ask for ``"test"`` (all 50,000 training images, the test set),
and what it reports is then a test number, read once, not a choice.
"""

from __future__ import annotations

import argparse
import json
import re

SELECT_ON = ("val", "test")


def probe_sets(select_on: str = "val", data=None):
    """``(train, evaluation set, the evaluation set's name)`` for ``select_on``; ``data`` is a
    ``(train, test)`` pair of ImageSets, loaded with ``load_cifar10()`` when not given."""
    if select_on not in SELECT_ON:
        raise ValueError(f"select_on must be one of {SELECT_ON}, got {select_on!r}: choose recipes on 'val'; "
                         "'test' is for the one final evaluation of a chosen recipe")
    from vit_from_scratch.data import VALIDATION_SEED, VALIDATION_SIZE, load_cifar10, validation_split

    train_full, test_full = data if data is not None else load_cifar10()
    if select_on == "test":
        return train_full, test_full, "test"
    train, val = validation_split(train_full, VALIDATION_SIZE, seed=VALIDATION_SEED)
    return train, val, "validation"


def named_history(history: list[dict], name: str) -> list[dict]:
    """``fit``'s history with its evaluation columns (``test_loss``, ``test_accuracy``) named after the set
    they were measured on, so a validation number is never stored or printed as a test number."""
    renamed = []
    for record in history:
        renamed.append({(f"{name}_{key[5:]}" if key.startswith("test_") else key): value
                        for key, value in record.items()})
    return renamed


def add_select_on(parser: argparse.ArgumentParser) -> None:
    """The ``--select-on`` option, ``val`` by default."""
    parser.add_argument("--select-on", choices=SELECT_ON, default="val",
                        help="evaluate on the 5,000-image validation split (default; for choosing) or, once, "
                             "on the test set after training on all 50,000 images (for a chosen recipe only)")


# fit(..., evaluated_on="validation") logs "val loss ... acc ..." for each epoch
PROBE_LINE = re.compile(r"^(\{.*\}) epoch\s+(\d+)/(\d+) \| train loss ([\d.]+) acc ([\d.]+) \| "
                        r"val loss ([\d.]+) acc ([\d.]+)")


def histories_from_log(text: str) -> list[dict]:
    """The per-epoch validation histories in a probe log (``recipe_probe.py``'s children print one line
    per epoch on stderr), one entry per run, in order of first appearance. A log cut short by a time
    limit still holds every epoch that finished, so runs stopped early can be compared at equal epochs."""
    runs: dict[str, dict] = {}
    for line in text.splitlines():
        match = PROBE_LINE.match(line)
        if match is None:
            continue
        run, epoch, epochs, train_loss, train_acc, val_loss, val_acc = match.groups()
        overrides = json.loads(run)
        seed = overrides.pop("seed", 0)
        entry = runs.setdefault(run, {"overrides": overrides, "seed": seed, "epochs": int(epochs),
                                      "history": []})
        entry["history"].append({"epoch": int(epoch), "train_loss": float(train_loss),
                                 "train_accuracy": float(train_acc), "validation_loss": float(val_loss),
                                 "validation_accuracy": float(val_acc)})
    return list(runs.values())
