"""ViT from Scratch: the package the book builds, one chapter per module."""

# `attention` (the function) is not re-exported: it would shadow the submodule vit_from_scratch.attention
from .attention import MultiHeadSelfAttention
from .cnn import ResidualBlock, SmallResNet
from .distillation import DistilledVisionTransformer, HardDistillationLoss, hard_distillation_loss
from .learning_curve import Comparison, compare_seeds, nested_subsets, stratified_order
from .data import resize_images
from .efficiency import SavedTensorMemory, TensorMemoryTracker, attention_matrix_bytes, autocast_works, peak_memory
from .encoder import MLP, DropPath, Encoder, EncoderBlock, block_num_params
from .model import NAMED_SIZES, ViTConfig, VisionTransformer, to_resolution, vit_config
from .interop import (config_from_torchvision, convert_torchvision_state_dict, from_torchvision, timm_kwargs,
                      torchvision_kwargs)
from .patches import PatchEmbedding, check_patch_grid, patchify, unpatchify
from .positions import (learned_pos_embed, position_similarity, resize_pos_embed, sincos_pos_embed_1d,
                        sincos_pos_embed_2d, truncated_normal_)
from .runtime import (Timing, benchmark, budget, claim, environment_report, is_quick, network_available,
                      pick_device, run_side_by_side, seed_everything, seed_offset, synchronize)
from .hybrid import ConvStem, HybridViT
from .windows import (PatchMerging, SwinBlock, WindowAttention, cyclic_shift, msa_macs, pyramid_costs,
                      relative_position_index, shift_region_labels, shifted_window_mask, window_partition,
                      window_reverse)

__version__ = "0.1.0"

__all__ = [
    # runtime helpers
    "budget", "claim", "environment_report", "is_quick", "pick_device", "seed_everything", "seed_offset",
    "synchronize", "Timing",
    "benchmark", "run_side_by_side", "network_available",
    # chapter 1: patches
    "PatchEmbedding", "check_patch_grid", "patchify", "unpatchify",
    # chapter 2: positions
    "learned_pos_embed", "position_similarity", "resize_pos_embed", "sincos_pos_embed_1d", "sincos_pos_embed_2d",
    "truncated_normal_",
    # chapter 3: attention
    "MultiHeadSelfAttention",
    # chapter 4: encoder
    "MLP", "DropPath", "Encoder", "EncoderBlock", "block_num_params",
    # chapter 5: the model
    "NAMED_SIZES", "ViTConfig", "VisionTransformer", "to_resolution", "vit_config",
    "config_from_torchvision", "convert_torchvision_state_dict", "from_torchvision", "timm_kwargs",
    "torchvision_kwargs",
    # chapter 6: data and training
    "resize_images",
    # chapter 8: efficiency
    "SavedTensorMemory", "TensorMemoryTracker", "attention_matrix_bytes", "autocast_works", "peak_memory",
    # chapter 9: data efficiency
    "ResidualBlock", "SmallResNet", "DistilledVisionTransformer", "HardDistillationLoss", "hard_distillation_loss",
    "Comparison", "compare_seeds", "nested_subsets", "stratified_order",
    # chapter 10: windows, pyramids, hybrids
    "PatchMerging", "SwinBlock", "WindowAttention", "cyclic_shift", "msa_macs", "pyramid_costs",
    "relative_position_index", "shift_region_labels", "shifted_window_mask", "window_partition", "window_reverse",
    "ConvStem", "HybridViT",
]
