"""Chapter 6: what ``fit`` asks of the processes it runs in. One process shares nothing.

``fit`` is written once for one process and for many. Every place where many processes would have to
agree (the model they step, the images each one reads, the numbers they report, the checkpoint one of
them writes) goes through an object with the methods of :class:`SingleProcess`, whose answers for one
process are "as it is". Chapter 11's :class:`~vit_from_scratch.distributed.Distributed` gives the same
methods their many-process answers (``torch.distributed``, DDP or FSDP2), so the training loop itself
never changes and a plain run stays bit-for-bit what it was.
"""

from __future__ import annotations

import torch
from torch import nn

from .data import ImageSet

__all__ = ["SingleProcess"]


class SingleProcess:
    """The parallel context of a run in one process: every hook returns its input unchanged."""

    rank = 0  # this process's number among world_size
    world_size = 1
    device: torch.device | None = None  # the device this process must use (None: the run picks one)

    @property
    def is_main(self) -> bool:
        """The process that shows progress, logs and writes files."""
        return self.rank == 0

    def check(self, config) -> None:
        """Refuse a configuration this context cannot run (one process runs them all)."""

    def seed(self, seed: int) -> None:
        """Give this process its own random stream for dropout and MixUp (one process keeps ``seed``'s)."""

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training step calls: the model itself, or a wrapper that shares gradients."""
        return model

    def eval_shard(self, data: ImageSet) -> ImageSet:
        """The part of the test set this process evaluates (labels < 0 mark padding, not counted)."""
        return data

    def sum(self, values: list[float]) -> list[float]:
        """Sums of ``values`` over the processes (counts, summed losses)."""
        return values

    def state_dicts(self, model: nn.Module, optimizer) -> tuple[dict, dict]:
        """Full (unsharded) state dicts of the model and the optimiser, to be saved."""
        return model.state_dict(), optimizer.state_dict()

    def load_state_dicts(self, model: nn.Module, optimizer, model_state: dict, optimizer_state: dict) -> None:
        """The inverse of :meth:`state_dicts`."""
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)

    def gather(self, state: dict) -> list[dict] | None:
        """Every process's ``state`` (a list on the main process), for a checkpoint; ``None`` in one process."""
        return None

    def own(self, checkpoint: dict) -> dict:
        """This process's part of a checkpoint (its random state); in one process, the checkpoint itself.
        A checkpoint of another number of processes is refused: its random streams cannot continue exactly."""
        ranks = checkpoint.get("ranks")
        written = 1 if ranks is None else len(ranks)
        if written != self.world_size:
            how = ("python -m vit_from_scratch.cli" if written == 1 else
                   f"torchrun --nproc_per_node={written} -m vit_from_scratch.distributed")
            raise ValueError(f"this checkpoint was written by {written} process{'es' * (written > 1)}; resume it "
                             f"with the same number (now {self.world_size}) for an exact continuation: {how} "
                             "with the same options")
        return checkpoint if ranks is None else ranks[self.rank]
