"""Chapter 11: the same trainer on many processes, GPUs and machines, with ``torch.distributed``.

:class:`Distributed` gives :class:`~vit_from_scratch.parallel.SingleProcess`'s hooks their
many-process answers, so ``training.fit`` runs unchanged:

* the model is wrapped in ``DistributedDataParallel`` (gradients all-reduced in buckets during the
  backward pass), or sharded with FSDP2 (``fully_shard``: each encoder block, then the root). On GPUs
  with bf16 autocast, FSDP2 also gets a ``MixedPrecisionPolicy`` (:func:`fsdp_policy`): bf16
  all-gathers, fp32 gradient reduction. Over several machines FSDP2 becomes HSDP on a 2-D mesh
  (:func:`fsdp_mesh_shape`): sharded inside a machine, replicated across machines;
* each process reads its slice of every global batch of the one shuffled order, so ``batch_size``
  stays the global batch and the learning-rate schedule is laid out in global steps;
* training and test numbers are sums over the processes (correct counts, summed losses), and every
  test image is counted once: shards are padded to equal length with images labelled -100;
* only rank 0 shows progress, logs and writes ``last.pt``/``history.json``/``test.json`` (atomically); the
  checkpoint holds full, unsharded weights and every rank's random state, so ``--resume`` restores
  every process and the weights load into a plain :class:`~vit_from_scratch.model.VisionTransformer`.

Run under torchrun with the command line's own options:
``torchrun --nproc_per_node=2 -m vit_from_scratch.distributed --preset cifar10-cpu --out runs/ddp``.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .data import ImageSet
from .parallel import SingleProcess
from .recipe import TrainConfig, autocast_dtype

__all__ = ["Distributed", "free_port", "spawn", "fit_worker", "main", "STRATEGIES", "fsdp_policy",
           "fsdp_mesh_shape"]

STRATEGIES = ("ddp", "fsdp")
PAD_LABEL = -100  # F.cross_entropy's ignore_index: a padded test image adds no loss and is not counted


def _rank_seed(seed: int, rank: int) -> int:
    """One 63-bit seed per (run seed, rank): each process's own stream for dropout and MixUp."""
    digest = hashlib.sha256(f"vit_from_scratch:{seed}:rank:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Distributed(SingleProcess):
    """The parallel context of one of ``world_size`` processes; the process group must exist (see
    :meth:`start`). ``strategy``: "ddp" (replicated model, all-reduced gradients) or "fsdp" (FSDP2:
    parameters, gradients and optimiser state sharded across the processes)."""

    def __init__(self, strategy: str = "ddp", device: torch.device | str | None = None) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: use Distributed.start() under torchrun "
                               "(or spawn() from Python)")
        self.strategy, self.rank, self.world_size = strategy, dist.get_rank(), dist.get_world_size()
        self.device = _local_device(device)
        self.amp_dtype: torch.dtype | None = None  # the run's autocast dtype, set by check()

    @classmethod
    def start(cls, strategy: str = "ddp", device: torch.device | str | None = None) -> Distributed:
        """Initialise the process group from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
        MASTER_PORT, LOCAL_RANK): NCCL when the device is a GPU, gloo on the CPU. ``device="cuda"`` (or the
        default, on a machine with GPUs) is this process's own GPU, ``cuda:LOCAL_RANK``."""
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(f"{', '.join(missing)} not set: launch with torchrun --nproc_per_node=N (or "
                               "spawn() from Python); a plain run is `python -m vit_from_scratch.cli`")
        device = _local_device(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=10))
        return cls(strategy, device)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def check(self, config: TrainConfig) -> None:
        if config.batch_size % self.world_size:
            raise ValueError(f"the global batch of {config.batch_size} images does not divide among {self.world_size} "
                             f"processes; choose a multiple of {self.world_size} (each process takes "
                             "batch_size / world_size)")
        if self.strategy == "fsdp" and config.low_res_epochs:
            raise ValueError("progressive resizing rebuilds the model at a new size, which a sharded (FSDP2) model "
                             "cannot do here; set low_res_epochs=0, or use DDP")
        if self.strategy == "fsdp" and config.ema:
            raise ValueError("ema keeps a full copy of the weights, which a sharded (FSDP2) model does not have "
                             "here; set ema=0, or use DDP")
        if self.strategy == "fsdp" and config.optimizer != "adamw":
            raise ValueError(f"optimizer={config.optimizer!r} orthogonalises whole matrices, which FSDP2 shards "
                             "across processes; use optimizer='adamw' with FSDP2, or use DDP")
        self.amp_dtype = autocast_dtype(config.amp, self.device)  # wrap() picks FSDP2's precision from it

    def seed(self, seed: int) -> None:
        torch.manual_seed(_rank_seed(seed, self.rank))  # the weights are drawn: now each rank its own stream

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.strategy == "ddp":
            ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(model, device_ids=ids)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        shape = fsdp_mesh_shape(self.world_size, int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size)))
        names = ("replicate", "shard") if len(shape) == 2 else None  # 2-D: HSDP
        mesh = init_device_mesh(self.device.type, shape, mesh_dim_names=names)
        policy = fsdp_policy(self.device, self.amp_dtype)
        for block in getattr(model, "blocks", []):  # each block's parameters gathered only while it runs
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)  # the rest: embeddings, final norm, head
        return model

    def eval_shard(self, data: ImageSet) -> ImageSet:
        """Images rank, rank + W, rank + 2W, ... of the test set, padded to ceil(N / W) with labels -100,
        so that every process runs the same number of batches (FSDP2 needs them all in every forward)."""
        n, W = len(data), self.world_size
        index = torch.arange(self.rank, n, W)
        pad = -(-n // W) - len(index)
        images, labels = data.images[index], data.labels[index]
        if pad:
            images = torch.cat([images, data.images[:1].expand(pad, *data.images.shape[1:])])
            labels = torch.cat([labels, torch.full((pad,), PAD_LABEL, dtype=labels.dtype)])
        return ImageSet(images, labels, data.classes, data.source + f" (shard {self.rank} of {W})")

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)  # float64: counts and summed losses exact far past any data set's size
        return t.tolist()

    def state_dicts(self, model: nn.Module, optimizer) -> tuple[dict, dict]:
        if self.strategy == "ddp":
            return model.state_dict(), optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        full = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered on rank 0, on its CPU
        return get_model_state_dict(model, options=full), get_optimizer_state_dict(model, optimizer, options=full)

    def load_state_dicts(self, model: nn.Module, optimizer, model_state: dict, optimizer_state: dict) -> None:
        if self.strategy == "ddp":
            return super().load_state_dicts(model, optimizer, model_state, optimizer_state)
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        full = StateDictOptions(full_state_dict=True)  # every rank read the file: each keeps its shard
        set_model_state_dict(model, model_state, options=full)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=full)

    def gather(self, state: dict) -> list[dict] | None:
        states = [None] * self.world_size
        dist.all_gather_object(states, state)
        return states


