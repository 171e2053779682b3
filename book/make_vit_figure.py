"""Draw the intro page's picture of the whole ViT (the paper's Figure 1, with tensor shapes).

    python book/make_vit_figure.py      # writes book/_static/vit.png

The picture is :func:`vit_from_scratch.diagrams.draw_vit` for ViT-B/16 at 224 pixels, the model of the
ViT paper; chapters 1 and 5 draw the same picture in a cell. Run it again when diagrams.py changes; the
image is small and committed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vit_from_scratch.config import ViTConfig  # noqa: E402
from vit_from_scratch.diagrams import draw_vit  # noqa: E402

OUT = Path(__file__).resolve().parent / "_static" / "vit.png"


def main(out: Path = OUT) -> None:
    fig = draw_vit(ViTConfig.named("B/16"), title="ViT-B/16 at 224 pixels, B images")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, metadata={"Software": None})
    plt.close(fig)
    print(f"wrote {out.name} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
