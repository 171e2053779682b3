"""Issue 27, item 2: the cifar10-gpu recipe's levers, chosen on the validation split, in one process on one GPU.

Every variant is the ``cifar10-gpu`` preset at ``--epochs`` with some fields replaced, trained by ``fit`` on
45,000 training images and evaluated on the other 5,000 (the package's fixed validation split), once per seed
(two by default). The runs go one after another in this one process: on one GPU, processes side by side only
time-slice it (issue 27). The test set is never read: this script chooses; the chosen preset's final run reads
the test set once, elsewhere.

Each finished run is appended to ``--json`` (JSON lines) at once, so a kill keeps what was done, and a run
already in the file (same variant, seed and epochs) is not run again: a later GPU session continues the search
where the last one stopped. Before each run the time it needs is estimated from the slowest epoch measured so
far (in this call or in the file, on this GPU); a run that would pass ``--time-limit`` is skipped and says so.
At the end every variant with two or more seeds is compared with the baseline by the book's rule
(``learning_curve.compare_seeds`` with the binomial floor of the validation set).

    python tests/benchmarks/gpu_recipe.py --json recipe.jsonl --data-dir DATA --epochs 30 --time-limit 420
    python tests/benchmarks/gpu_recipe.py --json r.jsonl --data-dir DATA --device cpu --tiny --epochs 1
"""
import time

START = time.monotonic()  # the time limit counts from here, imports included

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_data import named_history  # noqa: E402
from recipe_probe import end_of_run  # noqa: E402

from vit_from_scratch.data import (VALIDATION_SEED, VALIDATION_SIZE, find_image_folder,  # noqa: E402
                                   load_image_folder, validation_split)
from vit_from_scratch.learning_curve import compare_seeds  # noqa: E402
from vit_from_scratch.recipe import preset  # noqa: E402
from vit_from_scratch.runtime import environment_report  # noqa: E402
from vit_from_scratch.training import fit  # noqa: E402

# The levers of issue 27 that the package has, one at a time against the preset (the baseline comes first).
DEFAULT_VARIANTS = {
    "baseline": {},
    "erasing-0.25": {"erasing": 0.25},
    "repeats-3": {"repeats": 3},
    "no-mixup-cutmix": {"mixup": 0.0, "cutmix": 0.0},
    "muon": {"optimizer": "muon"},
    "ema-0.999": {"ema": 0.999},
    "drop-path-0": {"model": {"drop_path": 0.0}},
}
# --tiny: a model and data small enough for a CPU test; the levers are the same
TINY_MODEL = {"dim": 32, "depth": 2, "num_heads": 2, "drop_path": 0.0}


def parse_variant(text: str) -> tuple[str, dict]:
    name, sep, overrides = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"a variant is NAME=JSON, e.g. 'erasing-0.25={{\"erasing\": 0.25}}', "
                                         f"got {text!r}")
    try:
        value = json.loads(overrides)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"variant {name}: its overrides are not JSON ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"variant {name}: the overrides must be a JSON object, got {overrides}")
    return name, value


def config_for(overrides: dict, epochs: int, seed: int, tiny: bool, num_classes: int):
    """The preset with ``overrides``; a ``model`` dict changes only the fields it names."""
    model = {**(TINY_MODEL if tiny else {}), **overrides.get("model", {}), "num_classes": num_classes}
    sizes = dict(batch_size=16, warmup_epochs=0.5, num_workers=0) if tiny else {}
    return preset("cifar10-gpu", **{**sizes, **overrides, "epochs": epochs, "seed": seed, "model": model})


def load_sets(data_dir: str, tiny: bool):
    folder = find_image_folder(Path(data_dir))
    if folder is None:
        raise SystemExit(f"no CIFAR-10 image folder under {data_dir}")
    train_full = load_image_folder(folder / "train")
    size = len(train_full.classes) * 3 if tiny else VALIDATION_SIZE
    train, val = validation_split(train_full, size, seed=VALIDATION_SEED)
    return train, val


