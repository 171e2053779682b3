"""Chapter 6: TrivialAugment on a whole batch, on the batch's own device.

TrivialAugment (Müller and Hutter, 2021) gives every image one operation, drawn uniformly from
a list of fourteen, at a strength drawn uniformly from 31 levels. torchvision's
``v2.TrivialAugmentWide`` applies it one image at a time: on a GPU, a Python loop of 512 calls per
step then limits training, not the model. :func:`trivial_augment` draws the operations and strengths
for the whole batch at once and applies each operation to all the images that drew it, with
per-image strengths as tensors: fourteen batched steps per batch, whatever its size.

The operations and their ranges are torchvision's "wide" ones. The colour operations
(brightness, colour, contrast, sharpness, posterize, solarize, autocontrast, equalize) compute what
torchvision's functions compute for the same strength (tests/test_policies.py compares them); the
geometric ones (shear, translate, rotate) are one ``affine_grid`` + ``grid_sample`` with
nearest-neighbour sampling and zeros outside, as torchvision fills them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .runtime import to_device

__all__ = ["OPERATIONS", "NUM_LEVELS", "draw_operations", "apply_operations", "trivial_augment"]

# name: (largest strength, signed). Strengths are linspace(0, largest, NUM_LEVELS) but for posterize
# (bits kept, 8 down to 2) and solarize (threshold, a fraction of 255 going from 1 down to 0).
OPERATIONS: dict[str, tuple[float, bool]] = {
    "identity": (0.0, False), "shear_x": (0.99, True), "shear_y": (0.99, True),
    "translate_x": (32.0, True), "translate_y": (32.0, True), "rotate": (135.0, True),
    "brightness": (0.99, True), "color": (0.99, True), "contrast": (0.99, True), "sharpness": (0.99, True),
    "posterize": (0.0, False), "solarize": (0.0, False), "autocontrast": (0.0, False), "equalize": (0.0, False),
}
NUM_LEVELS = 31
_NAMES = tuple(OPERATIONS)


def _strengths(name: str, level: Tensor) -> Tensor:
    """The strength of ``level`` (0..NUM_LEVELS-1) for operation ``name``, as torchvision tabulates it."""
    if name == "posterize":
        return (8 - level / ((NUM_LEVELS - 1) / 6)).round()
    if name == "solarize":
        return 1.0 - level / (NUM_LEVELS - 1)
    return level * (OPERATIONS[name][0] / (NUM_LEVELS - 1))


def draw_operations(n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """For ``n`` images: which operation (an index into ``OPERATIONS``) and its strength (float64, signed
    where the operation is), drawn on the CPU from ``generator`` so a run replays exactly."""
    op = torch.randint(len(_NAMES), (n,), generator=generator)
    level = torch.randint(NUM_LEVELS, (n,), generator=generator).double()
    negative = torch.rand(n, generator=generator) < 0.5
    strength = torch.zeros(n, dtype=torch.float64)
    for k, name in enumerate(_NAMES):
        pick = op == k
        s = _strengths(name, level[pick])
        strength[pick] = torch.where(negative[pick], -s, s) if OPERATIONS[name][1] else s
    return op, strength


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """torchvision's blend for uint8 images, one factor per image (float64, as torchvision's Python
    float): ``images * factor + other * (1 - factor)``, clamped, then truncated."""
    shape = (-1, 1, 1, 1)
    weight, rest = factor.float().view(shape), (1 - factor).float().view(shape)
    return torch.addcmul(images.mul(weight), other, rest).clamp_(0, 255).to(torch.uint8)


def _gray(images: Tensor) -> Tensor:
    """Luma, floored, in torchvision's order of operations (so that rounding agrees)."""
    r, g, b = images.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1).floor_()


def _sharpen(images: Tensor, factor: Tensor) -> Tensor:
    C = images.shape[1]
    kernel = torch.full((3, 3), 1 / 13, device=images.device)
    kernel[1, 1] = 5 / 13
    out = images.float()
    blurred = F.conv2d(out, kernel.expand(C, 1, 3, 3), groups=C).round_()
    inner = out[..., 1:-1, 1:-1]
    inner += (blurred - inner) * (1 - factor.view(-1, 1, 1, 1).float())  # the border stays as it was
    return out.clamp_(0, 255).to(torch.uint8)


