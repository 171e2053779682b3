"""Batched TrivialAugment (policies.py): what torchvision computes, for a whole batch at once."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from vit_from_scratch.loaders import Augment, BatchLoader, make_loader
from vit_from_scratch.data import ImageSet
from vit_from_scratch.policies import NUM_LEVELS, OPERATIONS, apply_operations, draw_operations, trivial_augment

NAMES = list(OPERATIONS)


def _images(n=8, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    smooth = torch.rand(n, 3, size // 4, size // 4, generator=g)  # some structure, not only noise
    big = torch.nn.functional.interpolate(smooth, size=(size, size), mode="bilinear")
    noise = torch.rand(n, 3, size, size, generator=g) * 0.2
    return ((big * 0.8 + noise) * 255).to(torch.uint8)


def _one(name, strength, images):
    op = torch.full((len(images),), NAMES.index(name))
    return apply_operations(images, op, torch.full((len(images),), float(strength), dtype=torch.float64))


def _reference(name, s, image):
    """torchvision's own function for one image, as TrivialAugmentWide calls it."""
    import math
    if name == "identity":
        return image
    if name == "shear_x":
        return TF.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(math.atan(s)), 0.0],
                         interpolation=TF.InterpolationMode.NEAREST, fill=None, center=[0, 0])
    if name == "shear_y":
        return TF.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, math.degrees(math.atan(s))],
                         interpolation=TF.InterpolationMode.NEAREST, fill=None, center=[0, 0])
    if name == "translate_x":
        return TF.affine(image, angle=0.0, translate=[int(s), 0], scale=1.0, shear=[0.0, 0.0],
                         interpolation=TF.InterpolationMode.NEAREST)
    if name == "translate_y":
        return TF.affine(image, angle=0.0, translate=[0, int(s)], scale=1.0, shear=[0.0, 0.0],
                         interpolation=TF.InterpolationMode.NEAREST)
    if name == "rotate":
        return TF.rotate(image, angle=s, interpolation=TF.InterpolationMode.NEAREST)
    if name == "brightness":
        return TF.adjust_brightness(image, 1.0 + s)
    if name == "color":
        return TF.adjust_saturation(image, 1.0 + s)
    if name == "contrast":
        return TF.adjust_contrast(image, 1.0 + s)
    if name == "sharpness":
        return TF.adjust_sharpness(image, 1.0 + s)
    if name == "posterize":
        return TF.posterize(image, bits=int(s))
    if name == "solarize":
        return TF.solarize(image, threshold=255.0 * s)
    if name == "autocontrast":
        return TF.autocontrast(image)
    return TF.equalize(image)


GEOMETRIC = {"shear_x", "shear_y", "rotate"}  # nearest-neighbour lookups may round a border pixel apart


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("strength", [0.4, -0.7, 0.99])
def test_every_operation_computes_what_torchvision_computes(name, strength):
    images = _images()
    if name in ("translate_x", "translate_y"):
        strength *= 20  # pixels
    elif name == "rotate":
        strength *= 100  # degrees
    elif name == "posterize":
        strength = 3 if strength > 0 else 6  # bits kept
    elif name == "solarize":
        strength = abs(strength)  # threshold as a fraction of 255
    ours = _one(name, strength, images)
    theirs = torch.stack([_reference(name, strength, im) for im in images])
    diff = (ours.int() - theirs.int()).abs()
    if name in GEOMETRIC:
        assert (diff > 0).float().mean() < 0.02, f"{name}: {(diff > 0).float().mean():.3f} of the pixels differ"
    else:
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01, name


def test_translation_shifts_exactly_and_zero_strength_changes_nothing():
    images = _images(4)
    moved = _one("translate_x", 5.0, images)
    assert torch.equal(moved[..., 5:], images[..., :-5]) and not moved[..., :5].any()
    for name in ("shear_x", "shear_y", "rotate", "translate_y", "brightness", "color", "contrast", "sharpness"):
        assert torch.equal(_one(name, 0.0, images), images), name


def test_each_image_gets_its_own_operation_and_strength():
    images = _images(6)
    op = torch.tensor([NAMES.index(n) for n in ("identity", "brightness", "brightness", "solarize", "rotate",
                                                "posterize")])
    strength = torch.tensor([0.0, 0.5, -0.5, 0.5, 90.0, 2.0], dtype=torch.float64)
    out = apply_operations(images, op, strength)
    for i in range(6):
        expected = _reference(NAMES[op[i]], strength[i].item(), images[i])
        assert (out[i].int() - expected.int()).abs().max() <= 1, i


def test_draws_are_uniform_replayable_and_in_torchvisions_ranges():
    op, strength = draw_operations(20000, torch.Generator().manual_seed(0))
    counts = torch.bincount(op, minlength=len(NAMES)).float()
    assert counts.min() > 0.85 * 20000 / len(NAMES) and counts.max() < 1.15 * 20000 / len(NAMES)
    for k, name in enumerate(NAMES):
        s = strength[op == k]
        if name == "posterize":
            assert set(s.tolist()) <= set(range(2, 9)) and {2.0, 8.0} <= set(s.tolist())
        elif name == "solarize":
            assert s.min() >= 0 and s.max() <= 1
        else:
            largest, signed = OPERATIONS[name]
            assert s.abs().max() <= largest + 1e-9 and ((s < 0).any() if signed else (s >= 0).all())
            assert len(set(s.abs().tolist())) <= NUM_LEVELS
    again = draw_operations(20000, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], op) and torch.equal(again[1], strength)


def test_trivial_augment_keeps_shape_dtype_and_replays_with_its_generator():
    images = _images(64)
    a = trivial_augment(images, torch.Generator().manual_seed(1))
    b = trivial_augment(images, torch.Generator().manual_seed(1))
    assert a.shape == images.shape and a.dtype == torch.uint8 and torch.equal(a, b)
    assert not torch.equal(a, trivial_augment(images, torch.Generator().manual_seed(2)))
    changed = (a != images).flatten(1).any(1).float().mean()
    assert 0.6 < changed < 1.0  # identity and zero strengths leave some images as they were


def test_bad_input_says_what_is_wrong():
    with pytest.raises(ValueError, match="uint8"):
        trivial_augment(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="one operation and one strength per image"):
        apply_operations(_images(2), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.float64))


def test_the_batch_loader_runs_trivialaugment_batched_and_the_worker_path_stays_torchvisions():
    data = ImageSet(_images(32), torch.arange(32) % 4, ("a", "b", "c", "d"))
    half = (0.5,) * 3
    loader = make_loader(data, 16, train=True, mean=half, std=half, policy="trivialaugment", augment_on="device",
                         seed=0)
    assert isinstance(loader, BatchLoader)
    calls = []
    loader.augment.policy = lambda image: calls.append(1) or image  # the per-image policy must not run
    x, _ = next(iter(loader))
    assert x.shape == (16, 3, 32, 32) and not calls
    assert type(make_loader(data, 16, train=True, mean=half, std=half, policy="trivialaugment",
                            num_workers=0)).__name__ == "WorkerLoader"  # a CPU's default
    with pytest.raises(ValueError, match="augment_on must be one of"):
        make_loader(data, 16, train=True, mean=half, std=half, augment_on="gpu")
    # calling Augment directly still applies torchvision's per-image policy
    aug = Augment(half, half, train=True, policy="trivialaugment")
    aug.policy = lambda image: calls.append(1) or image
    aug(data.images[:4])
    assert len(calls) == 4
