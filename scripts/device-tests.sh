#!/usr/bin/env bash
# Run on the GPU machine (the device tool) over a build made here: every test
# program on CUDA (ZMLX_TEST_BACKEND=cuda) and the catalog's quick check on
# CUDA, from build-device/ and .devlibs/ (libcmocka, libOpenCL, libcrypto
# copied from this Debian machine), both carried with the working tree.
# The pass/fail lines go to $OUT/summary.txt, the logs to $OUT/logs.tgz.
#   here:   cmake -S . -B build-device -DZMLX_BUILD_BENCH=OFF && cmake --build build-device -j2
#           mkdir -p .devlibs && cp -L /usr/lib/x86_64-linux-gnu/lib{cmocka,OpenCL,crypto}.so.* .devlibs/
#   device: bash scripts/device-tests.sh
. "$(dirname "$0")/device-env.sh"
for t in $(ls "$B"/tests/test_* | grep -v '\.'); do
  n=$(basename "$t")
  ZMLX_CACHE_DIR=/tmp/zc_$n timeout 300 "$t" >"$LOG/$n.log" 2>&1
  say "test $n rc=$? $(grep -E '^\[zmlx test\]' "$LOG/$n.log" | tail -n 1)"
done
ZMLX_CACHE_DIR=/tmp/zc_check timeout 400 "$B/zmlx" check --quick --backend cuda --seed 1 \
  >"$LOG/check_quick_cuda.txt" 2>&1
say "zmlx check --quick --backend cuda: rc=$? $(tail -n 1 "$LOG/check_quick_cuda.txt")"
grep FAIL "$LOG/check_quick_cuda.txt" | head -20 | tee -a "$summary"
tar czf "$OUT/logs.tgz" -C "$LOG" .
