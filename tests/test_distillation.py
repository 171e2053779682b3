"""Distillation: DeiT's student (tokens, heads, train/eval outputs, timm's layout) and the hard-label loss."""

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _helpers import randomise
from torch import nn

from vit_from_scratch.distillation import (
    DistilledVisionTransformer,
    HardDistillationLoss,
    hard_distillation_loss,
)
from vit_from_scratch.interop import timm_kwargs
from vit_from_scratch.model import VisionTransformer, ViTConfig

CONFIG = ViTConfig(image_size=16, patch_size=4, num_classes=5, dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


def _student(**overrides):
    torch.manual_seed(0)
    return randomise(DistilledVisionTransformer(CONFIG, **overrides))


def test_student_has_two_prefix_tokens_and_returns_two_heads_in_training_and_their_mean_in_eval():
    student = _student()
    images = torch.randn(3, 3, 16, 16)
    assert student.embed(images).shape == (3, 2 + 16, 32)
    assert student.pos_embed.shape == (1, 2 + 16, 32)
    cls_logits, dist_logits = student.train()(images)
    assert cls_logits.shape == dist_logits.shape == (3, 5)
    assert not torch.allclose(cls_logits, dist_logits)  # two different heads on two different tokens
    mean = student.eval()(images)
    torch.testing.assert_close(mean, (cls_logits + dist_logits) / 2)
    assert student.forward_head(student.forward_features(images), pre_logits=True).shape == (3, 32)


def test_student_matches_timm_deit_distilled_model_in_training_and_eval():
    VisionTransformerDistilled = pytest.importorskip("timm.models.deit").VisionTransformerDistilled
    student = _student()
    reference = VisionTransformerDistilled(**timm_kwargs(CONFIG))
    reference.load_state_dict(student.state_dict())  # same key names, strict
    reference.set_distilled_training(True)
    images = torch.randn(2, 3, 16, 16)
    for ours, theirs in zip(student.train()(images), reference.train()(images)):
        torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(student.eval()(images), reference.eval()(images))


def test_without_its_distillation_token_the_student_is_the_plain_vit():
    student = _student().eval()
    vit = student.to_vit()
    assert type(vit) is VisionTransformer and vit.pos_embed.shape == (1, 1 + 16, 32)
    images = torch.randn(2, 3, 16, 16)
    x = student.embed(images)  # (B, 2+N, D)
    x = torch.cat([x[:, :1], x[:, 2:]], dim=1)  # leave the distillation token out: (B, 1+N, D)
    for block in student.blocks:
        x = block(x)
    torch.testing.assert_close(vit(images), student.head(student.norm(x)[:, 0]))
    torch.testing.assert_close(vit.embed(images), torch.cat([student.embed(images)[:, :1],
                                                             student.embed(images)[:, 2:]], dim=1))


def test_sincos_student_gets_zero_positions_for_both_prefix_tokens():
    student = DistilledVisionTransformer(CONFIG, pos_embed_type="sincos")
    assert student.pos_embed.shape == (1, 18, 32) and "pos_embed" not in dict(student.named_parameters())
    assert torch.equal(student.pos_embed[:, :2], torch.zeros(1, 2, 32))
    torch.testing.assert_close(student.to_vit().pos_embed, torch.cat([student.pos_embed[:, :1],
                                                                      student.pos_embed[:, 2:]], dim=1))


def test_distillation_token_and_head_are_initialised_and_not_weight_decayed():
    student = DistilledVisionTransformer(CONFIG)
    assert student.dist_token.abs().max() > 0 and student.dist_token.abs().max() <= 2 * 0.02
    assert not student.head_dist.weight.any() and not student.head_dist.bias.any()
    assert {"dist_token", "pos_embed", "cls_token"} <= student.no_weight_decay()


def test_student_builds_its_positions_once_and_initialises_once(monkeypatch):
    import vit_from_scratch.model as model_module
    calls = {"pos": [], "init": 0}
    learned = model_module.learned_pos_embed
    monkeypatch.setattr(model_module, "learned_pos_embed",
                        lambda n, d: calls["pos"].append(n) or learned(n, d))
    init = DistilledVisionTransformer.init_weights

    def counting_init(self):
        calls["init"] += 1
        init(self)

    monkeypatch.setattr(DistilledVisionTransformer, "init_weights", counting_init)
    student = DistilledVisionTransformer(CONFIG)
    assert calls == {"pos": [2 + 16], "init": 1} and student.num_prefix_tokens == 2


def test_logits_per_head_gives_both_heads_in_any_mode():
    student, images = _student(), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens = student.eval().forward_features(images)
        cls_logits, dist_logits = student.logits_per_head(tokens)
        torch.testing.assert_close(student.forward_head(tokens), (cls_logits + dist_logits) / 2)


def test_no_module_imports_another_modules_private_names():
    package = Path(__file__).resolve().parents[1] / "vit_from_scratch"
    private = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            internal = isinstance(node, ast.ImportFrom) and (
                node.level > 0 or (node.module or "").startswith("vit_from_scratch"))
            if internal:
                private += [f"{path.name}: {a.name} from {node.module}" for a in node.names
                            if a.name.startswith("_") and a.name != "__future__"]
    assert private == [], "private names imported across modules: " + ", ".join(private)


def test_student_refuses_mean_pooling():
    with pytest.raises(ValueError, match="needs pool='cls'"):
        DistilledVisionTransformer(CONFIG, pool="mean")


def test_hard_loss_is_half_label_cross_entropy_plus_half_cross_entropy_to_the_teachers_argmax():
    cls_logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    dist_logits = torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 3.0]])
    labels = torch.tensor([0, 1])
    teacher_logits = torch.tensor([[0.1, 0.9, 0.0], [0.0, 0.2, 5.0]])  # the teacher says 1 and 2

    def ce(logits, y):  # -log softmax(logits)[y], by hand
        return -(logits[y] - logits.exp().sum().log())

    expected = 0.5 * (ce(cls_logits[0], 0) + ce(cls_logits[1], 1)) / 2 \
        + 0.5 * (ce(dist_logits[0], 1) + ce(dist_logits[1], 2)) / 2
    torch.testing.assert_close(hard_distillation_loss(cls_logits, dist_logits, labels, teacher_logits), expected)
    # soft targets (what MixUp/CutMix give) equal to one-hot targets give the same loss
    one_hot = F.one_hot(labels, 3).float()
    torch.testing.assert_close(hard_distillation_loss(cls_logits, dist_logits, one_hot, teacher_logits), expected)


