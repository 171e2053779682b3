"""Unit tests for vit_from_scratch.positions (Chapter 2)."""

import math

import pytest
import torch
import torch.nn.functional as F

from vit_from_scratch.positions import (learned_pos_embed, position_similarity, resize_pos_embed,
                                        sincos_pos_embed_1d, sincos_pos_embed_2d)


def sincos_by_formula(p: float, i: int, dim: int) -> float:
    """Channel i of the 1-D embedding of position p, straight from the formula."""
    half = dim // 2
    w = 10000.0 ** (-(i % half) / half)
    return math.sin(p * w) if i < half else math.cos(p * w)


# --- sine-cosine -------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [2, 8, 64])
def test_sincos_1d_matches_formula_at_a_few_positions(dim):
    positions = torch.tensor([0.0, 1.0, 2.5, 7.0, 123.0])
    emb = sincos_pos_embed_1d(positions, dim)
    assert emb.shape == (5, dim) and emb.dtype == torch.float32
    for row, p in enumerate(positions.tolist()):
        for i in range(dim):
            assert emb[row, i].item() == pytest.approx(sincos_by_formula(p, i, dim), abs=1e-6)


def test_sincos_1d_position_zero_is_sines_zero_cosines_one():
    emb = sincos_pos_embed_1d(torch.tensor([0]), 16)
    assert torch.equal(emb[0, :8], torch.zeros(8)) and torch.equal(emb[0, 8:], torch.ones(8))


