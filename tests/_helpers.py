"""Helpers shared by the unit tests."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def randomise(module: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """Give every parameter random values (LayerNorm scales around 1), so that zero biases, unit norms
    and the zero-initialised head cannot hide a mistake."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_norm_scale = "norm" in name and name.endswith("weight")
            p.copy_(scale * torch.randn(p.shape, generator=g) + (1.0 if is_norm_scale else 0.0))
    return module


def fit_one_batch(model: nn.Module, x, y, *, lr: float, steps: int) -> list[float]:
    """Train ``model`` on one fixed batch with AdamW; the loss of every step (a model that can learn
    drives it well below its start)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def fake_cifar_tree(base: Path, classes, per_class: int, test_per_class: int = 2) -> tuple[Path, Path]:
    """A CIFAR-like image-folder tree of random 32-pixel JPEGs under ``base/cifar10-jpeg`` (the layout
    ``load_cifar10`` reads), and the same tree as ``base/cifar10-jpeg.tar.gz`` (what the GPU scripts unpack)."""
    from PIL import Image

    root = base / "cifar10-jpeg"
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i:03d}.jpg")
    archive = base / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="cifar10-jpeg")
    return root, archive


def run_benchmark_script(script: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a script of tests/benchmarks from the repository root, one thread, its output captured."""
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=script_env(),
                          timeout=timeout, cwd=Path(__file__).resolve().parent.parent)


def script_env() -> dict:
    """The environment a benchmark script runs in under test: this checkout's package, one thread."""
    root = Path(__file__).resolve().parent.parent
    return {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