def test_hard_loss_smooths_only_the_label_term():
    cls_logits, dist_logits = torch.randn(4, 3), torch.randn(4, 3)
    labels, teacher_logits = torch.tensor([0, 1, 2, 0]), torch.randn(4, 3)
    smoothed = hard_distillation_loss(cls_logits, dist_logits, labels, teacher_logits, label_smoothing=0.1)
    expected = 0.5 * F.cross_entropy(cls_logits, labels, label_smoothing=0.1) \
        + 0.5 * F.cross_entropy(dist_logits, teacher_logits.argmax(1))
    torch.testing.assert_close(smoothed, expected)


def test_hard_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same classes"):
        hard_distillation_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1]), torch.randn(2, 4))
    with pytest.raises(ValueError, match="targets must be class indices"):
        hard_distillation_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1, 2]), torch.randn(2, 3))


class _CountingTeacher(nn.Module):
    """A teacher with batch norm, so eval mode matters; records what it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)
        self.seen = []

    def forward(self, images):
        self.seen.append((images, self.training, torch.is_grad_enabled()))
        return self.fc(self.bn(self.conv(images)).mean(dim=(2, 3)))


def test_teacher_runs_in_eval_mode_without_gradients_on_the_students_images():
    teacher = _CountingTeacher().train()
    loss_fn = HardDistillationLoss(teacher).train()  # even if someone puts the loss in training mode
    student = _student().train()
    images = torch.randn(4, 3, 16, 16)
    loss = loss_fn(student(images), torch.tensor([0, 1, 2, 3]), images)
    loss.backward()
    seen_images, training, grad_enabled = teacher.seen[-1]
    assert seen_images is images and not training and not grad_enabled
    assert all(p.grad is None for p in teacher.parameters())
    assert student.dist_token.grad is not None and student.head_dist.weight.grad.abs().sum() > 0
    running_mean = teacher.bn.running_mean.clone()
    loss_fn(student(images), torch.tensor([0, 1, 2, 3]), images)
    assert torch.equal(teacher.bn.running_mean, running_mean)  # eval mode: batch-norm statistics untouched


def test_loss_explains_a_student_that_returns_one_output():
    loss_fn = HardDistillationLoss(_CountingTeacher())
    with pytest.raises(ValueError, match="model.train"):
        loss_fn(torch.randn(2, 5), torch.tensor([0, 1]), torch.randn(2, 3, 16, 16))


def test_two_class_token_control_trains_both_heads_on_the_labels():
    from vit_from_scratch.distillation import TwoClassTokenLoss, token_cosine

    cls_logits, dist_logits = torch.randn(4, 5), torch.randn(4, 5)
    labels = torch.tensor([0, 1, 2, 3])
    expected = 0.5 * F.cross_entropy(cls_logits, labels) + 0.5 * F.cross_entropy(dist_logits, labels)
    torch.testing.assert_close(TwoClassTokenLoss()((cls_logits, dist_logits), labels, None), expected)
    with pytest.raises(ValueError, match="pair"):
        TwoClassTokenLoss()(cls_logits, labels, None)
    student = _student().eval()
    images = torch.randn(3, 3, 16, 16)
    cosine = token_cosine(student, images)
    x = student.forward_features(images)
    torch.testing.assert_close(cosine, F.cosine_similarity(student.fc_norm(x[:, 0]), student.fc_norm(x[:, 1])))