def test_sincos_2d_first_half_encodes_row_second_half_column():
    h, w, dim = 3, 5, 16
    emb = sincos_pos_embed_2d((h, w), dim, num_prefix_tokens=0)[0]  # (h*w, D)
    for r in range(h):
        for c in range(w):
            token = r * w + c  # row-major, as patchify orders patches
            for i in range(dim // 2):
                assert emb[token, i].item() == pytest.approx(sincos_by_formula(r, i, dim // 2), abs=1e-6)
                assert emb[token, dim // 2 + i].item() == pytest.approx(sincos_by_formula(c, i, dim // 2), abs=1e-6)


def test_sincos_2d_prefix_tokens_are_zero_and_shape_counts_them():
    emb = sincos_pos_embed_2d(4, 32, num_prefix_tokens=2)
    assert emb.shape == (1, 2 + 16, 32)
    assert torch.equal(emb[0, :2], torch.zeros(2, 32))
    assert emb[0, 2:].abs().sum(dim=1).min() > 0


def test_sincos_2d_every_position_has_norm_sqrt_half_width():
    emb = sincos_pos_embed_2d((6, 9), 48, num_prefix_tokens=0)[0]
    torch.testing.assert_close(emb.norm(dim=1), torch.full((54,), math.sqrt(24.0)))


def test_sincos_2d_dot_product_depends_only_on_the_offset():
    emb = sincos_pos_embed_2d(8, 64, num_prefix_tokens=0)[0].double().reshape(8, 8, 64)
    a = emb[1, 2] @ emb[4, 7]  # offset (3, 5)
    b = emb[3, 0] @ emb[6, 5]  # offset (3, 5) elsewhere on the grid
    c = emb[1, 2] @ emb[4, 6]  # offset (3, 4)
    assert a.item() == pytest.approx(b.item(), abs=1e-5)
    assert abs(a.item() - c.item()) > 1e-3


def test_sincos_2d_each_position_is_most_similar_to_itself():
    sim = position_similarity(sincos_pos_embed_2d((5, 7), 64), (5, 7))
    flat = sim.reshape(35, 35)
    assert torch.equal(flat.argmax(dim=1), torch.arange(35))


# --- learned -----------------------------------------------------------------------------------

def test_learned_pos_embed_shape_trainable_and_truncated():
    torch.manual_seed(0)
    p = learned_pos_embed(1 + 196, 64, std=0.02)
    assert isinstance(p, torch.nn.Parameter) and p.requires_grad
    assert p.shape == (1, 197, 64)
    assert p.abs().max() <= 0.04 + 1e-7
    assert 0.012 < p.std().item() < 0.02  # truncation at 2 std shrinks the spread to about 0.88 std


# --- resize ------------------------------------------------------------------------------------

@pytest.mark.parametrize("grid", [(7, 7), (14, 14), (3, 5)])
@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_resize_to_its_own_grid_is_unchanged(grid, mode):
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + grid[0] * grid[1], 24)
    out = resize_pos_embed(pos, grid, old_grid=grid, mode=mode)
    torch.testing.assert_close(out, pos, rtol=0, atol=1e-6)


@pytest.mark.parametrize("old, new", [(7, 14), (14, 7), ((7, 7), (10, 16)), ((6, 8), (12, 4)), (5, 1)])
def test_resize_shapes(old, new):
    oh, ow = (old, old) if isinstance(old, int) else old
    nh, nw = (new, new) if isinstance(new, int) else new
    pos = torch.randn(1, 1 + oh * ow, 16)
    out = resize_pos_embed(pos, new, old_grid=None if oh == ow else old)
    assert out.shape == (1, 1 + nh * nw, 16)


def test_resize_keeps_prefix_tokens_apart():
    pos = torch.randn(1, 2 + 16, 8)
    out = resize_pos_embed(pos, 6, num_prefix_tokens=2)
    assert torch.equal(out[:, :2], pos[:, :2])
    # The prefix rows must not leak into the grid: changing them leaves the grid part alone.
    pos2 = pos.clone()
    pos2[:, :2] += 100.0
    assert torch.equal(resize_pos_embed(pos2, 6, num_prefix_tokens=2)[:, 2:], out[:, 2:])


def test_resize_matches_interpolating_the_grid_as_an_image():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 4 * 6, 5)
    image = pos[0, 1:].reshape(4, 6, 5).permute(2, 0, 1)[None]  # (1, D, h, w)
    expected = F.interpolate(image, size=(8, 3), mode="bicubic", align_corners=False)
    expected = expected[0].permute(1, 2, 0).reshape(1, 24, 5)
    out = resize_pos_embed(pos, (8, 3), old_grid=(4, 6))
    torch.testing.assert_close(out[:, 1:], expected)
    # token (r, c) of the new grid sits at row-major index r * 3 + c
    torch.testing.assert_close(out[0, 1 + 2 * 3 + 1], expected[0, 2 * 3 + 1])


def test_resize_a_constant_embedding_stays_constant():
    pos = torch.full((1, 1 + 49, 4), 0.3)
    torch.testing.assert_close(resize_pos_embed(pos, (11, 5)), torch.full((1, 1 + 55, 4), 0.3))


@pytest.mark.parametrize("antialias", [False, True])
def test_resize_agrees_with_timm(antialias):
    layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 14 * 14, 32)
    ours = resize_pos_embed(pos, 7, antialias=antialias)
    theirs = layers.resample_abs_pos_embed(pos, (7, 7), (14, 14), num_prefix_tokens=1,
                                           interpolation="bicubic", antialias=antialias)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_resize_keeps_dtype(dtype):
    out = resize_pos_embed(torch.randn(1, 1 + 49, 8).to(dtype), 9)
    assert out.dtype == dtype and out.shape == (1, 1 + 81, 8)


def test_resize_keeps_float64_precision():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 49, 8, dtype=torch.float64)
    image = pos[0, 1:].reshape(7, 7, 8).permute(2, 0, 1)[None]  # (1, D, h, w), float64 throughout
    expected = F.interpolate(image, size=(9, 9), mode="bicubic", align_corners=False)
    expected = expected[0].permute(1, 2, 0).reshape(1, 81, 8)
    torch.testing.assert_close(resize_pos_embed(pos, 9)[:, 1:], expected, rtol=0, atol=1e-12)


