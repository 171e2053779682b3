#!/usr/bin/env bash
# Issue 27, item 1 in one device command: profile the cifar10-gpu preset's training step and time the speed levers
# (torch.compile and its modes, CUDA graphs, the optimizer's implementation, larger batches, the augmentation and
# the model step alone) in alternating rounds against the baseline, with MFU against the measured bf16 matrix rate.
# tests/benchmarks/gpu_speed.py does the work; its docstring says what and how. LIMIT_S (420 s) is the whole
# script's deadline: the Python side gets what is left of it as --time-limit, skips variants (recorded) that would
# not fit, stops the rounds early (recorded), and rewrites its JSON after each part, so a kill keeps what was done.
#
# Usage, from the repository root through the `run` tool (the archive is copied into .gpu/ first, which
# .gitignore ignores, and carried):
#   mkdir -p .gpu && cp /work/shared/data/cifar10-jpeg.tar.gz .gpu/
#   run(command="bash tests/benchmarks/gpu_speed.sh $OUT", carry=[".gpu"], timeout_s=480)
# (LIMIT_S=420 ends the command well inside timeout_s; for a rerun with less device time left, prefix e.g.
#  LIMIT_S=240 and pass timeout_s=300: the late compile variants are then skipped and recorded so.)
# By hand:  [ARCHIVE=...] [LIMIT_S=...] [EXTRA="--variants baseline,compile"] bash tests/benchmarks/gpu_speed.sh OUTDIR
# On a CPU (the tests): DEVICE=cpu EXTRA="--tiny --threads 1 --skip-compile"; nvidia-smi is skipped when absent.
#
# Writes OUTDIR/speed.log (this output) and OUTDIR/speed-<gpu>.json (hardware, matrix rate, FLOPs per image,
# every variant's images/s per round, ratios, verdict, TFLOP/s and MFU, the profiles, what was skipped or failed).
# Commit both under tests/benchmarks/results/ with the hardware in the name.
set -u
OUTDIR=${1:?usage: gpu_speed.sh OUTDIR}
ARCHIVE=${ARCHIVE:-.gpu/cifar10-jpeg.tar.gz}
LIMIT_S=${LIMIT_S:-420}  # the whole script's deadline
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}  # more options for gpu_speed.py, word-split
. "$(dirname "$0")/gpu_common.sh"  # PY, start_log, left, show_gpu
start_log speed.log

echo "gpu_speed.sh: LIMIT_S=$LIMIT_S DEVICE=$DEVICE EXTRA='$EXTRA'" \
     "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
show_gpu clocks.sm,clocks.max.sm  # sets GPU
tar -xzf "$ARCHIVE" -C "$WORK" || { echo "could not extract $ARCHIVE"; exit 1; }

t=$(( $(left) - 10 )); [ $t -gt 10 ] || t=10  # the hard stop; --time-limit ends the work 10 s before it
echo "== gpu_speed.py ($(left) s left)"
# shellcheck disable=SC2086
timeout $t "$PY" tests/benchmarks/gpu_speed.py --json "$OUTDIR/speed-$GPU.json" --data-dir "$WORK" \
  --device "$DEVICE" --time-limit $(( t - 10 > 5 ? t - 10 : 5 )) $EXTRA
rc=$?
echo "gpu_speed.py exited with $rc"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv
fi
ls -l "$OUTDIR"
echo "== done in $SECONDS s"
exit $rc
