#!/usr/bin/env bash
# Run on the GPU machine (the device tool) over a build made here:
#   build-device/ (cmake build) and .devlibs/ (libcmocka, libOpenCL, libcrypto
#   copied from this Debian machine) are carried with the working tree.
# Runs every test program on CUDA, compute-sanitizer memcheck + racecheck
# over them, the demo, the launch benchmark and the peers' launch costs.
# Results go under $OUT.
. "$(dirname "$0")/device-env.sh"
"$B/zmlx" info > "$LOG/info.txt" 2>&1; head -20 "$LOG/info.txt"

tests=$(ls "$B"/tests/test_* | grep -v '\.')
for t in $tests; do
  n=$(basename "$t")
  ZMLX_CACHE_DIR=/tmp/zc_$n timeout 300 "$t" > "$LOG/$n.log" 2>&1
  rc=$?
  say "test $n rc=$rc $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$LOG/$n.log" | tr '\n' ' ')"
done

./$B/example_softmax_demo 2>&1 | tee -a "$summary"

for tool in memcheck racecheck; do
  for n in ${SANITIZE_TESTS:-test_kernel test_array test_dlpack test_cache test_patterns test_builders test_autograd}; do
    [ -x "$B/tests/$n" ] || continue
    extra=""
    [ $tool = memcheck ] && extra="--leak-check full"
    ZMLX_AD_LEAK_STEPS=300 ZMLX_CACHE_DIR=/tmp/zcs_$n timeout 240 compute-sanitizer --tool $tool $extra --error-exitcode 99 \
      "$B/tests/$n" > "$LOG/san_${tool}_$n.log" 2>&1
    rc=$?
    say "compute-sanitizer $tool $n rc=$rc: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY' "$LOG/san_${tool}_$n.log" | tr '\n' ' ')"
  done
done

"$B/bench/bench_launch" --backend cuda --json "$OUT/bench_launch.json" 2>&1 | tee -a "$summary"
PYTHONUNBUFFERED=1 python3 bench/peer_launch.py --json "$OUT/peer_launch.json" 2>&1 | tee -a "$summary"
if [ -x "$B/bench/bench_elementwise" ]; then
  PYTHONUNBUFFERED=1 python3 bench/peer_elementwise.py --json "$OUT/peer_elementwise.json" 2>&1 | tail -8 | tee -a "$summary"
  "$B/bench/bench_elementwise" --backend cuda --json "$OUT/bench_elementwise.json" \
    --peer "$OUT/peer_elementwise.json" 2>&1 | tee -a "$summary"
fi
tar czf "$OUT/logs.tgz" -C "$LOG" .  # the device tool brings back at most 8 files
