"""What Muon costs on this machine: training steps of the chapter 6 model with AdamW and with Muon.

Run by hand (not collected by pytest; timing is not a test). For each image size of the ``cifar10-cpu``
preset's two phases it times training steps (forward, backward, gradient clipping, the optimiser's step)
of the preset's model at its batch size, alternating AdamW and Muon in rounds so that drift in the
machine's speed hits both, and reports the median seconds per step and the ratio Muon / AdamW. Chapter 6
uses the ratio to fit the Muon recipe's epochs into the CPU budget.

    python tests/benchmarks/bench_optimizer.py --json tests/benchmarks/results/optimizer-cpu-2core.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from vit_from_scratch.model import VisionTransformer
from vit_from_scratch.recipe import build_optimizer, preset
from vit_from_scratch.runtime import environment_report


def seconds_per_step(optimizer_name: str, image_size: int, steps: int, seed: int = 0) -> float:
    config = preset("cifar10-cpu", optimizer=optimizer_name)
    torch.manual_seed(seed)
    model = VisionTransformer(replace(config.vit_config(), image_size=image_size))
    optimizer, _ = build_optimizer(model, config, steps_per_epoch=100)
    images = torch.randn(config.batch_size, 3, image_size, image_size)
    labels = torch.randint(0, 10, (config.batch_size,))

    def step():
        loss = F.cross_entropy(model(images), labels, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median taken)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    report = {"environment": environment_report(torch.device("cpu")), "steps": args.steps,
              "rounds": args.rounds, "sizes": {}}
    print(report["environment"])
    for size in sorted({p.image_size for p in preset("cifar10-cpu").phases()}):
        times = {"adamw": [], "muon": []}
        for _ in range(args.rounds):
            for name in times:
                times[name].append(seconds_per_step(name, size, args.steps))
        adamw, muon = statistics.median(times["adamw"]), statistics.median(times["muon"])
        report["sizes"][str(size)] = {"adamw_s_per_step": adamw, "muon_s_per_step": muon,
                                      "muon_over_adamw": muon / adamw, "rounds": times}
        print(f"{size} px: AdamW {1000 * adamw:.1f} ms/step, Muon {1000 * muon:.1f} ms/step, "
              f"Muon / AdamW {muon / adamw:.3f} (rounds: "
              + ", ".join(f"{m / a:.2f}" for a, m in zip(times["adamw"], times["muon"])) + ")")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
