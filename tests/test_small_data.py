"""SPT + LSA (Lee et al., 2021) and CCT (Hassani et al., 2021) against their papers' definitions."""

import pytest
import torch
import torch.nn.functional as F

from vit_from_scratch.model import VisionTransformer, ViTConfig
from vit_from_scratch.recipe import muon_parameters
from vit_from_scratch.small_data import (
    CompactConvTransformer,
    ConvTokenizer,
    LocalitySelfAttention,
    SequencePooling,
    ShiftedPatchTokenization,
    SPTLSAViT,
    shift_image,
)

TINY = dict(image_size=16, patch_size=4, num_classes=5, dim=16, depth=2, num_heads=2, mlp_ratio=2.0)


def test_shift_moves_pixels_and_fills_zeros():
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    down_right = shift_image(x, 1, 2)
    assert down_right[0, 0, 1, 2] == x[0, 0, 0, 0] and down_right[0, 0, 3, 3] == x[0, 0, 2, 1]
    assert (down_right[0, 0, 0] == 0).all() and (down_right[0, 0, :, :2] == 0).all()
    up_left = shift_image(x, -1, -1)
    assert up_left[0, 0, 0, 0] == x[0, 0, 1, 1] and (up_left[0, 0, 3] == 0).all()
    with pytest.raises(ValueError, match="out of view"):
        shift_image(x, 4, 0)


def _shift_by_hand(x, r, c):
    out = torch.zeros_like(x)
    H, W = x.shape[-2:]
    for i in range(H):
        for j in range(W):
            if 0 <= i - r < H and 0 <= j - c < W:
                out[..., i, j] = x[..., i - r, j - c]
    return out


def test_spt_is_layernorm_then_linear_on_patches_of_the_image_and_its_four_diagonal_shifts():
    torch.manual_seed(0)
    spt = ShiftedPatchTokenization(image_size=8, patch_size=4, in_channels=3, dim=6)
    with torch.no_grad():  # a LayerNorm that is not the identity
        spt.norm.weight.normal_()
        spt.norm.bias.normal_()
    x = torch.randn(2, 3, 8, 8)
    s = 2  # half a patch
    stacked = torch.cat([x] + [_shift_by_hand(x, r, c) for r, c in ((-s, -s), (-s, s), (s, -s), (s, s))], dim=1)
    patches = stacked.unfold(2, 4, 4).unfold(3, 4, 4)  # (B, 5C, h, w, P, P)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(2, 4, 5 * 3 * 16)  # (B, N, 5C·P²), (C, P, P) order
    by_hand = F.linear(F.layer_norm(patches, (240,), spt.norm.weight, spt.norm.bias, spt.norm.eps),
                       spt.proj.weight, spt.proj.bias)
    torch.testing.assert_close(spt(x), by_hand)
    assert spt.grid_size == (2, 2) and spt.num_patches == 4 and spt.macs() == 4 * 240 * 6


def test_an_spt_token_sees_beyond_its_own_patch():
    spt = ShiftedPatchTokenization(image_size=16, patch_size=4, in_channels=1, dim=8)
    x = torch.randn(1, 1, 16, 16, requires_grad=True)
    spt(x)[0, 5].sum().backward()  # the token of patch (1, 1): rows and columns 4..7
    rows, cols = torch.nonzero(x.grad[0, 0]).unbind(1)
    assert rows.min() == 2 and rows.max() == 9 and cols.min() == 2 and cols.max() == 9  # half a patch around


def test_spt_rejects_a_patch_that_cannot_be_halved():
    with pytest.raises(ValueError, match="half a patch"):
        ShiftedPatchTokenization(image_size=8, patch_size=1, in_channels=3, dim=4)


def test_lsa_masks_the_diagonal_and_uses_its_learned_scale():
    torch.manual_seed(0)
    lsa = LocalitySelfAttention(8, 2).eval()
    with torch.no_grad():
        lsa.scale.copy_(torch.tensor([0.3, 1.7]))
    x = torch.randn(3, 5, 8)
    q, k, v = lsa.qkv(x).reshape(3, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)  # (B, nh, N, d) each
    scores = (q @ k.transpose(-2, -1)) * torch.tensor([0.3, 1.7]).view(1, 2, 1, 1)
    scores = scores.masked_fill(torch.eye(5, dtype=torch.bool), float("-inf"))  # R^M: no token sees itself
    by_hand = lsa.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(3, 5, 8))
    torch.testing.assert_close(lsa(x), by_hand)
    out, weights = lsa(x, return_attention=True)
    torch.testing.assert_close(out, by_hand)
    assert torch.all(weights.diagonal(dim1=-2, dim2=-1) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 5))


