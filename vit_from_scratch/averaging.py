"""Chapter 6: an exponential moving average (EMA) of the weights, ``TrainConfig(ema=...)``.

After every optimiser step the average moves a small step towards the trained weights,
``average <- decay * average + (1 - decay) * weights``, so it is a smoothed version of the last few
thousand steps' weights: the noise of single steps averages out, which tends to help most at the end of a
short schedule. Evaluation, the returned model and exported weights use the average; training continues on
the raw weights. Early on the decay is capped at ``(1 + n) / (10 + n)`` after ``n`` updates (the rule of
TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``), so the average does not hold on to the
random initial weights; the cap passes 0.9995 only after about 18,000 updates.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .model import VisionTransformer, to_resolution

__all__ = ["WeightAverage"]


class WeightAverage:
    """An exponential moving average of ``model``'s parameters (buffers are copied), as a module of its own.

    ``model`` is the average, in eval mode and without gradients; :meth:`update` follows the trained module,
    :meth:`resize` follows progressive resizing, and :meth:`state_dict` / :meth:`load_state_dict` make a
    resumed run continue exactly.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), e.g. 0.999; got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses: ``decay``, capped at ``(1 + n) / (10 + n)`` after ``n`` updates."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (the same architecture and size)."""
        weight = 1 - self.current_decay()
        averaged = list(self.model.parameters())
        trained = [p.detach() for p in model.parameters()]
        if len(averaged) != len(trained):
            raise ValueError("the averaged and the trained model differ in structure; build the average from "
                             "the model it follows")
        torch._foreach_lerp_(averaged, trained, weight)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)
        self.updates += 1

    def resize(self, image_size: int) -> None:
        """Move the average to a new image size, as progressive resizing moves the trained model."""
        if isinstance(self.model, VisionTransformer) and self.model.config.image_size != image_size:
            self.model = to_resolution(self.model, image_size).eval().requires_grad_(False)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        if state["decay"] != self.decay:
            raise ValueError(f"the checkpoint's average used decay {state['decay']}, this run {self.decay}")
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]
