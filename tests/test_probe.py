"""Chapter 12: linear probing — features from a frozen model, and a linear classifier on them."""

import pytest
import torch

from vit_from_scratch.config import ViTConfig
from vit_from_scratch.data import ImageSet, normalize
from vit_from_scratch.model import VisionTransformer
from vit_from_scratch.probe import LinearProbe, extract_features, fit_linear_probe, probe_accuracy

TINY = ViTConfig(image_size=8, patch_size=2, num_classes=3, dim=16, depth=1, num_heads=2, mlp_ratio=2.0)


def test_features_are_the_heads_input_and_the_model_is_left_as_it_was():
    torch.manual_seed(0)
    model = VisionTransformer(TINY).train()
    data = ImageSet(torch.randint(0, 256, (7, 3, 8, 8), dtype=torch.uint8), torch.zeros(7, dtype=torch.long),
                    ("a", "b", "c"))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    features = extract_features(model, data, mean=mean, std=std, batch_size=3)
    assert model.training, "the model's mode must be restored"
    model.eval()
    expected = model.forward_head(model.forward_features(normalize(data.images, mean, std)), pre_logits=True)
    torch.testing.assert_close(features, expected)


def test_a_probe_separates_separable_features_and_not_random_labels():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (400,), generator=g)
    centres = torch.randn(4, 8, generator=g) * 3 + 100  # far from zero: the standardisation must cope
    features = centres[labels] + 0.3 * torch.randn(400, 8, generator=g)
    probe = fit_linear_probe(features[:300], labels[:300], 4)
    assert probe_accuracy(probe, features[300:], labels[300:]) > 0.95
    shuffled = labels[torch.randperm(400, generator=g)]
    chance = fit_linear_probe(features[:300], shuffled[:300], 4)
    assert probe_accuracy(chance, features[300:], shuffled[300:]) < 0.5


def test_a_probe_standardises_with_the_statistics_it_was_given():
    probe = LinearProbe(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]), 3)
    with torch.no_grad():
        probe.linear.weight.copy_(torch.eye(3, 2))
        probe.linear.bias.zero_()
    torch.testing.assert_close(probe(torch.tensor([[3.0, 6.0]])), torch.tensor([[1.0, 1.0, 0.0]]))


def test_mismatched_features_and_labels_are_refused():
    with pytest.raises(ValueError, match="features"):
        fit_linear_probe(torch.randn(5, 3), torch.zeros(4, dtype=torch.long), 2)
