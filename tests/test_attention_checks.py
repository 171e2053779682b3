"""Unit tests for vit_from_scratch.attention_checks (Chapter 7): the two entropies, spread over images
and seeds, the position-structure scores and their controls, filter roughness, the deletion test, and
loading a second trained seed."""

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from vit_from_scratch.attention_checks import (ENTROPIES, SEED_NAMES, bootstrap, delete_patches, deletion_test,
                                               filter_roughness, image_patches, layer_entropies,
                                               load_seed_models, normalised_entropy, patch_scores,
                                               position_structure, verdict)
from vit_from_scratch.attention_maps import TokenLayout, collect_attention, patch_embedding_components
from vit_from_scratch.checkpoints import export_weights
from vit_from_scratch.learning_curve import compare_seeds
from vit_from_scratch.positions import position_similarity, sincos_pos_embed_2d

from _attention_tiny import TINY, images, tiny_model


# --- entropy ----------------------------------------------------------------------------------

def test_normalised_entropy_is_one_for_uniform_and_zero_for_one_patch():
    maps = torch.tensor([[1.0, 1, 1, 1], [1, 0, 0, 0]])
    torch.testing.assert_close(normalised_entropy(maps), torch.tensor([1.0, 0.0]), atol=1e-6, rtol=0)


def test_the_two_entropies_differ_when_heads_look_at_different_patches():
    # two heads, each on its own patch: each head's entropy is 0, their mean map spreads over two patches
    layout = TokenLayout(grid_size=(2, 2), patch_size=4)
    w = torch.full((1, 1, 2, 5, 5), 1e-9)
    w[0, 0, 0, :, 1] = 1.0
    w[0, 0, 1, :, 2] = 1.0
    w = w / w.sum(-1, keepdim=True)
    e = layer_entropies(w, layout)
    assert e[ENTROPIES[0]].item() == pytest.approx(0.0, abs=1e-4)
    assert e[ENTROPIES[1]].item() == pytest.approx(math.log(2) / math.log(4), abs=1e-4)


def test_the_entropy_of_the_mean_map_is_never_below_the_mean_of_the_heads():
    _, w = collect_attention(tiny_model(), images(4))
    e = layer_entropies(w, TokenLayout.of(tiny_model()))
    assert e[ENTROPIES[0]].shape == (4, TINY["depth"]) and e["rollout"].shape == (4, TINY["depth"])
    assert bool((e[ENTROPIES[1]] >= e[ENTROPIES[0]] - 1e-5).all())


# --- spread -----------------------------------------------------------------------------------

def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_images():
    g = torch.Generator().manual_seed(0)
    small, large = torch.randn(20, generator=g), torch.randn(2000, generator=g)
    a, b = bootstrap(small), bootstrap(large)
    assert a.low < a.value < a.high and b.low < b.value < b.high
    assert (b.high - b.low) < (a.high - a.low) / 4
    assert bootstrap(small) == a  # seeded


def test_a_verdict_needs_every_seed_and_the_seed_rule_to_agree():
    g = torch.Generator().manual_seed(0)
    clear = [1 + 0.1 * torch.randn(200, generator=g), 1.02 + 0.1 * torch.randn(200, generator=g)]
    assert verdict(clear, compare=compare_seeds).side == "above"
    assert verdict([-x for x in clear], compare=compare_seeds).side == "below"
    assert verdict(clear[:1]).side == "above"  # one seed: images only, and it says so
    assert "no spread over seeds" in verdict(clear[:1]).spread()
    # each seed clear on its own, but the seeds disagree in sign: within noise
    assert verdict([clear[0], -clear[1]], compare=compare_seeds).side == "within noise"
    # seeds agree in sign but differ from each other by more than they differ from the threshold
    apart = [0.05 + 0.01 * torch.randn(200, generator=g), 3 + 0.01 * torch.randn(200, generator=g)]
    v = verdict(apart, compare=compare_seeds, threshold=0.0)
    assert all(e.low > 0 for e in v.per_seed)  # each seed alone is clearly above 0 ...
    assert v.seeds.noise == pytest.approx(2.95, abs=0.05)  # ... but the seeds' mean, 1.5, is within
    assert v.side == "within noise"  # their spread, 2.95
    noisy = verdict([0.01 * torch.randn(200, generator=g)] * 2, compare=compare_seeds)
    assert noisy.side == "within noise"
    with pytest.raises(ValueError, match="compare_seeds"):
        verdict(clear)