def fsdp_policy(device: torch.device, amp_dtype: torch.dtype | None):
    """FSDP2's ``MixedPrecisionPolicy`` for a run on ``device`` whose autocast dtype is ``amp_dtype``.

    Autocast alone casts each weight to bf16 *after* FSDP2 has all-gathered it in fp32: the
    all-gathers (the bulk of FSDP2's traffic) then move 4 bytes per parameter. With
    ``param_dtype=bf16`` FSDP2 casts its fp32 shard to bf16 before the all-gather (2 bytes), the
    unsharded weights and their gradients are bf16, and ``reduce_dtype=fp32`` adds the gradients
    of the processes in fp32 (a bf16 sum over many processes loses low bits); the shards, the
    optimiser state and its step stay fp32. On a GPU with bf16 only: on the CPU (gloo, no autocast)
    and with fp16 (which needs the gradient scaler) the policy casts nothing.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if device.type == "cuda" and amp_dtype == torch.bfloat16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()  # fp32 all-gathers and reductions


def fsdp_mesh_shape(world_size: int, local_world_size: int) -> tuple[int, ...]:
    """FSDP2's device mesh: ``(W,)`` on one machine (shard over all processes); over several machines
    of ``local_world_size`` processes each, ``(machines, local_world_size)``: HSDP, sharded inside a
    machine (its fast links carry the all-gathers of every block) and replicated across machines
    (only one all-reduce of each shard's gradients per step crosses the slower network)."""
    if local_world_size >= world_size or world_size % local_world_size:
        return (world_size,)
    return (world_size // local_world_size, local_world_size)


def _local_device(requested: torch.device | str | None = None) -> torch.device:
    """This process's device: one GPU per process on a machine, ``cuda:LOCAL_RANK``, or the CPU. ``requested``
    (``--device``): None (that GPU if there is one, else the CPU), "cpu", "cuda", or "cuda:LOCAL_RANK"."""
    local_rank, world_size = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cuda", "cpu"):
        raise ValueError(f"device {str(requested)!r} (--device) cannot be used under torchrun: use cuda (one GPU "
                         "per process, NCCL) or cpu (gloo)")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {str(requested)!r} (--device) was requested but CUDA is not available here; "
                           "use --device cpu")
    if device.index is None:
        device = torch.device("cuda", local_rank)
    elif device.index != local_rank and world_size > 1:
        raise ValueError(f"device {str(requested)!r} (--device) would put every process on GPU {device.index}; "
                         "under torchrun each process takes the GPU of its LOCAL_RANK: use --device cuda")
    if device.index >= torch.cuda.device_count():
        raise RuntimeError(f"the process with LOCAL_RANK={local_rank} needs GPU {device.index}, but only "
                           f"{torch.cuda.device_count()} GPU(s) are visible; start at most that many processes "
                           "per machine (--nproc_per_node)")
    return device


# --------------------------------------------------------------------------- launching from Python


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a local process group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(rank: int, world_size: int, port: int, threads: int, fn: Callable, args: tuple, kwargs: dict,
             out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", timeout=timedelta(minutes=5))
    try:
        result = fn(*args, **kwargs)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, world_size: int = 2, *args: Any, threads: int = 1, **kwargs: Any) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` in ``world_size`` fresh CPU processes joined in a gloo process group on a free
    port of 127.0.0.1, with ``threads`` threads each; return every rank's result (tensors, numbers,
    strings, lists and dicts), rank 0's first. ``fn`` must be importable (defined in a module)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_spawned, args=(world_size, free_port(), threads, fn, args, kwargs, out),
                           nprocs=world_size, start_method="spawn")
        return [torch.load(Path(out) / f"rank{r}.pt", weights_only=True) for r in range(world_size)]


def fit_worker(config: dict, train_set: ImageSet, test_set: ImageSet, strategy: str = "ddp",
               **fit_kwargs: Any) -> dict:
    """``fit`` in one of the processes of :func:`spawn` (or of one process, when none were started):
    the full weights (as a plain model's state dict) and the history."""
    from .training import fit

    parallel = Distributed(strategy, "cpu") if dist.is_initialized() else None
    result = fit(TrainConfig.from_dict(config), train_set=train_set, test_set=test_set, device="cpu",
                 progress=False, log=None, parallel=parallel, **fit_kwargs)
    if parallel is not None and strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(result.model, options=StateDictOptions(full_state_dict=True))
    else:
        weights = result.model.state_dict()
    return {"model": {k: v.detach().clone() for k, v in weights.items()}, "history": result.history}


# --------------------------------------------------------------------------- the command line under torchrun


def main(argv: list[str] | None = None) -> int:
    """``torchrun ... -m vit_from_scratch.distributed [the command line's options] [--fsdp]``."""
    from .cli import EXPECTED_ERRORS, build_parser, run_parsed

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parser.prog = "torchrun --nproc_per_node=N -m vit_from_scratch.distributed"
    parser.add_argument("--fsdp", action="store_true", help="shard the model with FSDP2 instead of DDP")
    args = parser.parse_args(argv)
    try:  # a wrong --device or torchrun environment: one line, as the command line's own errors
        parallel = Distributed.start("fsdp" if args.fsdp else "ddp", args.device)
    except EXPECTED_ERRORS as error:
        if args.debug:
            raise
        print(f"error: {error}\n(--debug shows the traceback)", file=sys.stderr)
        return 1
    try:
        return run_parsed(args, argv, parallel)
    finally:
        parallel.close()


if __name__ == "__main__":
    sys.exit(main())
