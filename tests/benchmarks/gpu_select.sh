#!/usr/bin/env bash
# Chapter 6's recipe choice, measured at the preset's full schedule on the validation split, on a GPU
# (issue 14). Accuracy only: the probes run in float32 without TF32, so their arithmetic is the CPU's,
# and their times are not CPU times (a lever that costs CPU time is judged on the CPU). Every variant
# runs with two seeds, all at once, on one GPU.
# The committed results (results/select-partial-h200.json) ran at commit e070db2, when the preset was
# still AdamW with 14 + 11 epochs; the preset now holds the chosen recipe (Muon, 10 + 7), so a run of this
# script today probes variants of that instead.
# Usage (repository root, CIFAR-10's archive at $ARCHIVE):  bash tests/benchmarks/gpu_select.sh OUTDIR
set -u
OUTDIR=${1:?usage: gpu_select.sh OUTDIR}
ARCHIVE=${ARCHIVE:-.gpu/cifar10-jpeg.tar.gz}
LIMIT_S=${LIMIT_S:-340}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 VIT_DATA_DIR=$(mktemp -d)
mkdir -p "$OUTDIR"
exec > >(tee -a "$OUTDIR/select.log") 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
tar -xzf "$ARCHIVE" -C "$VIT_DATA_DIR" || exit 1
python -c "from vit_from_scratch.data import load_cifar10; load_cifar10()" || exit 1  # the decoded cache
echo "== probes start ($((LIMIT_S - SECONDS)) s left)"
timeout $((LIMIT_S - SECONDS)) python tests/benchmarks/recipe_probe.py --device cuda --full-schedule \
  --parallel 10 --seeds 0 1 --json "$OUTDIR/select-full-schedule-h200.json" \
  --variant '{}' --variant '{"ema": 0.9995}' --variant '{"optimizer": "muon"}' \
  --variant '{"model": {"pool": "mean", "pos_embed_type": "sincos"}}' \
  --variant '{"lr": 0.002, "full_res_lr": 0.001}'
echo "== done in $SECONDS s"
