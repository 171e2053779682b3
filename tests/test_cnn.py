"""The small CNN: shapes per stage, residual shortcuts, input checks, that it learns."""

import pytest
import torch
import torch.nn.functional as F

from vit_from_scratch.cnn import ResidualBlock, SmallResNet


def test_stages_halve_resolution_and_head_gives_class_logits():
    model = SmallResNet(num_classes=7, widths=(8, 16, 32))
    images = torch.randn(2, 3, 32, 32)
    assert model.forward_features(images).shape == (2, 32, 8, 8)
    assert model(images).shape == (2, 7)


def test_block_uses_identity_shortcut_only_when_shape_is_kept():
    assert isinstance(ResidualBlock(8, 8).shortcut, torch.nn.Identity)
    assert ResidualBlock(8, 16, stride=2)(torch.randn(1, 8, 8, 8)).shape == (1, 16, 4, 4)


def test_block_adds_its_input_when_the_residual_branch_is_zero():
    block = ResidualBlock(4, 4).eval()
    torch.nn.init.zeros_(block.bn2.weight)  # F(x) = 0: the block is relu(x)
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(block(x), F.relu(x))


def test_cnn_rejects_wrong_channels_with_a_hint():
    with pytest.raises(ValueError, match="channels-last"):
        SmallResNet()(torch.randn(2, 32, 32, 3))
    with pytest.raises(ValueError, match="one or more positive"):
        SmallResNet(widths=())


def test_cnn_fits_a_tiny_batch():
    torch.manual_seed(0)
    model = SmallResNet(num_classes=3, widths=(8, 16))
    images, labels = torch.randn(12, 3, 16, 16), torch.arange(12) % 3
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    first = None
    for _ in range(30):
        loss = F.cross_entropy(model(images), labels)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_stride_two_stem_halves_every_stage_and_quarters_the_multiply_adds():
    plain = SmallResNet(num_classes=10, widths=(8, 16))
    strided = SmallResNet(num_classes=10, widths=(8, 16), stem_stride=2)
    assert strided.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 16, 8, 8)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in strided.parameters())
    head = 16 * 10
    assert strided.macs() - head == (plain.macs() - head) // 4
    with pytest.raises(ValueError, match="stem_stride"):
        SmallResNet(stem_stride=3)


def test_macs_count_every_convolution_at_its_output_size():
    model = SmallResNet(num_classes=10, widths=(8, 16)).train()
    stem = 32 * 32 * 3 * 8 * 9
    stage1 = 2 * 32 * 32 * 8 * 8 * 9
    stage2 = 16 * 16 * (8 * 16 * 9 + 16 * 16 * 9 + 8 * 16)  # conv1, conv2, 1x1 shortcut
    assert model.macs() == stem + stage1 + stage2 + 16 * 10
    before = model.stem[1].running_mean.clone()
    model.macs()
    assert model.training and torch.equal(model.stem[1].running_mean, before)  # counting leaves no trace
