"""The reference curve for chapter 6's time-to-accuracy headline: timm's ViT with a plain recipe.

Run by hand (not collected by pytest). timm's ``VisionTransformer``, built with the same size as the
``cifar10-cpu`` preset's model (``interop.timm_kwargs``), trains with a plain recipe: one resolution,
AdamW with warmup and cosine, random crops and flips, label smoothing 0.1, the preset's batch and learning
rate, no progressive resizing and nothing else. It trains on all 50,000 training images and evaluates on
the test set after every epoch: this is a reference curve, run once, from which nothing is chosen. The
history, with its training clock, is kept after every epoch (``--out``), so chapter 6 can print the minutes each
run needs to reach 70% and 75% against this one on the same machine.

    VIT_DATA_DIR=/path/to/data python tests/benchmarks/timm_reference.py \\
        --json tests/benchmarks/results/timm-reference-cpu-2core.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from vit_from_scratch.data import load_cifar10
from vit_from_scratch.interop import timm_kwargs
from vit_from_scratch.recipe import preset
from vit_from_scratch.runtime import environment_report
from vit_from_scratch.training import fit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="schedule length (one resolution)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="timm-reference.json")
    parser.add_argument("--out", default="runs/timm-reference", help="checkpoint and per-epoch history")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    config = preset("cifar10-cpu", epochs=args.epochs, low_res_epochs=0, optimizer="adamw", seed=args.seed)
    torch.manual_seed(args.seed)
    model = TimmViT(**timm_kwargs(config.vit_config()))
    train_set, test_set = load_cifar10()
    report = {"what": "timm VisionTransformer, plain recipe, one resolution; test accuracy per epoch is a "
                      "reference curve (nothing chosen from it)",
              "config": config.to_dict(), "parameters": sum(p.numel() for p in model.parameters()),
              "environment": environment_report(torch.device("cpu")), "history": []}

    t0 = time.perf_counter()
    # fit writes runs/timm-reference/history.json after every epoch; --resume continues an interrupted run
    result = fit(config, train_set=train_set, test_set=test_set, device="cpu", progress=False, model=model,
                 out_dir=args.out, resume=args.resume, overwrite=not args.resume)
    report["history"] = result.history
    report["training_minutes"] = sum(r["epoch_time_s"] for r in result.history) / 60
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wall clock {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
