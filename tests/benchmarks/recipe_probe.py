"""Short training probes: variants of the chapter 6 recipe, two at a time, each on one CPU thread.

Run by hand (not collected by pytest). Each variant is the ``cifar10-cpu`` preset with some fields
replaced, trained with ``fit`` for a short schedule (two epochs by default, the warmup and cosine
compressed to fit) and evaluated on the validation split (``--select-on val``, the default: 45,000
training images, 5,000 held out; see ``probe_data.py``). Probes choose, so they never print a test
accuracy. Every variant runs once per seed (``--seeds 0 1``) and the summary gives the mean and the
spread (max - min) of the seeds: a difference between variants smaller than the spread is noise.
Two runs go side by side in separate processes with one thread each, which uses a 2-core machine
better than one run on two threads. A two-epoch ranking is a hint for the full run, not a proof.

    VIT_DATA_DIR=/path/to/data python tests/benchmarks/recipe_probe.py --seeds 0 1 \\
        --variant '{"batch_size": 128, "lr": 1.5e-3}' --variant '{"batch_size": 32, "lr": 1e-3}' \\
        --json probes.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_data import add_select_on, named_history, probe_sets  # noqa: E402


def probe(overrides: dict, select_on: str = "val", data=None, device: str = "cpu", log=None) -> dict:
    """Train the ``cifar10-cpu`` preset with ``overrides`` and return its history and final accuracy,
    named after the set it was measured on (``validation_accuracy`` unless ``select_on="test"``).

    On a GPU the probe measures accuracy only (its time is not the CPU's): float32 without TF32 and no
    autocast unless ``overrides`` asks, so that its arithmetic is the CPU run's.
    """
    import torch

    if device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        overrides = {"amp": "off", **overrides}

    from vit_from_scratch.runtime import environment_report
    from vit_from_scratch.recipe import preset
    from vit_from_scratch.training import fit

    train_set, eval_set, name = probe_sets(select_on, data)
    config = preset("cifar10-cpu", **overrides)
    t0 = time.perf_counter()
    result = fit(config, train_set=train_set, test_set=eval_set, device=device, progress=False, log=log,
                 evaluated_on=name)  # its log lines say "val loss ... acc" or "test loss ... acc"
    seconds = time.perf_counter() - t0
    history = named_history(result.history, name)
    extra = end_of_run(result, train_set, eval_set, name, device)
    return {"overrides": overrides, "evaluated_on": name, f"{name}_accuracy": history[-1][f"{name}_accuracy"],
            "train_images": len(train_set), "history": history, "seconds": seconds, **extra,
            "environment": environment_report(torch.device(device)) + f" | {torch.get_num_threads()} thread(s)"}


CLEAN_IMAGES = 5000  # training images scored without augmentation at the end of a run


def end_of_run(result, train_set, eval_set, name: str, device: str) -> dict:
    """What a run's last epoch does not record: the accuracy on ``CLEAN_IMAGES`` of its own training
    images without augmentation (fitted or not), and, when the evaluated model is a moving average of
    the weights (``ema``), the trained weights' own accuracy, so one run answers "EMA or not" for free:
    the average never feeds back into training."""
    from vit_from_scratch.matched import accuracy_on

    seen = train_set.subset(min(CLEAN_IMAGES, len(train_set)))  # a seeded draw of the images it trained on
    extra = {"clean_train_accuracy": accuracy_on(result.model, seen, train_set=train_set, device=device)}
    if result.trained is not None and result.trained is not result.model:
        extra[f"trained_{name}_accuracy"] = accuracy_on(result.trained, eval_set, train_set=train_set,
                                                        device=device)
        extra["trained_clean_train_accuracy"] = accuracy_on(result.trained, seen, train_set=train_set,
                                                            device=device)
    return extra


def summary(results: list[dict]) -> list[str]:
    """One line per variant: mean and spread of its seeds' final accuracies."""
    by_variant: dict[str, list[dict]] = {}
    for r in results:
        key = json.dumps({k: v for k, v in r["overrides"].items() if k != "seed"}, sort_keys=True)
        by_variant.setdefault(key, []).append(r)
    lines = []
    for key, runs in by_variant.items():
        name = runs[0]["evaluated_on"]
        accs = [r[f"{name}_accuracy"] for r in runs]
        lines.append(f"{name} {statistics.mean(accs):.2%} (spread {max(accs) - min(accs):.2%}, "
                     f"{len(accs)} seed{'s' * (len(accs) > 1)})  {key}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, help="TrainConfig overrides as JSON")
    parser.add_argument("--epochs", type=int, default=2, help="schedule length of every probe")
    parser.add_argument("--full-schedule", action="store_true",
                        help="keep the preset's own schedule (epochs, progressive split) instead of --epochs")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: accuracy only, in float32")
    parser.add_argument("--parallel", type=int, default=2, help="probes running at once (one thread each)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="one run per seed and variant")
    add_select_on(parser)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.child:  # one probe, in its own process
        import torch

        torch.set_num_threads(1)
        overrides = json.loads(args.child)

        def log(line: str) -> None:  # per-epoch progress on stderr; fit names the evaluation set (val or test)
            print(f"{json.dumps(overrides)} {line}", file=sys.stderr, flush=True)

        print(json.dumps(probe(overrides, args.select_on, device=args.device, log=log)))
        return
    schedule = {} if args.full_schedule else {"epochs": args.epochs, "low_res_epochs": 0}  # one size unless asked
    variants = [{**schedule, **json.loads(v), "seed": seed} for v in args.variant for seed in args.seeds]
    results, failed = [], []
    for i in range(0, len(variants), args.parallel):  # --parallel at a time, one thread each
        procs = [subprocess.Popen([sys.executable, __file__, "--variant", "{}", "--select-on", args.select_on,
                                   "--device", args.device, "--child", json.dumps(v)],
                                  stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                 for v in variants[i:i + args.parallel]]
        for proc, variant in zip(procs, variants[i:i + args.parallel]):
            out, _ = proc.communicate()
            if proc.returncode:  # the others' results still count; the exit status says one failed
                failed.append(variant)
                print(f"a probe failed (exit {proc.returncode}): {json.dumps(variant)}", flush=True)
                continue
            results.append(json.loads(out.strip().splitlines()[-1]))
            r = results[-1]
            print(f"{r['evaluated_on']} {r[r['evaluated_on'] + '_accuracy']:.2%}  {json.dumps(r['overrides'])}",
                  flush=True)
    print("\n".join(summary(results)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if failed:
        sys.exit(f"{len(failed)} probe(s) failed: see above")


if __name__ == "__main__":
    main()
