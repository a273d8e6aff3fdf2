#!/usr/bin/env bash
# Issue 5 on the GPU machine (the device tool), over a build made here and
# carried as build-device/ with .devlibs/ (see scripts/device-check.sh).
# Stages, in the order given (default: all three):
#   bench     the PyTorch peers (bench/peer_catalog.py), then `zmlx bench`
#             with their times merged in
#   check     the full `zmlx check --backend cuda`
#   sanitize  compute-sanitizer memcheck and racecheck over the quick check
# Results under $OUT; catalog_summary.txt collects the headline lines.
set -u
B=${B:-build-device}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/.devlibs:${LD_LIBRARY_PATH:-}"
export ZMLX_CACHE_DIR=/tmp/zc_catalog
summary="$OUT/catalog_summary.txt"
touch "$summary"
stages=${*:-bench check sanitize}

stage_bench() {
  PYTHONUNBUFFERED=1 timeout 360 python3 bench/peer_catalog.py --json "$OUT/peer_catalog.jsonl" \
    > "$OUT/peer_catalog.txt" 2>&1
  "$B/zmlx" bench --backend cuda --json "$OUT/bench_catalog.json" \
    --peer "$OUT/peer_catalog.jsonl" 2>&1 | tee -a "$summary"
}

stage_check() {
  timeout 300 "$B/zmlx" check --backend cuda > "$OUT/check_cuda.txt" 2>&1
  echo "zmlx check --backend cuda rc=$?: $(tail -n 1 "$OUT/check_cuda.txt")" | tee -a "$summary"
  grep FAIL "$OUT/check_cuda.txt" | head -20 | tee -a "$summary"
}

stage_sanitize() {
  # memcheck and racecheck side by side (one GPU, two processes): the quick
  # check compiles and launches every kernel variant of the catalog.
  for tool in memcheck racecheck; do
    ZMLX_CACHE_DIR=/tmp/zc_$tool timeout ${SAN_TIMEOUT:-420} compute-sanitizer --tool $tool \
      --error-exitcode 99 "$B/zmlx" check --backend cuda --quick > "$OUT/san_$tool.txt" 2>&1 &
  done
  wait
  for tool in memcheck racecheck; do
    echo "compute-sanitizer $tool zmlx check --backend cuda --quick:" \
      "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/san_$tool.txt" | tr '\n' ' ')" \
      "$(grep -E '^[0-9]+ passed' "$OUT/san_$tool.txt")" | tee -a "$summary"
  done
}

for s in $stages; do "stage_$s"; done
