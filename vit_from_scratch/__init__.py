"""ViT from Scratch: the package the book builds, one chapter per module."""

from .patches import PatchEmbedding, check_patch_grid, patchify, unpatchify
from .runtime import budget, environment_report, is_quick, pick_device, seed_everything

__version__ = "0.1.0"

__all__ = [
    # runtime helpers
    "budget", "environment_report", "is_quick", "pick_device", "seed_everything",
    # chapter 1: patches
    "PatchEmbedding", "check_patch_grid", "patchify", "unpatchify",
]
