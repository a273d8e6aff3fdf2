# Sourced by the scripts/device-*.sh scripts on the GPU machine: the carried
# build ($B, default build-device) and libraries (.devlibs), CUDA for the
# tests, results under $OUT (summary.txt, written through `say`), raw logs
# under $LOG; prints the card first.
set -u
B=${B:-build-device}
OUT=${OUT:-/tmp/out}
LOG=/tmp/devlogs
mkdir -p "$OUT" "$LOG"
export LD_LIBRARY_PATH="$PWD/.devlibs:${LD_LIBRARY_PATH:-}"
export ZMLX_TEST_BACKEND=cuda
summary="$OUT/summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$summary"
