"""Short training probes: variants of the chapter 6 recipe, two at a time, each on one CPU thread.

Run by hand (not collected by pytest). Each variant is the ``cifar10-cpu`` preset with some fields
replaced, trained with ``fit`` on all of CIFAR-10 for a short schedule (two epochs by default, the
warmup and cosine compressed to fit). Two variants run side by side in separate processes with one
thread each, which uses a 2-core machine better than one run on two threads. The probes rank choices
for the full run (batch size, learning rate, pooling); a two-epoch ranking is a hint, not a proof.

    VIT_DATA_DIR=/path/to/data python tests/benchmarks/recipe_probe.py \\
        --variant '{"batch_size": 128, "lr": 1.5e-3}' --variant '{"batch_size": 32, "lr": 1e-3}' \\
        --json probes.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _probe(overrides: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from vit_from_scratch.data import load_cifar10
    from vit_from_scratch.runtime import environment_report
    from vit_from_scratch.recipe import preset
    from vit_from_scratch.training import fit

    train_set, test_set = load_cifar10()
    config = preset("cifar10-cpu", **overrides)
    t0 = time.perf_counter()
    result = fit(config, train_set=train_set, test_set=test_set, device="cpu", progress=False, log=None)
    return {"overrides": overrides, "test_accuracy": result.history[-1]["test_accuracy"],
            "history": result.history, "seconds": time.perf_counter() - t0,
            "environment": environment_report(torch.device("cpu")) + " | 1 thread per probe"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, help="TrainConfig overrides as JSON")
    parser.add_argument("--epochs", type=int, default=2, help="schedule length of every probe")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one probe, in its own process
        print(json.dumps(_probe(json.loads(args.child))))
        return
    variants = [{"epochs": args.epochs, "low_res_epochs": 0, **json.loads(v)} for v in args.variant]  # one size unless asked
    results = []
    for i in range(0, len(variants), 2):  # two at a time, one thread each
        procs = [subprocess.Popen([sys.executable, __file__, "--variant", "{}", "--child", json.dumps(v)],
                                  stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                 for v in variants[i:i + 2]]
        for proc in procs:
            out, _ = proc.communicate()
            if proc.returncode:
                sys.exit(f"a probe failed (exit {proc.returncode})")
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(f"{results[-1]['test_accuracy']:.2%}  {json.dumps(results[-1]['overrides'])}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
