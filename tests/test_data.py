"""Data: image-folder and torchvision layouts, the missing-data error, batched augmentation, loaders."""

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit_from_scratch.data import (ImageSet, channel_stats, check_classes, default_data_dir, find_image_folder,
                                   load_cifar10, load_image_folder, normalize, to_8bit, validation_split)
from vit_from_scratch.loaders import Augment, BatchLoader, WorkerLoader, make_loader, mixup_cutmix


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
    half = (0.5,) * 3
    assert torch.equal(normalize(images.float() / 255, half, half), normalize(images, half, half))


# --------------------------------------------------------------------------- issue 13: faults and bad input


def test_test_split_with_other_class_folders_is_refused_naming_them(tmp_path):
    root = _write_tree(tmp_path / "d")
    (root / "test" / "dog").rename(root / "test" / "dgo")  # a renamed test class
    with pytest.raises(ValueError, match="missing dog.*not in the training split: dgo") as info:
        load_cifar10(root, download=False)
    assert "rename" in str(info.value)
    (root / "test" / "dgo").rename(root / "test" / "dog")
    (root / "test" / "cow").mkdir()  # an extra test class
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "test" / "cow" / "0.png")
    with pytest.raises(ValueError, match="not in the training split: cow"):
        load_cifar10(root, download=False)


def test_missing_test_class_no_longer_shifts_the_labels(tmp_path):
    root = _write_tree(tmp_path / "d")
    import shutil
    shutil.rmtree(root / "test" / "cat")
    with pytest.raises(ValueError, match="missing cat"):
        load_image_folder(root / "test", classes=("cat", "dog", "frog"))


def test_expected_class_list_sets_the_label_order_also_through_the_cache(tmp_path):
    root = _write_tree(tmp_path / "d")
    plain = load_image_folder(root / "test")
    order = ("frog", "cat", "dog")
    for _ in range(2):  # decoded, then from the cache written in the sorted order
        ordered = load_image_folder(root / "test", classes=order)
        assert ordered.classes == order
        assert torch.equal(ordered.images, plain.images)  # the same images, in the same order
        assert [order[i] for i in ordered.labels] == [plain.classes[i] for i in plain.labels]


