#!/usr/bin/env bash
# Runs one test program of the sanitizer build (tests/CMakeLists.txt wraps
# every ASan test in it) and runs it once more when, and only when, it
# failed because LeakSanitizer's own stop-the-world tracer crashed at exit:
#   Tracer caught signal 11: addr=0x0 pc=... sp=...
#   ==N==LeakSanitizer has encountered a fatal error.
# That is the sanitizer failing, not the test (google/sanitizers#1353: it
# strikes at random, here about once in a few hundred runs of a program
# with PoCL's worker threads alive). The rerun happens only when the output
# shows nothing else wrong -- no failed case, no leak, no ASan or UBSan
# report -- and its result is final; any other failure is final at once.
#   lsan-retry.sh PROGRAM [ARGS...]
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT

run_logged() {
  "$@" 2>&1 | tee "$log"
  return "${PIPESTATUS[0]}"
}

# True when the log has the tracer's fatal error and no other sign of a
# failure.
tracer_crash_only() {
  grep -q "LeakSanitizer has encountered a fatal error" "$log" || return 1
  ! grep -qE "ERROR: (LeakSanitizer|AddressSanitizer)|runtime error:|SUMMARY: |\[  FAILED  \]" "$log"
}

run_logged "$@"
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && tracer_crash_only; then
  echo "lsan-retry: every case passed, then LeakSanitizer's tracer crashed at exit" \
    "(a sanitizer fault, not a leak); running $(basename "$1") once more"
  run_logged "$@"
  rc=$?
fi
exit "$rc"
