"""Unit tests for vit_from_scratch.diagrams (chapters 1 and 5, the intro page): the picture of the whole
ViT lists the right steps and shapes for a config, fits in its figure with large type, and the intro
page's copy of it exists and is shown."""

import importlib.util
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from vit_from_scratch.config import ViTConfig  # noqa: E402
from vit_from_scratch.diagrams import draw_vit, vit_stages  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_stages_of_vit_b16_follow_the_paper_with_their_shapes():
    stages = vit_stages(ViTConfig.named("B/16"))
    assert [s.shape for s in stages] == [("B", 3, 224, 224), ("B", 196, 768), ("B", 196, 768),
                                         ("B", 197, 768), ("B", 197, 768), ("B", 197, 768),
                                         ("B", 768), ("B", 1000)]
    assert stages[5].label == "12 × encoder block" and "3072" in stages[5].detail
    assert "class token" in stages[3].label and "class token" in stages[6].label


def test_stages_follow_the_config_mean_pooling_sincos_and_a_batch_size():
    c = ViTConfig.named("cifar-cpu", pool="mean", pos_embed_type="sincos")
    stages = vit_stages(c, batch=8)
    assert not any("class token" in s.label for s in stages)  # no class token: N tokens throughout
    assert stages[3].shape == (8, 64, 128) and "sin-cos" in stages[3].detail
    assert stages[-2].label.startswith("mean") and stages[-1].shape == (8, 10)
    assert stages[4].label == "6 × encoder block" and "128 → 256 → 128" in stages[4].detail


@pytest.mark.parametrize("name", ["B/16", "cifar-cpu", "H/14"])
def test_the_drawing_shows_every_shape_in_large_type_and_inside_the_figure(name):
    c = ViTConfig.named(name)
    fig = draw_vit(c, title=f"ViT-{name}")
    width, height = fig.get_size_inches()
    assert width <= 7.5 and height > width  # a narrow, tall picture that a phone shrinks little
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.axes[0].texts if t.get_text()]
    shown = {t.get_text() for t in texts}
    for stage in vit_stages(c):
        assert "(" + ", ".join(map(str, stage.shape)) + ")" in shown
    box = fig.bbox
    for t in texts:
        assert t.get_fontsize() >= 13, (t.get_text(), t.get_fontsize())
        extent = t.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1, \
            f"{t.get_text()!r} is cut off at the figure's edge"


def test_the_intro_page_shows_the_picture_that_its_script_writes(tmp_path):
    script = ROOT / "book" / "make_vit_figure.py"
    image = ROOT / "book" / "_static" / "vit.png"
    assert image.exists() and image.stat().st_size > 10_000, "run python book/make_vit_figure.py and commit it"
    assert "_static/vit.png" in (ROOT / "book" / "intro.md").read_text()
    spec = importlib.util.spec_from_file_location("make_vit_figure", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.OUT == image
    module.main(tmp_path / "vit.png")
    assert (tmp_path / "vit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
