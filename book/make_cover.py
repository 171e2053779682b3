"""Draw the intro page's cover: what the shipped model sees in a few CIFAR-10 test images.

    VIT_DATA_DIR=/path/to/data python book/make_cover.py      # writes book/_static/cover.png

It loads the weights the training chapter shipped (``load_trained_model``), classifies the test images,
picks the first correctly classified image of six classes, and draws each image above its attention
rollout through all layers (chapter 7), read from the class token. Run it again whenever the shipped
weights change; the image is small (about 100 KB) and committed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from vit_from_scratch.attention_maps import (TokenLayout, attention_rollout, collect_attention,  # noqa: E402
                                             pooled_attention, to_grid)
from vit_from_scratch.attention_plots import show_attention  # noqa: E402
from vit_from_scratch.checkpoints import load_trained_model  # noqa: E402
from vit_from_scratch.data import load_cifar10, normalize  # noqa: E402
from vit_from_scratch.plotting import show_image  # noqa: E402

OUT = Path(__file__).resolve().parent / "_static" / "cover.png"
CLASSES = ("airplane", "automobile", "bird", "cat", "horse", "ship")


def main(out: Path = OUT) -> None:
    torch.manual_seed(0)
    model, info = load_trained_model(device="cpu")
    _, test = load_cifar10()
    picks = []  # per class: the first of its test images (in file order) that the model gets right
    for name in CLASSES:
        candidates = (test.labels == test.classes.index(name)).nonzero().flatten()[:50]
        images = test.images[candidates].float() / 255  # (50, C, H, W) in [0, 1]
        with torch.no_grad():
            predicted = model(normalize(images, info["mean"], info["std"])).argmax(1)
        picks.append(int(candidates[(predicted == test.classes.index(name)).nonzero()[0, 0]]))
    batch = test.images[picks].float() / 255  # (6, C, H, W) in [0, 1]
    _, weights = collect_attention(model, normalize(batch, info["mean"], info["std"]))  # (B, L, nh, S, S)
    layout = TokenLayout.of(model)
    rollout = to_grid(pooled_attention(attention_rollout(weights), layout), layout)[:, -1]  # (B, h, w)
    fig, axes = plt.subplots(2, len(picks), figsize=(1.35 * len(picks), 2.9), dpi=110)
    for k, i in enumerate(picks):
        show_image(batch[k], axes[0, k], test.classes[test.labels[i]])
        axes[0, k].title.set_fontsize(9)
        show_attention(batch[k], rollout[k], axes[1, k])
    axes[1, 0].set_ylabel("where it\nlooks", fontsize=8)
    fig.suptitle("CIFAR-10 test images, each classified correctly (top), and the parts its answer "
                 "draws on (bottom)", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    print(f"wrote {out.name} ({out.stat().st_size // 1024} KB) from test images {picks}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
