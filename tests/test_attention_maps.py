"""Unit tests for vit_from_scratch.attention_maps (Chapter 7): the computation. The pictures are
tested in test_attention_plots.py."""

import importlib
import subprocess
import sys

import pytest
import torch

from vit_from_scratch.attention_maps import (AttentionRecorder, TokenLayout, attention_rollout, attention_view,
                                             collect_attention, fuse_heads, mean_attention_distance,
                                             patch_distances, patch_embedding_components, pooled_attention,
                                             rank_heads, to_grid, uniform_attention_distance)

from _attention_tiny import TINY, images, tiny_model

# the module, not the function `attention` that the package re-exports under the same name
attention_module = importlib.import_module("vit_from_scratch.attention")



def test_computing_maps_does_not_import_matplotlib():
    # a fresh interpreter: this test process may have imported matplotlib already
    code = ("import sys, vit_from_scratch.attention_maps\n"
            "drawing = sorted(m for m in ('matplotlib', 'ipywidgets') if m in sys.modules)\n"
            "assert not drawing, f'importing vit_from_scratch.attention_maps imported {drawing}'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# --- collecting -------------------------------------------------------------------------------

@pytest.mark.parametrize("pool, tokens", [("cls", 17), ("mean", 16)])
def test_collected_weights_hold_every_layer_and_head_as_B_L_H_S_S(pool, tokens):
    model = tiny_model(pool)
    logits, weights = collect_attention(model, images(3))
    assert logits.shape == (3, 5)
    assert weights.shape == (3, TINY["depth"], TINY["num_heads"], tokens, tokens)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_collection_does_not_change_the_logits(pool):
    model = tiny_model(pool)
    x = images(4)
    with torch.no_grad():
        plain = model(x)
    logits, _ = collect_attention(model, x, check=False)
    torch.testing.assert_close(logits, plain, rtol=1e-5, atol=1e-5)


def test_recorded_weights_are_the_ones_each_block_computes():
    model = tiny_model()
    x = images(2)
    _, weights = collect_attention(model, x)
    with torch.no_grad():
        _, direct = model.blocks(model.embed(x), return_attention=True)  # the explicit path, by hand
    torch.testing.assert_close(weights, torch.stack(direct, dim=1))


def test_default_forward_never_calls_the_explicit_softmax(monkeypatch):
    model = tiny_model()
    x = images(2)
    collect_attention(model, x)  # a recorder came and went

    def forbidden(*args, **kwargs):
        raise AssertionError("the default forward pass took the explicit-softmax path")

    monkeypatch.setattr(attention_module, "attention", forbidden)
    with torch.no_grad():
        model(x)  # must take the fused SDPA path
    with pytest.raises(AssertionError, match="explicit-softmax"):
        with AttentionRecorder(model):
            model(x)  # inside a recorder it must take the explicit path (so the patch above was live)


def test_recorder_removes_its_hooks_on_exit():
    model = tiny_model()
    attn = model.blocks[0].attn
    with AttentionRecorder(model) as rec:
        assert attn._forward_pre_hooks and attn._forward_hooks
        with torch.no_grad():
            model(images(1))
    assert not attn._forward_pre_hooks and not attn._forward_hooks
    assert len(rec.weights) == TINY["depth"]


def test_recorder_still_gives_weights_to_a_caller_that_asked_for_them():
    model = tiny_model()
    x = model.embed(images(2)).detach()
    with torch.no_grad(), AttentionRecorder(model) as rec:
        out, maps = model.blocks(x, return_attention=True)
        plain = model.blocks[0].attn(x)
    assert len(maps) == TINY["depth"] and isinstance(plain, torch.Tensor)
    torch.testing.assert_close(torch.stack(rec.weights[:TINY["depth"]]), torch.stack(maps))


def test_collect_attention_refuses_a_model_in_training_mode():
    model = tiny_model().train()
    with pytest.raises(ValueError, match="model.eval"):
        collect_attention(model, images(1))


def test_recorder_refuses_a_model_without_attention():
    with pytest.raises(ValueError, match="no MultiHeadSelfAttention"):
        AttentionRecorder(torch.nn.Linear(2, 2))


# --- maps -------------------------------------------------------------------------------------

def test_pooled_attention_reads_the_class_token_row_or_the_mean_received():
    w = torch.rand(2, 5, 5).softmax(-1)  # (B, S, S), S = 1 + 4 patches on a 2x2 grid
    cls = TokenLayout((2, 2), 4, num_prefix_tokens=1, pool="cls")
    torch.testing.assert_close(pooled_attention(w, cls), w[:, 0, 1:])
    mean = TokenLayout((2, 2), 4, num_prefix_tokens=0, pool="mean")
    w4 = torch.rand(2, 4, 4).softmax(-1)
    torch.testing.assert_close(pooled_attention(w4, mean), w4.mean(dim=1))
    assert "class token" in cls.map_label and "mean attention" in mean.map_label


def test_pooled_attention_rejects_weights_of_another_model():
    layout = TokenLayout((2, 2), 4)
    with pytest.raises(ValueError, match="TokenLayout.of"):
        pooled_attention(torch.rand(9, 9), layout)


def test_to_grid_is_row_major():
    layout = TokenLayout((2, 3), 4)
    grid = to_grid(torch.arange(6.0), layout)
    assert grid.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_fuse_heads_mean_max_min():
    w = torch.tensor([[[0.2, 0.8]], [[0.6, 0.4]]])  # (H=2, 1, 2), not square: only for the values
    w = torch.cat([w, w], dim=1)  # (2, 2, 2)
    assert fuse_heads(w, "mean")[0].tolist() == pytest.approx([0.4, 0.6])
    assert fuse_heads(w, "max")[0].tolist() == pytest.approx([0.6, 0.8])
    assert fuse_heads(w, "min")[0].tolist() == pytest.approx([0.2, 0.4])
    with pytest.raises(ValueError, match="head fusion"):
        fuse_heads(w, "median")


# --- rollout ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("residual", [True, False])
def test_rollout_rows_sum_to_one_at_every_layer(fusion, residual):
    _, weights = collect_attention(tiny_model(), images(2))
    roll = attention_rollout(weights, head_fusion=fusion, add_residual=residual)
    assert roll.shape == (2, TINY["depth"], 17, 17)
    torch.testing.assert_close(roll.sum(-1), torch.ones(2, TINY["depth"], 17))
    assert (roll >= 0).all()


def test_rollout_refuses_weights_whose_rows_do_not_sum_to_one():
    bad = torch.full((1, 2, 1, 3, 3), 0.5)  # rows sum to 1.5: not softmax weights
    with pytest.raises(ValueError, match="rows must sum to 1"):
        attention_rollout(bad)


def test_rollout_multiplies_later_layers_on_the_left():
    _, weights = collect_attention(tiny_model(), images(1))
    eye = torch.eye(17)
    a1, a2, a3 = (0.5 * (weights[0, layer].mean(dim=0) + eye) for layer in range(3))  # rows sum to 1 already
    torch.testing.assert_close(attention_rollout(weights)[0, 2], a3 @ a2 @ a1)


def test_rollout_first_layer_is_half_attention_half_identity():
    _, weights = collect_attention(tiny_model(), images(1))
    eye = torch.eye(17)
    first = 0.5 * (weights[:, 0].mean(dim=1) + eye)  # (A + I) / 2: rows already sum to 1 after the mean
    torch.testing.assert_close(attention_rollout(weights)[:, 0], first)


def uniform_model(pool="cls"):
    """Every head of every layer attends uniformly: q = k = 0, so every score is 0."""
    model = tiny_model(pool)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.zero_()
            block.attn.qkv.bias.zero_()
    return model


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_rollout_of_a_uniformly_attending_model_is_uniform(pool):
    model = uniform_model(pool)
    _, weights = collect_attention(model, images(2))
    S = weights.shape[-1]
    uniform = torch.full((2, TINY["depth"], S, S), 1.0 / S)
    torch.testing.assert_close(attention_rollout(weights, add_residual=False), uniform)
    # with the residual: layer l keeps 2^-l of each token on itself, and spreads the rest evenly
    roll = attention_rollout(weights)
    for layer in range(TINY["depth"]):
        keep = 0.5 ** (layer + 1)
        torch.testing.assert_close(roll[:, layer], (1 - keep) * uniform[:, layer] + keep * torch.eye(S))
    # so what the head reads out is spread evenly over the patches
    maps = pooled_attention(roll, TokenLayout.of(model))
    torch.testing.assert_close(maps, maps[..., :1].expand_as(maps))


def self_attending_model():
    """One head per layer with q = k = 30·LN(x): every token's largest score is with itself, by far (at 10, two
    similar patches shared 5e-5 of their weight under torch 2.4's draws)."""
    model = tiny_model(num_heads=1)
    D = TINY["dim"]
    with torch.no_grad():
        for block in model.blocks:
            block.norm1.weight.fill_(1.0)
            block.norm1.bias.zero_()
            block.attn.qkv.weight.copy_(torch.cat([30 * torch.eye(D), 30 * torch.eye(D), torch.eye(D)]))
            block.attn.qkv.bias.zero_()
    return model


def test_rollout_of_a_model_whose_heads_attend_only_to_themselves_is_the_identity():
    _, weights = collect_attention(self_attending_model(), images(2))
    eye = torch.eye(weights.shape[-1])
    torch.testing.assert_close(weights, eye.expand_as(weights), atol=1e-5, rtol=0)
    for residual in (True, False):
        roll = attention_rollout(weights, add_residual=residual)
        torch.testing.assert_close(roll, eye.expand_as(roll), atol=1e-5, rtol=0)


# --- mean attention distance ------------------------------------------------------------------

def test_patch_distances_are_pixels_between_patch_centres():
    d = patch_distances((2, 3), 4)  # patches 0 1 2 / 3 4 5
    assert d.shape == (6, 6)
    assert d[0, 1].item() == 4 and d[0, 3].item() == 4 and d[0, 5].item() == pytest.approx((8**2 + 4**2) ** 0.5)
    torch.testing.assert_close(d, d.T)


def test_mean_distance_of_self_attention_is_zero():
    _, weights = collect_attention(self_attending_model(), images(2))
    dist = mean_attention_distance(weights, TokenLayout.of(self_attending_model()))
    assert dist.shape == (2, TINY["depth"], 1)
    assert dist.abs().max().item() < 1e-3


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_mean_distance_of_uniform_attention_is_the_mean_distance_between_patches(pool):
    model = uniform_model(pool)
    layout = TokenLayout.of(model)
    _, weights = collect_attention(model, images(1))
    dist = mean_attention_distance(weights, layout)
    expected = uniform_attention_distance(layout)
    d = patch_distances(layout.grid_size, layout.patch_size)
    assert expected == pytest.approx(d.sum().item() / d.numel())
    torch.testing.assert_close(dist, torch.full_like(dist, expected))


def test_mean_distance_of_attention_to_the_next_patch_is_one_patch():
    layout = TokenLayout((4, 4), 8, num_prefix_tokens=1)
    w = torch.zeros(17, 17)
    w[0, 0] = 1.0  # the class token does not count
    for n in range(16):
        row, col = divmod(n, 4)
        w[1 + n, 1 + row * 4 + (col + 1 if col < 3 else col - 1)] = 1.0  # right neighbour, left at the edge
    assert mean_attention_distance(w, layout).item() == pytest.approx(8.0)


# --- patch filters ----------------------------------------------------------------------------

def test_principal_components_recover_the_pattern_the_filters_share():
    torch.manual_seed(0)
    pattern = torch.randn(3, 4, 4)
    pattern = pattern / pattern.norm()
    weight = torch.randn(32, 1, 1, 1) * pattern + 1e-3 * torch.randn(32, 3, 4, 4)  # (D, C, P, P)
    comps, explained = patch_embedding_components(weight, k=5)
    assert comps.shape == (5, 3, 4, 4) and explained.shape == (5,)
    assert abs(torch.dot(comps[0].flatten(), pattern.flatten())).item() == pytest.approx(1.0, abs=1e-3)
    assert explained[0].item() > 0.99 and explained.sum().item() <= 1 + 1e-6
    assert (explained[:-1] >= explained[1:]).all()


# --- choosing heads and views -------------------------------------------------------------------

def test_rank_heads_prefers_focused_and_image_specific_maps():
    maps = torch.full((2, 1, 2, 4), 0.25)  # (B, L, nh, N): head 0 uniform everywhere
    maps[0, 0, 1] = torch.tensor([0.97, 0.01, 0.01, 0.01])  # head 1 looks at patch 0 in image 0 ...
    maps[1, 0, 1] = torch.tensor([0.01, 0.01, 0.01, 0.97])  # ... and at patch 3 in image 1
    for by in ("focused", "specific"):
        scores = rank_heads(maps, by=by)
        assert scores.shape == (2, 1, 2)
        assert (scores[:, 0, 1] > scores[:, 0, 0]).all()


def test_attention_view_checks_its_arguments():
    _, weights = collect_attention(tiny_model(), images(1))
    layout = TokenLayout.of(tiny_model())
    assert attention_view(weights[0], layout, layer=1, head=0).shape == (4, 4)
    torch.testing.assert_close(attention_view(weights[0], layout, layer=-1, head="mean", method="rollout"),
                               to_grid(pooled_attention(attention_rollout(weights)[0, -1], layout), layout))
    with pytest.raises(ValueError, match="rollout combines"):
        attention_view(weights[0], layout, layer=1, head=0, method="rollout")
    with pytest.raises(ValueError, match="layer must be"):
        attention_view(weights[0], layout, layer=TINY["depth"] + 1)
    with pytest.raises(ValueError, match="head must be"):
        attention_view(weights[0], layout, layer=1, head=TINY["num_heads"])


def test_layout_of_a_mean_pooling_model_with_a_class_token_skips_the_class_token():
    model = tiny_model("mean", class_token=True)
    layout = TokenLayout.of(model)
    assert (layout.num_prefix_tokens, layout.pool, layout.num_tokens) == (1, "mean", 17)
    _, weights = collect_attention(model, images(1))
    torch.testing.assert_close(pooled_attention(weights, layout), weights[..., 1:, 1:].mean(dim=-2))


def test_layout_refuses_class_token_pooling_without_a_class_token():
    with pytest.raises(ValueError, match="pool='mean'"):
        TokenLayout((2, 2), 4, num_prefix_tokens=0, pool="cls")
