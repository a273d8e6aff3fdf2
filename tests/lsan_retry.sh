#!/usr/bin/env bash
# scripts/lsan-retry.sh reruns a test only for LeakSanitizer's tracer crash:
# each case below runs a fake test program through it and checks the exit
# status and how many times the program ran.
#   lsan_retry.sh PATH/TO/lsan-retry.sh
set -uo pipefail
wrapper=${1:?lsan_retry.sh: give the path of lsan-retry.sh}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
failures=0

tracer_lines='Tracer caught signal 11: addr=0x0 pc=0x4f5070 sp=0x7efd9a5dad30
==8160==LeakSanitizer has encountered a fatal error.
==8160==HINT: LeakSanitizer does not work under ptrace (strace, gdb, etc)'

# fake FIRST_OUTPUT FIRST_RC LATER_OUTPUT LATER_RC: a program that prints
# FIRST_OUTPUT and exits FIRST_RC on its first run, LATER_* on every other,
# counting its runs in $dir/runs.
fake() {
  printf '%s' "$1" >"$dir/first.out"
  printf '%s' "$3" >"$dir/later.out"
  cat >"$dir/prog" <<PROG
#!/usr/bin/env bash
n=\$(cat "$dir/runs" 2>/dev/null || echo 0)
echo \$((n + 1)) >"$dir/runs"
if [ "\$n" -eq 0 ]; then cat "$dir/first.out"; exit $2; fi
cat "$dir/later.out"; exit $4
PROG
  chmod +x "$dir/prog"
  rm -f "$dir/runs"
}

# expect NAME RC RUNS: the wrapper exits RC having run the program RUNS times.
expect() {
  bash "$wrapper" "$dir/prog" >"$dir/out" 2>&1
  local rc=$? runs
  runs=$(cat "$dir/runs")
  if [ "$rc" -eq "$2" ] && [ "$runs" -eq "$3" ]; then
    echo "ok: $1"
  else
    echo "FAILED: $1: exit $rc after $runs run(s), expected exit $2 after $3"
    sed 's/^/  | /' "$dir/out"
    failures=$((failures + 1))
  fi
}

passed='[==========] 3 test(s) run.
[  PASSED  ] 3 test(s).
'
fake "$passed$tracer_lines" 1 "$passed" 0
expect "a tracer crash after every case passed is run again and passes" 0 2

fake "$passed$tracer_lines" 1 "$passed$tracer_lines" 1
expect "a second tracer crash is final" 1 2

fake "$passed" 0 "$passed" 0
expect "a pass runs once" 0 1

fake '[  SKIPPED ] 3 test(s).
' 77 "$passed" 0
expect "a skip (77) runs once" 77 1

fake "[  FAILED  ] 1 test(s), listed below:
$tracer_lines" 1 "$passed" 0
expect "a failed case with a tracer crash is not run again" 1 1

fake "$passed==1==ERROR: LeakSanitizer: detected memory leaks
SUMMARY: AddressSanitizer: 64 byte(s) leaked in 1 allocation(s).
$tracer_lines" 1 "$passed" 0
expect "a leak report with a tracer crash is not run again" 1 1

fake "${passed}src/x.c:3:5: runtime error: signed integer overflow
$tracer_lines" 1 "$passed" 0
expect "a UBSan report with a tracer crash is not run again" 1 1

fake "$passed" 1 "$passed" 0
expect "a failure without the tracer's line is not run again" 1 1

fake "$passed$tracer_lines" 134 "$passed" 0
expect "any failing status with only the tracer crash is run again" 0 2

if [ "$failures" -ne 0 ]; then
  echo "$failures case(s) failed"
  exit 1
fi
echo "all cases passed"
