#!/usr/bin/env bash
# One GPU session's checks, in one command that must end inside a 10-minute limit (issue 14):
#   1. a 2-epoch smoke run of the cifar10-gpu preset (data on the device, batched augmentation,
#      autocast): its second epoch's time sizes step 2;
#   2. the cifar10-gpu preset itself, at its 100 epochs if the smoke run's speed says they fit in
#      TRAIN_BUDGET_S seconds, else at the most epochs that fit (the history says which);
#   3. our model against timm's, training and inference throughput (bench_throughput.py), if time is left.
# Both runs keep the test set after every epoch (--monitor test), as when their committed results were made.
# Usage (repository root, CIFAR-10's archive at $ARCHIVE):  bash tests/benchmarks/gpu_session.sh OUTDIR
# Writes OUTDIR/session.log, OUTDIR/cifar10-gpu-<gpu>.json (history, hardware, wall time) and
# OUTDIR/throughput-<gpu>.json.
set -u
OUTDIR=${1:?usage: gpu_session.sh OUTDIR}
ARCHIVE=${ARCHIVE:-.gpu/cifar10-jpeg.tar.gz}
TRAIN_BUDGET_S=${TRAIN_BUDGET_S:-390}
LIMIT_S=${LIMIT_S:-570}  # the whole script's deadline
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
LOG=$OUTDIR/session.log
mkdir -p "$OUTDIR"
exec > >(tee -a "$LOG") 2>&1
left() { echo $((LIMIT_S - SECONDS)); }

nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//' \
      | tr 'A-Z' 'a-z')
DATA=$(mktemp -d)
tar -xzf "$ARCHIVE" -C "$DATA" || exit 1
RUNS=/dev/shm/vit-runs; [ -d /dev/shm ] || RUNS=$(mktemp -d)
rm -rf "$RUNS"; mkdir -p "$RUNS"

echo "== 1. smoke: 2 epochs of cifar10-gpu ($(left) s left)"
timeout 200 python -m vit_from_scratch.cli --preset cifar10-gpu --epochs 2 --monitor test \
  --data-dir "$DATA" --out "$RUNS/smoke" --no-progress || { echo "smoke run failed"; exit 1; }
EPOCHS=$(python - "$RUNS/smoke/history.json" "$TRAIN_BUDGET_S" <<'EOF'
import json, math, sys
h = json.load(open(sys.argv[1]))["history"][-1]
epoch_s = h["epoch_time_s"] + h["eval_time_s"] + 0.5  # the second epoch: no start-up; + checkpoint
print(min(100, int(float(sys.argv[2]) / epoch_s)))
print(f"smoke: epoch 2's {h['step'] // 2} steps in {h['epoch_time_s']:.1f} s, {h['images_per_s']:.0f} img/s; "
      f"eval {h['eval_time_s']:.1f} s; an epoch is about {epoch_s:.1f} s", file=sys.stderr)
EOF
)
[ -n "$EPOCHS" ] && [ "$EPOCHS" -gt 0 ] || { echo "could not size the run"; exit 1; }

echo "== 2. cifar10-gpu, $EPOCHS epochs ($(left) s left)"
start=$SECONDS
t=$(( $(left) - 45 )); [ $t -gt 10 ] || t=10
timeout $t python -m vit_from_scratch.cli --preset cifar10-gpu --epochs "$EPOCHS" --monitor test \
  --data-dir "$DATA" --out "$RUNS/preset" --no-progress
rc=$?
wall=$((SECONDS - start))
python - "$RUNS/preset/history.json" "$OUTDIR/cifar10-gpu-$GPU.json" "$wall" "$rc" <<'EOF'
import json, platform, subprocess, sys
import torch
summary = json.load(open(sys.argv[1]))
name, driver, memory = subprocess.check_output(
    ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
    text=True).splitlines()[0].split(", ")
summary["hardware"] = {"gpu": name, "driver": driver, "memory": memory,
                       "compute_capability": ".".join(map(str, torch.cuda.get_device_capability())),
                       "cpu_cores": __import__("os").cpu_count(), "torch": torch.__version__,
                       "python": platform.python_version()}
summary["wall_s"], summary["exit_code"] = int(sys.argv[3]), int(sys.argv[4])
summary["note"] = "wall_s: the whole command (start-up, data from the decoded cache, training, evaluation)"
json.dump(summary, open(sys.argv[2], "w"), indent=1)
last = summary["history"][-1]
print(f"preset: {len(summary['history'])} epochs in {sys.argv[3]} s, last test accuracy "
      f"{last['test_accuracy']:.4f}")
EOF

echo "== 3. throughput, ours against timm ($(left) s left)"
if [ "$(left)" -gt 40 ]; then
  timeout $(( $(left) - 5 )) python tests/benchmarks/bench_throughput.py --rounds 3 \
    --json "$OUTDIR/throughput-$GPU.json"
fi
echo "== done in $SECONDS s"
