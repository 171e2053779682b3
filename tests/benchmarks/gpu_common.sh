# Shared by the device scripts (gpu_mae.sh, gpu_speed.sh): source it after OUTDIR and LIMIT_S are set.
#   PY          the python to run (PYTHON, else python, else python3)
#   start_log F everything after it goes to the terminal and to OUTDIR/F; WORK is a scratch folder,
#               removed at exit once the log is complete
#   left        the seconds left before LIMIT_S
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
