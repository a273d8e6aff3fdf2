#!/usr/bin/env bash
# The model layer's benchmarks on the GPU machine (the device tool), over a
# build made here and carried as build-device/ with .devlibs/ (see
# scripts/device-tests.sh): PyTorch's peers of the named peer ops
# (bench/peer_catalog.py --op, eager only unless PEER_COMPILE=1), then
# `zmlx bench --op` of the named bench entries with those times merged in,
# all in the same run. Results under $OUT: model_bench.txt (the tables),
# peers.txt, peers.jsonl, bench_<entry>.json.
#   device: PEER_OPS="adamw moe_decode" BENCH="adamw moe" bash scripts/device-model.sh
. "$(dirname "$0")/device-env.sh"
export ZMLX_CACHE_DIR=/tmp/zc_model
[ -n "${PEER_COMPILE:-}" ] || export PEER_EAGER_ONLY=1
: >"$OUT/peers.jsonl"
for op in ${PEER_OPS:-adamw moe_decode moe_prefill moe_prefill_dense_gemm paged_decode}; do
  PYTHONUNBUFFERED=1 timeout 150 python3 bench/peer_catalog.py --op "$op" --json /tmp/peer_$op.jsonl \
    >>"$OUT/peers.txt" 2>&1
  cat /tmp/peer_$op.jsonl >>"$OUT/peers.jsonl" 2>/dev/null
done
for entry in ${BENCH:-adamw moe paged_decode}; do
  timeout 150 "$B/zmlx" bench --backend cuda --op "$entry" --json "$OUT/bench_$entry.json" \
    --peer "$OUT/peers.jsonl" 2>&1 | tee -a "$OUT/model_bench.txt"
done
