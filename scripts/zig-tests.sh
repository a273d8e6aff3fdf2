#!/usr/bin/env bash
# The Zig package's tests (zig/, `zig build test`) and its example against a
# CMake build tree: Zig from PyPI (ziglang, pinned in zig/requirements.txt)
# in a venv of its own (BUILD/zig-venv), caches and outputs under BUILD.
# Exit 77 (ctest: skipped) when the venv or the package cannot be had.
#   zig-tests.sh PYTHON BUILD_DIR
set -uo pipefail
python=${1:?zig-tests: PYTHON}
build=$(cd "${2:?zig-tests: BUILD_DIR}" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$build/zig-venv
req=$root/zig/requirements.txt
. "$root/scripts/venv.sh"
ensure_venv "$python" "$venv" "$req" zig-tests || exit $?
cd "$root/zig" || exit 1
export ZIG_LOCAL_CACHE_DIR="$build/zig-cache" ZIG_GLOBAL_CACHE_DIR="$build/zig-global-cache"
exec "$venv/bin/python" -m ziglang build test example --summary all --prefix "$build/zig-out" \
  -Dzmlx-include="$root/include" -Dzmlx-lib="$build"
