#!/usr/bin/env bash
# Run ctest in each build folder given and print one summary line last:
# "N passed, N failed, N skipped" (counted over ctest tests of all folders;
# a test that exits 77 -- every case of it skipped -- counts as skipped,
# never as passed). The slowest tests are listed before it.
#   run-tests.sh [--fuzz SECONDS] BUILD_DIR...
# --fuzz also runs `make fuzz` (the libFuzzer target) for SECONDS and counts
# it as one test (0 skips it).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
fuzz_seconds=0
if [ "${1:-}" = "--fuzz" ]; then
  fuzz_seconds=${2:?run-tests: --fuzz needs a number of seconds}
  shift 2
fi
export LSAN_OPTIONS="suppressions=$root/scripts/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# allocator_may_return_null: a test of an out-of-memory path gets NULL from
# malloc, as in the normal build, instead of ASan's abort.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:allocator_may_return_null=1"
passed=0
failed=0
skipped=0
times=$(mktemp)
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
    # ctest counts a skipped test among the passed ones.
    nskip=$(grep -cE "^[[:space:]]+[0-9]+ - .* \(Skipped\)" "$log")
    passed=$((passed + total - nfail - nskip))
    failed=$((failed + nfail))
    skipped=$((skipped + nskip))
  fi
  grep -E "Test +#[0-9]+: " "$log" | sed -E "s|.*Test +#[0-9]+: ([^ ]+) .* ([0-9.]+) sec.*|\2 $dir/\1|" >>"$times"
  rm -f "$log"
done
if [ "$fuzz_seconds" != 0 ]; then
  echo "== fuzz: make fuzz FUZZ_SECONDS=$fuzz_seconds"
  log=$(mktemp)
  if make --no-print-directory -C "$root" fuzz FUZZ_SECONDS="$fuzz_seconds" >"$log" 2>&1; then
    grep -E "^(Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb)|INFO: seed corpus" \
      "$log"
    echo "fuzz: passed (no crash in ${fuzz_seconds} s)"
    passed=$((passed + 1))
  else
    tail -n 100 "$log"
    echo "fuzz: FAILED (last 100 lines of the log above; crash reproducers go to the fuzz build's artifacts/)"
    failed=$((failed + 1))
  fi
  rm -f "$log"
fi
echo "== slowest tests (seconds)"
sort -rn "$times" | head -n 8
rm -f "$times"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
