#!/usr/bin/env bash
# The model layer's benchmarks on the GPU machine (the device tool), over a
# build made here and carried as build-device/ with .devlibs/ (see
# scripts/device-tests.sh): for each op named (default: the model layer's),
# its PyTorch peers (bench/peer_catalog.py --op) and `zmlx bench --op` with
# their times merged in, in the same run. Results under $OUT:
# model_bench.txt (the tables), peers_<op>.txt, bench_<op>.json.
#   device: bash scripts/device-model.sh [op ...]
. "$(dirname "$0")/device-env.sh"
export ZMLX_CACHE_DIR=/tmp/zc_model
ops=${*:-adamw paged_decode attention_causal matmul}
for op in $ops; do
  PYTHONUNBUFFERED=1 timeout 200 python3 bench/peer_catalog.py --op "$op" \
    --json "$OUT/peers_$op.jsonl" >"$OUT/peers_$op.txt" 2>&1
  # the catalog names the bench case by its family (matmul_f32 rows are matmul's)
  timeout 200 "$B/zmlx" bench --backend cuda --op "${op%%_causal*}*" --json "$OUT/bench_$op.json" \
    --peer "$OUT/peers_$op.jsonl" 2>&1 | tee -a "$OUT/model_bench.txt"
done
