"""What the processes of tests/test_distributed.py run: functions importable by a spawned process."""

import torch
import torch.distributed as dist

from vit_from_scratch.distributed import Distributed
from vit_from_scratch.loaders import make_loader
from vit_from_scratch.config import ViTConfig
from vit_from_scratch.model import VisionTransformer
from vit_from_scratch.training import evaluate

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def loader_batches(data, batch_size: int, policy, epochs: int = 2) -> dict:
    """The labels and images this rank reads in ``epochs`` epochs (labels number the images)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    loader = make_loader(data, batch_size, train=True, mean=MEAN, std=STD, policy=policy, num_workers=0, seed=3,
                         rank=rank, world_size=world)
    labels, images = [], []
    for _ in range(epochs):
        for x, y in loader:
            labels.append(y.clone())
            images.append(x.clone())
    return {"labels": labels, "images": images, "steps": len(loader)}


def sharded_evaluation(test_set, model_config: dict) -> dict:
    """Evaluate a fixed model on this rank's padded shard; the numbers summed over ranks."""
    parallel = Distributed("ddp", "cpu")
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig.from_dict(model_config))
    shard = parallel.eval_shard(test_set)
    loader = make_loader(shard, 4, train=False, mean=MEAN, std=STD)
    local = evaluate(model, loader, device="cpu")
    loss_sum, correct, count = parallel.sum([local["loss_sum"], local["correct"], local["count"]])
    errors = []
    for batch in (15, 16):  # the global batch must divide among the processes
        try:
            parallel.check(type("C", (), {"batch_size": batch, "low_res_epochs": 0, "amp": "off"})())
        except ValueError as error:
            errors.append(str(error))
    return {"loss_sum": loss_sum, "correct": correct, "count": count, "shard": len(shard),
            "local_count": local["count"], "batches": len(loader), "errors": errors}


def fit_reading_rank0s_half(config: dict, train_set, test_set) -> dict:
    """A negative control: ``fit_worker`` with a planted bug, every rank reads rank 0's half of each
    global batch (the wrong shard), so half the images are never trained on."""
    from vit_from_scratch import training
    from vit_from_scratch.distributed import fit_worker

    real = training.make_loader

    def same_half(*args, **kwargs):
        if kwargs.get("train"):
            kwargs["rank"] = 0
        return real(*args, **kwargs)

    training.make_loader = same_half  # in this spawned process only
    return fit_worker(config, train_set, test_set)
