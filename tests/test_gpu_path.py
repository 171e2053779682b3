"""The GPU's code path, run on the CPU so that the first real GPU run is not its first run (issue 14).

On a GPU, fit keeps the data on the device, augments whole batches there (TrivialAugment batched,
MixUp/CutMix), runs the model under autocast with a gradient scaler for fp16, and may compile it.
``augment_on="device"`` takes that path on the CPU; fp16 autocast and the scaler exist on the CPU too.
"""

import math

import pytest
import torch

from _tiny_runs import TEST, TRAIN, straight_and_resumed, tiny_config
from vit_from_scratch.loaders import BatchLoader
from vit_from_scratch.recipe import autocast_dtype, preset
from vit_from_scratch.training import fit

GPU_LIKE = dict(policy="trivialaugment", mixup=0.8, cutmix=1.0, augment_on="device", epochs=2)


def test_the_gpu_path_trains_end_to_end_on_the_cpu_with_fp16_autocast_and_the_scaler(tmp_path):
    config = tiny_config(**GPU_LIKE, amp="fp16")
    result = fit(config, train_set=TRAIN, test_set=TEST, out_dir=tmp_path / "run", device="cpu", progress=False,
                 log=None)
    assert len(result.history) == 2 and all(math.isfinite(h["train_loss"]) for h in result.history)
    assert result.history[-1]["test_accuracy"] > 1 / 3  # three classes: better than chance
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0  # the scaler ran (its state is saved to resume exactly)


def test_the_gpu_path_resumes_exactly(tmp_path):
    config = tiny_config(**GPU_LIKE, amp="bf16")
    straight, resumed = straight_and_resumed(config, tmp_path)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_gpu_path_compiles(tmp_path):
    pytest.importorskip("torch._inductor")
    config = tiny_config(**{**GPU_LIKE, "epochs": 1}, compile=True)
    result = fit(config, train_set=TRAIN, test_set=TEST, device="cpu", progress=False, log=None)
    assert math.isfinite(result.history[-1]["train_loss"])


@pytest.mark.parametrize("native_bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_amp_picks_bf16_only_where_the_gpu_has_it(monkeypatch, native_bf16, expected):
    """An A100/H100 answers True without emulation; a T4 or V100 only with emulation: it must get fp16."""
    def is_bf16_supported(including_emulation=True):
        return native_bf16 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert autocast_dtype("auto", torch.device("cuda")) == expected
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cuda")) == torch.bfloat16  # asked for: given


def test_the_gpu_preset_takes_the_batched_path_on_a_gpu(monkeypatch):
    from vit_from_scratch.data import ImageSet
    from vit_from_scratch.loaders import WorkerLoader, make_loader

    config = preset("cifar10-gpu")
    assert config.policy == "trivialaugment" and config.augment_on == "auto"
    monkeypatch.setattr(ImageSet, "to", lambda self, device: self)  # no CUDA here: keep the data where it is
    common = dict(train=True, mean=(0.5,) * 3, std=(0.5,) * 3, policy=config.policy, num_workers=0)
    assert isinstance(make_loader(TRAIN, 16, device="cuda", **common), BatchLoader)
    assert isinstance(make_loader(TRAIN, 16, device="cpu", **common), WorkerLoader)


def test_the_t4_preset_is_the_gpu_preset_cut_to_the_estimated_epochs_of_30_minutes():
    import json
    import statistics
    from pathlib import Path

    from vit_from_scratch.recipe import H200_BF16_PEAK, PRESETS, T4_FP16_PEAK, gpu_epochs_estimate

    run = json.loads((Path(__file__).parent / "benchmarks" / "results" / "cifar10-gpu-h200.json").read_text())
    assert run["hardware"]["gpu"] == "NVIDIA H200" and run["config"]["epochs"] == len(run["history"])
    images = 50_000 * len(run["history"])
    estimate = gpu_epochs_estimate(
        images / sum(r["epoch_time_s"] for r in run["history"]), measured_peak=H200_BF16_PEAK,
        target_peak=T4_FP16_PEAK, budget_s=30 * 60, reserve_s=5 * 60, images_per_epoch=50_000,
        eval_s_per_epoch=statistics.mean(r["eval_time_s"] for r in run["history"]))
    t4 = preset("cifar10-t4")
    assert t4.epochs == estimate["epochs"] == 27
    assert 27 * estimate["epoch_s"] <= 25 * 60 < 28 * estimate["epoch_s"]  # the most epochs that fit
    assert t4.amp == "auto" and t4.vit_config() == preset("cifar10-gpu").vit_config()
    assert {k: v for k, v in PRESETS["cifar10-t4"].items() if k != "epochs"} == \
        {k: v for k, v in PRESETS["cifar10-gpu"].items() if k != "epochs"} | {"amp": "auto"}


def test_gpu_epochs_estimate_scales_by_the_peak_rates_and_refuses_nonsense():
    from vit_from_scratch.recipe import gpu_epochs_estimate

    same = gpu_epochs_estimate(1000, measured_peak=1, target_peak=1, budget_s=100, reserve_s=0, images_per_epoch=1000)
    assert same == {"images_per_s": 1000, "epoch_s": 1.0, "epochs": 100}
    half = gpu_epochs_estimate(1000, measured_peak=2, target_peak=1, budget_s=100, reserve_s=20, images_per_epoch=1000,
                               eval_s_per_epoch=0.5)
    assert half["images_per_s"] == 500 and half["epoch_s"] == 3.0 and half["epochs"] == 26
    with pytest.raises(ValueError, match="reserve"):
        gpu_epochs_estimate(1000, measured_peak=1, target_peak=1, budget_s=100, reserve_s=100, images_per_epoch=10)
    with pytest.raises(ValueError, match="positive"):
        gpu_epochs_estimate(0, measured_peak=1, target_peak=1, budget_s=100, reserve_s=0, images_per_epoch=10)
