"""Chapter 6: batches. Augmentation on whole batches, and loaders whose every epoch can be replayed.

The in-memory :class:`~vit_from_scratch.data.ImageSet` is augmented batch by batch on its own device
(random crop and flip drawn per image in one gather), as the fastest CIFAR-10 trainers do. Per-image
policies (TrivialAugment, RandAugment) run in DataLoader worker processes on a CPU. Every epoch's order
and random draws come from (run seed, epoch), so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import ImageSet, normalize
from .policies import trivial_augment
from .runtime import to_device

__all__ = ["Augment", "BatchLoader", "WorkerLoader", "make_loader", "mixup_cutmix", "AUGMENT_ON"]

AUGMENT_ON = ("auto", "device", "workers")  # where a training policy runs (make_loader)


class Augment:
    """Batched augmentation of uint8 images on their own device: random crop with zero padding and
    horizontal flip, drawn independently for every image, then normalisation to float.

    ``policy`` ("trivialaugment" or "randaugment") adds torchvision's per-image policy, applied
    image by image when called (use :class:`WorkerLoader` on a CPU to spread that over worker processes).
    :meth:`batch`, which :class:`BatchLoader` calls (the GPU path), runs TrivialAugment on the whole batch
    instead (:func:`~vit_from_scratch.policies.trivial_augment`: the same operations and strengths, no
    Python loop over the images).

    ``erasing`` > 0 adds random erasing (Zhong et al. 2020) after normalisation: with that probability per
    image, a rectangle of 2% to 1/3 of the image, aspect ratio 0.3 to 3.3, is replaced by standard normal
    noise (timm's and DeiT's "pixel" mode), all images of a batch at once.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, train: bool, padding: int = 4,
                 flip: bool = True, policy: str | None = None, erasing: float = 0.0) -> None:
        if not 0 <= erasing <= 1:
            raise ValueError(f"erasing is a probability per image, from 0 (off) to 1, got {erasing}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.train, self.padding, self.flip = train, padding, flip
        self.erasing = erasing if train else 0.0
        self.policy = _policy(policy) if train else None
        self.policy_name = policy if self.policy is not None else None

    def geometric(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Random crop (with ``padding``) and flip, per image, in one batched gather. uint8 in, uint8 out."""
        B, C, H, W = images.shape
        p = self.padding
        if p:  # drawn on the host, moved in one copy that does not stall a GPU
            dy = torch.randint(0, 2 * p + 1, (B,), generator=generator, device="cpu")
            dx = torch.randint(0, 2 * p + 1, (B,), generator=generator, device="cpu")
            dy, dx = to_device(torch.stack([dy, dx]), images.device)
            padded = F.pad(images, (p, p, p, p))  # (B, C, H+2p, W+2p), zeros outside
            rows = (dy.view(B, 1) + torch.arange(H, device=images.device)).view(B, 1, H, 1).expand(B, C, H, W + 2 * p)
            images = padded.gather(2, rows)  # (B, C, H, W+2p)
            cols = (dx.view(B, 1) + torch.arange(W, device=images.device)).view(B, 1, 1, W).expand(B, C, H, W)
            images = images.gather(3, cols)  # (B, C, H, W)
        if self.flip:
            flip = to_device(torch.rand(B, generator=generator, device="cpu") < 0.5, images.device)
            images = torch.where(flip.view(B, 1, 1, 1), images.flip(3), images)
        return images

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 (B, C, H, W) -> float32, standardised with the data set's mean and std."""
        return normalize(images, self.mean, self.std)

    def erase(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Random erasing of normalised float images (B, C, H, W), each image with probability ``erasing``.

        Every draw comes from ``generator`` on the CPU (a handful of numbers per image); the noise from a
        generator on the images' device seeded from it, so a run is reproducible on any device."""
        if not self.erasing:
            return images
        B, _, H, W = images.shape
        draw = torch.rand(5, B, generator=generator)  # erase?, area, log-aspect, top, left: one row each
        area = (0.02 + draw[1] * (1 / 3 - 0.02)) * H * W
        aspect = torch.exp(math.log(0.3) + draw[2] * (math.log(3.3) - math.log(0.3)))
        h = (area * aspect).sqrt().round().clamp(1, H).long()
        w = (area / aspect).sqrt().round().clamp(1, W).long()
        top = (draw[3] * (H - h + 1)).long()  # uniform over the positions where the rectangle fits
        left = (draw[4] * (W - w + 1)).long()
        h = torch.where(draw[0] < self.erasing, h, 0)  # an empty rectangle: this image is not erased
        top, bottom, left, right = to_device(torch.stack([top, top + h, left, left + w]), images.device).view(4, B, 1)
        rows = torch.arange(H, device=images.device).view(1, H)
        cols = torch.arange(W, device=images.device).view(1, W)
        inside_rows = (rows >= top) & (rows < bottom)  # (B, H)
        inside_cols = (cols >= left) & (cols < right)  # (B, W)
        mask = inside_rows.view(B, 1, H, 1) & inside_cols.view(B, 1, 1, W)  # (B, 1, H, W): the rectangle
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        noise_generator = torch.Generator(images.device).manual_seed(seed)
        noise = torch.randn(images.shape, generator=noise_generator, device=images.device, dtype=images.dtype)
        return torch.where(mask, noise, images)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.train:
            images = self.geometric(images, generator)
            if self.policy is not None:
                images = torch.stack([self.policy(im) for im in images])
        return self.erase(self.normalize(images), generator)

    def batch(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Like calling it, but TrivialAugment runs batched on the images' device, its draws from
        ``generator`` (the other policies still go image by image)."""
        if not (self.train and self.policy_name == "trivialaugment"):
            return self(images, generator)
        return self.erase(self.normalize(trivial_augment(self.geometric(images, generator), generator)), generator)


def _policy(name: str | None):
    if name is None or name == "none":
        return None
    from torchvision.transforms import v2

    policies = {"trivialaugment": v2.TrivialAugmentWide, "randaugment": v2.RandAugment,
                "autoaugment": v2.AutoAugment}
    if name not in policies:
        raise ValueError(f"unknown augmentation policy {name!r}; choose one of {sorted(policies)} or 'none'")
    return policies[name]()


class BatchLoader:
    """Batches straight from an in-memory :class:`ImageSet` (on any device), augmented in batches.

    Every epoch draws a new permutation from its own generator, so a run is reproducible and
    resumable: ``state_dict()`` holds the generator state.

    With ``world_size`` > 1 (chapter 11), ``batch_size`` is the global batch: every process draws the
    same permutation and takes the ``rank``-th of ``world_size`` equal slices of each batch, and crops and
    flips from its own generator, reseeded every epoch from (seed, epoch, rank), so that the order
    generator advances alike in every process (in one process it draws the crops too).

    ``repeats`` > 1 is repeated augmentation (Hoffer et al. 2020, as DeiT trains): every epoch shows
    ``len(data) / repeats`` images drawn afresh, each ``repeats`` times in a row (so in one batch, with
    its own crop, flip and policy each time); the epoch keeps its number of batches.
    """

    def __init__(self, data: ImageSet, batch_size: int, augment: Augment, *, shuffle: bool,
                 drop_last: bool = False, seed: int = 0, device: torch.device | str | None = None,
                 rank: int = 0, world_size: int = 1, repeats: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        _check_shard(batch_size, rank, world_size, drop_last)
        _check_repeats(repeats, shuffle)
        self.repeats = repeats
        self.data = data.to(device) if device is not None else data
        self.batch_size, self.augment, self.shuffle, self.drop_last = batch_size, augment, shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.data)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = to_device(_repeated(order, self.repeats), self.data.images.device)
        crops, b = self.generator, self.batch_size // self.world_size  # b: this process's share of a batch
        if self.world_size > 1:
            crops = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch, self.rank))
            self.epoch += 1
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size][self.rank * b:(self.rank + 1) * b]
            yield self.augment.batch(self.data.images[index], crops), self.data.labels[index]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), **({"epoch": self.epoch} if self.world_size > 1 else {})}

    def load_state_dict(self, state: dict) -> None:
        if "generator" not in state:  # a WorkerLoader's state: the run moved between CPU and GPU
            warnings.warn("this loader state was written by a WorkerLoader (a per-image policy on a CPU): the "
                          "epochs from here on draw new orders and crops (the run stays valid, not bit-identical)",
                          stacklevel=2)
            self.generator.manual_seed(_epoch_seed(int(state["seed"]), int(state["epoch"])))
            return
        self.generator.set_state(state["generator"])
        self.epoch = int(state.get("epoch", 0))


def _check_repeats(repeats: int, shuffle: bool) -> None:
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a whole number from 1 (off) up, got {repeats!r}")
    if repeats > 1 and not shuffle:
        raise ValueError(f"repeats={repeats} is repeated augmentation, for training loaders; an evaluation loader "
                         "shows every image once (use repeats=1)")


def _repeated(order: Tensor, repeats: int) -> Tensor:
    """The first ``len / repeats`` indices of ``order``, each ``repeats`` times in a row, cut to ``len(order)``."""
    if repeats == 1:
        return order
    n = len(order)
    return order[:math.ceil(n / repeats)].repeat_interleave(repeats)[:n]


def _check_shard(batch_size: int, rank: int, world_size: int, drop_last: bool) -> None:
    if world_size > 1 and (batch_size % world_size or not drop_last):
        fit = world_size * max(1, batch_size // world_size)
        raise ValueError(f"a batch of {batch_size} images cannot be shared by {world_size} processes: the global "
                         f"batch must be a multiple of the number of processes (e.g. {fit}), and the last, "
                         "incomplete batch dropped (training loaders)")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not one of the {world_size} processes (0 to {world_size - 1})")


def _epoch_seed(seed: int, epoch: int, *more: int | str) -> int:
    """One 63-bit seed from (run seed, epoch[, rank, stream name]), with no collisions between e.g. (1, 0) and
    (0, 1)."""
    digest = hashlib.sha256(":".join(map(str, ("vit_from_scratch", seed, epoch, *more))).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class _EpochSampler(torch.utils.data.Sampler):
    """Yields ``(index, image seed)`` pairs for one epoch, all drawn from (run seed, epoch) alone.

    It runs in the main process, so the seeds reach the workers with the indices: the augmentation of an
    image depends on neither which worker draws it nor how long that worker has lived.
    """

    def __init__(self, n: int, shuffle: bool, batch_size: int = 1, rank: int = 0, world_size: int = 1,
                 repeats: int = 1) -> None:
        self.n, self.shuffle, self.repeats = n, shuffle, repeats
        self.seed, self.epoch = 0, 0
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def __len__(self) -> int:
        return self.n if self.world_size == 1 else self.n // self.batch_size * (self.batch_size // self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=generator) if self.shuffle else torch.arange(self.n)
        order = _repeated(order, self.repeats)
        seeds = torch.randint(0, 2**62, (self.n,), generator=generator)  # one per position: copies differ
        if self.world_size > 1:  # this process's slice of every whole global batch (the same seeds as one process)
            B, b = self.batch_size, self.batch_size // self.world_size
            keep = (torch.arange(self.n // B * B) % B).div(b, rounding_mode="floor") == self.rank
            order, seeds = order[:len(keep)][keep], seeds[:len(keep)][keep]
        return iter(zip(order.tolist(), seeds.tolist()))


class _PolicyDataset(torch.utils.data.Dataset):
    def __init__(self, data: ImageSet, augment: Augment) -> None:
        self.data, self.augment = data, augment

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, Tensor]:
        i, seed = item
        # The policies draw from torch's global generator: seed it per image, and leave the caller's
        # stream untouched (with num_workers=0 this runs in the main process).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image = self.augment.geometric(self.data.images[i:i + 1])[0]
            if self.augment.policy is not None:
                image = self.augment.policy(image)
        return image, self.data.labels[i]


class WorkerLoader:
    """A DataLoader over an in-memory :class:`ImageSet` for per-image policies: worker processes crop,
    flip and apply the policy to uint8 images; normalisation happens batched in the main process.

    Resumable exactly: the order and every image's random draws come from (``seed``, epoch), never from
    a worker's running random state, so ``state_dict()`` is just the seed and the number of epochs begun,
    and the batches do not depend on ``num_workers``. Random erasing runs batched in the main process, from
    a generator seeded by (``seed``, epoch, rank). ``repeats``: as :class:`BatchLoader`'s.
    """

    def __init__(self, data: ImageSet, batch_size: int, augment: Augment, *, shuffle: bool,
                 drop_last: bool = False, seed: int = 0, num_workers: int | None = None, rank: int = 0,
                 world_size: int = 1, repeats: int = 1) -> None:
        if num_workers is None:
            num_workers = max(1, min(4, (os.cpu_count() or 2) - 1))
        _check_shard(batch_size, rank, world_size, drop_last)
        _check_repeats(repeats, shuffle)
        self.augment, self.seed, self.epoch, self.rank = augment, seed, 0, rank
        self.sampler = _EpochSampler(len(data), shuffle, batch_size, rank, world_size, repeats)
        # The loader's own generator only feeds torch's (unused) worker base seed, not the global stream.
        self.loader = torch.utils.data.DataLoader(
            _PolicyDataset(data, augment), batch_size=batch_size // world_size, sampler=self.sampler,
            drop_last=drop_last,
            num_workers=num_workers, generator=torch.Generator().manual_seed(seed),
            persistent_workers=num_workers > 0)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        self.sampler.seed, self.sampler.epoch = self.seed, self.epoch
        erasing = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch, self.rank, "erasing"))
        self.epoch += 1  # counted when the epoch begins, so a partly read epoch is not repeated
        batches = iter(self.loader)  # the sampler's order and seeds are drawn now
        return ((self.augment.erase(self.augment.normalize(images), erasing), labels) for images, labels in batches)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        if "epoch" not in state:  # a checkpoint from before exact resume: a generator's state only
            warnings.warn("this loader state predates exact resume with worker processes: the epochs from here "
                          "on draw new crops, flips and policies (the run stays valid, not bit-identical)",
                          stacklevel=2)
            generator = torch.Generator()
            generator.set_state(state["generator"])
            self.seed, self.epoch = int(torch.randint(0, 2**62, (), generator=generator)), 0
            return
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])


def make_loader(data: ImageSet, batch_size: int, *, train: bool, mean: Sequence[float], std: Sequence[float],
                device: torch.device | str = "cpu", policy: str | None = None, padding: int = 4,
                flip: bool = True, seed: int = 0, num_workers: int | None = None, rank: int = 0,
                world_size: int = 1, augment_on: str = "auto", erasing: float = 0.0,
                repeats: int = 1) -> BatchLoader | WorkerLoader:
    """The right loader for the job.

    * test, or no per-image policy, or a GPU: :class:`BatchLoader` (data on ``device``, batched
      augmentation there, TrivialAugment included; other policies then go image by image there);
    * training with a per-image policy on a CPU: :class:`WorkerLoader` (worker processes; with
      ``num_workers=0`` in this process, drawing the same batches, so a run may resume with another count).

    ``augment_on`` overrides the choice for a training loader with a policy: "device" takes the GPU's
    path (:class:`BatchLoader`) on any device, "workers" the CPU's (:class:`WorkerLoader`).

    ``rank`` of ``world_size`` processes (chapter 11): ``batch_size`` is the global batch, of which this
    process reads its slice.

    ``erasing`` (random erasing's probability per image) and ``repeats`` (repeated augmentation) apply to
    training loaders: see :class:`Augment` and :class:`BatchLoader`.
    """
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {augment_on!r}")
    augment = Augment(mean, std, train=train, padding=padding, flip=flip, policy=policy, erasing=erasing)
    device = torch.device(device)
    workers = device.type == "cpu" if augment_on == "auto" else augment_on == "workers"
    if train and augment.policy is not None and workers:
        return WorkerLoader(data, batch_size, augment, shuffle=True, drop_last=True, seed=seed,
                            num_workers=num_workers, rank=rank, world_size=world_size, repeats=repeats)
    return BatchLoader(data, batch_size, augment, shuffle=train, drop_last=train, seed=seed, device=device,
                       rank=rank, world_size=world_size, repeats=repeats)


def mixup_cutmix(images: Tensor, labels: Tensor, num_classes: int, *, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """MixUp or CutMix (one chosen at random per batch when both are on): soft targets (B, K).

    With both alphas 0 the batch is returned unchanged with one-hot targets.
    """
    targets = F.one_hot(labels, num_classes).float()
    choices = [m for m, a in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)) if a > 0]
    if not choices:
        return images, targets
    pick = choices[int(torch.randint(len(choices), (1,), generator=generator))]
    alpha = mixup_alpha if pick == "mixup" else cutmix_alpha
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = to_device(torch.randperm(images.shape[0], generator=generator), images.device)
    if pick == "mixup":
        mixed = lam * images + (1 - lam) * images[perm]
    else:
        H, W = images.shape[-2:]
        cut_h, cut_w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(H, (1,), generator=generator)), int(torch.randint(W, (1,), generator=generator))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
        mixed = images.clone()
        mixed[..., y0:y1, x0:x1] = images[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)  # the area actually kept
    return mixed, lam * targets + (1 - lam) * targets[perm]
