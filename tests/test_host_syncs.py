"""Issue 27, the GPU step: the training loop does not make the host wait for the device every step.

A plain copy of a host tensor to a GPU waits for every kernel already queued, and so does reading a device
tensor on the host (``.item()``, ``if tensor``). Each such wait leaves the GPU idle while Python prepares the
next kernels. These tests run on a CPU, so they check the code paths, not the GPU's clock:

* the augmentation runs on the ``meta`` device, which stands in for a GPU: every host tensor that reaches it
  goes through ``runtime.to_device`` (page-locked, asynchronous on CUDA), a fixed handful per batch;
* with the deferred finite check on (as on any accelerator), the training loop reads the device a fixed number
  of times per epoch, whatever its number of steps, and a non-finite loss still stops the run with the same
  message, naming the same step, and keeps the last good checkpoint.
"""

import sys
import traceback

import pytest
import torch

from _tiny_runs import TEST, TRAIN, tiny_config
from vit_from_scratch import loss_guard, training
from vit_from_scratch.data import ImageSet
from vit_from_scratch.loaders import make_loader, mixup_cutmix
from vit_from_scratch.model import VisionTransformer
from vit_from_scratch.runtime import to_device
from vit_from_scratch.training import NonFiniteLossError, fit

COMMON = dict(device="cpu", progress=False, log=None)
FORWARD = VisionTransformer.forward


def _copies_to_meta(run):
    """Run ``run()``; return (copies made by runtime.to_device, other host-to-meta copies with where they were
    made)."""
    through, other = [], []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.device.type == "cpu" and out.device.type == "meta":
            caller = traceback.extract_stack(limit=2)[0]
            (through if caller.name == "to_device" else other).append(f"{caller.filename}:{caller.lineno}")
        return out

    torch.Tensor.to = spy
    try:
        run()
    finally:
        torch.Tensor.to = original
    return through, other


@pytest.mark.parametrize("policy, per_batch", [(None, 3), ("trivialaugment", 5)])
def test_host_draws_reach_the_device_in_a_few_asynchronous_copies(policy, per_batch):
    """Crop offsets, flips, TrivialAugment's operations and strengths, MixUp/CutMix's pairing: one copy each
    per batch (before, TrivialAugment alone made two per operation present, up to 28)."""
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    data = ImageSet(images, torch.arange(64) % 10, tuple("abcdefghij"))
    loader = make_loader(data, 16, train=True, mean=(0.5,) * 3, std=(0.25,) * 3, device="meta", policy=policy,
                         augment_on="device", repeats=2)

    def epoch():
        for x, y in loader:
            assert x.device.type == "meta" and x.shape == (16, 3, 32, 32)
            mixup_cutmix(x, y, 10, mixup_alpha=0.8, cutmix_alpha=1.0)

    through, other = _copies_to_meta(epoch)
    assert not other, f"host tensors copied to the device without to_device: {other}"
    assert len(through) == 1 + per_batch * len(loader), "the epoch's order, then a fixed few per batch"


def test_to_device_is_to_off_cuda():
    x = torch.arange(6.0)
    assert to_device(x, "cpu") is x
    assert to_device(x, "meta").device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_to_device_on_cuda_copies_exactly():
    x = torch.randn(1000, dtype=torch.float64)
    y = to_device(x, "cuda")
    assert y.device.type == "cuda" and torch.equal(y.cpu(), x)


def _nan_from(first):
    """VisionTransformer.forward, NaN in training from its ``first``-th training call (1-based) on."""
    calls = []

    def forward(model, x):
        out = FORWARD(model, x)
        if model.training:
            calls.append(1)
            if len(calls) >= first:
                return out * float("nan")
        return out

    return forward


def _nan_message(tmp_path, monkeypatch, defer, first):
    monkeypatch.setattr(loss_guard, "defer_check", lambda device: defer)
    monkeypatch.setattr(VisionTransformer, "forward", _nan_from(first))
    with pytest.raises(NonFiniteLossError) as info:
        fit(tiny_config(epochs=3), train_set=TRAIN, test_set=TEST, out_dir=tmp_path, **COMMON)
    return str(info.value)


@pytest.mark.parametrize("first", [3, 9])  # in the first epoch (6 steps), and in the second
def test_deferred_check_stops_with_the_same_message_as_the_immediate_one(tmp_path, monkeypatch, first):
    immediate = _nan_message(tmp_path / "now", monkeypatch, False, first)
    deferred = _nan_message(tmp_path / "later", monkeypatch, True, first)
    assert f"step {first}" in immediate and "learning rate" in immediate
    assert deferred == immediate.replace("/now/", "/later/")


def test_deferred_check_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(loss_guard, "defer_check", lambda device: True)
    config = tiny_config(epochs=3)
    fit(config, train_set=TRAIN, test_set=TEST, out_dir=tmp_path, stop_after_epochs=1, **COMMON)
    good = (tmp_path / "last.pt").read_bytes()
    monkeypatch.setattr(VisionTransformer, "forward", _nan_from(4))  # late in the second epoch
    with pytest.raises(NonFiniteLossError, match="last good checkpoint is kept"):
        fit(config, train_set=TRAIN, test_set=TEST, out_dir=tmp_path, resume=True, **COMMON)
    assert (tmp_path / "last.pt").read_bytes() == good


def _host_reads_in_training_loop(n_train, monkeypatch):
    """Reads of a tensor's value on the host made by training.py and loss_guard.py during one fit."""
    monkeypatch.setattr(loss_guard, "defer_check", lambda device: True)
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            if sys._getframe(1).f_code.co_filename in (training.__file__, loss_guard.__file__):
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    data = ImageSet(TRAIN.images[:n_train], TRAIN.labels[:n_train], TRAIN.classes)
    fit(tiny_config(epochs=1, batch_size=8), train_set=data, test_set=TEST, **COMMON)
    monkeypatch.undo()
    return reads


def test_the_training_loop_reads_the_device_a_fixed_number_of_times_per_epoch(monkeypatch):
    """With the deferred check, 4 steps and 12 steps make as many reads (before: one more per step)."""
    few, many = _host_reads_in_training_loop(32, monkeypatch), _host_reads_in_training_loop(96, monkeypatch)
    assert few == many and len(few) <= 5, (few, many)
