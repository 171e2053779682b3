"""Chapter 13: two data sets from outside CIFAR-10, loaded the package's way.

* **EuroSAT RGB** (Helber et al., 2019): Sentinel-2 tiles, 64x64 RGB, 10 land-use classes, 27,000 images,
  read through ``torchvision.datasets.EuroSAT(root)`` (``root/eurosat/2750/<class>/*.jpg``; downloaded
  by torchvision where the network allows) and decoded once into an :class:`~vit_from_scratch.data.ImageSet`.
* **Magnetic-tile surface defects** (Huang, Qiu and Yuan, 2020): 1,344 grayscale photographs of varying
  size in six classes, each with a pixel mask of its defect, in the authors' own tree
  ``root/magnetic-tile/MT_<Class>/Imgs/<name>.jpg`` beside ``<name>.png``.

Neither has an official split: :func:`three_way_split` carves a fixed, seeded, class-stratified test and
validation part with :func:`~vit_from_scratch.data.validation_split`, the package's one split function.

Letters: N images, C channels, H/W height and width.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import (ImageSet, check_classes, default_data_dir, load_image_folder, resize_images, to_8bit,
                   validation_split)
from .runtime import network_available

__all__ = ["EUROSAT_CLASSES", "MAGNETIC_TILE_CLASSES", "MAGNETIC_TILE_URL", "MaskedImageSet", "load_eurosat",
           "load_magnetic_tiles", "three_way_split", "split_masked"]

EUROSAT_CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake")
MAGNETIC_TILE_CLASSES = ("Blowhole", "Break", "Crack", "Fray", "Free", "Uneven")  # "Free": defect-free
# The authors' repository at the commit of the offline copy (../shared/data), as GitHub's zip archive
MAGNETIC_TILE_URL = "https://github.com/abin24/Magnetic-tile-defect-datasets./archive/cc4eb53.zip"
_GITHUB_HOST = "github.com"
_EUROSAT_HOST = "huggingface.co"  # where torchvision.datasets.EuroSAT downloads from


def _missing(what: str, where: Path, reason: str, tree: str, fetch: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} was not found in {where} and {reason}. Either\n"
        f"  1. unpack the offline copy there, so that {tree} exists, or\n"
        f"  2. {fetch},\n"
        "and point the environment variable VIT_DATA_DIR at that folder (or pass root=...).")


# EuroSAT ---------------------------------------------------------------------------------------
def load_eurosat(root: str | os.PathLike | None = None, *, size: int = 64,
                 download: bool | None = None) -> ImageSet:
    """All 27,000 EuroSAT RGB images (uint8, 3 x ``size`` x ``size``) with their 10 land-use labels.

    The images are found with ``torchvision.datasets.EuroSAT(root)``, the call that also downloads them
    (``download``: ``None`` tries only when the network answers). They are decoded once into one tensor by
    :func:`~vit_from_scratch.data.load_image_folder` (cached beside the tree), labels in the order of
    :data:`EUROSAT_CLASSES` (torchvision's), then resized (antialiased) when ``size`` is not the native 64.
    The class folders must be exactly EuroSAT's ten: a missing or a stray one is refused, naming it.
    """
    from torchvision.datasets import EuroSAT

    root = Path(root) if root is not None else default_data_dir()
    folder = root / "eurosat" / "2750"
    if not folder.is_dir():
        reason = "download=False"
        if download is None:
            download = network_available(_EUROSAT_HOST)
            reason = f"{_EUROSAT_HOST} cannot be reached (no network?)"
        if download:
            try:
                EuroSAT(str(root), download=True)
            except Exception as error:  # no network, a proxy, a read-only disk...
                reason = f"downloading failed ({type(error).__name__}: {error})"
        if not folder.is_dir():
            raise _missing("EuroSAT", root, reason, f"{folder}/<class>/*.jpg",
                           "let torchvision download it: torchvision.datasets.EuroSAT(root, download=True)")
    found = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")))
    check_classes(EUROSAT_CLASSES, found, str(folder), reference="EuroSAT's ten land-use classes")
    EuroSAT(str(root))  # torchvision reads the offline copy too (the documented entry point)
    decoded = load_image_folder(folder, classes=EUROSAT_CLASSES)
    data = ImageSet(decoded.images, decoded.labels, EUROSAT_CLASSES, "EuroSAT RGB")  # no machine path in printouts
    return resize_images(data, size) if size != data.images.shape[-1] else data


def three_way_split(data: ImageSet, *, val: float = 0.1, test: float = 0.2,
                    seed: int = 0) -> tuple[ImageSet, ImageSet, ImageSet]:
    """``(train, validation, test)``: fixed, seeded, class-stratified fractions of ``data``.

    :func:`~vit_from_scratch.data.validation_split` is applied twice: first the test part (``test`` of all
    images), then the validation part (``val`` of all images) from what is left. Same arguments, same split.
    """
    if not (0 < val and 0 < test and val + test < 1):
        raise ValueError(f"val and test must be positive fractions that leave training images, got {val}, {test}")
    rest, held_out = validation_split(data, round(test * len(data)), seed=seed)
    train, validation = validation_split(rest, round(val * len(data)), seed=seed + 1)
    return train, validation, held_out


# Magnetic tiles --------------------------------------------------------------------------------
@dataclass
class MaskedImageSet:
    """Images with a defect mask each: ``masks`` uint8 (N, 1, H, W), 0 = surface, 255 = defect; a
    resized mask holds the share of defect around each pixel in between."""

    data: ImageSet
    masks: Tensor
    names: tuple[str, ...] | None = None  # each image's file name (no folder), when loaded from files

    def __post_init__(self) -> None:
        n, _, h, w = self.data.images.shape
        if self.masks.dtype != torch.uint8 or tuple(self.masks.shape) != (n, 1, h, w):
            raise ValueError(f"masks must be uint8 ({n}, 1, {h}, {w}), like the images, got "
                             f"{self.masks.dtype} {tuple(self.masks.shape)}")
        if self.names is not None and len(self.names) != n:
            raise ValueError(f"names must hold one file name per image ({n}), got {len(self.names)}")

    def __len__(self) -> int:
        return len(self.data)

    def select(self, index: Tensor, what: str = "subset") -> MaskedImageSet:
        """The images at ``index`` (a 1-D index tensor), each with its mask and name."""
        d, index = self.data, torch.as_tensor(index, dtype=torch.int64).cpu()
        names = tuple(self.names[i] for i in index.tolist()) if self.names is not None else None
        return MaskedImageSet(ImageSet(d.images[index], d.labels[index], d.classes, f"{d.source} ({what})"),
                              self.masks[index], names)


def _read_gray(path: Path) -> Tensor:
    """One grayscale file -> float (1, H, W) in 0..255."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            pixels = np.array(to_8bit(image).convert("L"), dtype=np.float32)  # 16-bit masks scaled
    except Exception as error:
        raise OSError(f"could not decode {path} ({type(error).__name__}: {error}): replace the file "
                      "(unpack the data set again) or delete it together with its partner") from error
    return torch.from_numpy(pixels)[None]


def _resize(x: Tensor, size: int) -> Tensor:
    """(1, H, W) float -> (1, size, size) uint8: antialiased bilinear, for images and masks alike."""
    y = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return y.round().clamp(0, 255).to(torch.uint8)


def _tile_files(folder: Path) -> list[tuple[Path, Path, int]]:
    """Every (image, mask, label) in the authors' tree; a malformed tree raises, saying what is wrong."""
    found = sorted(d.name[3:] for d in folder.glob("MT_*") if d.is_dir())
    if tuple(found) != MAGNETIC_TILE_CLASSES:
        raise ValueError(f"{folder} holds the class folders {['MT_' + c for c in found]}, expected "
                         f"{['MT_' + c for c in MAGNETIC_TILE_CLASSES]} (the authors' tree, unchanged)")
    files = []
    for label, name in enumerate(MAGNETIC_TILE_CLASSES):
        images = sorted((folder / f"MT_{name}" / "Imgs").glob("*.jpg"))
        if not images:
            raise ValueError(f"{folder}/MT_{name}/Imgs holds no .jpg images: the tree is incomplete")
        for image in images:
            mask = image.with_suffix(".png")
            if not mask.is_file():
                raise ValueError(f"{image} has no mask {mask.name} beside it: every image needs its mask "
                                 "(unpack the data set again)")
            files.append((image, mask, label))
    return files


def _download_magnetic_tiles(root: Path) -> None:
    """The authors' repository as GitHub's zip archive, unpacked so that ``root/magnetic-tile/MT_*`` exist;
    moved into place only when complete, so an interrupted download leaves nothing half-written."""
    import shutil
    import tempfile
    import urllib.request
    import zipfile

    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".magnetic-tile-") as tmp:
        archive = Path(tmp) / "archive.zip"
        urllib.request.urlretrieve(MAGNETIC_TILE_URL, archive)
        with zipfile.ZipFile(archive) as z:
            z.extractall(Path(tmp) / "unpacked")  # zipfile drops absolute paths and ".." parts
        top = next((p.parent for p in sorted((Path(tmp) / "unpacked").rglob("MT_Free"))), None)
        if top is None:
            raise ValueError(f"{MAGNETIC_TILE_URL} holds no MT_<Class> folders: the repository changed")
        shutil.move(str(top), str(root / "magnetic-tile"))


