"""Chapter 12: the masked autoencoder's invariants — masking and unmasking, what the encoder sees, what
the loss counts, and that its encoder is the package's ViT, loadable as a classifier."""

import pytest
import torch

from vit_from_scratch.config import ViTConfig
from vit_from_scratch.data import ImageSet
from vit_from_scratch.mae import (MaskedAutoencoder, gather_tokens, mae_loss, patch_targets, pretrain,
                                  random_masking, reconstruction_images, vit_from_mae)
from vit_from_scratch.model import VisionTransformer
from vit_from_scratch.patches import patchify
from vit_from_scratch.recipe import TrainConfig

TINY = ViTConfig(image_size=8, patch_size=2, num_classes=3, dim=16, depth=2, num_heads=2, mlp_ratio=2.0)


def _mae(**kw) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(TINY, decoder_dim=8, decoder_depth=1, decoder_heads=2, **kw).eval()


@pytest.mark.parametrize("ratio, kept", [(0.75, 4), (0.5, 8), (0.0, 16), (0.9, 2)])
def test_masking_keeps_the_right_count_and_marks_exactly_the_dropped_patches(ratio, kept):
    m = random_masking(5, 16, ratio, generator=torch.Generator().manual_seed(1))
    assert m.keep.shape == (5, kept) and m.mask.shape == (5, 16) and m.restore.shape == (5, 16)
    assert torch.equal(m.mask.sum(1), torch.full((5,), 16.0 - kept))
    visible = torch.ones(5, 16)
    visible.scatter_(1, m.keep, 0.0)  # 0 at the kept indices
    assert torch.equal(m.mask, visible), "the mask must be 0 exactly at the kept patches"
    assert all(len(set(row.tolist())) == kept for row in m.keep), "a patch is kept twice"


def test_unshuffling_restores_the_original_order_exactly():
    tokens = torch.randn(3, 16, 5)
    m = random_masking(3, 16, 0.75, generator=torch.Generator().manual_seed(2))
    shuffle = m.restore.argsort(dim=1)  # the permutation the masking drew
    assert torch.equal(shuffle[:, :4], m.keep)
    assert torch.equal(gather_tokens(gather_tokens(tokens, shuffle), m.restore), tokens)
    assert not torch.equal(gather_tokens(tokens, shuffle), tokens)  # the shuffle does move tokens


def test_masks_differ_between_images_and_follow_the_generator():
    a = random_masking(8, 64, 0.75, generator=torch.Generator().manual_seed(3))
    b = random_masking(8, 64, 0.75, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.mask, b.mask)
    assert len({tuple(row.tolist()) for row in a.mask}) == 8, "every image draws its own mask"


@pytest.mark.parametrize("ratio", [1.0, -0.1, 0.99])
def test_a_ratio_that_leaves_nothing_visible_is_refused(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(1, 16, ratio)


def test_the_encoder_receives_exactly_the_kept_tokens_with_their_positions():
    mae = _mae()
    images = torch.randn(2, 3, 8, 8)
    m = random_masking(2, 16, 0.75, generator=torch.Generator().manual_seed(4))
    seen = []
    handle = mae.encoder.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    mae.forward_encoder(images, m)
    handle.remove()
    vit = mae.encoder
    everything = vit.embed(images)  # (B, 1+N, D): class token and all patches, with positions
    expected = torch.cat([everything[:, :1], gather_tokens(everything[:, 1:], m.keep)], dim=1)
    assert seen[0].shape == (2, 1 + 4, 16)
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=1e-6)


def test_with_mask_ratio_zero_the_encoder_is_the_vit_over_all_tokens():
    mae = _mae()
    images = torch.randn(2, 3, 8, 8)
    m = random_masking(2, 16, 0.0, generator=torch.Generator().manual_seed(5))
    assert not m.mask.any()
    latent = mae.forward_encoder(images, m)  # (B, 1+N, D), patches in shuffled order
    unshuffled = torch.cat([latent[:, :1], gather_tokens(latent[:, 1:], m.restore)], dim=1)
    torch.testing.assert_close(unshuffled, mae.encoder.forward_features(images), rtol=1e-5, atol=1e-5)