def test_lsa_temperature_starts_at_plain_attention_and_is_learned():
    lsa = LocalitySelfAttention(8, 2)
    torch.testing.assert_close(lsa.scale.detach(), torch.full((2,), 4 ** -0.5))
    lsa(torch.randn(2, 4, 8)).sum().backward()
    assert lsa.scale.grad is not None and lsa.scale.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="two tokens"):
        lsa(torch.randn(2, 1, 8))


def test_spt_lsa_vit_without_either_part_is_the_plain_vit():
    torch.manual_seed(0)
    plain = SPTLSAViT(ViTConfig(**TINY), spt=False, lsa=False).eval()
    vit = VisionTransformer(ViTConfig(**TINY)).eval()
    vit.load_state_dict(plain.state_dict())  # the same keys and shapes
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(plain(x), vit(x))
    assert plain.macs() == ViTConfig(**TINY).macs()


def test_spt_lsa_vit_has_both_parts_trains_with_muon_and_counts_its_macs():
    model = SPTLSAViT(ViTConfig(**TINY))
    assert isinstance(model.patch_embed, ShiftedPatchTokenization)
    assert all(isinstance(block.attn, LocalitySelfAttention) for block in model.blocks)
    assert len(muon_parameters(model)) == 4 * TINY["depth"]  # qkv, proj, fc1, fc2 per block
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    c = ViTConfig(**TINY)
    extra = c.num_patches * (5 * 3 * 16 - 3 * 16) * c.dim  # SPT's wider projection
    assert model.macs() == c.macs() + extra


def test_sequence_pooling_is_a_softmax_weighted_mean_of_the_tokens():
    torch.manual_seed(0)
    pool = SequencePooling(4)
    x = torch.randn(2, 6, 4)
    w = (x @ pool.attention_pool.weight.T + pool.attention_pool.bias).squeeze(-1).softmax(-1)  # (B, N)
    torch.testing.assert_close(pool(x), (w.unsqueeze(-1) * x).sum(1))
    torch.testing.assert_close(pool.weights(x).sum(-1), torch.ones(2))
    torch.nn.init.zeros_(pool.attention_pool.weight)
    torch.testing.assert_close(pool(x), x.mean(1))  # equal scores: the plain mean


def test_conv_tokenizer_is_conv_relu_maxpool_per_layer():
    torch.manual_seed(0)
    tok = ConvTokenizer(image_size=16, in_channels=3, dim=8, channels=(4,))
    x = torch.randn(2, 3, 16, 16)
    conv1, conv2 = [m for m in tok.convs if isinstance(m, torch.nn.Conv2d)]
    h = F.max_pool2d(F.relu(F.conv2d(x, conv1.weight, padding=1)), 3, 2, 1)  # (B, 4, 8, 8)
    h = F.max_pool2d(F.relu(F.conv2d(h, conv2.weight, padding=1)), 3, 2, 1)  # (B, 8, 4, 4)
    torch.testing.assert_close(tok(x), h.flatten(2).transpose(1, 2))
    assert tok.grid_size == (4, 4) and conv1.bias is None
    assert tok.macs() == 16 * 16 * 3 * 4 * 9 + 8 * 8 * 4 * 8 * 9


def test_cct_has_no_class_token_pools_by_sequence_and_counts_its_macs():
    model = CompactConvTransformer(ViTConfig(**TINY), channels=(4,)).eval()
    assert model.cls_token is None and model.pos_embed.shape == (1, 16, 16)
    x = torch.randn(2, 3, 16, 16)
    tokens = model.forward_features(x)  # (B, N, D), normalised
    torch.testing.assert_close(model(x), model.head(model.seq_pool(tokens)))
    c = ViTConfig(**TINY).replace(pool="mean", class_token=False, fc_norm=False)
    plain_embed = c.num_patches * 3 * 16 * c.dim
    assert model.macs() == c.macs() - plain_embed + model.patch_embed.macs() + c.num_patches * c.dim


def test_cct_rejects_a_tokenizer_that_misses_the_grid():
    with pytest.raises(ValueError, match="log2"):
        CompactConvTransformer(ViTConfig(**TINY), channels=())
