#!/usr/bin/env bash
# Attention (issue 10) on the GPU machine (the device tool), over a build made
# here and carried (B, default build-device; libraries in .devlibs, see
# scripts/device-tests.sh): the full `zmlx check --op attention` on CUDA,
# compute-sanitizer memcheck and racecheck over the quick one, PyTorch's SDPA
# backends (bench/sdpa_backends.py) and `zmlx bench --op attention` with the
# default SDPA merged in as its peer, all in one run. Results under $OUT.
#   device: B=build-devpy bash scripts/device-attention.sh [check sanitize bench wgsweep]
. "$(dirname "$0")/device-env.sh"
export ZMLX_CACHE_DIR=/tmp/zc_attention
stages=${*:-check bench sanitize}

stage_check() {
  timeout 240 "$B/zmlx" check --backend cuda --op attention >"$OUT/check_attention.txt" 2>&1
  say "zmlx check --backend cuda --op attention rc=$?: $(tail -n 1 "$OUT/check_attention.txt")"
  grep FAIL "$OUT/check_attention.txt" | head -20 | tee -a "$summary"
}

stage_bench() {
  PYTHONUNBUFFERED=1 timeout 200 python3 bench/sdpa_backends.py --json "$OUT/sdpa.jsonl" \
    2>&1 | tee -a "$summary"
  : >"$OUT/peers.jsonl"
  for op in attention_causal attention_causal_fwd_bwd; do
    PEER_EAGER_ONLY=1 PYTHONUNBUFFERED=1 timeout 120 python3 bench/peer_catalog.py --op "$op" \
      --json /tmp/peer_$op.jsonl >>"$OUT/peers.txt" 2>&1
    cat /tmp/peer_$op.jsonl >>"$OUT/peers.jsonl" 2>/dev/null
  done
  timeout 200 "$B/zmlx" bench --backend cuda --op attention --json "$OUT/bench_attention.json" \
    --peer "$OUT/peers.jsonl" 2>&1 | tee -a "$summary"
}

stage_sanitize() {
  for tool in memcheck racecheck; do
    ZMLX_CACHE_DIR=/tmp/zc_$tool timeout 240 compute-sanitizer --tool $tool --error-exitcode 99 \
      "$B/zmlx" check --backend cuda --quick --op attention --dtype bf16 >"$OUT/san_$tool.txt" 2>&1
    say "compute-sanitizer $tool rc=$?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' \
      "$OUT/san_$tool.txt" | tr '\n' ' ') $(grep -E '^[0-9]+ passed' "$OUT/san_$tool.txt")"
  done
}

# The forward's tile shapes on Hopper's warpgroup products against the warp
# products' tiles (ZMLX_ATTENTION_WG=0): a quick bf16 check and the bench rows
# of each.
stage_wgsweep() {
  for cfg in ${WG_CONFIGS:-0 2,64 1,64 1,128}; do
    local tag=${cfg/,/x}
    ZMLX_ATTENTION_WG=$cfg timeout 120 "$B/zmlx" check --backend cuda --quick --op attention \
      --dtype bf16 >"$OUT/wg_check_$tag.txt" 2>&1
    say "WG=$cfg check rc=$?: $(tail -n 1 "$OUT/wg_check_$tag.txt")"
    grep FAIL "$OUT/wg_check_$tag.txt" | head -5 | tee -a "$summary"
    ZMLX_ATTENTION_WG=$cfg timeout 120 "$B/zmlx" bench --backend cuda --op attention \
      --json "$OUT/wg_bench_$tag.json" >"$OUT/wg_bench_$tag.txt" 2>&1
    say "WG=$cfg bench rc=$?"
    grep -E "attention" "$OUT/wg_bench_$tag.txt" | tee -a "$summary"
  done
}

for s in $stages; do "stage_$s"; done
