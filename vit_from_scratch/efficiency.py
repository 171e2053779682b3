"""Chapter 8: measuring what makes a ViT cheap to train — time, activation memory, resolution.

Letters: B batch, C channels, H/W image side, N tokens, D width, h heads.

Timing and memory are measured, never assumed: :func:`benchmark` times a function (synchronising a GPU),
:class:`SavedTensorMemory` adds up what autograd keeps for the backward pass (the activation memory that
gradient checkpointing saves, Chen et al., 2016), :class:`TensorMemoryTracker` follows every tensor an
operation creates and reports the peak of those alive at once (on a CPU, where there is no allocator
statistic), and :func:`peak_memory` picks CUDA's allocator statistics or the tracker. Progressive resizing
(Touvron et al., 2019; Tan & Le, 2021) needs :func:`resize_images` and :func:`to_resolution`.
"""

from __future__ import annotations

import statistics
import time
import warnings
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .data import ImageSet
from .model import VisionTransformer
from .positions import resize_pos_embed

__all__ = ["Timing", "benchmark", "SavedTensorMemory", "TensorMemoryTracker", "peak_memory",
           "attention_matrix_bytes", "autocast_works", "resize_images", "to_resolution"]


# --------------------------------------------------------------------------- time


@dataclass
class Timing:
    """Wall-clock seconds of repeated calls; ``median`` is the number to report, ``best`` the least noisy."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    def __str__(self) -> str:
        return f"{1e3 * self.median:.1f} ms (median of {len(self.seconds)}, best {1e3 * self.best:.1f} ms)"


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1,
              device: torch.device | str | None = None) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then time ``repeats`` calls one by one.

    The first calls pay for allocations, kernel selection and compilation, so they are left out. On a
    GPU, work is queued asynchronously: pass ``device`` and the clock is read only after
    ``torch.cuda.synchronize``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    _sync(device)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        seconds.append(time.perf_counter() - t0)
    return Timing(seconds)


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


# --------------------------------------------------------------------------- resolution


def resize_images(data: ImageSet, size: int, *, chunk: int = 4096) -> ImageSet:
    """A copy of ``data`` with every image resized to ``size x size`` (antialiased bilinear, uint8).

    Shape:
        images (n, C, H, W) -> (n, C, size, size)
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    parts = []
    for images in data.images.split(chunk):
        x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)  # (n, C, H, W) -> (n, C, size, size)
        parts.append(x.round().clamp(0, 255).to(torch.uint8))
    return ImageSet(torch.cat(parts), data.labels, data.classes, data.source + f" (resized to {size} px)")


def to_resolution(model: VisionTransformer, image_size: int, *, mode: str = "bicubic") -> VisionTransformer:
    """A new :class:`VisionTransformer` for ``image_size`` pixels carrying ``model``'s weights.

    Every weight is copied as it is, except the learned position embedding, which is interpolated to the
    new patch grid with :func:`~vit_from_scratch.positions.resize_pos_embed` (a fixed sin-cos table is
    rebuilt for the new grid). The patch size, and with it every other shape, is unchanged.
    """
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"expected a VisionTransformer, got {type(model).__name__}")
    config = replace(model.config, image_size=image_size)  # checks that patch_size divides image_size
    new = VisionTransformer(config).to(next(model.parameters()).device)
    state = model.state_dict()
    if model.config.pos_embed == "learned":
        state["pos_embed"] = resize_pos_embed(state["pos_embed"], config.grid_size,
                                              old_grid=model.config.grid_size,
                                              num_prefix_tokens=model.num_prefix_tokens, mode=mode)
    else:
        state["pos_embed"] = new.pos_embed
    new.load_state_dict(state)
    new.set_grad_checkpointing(model.grad_checkpointing)
    return new
