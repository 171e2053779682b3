"""Chapter 7's ViT-B/16 cells run only where torchvision's ImageNet weights can be downloaded, so the book's
offline executions and CI skip them. Here the chapter runs at the quick budget with torchvision's ViT-B/16 at
random weights in their place: every one of those cells runs (the conversion to our model, the logit check
against torchvision, the figures, the attention-distance verdict), so a change that breaks them fails here.
Their numbers mean nothing with random weights and are not checked."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from vit_from_scratch.data import default_data_dir, find_image_folder

CHAPTER = Path(__file__).resolve().parent.parent / "book" / "07_attention_maps.ipynb"
STAND_IN = '''from torchvision.models import ViT_B_16_Weights, vit_b_16

big_weights = ViT_B_16_Weights.IMAGENET1K_V1  # its class names; the weights stay random
torch.manual_seed(0)
reference_model = vit_b_16(weights=None).eval()
big = VisionTransformer.from_torchvision(reference_model).to(device).eval()'''
WEIGHTS_CELL = "0c186402"  # the cell that downloads the weights (or finds none)


def test_the_vit_b16_cells_run_with_a_random_weight_stand_in(monkeypatch):
    if find_image_folder(default_data_dir()) is None:
        pytest.skip("CIFAR-10 is not in VIT_DATA_DIR")
    nb = nbformat.read(CHAPTER, as_version=4)
    cell = next(c for c in nb.cells if c.get("id") == WEIGHTS_CELL)
    assert "vit_b_16(weights=big_weights)" in cell.source, "the stand-in replaces the cell that downloads"
    cell.source = STAND_IN
    monkeypatch.setenv("VIT_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(CHAPTER.parent)}}).execute()
    after = nb.cells[nb.cells.index(cell) + 1:]
    texts = "".join(o.get("text", "") for c in after if c.cell_type == "code" for o in c.get("outputs", []))
    figures = sum("image/png" in o.get("data", {}) for c in after if c.cell_type == "code"
                  for o in c.get("outputs", []))
    assert "skipped (no ViT-B/16 weights)" not in texts
    assert "largest logit difference, our model vs torchvision's" in texts
    assert "weights: (1, 12, 12, 197, 197)" in texts and "ViT-B/16's mean attention distance" in texts
    assert figures >= 2, "the rollout/heads figure and the Figure 7 redraw"
