"""Throughput of our VisionTransformer against timm's, same configuration, same process, same inputs.

Run by hand (not collected by pytest, it is timing, not a test):

    python tests/benchmarks/bench_throughput.py                 # CPU or the GPU it finds
    python tests/benchmarks/bench_throughput.py --json out.json # also write the numbers

For each model it times a training step (forward, backward, AdamW) and inference (forward under
no_grad), alternating ours and timm's in rounds so that drift in the machine's speed hits both, and
reports images/s and the ratio ours / timm (> 1: ours is faster). On CUDA it runs under bf16 (or fp16)
autocast, as the training chapter does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from vit_from_scratch.interop import timm_kwargs
from vit_from_scratch.model import VisionTransformer, vit_config
from vit_from_scratch.runtime import environment_report, pick_device
from vit_from_scratch.recipe import autocast_dtype, preset


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timer(model, images, labels, train: bool, device, dtype):
    if train:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(images).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        model.eval()

        @torch.no_grad()
        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                model(images)

    def run(repeats: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            step()
        _sync(device)
        return repeats * images.shape[0] / (time.perf_counter() - t0)

    return run


def compare(name: str, config, batch: int, repeats: int, rounds: int, device, dtype, compile_models: bool) -> dict:
    import timm

    torch.manual_seed(0)
    ours = VisionTransformer(config).to(device)
    theirs = timm.models.vision_transformer.VisionTransformer(**timm_kwargs(config)).to(device)
    theirs.load_state_dict(ours.state_dict())  # same weights: same numbers, so same work
    if compile_models:
        ours, theirs = torch.compile(ours), torch.compile(theirs)
    images = torch.randn(batch, config.in_channels, config.image_size, config.image_size, device=device)
    labels = torch.randint(0, config.num_classes, (batch,), device=device)
    result = {"model": name, "batch": batch, "params": sum(p.numel() for p in ours.parameters())}
    for mode in ("train", "infer"):
        runs = {who: _timer(m, images, labels, mode == "train", device, dtype) for who, m in
                (("ours", ours), ("timm", theirs))}
        for run in runs.values():
            run(2)  # warm-up (and compilation)
        samples = {"ours": [], "timm": []}
        for _ in range(rounds):
            for who, run in runs.items():
                samples[who].append(run(repeats))
        ours_rate, timm_rate = statistics.median(samples["ours"]), statistics.median(samples["timm"])
        result[mode] = {"ours_img_s": ours_rate, "timm_img_s": timm_rate, "ratio": ours_rate / timm_rate}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per measurement (median taken)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args()
    device = pick_device()
    dtype = autocast_dtype("auto", device)
    gpu = device.type == "cuda"
    cases = [
        ("chapter 6 model (cifar10-cpu preset, 32 px)", preset("cifar10-cpu").vit_config(), 512 if gpu else 128,
         20 if gpu else 3),
        ("ViT-S/16, 224 px", vit_config("S/16"), 128 if gpu else 8, 10 if gpu else 1),
    ]
    report = {"environment": environment_report(device), "autocast": str(dtype), "compile": args.compile,
              "rounds": args.rounds, "results": []}
    print(report["environment"], "| autocast:", dtype, "| compile:", args.compile)
    print(f"{'model':>45} | {'batch':>5} | {'mode':>5} | {'ours img/s':>10} | {'timm img/s':>10} | ours/timm")
    for name, config, batch, repeats in cases:
        r = compare(name, config, batch, repeats, args.rounds, device, dtype, args.compile)
        report["results"].append(r)
        for mode in ("train", "infer"):
            m = r[mode]
            print(f"{name:>45} | {batch:>5} | {mode:>5} | {m['ours_img_s']:10.1f} | {m['timm_img_s']:10.1f} | "
                  f"{m['ratio']:.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