def done_runs(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or "?"
    except OSError:
        return "?"


def run_one(name, overrides, seed, args, train, val, device) -> dict:
    config = config_for(overrides, args.epochs, seed, args.tiny, len(train.classes))
    t0 = time.perf_counter()
    result = fit(config, train_set=train, test_set=val, device=device, progress=False, evaluated_on="validation",
                 log=lambda line: print(f"  {name} seed {seed}: {line}", flush=True))
    seconds = time.perf_counter() - t0
    history = named_history(result.history, "validation")
    return {"variant": name, "overrides": overrides, "seed": seed, "epochs": args.epochs,
            "validation_accuracy": history[-1]["validation_accuracy"], "seconds": seconds,
            "epoch_s": max(r["epoch_time_s"] + r.get("eval_time_s", 0.0) for r in history),
            "images_per_s": sum(r["images_per_s"] for r in history) / len(history),
            "train_images": len(train), "validation_images": len(val), "history": history,
            **end_of_run(result, train, val, "validation", str(device)),
            "device": device_name(device), "environment": environment_report(device), "commit": commit(),
            "config": config.to_dict()}


def summary(runs: list[dict], epochs: int, n_images: int) -> list[str]:
    by_variant: dict[str, list[float]] = {}
    for r in runs:
        if r.get("epochs") == epochs and "validation_accuracy" in r:
            by_variant.setdefault(r["variant"], []).append(r["validation_accuracy"])
    lines = [f"validation accuracy after {epochs} epochs ({n_images:,} images), mean of seeds:"]
    base = by_variant.get("baseline", [])
    for name, accs in by_variant.items():
        line = f"  {name:<18} {sum(accs) / len(accs):.2%} ({len(accs)} seed(s): " + \
               ", ".join(f"{a:.2%}" for a in accs) + ")"
        if name != "baseline" and len(accs) >= 2 and len(base) >= 2:
            line += "; " + compare_seeds(accs, base, n_images=n_images).phrase("the baseline")
        lines.append(line)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="JSON lines: one finished or skipped run each, appended")
    parser.add_argument("--data-dir", required=True, help="holds the CIFAR-10 image folder")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=30, help="every run's schedule (warmup and cosine fit it)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variant", type=parse_variant, action="append",
                        help="NAME=JSON TrainConfig overrides (repeatable; default: the built-in levers)")
    parser.add_argument("--time-limit", type=float, default=float("inf"), help="seconds, from the start")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and validation split (CPU tests)")
    args = parser.parse_args(argv)
    variants = dict(args.variant) if args.variant else dict(DEFAULT_VARIANTS)
    variants = {"baseline": variants.pop("baseline", {}), **variants}  # the reference runs first
    device = torch.device(args.device)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    train, val = load_sets(args.data_dir, args.tiny)
    print(f"{environment_report(device)} | commit {commit()} | {len(train):,} training and {len(val):,} "
          f"validation images | {args.epochs} epochs | seeds {args.seeds}", flush=True)
    earlier = done_runs(out)
    here = device_name(device)
    epoch_s = [r["epoch_s"] for r in earlier if r.get("device") == here and "epoch_s" in r]
    finished = {(r["variant"], r["seed"], r["epochs"]) for r in earlier if "validation_accuracy" in r}
    for name, overrides in variants.items():
        for seed in args.seeds:
            if (name, seed, args.epochs) in finished:
                print(f"{name} seed {seed}: already in {out.name}", flush=True)
                continue
            left = args.time_limit - (time.monotonic() - START)
            need = 1.1 * max(epoch_s) * args.epochs + 5 if epoch_s else 0.0
            if need > left:
                record = {"variant": name, "seed": seed, "epochs": args.epochs, "device": here,
                          "skipped": f"time limit: about {need:.0f} s needed, {left:.0f} s left"}
            else:
                record = run_one(name, overrides, seed, args, train, val, device)
                epoch_s.append(record["epoch_s"])
                print(f"{name} seed {seed}: validation {record['validation_accuracy']:.2%} in "
                      f"{record['seconds']:.0f} s ({record['images_per_s']:,.0f} images/s)", flush=True)
            if "skipped" in record:
                print(f"{name} seed {seed}: skipped ({record['skipped']})", flush=True)
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")
    print("\n".join(summary(done_runs(out), args.epochs, len(val))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
