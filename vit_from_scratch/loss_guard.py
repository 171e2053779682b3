"""Chapter 6: stopping a run whose loss became NaN or infinite, without making a GPU wait every step.

Reading the loss on the host every step makes the host wait for the GPU every step, so the GPU idles while
Python prepares the next step's kernels. On an accelerator :class:`LossGuard` notes the first non-finite loss
on the device instead, and ``fit`` reads it every ``CHECK_EVERY`` steps and at the end of each epoch, before
anything is saved: the run stops a few steps later than it could, in the same epoch, with the same message and
the same checkpoint kept. On a CPU, where there is nothing to wait for, it is read at once.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

__all__ = ["NonFiniteLossError", "LossGuard", "CHECK_EVERY", "defer_check", "lr_at", "non_finite_error"]

CHECK_EVERY = 50  # steps between two reads of a deferred guard


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint, if one was written, is kept."""


def defer_check(device: torch.device) -> bool:
    """Whether the loss is watched on the device (any accelerator) instead of read on the host every step."""
    return device.type != "cpu"


class LossGuard:
    """The first non-finite loss of a run: :meth:`note` it every step, :meth:`found` reads it."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.deferred = device, defer_check(device)
        self.first: Tensor | None = None  # deferred: (step, loss) on the device, step -1 while none
        self.seen: tuple[int, float] | None = None  # read at once: (step, loss)

    def note(self, loss: Tensor, step: int) -> None:
        """``step``: the optimiser steps taken before the one whose loss this is."""
        loss = loss.detach()
        if not self.deferred:
            if self.seen is None and not torch.isfinite(loss):
                self.seen = (step, loss.item())
            return
        if self.first is None:
            self.first = torch.full((2,), -1.0, device=self.device)  # float32: MPS has no float64
        at = torch.full((), float(step), device=self.device)  # a fill, not a copy (exact below 2**24)
        new = (self.first[0] < 0) & ~torch.isfinite(loss)
        self.first = torch.where(new, torch.stack([at, loss.float()]), self.first)

    def found(self) -> tuple[int, float] | None:
        """(step, loss) of the first non-finite loss, or None; deferred, one wait for the device."""
        if self.seen is None and self.first is not None:
            step, loss = self.first.tolist()
            self.seen = (int(step), loss) if step >= 0 else None
        return self.seen


def lr_at(scheduler, steps_now: int, step: int) -> float:
    """The learning rate a per-step schedule gave step ``step`` of the run, ``steps_now`` steps in."""
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        steps_in_phase = scheduler.last_epoch - (steps_now - step)
        return scheduler.base_lrs[0] * scheduler.lr_lambdas[0](steps_in_phase)
    return scheduler.get_last_lr()[0]


def non_finite_error(loss: float, *, epoch: int, step: int, lr: float, checkpoint: Path | None) -> NonFiniteLossError:
    """What went wrong (0-based ``epoch`` and ``step``), which checkpoint is kept, and what to try."""
    if checkpoint is None:
        kept = ""
    elif checkpoint.exists():
        kept = f"The last good checkpoint is kept at {checkpoint}. "
    else:
        kept = f"No checkpoint was written yet ({checkpoint} is written at the end of each epoch). "
    return NonFiniteLossError(
        f"the loss became {loss} at epoch {epoch + 1}, step {step + 1} (learning rate {lr:.3g}); training "
        f"stopped. {kept}Try a lower --lr, a longer --warmup-epochs, --grad-clip 1, or --amp off.")