def test_with_mask_ratio_zero_the_loss_is_an_autoencoders_over_all_patches():
    mae = _mae()
    images = torch.randn(2, 3, 8, 8)
    out = mae(images, mask_ratio=0.0)
    target = patch_targets(images, 2)
    torch.testing.assert_close(out.loss, (out.pred - target).pow(2).mean())


def test_the_loss_ignores_visible_targets_and_follows_masked_ones():
    torch.manual_seed(6)
    pred, target = torch.randn(2, 16, 12), torch.randn(2, 16, 12)
    mask = (torch.rand(2, 16) < 0.75).float()
    mask[:, 0], mask[:, 1] = 1.0, 0.0
    loss = mae_loss(pred, target, mask)
    visible_changed = target.clone()
    visible_changed[mask == 0] += 10.0
    assert torch.equal(mae_loss(pred, visible_changed, mask), loss)
    masked_changed = target.clone()
    masked_changed[:, 0] += 1.0  # one masked patch per image
    assert mae_loss(pred, masked_changed, mask) != loss
    manual = sum(((pred[b, i] - target[b, i]) ** 2).mean() for b in range(2) for i in range(16) if mask[b, i])
    torch.testing.assert_close(loss, manual / mask.sum())


def test_the_models_loss_does_not_depend_on_the_visible_pixels_it_is_given_as_targets():
    mae = _mae()
    images = torch.randn(1, 3, 8, 8)
    out = mae(images, generator=torch.Generator().manual_seed(7))
    target = patch_targets(images, 2)
    visible = out.masking.mask == 0
    scrambled = target.clone()
    scrambled[visible] = torch.randn_like(scrambled[visible])
    assert torch.equal(mae_loss(out.pred, scrambled, out.masking.mask), out.loss)


def test_normalised_targets_have_zero_mean_and_unit_variance_per_patch():
    images = torch.rand(2, 3, 8, 8) * 5 + 3
    t = patch_targets(images, 2)
    torch.testing.assert_close(t.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.var(-1), torch.ones(2, 16), atol=1e-3, rtol=0)
    assert torch.equal(patch_targets(images, 2, norm_pix=False), patchify(images, 2))


def test_the_encoder_loads_into_a_vision_transformer_with_plain_load_state_dict():
    mae = _mae()
    vit = VisionTransformer(TINY)
    vit.load_state_dict(mae.encoder.state_dict())  # strict: the same names and shapes
    assert all(k.startswith(("encoder.", "decoder", "mask_token")) for k in mae.state_dict())


def test_vit_from_mae_carries_the_encoder_and_a_new_head():
    mae = _mae()
    with torch.no_grad():
        mae.encoder.head.weight.fill_(3.0)  # a head the classifier must not inherit
    vit = vit_from_mae(mae, num_classes=7).eval()
    images = torch.randn(2, 3, 8, 8)
    assert vit.head.out_features == 7 and torch.equal(vit.head.weight, torch.zeros(7, 16))
    torch.testing.assert_close(vit.forward_features(images), mae.encoder.forward_features(images))
    from_state = vit_from_mae(mae.encoder.state_dict(), TINY)
    assert torch.equal(from_state.blocks[1].mlp.fc2.weight, mae.encoder.blocks[1].mlp.fc2.weight)
    with pytest.raises(ValueError, match="ViTConfig"):
        vit_from_mae(mae.encoder.state_dict())


def test_a_mean_pooled_encoder_without_class_token_works_too():
    torch.manual_seed(0)
    mae = MaskedAutoencoder(TINY.replace(pool="mean"), decoder_dim=8, decoder_depth=1, decoder_heads=2)
    out = mae(torch.randn(2, 3, 8, 8))
    assert out.pred.shape == (2, 16, 12) and torch.isfinite(out.loss)


def test_reconstruction_pictures_keep_the_visible_patches_exactly():
    mae = _mae()
    images = torch.randn(2, 3, 8, 8)
    out = mae(images, generator=torch.Generator().manual_seed(8))
    masked, pasted = reconstruction_images(mae, images, out)
    visible = (out.masking.mask == 0).unsqueeze(-1)
    torch.testing.assert_close(patchify(pasted, 2)[visible.expand(-1, -1, 12)],
                               patchify(images, 2)[visible.expand(-1, -1, 12)])
    assert torch.all(patchify(masked, 2)[~visible.expand(-1, -1, 12)] == 0)


