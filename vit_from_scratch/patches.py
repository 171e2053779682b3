"""Chapter 1: an image as a sequence of patch tokens.

Letters used in shape comments: B batch, C channels, H/W image height/width, P patch size,
h/w = H/P, W/P patches per column/row, N = h*w patches, D embedding width (``dim``).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["to_2tuple", "check_patch_grid", "patchify", "unpatchify", "PatchEmbedding"]


def to_2tuple(size: int | tuple[int, int]) -> tuple[int, int]:
    """Turn ``32`` into ``(32, 32)``; leave ``(32, 48)`` alone."""
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"expected an int or a (height, width) pair, got {size!r}")
    return size  # type: ignore[return-value]


def check_patch_grid(image_size: int | tuple[int, int], patch_size: int | tuple[int, int]) -> tuple[int, int]:
    """Return the patch grid ``(h, w)``; raise a ``ValueError`` when the patch does not divide the image."""
    (H, W), (ph, pw) = to_2tuple(image_size), to_2tuple(patch_size)
    if ph <= 0 or pw <= 0:
        raise ValueError(f"patch size must be positive, got {(ph, pw)}")
    if H % ph or W % pw:
        # (patch sizes up to 1024 px: the list stays short, and quick to make for an absurd image size)
        divisors = [p for p in range(1, min(H, W, 1024) + 1) if H % p == 0 and W % p == 0]
        raise ValueError(
            f"patch size {(ph, pw)} does not divide the image size {(H, W)}: "
            f"{_patch_counts(H, W, ph, pw)}. "
            f"Resize or crop the image to a multiple of the patch size, or pick a patch size "
            f"that divides both sides (for {(H, W)}: {divisors})."
        )
    return H // ph, W // pw


def _patch_counts(H: int, W: int, ph: int, pw: int) -> str:
    """"225/16 = 14.1 patches per side", or both sides when they differ."""
    if (H, ph) == (W, pw):
        return f"{H}/{ph} = {H / ph:.3g} patches per side"
    return f"{H}/{ph} = {H / ph:.3g} patches down and {W}/{pw} = {W / pw:.3g} across"


def check_channels(images: Tensor, expected: int) -> None:
    """Raise a clear error unless ``images`` (B, C, H, W) have ``expected`` channels; a channels-last
    batch (B, H, W, C), as PIL and NumPy store images, is named as such."""
    C = images.shape[1]
    if C == expected:
        return
    if images.shape[-1] == expected:  # (B, H, W, C): channels last
        raise ValueError(f"expected {expected}-channel images shaped (B, C, H, W), got "
                         f"shape {tuple(images.shape)}, which looks channels-last (B, H, W, C) "
                         "as PIL and NumPy store images; use images.permute(0, 3, 1, 2)")
    got = f"{C} channel" + ("" if C == 1 else "s")
    raise ValueError(f"expected {expected}-channel images, got {got} "
                     f"(shape {tuple(images.shape)}); convert the images (e.g. grayscale to "
                     f"RGB with images.expand(-1, 3, -1, -1)) or build the model with "
                     f"in_channels={C}")


def _check_images(images: Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"expected a batch of images shaped (B, C, H, W), got shape {tuple(images.shape)}; "
                         "for a single image use images.unsqueeze(0)")


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into non-overlapping square patches and flatten each one.

    Each patch is flattened in (C, P, P) order, the order of a ``Conv2d`` weight, so that
    ``Linear`` on patches and ``Conv2d`` on the image share the same weights.

    Shape:
        (B, C, H, W) -> (B, N, C*P*P) with N = (H/P) * (W/P), patches in row-major order.
    """
    _check_images(images)
    B, C, H, W = images.shape
    h, w = check_patch_grid((H, W), patch_size)
    P = patch_size
    x = images.reshape(B, C, h, P, w, P)  # split each side: (B, C, h, P, w, P)
    x = x.permute(0, 2, 4, 1, 3, 5)  # patch index first: (B, h, w, C, P, P)
    return x.reshape(B, h * w, C * P * P)  # (B, N, C*P*P)


def unpatchify(patches: Tensor, patch_size: int, image_size: int | tuple[int, int]) -> Tensor:
    """Inverse of :func:`patchify`: put flattened patches back into images.

    Shape:
        (B, N, C*P*P) -> (B, C, H, W)
    """
    if patches.ndim != 3:
        raise ValueError(f"expected patches shaped (B, N, C*P*P), got shape {tuple(patches.shape)}")
    B, N, L = patches.shape
    H, W = to_2tuple(image_size)
    h, w = check_patch_grid((H, W), patch_size)
    P = patch_size
    if N != h * w or L % (P * P):
        raise ValueError(f"{N} patches of length {L} cannot form a {H}x{W} image with patch size {P}: "
                         f"expected {h * w} patches of length C*{P * P}")
    C = L // (P * P)
    x = patches.reshape(B, h, w, C, P, P)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, h, P, w, P)
    return x.reshape(B, C, H, W)


class PatchEmbedding(nn.Module):
    """Split an image into patches and project each to a D-dimensional token.

    A ``Conv2d`` whose kernel and stride are both the patch size: the same linear map as
    ``Linear(C*P*P, D)`` applied to :func:`patchify` output (Dosovitskiy et al., 2021, eq. 1).

    Shape:
        (B, C, H, W) -> (B, N, D)
    """

    def __init__(self, *, image_size: int | tuple[int, int] = 224, patch_size: int = 16,
                 in_channels: int = 3, dim: int = 768) -> None:
        super().__init__()
        self.image_size = to_2tuple(image_size)
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.grid_size = check_patch_grid(self.image_size, patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        _check_images(images)
        B, C, H, W = images.shape
        check_channels(images, self.in_channels)
        if (H, W) != self.image_size:
            check_patch_grid((H, W), self.patch_size)
            raise ValueError(f"expected images of size {self.image_size}, got {(H, W)}; resize the images, "
                             f"or build a model for {(H, W)} and carry trained position embeddings "
                             "over with vit_from_scratch.resize_pos_embed")
        x = self.proj(images)  # (B, D, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, D, N) -> (B, N, D)
