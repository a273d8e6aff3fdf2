#!/usr/bin/env bash
# Here, before a device call: the carried build build-devpy/ from
# build-device/ (the zmlx CLI, libzmlx.so and stripped test programs) and
# .devlibs/ (the Debian libraries they load that the GPU machine lacks).
#   bash scripts/device-pack.sh [OLD_REV]
# With OLD_REV (a commit), also that commit's zmlx CLI (linked with the
# static library) in build-devpy/old/, built in a worktree with this tree's copies of the
# files named in CHECK_FILES (e.g. a verifier file whose bench entry is
# newer than OLD_REV), so one device call can time a change against what it
# replaced. TESTS
# picks the test programs (default: all); carry ["build-devpy", ".devlibs"].
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cmake -S . -B build-device >/dev/null
cmake --build build-device -j "${JOBS:-2}" >/dev/null
rm -rf build-devpy
mkdir -p build-devpy/tests
cp -P build-device/zmlx build-device/libzmlx.so* build-devpy/
[ -f build-device/example_train_block ] && cp build-device/example_train_block build-devpy/
for t in ${TESTS:-$(ls build-device/tests/test_* | grep -v '\.' | xargs -n1 basename)}; do
  strip -o "build-devpy/tests/$t" "build-device/tests/$t"
done
strip build-devpy/zmlx build-devpy/libzmlx.so.*.*.*
mkdir -p .devlibs
for lib in cmocka OpenCL crypto jansson clblast; do
  cp -L /usr/lib/x86_64-linux-gnu/lib$lib.so.* .devlibs/ 2>/dev/null || true
done
if [ -n "${1:-}" ]; then
  old=/tmp/zmlx-old-$1
  [ -d "$old" ] || git worktree add -f "$old" "$1" >/dev/null
  for f in ${CHECK_FILES:-}; do cp "$f" "$old/$f"; done
  cmake -S "$old" -B "$old/build" -DZMLX_BUILD_TESTS=OFF -DZMLX_BUILD_BENCH=OFF \
    -DZMLX_BUILD_PYTHON=OFF >/dev/null
  cmake --build "$old/build" -j "${JOBS:-2}" --target zmlx_cli >/dev/null
  mkdir -p build-devpy/old
  strip -o build-devpy/old/zmlx "$old/build/zmlx"
fi
du -sh build-devpy .devlibs