def load_magnetic_tiles(root: str | os.PathLike | None = None, *, size: int = 64,
                        download: bool | None = None) -> MaskedImageSet:
    """All 1,344 magnetic-tile images and their masks, resized to ``size`` x ``size``.

    The photographs are 103-632 by 222-403 pixels, so one size is chosen on purpose: each image and its
    mask are resized the same way (antialiased bilinear) to a square, which stretches some tiles but keeps
    every defect in the picture. The grayscale channel is repeated three times, so that a model made for
    RGB sees the same picture in every channel (its patch embedding then acts as one grayscale filter, the
    sum of its three colour filters). Looks in ``root/magnetic-tile`` (``root`` default: ``VIT_DATA_DIR``);
    when it is missing, downloads the authors' repository there (``download``: ``None`` tries only when
    the network answers).
    """
    root = Path(root) if root is not None else default_data_dir()

    def found() -> Path | None:
        folder = root / "magnetic-tile" if (root / "magnetic-tile").is_dir() else root
        return folder if any(folder.glob("MT_*")) else None

    if found() is None:
        reason = "download=False"
        if download is None:
            download = network_available(_GITHUB_HOST)
            reason = f"{_GITHUB_HOST} cannot be reached (no network?)"
        if download:
            try:
                _download_magnetic_tiles(root)
            except Exception as error:  # no network, a proxy, a read-only disk, a changed repository...
                reason = f"downloading failed ({type(error).__name__}: {error})"
    folder = found()
    if folder is None:
        raise _missing("The magnetic-tile defect data set", root, reason,
                       f"{root}/magnetic-tile/MT_<Class>/Imgs/<name>.jpg",
                       f"download the authors' repository ({MAGNETIC_TILE_URL}) and unpack it as "
                       f"{root}/magnetic-tile (load_magnetic_tiles(download=True) does that)")
    files = _tile_files(folder)
    images = torch.empty((len(files), 1, size, size), dtype=torch.uint8)
    masks = torch.empty_like(images)
    for i, (image, mask, _) in enumerate(files):
        picture, defect = _read_gray(image), _read_gray(mask)
        if picture.shape != defect.shape:
            raise ValueError(f"{image} is {tuple(picture.shape[1:])} but its mask {mask.name} is "
                             f"{tuple(defect.shape[1:])}: they must be the same size")
        images[i], masks[i] = _resize(picture, size), _resize((defect > 127).float() * 255, size)
    labels = torch.tensor([label for *_, label in files], dtype=torch.int64)
    rgb = images.expand(-1, 3, -1, -1).contiguous()  # (N, 1, H, W) -> (N, 3, H, W): gray in every channel
    names = tuple(image.stem for image, *_ in files)  # e.g. exp1_num_3667: lighting and file number
    return MaskedImageSet(ImageSet(rgb, labels, MAGNETIC_TILE_CLASSES, "magnetic tiles"), masks, names)


def split_masked(data: MaskedImageSet, *, val: float = 0.2, test: float = 0.2,
                 seed: int = 0) -> tuple[MaskedImageSet, MaskedImageSet, MaskedImageSet]:
    """:func:`three_way_split` for images with masks: the mask travels as a fourth channel through the
    split, so images and masks stay paired and the split is the package's one function."""
    d = data.data
    joined = ImageSet(torch.cat([d.images, data.masks], dim=1), d.labels, d.classes, d.source)  # (N, C+1, H, W)
    parts = three_way_split(joined, val=val, test=test, seed=seed)
    return tuple(MaskedImageSet(ImageSet(p.images[:, :-1], p.labels, p.classes, p.source), p.images[:, -1:])
                 for p in parts)
