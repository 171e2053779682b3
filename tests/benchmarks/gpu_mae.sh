#!/usr/bin/env bash
# Chapter 12's MAE pretraining on a GPU in one command (issue 31), inside the device's 10-minute limit:
#   1. a smoke run of SMOKE_EPOCHS (2) epochs, seed 0: it decodes the JPEGs once (the cache serves step 2),
#      checks the whole path (training, export) and measures an epoch; its last epoch (no start-up) sizes step 2;
#   2. SEEDS (0,1,2) one after another in one process at SIZE (32) px, EPOCHS each sized so that all seeds
#      fit TRAIN_BUDGET_S (360 s) together, capped at MAX_EPOCHS (800); mae_pretrain.py's --time-limit stops a
#      seed between epochs (and records it) if LIMIT_S (540 s, the whole script's hard deadline) comes first.
# Precision: float32 with TF32 (vit_from_scratch.mae.pretrain has no autocast); data on the GPU.
# BATCH (2048): images per step, lr = scaled_lr(1.5e-4, BATCH) (the paper's rule). The model is small (width 96),
# so a step on a GPU costs about its kernel launches whatever the batch: a larger batch sees more epochs per second.
#
# Usage, from the repository root through the `run` tool (the archive is copied into .gpu/ first, which
# .gitignore ignores, and carried):
#   mkdir -p .gpu && cp /work/shared/data/cifar10-jpeg.tar.gz .gpu/
#   run(command="bash tests/benchmarks/gpu_mae.sh $OUT", carry=[".gpu"], timeout_s=600)
# By hand:  [ARCHIVE=...] [TRAIN_BUDGET_S=...] [LIMIT_S=...] bash tests/benchmarks/gpu_mae.sh OUTDIR
# On a CPU (the tests): DEVICE=cpu, tiny data, EXTRA="--val-size 6 --threads 1"; nvidia-smi is skipped when absent.
#
# Writes OUTDIR/mae.log and, per seed k, OUTDIR/cifar10_mae_<SIZE>px_seed<k>.pt (encoder + zero head, float16,
# about 0.9 MB) and .json (config, loss per epoch, epochs planned and run, seconds, images/s, GPU, torch, command):
# 7 files, within the 8 that come back from $OUT. Commit the JSON files and mae.log under
# tests/benchmarks/results/ (e.g. results/mae-pretrain-<gpu>/); the .pt files go under vit_from_scratch/weights/
# only if chapter 12 ships and reads them (load_trained_model("cifar10_mae_32px_seed0") then loads one).
set -u
OUTDIR=${1:?usage: gpu_mae.sh OUTDIR}
ARCHIVE=${ARCHIVE:-.gpu/cifar10-jpeg.tar.gz}
TRAIN_BUDGET_S=${TRAIN_BUDGET_S:-360}  # step 2's training, all seeds together
LIMIT_S=${LIMIT_S:-540}  # the whole script's deadline
MAX_EPOCHS=${MAX_EPOCHS:-800}
SMOKE_EPOCHS=${SMOKE_EPOCHS:-2}
SEEDS=${SEEDS:-0,1,2}
SIZE=${SIZE:-32}
BATCH=${BATCH:-2048}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}  # more options for mae_pretrain.py, word-split
. "$(dirname "$0")/gpu_common.sh"  # PY, start_log, left, show_gpu
start_log mae.log

echo "gpu_mae.sh: SIZE=$SIZE BATCH=$BATCH SEEDS=$SEEDS TRAIN_BUDGET_S=$TRAIN_BUDGET_S LIMIT_S=$LIMIT_S" \
     "MAX_EPOCHS=$MAX_EPOCHS DEVICE=$DEVICE EXTRA='$EXTRA' commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
show_gpu
tar -xzf "$ARCHIVE" -C "$WORK" || { echo "could not extract $ARCHIVE"; exit 1; }
DATA=$WORK  # load_cifar10 finds cifar10-jpeg/ inside it

echo "== 1. smoke: $SMOKE_EPOCHS epochs, seed 0 ($(left) s left)"
# shellcheck disable=SC2086
t=$(( $(left) - 30 )); [ $t -gt 10 ] || t=10
timeout $t "$PY" tests/benchmarks/mae_pretrain.py --data-dir "$DATA" --size "$SIZE" \
  --epochs "$SMOKE_EPOCHS" --batch-size "$BATCH" --seeds 0 --device "$DEVICE" --out "$WORK/smoke" --log-every 1 \
  $EXTRA || { echo "smoke run failed"; exit 1; }
EPOCHS=$("$PY" - "$WORK/smoke/cifar10_mae_${SIZE}px_seed0.json" "$TRAIN_BUDGET_S" "$SEEDS" "$MAX_EPOCHS" <<'EOF'
import json, sys
info = json.load(open(sys.argv[1]))
budget, seeds, cap = float(sys.argv[2]), len([s for s in sys.argv[3].split(",") if s.strip()]), int(sys.argv[4])
epoch_s = info["epoch_wall_s"][-1] * 1.05  # the last epoch (no start-up), its checkpoint included; 5% spare
print(max(1, min(cap, int(budget / (seeds * epoch_s)))))
print(f"smoke: {info['epochs_run']} epochs of {info['data']['images']:,} images, the last in "
      f"{info['epoch_wall_s'][-1]:.2f} s wall ({info['history'][-1]['images_per_s']:.0f} img/s); "
      f"{info['seconds']:.1f} s for the seed; {info['hardware'].get('gpu', info['hardware']['cpu'])}",
      file=sys.stderr)
EOF
)
[ -n "$EPOCHS" ] && [ "$EPOCHS" -gt 0 ] || { echo "could not size the run"; exit 1; }

echo "== 2. seeds $SEEDS, $EPOCHS epochs each at $SIZE px ($(left) s left)"
t=$(( $(left) - 5 )); [ $t -gt 10 ] || t=10  # the hard stop; --time-limit stops cleanly 10 s before it
# shellcheck disable=SC2086
timeout $t "$PY" tests/benchmarks/mae_pretrain.py --data-dir "$DATA" --size "$SIZE" --epochs "$EPOCHS" \
  --batch-size "$BATCH" --seeds "$SEEDS" --device "$DEVICE" --time-limit $(( t - 10 > 1 ? t - 10 : 1 )) \
  --out "$OUTDIR" $EXTRA
rc=$?
echo "pretraining exited with $rc"
ls -l "$OUTDIR"
echo "== done in $SECONDS s"
exit $rc
