"""optimizer="muon": Muon on the encoder blocks' matrices, AdamW on the rest, one schedule, exact resume."""

import pytest
import torch
import torch.nn.functional as F

from _tiny_runs import straight_and_resumed, tiny_config
from vit_from_scratch.cnn import SmallResNet
from vit_from_scratch.model import VisionTransformer
from vit_from_scratch.recipe import MuonAdamW, build_optimizer


def _model(seed=0):
    torch.manual_seed(seed)
    model = VisionTransformer(tiny_config().vit_config())
    torch.nn.init.normal_(model.head.weight, std=0.5)  # a zero head would give the blocks no gradient
    return model


def test_muon_takes_the_block_matrices_and_adamw_everything_else():
    model = _model()
    optimizer, _ = build_optimizer(model, tiny_config(optimizer="muon"), steps_per_epoch=4)
    assert isinstance(optimizer, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for g in optimizer.muon.param_groups for p in g["params"]]
    adamw = [names[id(p)] for g in optimizer.adamw.param_groups for p in g["params"]]
    depth = model.config.depth
    assert sorted(muon) == sorted(f"blocks.{i}.{m}.weight" for i in range(depth)
                                  for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))
    assert {"patch_embed.proj.weight", "head.weight", "pos_embed", "blocks.0.norm1.weight"} <= set(adamw)
    assert not set(muon) & set(adamw) and len(muon) + len(adamw) == len(names)
    decays = {names[id(p)]: g["weight_decay"] for g in optimizer.adamw.param_groups for p in g["params"]}
    assert decays["head.weight"] == 0.05 and decays["head.bias"] == 0.0  # AdamW's decay rule is kept
    assert [g["params"] for g in optimizer.param_groups] == [g["params"] for g in
                                                              optimizer.muon.param_groups + optimizer.adamw.param_groups]


@pytest.mark.parametrize("name, flattened", [("muon", True), ("adamw", False)])
def test_a_muon_step_moves_every_direction_of_the_gradient_alike(name, flattened):
    model = _model()
    optimizer, _ = build_optimizer(model, tiny_config(optimizer=name, weight_decay=0.0), steps_per_epoch=4)
    weight = model.blocks[1].attn.proj.weight
    before = weight.detach().clone()
    images, labels = torch.randn(64, 3, 16, 16), torch.arange(64) % 3
    F.cross_entropy(model(images), labels).backward()
    grad = torch.linalg.svdvals(weight.grad)
    optimizer.step()
    update = torch.linalg.svdvals(before - weight.detach())
    assert grad[3] / grad[0] < 0.1  # the gradient itself is dominated by a few directions
    # Muon orthogonalises: its 4th direction moves more than half as far as its 1st; AdamW's does not
    assert bool(update[3] / update[0] > 0.6) is flattened


def test_one_schedule_drives_both_halves_and_survives_a_reload():
    model = _model()
    optimizer, scheduler = build_optimizer(model, tiny_config(optimizer="muon", epochs=2), steps_per_epoch=4)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    lr = optimizer.muon.param_groups[0]["lr"]
    assert lr == optimizer.adamw.param_groups[0]["lr"] == optimizer.param_groups[-1]["lr"] < tiny_config().lr
    optimizer.load_state_dict(optimizer.state_dict())
    scheduler.step()
    assert optimizer.muon.param_groups[0]["lr"] == optimizer.adamw.param_groups[0]["lr"] < lr


def test_muon_training_resumes_bit_exactly(tmp_path):
    config = tiny_config(optimizer="muon")
    straight, resumed = straight_and_resumed(config, tmp_path)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert straight.history[-1]["train_loss"] < straight.history[0]["train_loss"]


def test_muon_fp16_with_the_gradient_scaler_steps():
    model = _model()
    config = tiny_config(optimizer="muon")
    optimizer, _ = build_optimizer(model, config, steps_per_epoch=4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = model.blocks[0].mlp.fc1.weight.detach().clone()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = F.cross_entropy(model(torch.randn(8, 3, 16, 16)).float(), torch.arange(8) % 3)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # through the joined groups: the Muon half's gradients too
    assert model.blocks[0].mlp.fc1.weight.grad.abs().max() < 10
    scaler.step(optimizer)
    scaler.update()
    assert not torch.equal(before, model.blocks[0].mlp.fc1.weight)


def test_bad_optimizer_choices_say_what_to_do():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        tiny_config(optimizer="sgd")
    with pytest.raises(ValueError, match="use optimizer='adamw'"):
        build_optimizer(SmallResNet(num_classes=3), tiny_config(optimizer="muon"), steps_per_epoch=4)


def test_fsdp_refuses_muon_with_the_reason():
    from vit_from_scratch.distributed import Distributed

    sharded = object.__new__(Distributed)  # the check reads the strategy, the world size and the device
    sharded.strategy, sharded.world_size, sharded.device = "fsdp", 2, torch.device("cpu")
    with pytest.raises(ValueError, match="FSDP2 shards"):
        sharded.check(tiny_config(optimizer="muon"))
    sharded.check(tiny_config(optimizer="adamw"))


def test_a_torch_without_muon_gets_a_clear_error(monkeypatch):
    """Chapter 6's preset uses Muon; an older torch (a stale Colab runtime) must say what to do."""
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(RuntimeError, match="upgrade torch .* or use optimizer='adamw'"):
        build_optimizer(_model(), tiny_config(optimizer="muon"), steps_per_epoch=4)
