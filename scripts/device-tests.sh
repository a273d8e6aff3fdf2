#!/usr/bin/env bash
# Run on the GPU machine (the device tool) over a build made here: every test
# program on CUDA (ZMLX_TEST_BACKEND=cuda) and the catalog's quick check on
# CUDA, from build-device/ and .devlibs/ (libcmocka, libOpenCL, libcrypto
# copied from this Debian machine), both carried with the working tree.
# The pass/fail lines go to $OUT/summary.txt, the logs to $OUT/logs.tgz.
#   here:   cmake -S . -B build-device -DZMLX_BUILD_BENCH=OFF && cmake --build build-device -j2
#           mkdir -p .devlibs && cp -L /usr/lib/x86_64-linux-gnu/lib{cmocka,OpenCL,crypto}.so.* .devlibs/
#   device: bash scripts/device-tests.sh
# SANITIZE=memcheck|racecheck|synccheck runs every program under that
# compute-sanitizer tool (exit 99 on a report; the tool's summary line is
# printed); TESTS="test_a test_b" picks programs; NO_CHECK=1 skips the check.
. "$(dirname "$0")/device-env.sh"
# the sanitizer, when asked, in front of each program
wrap=()
[ -n "${SANITIZE:-}" ] && wrap=(compute-sanitizer --tool "$SANITIZE" --error-exitcode 99)
san_summary() { [ -n "${SANITIZE:-}" ] && grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$1" | tail -n 1; }
for t in ${TESTS:-$(ls "$B"/tests/test_* | grep -v '\.' | xargs -n1 basename)}; do
  ZMLX_CACHE_DIR=/tmp/zc_$t timeout 300 "${wrap[@]}" "$B/tests/$t" >"$LOG/$t.log" 2>&1
  say "test $t rc=$? $(grep -E '^\[zmlx test\]' "$LOG/$t.log" | tail -n 1) $(san_summary "$LOG/$t.log")"
done
if [ -n "${NO_CHECK:-}" ]; then tar czf "$OUT/logs.tgz" -C "$LOG" .; exit 0; fi
ZMLX_CACHE_DIR=/tmp/zc_check timeout 400 "${wrap[@]}" "$B/zmlx" check --quick --backend cuda \
  --seed 1 >"$LOG/check_quick_cuda.txt" 2>&1
say "zmlx check --quick --backend cuda: rc=$? $(grep -E '^[0-9]+ passed' "$LOG/check_quick_cuda.txt" | tail -n 1) $(san_summary "$LOG/check_quick_cuda.txt")"
grep FAIL "$LOG/check_quick_cuda.txt" | head -20 | tee -a "$summary"
tar czf "$OUT/logs.tgz" -C "$LOG" .
