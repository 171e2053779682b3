"""Chapter 6: data. CIFAR-10 (or any image-folder data set) held in memory, augmented in batches.

Images are decoded once into one ``uint8`` tensor (B, C, H, W) and kept there: on a GPU the whole
set lives on the device. Augmentation and batching live in :mod:`vit_from_scratch.loaders`.

Where the data comes from (``VIT_DATA_DIR``, else ``~/.cache/vit_from_scratch/data``):

* an image-folder tree ``<root>/train/<class>/*`` and ``<root>/test/<class>/*`` (also under
  ``<root>/cifar10-jpeg/``, what ``cifar10-jpeg.tar.gz`` unpacks to); class names are the folders;
* torchvision's own CIFAR-10 layout ``<root>/cifar-10-batches-py``, downloaded when allowed.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .checkpoints import atomic_write
from .near_copies import nearest_similarity  # re-exported: chapter 6 checks its split with it
from .runtime import network_available

__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "ImageSet", "default_data_dir", "find_image_folder",
    "load_image_folder", "check_classes", "to_8bit", "load_cifar10", "channel_stats", "normalize", "resize_images",
    "validation_split", "VALIDATION_SIZE", "VALIDATION_SEED", "nearest_similarity",
]

# The book's validation split, every chapter's, probe's and the command line's: 5,000 of CIFAR-10's 50,000
VALIDATION_SIZE, VALIDATION_SEED = 5000, 0  # training images, seed 0: validation_split(train, 5000, seed=0)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Statistics of the original CIFAR-10 training set (per channel, pixel values in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff"}


@dataclass
class ImageSet:
    """A decoded image data set: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,), class names."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, n: int | None, seed: int = 0) -> ImageSet:
        """The first ``n`` images of a fixed random permutation, stratified by nothing: a quick budget's slice."""
        if n is None or n >= len(self):
            return self
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return ImageSet(self.images[order], self.labels[order], self.classes, self.source + f" (subset of {n})")

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.images.to(device), self.labels.to(device), self.classes, self.source)