def test_spread_writes_a_share_in_points_like_its_value():
    shares = [torch.tensor([0.2, 0.1, 0.3, 0.2] * 10), torch.tensor([0.25, 0.15, 0.2, 0.2] * 10)]
    v = verdict(shares, compare=compare_seeds)
    plain, points = v.spread(), v.spread(points=True)
    assert "seed 0: +0.200," in plain and "points" not in plain
    assert "seed 0: +20.0 points," in points and "seed 1: +20.0 points," in points
    assert f"spread over seeds {100 * v.seeds.noise:.1f} points" in points
    assert "no spread over seeds" in verdict(shares[:1]).spread(points=True)


def test_a_verdict_with_a_statistic_of_several_values_per_image():
    # (B, L) values; the statistic: layer 1's mean minus layer 2's
    g = torch.Generator().manual_seed(0)
    v = torch.stack([torch.randn(300, generator=g) + 1, torch.randn(300, generator=g)], dim=1)
    v = verdict([v], lambda r: r[..., 0].mean(1) - r[..., 1].mean(1))
    assert v.side == "above" and v.value == pytest.approx(1.0, abs=0.2)


# --- positions --------------------------------------------------------------------------------

def test_sincos_scores_as_2d_structured_and_pure_noise_does_not():
    grid = (8, 8)
    sincos = position_structure(position_similarity(sincos_pos_embed_2d(grid, 64, num_prefix_tokens=1), grid),
                                permutations=200)
    assert sincos.neighbourhood > 0.8 and sincos.neighbourhood_p < 0.01
    assert sincos.row_column > 0.5 and sincos.row_column_p < 0.01
    noise = torch.randn(1, 65, 64, generator=torch.Generator().manual_seed(0))
    score = position_structure(position_similarity(noise, grid), permutations=200)
    assert abs(score.neighbourhood) < 0.1 and score.neighbourhood_p > 0.01 and score.row_column_p > 0.01


def test_position_score_ignores_the_overall_level_of_similarity():
    # adding a shared vector to every position raises every similarity; the rank scores stay
    grid = (4, 4)
    table = sincos_pos_embed_2d(grid, 32, num_prefix_tokens=0)
    shifted = table + 3 * table.norm(dim=-1).max()
    a = position_structure(position_similarity(table, grid, num_prefix_tokens=0), permutations=50)
    b = position_structure(position_similarity(shifted, grid, num_prefix_tokens=0), permutations=50)
    assert a.neighbourhood == pytest.approx(b.neighbourhood, abs=0.05)
    with pytest.raises(ValueError, match=r"\(h, w, h, w\)"):
        position_structure(torch.zeros(16, 16))


# --- filters ----------------------------------------------------------------------------------

