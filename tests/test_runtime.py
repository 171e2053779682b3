"""runtime.py: device choice, seeding, the quick flag, the environment report."""

import random

import numpy as np
import pytest
import torch

from vit_from_scratch import budget, environment_report, is_quick, pick_device, seed_everything


def test_pick_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv("VIT_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device().type == "cpu"


def test_pick_device_honours_request_and_refuses_missing_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("VIT_DEVICE", "cpu")
    assert pick_device().type == "cpu"
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        pick_device("cuda")


def test_seed_everything_makes_all_generators_repeat():
    seed_everything(123)
    a = (random.random(), np.random.rand(), torch.rand(3))
    seed_everything(123)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


@pytest.mark.parametrize("value,quick", [("1", True), ("true", True), ("0", False), ("", False), ("off", False)])
def test_quick_flag_and_budget(monkeypatch, value, quick):
    monkeypatch.setenv("VIT_QUICK", value)
    assert is_quick() is quick
    assert budget(full=100, quick=2) == (2 if quick else 100)


def test_quick_flag_rejects_nonsense(monkeypatch):
    monkeypatch.setenv("VIT_QUICK", "maybe")
    with pytest.raises(ValueError, match="VIT_QUICK='maybe'"):
        is_quick()


def test_environment_report_names_device_torch_and_mode(monkeypatch):
    monkeypatch.setenv("VIT_QUICK", "1")
    line = environment_report(torch.device("cpu"))
    assert "CPU" in line and torch.__version__ in line and "quick" in line
    assert "\n" not in line
    monkeypatch.setenv("VIT_QUICK", "0")
    assert "mode: full" in environment_report(torch.device("cpu"))


def test_package_re_exports_do_not_shadow_submodules():
    import types

    import vit_from_scratch

    for name in ("patches", "positions", "attention", "encoder", "model", "runtime"):
        assert isinstance(getattr(vit_from_scratch, name), types.ModuleType), f"vit_from_scratch.{name} is shadowed"
    for name in vit_from_scratch.__all__:
        assert hasattr(vit_from_scratch, name), name


def test_to_numpy_image_scales_uint8_pixels_and_keeps_floats():
    import numpy as np
    import torch

    from vit_from_scratch.plotting import to_numpy_image

    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2)
    np.testing.assert_allclose(to_numpy_image(pixels)[0, 0], [0.0, 0.2, 1.0], rtol=1e-6)
    np.testing.assert_allclose(to_numpy_image(pixels.permute(1, 2, 0).numpy())[0, 0], [0.0, 0.2, 1.0], rtol=1e-6)
    floats = torch.tensor([0.0, 0.5, 2.0]).view(3, 1, 1).expand(3, 2, 2)
    np.testing.assert_allclose(to_numpy_image(floats)[0, 0], [0.0, 0.5, 1.0])
