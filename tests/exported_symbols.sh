#!/usr/bin/env bash
# libzmlx.so exports exactly the functions zmlx.h declares with ZMLX_API:
# nothing internal leaks (the library builds with -fvisibility=hidden), and
# nothing the header promises is missing.
#   exported_symbols.sh include/zmlx.h build/libzmlx.so
set -euo pipefail
header=$1 lib=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tr '\n' ' ' <"$header" | grep -oE 'ZMLX_API[^;(]*\(' | grep -oE 'zmlx_[A-Za-z0-9_]+ *\($' |
  tr -d ' (' | sort -u >"$work/declared"
nm -D --defined-only "$lib" | awk '$2 ~ /^[TtWwDdBbRr]$/ {print $3}' | sort -u >"$work/exported"
echo "declared in $(basename "$header"): $(wc -l <"$work/declared"); exported by $(basename "$lib"): $(wc -l <"$work/exported")"
if ! diff "$work/declared" "$work/exported" >"$work/diff"; then
  echo "mismatch (< declared only, > exported only):"
  cat "$work/diff"
  exit 1
fi
[ -s "$work/declared" ] || { echo "no ZMLX_API declaration found in $header"; exit 1; }
# The verifier and benchmark cases (src/check) are a library of their own
# that the CLI and the tests link: none of their code is in libzmlx.
if nm "$lib" | grep -qE ' zmlx_(catalog|opck|rg|bench)_'; then
  echo "libzmlx carries check or bench code:"
  nm "$lib" | grep -E ' zmlx_(catalog|opck|rg|bench)_' | head
  exit 1
fi
