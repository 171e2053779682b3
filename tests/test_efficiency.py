"""Chapter 8's measuring instruments."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vit_from_scratch.attention import attention
from vit_from_scratch.efficiency import (SavedTensorMemory, TensorMemoryTracker, attention_matrix_bytes,
                                         autocast_works, peak_memory)
from vit_from_scratch.model import ViTConfig, VisionTransformer

from _helpers import randomise

TINY = dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


def test_saved_tensor_memory_counts_activations_not_parameters():
    layer = nn.Linear(16, 64)
    x = torch.randn(8, 16, requires_grad=True)
    with SavedTensorMemory(exclude=layer.parameters()) as saved:
        F.gelu(layer(x))
    assert saved.bytes == 8 * (16 + 64) * 4  # the input (for the weight's gradient) and GELU's input
    with SavedTensorMemory() as with_weights:
        F.gelu(layer(x))
    assert with_weights.bytes == saved.bytes + 16 * 64 * 4  # the weight (for x's gradient) is saved too


def test_saved_tensor_memory_counts_a_shared_storage_once():
    x = torch.randn(4, 30, requires_grad=True)
    with SavedTensorMemory() as saved:
        a, b, c = x.exp().chunk(3, dim=1)  # exp saves its output: one storage
        (a * b * c).sum()  # the products save views of that storage (and one new product)
    assert saved.bytes == 4 * 30 * 4 + 4 * 10 * 4


def test_checkpointing_keeps_only_each_blocks_input():
    model = randomise(VisionTransformer(ViTConfig(**TINY)))
    x = torch.randn(3, 3, 16, 16)
    counts = {}
    for enabled in (False, True):
        model.set_grad_checkpointing(enabled)
        with SavedTensorMemory(exclude=model.parameters()) as saved:
            model(x)
        counts[enabled] = saved.bytes
    model.set_grad_checkpointing(True)
    deeper = VisionTransformer(ViTConfig(**{**TINY, "depth": 3}))
    deeper.set_grad_checkpointing(True)
    with SavedTensorMemory(exclude=deeper.parameters()) as saved:
        deeper(x)
    B, N, D = 3, 17, 32
    assert saved.bytes - counts[True] == B * N * D * 4  # one more block: one more (B, N, D) input
    assert counts[True] < 0.5 * counts[False]


def test_tracker_reports_peak_of_live_tensors():
    with TensorMemoryTracker() as tracker:
        a = torch.ones(100, 100)
        b = a + 1
        view = b.view(-1)  # a view is not new memory
        del a, b, view
        c = torch.ones(50, 100)
    assert tracker.peak == 2 * 100 * 100 * 4 and tracker.current == 50 * 100 * 4
    del c


def test_tracker_sees_the_backward_pass():
    x = torch.randn(64, 64, requires_grad=True)

    def forward_only():
        (x @ x).sum()

    def forward_backward():
        x.grad = None
        (x @ x).sum().backward()

    assert peak_memory(forward_backward) > peak_memory(forward_only)


def test_explicit_attention_memory_is_quadratic_in_tokens():
    def step(n):
        q, k, v = (torch.randn(1, 2, n, 16, requires_grad=True) for _ in range(3))
        return peak_memory(lambda: attention(q, k, v)[0].sum().backward())

    small, large = step(128), step(512)
    assert large / small > 0.6 * 16  # 4x the tokens: ~16x the memory
    assert large >= attention_matrix_bytes(1, 2, 512)


def test_attention_matrix_bytes():
    assert attention_matrix_bytes(2, 3, 10) == 2 * 3 * 100 * 4
    assert attention_matrix_bytes(1, 1, 10, torch.bfloat16) == 200
    with pytest.raises(ValueError, match="must be positive"):
        attention_matrix_bytes(0, 3, 10)


def test_autocast_works_for_bfloat16_on_cpu_and_rejects_non_float_types():
    assert autocast_works("cpu", torch.bfloat16)
    assert not autocast_works("cpu", torch.int8)
