"""Tiny training setups shared by the training, checkpoint and command-line tests: a 3-class data set
of random 16-px images a few steps can learn, and a two-block ViT."""

from pathlib import Path

import torch

from vit_from_scratch.data import ImageSet
from vit_from_scratch.recipe import TrainConfig

TINY_MODEL = dict(image_size=16, patch_size=4, num_classes=3, dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


def tiny_data(n: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randint(0, 60, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    for c in range(3):  # class c is brighter in channel c: learnable in a few steps
        images[labels == c, c] += 150
    return ImageSet(images, labels, ("a", "b", "c"))


TRAIN, TEST = tiny_data(96, 0), tiny_data(30, 1)


def tiny_config(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(model=TINY_MODEL, epochs=2, batch_size=16, lr=3e-3, warmup_epochs=0.5), **kw})


def write_image_folder(root: Path) -> Path:
    """TRAIN and TEST as an image-folder tree ``root/{train,test}/<class>/*.png``."""
    from PIL import Image

    for split, data in (("train", TRAIN), ("test", TEST)):
        for i, (image, label) in enumerate(zip(data.images, data.labels)):
            folder = root / split / data.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return root


def straight_and_resumed(config: TrainConfig, tmp_path: Path):
    """The same run twice on TRAIN/TEST: straight through (``tmp_path/a``), and stopped after one epoch
    then resumed in a second call (``tmp_path/b``); a resume that is exact gives identical results."""
    from vit_from_scratch.training import fit

    common = dict(train_set=TRAIN, test_set=TEST, device="cpu", progress=False, log=None)
    straight = fit(config, out_dir=tmp_path / "a", **common)
    fit(config, out_dir=tmp_path / "b", stop_after_epochs=1, **common)
    torch.manual_seed(12345)  # whatever happens between the two calls must not matter
    resumed = fit(config, out_dir=tmp_path / "b", resume=True, **common)
    return straight, resumed