def default_data_dir() -> Path:
    """``VIT_DATA_DIR`` if set, else ``~/.cache/vit_from_scratch/data``."""
    env = os.environ.get("VIT_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vit_from_scratch" / "data"


def find_image_folder(root: str | os.PathLike, names: Sequence[str] = ("cifar10-jpeg", "cifar10")) -> Path | None:
    """The folder holding ``train/`` and ``test/`` class folders: ``root`` itself or ``root/<name>``."""
    root = Path(root)
    for candidate in [root, *(root / n for n in names)]:
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    return None


def to_8bit(image: "PIL.Image.Image", name: str = "the image") -> "PIL.Image.Image":
    """A 16-bit grayscale image (modes ``I;16*``, and ``I`` as older Pillow opens 16-bit PNGs) scaled to 8 bits,
    ``round(v / 257)``, where Pillow's ``convert`` clips at 255; any other image is returned unchanged."""
    import numpy as np
    from PIL import Image

    if not image.mode.startswith("I"):
        return image
    values = np.array(image, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"{name} (mode {image.mode}) holds values {values.min()}..{values.max()}, outside the "
                         "16-bit range 0..65535 that is scaled to 8 bits: convert it to an 8-bit image first")
    return Image.fromarray(((values + 128) // 257).astype(np.uint8), "L")  # round(v / 257), 65535 -> 255


def _decode(path: Path) -> Tensor:
    """One image file -> uint8 (3, H, W). Pillow decodes (torchvision's decoders are deprecated).

    A damaged file raises :class:`OSError` naming the file (Pillow's own messages, such as
    "Truncated File Read", do not).
    """
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # decodes: a damaged file fails here
    except Exception as error:  # OSError, SyntaxError, DecompressionBombError...
        raise OSError(f"could not decode the image {path} ({type(error).__name__}: {error}); the file is "
                      "damaged or not an image: replace it (e.g. unpack the data set again) or delete it") from error
    pixels = np.array(to_8bit(image, str(path)).convert("RGB"))  # (H, W, 3), a writable copy
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def _describe_difference(expected: Sequence[str], found: Sequence[str], reference: str = "the training split") -> str:
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"not in {reference}: "
                                                                       f"{', '.join(extra)}"] if extra else [])
    return "; ".join(parts) if parts else f"the same names in another order ({', '.join(found)})"


def check_classes(expected: Sequence[str], found: Sequence[str], where: str, *,
                  reference: str = "the training split") -> None:
    """Raise :class:`ValueError` unless ``found`` is exactly the class list ``expected`` (same names, same order).

    The class list is established once, from the training split (or the ``reference`` a data set publishes);
    every other split is checked against it, because label ``i`` must mean the same class everywhere.
    """
    if tuple(expected) != tuple(found):
        difference = _describe_difference(expected, found, reference)
        raise ValueError(f"{where} has other classes than {reference}: {difference}. Expected the classes "
                         f"({', '.join(expected)}); rename, add or remove the class folders so that they match "
                         f"{reference}")


def _list_images(split_dir: Path, classes: Sequence[str] | None) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    """The class names (``classes`` if given, checked against the folders) and every (image file, label).

    Hidden files and folders (``.*``, e.g. macOS's ``._name.jpg``) are skipped; an empty class folder is an error.
    """
    found = tuple(sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not found:
        raise FileNotFoundError(f"no class folders in {split_dir}: expected one sub-folder of images per class, "
                                f"{split_dir}/<class>/*.jpg")
    if classes is not None:
        classes = tuple(classes)
        if set(classes) != set(found) or len(classes) != len(found):
            raise ValueError(f"the class folders of {split_dir} differ from the training split's: "
                             f"{_describe_difference(classes, found)}. Expected the folders "
                             f"({', '.join(classes)}); rename, add or remove class folders so that every split "
                             "has the same ones")
    classes = classes if classes is not None else found
    files: list[tuple[Path, int]] = []
    empty = []
    for name in found:  # files in folder order whatever the class order, so a cache fits every order
        images = [p for p in sorted((split_dir / name).iterdir())
                  if not p.name.startswith(".") and p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file()]
        files += [(p, classes.index(name)) for p in images]
        empty += [] if images else [str(split_dir / name)]
    if empty:
        raise FileNotFoundError(f"the class folder(s) {', '.join(empty)} hold no images (looked for files ending "
                                f"in {', '.join(sorted(_IMAGE_SUFFIXES))}): put the class's images there, or "
                                "remove the folder from every split")
    return classes, files


def _read_cache(cache_file: Path, classes: tuple[str, ...], count: int) -> tuple[Tensor, Tensor] | None:
    """(images, labels) from a decoded-data cache, labels in ``classes``' order; ``None`` if there is none.

    A cache that cannot be read (empty, truncated, corrupt, or not matching the folder) is deleted with a
    warning naming it, and ``None`` is returned so that it is rebuilt from the images.
    """
    if not cache_file.exists():
        return None
    try:
        saved = torch.load(cache_file, weights_only=True)
        images, labels, saved_classes = saved["images"], saved["labels"], tuple(saved["classes"])
        ImageSet(images, labels, saved_classes)  # checks dtypes and shapes
        if len(labels) != count or sorted(saved_classes) != sorted(classes):
            raise ValueError(f"it holds {len(labels)} images of classes {saved_classes}, the folder {count} "
                             f"of {classes}")
        relabel = torch.tensor([classes.index(c) for c in saved_classes], dtype=torch.int64)
        return images, relabel[labels]
    except Exception as error:  # EOFError, RuntimeError ("failed finding central directory"), KeyError...
        warnings.warn(f"the decoded-data cache {cache_file} could not be used ({type(error).__name__}: "
                      f"{str(error)[:200]}); it is deleted and rebuilt from the images", stacklevel=3)
        try:
            cache_file.unlink(missing_ok=True)
        except OSError:
            pass
        return None


def _content_key(split_dir: Path, files: list[tuple[Path, int]]) -> str:
    """The decoded-data cache's key: a hash of every file's name, size, mtime and ctime (nanoseconds). The
    ctime is what makes it safe: ``cp -p``, ``rsync -t``, ``tar`` or ``os.utime`` can give a replaced file its
    old mtime, but any write or rename sets the ctime to now, and no user call can set it back. Only
    ``stat`` is called: a load does not read every file twice."""
    key = hashlib.sha1()
    for path, _ in files:
        st = path.stat()
        key.update(f"{path.relative_to(split_dir)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}\n".encode())
    return key.hexdigest()[:12]


def _decode_all(files: list[tuple[Path, int]]) -> tuple[Tensor, Tensor]:
    first = _decode(files[0][0])
    images = torch.empty((len(files), *first.shape), dtype=torch.uint8)
    for i, (path, _) in enumerate(files):
        image = first if i == 0 else _decode(path)
        if image.shape != first.shape:
            raise ValueError(f"{path} is {tuple(image.shape)}, the first image ({files[0][0]}) was "
                             f"{tuple(first.shape)}: resize the data set to one size first (this loader keeps "
                             "images in one tensor)")
        images[i] = image
    return images, torch.tensor([label for _, label in files], dtype=torch.int64)


def load_image_folder(split_dir: str | os.PathLike, *, classes: Sequence[str] | None = None,
                      cache: bool = True) -> ImageSet:
    """Decode every image of ``split_dir/<class>/*`` into one uint8 tensor (all images the same size).

    Args:
        classes: the class list this split must have (e.g. the training split's ``classes``); labels follow
            its order. ``None``: the sorted folder names (use that for the training split only).
        cache: keep the decoded tensor beside the tree (``.decoded-<split>-<hash>.pt``), keyed by the files'
            names and contents, so the next run loads in a second; a damaged cache is deleted and rebuilt.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise FileNotFoundError(f"no folder {split_dir}: expected one sub-folder of images per class")
    classes, files = _list_images(split_dir, classes)
    cache_file = split_dir.parent / f".decoded-{split_dir.name}-{_content_key(split_dir, files)}.pt"
    cached = _read_cache(cache_file, classes, len(files)) if cache else None
    if cached is not None:
        return ImageSet(*cached, classes, str(split_dir))
    images, labels = _decode_all(files)
    if cache:
        try:  # atomic: a temporary file named with the process id, renamed over the cache
            atomic_write(lambda tmp: torch.save({"images": images, "labels": labels, "classes": list(classes)},
                                                tmp), cache_file)
        except OSError:  # a read-only data folder: no cache, no harm
            pass
    return ImageSet(images, labels, classes, str(split_dir))


def _load_torchvision_cifar10(root: Path, train: bool, download: bool) -> ImageSet:
    from torchvision.datasets import CIFAR10

    ds = CIFAR10(str(root), train=train, download=download)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    return ImageSet(images, torch.tensor(ds.targets, dtype=torch.int64), tuple(ds.classes),
                    f"{root}/cifar-10-batches-py")


def _download_cifar10(root: Path) -> tuple[ImageSet, ImageSet]:
    """Download with torchvision; the folder is created only when the server answers, and folders this
    call created are removed again (when empty) if the download fails."""
    from urllib.parse import urlparse

    from torchvision.datasets import CIFAR10

    created = [p for p in (root, *root.parents) if not p.exists()]  # deepest first
    try:
        host = urlparse(CIFAR10.url).hostname
        if not network_available(host):
            raise ConnectionError(f"{host} cannot be reached (no network?)")
        train = _load_torchvision_cifar10(root, True, True)
        return train, _load_torchvision_cifar10(root, False, True)
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()
            except OSError:  # not empty (a partial download is kept for the next try) or gone
                break
        raise


def _shown_under(data: ImageSet, root: Path, given: bool) -> ImageSet:
    """``data`` with its source named relative to the data folder (``$VIT_DATA_DIR/...``) when that folder
    came from the environment, so printed sources carry no path of the machine that ran them."""
    if given or not data.source.startswith(str(root)):
        return data
    label = "$VIT_DATA_DIR" if os.environ.get("VIT_DATA_DIR") else "~/.cache/vit_from_scratch/data"
    return ImageSet(data.images, data.labels, data.classes, label + data.source[len(str(root)):])


def load_cifar10(root: str | os.PathLike | None = None, *, download: bool | None = None) -> tuple[ImageSet, ImageSet]:
    """(train, test) CIFAR-10 from ``root`` (default :func:`default_data_dir`).

    Looks for an image-folder tree first (the test split must have the training split's classes), then
    torchvision's layout; downloads with torchvision only when ``download`` is true (``None``: try, and
    explain if it fails). No folder is created unless a download actually starts.
    """
    given = root is not None
    root = Path(root) if given else default_data_dir()
    folder = find_image_folder(root)
    if folder is not None:
        train = load_image_folder(folder / "train")
        test = load_image_folder(folder / "test", classes=train.classes)
        return _shown_under(train, root, given), _shown_under(test, root, given)
    if (root / "cifar-10-batches-py").is_dir():
        train = _load_torchvision_cifar10(root, True, False)
        test = _load_torchvision_cifar10(root, False, False)
        check_classes(train.classes, test.classes, f"the test split of {root}/cifar-10-batches-py")
        return _shown_under(train, root, given), _shown_under(test, root, given)
    if download is not False:
        try:
            return tuple(_shown_under(d, root, given) for d in _download_cifar10(root))
        except Exception as error:  # no network, a proxy, a read-only disk...
            reason = f"downloading failed ({type(error).__name__}: {error})"
    else:
        reason = "download=False"
    if not root.exists():
        reason += f"; the folder {root} does not exist (is VIT_DATA_DIR spelled right?)"
    raise FileNotFoundError(
        f"CIFAR-10 was not found in {root} and {reason}. Either\n"
        f"  1. put an image-folder tree there: {root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg "
        "(e.g. tar -xzf cifar10-jpeg.tar.gz -C <dir>), or\n"
        f"  2. put torchvision's layout there: {root}/cifar-10-batches-py (downloaded by "
        "torchvision.datasets.CIFAR10(root, download=True) where there is network),\n"
        "and point the environment variable VIT_DATA_DIR at that folder (or pass root=...)."
    )


def channel_stats(images: Tensor, batch: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W), as values in [0, 1]."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), batch):
        x = images[start:start + batch].to(torch.float64) / 255
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean**2).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


# --------------------------------------------------------------------------- what the model sees


def normalize(images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """Images -> the model's input: ``(x - mean) / std`` per channel, with ``x`` in [0, 1].

    uint8 images (0..255) are scaled to [0, 1] first; float images are taken as already in [0, 1].

    Shape:
        (B, C, H, W) -> (B, C, H, W), float32
    """
    x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


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


def validation_split(data: ImageSet, size: int | float = 0.1, *, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """``(train, validation)``: a fixed, seeded, class-stratified validation part carved from ``data``.

    ``size`` is a count of images (an int, e.g. 5000 of CIFAR-10's 50,000) or a fraction (a float in
    (0, 1)). Every class gives the same share, rounded so that the counts add up to exactly ``size``
    (largest remainders first). The two parts are disjoint and together are ``data``; the same
    ``(data, size, seed)`` always gives the same split, so every chapter and probe chooses on the same
    images. The test set is never touched: choose on ``validation``, report the test set once.
    """
    n = len(data)
    number = isinstance(size, (int, float)) and not isinstance(size, bool)
    count = (round(size * n) if isinstance(size, float) else size) if number else 0
    if not 0 < count < n or (isinstance(size, float) and not 0 < size < 1):
        raise ValueError(f"size must be a count between 1 and {n - 1} or a fraction in (0, 1) that leaves images "
                         f"on both sides, got {size!r} for {n} images")
    generator = torch.Generator().manual_seed(seed)
    members = [torch.nonzero(data.labels.cpu() == c).flatten() for c in range(len(data.classes))]
    exact = [len(m) * count / n for m in members]
    take = [int(e) for e in exact]
    for c in sorted(range(len(members)), key=lambda c: (take[c] - exact[c], c))[:count - sum(take)]:
        take[c] += 1  # largest remainders first, ties to the lower class index
    val = torch.cat([m[torch.randperm(len(m), generator=generator)[:k]] for m, k in zip(members, take)]).sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    train = ImageSet(data.images[keep], data.labels[keep], data.classes, data.source + f" (training part, seed {seed})")
    held = ImageSet(data.images[val], data.labels[val], data.classes,
                    data.source + f" (validation part of {count}, seed {seed})")
    return train, held
