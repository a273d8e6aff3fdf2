#!/usr/bin/env bash
# On the GPU machine (the device tool): what the 2026-12-08 second session
# built without a GPU, in one call of under ten minutes (bench/NOTES.md has
# each piece's prediction):
#   1. the test programs that cover it, on CUDA: kv cache (the batch step
#      write, kept uploads), layers, lm;
#   2. `zmlx check --backend cuda` of paged_decode (the staged form with
#      cp.async at 2, 3, 4 stages) and max / min / argmax (a warp per row);
#   3. benchmarks, PyTorch peers in the same run: paged_decode unstaged and
#      at 2, 3, 4 stages; max / min / argmax with and without a warp per
#      row; decode_step (a Llama-shaped model's step) with this build and,
#      when build-devpy/old holds one (scripts/device-pack.sh OLD_REV), the
#      build before the session (per-sequence writes, uploads every layer).
# Here:   CHECK_FILES=src/check/kv_cache_check.c TESTS="test_kv_cache test_layers test_lm" \
#           bash scripts/device-pack.sh 7461bba
# Device: B=build-devpy bash scripts/device-pending.sh   (carry build-devpy .devlibs)
. "$(dirname "$0")/device-env.sh"
export ZMLX_CACHE_DIR=/tmp/zc_pending
for t in test_kv_cache test_layers test_lm; do
  [ -x "$B/tests/$t" ] || continue
  timeout 120 "$B/tests/$t" >"$LOG/$t.log" 2>&1
  say "test $t rc=$? $(grep -E '^\[zmlx test\]' "$LOG/$t.log" | tail -n 1)"
done
for op in paged_decode max min argmax; do
  timeout 120 "$B/zmlx" check --backend cuda --op "$op" >"$OUT/check_$op.txt" 2>&1
  say "check $op rc=$?: $(tail -n 1 "$OUT/check_$op.txt")"
  grep FAIL "$OUT/check_$op.txt" | head -5 | tee -a "$summary"
done
: >"$OUT/peers.jsonl"
for op in paged_decode max min argmax; do
  PYTHONUNBUFFERED=1 PEER_EAGER_ONLY=1 timeout 100 python3 bench/peer_catalog.py --op "$op" \
    --json /tmp/peer_$op.jsonl >>"$OUT/peers.txt" 2>&1
  cat /tmp/peer_$op.jsonl >>"$OUT/peers.jsonl" 2>/dev/null
done
bench() { # "VAR=V ..." OP...: zmlx bench of each op with those variables set
  local setting=$1
  shift
  for op in "$@"; do
    say "== ${setting:-defaults}: $op"
    env $setting timeout 90 "$B/zmlx" bench --backend cuda --op "$op" --peer "$OUT/peers.jsonl" \
      2>&1 | tail -n +2 | tee -a "$summary"
  done
}
bench "ZMLX_DECODE_STAGES=0" paged_decode
for st in 2 3 4; do bench "ZMLX_DECODE_STAGES=$st" paged_decode; done
bench "ZMLX_DECODE_STAGES=4 ZMLX_DECODE_LPT=8" paged_decode
bench "ZMLX_SEL_WARP_ROWS=0" max min argmax
bench "ZMLX_SEL_WARP_ROWS=1" max min argmax
bench "" decode_step
if [ -x "$B/old/zmlx" ]; then
  say "== the build before the session: decode_step"
  timeout 90 "$B/old/zmlx" bench --backend cuda --op decode_step 2>&1 | tail -n +2 | tee -a "$summary"
fi
tar czf "$OUT/logs.tgz" -C "$LOG" .
