"""Unit tests for vit_from_scratch.windows (Chapter 10): windows, the shifted mask, relative bias, merging, costs."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vit_from_scratch.attention import MultiHeadSelfAttention
from vit_from_scratch.windows import (PatchMerging, SwinBlock, WindowAttention, cyclic_shift, msa_macs,
                                      pyramid_costs, relative_position_index, shifted_window_mask, window_partition,
                                      window_reverse)
from _helpers import randomise

timm_swin = pytest.importorskip("timm.models.swin_transformer")


def brute_force_mask(H, W, M, s):
    """Swin's own construction: label nine slices of the shifted map, block pairs with different labels."""
    labels = torch.zeros(H, W, dtype=torch.long)
    count = 0
    for rows in (slice(0, -M), slice(-M, -s), slice(-s, None)):
        for cols in (slice(0, -M), slice(-M, -s), slice(-s, None)):
            labels[rows, cols] = count
            count += 1
    blocked = torch.zeros(H // M * (W // M), M * M, M * M, dtype=torch.bool)
    for w, (r0, c0) in enumerate((r, c) for r in range(0, H, M) for c in range(0, W, M)):
        window = labels[r0:r0 + M, c0:c0 + M].flatten()
        for i in range(M * M):
            for j in range(M * M):
                blocked[w, i, j] = window[i] != window[j]
    return blocked


def test_window_reverse_undoes_window_partition_and_matches_timm():
    x = torch.randn(2, 8, 12, 5)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 2 * 3, 4, 4, 5)
    assert torch.equal(windows, timm_swin.window_partition(x, (4, 4)))
    assert torch.equal(window_reverse(windows, 4, 8, 12), x)
    assert torch.equal(windows[1], x[0, 0:4, 4:8])  # window 1 of image 0: first window row, second column


def test_window_partition_rejects_a_window_that_does_not_divide_the_grid():
    with pytest.raises(ValueError, match="must divide the token grid 8x12"):
        window_partition(torch.randn(1, 8, 12, 3), 5)


def test_shifting_back_restores_the_map():
    x = torch.randn(2, 8, 8, 3)
    assert not torch.equal(cyclic_shift(x, 2), x)
    assert torch.equal(cyclic_shift(cyclic_shift(x, 2), -2), x)
    assert torch.equal(cyclic_shift(x, 2)[:, 0, 0], x[:, 2, 2])  # rolled up and left