def _toy_images(n=64):
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8),
                    torch.zeros(n, dtype=torch.long), ("x", "y", "z"))


def test_pretraining_lowers_the_loss_and_resumes_exactly(tmp_path):
    config = TrainConfig(model=TINY, epochs=3, batch_size=16, lr=3e-3, warmup_epochs=0.5, padding=0, flip=False)
    data = _toy_images()
    straight = _mae(mask_ratio=0.5)
    history = pretrain(straight, data, config, log=None).history
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]
    interrupted = _mae(mask_ratio=0.5)
    pretrain(interrupted, data, TrainConfig(**{**config.to_dict(), "max_steps": 4}), out_dir=tmp_path, log=None)
    resumed = _mae(mask_ratio=0.5)
    result = pretrain(resumed, data, config, out_dir=tmp_path, resume=True, log=None)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs after resuming")


def test_a_given_masking_is_used_as_it_is():
    mae = _mae()
    images = torch.randn(2, 3, 8, 8)
    m = random_masking(2, 16, 0.5, generator=torch.Generator().manual_seed(9))
    a, b = mae(images, masking=m), mae(images, masking=m, mask_ratio=0.0)
    assert a.masking is m and torch.equal(a.pred, b.pred)


def test_pretraining_refuses_to_overwrite_a_run_and_checks_what_it_resumes(tmp_path):
    """Issue 28.1: a finished run is kept unless resumed or overwritten explicitly; a resume must match the
    run's config, decoder settings and data; resuming from nothing is an error, not a fresh start."""
    config = TrainConfig(model=TINY, epochs=1, batch_size=16, lr=3e-3, warmup_epochs=0.5, padding=0, flip=False)
    data = _toy_images(32)
    pretrain(_mae(), data, config, out_dir=tmp_path, log=None)
    before = (tmp_path / "mae_last.pt").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a run"):
        pretrain(_mae(), data, config, out_dir=tmp_path, log=None)
    with pytest.raises(ValueError, match="another configuration") as info:
        pretrain(_mae(), data, TrainConfig(**{**config.to_dict(), "lr": 1e-3}), out_dir=tmp_path, resume=True,
                 log=None)
    assert "lr: checkpoint 0.003, now 0.001" in str(info.value)
    with pytest.raises(ValueError, match="mask_ratio: checkpoint 0.75, now 0.5"):
        pretrain(_mae(mask_ratio=0.5), data, config, out_dir=tmp_path, resume=True, log=None)
    darker = ImageSet(data.images // 2, data.labels, data.classes)
    with pytest.raises(ValueError, match="other training data"):
        pretrain(_mae(), darker, config, out_dir=tmp_path, resume=True, log=None)
    assert (tmp_path / "mae_last.pt").read_bytes() == before
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        pretrain(_mae(), data, config, out_dir=tmp_path / "empty", resume=True, log=None)
    assert pretrain(_mae(), data, config, out_dir=tmp_path, resume=True, log=None).history[-1]["step"] == 2
    pretrain(_mae(mask_ratio=0.5), data, config, out_dir=tmp_path, overwrite=True, log=None)
    assert (tmp_path / "mae_last.pt").read_bytes() != before


def test_pretraining_stopped_by_max_steps_inside_an_epoch_resumes_bit_for_bit(tmp_path):
    """Issue 28.2 for MAE pretraining: a max_steps stop inside an epoch resumes inside that epoch."""
    config = TrainConfig(model=TINY, epochs=2, batch_size=16, lr=3e-3, warmup_epochs=0.5)  # 4 steps an epoch
    data = _toy_images(64)
    straight = _mae()
    expected = pretrain(straight, data, config, log=None).history
    pretrain(_mae(), data, TrainConfig(**{**config.to_dict(), "max_steps": 6}), out_dir=tmp_path, log=None)
    resumed = _mae()
    history = pretrain(resumed, data, config, out_dir=tmp_path, resume=True, log=None).history
    assert [r["step"] for r in history] == [r["step"] for r in expected] == [4, 8]
    assert [r["loss"] for r in history] == [r["loss"] for r in expected]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resuming"
