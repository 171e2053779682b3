"""Chapter 12: the paper's learning-rate rule, layer-wise learning-rate decay, fine-tuning at a fixed number of
images, the kNN and raw-pixel probes, and pretraining that survives an interruption."""

import pytest
import torch

from vit_from_scratch.config import ViTConfig
from vit_from_scratch.data import ImageSet
from vit_from_scratch.mae import MaskedAutoencoder, pretrain
from vit_from_scratch.mae_training import (finetune, knn_accuracy, layer_decay_groups, layer_id, pixel_features,
                                           scaled_lr)
from vit_from_scratch.model import VisionTransformer
from vit_from_scratch.recipe import TrainConfig

TINY = ViTConfig(image_size=8, patch_size=2, num_classes=3, dim=16, depth=3, num_heads=2, mlp_ratio=2.0,
                 pos_embed_type="sincos")


def _data(n=32, seed=0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8),
                    torch.randint(0, 3, (n,), generator=g), ("a", "b", "c"))


def test_scaled_lr_is_the_papers_linear_rule():
    assert scaled_lr(1.5e-4, 256) == pytest.approx(1.5e-4)
    assert scaled_lr(1e-3, 128) == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="base_lr"):
        scaled_lr(0.0, 128)


def test_layer_ids_order_embeddings_blocks_and_head():
    assert layer_id("patch_embed.proj.weight", 3) == 0 and layer_id("cls_token", 3) == 0
    assert layer_id("blocks.0.attn.qkv.weight", 3) == 1 and layer_id("blocks.2.norm1.bias", 3) == 3
    assert layer_id("norm.weight", 3) == 4 and layer_id("head.weight", 3) == 4


def test_layer_decay_scales_each_layer_and_covers_every_parameter_once():
    model = VisionTransformer(TINY)
    groups = layer_decay_groups(model, weight_decay=0.05, layer_decay=0.5)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(set(ids)) == len(ids)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale[id(model.head.weight)] == 1.0
    assert scale[id(model.blocks[2].mlp.fc1.weight)] == 0.5
    assert scale[id(model.blocks[0].mlp.fc1.weight)] == 0.125
    assert scale[id(model.patch_embed.proj.weight)] == 0.0625
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay[id(model.blocks[0].mlp.fc1.weight)] == 0.05 and decay[id(model.blocks[0].norm1.weight)] == 0.0
    assert all(g["lr_scale"] == 1.0 for g in layer_decay_groups(model, weight_decay=0.0, layer_decay=1.0))
    with pytest.raises(ValueError, match="layer_decay"):
        layer_decay_groups(model, weight_decay=0.0, layer_decay=0.0)


def test_layer_decay_moves_early_layers_less():
    """With a strong decay the embedding barely moves while the head moves as without decay."""
    data, config = _data(), TrainConfig(model=TINY, batch_size=8, lr=1e-2, warmup_epochs=0.0, padding=0, seed=0)

    def change(layer_decay):
        torch.manual_seed(0)
        model = VisionTransformer(TINY)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        finetune(model, data, config, steps=4, layer_decay=layer_decay, mean=(0.5,) * 3, std=(0.25,) * 3)
        return {k: (v - before[k]).abs().max().item() for k, v in model.state_dict().items()}

    flat, decayed = change(1.0), change(0.1)
    assert decayed["patch_embed.proj.weight"] < 0.01 * flat["patch_embed.proj.weight"]
    assert decayed["head.weight"] == pytest.approx(flat["head.weight"], rel=0.5)


@pytest.mark.parametrize("n", [16, 40])
def test_finetune_sees_exactly_steps_times_batch_images_whatever_the_labelled_set(n):
    torch.manual_seed(0)
    config = TrainConfig(model=TINY, batch_size=8, lr=1e-3, warmup_epochs=0.1, padding=1, seed=0)
    result = finetune(VisionTransformer(TINY), _data(n), config, steps=9, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert result.steps == 9 and result.images_seen == 72 and len(result.losses) == 9
    assert not result.model.training


def test_finetune_is_reproducible_and_refuses_bad_input():
    config = TrainConfig(model=TINY, batch_size=8, lr=1e-3, warmup_epochs=0.1, padding=1, seed=3)

    def run():
        torch.manual_seed(0)
        return finetune(VisionTransformer(TINY), _data(), config, steps=5, layer_decay=0.75, mean=(0.5,) * 3,
                        std=(0.25,) * 3).losses

    assert run() == run()
    with pytest.raises(ValueError, match="fewer than one batch"):
        finetune(VisionTransformer(TINY), _data(4), config, steps=2, mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(ValueError, match="steps"):
        finetune(VisionTransformer(TINY), _data(), config, steps=0, mean=(0.5,) * 3, std=(0.25,) * 3)


def test_knn_finds_the_class_of_the_nearest_training_points():
    centres = torch.eye(3) * 5
    train = centres.repeat_interleave(4, 0) + 0.1 * torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(3).repeat_interleave(4)
    assert knn_accuracy(train, labels, centres, torch.arange(3), k=3) == 1.0
    assert knn_accuracy(train, labels, centres, torch.tensor([1, 2, 0]), k=3) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        knn_accuracy(train, labels, centres, torch.arange(3), k=13)
    with pytest.raises(ValueError, match="one width"):
        knn_accuracy(train, labels, centres[:, :2], torch.arange(3))


def test_pixel_features_are_the_normalised_pixels_flattened():
    data = _data(5)
    features = pixel_features(data, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert features.shape == (5, 3 * 8 * 8)
    torch.testing.assert_close(features[0, 0], (data.images[0, 0, 0, 0] / 255 - 0.5) / 0.25)


class _Stop(Exception):
    pass


def test_pretraining_interrupted_by_an_exception_resumes_bit_for_bit(tmp_path):
    """The chapter's full run may die (a closed tab, a killed kernel); running it again continues from the
    last atomic checkpoint and ends with the weights of a run never stopped."""
    data = _data(32)
    config = TrainConfig(model=TINY, epochs=3, batch_size=8, lr=1e-3, warmup_epochs=0.5, betas=(0.9, 0.95),
                         padding=1, seed=0)

    def mae():
        torch.manual_seed(0)
        return MaskedAutoencoder(TINY, decoder_dim=8, decoder_depth=1, decoder_heads=2)

    straight = mae()
    pretrain(straight, data, config, log=None)

    def crash(epoch, model):
        if epoch == 2:
            raise _Stop

    with pytest.raises(_Stop):
        pretrain(mae(), data, config, out_dir=tmp_path, on_epoch=crash, log=None)
    resumed = mae()
    history = pretrain(resumed, data, config, out_dir=tmp_path, resume=True, log=None).history
    assert [r["epoch"] for r in history] == [1, 2, 3]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after the resume"


def test_probe_scores_give_both_probes_and_repeat_exactly():
    from vit_from_scratch.mae_training import probe_scores
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(20)
    features = torch.eye(3)[labels] * 3 + 0.3 * torch.randn(60, 3, generator=g)
    first = probe_scores(features, labels, features, labels, num_classes=3, seed=1)
    assert set(first) == {"linear", "kNN"} and min(first.values()) > 0.9
    assert probe_scores(features, labels, features, labels, num_classes=3, seed=1) == first
