"""Unit tests for vit_from_scratch.attention_plots (Chapter 7): the pictures of attention maps."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from vit_from_scratch.attention_maps import (TokenLayout, collect_attention, mean_attention_distance,  # noqa: E402
                                             patch_embedding_components)
from vit_from_scratch.attention_plots import (as_uniform_multiple, attention_explorer, plot_gallery,  # noqa: E402
                                              plot_mean_distance, show_attention, show_filter_components,
                                              show_position_similarity, show_view)
from vit_from_scratch.positions import position_similarity  # noqa: E402

from _attention_tiny import TINY, images, tiny_model  # noqa: E402



@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_every_figure_draws_for_class_token_and_mean_pooling_models(pool):
    model = tiny_model(pool)
    layout = TokenLayout.of(model)
    x = images(3)
    _, weights = collect_attention(model, x)
    titles = ["a", "b", "c"]
    fig = plot_gallery(x, weights, layout, titles, num_heads=2, shared=False)
    assert layout.map_label in fig._suptitle.get_text() and len(fig.axes) == 3 * (1 + TINY["depth"] + 2)
    fig = plot_gallery(x, weights, layout, titles, rows=[2], num_heads=1, by="focused")
    assert len(fig.axes) == 1 + TINY["depth"] + 1 + 1  # and the shared colour bar
    _, axes = plt.subplots(1, 4)
    for ax, (method, head) in zip(axes, [("attention", 0), ("attention", "max"), ("rollout", "mean"),
                                         ("rollout", "min")]):
        show_view(x[0], weights[0], layout, layer=2, head=head, method=method, ax=ax)
    plot_mean_distance(mean_attention_distance(weights, layout).mean(0), layout, ax=plt.figure().gca())
    sim = position_similarity(model.pos_embed, layout.grid_size, num_prefix_tokens=layout.num_prefix_tokens)
    show_position_similarity(sim, ax=plt.figure().gca(), title="positions")
    comps, explained = patch_embedding_components(model.patch_embed.proj.weight, k=10)
    show_filter_components(comps, explained, ncols=5)
    explorer = attention_explorer(x, weights, layout, titles)
    assert explorer.children


@pytest.mark.parametrize("draw", [plot_gallery, attention_explorer])
def test_gallery_and_explorer_refuse_images_weights_and_titles_that_do_not_match(draw):
    model = tiny_model()
    x = images(3)
    _, weights = collect_attention(model, x)
    layout = TokenLayout.of(model)
    with pytest.raises(ValueError, match="3 images, 2 sets of weights and 3 titles"):
        draw(x, weights[:2], layout, ["a", "b", "c"])
    with pytest.raises(ValueError, match="3 images, 3 sets of weights and 2 titles"):
        draw(x, weights, layout, ["a", "b"])


def test_uniform_multiple_is_one_for_a_uniform_map_and_sums_to_the_patch_count():
    flat = torch.full((2, 3, 4), 0.01)
    assert torch.allclose(as_uniform_multiple(flat), torch.ones(2, 3, 4))
    peaked = torch.rand(5, 3, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(as_uniform_multiple(peaked).sum(dim=(-2, -1)), torch.full((5,), 12.0))


def test_a_shared_scale_keeps_a_flat_map_flat_where_its_own_scale_stretches_it():
    image = images(1)[0]
    nearly_flat = torch.full((4, 4), 1 / 16) + 1e-4 * torch.arange(16.0).reshape(4, 4)
    own = show_attention(image, nearly_flat, plt.figure().gca()).images[-1]
    shared = show_attention(image, nearly_flat, plt.figure().gca(), vmax=5.0).images[-1]
    assert own.get_array().max() - own.get_array().min() > 0.9  # stretched to [0, 1]
    assert shared.get_clim() == (0.0, 5.0)
    assert abs(shared.get_array().mean() - 1) < 0.01 and shared.get_array().max() < 1.05


def test_gallery_draws_every_map_on_one_scale_with_one_colour_bar():
    model = tiny_model()
    layout = TokenLayout.of(model)
    x = images(3)
    _, weights = collect_attention(model, x)
    fig = plot_gallery(x, weights, layout, ["a", "b", "c"], num_heads=2)
    overlays = [ax.images[-1] for ax in fig.axes if len(ax.images) == 2]  # image + map
    assert len(overlays) == 3 * (TINY["depth"] + 2)
    assert len({im.get_clim() for im in overlays}) == 1
    vmax = overlays[0].get_clim()[1]
    drawn = max(im.get_array().max() for im in overlays)  # upsampled maps: at most the grid's largest value
    assert 0.7 * vmax < drawn <= vmax * (1 + 1e-6)  # the largest map sets the scale, nothing is clipped
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 1


def test_mean_distance_legend_sits_beside_the_axes_and_hides_nothing():
    model = tiny_model()
    layout = TokenLayout.of(model)
    _, weights = collect_attention(model, images(2))
    fig, ax = plt.subplots()
    plot_mean_distance(mean_attention_distance(weights, layout).mean(0), layout, ax=ax)
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1
