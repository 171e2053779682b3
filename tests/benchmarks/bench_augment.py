"""Augmentation throughput against the model's training throughput, on the path the GPU takes.

Run by hand (timing, not a test):

    python tests/benchmarks/bench_augment.py                     # the device it finds
    python tests/benchmarks/bench_augment.py --json results/augment-cpu-2core.json

The GPU preset (``cifar10-gpu``) augments each batch of 512 with crops, flips and TrivialAugment on
the device. This times, in one process and alternating in rounds so that drift hits all alike:

* ``batched``: ``Augment.batch`` (policies.trivial_augment), the GPU path;
* ``per_image``: calling ``Augment`` (torchvision's TrivialAugmentWide, a loop over the images), the
  path the preset took before;
* ``model``: a training step of the preset's model (forward, backward, AdamW) at the same batch, under
  the preset's autocast.

and reports images/s for each and the ratios. Augmentation that is not several times faster than the
model slows training down.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

from vit_from_scratch.loaders import Augment
from vit_from_scratch.model import VisionTransformer
from vit_from_scratch.recipe import autocast_dtype, build_optimizer, preset
from vit_from_scratch.runtime import benchmark, environment_report, pick_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = pick_device()
    config = preset("cifar10-gpu")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, 32, 32), generator=g, dtype=torch.uint8).to(device)
    labels = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    augment = Augment((0.5,) * 3, (0.25,) * 3, train=True, policy=config.policy)
    model = VisionTransformer(config.vit_config()).to(device)
    optimizer, _ = build_optimizer(model, config, steps_per_epoch=100)
    dtype = autocast_dtype(config.amp, device)
    x = augment.normalize(images)

    def train_step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    jobs = {"batched": lambda: augment.batch(images, g), "per_image": lambda: augment(images, g),
            "model": train_step}
    seconds = {name: [] for name in jobs}
    for _ in range(args.rounds):
        for name, fn in jobs.items():
            seconds[name] += benchmark(fn, repeats=2, warmup=1, device=device).seconds
    rate = {name: args.batch / statistics.median(s) for name, s in seconds.items()}
    result = {"environment": environment_report(device), "batch": args.batch, "rounds": args.rounds,
              "images_per_s": {k: round(v, 1) for k, v in rate.items()},
              "batched_over_per_image": round(rate["batched"] / rate["per_image"], 2),
              "batched_over_model": round(rate["batched"] / rate["model"], 2),
              "per_image_over_model": round(rate["per_image"] / rate["model"], 2)}
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
