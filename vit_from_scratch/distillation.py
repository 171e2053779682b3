"""Chapter 9: DeiT's distillation token and hard-label distillation (Touvron et al., 2021).

The student is a ViT with one more learned token, the distillation token, beside the class token. The
class token's head learns the true labels; the distillation token's head learns what a teacher (here a
CNN) predicts for the same augmented image. At inference the two heads' logits are averaged.

DeiT's control (Touvron et al., 2021, sec. 4): the same two tokens and two heads, both trained on the
true labels (:class:`TwoClassTokenLoss`). If the student gained over a plain ViT only because it has one
more token, the control would gain as much. DeiT found that the second class token brings nothing, that
the two class tokens converge to almost the same vector (cosine 0.999) with quasi-identical outputs, and
that a class and a distillation token end the network less alike (cosine 0.93).

Letters: B batch, C channels, H/W image height/width, N patches, D width, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import VisionTransformer, ViTConfig
from .positions import truncated_normal_

__all__ = ["DistilledVisionTransformer", "hard_distillation_loss", "HardDistillationLoss", "TwoClassTokenLoss",
           "token_cosine"]


class DistilledVisionTransformer(VisionTransformer):
    """DeiT's student: a :class:`VisionTransformer` with a distillation token and a second head.

    The token sequence is ``[class, distillation, patch_1 .. patch_N]`` with a position for each (as in
    DeiT and timm's ``VisionTransformerDistilled``, whose state-dict keys it shares: ``dist_token``,
    ``head_dist``). The encoder, norms and patch embedding are the plain ViT's, unchanged: the base
    class builds them with room for one extra prefix token (``extra_tokens = 1``) and without
    initialising (``weight_init="skip"``); the new parts are added, then everything is initialised once.

    In training mode the forward pass returns ``(cls_logits, dist_logits)``, one per head; in eval mode
    the average ``(cls_logits + dist_logits) / 2`` (timm's choice at inference; the DeiT paper adds the
    two heads' softmax outputs instead).

    Args:
        config: a :class:`ViTConfig` or a size name; it must use class-token pooling.
        **overrides: config fields to change, e.g. ``num_classes=10``.

    Shape:
        (B, C, H, W) -> (B, K), or a pair of (B, K) in training mode
    """

    extra_tokens = 1  # the distillation token, after the class token: positions for 2 + N tokens

    def __init__(self, config: ViTConfig | str | None = None, **overrides: Any) -> None:
        super().__init__(config, weight_init="skip", **overrides)
        c = self.config
        if c.pool != "cls":
            raise ValueError(f"the distillation student reads its class and distillation tokens, so it needs "
                             f"pool='cls', got pool={c.pool!r}; build it with pool='cls'")
        self.dist_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.head_dist = nn.Linear(c.dim, c.num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        """The plain ViT's initialisation; distillation token truncated normal (std 0.02, as DeiT and
        timm), distillation head zeros like the class head."""
        super().init_weights()
        truncated_normal_(self.dist_token, 0.02)
        nn.init.zeros_(self.head_dist.weight)
        nn.init.zeros_(self.head_dist.bias)

    def no_weight_decay(self) -> set[str]:
        """Position embedding, class and distillation tokens."""
        return super().no_weight_decay() | {"dist_token"}

    def embed(self, images: Tensor) -> Tensor:
        """Patches, class and distillation tokens, positions.

        Shape:
            (B, C, H, W) -> (B, 2+N, D)
        """
        x = self.patch_embed(images)  # (B, N, D)
        B = x.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), self.dist_token.expand(B, -1, -1), x], dim=1)  # (B, 2+N, D)
        return self.pos_drop(x + self.pos_embed)  # (B, 2+N, D)

    def logits_per_head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Both heads' logits, in any mode: class head on token 0, distillation head on token 1.

        Shape:
            (B, 2+N, D) -> ((B, K), (B, K))
        """
        return self.head(self.fc_norm(x[:, 0])), self.head_dist(self.fc_norm(x[:, 1]))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The model's output from the encoded sequence, as timm's ``forward_head``: training,
        ``(cls_logits, dist_logits)`` (:meth:`logits_per_head`); eval, their average.
        ``pre_logits``: the two tokens' average feature (as timm).

        Shape:
            (B, 2+N, D) -> (B, K), or ((B, K), (B, K)) in training mode, or (B, D) with ``pre_logits``
        """
        if pre_logits:
            return (self.fc_norm(x[:, 0]) + self.fc_norm(x[:, 1])) / 2  # (B, D)
        cls_logits, dist_logits = self.logits_per_head(x)
        if self.training:
            return cls_logits, dist_logits
        return (cls_logits + dist_logits) / 2  # (B, K)

    def to_vit(self) -> VisionTransformer:
        """A plain :class:`VisionTransformer` with this student's weights and without the distillation
        token, its position and its head (copies, not shared).

        Its output equals this student's class head run on the token sequence with the distillation
        token left out: the token is the only thing distillation adds to the architecture.
        """
        vit = VisionTransformer(self.config)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(("dist_token", "head_dist"))}
        state["pos_embed"] = torch.cat([state["pos_embed"][:, :1], state["pos_embed"][:, 2:]], dim=1)  # (1, 1+N, D)
        vit.load_state_dict({k: v.clone() for k, v in state.items()})
        return vit.to(self.pos_embed.device).train(self.training)


def hard_distillation_loss(cls_logits: Tensor, dist_logits: Tensor, targets: Tensor, teacher_logits: Tensor, *,
                           label_smoothing: float = 0.0) -> Tensor:
    """DeiT's hard-label distillation: ``½ CE(cls_logits, y) + ½ CE(dist_logits, argmax teacher_logits)``.

    The class head learns the labels ``targets``: class indices (B,) or soft targets (B, K), such as
    MixUp/CutMix give, optionally label-smoothed. The distillation head learns the teacher's hard
    decision, without smoothing (as DeiT's code).

    Shape:
        (B, K), (B, K), (B,) or (B, K), (B, K) -> ()
    """
    B, K = cls_logits.shape
    if dist_logits.shape != (B, K) or teacher_logits.shape != (B, K):
        raise ValueError(f"cls_logits, dist_logits and teacher_logits must all be (B, K); got "
                         f"{tuple(cls_logits.shape)}, {tuple(dist_logits.shape)}, {tuple(teacher_logits.shape)}: "
                         "student and teacher must predict the same classes")
    if targets.shape not in ((B,), (B, K)):
        raise ValueError(f"targets must be class indices (B,) = ({B},) or soft targets (B, K) = ({B}, {K}), "
                         f"got {tuple(targets.shape)}")
    teacher_labels = teacher_logits.argmax(dim=1)  # (B,) the teacher's decision
    label_loss = F.cross_entropy(cls_logits.float(), targets, label_smoothing=label_smoothing)
    teacher_loss = F.cross_entropy(dist_logits.float(), teacher_labels)
    return 0.5 * label_loss + 0.5 * teacher_loss


class HardDistillationLoss(nn.Module):
    """:func:`hard_distillation_loss` with its teacher, in the form ``fit(loss_fn=...)`` calls.

    ``loss(output, targets, images)``: ``output`` is the student's ``(cls_logits, dist_logits)``; the
    teacher sees the same augmented ``images`` as the student, in eval mode and without gradients
    (it is put in eval mode on every call, so batch norm uses its running statistics). The teacher must
    expect the same normalisation as the student, e.g. trained by ``fit`` on the same training set.

    Args:
        teacher: a trained classifier with the student's K classes.
        label_smoothing: smoothing of the true-label term only.
    """

    def __init__(self, teacher: nn.Module, *, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.teacher = teacher.eval()
        self.label_smoothing = label_smoothing

    def forward(self, output: Sequence[Tensor], targets: Tensor, images: Tensor) -> Tensor:
        if not isinstance(output, (tuple, list)) or len(output) != 2:
            raise ValueError("expected the student's pair (cls_logits, dist_logits), got "
                             f"{type(output).__name__}: use a DistilledVisionTransformer in training mode "
                             "(model.train()), which returns one output per head")
        self.teacher.eval()
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        return hard_distillation_loss(output[0], output[1], targets, teacher_logits.float(),
                                      label_smoothing=self.label_smoothing)


class TwoClassTokenLoss(nn.Module):
    """DeiT's control: ``½ CE(cls_logits, y) + ½ CE(dist_logits, y)``, no teacher.

    With a :class:`DistilledVisionTransformer` it trains two class tokens, each with its own head, on the
    labels: the student's architecture with distillation's only new ingredient, the teacher, taken away.
    Same form as :class:`HardDistillationLoss` (``loss(output, targets, images)``).
    """

    def __init__(self, *, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, output: Sequence[Tensor], targets: Tensor, images: Tensor | None = None) -> Tensor:
        if not isinstance(output, (tuple, list)) or len(output) != 2:
            raise ValueError("expected the model's pair (cls_logits, dist_logits), got "
                             f"{type(output).__name__}: use a DistilledVisionTransformer in training mode")
        return sum(0.5 * F.cross_entropy(z.float(), targets, label_smoothing=self.label_smoothing) for z in output)


@torch.no_grad()
def token_cosine(model: DistilledVisionTransformer, images: Tensor) -> Tensor:
    """Cosine similarity of the two prefix tokens' outputs (after the final norm), per image: how alike
    the two heads' inputs are (DeiT: quasi-identical for two class tokens; 0.93 for a class and a
    distillation token at the last layer).

    Shape:
        (B, C, H, W) -> (B,)
    """
    x = model.forward_features(images)  # (B, 2+N, D)
    return F.cosine_similarity(model.fc_norm(x[:, 0]), model.fc_norm(x[:, 1]), dim=-1)
