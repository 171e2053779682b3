"""Data: image-folder and torchvision layouts, the missing-data error, batched augmentation, loaders."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vit_from_scratch.data import (Augment, BatchLoader, ImageSet, WorkerLoader, channel_stats, find_image_folder,
                                   load_cifar10, load_image_folder, make_loader, mixup_cutmix, normalize)


def _write_tree(root, classes=("cat", "dog", "frog"), per_class=4, size=8, suffix=".png"):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i:03d}{suffix}")
    return root


def test_image_folder_tree_loads_with_class_names_from_folders(tmp_path):
    root = _write_tree(tmp_path / "mydata")
    train, test = load_cifar10(root, download=False)
    assert train.classes == test.classes == ("cat", "dog", "frog")
    assert train.images.shape == (12, 3, 8, 8) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # PNG is lossless: the decoded pixels are the saved ones
    saved = np.asarray(Image.open(root / "train" / "dog" / "001.png"))
    assert torch.equal(train.images[5], torch.from_numpy(saved.copy()).permute(2, 0, 1))


def test_image_folder_is_found_inside_cifar10_jpeg_and_cached(tmp_path):
    _write_tree(tmp_path / "cifar10-jpeg", suffix=".jpg")
    assert find_image_folder(tmp_path) == tmp_path / "cifar10-jpeg"
    first = load_image_folder(tmp_path / "cifar10-jpeg" / "train")
    assert list((tmp_path / "cifar10-jpeg").glob(".decoded-train-*.pt")), "decoded tensor should be cached"
    again = load_image_folder(tmp_path / "cifar10-jpeg" / "train")
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)


def test_images_of_different_sizes_are_refused_with_a_hint(tmp_path):
    root = _write_tree(tmp_path)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(root / "train" / "cat" / "999.png")
    with pytest.raises(ValueError, match="resize the data set"):
        load_image_folder(root / "train", cache=False)


def test_torchvision_layout_loads(tmp_path, monkeypatch):
    """torchvision's CIFAR-10 layout, written by hand in its pickle format (no download)."""
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 3) for i in range(1, 6)] + [("test_batch", 2)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(n)]}
        with open(base / name, "wb") as f:
            pickle.dump(batch, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"]}, f)
    # torchvision checks the files' md5 sums; this synthetic copy cannot match them
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    train, test = load_cifar10(tmp_path, download=False)
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (2, 3, 32, 32)
    assert train.classes[0] == "airplane" and train.labels[:3].tolist() == [0, 1, 2]
    raw = pickle.load(open(base / "data_batch_1", "rb"))["data"][0]
    assert torch.equal(train.images[0], torch.from_numpy(raw).view(3, 32, 32))


def test_missing_data_names_both_layouts_and_the_variable(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path / "nothing", download=False)
    message = str(info.value)
    assert "train/<class>" in message and "cifar-10-batches-py" in message and "VIT_DATA_DIR" in message


def test_channel_stats_match_numpy():
    images = torch.randint(0, 256, (20, 3, 5, 6), dtype=torch.uint8)
    mean, std = channel_stats(images, batch=7)
    x = images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=1e-8)


def test_crop_and_flip_keep_shape_and_dtype_and_are_shifts_of_the_image():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).remainder(251).add(1).to(torch.uint8).view(2, 3, 8, 8)
    aug = Augment((0.5,) * 3, (0.25,) * 3, train=True, padding=2, flip=True)
    out = aug.geometric(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    for i in range(2):  # every output is a crop of the zero-padded image or of its mirror
        padded = torch.nn.functional.pad(images[i], (2, 2, 2, 2))
        candidates = [padded[:, y:y + 8, x:x + 8] for y in range(5) for x in range(5)]
        candidates += [c.flip(2) for c in candidates]
        assert any(torch.equal(out[i], c) for c in candidates)


def test_augmentation_differs_per_image_in_a_batch():
    images = torch.randint(1, 256, (1, 3, 16, 16), dtype=torch.uint8).expand(64, -1, -1, -1).contiguous()
    out = Augment((0.5,) * 3, (0.25,) * 3, train=True, padding=4).geometric(images, torch.Generator().manual_seed(1))
    assert len({bytes(o.numpy()) for o in out}) > 20, "crops and flips must be drawn per image, not per batch"


def test_normalize_range_and_test_transform_is_deterministic():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 4, 4)
    aug = Augment((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), train=False)
    out = aug(images)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[0], torch.full((3, 4, 4), -2.0))
    torch.testing.assert_close(out[1], torch.full((3, 4, 4), 2.0))
    assert torch.equal(aug(images), out)


@pytest.mark.parametrize("policy", ["trivialaugment", "randaugment"])
def test_policies_keep_uint8_shape(policy):
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = Augment((0.5,) * 3, (0.25,) * 3, train=True, policy=policy)(images)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="trivialaugment"):
        Augment((0.5,), (0.5,), train=True, policy="fancy")


def _toy(n=50, classes=5):
    return ImageSet(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8), torch.arange(n) % classes,
                    tuple(f"c{i}" for i in range(classes)))


def test_batch_loader_covers_every_image_once_per_epoch_and_resumes():
    data = _toy()
    loader = BatchLoader(data, 16, Augment((0.5,) * 3, (0.25,) * 3, train=False), shuffle=True, seed=3)
    assert len(loader) == 4
    labels = torch.cat([y for _, y in loader])
    assert sorted(labels.tolist()) == sorted(data.labels.tolist())
    state = loader.state_dict()
    next_epoch = [y for _, y in loader]
    loader.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(next_epoch, [y for _, y in loader]))


def test_make_loader_picks_workers_only_for_per_image_policies_on_cpu():
    data = _toy()
    common = dict(mean=(0.5,) * 3, std=(0.25,) * 3, device="cpu")
    assert isinstance(make_loader(data, 8, train=True, **common), BatchLoader)
    assert isinstance(make_loader(data, 8, train=False, policy="trivialaugment", **common), BatchLoader)
    worker = make_loader(data, 8, train=True, policy="trivialaugment", num_workers=1, **common)
    assert isinstance(worker, WorkerLoader)
    x, y = next(iter(worker))
    assert x.shape == (8, 3, 8, 8) and x.dtype == torch.float32 and y.shape == (8,)


def test_mixup_and_cutmix_targets_are_distributions():
    images = torch.randn(8, 3, 16, 16)
    labels = torch.arange(8) % 4
    same, onehot = mixup_cutmix(images, labels, 4)
    assert same is images and torch.equal(onehot.argmax(1), labels)
    for kw in (dict(mixup_alpha=0.8), dict(cutmix_alpha=1.0)):
        mixed, targets = mixup_cutmix(images, labels, 4, generator=torch.Generator().manual_seed(0), **kw)
        assert mixed.shape == images.shape and targets.shape == (8, 4)
        torch.testing.assert_close(targets.sum(1), torch.ones(8))


def test_normalize_scales_uint8_and_standardises_each_channel():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    out = normalize(images, (0.5, 0.5, 0.0), (0.5, 0.25, 1.0))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([-1.0, -2.0, 0.0]))
    assert torch.allclose(out[1, :, 0, 0], torch.tensor([1.0, 2.0, 1.0]))
    assert torch.equal(normalize(images.float() / 255, (0.5,) * 3, (0.5,) * 3), normalize(images, (0.5,) * 3, (0.5,) * 3))
