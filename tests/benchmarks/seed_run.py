"""Another seed of chapter 6's final run: the ``cifar10-cpu`` preset, exactly as the chapter trains it.

Run by hand (not collected by pytest). The recipe was chosen on validation before this runs; this run
trains it on all 50,000 training images with another seed and evaluates on the test set after every
epoch, for the curves and the time-to-accuracy table of chapter 6. Nothing is chosen from it: the result
is the last epoch's. Chapter 6 reads the file and checks that its configuration is the chapter's with
only the seed changed.

    VIT_DATA_DIR=/path/to/data python tests/benchmarks/seed_run.py --seed 1 \\
        --json tests/benchmarks/results/cifar10-cpu-seed1-cpu-2core.json

(the same run as ``python -m vit_from_scratch.cli --preset cifar10-cpu --seed 1 --monitor test``, with the
environment written beside the history; the command line's default, ``--monitor validation``, would hold 5,000
training images out and evaluate on them instead)
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vit_from_scratch.data import load_cifar10
from vit_from_scratch.recipe import preset
from vit_from_scratch.runtime import environment_report
from vit_from_scratch.training import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", required=True)
    parser.add_argument("--out", default="runs/seed-run", help="checkpoint and per-epoch history")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    args = parser.parse_args()
    config = preset("cifar10-cpu", seed=args.seed)
    train_set, test_set = load_cifar10()
    environment = environment_report(torch.device("cpu"))
    print(environment)
    t0 = time.perf_counter()
    result = fit(config, train_set=train_set, test_set=test_set, device="cpu", progress=False,
                 out_dir=args.out, resume=args.resume, overwrite=not args.resume)
    report = {"what": "chapter 6's final recipe (preset cifar10-cpu) with another seed, on all 50,000 training "
                      "images; test accuracy per epoch for curves only, the result is the last epoch's",
              "command": f"python tests/benchmarks/seed_run.py --seed {args.seed}",
              "environment": environment, "config": config.to_dict(), "history": result.history,
              "training_minutes": sum(r["epoch_time_s"] for r in result.history) / 60,
              "wall_minutes": (time.perf_counter() - t0) / 60}
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print(f"test accuracy {result.history[-1]['test_accuracy']:.2%} after "
          f"{report['training_minutes']:.1f} min of training")


if __name__ == "__main__":
    main()
