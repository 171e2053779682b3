"""Unit tests for vit_from_scratch.plotting: the patch grid and the token strip of chapter 1."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from vit_from_scratch.plotting import draw_patch_grid, show_patch_tokens  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_token_strip_wraps_rows_in_order_and_labels_each_token():
    patches = torch.rand(196, 3 * 4 * 4)
    fig = show_patch_tokens(patches, 4, count=28, per_row=14)
    shown = [ax for ax in fig.axes if ax.get_xlabel()]
    assert [ax.get_xlabel() for ax in shown] == [str(n) for n in range(28)]
    # token 14 starts the second line, under token 0
    assert shown[14].get_position().x0 == pytest.approx(shown[0].get_position().x0)
    assert shown[14].get_position().y0 < shown[0].get_position().y0


def test_token_strip_hides_the_unused_cells_of_its_last_row():
    fig = show_patch_tokens(torch.rand(20, 3 * 4 * 4), 4, count=17, per_row=5)
    assert len(fig.axes) == 20
    assert sum(ax.axison for ax in fig.axes) == 17


def test_token_strip_refuses_an_empty_row():
    with pytest.raises(ValueError, match="per_row=0"):
        show_patch_tokens(torch.rand(4, 3 * 4 * 4), 4, per_row=0)


def test_patch_grid_numbers_every_patch_in_token_order_at_the_size_asked():
    fig, ax = plt.subplots()
    draw_patch_grid(torch.rand(3, 32, 32), 8, ax, fontsize=7.5)
    texts = ax.texts
    assert [t.get_text() for t in texts] == [str(n) for n in range(16)]
    assert {t.get_fontsize() for t in texts} == {7.5}
    # token 5 is row 1, column 1: its number sits in that patch's top-left corner
    assert texts[5].get_position() == (8 + 2, 8 + 2)


def test_patch_grid_refuses_a_size_that_is_not_positive():
    with pytest.raises(ValueError, match="fontsize=0"):
        draw_patch_grid(torch.rand(3, 32, 32), 8, fontsize=0)
