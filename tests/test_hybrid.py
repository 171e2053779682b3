"""Unit tests for vit_from_scratch.hybrid (Chapter 10): the convolutional stem and the hybrid ViT."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from _helpers import fit_one_batch
from vit_from_scratch.hybrid import ConvStem, HybridViT
from vit_from_scratch.model import VisionTransformer, ViTConfig

TINY = ViTConfig(image_size=32, patch_size=4, num_classes=10, dim=32, depth=2, num_heads=4)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_stem_gives_the_token_grid_of_4x4_patches():
    stem = ConvStem(image_size=32, dim=48, channels=(8, 16, 24), strides=(1, 2, 2))
    assert stem.grid_size == (8, 8) and stem.num_patches == 64 and stem.patch_size == 4
    assert stem(torch.randn(2, 3, 32, 32)).shape == (2, 64, 48)


def test_stem_macs_match_the_flop_counter():
    stem = ConvStem(image_size=32, dim=48, channels=(8, 16), strides=(2, 2)).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        stem(torch.randn(1, 3, 32, 32))
    assert counter.get_total_flops() == 2 * stem.macs()


def test_hybrid_reuses_the_vit_and_replaces_only_the_patch_embedding():
    vit, hybrid = VisionTransformer(TINY), HybridViT(TINY, stem_channels=(8, 16), stem_strides=(2, 2))
    rest = {k for k in vit.state_dict() if not k.startswith("patch_embed.")}
    assert rest == {k for k in hybrid.state_dict() if not k.startswith("patch_embed.")}
    assert n_params(hybrid) == n_params(vit) - n_params(vit.patch_embed) + n_params(hybrid.patch_embed)
    assert isinstance(hybrid.patch_embed, ConvStem) and hybrid(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert hybrid.embed(torch.randn(2, 3, 32, 32)).shape == (2, 65, 32)  # class token + 8 x 8 tokens


def test_hybrid_builds_no_patch_embedding_to_throw_away(monkeypatch):
    import vit_from_scratch.model as model_module

    def refuse(**kwargs):
        raise AssertionError("the default PatchEmbedding was built")

    monkeypatch.setattr(model_module, "PatchEmbedding", refuse)
    hybrid = HybridViT(TINY, stem_channels=(8, 16), stem_strides=(2, 2))
    assert isinstance(hybrid.patch_embed, ConvStem)
    assert torch.all(hybrid.patch_embed.proj.bias == 0) and torch.all(hybrid.head.weight == 0)  # ViT's init


def test_hybrid_macs_match_the_flop_counter():
    hybrid = HybridViT(TINY, stem_channels=(8, 16), stem_strides=(2, 2)).eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        hybrid(torch.randn(1, 3, 32, 32))
    assert counter.get_total_flops() == 2 * hybrid.macs()


def test_hybrid_rejects_strides_that_do_not_give_the_patch_grid():
    with pytest.raises(ValueError, match="downsample by 8, but the config's patch_size is 4"):
        HybridViT(TINY, stem_channels=(8, 16, 24), stem_strides=(2, 2, 2))
    with pytest.raises(ValueError, match="one stride per stem layer"):
        ConvStem(channels=(8, 16), strides=(2,))


def test_stem_rejects_images_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"expected images shaped \(B, 3, 32, 32\)"):
        ConvStem(image_size=32)(torch.randn(1, 3, 64, 64))


def test_hybrid_trains():
    torch.manual_seed(0)
    model = HybridViT(TINY, depth=1, stem_channels=(8, 16), stem_strides=(2, 2))
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    losses = fit_one_batch(model, x, y, lr=1e-2, steps=60)  # 20 fell only to 0.76 of the start on torch 2.9
    assert losses[-1] < 0.5 * losses[0]
    assert model.patch_embed.convs[0].weight.grad.abs().sum() > 0  # gradients reach the stem


def test_default_stem_is_xiaos_stride_2_layers_that_double_the_channels():
    stem = ConvStem(image_size=32, dim=96)
    convs = [m for m in stem.convs if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (2, 2)] and [c.out_channels for c in convs] == [64, 128]
    assert stem.grid_size == (8, 8) and stem.proj.kernel_size == (1, 1)


def test_one_block_fewer_pays_for_the_stem_at_the_chapters_size():
    config = ViTConfig(image_size=32, patch_size=4, num_classes=10, dim=96, depth=4, num_heads=3, mlp_ratio=2.0)
    hybrid = HybridViT(config, depth=3)
    assert abs(hybrid.macs() / config.macs() - 1) < 0.02  # the stem costs about one transformer block