@pytest.mark.parametrize("H, W, M, s", [(8, 8, 4, 2), (12, 8, 4, 1), (14, 14, 7, 3)])
def test_shifted_mask_blocks_exactly_the_pairs_from_different_regions(H, W, M, s):
    mask = shifted_window_mask(H, W, M, s)
    assert torch.equal(mask, brute_force_mask(H, W, M, s))
    block = timm_swin.SwinTransformerBlock(8, (H, W), num_heads=2, window_size=M, shift_size=s)
    assert torch.equal(mask, block.attn_mask != 0)
    inner = mask.reshape(H // M, W // M, M * M, M * M)[:-1, :-1]
    assert not inner.any() and mask[-1].any()  # only windows in the last row or column mix regions


def test_unshifted_mask_blocks_nothing_and_shift_must_be_smaller_than_the_window():
    assert not shifted_window_mask(8, 8, 4, 0).any()
    with pytest.raises(ValueError, match="shift must be in"):
        shifted_window_mask(8, 8, 4, 4)


def test_relative_position_index_matches_timm_and_gives_equal_offsets_equal_indices():
    M = 3
    index = relative_position_index(M)
    assert torch.equal(index, timm_swin.get_relative_position_index(M, M))
    pos = [(i // M, i % M) for i in range(M * M)]
    for i in range(M * M):
        for j in range(M * M):
            for k in range(M * M):
                for l in range(M * M):
                    same = (pos[i][0] - pos[j][0], pos[i][1] - pos[j][1]) == (pos[k][0] - pos[l][0], pos[k][1] - pos[l][1])
                    assert (index[i, j] == index[k, l]) == same


def test_one_window_with_zero_bias_is_global_attention():
    torch.manual_seed(0)
    windowed = randomise(WindowAttention(16, 4, window_size=4))
    with torch.no_grad():
        windowed.relative_position_bias_table.zero_()
    full = MultiHeadSelfAttention(16, 4)
    full.load_state_dict({k: v for k, v in windowed.state_dict().items() if k.startswith(("qkv", "proj"))})
    x = torch.randn(2, 4, 4, 16)
    out = window_reverse(windowed(window_partition(x, 4).reshape(2, 16, 16)).reshape(2, 4, 4, 16), 4, 4, 4)
    torch.testing.assert_close(out, full(x.reshape(2, 16, 16)).reshape(2, 4, 4, 16))


def test_fast_and_explicit_paths_agree_with_a_mask():
    attn = randomise(WindowAttention(16, 2, window_size=4))
    mask = shifted_window_mask(8, 8, 4, 2)
    x = torch.randn(2 * 4, 16, 16)
    out, weights = attn(x, mask=mask, return_attention=True)
    torch.testing.assert_close(attn(x, mask=mask), out)
    blocked = mask[None, :, None].expand(2, 4, 2, 16, 16)  # (B, nW, h, A, A)
    assert (weights.reshape(2, 4, 2, 16, 16)[blocked] == 0).all()
    assert (weights.reshape(2, 4, 2, 16, 16)[~blocked] > 0).all()


def test_window_attention_matches_timm_with_copied_weights():
    ours = randomise(WindowAttention(16, 2, window_size=4))
    theirs = timm_swin.WindowAttention(16, num_heads=2, window_size=4)
    theirs.load_state_dict(ours.state_dict())
    mask = shifted_window_mask(8, 8, 4, 2)
    x = torch.randn(8, 16, 16)
    torch.testing.assert_close(ours(x, mask=mask), theirs(x, mask=torch.zeros(mask.shape).masked_fill(mask, -100.0)))


def test_shifted_swin_block_matches_timm():
    ours = randomise(SwinBlock(32, 4, input_resolution=(8, 8), window_size=4, shift_size=2))
    theirs = timm_swin.SwinTransformerBlock(32, (8, 8), num_heads=4, window_size=4, shift_size=2)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 8, 32)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_patch_merging_halves_each_side_doubles_channels_and_matches_timm():
    ours = randomise(PatchMerging(8))
    theirs = timm_swin.PatchMerging(8)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 4, 8)
    assert ours(x).shape == (2, 3, 2, 16) and ours.reduction.in_features == 32
    torch.testing.assert_close(ours(x), theirs(x))
    with pytest.raises(ValueError, match="even token grid"):
        ours(torch.randn(1, 5, 4, 8))


@pytest.mark.parametrize("window", [None, 4])
def test_msa_macs_count_the_attention_products(window):
    attn = MultiHeadSelfAttention(32, 4) if window is None else WindowAttention(32, 4, window_size=4)
    x = torch.randn(1, 8, 8, 32)
    tokens = x.reshape(1, 64, 32) if window is None else window_partition(x, 4).reshape(4, 16, 32)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        attn(tokens)
    assert counter.get_total_flops() == 2 * msa_macs(8, 8, 32, window)


def test_pyramid_costs_add_up_to_a_timm_swin():
    sizes = dict(image_size=32, patch_size=2, dim=16, depths=(2, 2, 2), window_size=4, num_classes=10)
    model = timm_swin.SwinTransformer(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4),
                                      window_size=4, num_classes=10).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 32, 32))
    stages = pyramid_costs(**sizes)
    assert [s["tokens"] for s in stages] == [256, 64, 16]
    assert [s["channels"] for s in stages] == [16, 32, 64]
    assert 2 * sum(s["macs"] for s in stages) == counter.get_total_flops()