def test_resize_nearest_mode_works():
    pos = torch.randn(1, 1 + 4, 3)
    out = resize_pos_embed(pos, 4, mode="nearest")  # 2x2 -> 4x4: each position copied to a 2x2 block
    grid = out[0, 1:].reshape(4, 4, 3)
    torch.testing.assert_close(grid[0, 0], pos[0, 1])
    torch.testing.assert_close(grid[3, 3], pos[0, 4])


def test_resize_passes_gradients_to_the_trained_embedding():
    pos = learned_pos_embed(1 + 16, 8)
    resize_pos_embed(pos, (6, 5)).sum().backward()
    assert pos.grad is not None and pos.grad.abs().sum() > 0


# --- errors ------------------------------------------------------------------------------------

def test_sincos_2d_rejects_width_not_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4; got 130.*128 or 132"):
        sincos_pos_embed_2d(14, 130)
    with pytest.raises(ValueError, match=r"divisible by 4; got 2\. Use a width such as 4, or learned"):
        sincos_pos_embed_2d(14, 2)  # one valid width nearby, not "4 or 4"


@pytest.mark.parametrize("dim", [0, -3, -4])
def test_sincos_2d_rejects_a_non_positive_width_on_its_own(dim):
    with pytest.raises(ValueError, match=rf"width must be positive, got {dim}$"):
        sincos_pos_embed_2d(14, dim)


def test_sincos_1d_rejects_odd_width_and_non_1d_positions():
    with pytest.raises(ValueError, match="even; got 7"):
        sincos_pos_embed_1d(torch.arange(3), 7)
    with pytest.raises(ValueError, match="1-D tensor of positions"):
        sincos_pos_embed_1d(torch.zeros(2, 3), 8)


def test_resize_rejects_a_grid_that_does_not_match_the_token_count():
    pos = torch.randn(1, 1 + 196, 8)
    with pytest.raises(ValueError, match=r"old_grid=\(10, 10\) has 100 positions but the embedding holds 196"):
        resize_pos_embed(pos, 7, old_grid=10)


def test_resize_asks_for_old_grid_when_tokens_are_not_square():
    pos = torch.randn(1, 1 + 12, 8)
    with pytest.raises(ValueError, match="do not form a square grid; pass old_grid"):
        resize_pos_embed(pos, 4)


def test_position_similarity_names_its_own_grid_parameter():
    pos = torch.randn(1, 1 + 12, 8)  # a 3 x 4 grid: not square
    with pytest.raises(ValueError, match=r"pass grid_size=\(rows, columns\)") as info:
        position_similarity(pos)
    assert "old_grid" not in str(info.value)
    assert position_similarity(pos, grid_size=(3, 4)).shape == (3, 4, 3, 4)  # the advice works
    with pytest.raises(ValueError, match=r"grid_size=\(2, 2\) has 4 positions"):
        position_similarity(pos, grid_size=2)
    with pytest.raises(ValueError, match="grid_size must be positive"):
        position_similarity(pos, grid_size=(0, 4))


def test_resize_antialias_changes_bicubic_growing_too():
    pos = torch.randn(1, 1 + 16, 8)
    plain, aa = resize_pos_embed(pos, 6), resize_pos_embed(pos, 6, antialias=True)
    assert not torch.allclose(plain, aa, atol=1e-3)  # another cubic kernel, not a low-pass filter


def test_resize_rejects_wrong_rank_and_bad_grids():
    with pytest.raises(ValueError, match=r"shaped \(1, tokens, dim\)"):
        resize_pos_embed(torch.randn(17, 8), 4)
    with pytest.raises(ValueError, match="new_grid must be positive"):
        resize_pos_embed(torch.randn(1, 17, 8), (0, 4))


def test_position_similarity_shape_and_diagonal():
    sim = position_similarity(learned_pos_embed(1 + 12, 16), (3, 4))
    assert sim.shape == (3, 4, 3, 4)
    flat = sim.reshape(12, 12)
    torch.testing.assert_close(flat.diagonal(), torch.ones(12))
    torch.testing.assert_close(flat, flat.T)
