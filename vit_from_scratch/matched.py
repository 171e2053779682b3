"""Chapter 10: comparing architectures at matched compute, by the book's evidence rules.

Every model gets the same short search over its peak learning rate, judged on validation images with
one seed; the chosen rate is then trained with more seeds, and each final model is scored once on
test images. Every run records its optimiser steps, the images it saw, its accuracy on the clean
(un-augmented) training images and its wall time. Differences are judged by
:func:`~vit_from_scratch.learning_curve.compare_seeds` and written in percentage *points*. Training
steps are timed in alternating rounds (:func:`~vit_from_scratch.efficiency.interleaved_benchmark`),
so a slow moment of the machine hits every model alike and the rounds' spread is reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageSet, channel_stats
from .efficiency import interleaved_benchmark
from .learning_curve import compare_seeds
from .loaders import make_loader
from .recipe import TrainConfig
from .runtime import seed_everything
from .training import evaluate, fit

__all__ = ["Run", "accuracy_on", "train_run", "matched_comparison", "difference_sentence",
           "step_times", "StepTime"]


@dataclass
class Run:
    """One training run of one model: what it got (steps, images) and what it scored."""

    name: str
    lr: float
    seed: int
    history: list[dict]
    steps: int  # optimiser steps
    images_seen: int  # steps x batch size
    wall_s: float  # training and per-epoch validation, seconds
    val_accuracy: float  # after the last epoch
    train_accuracy: float  # on the clean (un-augmented) training images, after training
    test_accuracy: float | None = None  # scored once, for the chosen learning rate only
    model: nn.Module | None = field(default=None, repr=False)


def accuracy_on(model: nn.Module, data: ImageSet, *, train_set: ImageSet,
                device: torch.device | str = "cpu", batch_size: int = 256) -> float:
    """Accuracy of ``model`` on ``data``, normalised as ``fit`` normalises: by ``train_set``'s channel
    statistics, with no augmentation."""
    mean, std = channel_stats(train_set.images)
    loader = make_loader(data, batch_size, train=False, mean=mean, std=std, device=device)
    return evaluate(model, loader, device=device)["accuracy"]


def train_run(name: str, build: Callable[[], nn.Module], config: TrainConfig, *, lr: float, seed: int,
              train_set: ImageSet, val_set: ImageSet, device: torch.device | str = "cpu") -> Run:
    """Seed everything, build the model, train it on all of ``train_set`` with ``config`` at peak ``lr``,
    scored on ``val_set`` after every epoch and on the clean training images at the end."""
    if config.low_res_epochs:
        raise ValueError("the models compared here train at one resolution; set low_res_epochs=0")
    seed_everything(seed)
    model = build()
    run_config = replace(config, lr=lr, full_res_lr=None, seed=seed, train_subset=None, test_subset=None)
    t0 = time.perf_counter()
    result = fit(run_config, train_set=train_set, test_set=val_set, device=device, model=model,
                 progress=False, log=None, evaluated_on="validation")
    wall = time.perf_counter() - t0
    history = result.history
    steps = history[-1]["step"]
    return Run(name, lr, seed, history, steps, steps * config.batch_size, wall, history[-1]["test_accuracy"],
               accuracy_on(result.model, train_set, train_set=train_set, device=device), model=result.model)


def _chosen(search: Mapping[float, Run]) -> Run:
    """The run with the best validation accuracy; a tie goes to the smaller learning rate."""
    return max(sorted(search.values(), key=lambda r: r.lr), key=lambda r: r.val_accuracy)


def matched_comparison(builders: Mapping[str, Callable[[], nn.Module]], config: TrainConfig, *,
                       lrs: Sequence[float], seeds: Sequence[int], train_set: ImageSet, val_set: ImageSet,
                       test_set: ImageSet, device: torch.device | str = "cpu",
                       lr_from: Mapping[str, str] | None = None, search_seed: int | None = None,
                       log: Callable[[str], object] | None = print) -> tuple[dict, dict]:
    """Search each model's learning rate on validation (seed ``search_seed``), train the chosen rate with
    every seed of ``seeds``, and score every final run once on ``test_set``.

    The final runs are fresh: none of them is a search run. A search run is the best of several on
    validation, so reusing it would hand a searched model one selected draw that a model taking its rate
    by ``lr_from`` does not get. ``search_seed`` defaults to one more than the largest seed.

    ``lr_from`` maps an ablation to the model whose chosen rate it reuses (e.g. unshifted windows take
    the shifted Swin's), so the ablation changes one thing only; it must come after that model.
    Returns ``(search, runs)``: ``{name: {lr: Run}}`` (``{}`` for a model that reuses a rate) and
    ``{name: [Run per seed]}`` (models dropped, test accuracy filled in).
    """
    lr_from = dict(lr_from or {})
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"give at least two different seeds (the comparison needs a spread), got {tuple(seeds)}")
    if not lrs:
        raise ValueError("give at least one learning rate to search")
    search_seed = max(seeds) + 1 if search_seed is None else search_seed
    if search_seed in seeds:
        raise ValueError(f"search_seed={search_seed} is one of the final seeds {tuple(seeds)}: the final runs "
                         "must not include the search's selected run; pick another search seed")
    names = list(builders)
    for name, source in lr_from.items():
        if name not in builders or source not in builders or names.index(source) > names.index(name):
            raise ValueError(f"lr_from[{name!r}] = {source!r}: both must be models in builders, "
                             f"and {source!r} must come before {name!r}")
    search, runs = {}, {}
    for name, build in builders.items():
        def one(lr: float, seed: int) -> Run:
            run = train_run(name, build, config, lr=lr, seed=seed, train_set=train_set, val_set=val_set,
                            device=device)
            if log:
                log(f"{name:>24} | lr {lr:g} | seed {seed} | clean training accuracy {run.train_accuracy:.1%} "
                    f"| validation {run.val_accuracy:.1%} | {run.wall_s:.0f} s")
            return run

        if name in lr_from:
            search[name], lr = {}, runs[lr_from[name]][0].lr
        else:
            search[name] = {lr: one(lr, search_seed) for lr in lrs}
            lr = _chosen(search[name]).lr
        runs[name] = [one(lr, seed) for seed in seeds]
        for run in runs[name]:  # the test set, once per final run
            run.test_accuracy = accuracy_on(run.model, test_set, train_set=train_set, device=device)
        for run in [*search[name].values(), *runs[name]]:
            run.model = None  # free the memory; the numbers stay
    return search, runs


def difference_sentence(a: str, b: str, acc_a: Sequence[float], acc_b: Sequence[float], *,
                        n_images: int) -> str:
    """One sentence on arm ``a`` against arm ``b`` from :func:`compare_seeds`, in percentage points."""
    c = compare_seeds(acc_a, acc_b, n_images=n_images)
    both = (f"{c.mean_a:.1%} against {c.mean_b:.1%}, a difference of {100 * c.difference:+.1f} points "
            f"where the noise bar is {100 * c.noise:.1f} points")
    if c.verdict == "within noise":
        return f"{a} and {b} are within noise ({both})"
    higher, lower = (a, b) if c.verdict == "higher" else (b, a)
    return f"{higher} is higher than {lower} by {100 * abs(c.difference):.1f} points ({a} {both})"


@dataclass(frozen=True)
class StepTime:
    """Seconds per training step of one model: the median over rounds of each round's median, the
    rounds' range, and the ratio to the reference model taken within each round (median and range)."""

    median: float
    low: float
    high: float
    ratio: float
    ratio_low: float
    ratio_high: float


def step_times(builders: Mapping[str, Callable[[], nn.Module]], *, batch_size: int, rounds: int = 5,
               repeats: int = 3, image_size: int = 32, num_classes: int = 10,
               device: torch.device | str = "cpu") -> dict[str, StepTime]:
    """Time one AdamW training step (forward, backward, update) of every model, in alternating rounds.

    The first model is the reference of the ratios. Random images: the arithmetic, not the data,
    sets the time.
    """
    if not builders:
        raise ValueError("give at least one model to time")
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)

    def step_of(model: nn.Module) -> Callable[[], None]:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    fns = {name: step_of(build().to(device).train()) for name, build in builders.items()}
    timings = interleaved_benchmark(fns, rounds=rounds, repeats=repeats, warmup=1, device=device)
    reference = [t.median for t in timings[next(iter(builders))]]
    out = {}
    for name, per_round in timings.items():
        medians = [t.median for t in per_round]
        ratios = [m / r for m, r in zip(medians, reference)]
        out[name] = StepTime(statistics.median(medians), min(medians), max(medians),
                             statistics.median(ratios), min(ratios), max(ratios))
    return out
