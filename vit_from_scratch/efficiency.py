"""Chapter 8: measuring what makes a ViT cheap to train — time, activation memory, resolution.

Letters: B batch, C channels, H/W image side, N tokens, D width, nh heads.

Timing and memory are measured, never assumed: :func:`~vit_from_scratch.runtime.benchmark` (a shared
helper, since chapters 3, 6 and 10 time things too) times a function, synchronising a GPU;
:class:`SavedTensorMemory` adds up what autograd keeps for the backward pass (the activation memory that
gradient checkpointing saves, Chen et al., 2016), :class:`TensorMemoryTracker` follows every tensor an
operation creates and reports the peak of those alive at once (on a CPU, where there is no allocator
statistic), and :func:`peak_memory` picks CUDA's allocator statistics or the tracker. Progressive resizing
(Touvron et al., 2019; Tan & Le, 2021) is measured with :func:`~vit_from_scratch.data.resize_images` and
:func:`~vit_from_scratch.model.to_resolution`, which chapter 6's trainer uses and which live with the data
and the model.

Three small measures turn those numbers into sentences that can be wrong: :func:`growth_exponent` fits
how a cost grows with the number of tokens (memory and time of attention need not grow alike),
:func:`running_mean` and :func:`step_noise` say whether a loss curve fell by more than its noise (so a
comparison of two precisions' curves can fail), and :func:`interleaved_benchmark` times several
settings in alternating rounds, so a slow moment of a shared machine hits all of them and the spread
of their ratio across rounds is a measured noise bar. :func:`round_ratios` and :func:`block_ratios` turn
rounds (or blocks of steps trained in lockstep) into one ratio each, :func:`median_interval` gives their
median with an interval that assumes nothing about the shape of the noise, and :func:`speed_verdict` and
:func:`growth_words` are the one rule that turns such an interval into words.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .runtime import Timing, benchmark


__all__ = ["SavedTensorMemory", "TensorMemoryTracker", "peak_memory",
           "attention_matrix_bytes", "autocast_works", "growth_exponent", "running_mean",
           "step_noise", "curve_gaps", "interleaved_benchmark", "round_ratios", "block_ratios", "Interval",
           "median_interval", "speed_verdict", "growth_words"]


# --------------------------------------------------------------------------- memory


def _storage_key(t: Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


class SavedTensorMemory(torch.autograd.graph.saved_tensors_hooks):
    """Bytes that autograd saves for the backward pass while the ``with`` block runs.

    Every tensor an operation saves for its gradient passes through a pack hook; each distinct storage
    is counted once (``q``, ``k`` and ``v`` sliced from one ``qkv`` tensor share one). Tensors in
    ``exclude`` (pass ``model.parameters()``) are not activations and are not counted. Under gradient
    checkpointing the blocks save nothing here but their inputs: that is the saving it buys.

    Example::

        with SavedTensorMemory(exclude=model.parameters()) as saved:
            loss = model(x).sum()
        saved.bytes  # activation memory kept for loss.backward()
    """

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        self.bytes = 0
        self.count = 0
        self._seen: set[tuple[str, int]] = {_storage_key(t) for t in exclude}

        def pack(t: Tensor) -> Tensor:
            key = _storage_key(t)
            if key not in self._seen and t.untyped_storage().nbytes() > 0:
                self._seen.add(key)  # kept alive by the graph until backward, so the key cannot be reused
                self.bytes += t.untyped_storage().nbytes()
                self.count += 1
            return t

        super().__init__(pack, lambda t: t)

    def __enter__(self) -> SavedTensorMemory:
        super().__enter__()
        return self


class TensorMemoryTracker(TorchDispatchMode):
    """Peak bytes of tensors created inside the ``with`` block and alive at the same time.

    A ``TorchDispatchMode`` sees every operation's outputs; each new storage is added when it is
    created and subtracted when it is freed (a weak-reference finaliser). Outputs that share a storage
    with an input (views, in-place operations) are not new. What existed before the block (weights,
    inputs) is not counted, so ``peak`` is the memory a forward and backward pass adds on top of them:
    activations, gradients, temporaries. On a GPU, ``torch.cuda.max_memory_allocated`` measures the
    same thing from the allocator (see :func:`peak_memory`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[tuple[str, int], int] = {}

    def _free(self, key: tuple[str, int]) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key, nbytes = _storage_key(t), storage.nbytes()
            if key in inputs or key in self._live or nbytes == 0:
                continue
            self._live[key] = nbytes
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key)
        return out


def peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> int:
    """Peak bytes that ``fn()`` allocates on top of what already exists.

    CUDA: the caching allocator's own statistic (``max_memory_allocated`` after
    ``reset_peak_memory_stats``). Elsewhere: :class:`TensorMemoryTracker`. (A process's peak RSS
    cannot be reset and includes the allocator's caching, so it is not used.)
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with TensorMemoryTracker() as tracker:
        fn()
    return tracker.peak


def attention_matrix_bytes(batch: int, heads: int, tokens: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of one ``(B, h, N, N)`` attention matrix: ``B·h·N²`` elements.

    The explicit softmax path materialises a few of these (the scores, the weights, and their gradients),
    so its memory is O(N²) per head; flash-style kernels (Dao et al., 2022) never store one.
    """
    if min(batch, heads, tokens) < 1:
        raise ValueError(f"batch, heads and tokens must be positive, got {batch}, {heads}, {tokens}")
    return batch * heads * tokens * tokens * torch.empty((), dtype=dtype).element_size()


def autocast_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``torch.autocast(device_type, dtype)`` runs a matrix product in ``dtype`` on this machine."""
    try:
        x = torch.randn(8, 8, device=device_type)
        with warnings.catch_warnings():  # an unsupported dtype only warns and disables autocast
            warnings.simplefilter("ignore")
            with torch.autocast(device_type, dtype=dtype):
                y = x @ x
        return y.dtype == dtype
    except (RuntimeError, AssertionError):
        return False


# --------------------------------------------------------------------------- turning measurements into claims


def growth_exponent(sizes: Iterable[float], costs: Iterable[float]) -> float:
    """The exponent ``a`` of the power law ``cost ≈ c · size^a`` that fits the measurements best.

    A least-squares line through ``(log size, log cost)``: 1 means linear growth, 2 quadratic. Fixed
    overheads flatten the small sizes, so pass the largest ones when the asymptotic growth is wanted.
    """
    x, y = np.log(np.asarray(list(sizes), float)), np.asarray(list(costs), float)
    if len(x) < 2 or len(x) != len(y):
        raise ValueError(f"need at least two (size, cost) pairs of equal length, got {len(x)} and {len(y)}")
    if (y <= 0).any() or np.ptp(x) == 0:
        raise ValueError("costs must be positive and the sizes must not all be equal")
    return float(np.polyfit(x, np.log(y), 1)[0])


def running_mean(values: Iterable[float], window: int) -> np.ndarray:
    """Means of every ``window`` consecutive values (``len(values) - window + 1`` of them)."""
    v = np.asarray(list(values), float)
    if not 1 <= window <= len(v):
        raise ValueError(f"window must be between 1 and the number of values ({len(v)}), got {window}")
    return np.convolve(v, np.ones(window) / window, mode="valid")


def step_noise(values: Iterable[float]) -> float:
    """The standard deviation of one value around the curve's trend, from step-to-step differences.

    A trend barely changes between neighbouring steps, so ``v[t+1] - v[t]`` is the difference of two
    independent noises, whose variance is twice one noise's: the estimate is ``std(diff) / √2``. Unlike
    the spread around a fitted curve, it needs no model of the trend.
    """
    v = np.asarray(list(values), float)
    if len(v) < 3:
        raise ValueError(f"need at least 3 values, got {len(v)}")
    return float(np.std(np.diff(v)) / np.sqrt(2))


@dataclass(frozen=True)
class CurveGaps:
    """How far loss curves strayed from a reference curve trained on the same batches.

    ``gaps`` holds, per curve, the largest distance between its running mean and the reference's
    (in loss units); ``fall`` is the reference's running mean, first window minus last, and
    ``noise`` its :func:`step_noise`.
    """

    gaps: dict[str, float]
    fall: float
    noise: float

    def shares(self) -> dict[str, float]:
        """Each gap as a fraction of the reference's fall."""
        return {name: gap / self.fall for name, gap in self.gaps.items()}


def curve_gaps(curves: dict[str, Iterable[float]], reference: str, window: int) -> CurveGaps:
    """Compare loss curves step by step with ``curves[reference]``, through running means.

    All curves must have the same length: they are meant to be trained in lockstep, on the same
    batches, so that step ``t`` of one faces step ``t`` of the other.
    """
    if reference not in curves:
        raise ValueError(f"reference {reference!r} is not among the curves {sorted(curves)}")
    values = {name: np.asarray(list(v), float) for name, v in curves.items()}
    lengths = {name: len(v) for name, v in values.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"the curves must have the same number of steps, got {lengths}")
    ref = running_mean(values[reference], window)
    gaps = {name: float(np.abs(running_mean(v, window) - ref).max())
            for name, v in values.items() if name != reference}
    return CurveGaps(gaps, float(ref[0] - ref[-1]), step_noise(values[reference]))