def test_roughness_is_zero_for_smooth_ramps_and_about_two_for_noise():
    ramp = torch.linspace(0, 1, 8).expand(1, 3, 8, 8).clone()
    noise = torch.randn(50, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert filter_roughness(ramp).item() < 0.1
    assert filter_roughness(noise).mean().item() == pytest.approx(2.0, abs=0.2)


def test_leading_components_of_smooth_image_patches_are_smoother_than_the_last():
    # blurred noise images: natural-image-like statistics give smooth leading components
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = nn.functional.avg_pool2d(x, 5, stride=1, padding=2)
    patches = image_patches(x, 4, 2000)
    assert patches.shape == (2000, 3, 4, 4)
    comps, _ = patch_embedding_components(patches, k=48)
    r = filter_roughness(comps)
    assert r[:5].mean() < 0.6 * r[-5:].mean()
    with pytest.raises(ValueError, match="count"):
        image_patches(x, 4, 10**9)


# --- deletion ---------------------------------------------------------------------------------

class CornerModel(nn.Module):
    """Class 1 when the top-left patch is bright, else class 0: only patch 0 matters."""

    def forward(self, x):
        s = 4 * x[:, :, :4, :4].mean(dim=(1, 2, 3))
        return torch.stack([-s, s], dim=1)


def test_delete_patches_sets_exactly_those_patches_to_the_value():
    layout = TokenLayout(grid_size=(4, 4), patch_size=4)
    x = torch.ones(2, 3, 16, 16)
    out = delete_patches(x, torch.tensor([[0], [5]]), layout, value=-1.0)
    assert (out[0, :, :4, :4] == -1).all() and (out[1, :, 4:8, 4:8] == -1).all()
    assert (out == -1).sum() == 2 * 3 * 16
    with pytest.raises(ValueError, match="indices"):
        delete_patches(x, torch.tensor([[16], [0]]), layout)


def test_deleting_the_patch_the_model_uses_hurts_more_than_random_patches():
    layout = TokenLayout(grid_size=(4, 4), patch_size=4)
    x = torch.ones(40, 3, 16, 16)
    labels = torch.ones(40, dtype=torch.long)
    right = torch.zeros(40, 16)
    right[:, 0] = 1  # the scores point at the patch that matters
    out = deletion_test(CornerModel(), x, labels, right, layout, k=1, random_draws=3)
    assert bool((out["clean correct"] == 1).all()) and bool((out["most attended correct"] == 0).all())
    assert out["random p"].mean() > out["most attended p"].mean() + 0.3
    wrong = torch.zeros(40, 16)
    wrong[:, 15] = 1
    out = deletion_test(CornerModel(), x, labels, wrong, layout, k=1)
    torch.testing.assert_close(out["most attended p"], out["clean p"])
    with pytest.raises(ValueError, match="k must be"):
        deletion_test(CornerModel(), x, labels, right, layout, k=16)


def test_patch_scores_are_the_last_layers_class_token_maps():
    model = tiny_model()
    layout = TokenLayout.of(model)
    x = images(5)
    _, w = collect_attention(model, x)
    scores = patch_scores(model, x, layout, batch_size=2)
    torch.testing.assert_close(scores, w[:, -1, :, 0, 1:].mean(1))
    assert patch_scores(model, x, layout, method="rollout").shape == (5, layout.num_patches)


# --- a second seed ----------------------------------------------------------------------------

def _export_tiny(directory, name, seed):
    model = tiny_model()
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    checkpoint = {"model": model.state_dict(), "config": {"model": model.config.to_dict()},
                  "classes": [f"c{k}" for k in range(TINY["num_classes"])], "mean": [0.5] * 3,
                  "std": [0.25] * 3, "history": []}
    export_weights(checkpoint, name, note="tiny stand-in", directory=directory, half=False)


def test_one_seed_loads_and_the_second_is_reported_missing(tmp_path):
    _export_tiny(tmp_path, SEED_NAMES[0], 0)
    models, infos, missing = load_seed_models(device="cpu", directory=tmp_path)
    assert len(models) == 1 and missing == [SEED_NAMES[1]]


def test_two_seeds_load_and_their_verdicts_use_both(tmp_path):
    for k, name in enumerate(SEED_NAMES):
        _export_tiny(tmp_path, name, k)
    models, infos, missing = load_seed_models(device="cpu", directory=tmp_path)
    assert len(models) == 2 and not missing
    assert not torch.equal(models[0].pos_embed, models[1].pos_embed)
    layout = TokenLayout.of(models[0])
    x = images(12)
    per_seed = [layer_entropies(collect_attention(m, x)[1], layout)[ENTROPIES[0]] for m in models]
    first_minus_last = [e[:, 0] - e[:, -1] for e in per_seed]  # (B,) per seed
    v = verdict(first_minus_last, compare=compare_seeds)
    assert len(v.per_seed) == 2 and v.seeds is not None
    assert "spread over seeds" in v.spread() and "seed 1" in v.spread()
    assert v.side in ("above", "below", "within noise")


def test_the_first_seed_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_seed_models(device="cpu", directory=tmp_path)
