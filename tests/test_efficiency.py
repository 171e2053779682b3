"""Chapter 8's measuring instruments."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vit_from_scratch.attention import attention
from vit_from_scratch.efficiency import (SavedTensorMemory, TensorMemoryTracker, attention_matrix_bytes,
                                         autocast_works, growth_exponent, interleaved_benchmark, peak_memory,
                                         running_mean, step_noise)
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


def test_growth_exponent_recovers_linear_and_quadratic_power_laws():
    n = [256, 1024, 4096]
    assert growth_exponent(n, [3 * x for x in n]) == pytest.approx(1.0)
    assert growth_exponent(n, [0.5 * x * x for x in n]) == pytest.approx(2.0)
    # a fixed overhead flattens the small sizes: the fit over all of them sees slower growth
    assert growth_exponent(n, [1e6 + x * x for x in n]) < 1.9
    with pytest.raises(ValueError, match="positive"):
        growth_exponent(n, [1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="at least two"):
        growth_exponent([1], [1.0])


def test_running_mean_averages_each_window():
    np.testing.assert_allclose(running_mean([1, 2, 3, 4, 5], 2), [1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(running_mean([1, 2, 3], 3), [2.0])
    with pytest.raises(ValueError, match="window"):
        running_mean([1, 2, 3], 4)


def test_step_noise_measures_the_noise_not_the_trend():
    steps = np.arange(20_000)
    trend = 2.3 - 0.5 * steps / steps[-1]  # a loss falling by half a nat
    assert step_noise(trend) == pytest.approx(0.0, abs=1e-9)
    noisy = trend + np.random.default_rng(0).normal(0.0, 0.1, len(steps))
    assert step_noise(noisy) == pytest.approx(0.1, rel=0.03)
    with pytest.raises(ValueError, match="at least 3"):
        step_noise([1.0, 2.0])


def test_interleaved_benchmark_alternates_settings_round_by_round():
    calls = []
    timings = interleaved_benchmark({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                    rounds=3, repeats=2, warmup=1)
    assert calls == (["a"] * 3 + ["b"] * 3) * 3  # per round: a's warmup and repeats, then b's
    assert [len(t) for t in timings.values()] == [3, 3]
    assert all(len(t.seconds) == 2 for t in timings["a"] + timings["b"])
    with pytest.raises(ValueError, match="rounds"):
        interleaved_benchmark({"a": lambda: None}, rounds=0)