def interleaved_benchmark(fns: dict[str, Callable[[], Any]], *, rounds: int = 5, repeats: int = 5, warmup: int = 1,
                          device: torch.device | str | None = None) -> dict[str, list[Timing]]:
    """Time every function in ``fns`` once per round, in turn, for ``rounds`` rounds.

    Each entry of the result is one :class:`~vit_from_scratch.runtime.Timing` per round. A slow moment of
    the machine hits the settings of the same round alike, so the ratio of two settings' medians within
    a round is steadier than the ratio of two separate runs, and its spread across rounds is the noise
    of the comparison.
    """
    if rounds < 1:
        raise ValueError(f"need rounds >= 1, got {rounds}")
    timings: dict[str, list[Timing]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            timings[name].append(benchmark(fn, repeats=repeats, warmup=warmup, device=device))
    return timings


def round_ratios(numerator: Sequence[Timing], denominator: Sequence[Timing]) -> np.ndarray:
    """One ratio of median times per round: ``numerator[r].median / denominator[r].median``.

    With a reference's timings as ``numerator`` (two entries of :func:`interleaved_benchmark`), this is
    the other setting's speed relative to the reference in each round: above 1 means faster.
    """
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"need the same number of rounds on both sides, got {len(numerator)} and "
                         f"{len(denominator)}")
    return np.array([a.median / b.median for a, b in zip(numerator, denominator)])


def block_ratios(numerator: Iterable[float], denominator: Iterable[float], blocks: int) -> np.ndarray:
    """Ratios of median step times over ``blocks`` consecutive blocks of paired steps.

    For two runs trained in lockstep (step ``t`` of one, then step ``t`` of the other), a block of
    neighbouring steps is a round: a slow moment of the machine hits both runs in it alike.
    """
    a, b = np.asarray(list(numerator), float), np.asarray(list(denominator), float)
    if len(a) != len(b) or not 1 <= blocks <= len(a):
        raise ValueError(f"need paired step times of equal length and 1 <= blocks <= steps, got "
                         f"{len(a)} and {len(b)} steps, {blocks} blocks")
    return np.array([np.median(x) / np.median(y)
                     for x, y in zip(np.array_split(a, blocks), np.array_split(b, blocks))])


@dataclass(frozen=True)
class Interval:
    """The median of ``n`` measurements and an interval that holds the true median with ``coverage``."""

    median: float
    low: float
    high: float
    coverage: float
    n: int

    def side(self, threshold: float, min_coverage: float = 0.9) -> str:
        """``"above"`` or ``"below"`` when the whole interval lies on one side of ``threshold``, else
        ``"includes"``: the one rule by which this chapter calls a measured difference real.

        An interval that covers the median with less than ``min_coverage`` (fewer than five values
        at the default) is too short a record to call a side: it "includes" any threshold.
        """
        if self.coverage < min_coverage:
            return "includes"
        if self.low > threshold:
            return "above"
        if self.high < threshold:
            return "below"
        return "includes"

    def __str__(self) -> str:
        return f"{self.median:.2f} ({self.coverage:.0%} interval {self.low:.2f}-{self.high:.2f}, n = {self.n})"


def median_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """The median of ``values`` and the narrowest order-statistic interval with ``confidence`` or more.

    If the values are independent draws, the ``k``-th smallest and ``k``-th largest enclose the true
    median unless ``k`` or more draws fall on one side of it: probability ``2 P(Bin(n, 1/2) < k)``,
    whatever the shape of the noise. ``k`` is the largest with coverage ``>= confidence``; when even
    the smallest and largest value (``k = 1``, coverage ``1 - 2^(1-n)``) fall short, that range is
    returned with its own, lower, coverage (six values reach 95%).
    """
    v = np.sort(np.asarray(list(values), float))
    n = len(v)
    if n < 1 or not np.isfinite(v).all():
        raise ValueError(f"need at least one finite value, got {n} values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie between 0 and 1, got {confidence}")

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return Interval(float(np.median(v)), float(v[k - 1]), float(v[n - k]), max(coverage(k), 0.0), n)


def speed_verdict(speed: Interval) -> str:
    """Words for a speed ratio (the reference's time over this setting's): ``"faster than"`` only if the
    whole interval lies above 1, ``"slower than"`` only if below, else ``"within timing noise of"``
    (also when too few rounds make the interval's coverage short of 90%, see :meth:`Interval.side`)."""
    return {"above": "faster than", "below": "slower than",
            "includes": "within timing noise of"}[speed.side(1.0)]


_GROWTH = [(1.3, "about linearly"), (1.7, "faster than linearly but slower than quadratically"),
           (2.3, "about quadratically"), (math.inf, "faster than quadratically")]


def growth_words(exponent: Interval) -> str:
    """Words for a fitted growth exponent (1 linear, 2 quadratic) that the whole interval supports.

    Bands: below 1.3 about linear, 1.3-1.7 in between, 1.7-2.3 about quadratic, above that faster. An
    interval inside one band gets its words; one that spans bands but lies above 1.7 is "about
    quadratically or faster", above 1.3 "faster than linearly"; otherwise the words say that the
    measurements do not settle the kind of growth.
    """
    def band(a: float) -> str:
        return next(words for limit, words in _GROWTH if a < limit)

    low, high = band(exponent.low), band(exponent.high)
    if low == high:
        return low
    if exponent.low >= _GROWTH[1][0]:
        return "about quadratically or faster"
    if exponent.low >= _GROWTH[0][0]:
        return "faster than linearly"
    return "at a rate these measurements do not settle"
