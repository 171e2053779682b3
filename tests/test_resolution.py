"""Changing resolution (chapter 6's progressive resizing): images with the data, the model with the model."""

import pytest
import torch
from torch import nn

from vit_from_scratch.data import ImageSet, resize_images
from vit_from_scratch.model import ViTConfig, VisionTransformer, to_resolution
from vit_from_scratch.positions import resize_pos_embed

from _helpers import randomise

TINY = dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


def test_resize_images_keeps_labels_and_constant_images():
    images = torch.full((5, 3, 32, 32), 77, dtype=torch.uint8)
    data = ImageSet(images, torch.arange(5), tuple("abcde"))
    small = resize_images(data, 16)
    assert small.images.shape == (5, 3, 16, 16) and small.images.dtype == torch.uint8
    assert (small.images == 77).all() and torch.equal(small.labels, data.labels)
    with pytest.raises(ValueError, match="positive number of pixels"):
        resize_images(data, 0)


def test_to_resolution_copies_weights_and_resizes_positions():
    model = randomise(VisionTransformer(ViTConfig(**TINY)))
    model.set_grad_checkpointing(True)
    big = to_resolution(model, 32)
    old, new = model.state_dict(), big.state_dict()
    assert big.config.image_size == 32 and big.grad_checkpointing
    assert torch.equal(new["pos_embed"], resize_pos_embed(old["pos_embed"], (8, 8)))
    assert all(torch.equal(old[k], new[k]) for k in old if k != "pos_embed")
    assert big(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_to_resolution_rebuilds_a_fixed_sincos_table():
    model = VisionTransformer(ViTConfig(**TINY, pos_embed_type="sincos"))
    big = to_resolution(model, 24)
    assert torch.equal(big.pos_embed, VisionTransformer(ViTConfig(**{**TINY, "image_size": 24},
                                                                  pos_embed_type="sincos")).pos_embed)


def test_to_resolution_explains_a_size_the_patches_do_not_divide():
    with pytest.raises(ValueError, match="does not divide the image size"):
        to_resolution(VisionTransformer(ViTConfig(**TINY)), 30)
    with pytest.raises(TypeError, match="expected a VisionTransformer"):
        to_resolution(nn.Linear(2, 2), 32)