def _autocontrast(images: Tensor) -> Tensor:
    """Stretch every channel of every image to 0..255 (a flat channel stays as it is)."""
    x = images.float()
    low, high = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    flat = high == low
    inv_scale = torch.where(flat, 1.0, (high - low) * (1.0 / 255))
    low = torch.where(flat, 0.0, low)
    return ((x - low) / inv_scale).clamp_(0, 255).to(torch.uint8)


def _affine(images: Tensor, name: str, s: Tensor) -> Tensor:
    """Shear (about the top-left corner, as torchvision's TrivialAugment does), translate (pixels) or
    rotate (degrees, about the centre); nearest neighbour, zeros outside."""
    B, C, H, W = images.shape
    s = s.float().to(images.device)
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    if name.startswith("shear"):  # in normalised coordinates the corner is (-1, -1)
        k = s * (H / W) if name == "shear_x" else s * (W / H)
        rows = ((one, k, k), (zero, one, zero)) if name == "shear_x" else ((one, zero, zero), (k, one, k))
    elif name.startswith("translate"):
        dx, dy = (-2 * s.trunc() / W, zero) if name == "translate_x" else (zero, -2 * s.trunc() / H)
        rows = ((one, zero, dx), (zero, one, dy))
    else:  # the output pixel at angle a looks up the input at -a: torchvision turns counter-clockwise
        a = torch.deg2rad(s)
        rows = ((a.cos(), -a.sin() * H / W, zero), (a.sin() * W / H, a.cos(), zero))
    theta = torch.stack([torch.stack(r, 1) for r in rows], 1)  # (B, 2, 3): output -> input coordinates
    grid = F.affine_grid(theta, (B, C, H, W), align_corners=False)
    return F.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros",
                         align_corners=False).round_().to(torch.uint8)


def _apply(images: Tensor, name: str, s: Tensor) -> Tensor:
    """One operation on a batch of uint8 images (B, C, H, W), strength ``s`` (B,) per image."""
    if name == "identity":
        return images
    if name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        return _affine(images, name, s)
    factor = 1 + s.to(images.device)  # float64
    if name == "brightness":
        return _blend(images, torch.zeros((), device=images.device), factor)
    if name == "color":
        return _blend(images, _gray(images), factor) if images.shape[1] == 3 else images
    if name == "contrast":
        gray = _gray(images) if images.shape[1] == 3 else images.float()
        return _blend(images, gray.mean(dim=(1, 2, 3), keepdim=True), factor)
    if name == "sharpness":
        return _sharpen(images, factor)
    if name == "posterize":  # keep the top `bits` bits of every value
        mask = (255 << (8 - s.long().to(images.device))) & 255
        return images & mask.to(torch.uint8).view(-1, 1, 1, 1)
    if name == "solarize":
        threshold = (255 * s).float().to(images.device).view(-1, 1, 1, 1)
        return torch.where(images >= threshold, 255 - images, images)
    if name == "autocontrast":
        return _autocontrast(images)
    from torchvision.transforms.v2.functional import equalize  # batched: per image and channel

    return equalize(images)


def apply_operations(images: Tensor, op: Tensor, strength: Tensor) -> Tensor:
    """Apply operation ``op[i]`` at ``strength[i]`` to image ``i``: one batched call per operation."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if op.shape != (len(images),) or strength.shape != op.shape:
        raise ValueError(f"need one operation and one strength per image: {len(images)} images, "
                         f"op {tuple(op.shape)}, strength {tuple(strength.shape)}")
    out = images.clone()
    # The images grouped by operation (each group in ascending order), moved to the device with their
    # strengths in one copy each: indexing with host tensors would copy, and wait, once per operation.
    order = torch.argsort(op.cpu(), stable=True)
    counts = torch.bincount(op.cpu(), minlength=len(_NAMES)).tolist()
    index, strength = to_device(order, images.device), to_device(strength.cpu()[order], images.device)
    start = 0
    for name, n in zip(_NAMES, counts):
        if n:
            group = index[start:start + n]
            out[group] = _apply(images[group], name, strength[start:start + n])
        start += n
    return out


def trivial_augment(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """TrivialAugment (wide) on a uint8 batch (B, C, H, W) on its own device: one random operation at a
    random strength per image, drawn from ``generator``."""
    return apply_operations(images, *draw_operations(len(images), generator))
