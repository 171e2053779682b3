"""Issue 27's recipe levers that the anchor recipe (Lee et al. 2021, after DeiT) uses and the package lacked:
random erasing and repeated augmentation. What they draw, that they replay exactly, and their errors."""

import math
from dataclasses import replace

import pytest
import torch

from _tiny_runs import TEST, TRAIN, tiny_config
from vit_from_scratch.data import ImageSet
from vit_from_scratch.loaders import Augment, BatchLoader, WorkerLoader, make_loader
from vit_from_scratch.training import fit

MEAN, STD = (0.5,) * 3, (0.25,) * 3


def _images(n=8, side=32, seed=0):
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _erased(images, erasing, seed=0):
    """The augmented batch without and with erasing, from the same generator seed, and the changed pixels."""
    plain = Augment(MEAN, STD, train=True, padding=4)(images, torch.Generator().manual_seed(seed))
    out = Augment(MEAN, STD, train=True, padding=4, erasing=erasing)(images, torch.Generator().manual_seed(seed))
    return plain, out, (out != plain).any(1)  # (B, H, W): pixels with any channel replaced


def test_erasing_replaces_one_rectangle_per_image_of_the_stated_size_and_shape():
    images = _images(64)
    plain, out, changed = _erased(images, 1.0)
    assert out.shape == plain.shape and out.dtype == torch.float32
    for b in range(len(images)):
        rows, cols = changed[b].any(1).nonzero().flatten(), changed[b].any(0).nonzero().flatten()
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        box = changed[b, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and int(changed[b].sum()) == h * w, "the erased pixels form one filled rectangle"
        assert 0.015 <= h * w / 32**2 <= 0.36, (b, h, w)  # 2% to 1/3 of the image, up to rounding
        assert 0.25 <= h / w <= 4.0, (b, h, w)  # aspect 0.3 to 3.3, up to rounding and the image's edges
    noise = out[changed.unsqueeze(1).expand_as(out)]
    assert abs(noise.mean()) < 0.1 and abs(noise.std() - 1) < 0.1, "standard normal noise"


def test_erasing_hits_the_stated_share_of_images():
    _, _, changed = _erased(_images(2000, side=8), 0.5)
    share = changed.flatten(1).any(1).float().mean().item()
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / 2000), share


def test_erasing_off_draws_nothing_so_old_runs_replay_unchanged():
    images = _images()
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    plain = Augment(MEAN, STD, train=True, padding=4)(images, a)
    off = Augment(MEAN, STD, train=True, padding=4, erasing=0.0)(images, b)
    assert torch.equal(plain, off) and torch.equal(a.get_state(), b.get_state())


def test_erasing_is_reproducible_training_only_and_checked():
    images = _images()
    augment = Augment(MEAN, STD, train=True, erasing=0.7)
    runs = [augment(images, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(*runs)
    assert not torch.equal(runs[0], augment(images, torch.Generator().manual_seed(6)))
    evaluation = Augment(MEAN, STD, train=False, erasing=0.7)
    assert torch.equal(evaluation(images), Augment(MEAN, STD, train=False)(images)), "evaluation never erases"
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="erasing is a probability"):
            Augment(MEAN, STD, train=True, erasing=bad)


def test_erasing_runs_on_the_batched_trivialaugment_path_too():
    augment = Augment(MEAN, STD, train=True, policy="trivialaugment", erasing=1.0)
    out = augment.batch(_images(16), torch.Generator().manual_seed(0))
    plain = Augment(MEAN, STD, train=True, policy="trivialaugment").batch(_images(16), torch.Generator().manual_seed(0))
    changed = (out != plain).any(1).flatten(1)
    assert changed.any(1).all() and (changed.float().mean(1) <= 0.36).all()


def _toy(n=48, classes=4, side=8):
    return ImageSet(_images(n, side), torch.arange(n) % classes, tuple(f"c{i}" for i in range(classes)))


def _indices(loader, data):
    """Which image each position of an epoch showed, found by its label-free identity: the test images are all
    different, and an un-augmented loader returns them exactly."""
    flat = {bytes(Augment(MEAN, STD, train=False)(data.images[i:i + 1]).numpy()): i for i in range(len(data))}
    return [flat[bytes(x.unsqueeze(0).numpy())] for batch, _ in loader for x in batch]


@pytest.mark.parametrize("kind", ["batch", "workers"])
def test_repeated_augmentation_shows_a_third_of_the_images_three_times_in_a_row(kind):
    data = _toy()
    plain = Augment(MEAN, STD, train=True, padding=0, flip=False)
    cls = BatchLoader if kind == "batch" else WorkerLoader
    extra = {} if kind == "batch" else {"num_workers": 0}
    loader = cls(data, 12, plain, shuffle=True, drop_last=True, seed=1, repeats=3, **extra)
    assert len(loader) == 4, "the epoch keeps its number of batches"
    first, second = _indices(loader, data), _indices(loader, data)
    for epoch in (first, second):
        assert len(epoch) == 48 and len(set(epoch)) == 16
        assert all(epoch[i] == epoch[i + 1] == epoch[i + 2] for i in range(0, 48, 3)), "copies in a row"
    assert set(first) != set(second), "every epoch draws its images afresh"


@pytest.mark.parametrize("kind", ["batch", "workers"])
def test_repeated_copies_are_augmented_independently(kind):
    data = _toy()
    policy = "trivialaugment" if kind == "workers" else None  # on a CPU: worker processes, else batched
    loader = make_loader(data, 12, train=True, mean=MEAN, std=STD, padding=2, repeats=3, seed=0, policy=policy,
                         num_workers=0)
    assert isinstance(loader, BatchLoader if kind == "batch" else WorkerLoader)
    x = torch.cat([batch for batch, _ in loader])
    differ = sum(not torch.equal(x[i], x[i + 1]) for i in range(0, 48, 3))
    assert differ >= 12, f"only {differ} of 16 first and second copies differ"


def test_repeats_are_refused_where_they_mean_nothing():
    data = _toy()
    with pytest.raises(ValueError, match="evaluation loader shows every image once"):
        make_loader(data, 12, train=False, mean=MEAN, std=STD, repeats=3)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="repeats must be a whole number"):
            BatchLoader(data, 12, Augment(MEAN, STD, train=True), shuffle=True, repeats=bad)
    with pytest.raises(ValueError, match="repeats must be 1"):
        tiny_config(repeats=0)
    with pytest.raises(TypeError, match="repeats must be a whole number"):
        tiny_config(repeats=2.5)
    for bad in (1.5, -0.5, float("nan")):
        with pytest.raises((TypeError, ValueError), match="erasing must be"):
            tiny_config(erasing=bad)


def _quiet(config, **kw):
    return fit(config, **{**dict(train_set=TRAIN, test_set=TEST, device="cpu", progress=False, log=None), **kw})


@pytest.mark.parametrize("levers", [dict(erasing=0.5, repeats=3),
                                    dict(erasing=0.5, repeats=2, policy="trivialaugment", num_workers=0)])
def test_a_run_with_both_levers_resumes_bit_for_bit_inside_an_epoch(tmp_path, levers):
    config = tiny_config(**levers)
    straight = _quiet(config, out_dir=tmp_path / "a")
    _quiet(replace(config, max_steps=3), out_dir=tmp_path / "b")  # stopped inside the first epoch
    torch.manual_seed(12345)
    resumed = _quiet(config, out_dir=tmp_path / "b", resume=True)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), f"{k} differs after resume"
    plain = _quiet(tiny_config())
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]
    assert straight.history[0]["train_loss"] != plain.history[0]["train_loss"], "the levers change the batches"
