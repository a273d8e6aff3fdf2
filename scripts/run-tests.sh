#!/usr/bin/env bash
# Run ctest in each build folder given and print one summary line last:
# "N passed, N failed" (counted over ctest tests of all folders).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export LSAN_OPTIONS="suppressions=$root/scripts/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0"
passed=0
failed=0
for dir in "$@"; do
  echo "== ctest in $dir"
  log=$(mktemp)
  (cd "$dir" && ctest --output-on-failure -j "${ZMLX_TEST_JOBS:-2}") 2>&1 | tee "$log"
  line=$(grep -E "tests passed, [0-9]+ tests? failed out of [0-9]+" "$log" | tail -n 1)
  if [ -z "$line" ]; then
    echo "run-tests: no ctest summary in $dir" >&2
    failed=$((failed + 1))
  else
    total=$(echo "$line" | sed -E 's/.* out of ([0-9]+).*/\1/')
    nfail=$(echo "$line" | sed -E 's/.*passed, ([0-9]+) tests? failed.*/\1/')
    passed=$((passed + total - nfail))
    failed=$((failed + nfail))
  fi
  rm -f "$log"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
