"""Unit tests for vit_from_scratch.attention_plots (Chapter 7): the pictures of attention maps."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from vit_from_scratch.attention_maps import (TokenLayout, collect_attention, mean_attention_distance,  # noqa: E402
                                             patch_embedding_components)
from vit_from_scratch.attention_plots import (attention_explorer, plot_gallery, plot_mean_distance,  # noqa: E402
                                              show_filter_components, show_position_similarity, show_view)
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
    fig = plot_gallery(x, weights, layout, titles, num_heads=2)
    assert layout.map_label in fig._suptitle.get_text() and len(fig.axes) == 3 * (1 + TINY["depth"] + 2)
    fig = plot_gallery(x, weights, layout, titles, rows=[2], num_heads=1, by="focused")
    assert len(fig.axes) == 1 + TINY["depth"] + 1
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
