"""TrainConfig(ema=...): the moving average of the weights is what is evaluated, returned, saved and shipped."""

import pytest
import torch
from torch import nn

from _tiny_runs import TEST, TINY_MODEL, TRAIN, straight_and_resumed, tiny_config
from vit_from_scratch.averaging import WeightAverage
from vit_from_scratch.checkpoints import export_weights, load_checkpoint
from vit_from_scratch.loaders import make_loader
from vit_from_scratch.training import evaluate, fit


def test_the_average_follows_the_formula_with_its_warmup():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    average = WeightAverage(layer, decay=0.9)
    expected = layer.weight.detach().clone()
    for n in range(100):  # the cap (1 + n) / (10 + n) passes 0.9 at n = 81
        with torch.no_grad():
            layer.weight.add_(torch.randn_like(layer.weight))
        decay = min(0.9, (1 + n) / (10 + n))  # 0.1 at first: the initial weights are forgotten fast
        expected = decay * expected + (1 - decay) * layer.weight.detach()
        average.update(layer)
    torch.testing.assert_close(average.model.weight, expected)
    assert average.current_decay() == 0.9 and not average.model.weight.requires_grad
    assert not torch.allclose(average.model.weight, layer.weight)


def test_fit_evaluates_returns_and_exports_the_average(tmp_path):
    result = fit(tiny_config(ema=0.9), train_set=TRAIN, test_set=TEST, out_dir=tmp_path, device="cpu",
                 progress=False, log=None)
    state = load_checkpoint(tmp_path / "last.pt")
    raw = state["model"]
    averaged = result.model.state_dict()
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw)  # the returned model is the average
    for k, v in state["average"]["model"].items():
        assert torch.equal(v, averaged[k])
    loader = make_loader(TEST, 10, train=False, mean=state["mean"], std=state["std"])
    assert evaluate(result.model, loader, device="cpu")["accuracy"] == result.history[-1]["test_accuracy"]
    shipped = torch.load(export_weights(tmp_path / "last.pt", "ema_test", note="test", directory=tmp_path))
    for k, v in averaged.items():
        assert torch.equal(shipped[k], v.half() if v.is_floating_point() else v), k


@pytest.mark.parametrize("progressive", [False, True])
def test_an_ema_run_resumes_bit_exactly(tmp_path, progressive):
    resize = dict(epochs=3, low_res_epochs=1, low_res_size=8) if progressive else {}
    config = tiny_config(ema=0.8, **resize)
    straight, resumed = straight_and_resumed(config, tmp_path)
    assert resumed.model.config.image_size == TINY_MODEL["image_size"]
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert [r["test_loss"] for r in straight.history] == [r["test_loss"] for r in resumed.history]


def test_bad_ema_values_say_what_to_use():
    with pytest.raises(ValueError, match="such as 0.999"):
        tiny_config(ema=1.0)
    with pytest.raises(ValueError, match="decay must be in"):
        WeightAverage(nn.Linear(2, 2), decay=0.0)


def test_fsdp_refuses_ema_with_the_reason():
    from vit_from_scratch.distributed import Distributed

    sharded = object.__new__(Distributed)  # the check only reads the strategy and the world size
    sharded.strategy, sharded.world_size = "fsdp", 2
    with pytest.raises(ValueError, match="set ema=0, or use DDP"):
        sharded.check(tiny_config(ema=0.99))
