#!/usr/bin/env bash
# libzmlx.so exports exactly the functions zmlx.h declares with ZMLX_API:
# nothing internal leaks (the library builds with -fvisibility=hidden), and
# nothing the header promises is missing.
# In the static library (third argument), every global symbol is either a
# public zmlx_* name of the header or an internal one with the zmlxi_
# prefix, so internal code is visibly internal wherever it is used.
#   exported_symbols.sh include/zmlx.h build/libzmlx.so build/libzmlx.a
set -euo pipefail
header=$1 lib=$2 archive=${3:-}
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
if nm "$lib" | grep -qE ' (zck|zt)_'; then
  echo "libzmlx carries check or bench code:"
  nm "$lib" | grep -E ' (zck|zt)_' | head
  exit 1
fi
if [ -n "$archive" ]; then
  nm --defined-only "$archive" 2>/dev/null | awk 'NF == 3 && $2 ~ /^[TDBRCVW]$/ {print $3}' |
    sort -u >"$work/globals"
  grep -v '^zmlxi_' "$work/globals" | comm -23 - "$work/declared" >"$work/unprefixed" || true
  if [ -s "$work/unprefixed" ]; then
    echo "global symbols of $(basename "$archive") that are neither in $(basename "$header") nor zmlxi_*:"
    head -20 "$work/unprefixed"
    exit 1
  fi
  echo "globals of $(basename "$archive"): $(grep -c '^zmlxi_' "$work/globals") internal (zmlxi_), the rest public"
fi