def test_check_classes_demands_the_same_names_in_the_same_order():
    check_classes(("a", "b"), ("a", "b"), "the test set")
    with pytest.raises(ValueError, match="the validation set .*missing b"):
        check_classes(("a", "b"), ("a",), "the validation set")
    with pytest.raises(ValueError, match="another order"):
        check_classes(("a", "b"), ("b", "a"), "the test set")


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_damaged_cache_is_reported_deleted_and_rebuilt(tmp_path, damage):
    root = _write_tree(tmp_path / "d")
    first = load_image_folder(root / "train")
    (cache,) = root.glob(".decoded-train-*.pt")
    data = cache.read_bytes()
    cache.write_bytes({"empty": b"", "truncated": data[:len(data) // 2], "garbage": b"not a tensor" * 9}[damage])
    with pytest.warns(UserWarning, match=f"{cache.name}.*deleted and rebuilt"):
        again = load_image_folder(root / "train")
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert cache.read_bytes() == data  # rebuilt: the same cache again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image_folder(root / "train")  # and read without complaint


def test_cache_written_with_the_process_id_in_its_temporary_name(tmp_path, monkeypatch):
    root = _write_tree(tmp_path / "d")
    written = []
    save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (written.append(Path(f).name), save(obj, f, *a, **k)))
    load_image_folder(root / "train")
    assert len(written) == 1 and written[0].startswith(".") and written[0].endswith(f".tmp-{os.getpid()}")
    assert not [p for p in root.iterdir() if ".tmp-" in p.name], "no temporary file is left behind"


def test_truncated_image_error_names_the_file(tmp_path):
    root = _write_tree(tmp_path / "d", suffix=".jpg")
    bad = root / "train" / "dog" / "002.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(OSError, match="002.jpg"):
        load_image_folder(root / "train", cache=False)


def test_hidden_files_and_folders_are_skipped(tmp_path):
    root = _write_tree(tmp_path / "d", suffix=".jpg")
    (root / "train" / "cat" / "._000.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    data = load_image_folder(root / "train", cache=False)
    assert data.classes == ("cat", "dog", "frog") and len(data) == 12


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = _write_tree(tmp_path / "d")
    (root / "train" / "emu").mkdir()
    (root / "train" / "emu" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="emu.*hold no images"):
        load_image_folder(root / "train")


def test_missing_data_dir_is_not_created_without_network(tmp_path, monkeypatch):
    import vit_from_scratch.data as data_module

    typo = tmp_path / "dtaa" / "cifar"
    monkeypatch.setenv("VIT_DATA_DIR", str(typo))
    monkeypatch.setattr(data_module, "network_available", lambda *args, **kwargs: False)
    assert default_data_dir() == typo and not typo.exists()
    with pytest.raises(FileNotFoundError, match="does not exist.*VIT_DATA_DIR") as info:
        load_cifar10()  # download=None: would try
    assert "cannot be reached" in str(info.value)
    assert not (tmp_path / "dtaa").exists()


def test_failed_download_removes_the_folders_it_created(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    import vit_from_scratch.data as data_module

    def broken_download(url, download_root, *args, **kwargs):  # torchvision creates the folder first
        os.makedirs(download_root, exist_ok=True)
        raise ConnectionResetError("connection reset")

    monkeypatch.setattr(data_module, "network_available", lambda *args, **kwargs: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", broken_download)
    with pytest.raises(FileNotFoundError, match="connection reset"):
        load_cifar10(tmp_path / "new" / "data", download=True)
    assert not (tmp_path / "new").exists()


def _epochs(loader, epochs):
    return [[(x.clone(), y.clone()) for x, y in loader] for _ in range(epochs)]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


def test_worker_loader_resumes_exactly_with_persistent_workers():
    """Epoch k from a fresh loader given the state after epoch k-1 equals the uninterrupted epoch k."""
    data = _toy(24)
    common = dict(mean=(0.5,) * 3, std=(0.25,) * 3, device="cpu", policy="trivialaugment", seed=7)
    straight = make_loader(data, 8, train=True, num_workers=2, **common)
    assert isinstance(straight, WorkerLoader)
    first = _epochs(straight, 1)[0]
    state = pickle.loads(pickle.dumps(straight.state_dict()))
    rest = _epochs(straight, 2)
    resumed = make_loader(data, 8, train=True, num_workers=2, **common)
    resumed.load_state_dict(state)
    again = _epochs(resumed, 2)
    assert _same(rest[0], again[0]) and _same(rest[1], again[1])
    assert not _same(first, rest[0]), "every epoch draws new crops and policies"
    inline = make_loader(data, 8, train=True, num_workers=0, **common)  # in this process
    assert isinstance(inline, WorkerLoader)
    inline.load_state_dict(state)  # the worker count does not change the batches: it may change on resume
    assert _same(_epochs(inline, 1)[0], rest[0])


def test_worker_loader_leaves_the_global_random_stream_alone():
    data = _toy(8)
    loader = WorkerLoader(data, 4, Augment((0.5,) * 3, (0.25,) * 3, train=True, policy="trivialaugment"),
                          shuffle=True, num_workers=0)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    _epochs(loader, 1)
    assert torch.equal(torch.rand(3), expected)


def test_worker_loader_accepts_an_old_generator_state_with_a_warning():
    data = _toy(8)
    loader = WorkerLoader(data, 4, Augment((0.5,) * 3, (0.25,) * 3, train=True, policy="trivialaugment"),
                          shuffle=True, num_workers=0)
    with pytest.warns(UserWarning, match="predates exact resume"):
        loader.load_state_dict({"generator": torch.Generator().manual_seed(1).get_state()})
    assert len(_epochs(loader, 1)[0]) == 2


def test_batch_loader_accepts_a_worker_loader_state_with_a_warning():
    loader = BatchLoader(_toy(8), 4, Augment((0.5,) * 3, (0.25,) * 3, train=True), shuffle=True)
    with pytest.warns(UserWarning, match="written by a WorkerLoader"):
        loader.load_state_dict({"seed": 3, "epoch": 2})
    assert len(_epochs(loader, 1)[0]) == 2


def test_cifar10_from_the_environment_names_its_source_without_the_machines_path(tmp_path, monkeypatch):
    _write_tree(tmp_path / "cifar10-jpeg")
    monkeypatch.setenv("VIT_DATA_DIR", str(tmp_path))
    train, test = load_cifar10()
    assert train.source == "$VIT_DATA_DIR/cifar10-jpeg/train" and test.source == "$VIT_DATA_DIR/cifar10-jpeg/test"
    train, _ = load_cifar10(tmp_path)  # a folder the caller names is shown as given
    assert train.source == str(tmp_path / "cifar10-jpeg" / "train")


def _labelled(counts):
    """A toy set whose image i holds its number i in two channels (i % 256, i // 256)."""
    labels = torch.cat([torch.full((k,), c) for c, k in enumerate(counts)])
    i = torch.arange(len(labels))
    images = torch.stack([i % 256, i // 256, torch.zeros_like(i)], 1).to(torch.uint8).view(-1, 3, 1, 1)
    return ImageSet(images, labels, tuple(f"c{c}" for c in range(len(counts))), "toy")


def _ids(data):
    return set((data.images[:, 0, 0, 0].long() + 256 * data.images[:, 1, 0, 0].long()).tolist())


def test_validation_split_is_stratified_disjoint_complete_and_fixed():
    data = _labelled([500, 300, 200])
    train, val = validation_split(data, 100, seed=3)
    assert len(val) == 100 and len(train) == 900
    assert torch.bincount(val.labels).tolist() == [50, 30, 20]  # every class its share
    assert not _ids(train) & _ids(val) and _ids(train) | _ids(val) == set(range(1000))
    again_train, again_val = validation_split(data, 0.1, seed=3)  # a fraction: the same split
    assert torch.equal(again_val.images, val.images) and torch.equal(again_train.images, train.images)
    assert _ids(validation_split(data, 100, seed=4)[1]) != _ids(val)  # another seed, other images


def test_validation_split_rounds_to_the_exact_count_and_refuses_bad_sizes():
    data = _labelled([7, 7, 6])  # 20 images; 3 for validation cannot be exactly proportional
    train, val = validation_split(data, 3)
    assert len(val) == 3 and torch.bincount(val.labels, minlength=3).tolist() == [1, 1, 1]
    for bad in (0, 20, 1.0, 0.0, -0.5, True, "10%"):
        with pytest.raises(ValueError, match="count between 1 and 19"):
            validation_split(data, bad)


# --------------------------------------------------------------------------- issue 28: faults, second probe


def test_cache_sees_an_image_replaced_by_another_of_the_same_size_and_time(tmp_path):
    root = _write_tree(tmp_path / "d", suffix=".bmp")  # BMP: every 8x8 image has the same byte size
    first = load_image_folder(root / "train")
    image = root / "train" / "dog" / "001.bmp"
    before = image.stat()
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(image)  # other pixels, the same size...
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))  # ...and time, as cp -p or tar leave it
    assert image.stat().st_size == before.st_size
    again = load_image_folder(root / "train")
    assert (again.images[5] == 7).all() and not torch.equal(again.images[5], first.images[5])
    assert torch.equal(again.images[6:], first.images[6:])


def test_16_bit_grayscale_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    levels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16  # 0..65520, a 16-bit gradient
    (tmp_path / "train" / "gray").mkdir(parents=True)
    Image.fromarray(levels).save(tmp_path / "train" / "gray" / "0.png")
    assert Image.open(tmp_path / "train" / "gray" / "0.png").mode == "I;16"
    data = load_image_folder(tmp_path / "train", cache=False)
    expected = torch.from_numpy(np.round(levels / 257).astype(np.uint8))
    assert data.images.shape == (1, 3, 64, 64) and all(torch.equal(c, expected) for c in data.images[0])
    assert (data.images == 255).float().mean() < 0.01  # not 99.6% saturated


def test_to_8bit_scales_32_bit_integer_images_holding_16_bit_values_and_refuses_wider_ones():
    sixteen = Image.fromarray(np.array([[0, 257, 65535]], np.int32))  # mode "I", as older Pillow opens 16-bit PNGs
    assert sixteen.mode == "I" and np.array(to_8bit(sixteen)).tolist() == [[0, 1, 255]]
    eight = Image.fromarray(np.array([[0, 9, 255]], np.uint8))
    assert to_8bit(eight) is eight  # 8-bit images pass unchanged
    with pytest.raises(ValueError, match="0..65535"):
        to_8bit(Image.fromarray(np.array([[0, 70000]], np.int32)))


def test_nearest_similarity_finds_copies_across_brightness_and_chunks():
    from vit_from_scratch.data import nearest_similarity

    g = torch.Generator().manual_seed(0)
    reference = torch.randint(0, 256, (50, 3, 8, 8), generator=g, dtype=torch.uint8)
    brighter = (reference[[7, 31]].float() * 0.5 + 60).round().to(torch.uint8)  # re-exposed copies
    fresh = torch.randint(0, 256, (20, 3, 8, 8), generator=g, dtype=torch.uint8)
    sim, index = nearest_similarity(torch.cat([brighter, fresh]), reference)
    assert index[:2].tolist() == [7, 31] and (sim[:2] > 0.999).all()
    assert sim[2:].max() < 0.5, "unrelated noise images are not near-copies"
    small = nearest_similarity(torch.cat([brighter, fresh]), reference, chunk=3)
    assert torch.allclose(small[0], sim) and torch.equal(small[1], index)
    with pytest.raises(ValueError, match="one image shape"):
        nearest_similarity(fresh, reference[:, :, :4])


def test_nearest_similarity_tells_a_leaky_split_from_a_clean_one():
    """A held-out set built from noisy copies of training images has near-copies for every image; a held-out
    set of other images from the same source has none: the measure can fail a split."""
    from vit_from_scratch.data import nearest_similarity

    g = torch.Generator().manual_seed(1)
    smooth = torch.nn.functional.interpolate(torch.rand(120, 3, 4, 4, generator=g), size=16, mode="bilinear")
    images = (smooth * 255).round().to(torch.uint8)  # 120 different smooth pictures
    train, clean = images[:100], images[100:]
    noisy = (train[:20].float() + 8 * torch.randn(20, 3, 16, 16, generator=g)).clamp(0, 255).to(torch.uint8)
    leaky_sim, _ = nearest_similarity(noisy, train)
    clean_sim, _ = nearest_similarity(clean, train)
    assert (leaky_sim >= 0.95).all() and (clean_sim < 0.95).all()
