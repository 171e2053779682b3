"""Chapter 8's measuring instruments."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vit_from_scratch.attention import attention
from vit_from_scratch.efficiency import (Interval, SavedTensorMemory, TensorMemoryTracker,
                                         attention_matrix_bytes, autocast_works, block_ratios, growth_exponent,
                                         growth_words, interleaved_benchmark, median_interval, peak_memory,
                                         round_ratios, running_mean, speed_verdict, step_noise,
                                         curve_gaps)
from vit_from_scratch.runtime import Timing
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


def test_round_ratios_divide_the_medians_of_each_round():
    reference = [Timing([2.0, 2.0, 9.0]), Timing([3.0, 3.0])]
    other = [Timing([1.0, 1.0, 1.0]), Timing([6.0, 6.0])]
    assert round_ratios(reference, other).tolist() == [2.0, 0.5]
    with pytest.raises(ValueError, match="same number of rounds"):
        round_ratios(reference, other[:1])


def test_block_ratios_pair_neighbouring_steps():
    reference = [2.0] * 4 + [10.0] * 4  # the machine slowed down in the second half...
    other = [1.0] * 4 + [5.0] * 4  # ...for both runs, which stay twice as fast
    assert block_ratios(reference, other, 2).tolist() == [2.0, 2.0]
    assert block_ratios(reference, other, 1).tolist() == [2.0]  # one median each: 6 / 3
    with pytest.raises(ValueError, match="blocks"):
        block_ratios(reference, other, 9)
    with pytest.raises(ValueError, match="equal length"):
        block_ratios(reference, other[:3], 1)


def test_median_interval_uses_order_statistics_with_the_stated_coverage():
    six = median_interval([5, 1, 4, 2, 6, 3])
    assert (six.median, six.low, six.high, six.n) == (3.5, 1, 6, 6)
    assert six.coverage == pytest.approx(1 - 2 / 2**6)  # 96.9%: six rounds reach 95%
    five = median_interval([1, 2, 3, 4, 5])
    assert (five.low, five.high) == (1, 5) and five.coverage == pytest.approx(1 - 2 / 2**5)  # < 95%
    many = median_interval(range(1, 15))  # n = 14: the 3rd smallest and 3rd largest (98.7%)
    assert (many.low, many.high) == (3, 12)
    assert many.coverage == pytest.approx(1 - 2 * (1 + 14 + 91) / 2**14)
    assert many.coverage >= 0.95 > 1 - 2 * (1 + 14 + 91 + 364) / 2**14  # k = 4 would fall short
    assert median_interval([7.0]).coverage == 0.0
    with pytest.raises(ValueError, match="at least one"):
        median_interval([])


def test_median_interval_holds_the_median_as_often_as_it_says():
    rng = np.random.default_rng(0)
    trials = [median_interval(rng.lognormal(0.0, 0.5, 9)) for _ in range(4000)]
    hits = np.mean([t.low < 1.0 < t.high for t in trials])  # the lognormal's median is 1
    assert hits == pytest.approx(trials[0].coverage, abs=0.015)


def test_speed_verdict_needs_the_whole_interval_on_one_side_of_one():
    def interval(low, high):
        return Interval((low + high) / 2, low, high, 0.97, 6)

    assert speed_verdict(interval(1.05, 1.4)) == "faster than"
    assert speed_verdict(interval(0.6, 0.9)) == "slower than"
    assert speed_verdict(interval(0.94, 1.41)) == "within timing noise of"  # a 1.02x median is not a speed-up
    assert interval(1.05, 1.4).side(4 / 3) == "includes"
    two_rounds = median_interval([1.5, 1.6])  # both faster, but a 50% interval
    assert speed_verdict(two_rounds) == "within timing noise of"
    assert speed_verdict(median_interval([1.5, 1.6, 1.55, 1.7, 1.52])) == "faster than"  # 94%


def test_growth_words_describe_the_whole_interval():
    def interval(low, high):
        return Interval((low + high) / 2, low, high, 0.97, 6)

    assert growth_words(interval(0.95, 1.05)) == "about linearly"
    assert growth_words(interval(1.9, 2.2)) == "about quadratically"
    assert growth_words(interval(1.6, 1.97)) == "faster than linearly"
    assert growth_words(interval(2.06, 2.40)) == "about quadratically or faster"  # not weaker words
    assert growth_words(interval(2.4, 2.6)) == "faster than quadratically"
    assert growth_words(interval(1.1, 1.9)) == "at a rate these measurements do not settle"


def test_curve_gaps_measure_the_largest_distance_between_running_means():
    reference = [4.0, 3.0, 2.0, 1.0, 0.0]
    slower = [4.0, 3.5, 3.0, 2.5, 2.0]
    result = curve_gaps({"float32": reference, "bf16": slower}, "float32", window=2)
    # running means 3.5 2.5 1.5 0.5 against 3.75 3.25 2.75 2.25: largest gap 1.75
    assert result.gaps == {"bf16": pytest.approx(1.75)}
    assert result.fall == pytest.approx(3.0)
    assert result.shares() == {"bf16": pytest.approx(1.75 / 3.0)}
    assert result.noise == pytest.approx(0.0, abs=1e-12)


def test_curve_gaps_refuse_curves_that_cannot_be_compared_step_by_step():
    with pytest.raises(ValueError, match="same number of steps"):
        curve_gaps({"a": [1, 2, 3, 4], "b": [1, 2, 3]}, "a", window=2)
    with pytest.raises(ValueError, match="reference 'c'"):
        curve_gaps({"a": [1, 2, 3], "b": [1, 2, 3]}, "c", window=2)
