# Shared by the device scripts (gpu_mae.sh, gpu_speed.sh, gpu_recipe.sh): source it after OUTDIR, LIMIT_S
# and DEVICE are set.
#   PY          the python to run (PYTHON, else python, else python3)
#   start_log F everything after it goes to the terminal and to OUTDIR/F; WORK is a scratch folder,
#               removed at exit once the log is complete
#   left        the seconds left before LIMIT_S
#   show_gpu [F] prints the GPU's name, driver, memory, compute capability (and the nvidia-smi fields F), or
#               that there is no nvidia-smi; sets GPU to the name for file names (e.g. nvidia-h200), else $DEVICE
PY=${PYTHON:-$(command -v python || command -v python3)}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
finish() { rm -rf "$WORK"; exec >&- 2>&-; wait "$TEE" 2>/dev/null; }
start_log() {
  mkdir -p "$OUTDIR"
  exec > >(tee -a "$OUTDIR/$1") 2>&1
  TEE=$!
  WORK=$(mktemp -d)
  trap finish EXIT
}
left() { echo $((LIMIT_S - SECONDS)); }
show_gpu() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap${1:+,$1} --format=csv
    GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//' \
          | tr 'A-Z' 'a-z')
  else
    echo "no nvidia-smi here: running on DEVICE=$DEVICE"
    GPU=$DEVICE
  fi
}
