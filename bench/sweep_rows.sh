#!/usr/bin/env bash
# Tuning sweep for the streaming row kernels (softmax family, cross-entropy):
# `zmlx bench` under each ZMLX_ROW_TILE x ZMLX_ROW_THREADS setting, on the
# device tool's GPU machine (build-device/ carried, see scripts/device-check.sh).
# Prints one block per setting; bench/NOTES.md records what it chose.
set -u
B=${B:-build-device}
export LD_LIBRARY_PATH="$PWD/.devlibs:${LD_LIBRARY_PATH:-}"
export ZMLX_CACHE_DIR=${ZMLX_CACHE_DIR:-/tmp/zc_sweep}
for tile in ${TILES:-1 2 4}; do
  for threads in ${THREADS:-256 512 1024}; do
    echo "== TILE $tile THREADS $threads"
    for op in softmax logsumexp cross_entropy; do
      ZMLX_ROW_TILE=$tile ZMLX_ROW_THREADS=$threads "$B/zmlx" bench --backend cuda --op "$op" \
        --reps 15 2>&1 | grep -v '^#\|^op '
    done
  done
done
