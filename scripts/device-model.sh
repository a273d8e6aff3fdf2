#!/usr/bin/env bash
# The model layer's benchmarks on the GPU machine (the device tool), over a
# build made here and carried as build-device/ with .devlibs/ (see
# scripts/device-tests.sh): PyTorch's peers of the named peer ops
# (bench/peer_catalog.py --op, eager only unless PEER_COMPILE=1), then
# `zmlx bench --op` of the named bench entries with those times merged in,
# all in the same run. Results under $OUT: model_bench.txt (the tables),
# peers.txt, peers.jsonl, bench_<entry>.json.
#   device: PEER_OPS="adamw moe_decode" BENCH="adamw moe" bash scripts/device-model.sh
# SWEEP="A=1 A=0+B=1 ..." also runs each bench entry and its quick CUDA
# check once per setting (environment assignments joined by +), to
# compare a switch that is off until measured, e.g.
#   SWEEP="ZMLX_MOE_TILE_INFLIGHT=1 ZMLX_MOE_DOWN_PAIRS=1" BENCH=moe PEER_OPS=moe_prefill_dense_gemm
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
for setting in ${SWEEP:-}; do
  vars=(${setting//+/ })
  tag=${setting//[=,+]/_}
  for entry in ${BENCH:-adamw moe paged_decode}; do
    env "${vars[@]}" timeout 120 "$B/zmlx" check --backend cuda --quick --op "$entry" \
      >"$OUT/check_${entry}_$tag.txt" 2>&1
    say "$setting: check $entry rc=$?: $(tail -n 1 "$OUT/check_${entry}_$tag.txt")"
    say "== $setting"
    env "${vars[@]}" timeout 150 "$B/zmlx" bench --backend cuda --op "$entry" --peer "$OUT/peers.jsonl" \
      2>&1 | tee -a "$OUT/model_bench.txt" | tee -a "$summary"
  done
done
