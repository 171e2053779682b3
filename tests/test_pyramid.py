"""Unit tests for vit_from_scratch.pyramid (Chapter 10): the small Swin-style pyramid."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vit_from_scratch.pyramid import SwinConfig, SwinTransformer
from vit_from_scratch.windows import PatchMerging
from _helpers import fit_one_batch, randomise

TINY = SwinConfig(image_size=16, patch_size=2, embed_dim=8, depths=(2, 2), num_heads=(1, 2), window_size=4)
THREE = SwinConfig(image_size=32, patch_size=2, embed_dim=8, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=4)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def params_by_formula(c: SwinConfig) -> int:
    """Every weight of the pyramid, counted from the config alone."""
    def block(C, heads, M):
        hidden = int(C * c.mlp_ratio)
        return 4 * C + (3 * C * C + 3 * C) + (C * C + C) + (2 * M - 1) ** 2 * heads + 2 * C * hidden + hidden + C

    total = c.in_channels * c.patch_size ** 2 * c.embed_dim + c.embed_dim + 2 * c.embed_dim  # proj + norm
    for i, (depth, heads) in enumerate(zip(c.depths, c.num_heads)):
        C, side = c.embed_dim * 2 ** i, c.image_size // c.patch_size // 2 ** i
        if i:
            total += 2 * 2 * C + 2 * C * C  # merging: LayerNorm(4C') and Linear(4C' -> 2C', no bias), C' = C/2
        total += depth * block(C, heads, min(c.window_size, side))
    C = c.embed_dim * 2 ** (len(c.depths) - 1)
    return total + 2 * C + C * c.num_classes + c.num_classes


@pytest.mark.parametrize("config", [TINY, THREE], ids=["two stages", "three stages"])
def test_each_stage_has_the_expected_grid_and_width(config):
    model = SwinTransformer(config)
    x = model.patch_embed(torch.randn(2, 3, config.image_size, config.image_size))
    side = config.image_size // config.patch_size
    assert x.shape == (2, side, side, config.embed_dim)
    for i, stage in enumerate(model.layers):
        x = stage(x)
        assert x.shape == (2, config.grid_sizes[i], config.grid_sizes[i], config.dims[i])
        assert isinstance(stage.downsample, PatchMerging) == (i > 0)
    assert model(torch.randn(2, 3, config.image_size, config.image_size)).shape == (2, config.num_classes)


@pytest.mark.parametrize("config", [TINY, THREE, SwinConfig()], ids=["tiny", "three stages", "default"])
def test_parameter_count_matches_the_formula(config):
    assert n_params(SwinTransformer(config)) == params_by_formula(config)


def test_blocks_alternate_regular_and_shifted_windows_unless_the_window_is_the_grid():
    model = SwinTransformer(THREE)  # grids 16, 8, 4 with windows of 4: the last stage is one window
    assert [b.shift_size for b in model.layers[0].blocks] == [0, 2]
    assert [b.shift_size for b in model.layers[1].blocks] == [0, 2]
    assert [b.shift_size for b in model.layers[2].blocks] == [0, 0] and model.layers[2].blocks[1].attn_mask is None


@pytest.mark.parametrize("config", [TINY, THREE], ids=["two stages", "three stages"])
def test_macs_match_the_flop_counter(config):
    model = SwinTransformer(config).eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, config.image_size, config.image_size))
    assert counter.get_total_flops() == 2 * model.macs()


def test_gradients_reach_every_parameter():
    model = randomise(SwinTransformer(TINY))  # a zero head would stop every gradient behind it
    loss = F.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    quiet = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not quiet, f"no gradient reaches {quiet}"


def test_it_learns_a_small_batch():
    torch.manual_seed(0)
    model = SwinTransformer(TINY)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    losses = fit_one_batch(model, x, y, lr=3e-3, steps=30)
    assert losses[-1] < 0.5 * losses[0]


def test_starts_like_the_vit_and_excludes_the_bias_tables_from_weight_decay():
    model = SwinTransformer(TINY)
    assert torch.all(model.head.weight == 0) and torch.all(model.patch_embed.proj.bias == 0)
    assert model.no_weight_decay() == {n for n, _ in model.named_parameters() if "relative_position" in n}
    assert len(model.no_weight_decay()) == sum(TINY.depths)


@pytest.mark.parametrize("config", [TINY, THREE], ids=["two stages", "three stages"])
def test_matches_timm_swin_with_copied_weights(config):
    timm_swin = pytest.importorskip("timm.models.swin_transformer")
    ours = randomise(SwinTransformer(config)).eval()
    theirs = timm_swin.SwinTransformer(
        img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
        depths=config.depths, num_heads=config.num_heads, window_size=config.window_size,
        mlp_ratio=config.mlp_ratio, num_classes=config.num_classes, drop_path_rate=0.0).eval()
    theirs.load_state_dict({k.replace("head.", "head.fc.", 1): v for k, v in ours.state_dict().items()})
    x = torch.randn(2, 3, config.image_size, config.image_size)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_config_rejects_shapes_that_do_not_fit():
    with pytest.raises(ValueError, match="one head count per stage"):
        SwinConfig(depths=(2, 2), num_heads=(2,))
    with pytest.raises(ValueError, match="divisible by 4"):
        SwinConfig(image_size=24, patch_size=4, depths=(2, 2, 2), num_heads=(1, 2, 4))  # 6x6 grid, merged twice
    with pytest.raises(ValueError, match="not divisible by its 3 heads"):
        SwinConfig(embed_dim=64, num_heads=(3, 4))


def test_shift_false_keeps_every_window_regular_with_the_same_weights():
    shifted, regular = SwinTransformer(THREE), SwinTransformer(THREE.replace(shift=False))
    assert all(b.shift_size == 0 and b.attn_mask is None for s in regular.layers for b in s.blocks)
    assert shifted.state_dict().keys() == regular.state_dict().keys() and regular.macs() == shifted.macs()
    regular.load_state_dict(randomise(shifted).state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(shifted(x), regular(x))  # the shift changes what the blocks compute


def test_without_the_shift_a_token_sees_only_its_own_window():
    one_stage = SwinConfig(image_size=16, patch_size=2, embed_dim=8, depths=(2,), num_heads=(1,), window_size=4)
    for shift, crosses in ((False, False), (True, True)):
        model = randomise(SwinTransformer(one_stage.replace(shift=shift)))
        x = model.patch_embed(torch.randn(1, 3, 16, 16)).detach().requires_grad_()
        model.layers(x)[0, 3, 3].sum().backward()  # a token of the top-left 4 x 4 window
        reach = x.grad[0].abs().sum(-1) > 0
        outside = reach.clone()
        outside[:4, :4] = False
        assert reach[:4, :4].all() and outside.any() == crosses


def test_shift_must_be_a_bool():
    with pytest.raises(ValueError, match="shift must be True"):
        SwinConfig(shift="no")
