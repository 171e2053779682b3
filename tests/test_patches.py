"""patches.py: patchify/unpatchify, Conv2d == Linear, PatchEmbedding shapes and errors."""

import pytest
import torch
from torch import nn

from vit_from_scratch import PatchEmbedding, check_patch_grid, patchify, unpatchify

SIZES = [(2, 3, 32, 32, 4), (1, 1, 28, 28, 7), (3, 4, 48, 64, 16), (1, 3, 224, 224, 16), (2, 2, 12, 18, 3)]


@pytest.mark.parametrize("B,C,H,W,P", SIZES)
def test_patchify_shape_and_exact_round_trip(B, C, H, W, P):
    x = torch.randn(B, C, H, W)
    tokens = patchify(x, P)
    assert tokens.shape == (B, (H // P) * (W // P), C * P * P)
    assert torch.equal(unpatchify(tokens, P, (H, W)), x)


def test_patchify_tokens_are_row_major_patches_in_conv_weight_order():
    x = torch.randn(2, 3, 12, 16)
    tokens = patchify(x, 4)
    w = 16 // 4
    for i in range(3):
        for j in range(4):
            assert torch.equal(tokens[:, i * w + j], x[:, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].reshape(2, -1))


@pytest.mark.parametrize("C,P,D,H,W", [(3, 16, 64, 224, 224), (3, 4, 32, 32, 32), (1, 7, 8, 28, 28), (2, 3, 5, 9, 12)])
def test_conv2d_equals_linear_on_patches(C, P, D, H, W):
    linear = nn.Linear(C * P * P, D).double()
    embed = PatchEmbedding(image_size=(H, W), patch_size=P, in_channels=C, dim=D).double()
    with torch.no_grad():
        embed.proj.weight.copy_(linear.weight.reshape(D, C, P, P))
        embed.proj.bias.copy_(linear.bias)
    x = torch.randn(2, C, H, W, dtype=torch.float64)
    torch.testing.assert_close(embed(x), linear(patchify(x, P)), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("image_size,P,D,C", [(224, 16, 768, 3), (32, 4, 192, 3), (28, 7, 16, 1), ((48, 64), 16, 8, 4)])
def test_patch_embedding_shapes_and_grid(image_size, P, D, C):
    embed = PatchEmbedding(image_size=image_size, patch_size=P, in_channels=C, dim=D)
    H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
    out = embed(torch.randn(2, C, H, W))
    assert embed.grid_size == (H // P, W // P)
    assert embed.num_patches == (H // P) * (W // P)
    assert out.shape == (2, embed.num_patches, D)


def test_patch_that_does_not_divide_gives_clear_error():
    with pytest.raises(ValueError, match=r"patch size \(16, 16\) does not divide the image size \(225, 225\)") as e:
        patchify(torch.randn(1, 3, 225, 225), 16)
    assert "15" in str(e.value)  # suggests a patch size that works
    assert str(e.value).count("225/16") == 1  # a square image: one count, not the same one twice
    with pytest.raises(ValueError, match=r"30/4 = 7.5 patches down and 32/4 = 8 across"):
        check_patch_grid((30, 32), 4)
    with pytest.raises(ValueError, match="does not divide"):
        PatchEmbedding(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="does not divide"):
        check_patch_grid((32, 30), 4)


def test_wrong_rank_channels_and_size_give_clear_errors():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\).*unsqueeze"):
        patchify(torch.randn(3, 32, 32), 4)
    embed = PatchEmbedding(image_size=32, patch_size=4, in_channels=3, dim=8)
    with pytest.raises(ValueError, match="expected 3-channel images, got 1 channel "):
        embed(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"channels-last.*permute\(0, 3, 1, 2\)") as e:
        embed(torch.randn(1, 32, 32, 3))
    assert "in_channels=32" not in str(e.value)
    with pytest.raises(ValueError, match=r"expected images of size \(32, 32\), got \(64, 64\).*resize_pos_embed"):
        embed(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="does not divide"):
        embed(torch.randn(1, 3, 30, 30))


def test_unpatchify_rejects_tokens_that_do_not_fit():
    with pytest.raises(ValueError, match="cannot form a 32x32 image"):
        unpatchify(torch.randn(1, 60, 48), 4, 32)
    with pytest.raises(ValueError, match=r"\(B, N, C\*P\*P\)"):
        unpatchify(torch.randn(60, 48), 4, 32)
