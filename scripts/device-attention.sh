#!/usr/bin/env bash
# Attention (issue 10) on the GPU machine (the device tool), over a build made
# here and carried (B, default build-device; libraries in .devlibs, see
# scripts/device-tests.sh): the full `zmlx check --op attention` on CUDA,
# compute-sanitizer memcheck and racecheck over the quick one, PyTorch's SDPA
# backends (bench/sdpa_backends.py) and `zmlx bench --op attention` with the
# default SDPA merged in as its peer, all in one run. Results under $OUT.
#   device: B=build-devpy bash scripts/device-attention.sh [check sanitize bench wgsweep bwdsweep ncu]
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

# Nsight Compute on the forward and the backward's two kernels at the bench
# shape: throughput, occupancy, registers and where warps stall.
stage_ncu() {
  timeout 240 ncu --kernel-name regex:'attention_(fwd|bwd_dq|bwd_dkv)_tile' --launch-count 3 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    "$B/zmlx" bench --backend cuda --op attention --reps 1 >"$OUT/ncu_attention.txt" 2>&1
  say "ncu rc=$?"
  grep -E "zmlx_attention|Duration|Compute \(SM\) Throughput|Registers Per Thread|Achieved Occupancy|Theoretical Occupancy|Warp Cycles Per Issued|Block Limit" \
    "$OUT/ncu_attention.txt" | head -60 | tee -a "$summary"
}

# One setting (an environment variable) over several values: a quick bf16
# check and the bench rows of each.
sweep() { # sweep VAR TAG VALUE...
  local var=$1 tag0=$2
  shift 2
  for cfg in "$@"; do
    local tag=${tag0}_${cfg/,/x}
    env "$var=$cfg" timeout 120 "$B/zmlx" check --backend cuda --quick --op attention \
      --dtype bf16 >"$OUT/${tag}_check.txt" 2>&1
    say "$var=$cfg check rc=$?: $(tail -n 1 "$OUT/${tag}_check.txt")"
    grep FAIL "$OUT/${tag}_check.txt" | head -5 | tee -a "$summary"
    env "$var=$cfg" timeout 120 "$B/zmlx" bench --backend cuda --op attention \
      --json "$OUT/${tag}_bench.json" >"$OUT/${tag}_bench.txt" 2>&1
    say "$var=$cfg bench rc=$?"
    grep -E "attention" "$OUT/${tag}_bench.txt" | tee -a "$summary"
  done
}

# The forward's tile shapes on Hopper's warpgroup products against the warp
# products' tiles (ZMLX_ATTENTION_WG=0).
stage_wgsweep() { sweep ZMLX_ATTENTION_WG wg ${WG_CONFIGS:-0 2,64 1,64 1,128}; }

# The backward on the warpgroup products (64 / 128 queries or keys a step)
# against its warp products (ZMLX_ATTENTION_WG_BWD=0).
stage_bwdsweep() { sweep ZMLX_ATTENTION_WG_BWD bwd ${BWD_CONFIGS:-0 64 128}; }

for s in $stages; do "stage_$s"; done
