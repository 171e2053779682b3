#!/usr/bin/env bash
# Issue 27, item 2 in one device command: the cifar10-gpu preset's levers on the validation split, two seeds
# each, one run after another in one process (tests/benchmarks/gpu_recipe.py; its docstring says what and how).
# LIMIT_S (420 s) is the whole script's deadline: the Python side gets what is left as --time-limit and skips
# (and records) runs that would not fit. Results are appended to OUTDIR/recipe-<gpu>.jsonl; copy the committed
# file there first (RESULTS=...) and a second session continues where the first stopped.
#
# Usage, from the repository root through the `run` tool (the archive copied into .gpu/ first and carried):
#   mkdir -p .gpu && cp /work/shared/data/cifar10-jpeg.tar.gz .gpu/
#   run(command="bash tests/benchmarks/gpu_recipe.sh $OUT", carry=[".gpu"], timeout_s=480)
# (After gpu_speed.sh on the same warm machine, a 15-minute device session has about 5 minutes left: prefix
#  LIMIT_S with the device seconds left minus 60, e.g. LIMIT_S=240, and pass timeout_s=LIMIT_S+30; runs that
#  would not fit are skipped and recorded, and RESULTS=... continues the file in a later session.)
# By hand:  [ARCHIVE=...] [LIMIT_S=...] [RESULTS=earlier.jsonl] [EXTRA="--epochs 20"] bash gpu_recipe.sh OUTDIR
# On a CPU (the tests): DEVICE=cpu EXTRA="--tiny --epochs 1 ..."; nvidia-smi is skipped when absent.
set -u
OUTDIR=${1:?usage: gpu_recipe.sh OUTDIR}
ARCHIVE=${ARCHIVE:-.gpu/cifar10-jpeg.tar.gz}
LIMIT_S=${LIMIT_S:-420}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}
RESULTS=${RESULTS:-}
. "$(dirname "$0")/gpu_common.sh"  # PY, start_log, left, show_gpu
start_log recipe.log

echo "gpu_recipe.sh: LIMIT_S=$LIMIT_S DEVICE=$DEVICE EXTRA='$EXTRA'" \
     "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
show_gpu  # sets GPU
tar -xzf "$ARCHIVE" -C "$WORK" || { echo "could not extract $ARCHIVE"; exit 1; }
OUT_JSON="$OUTDIR/recipe-$GPU.jsonl"
if [ -n "$RESULTS" ]; then cp "$RESULTS" "$OUT_JSON" || exit 1; fi

t=$(( $(left) - 10 )); [ $t -gt 10 ] || t=10
echo "== gpu_recipe.py ($(left) s left)"
# shellcheck disable=SC2086
timeout $t "$PY" tests/benchmarks/gpu_recipe.py --json "$OUT_JSON" --data-dir "$WORK" --device "$DEVICE" \
  --time-limit $(( t - 10 > 5 ? t - 10 : 5 )) $EXTRA
rc=$?
echo "gpu_recipe.py exited with $rc"
ls -l "$OUTDIR"
echo "== done in $SECONDS s"
exit $rc
