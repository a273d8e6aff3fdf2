#!/usr/bin/env bash
# A program of a user, built against the build tree the two ways the README
# says, and run: the README's C block exactly as printed, compiled with
# -std=c11 -Wall -Wextra -Werror through `pkg-config zmlx` (shared library,
# PKG_CONFIG_PATH at the build folder) and through `pkg-config --static
# zmlx-static` (libzmlx.a, no libzmlx.so at run time).
#   consumer_build.sh README.md BUILD_DIR CC
set -euo pipefail
readme=$1 build=$2 cc=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The first ```c block of the README, verbatim.
awk '/^```c$/ {on = 1; next} on && /^```$/ {exit} on {print}' "$readme" >"$work/readme.c"
[ -s "$work/readme.c" ] || { echo "no \`\`\`c block in $readme"; exit 1; }
export PKG_CONFIG_PATH="$build"
flags=(-std=c11 -Wall -Wextra -Werror -pedantic)

echo "== shared: $cc readme.c \$(pkg-config --cflags --libs zmlx)"
# shellcheck disable=SC2046
"$cc" "${flags[@]}" "$work/readme.c" -o "$work/readme_shared" $(pkg-config --cflags --libs zmlx) \
  -Wl,-rpath,"$build"
"$work/readme_shared"
echo "ran: exit 0"

echo "== static: $cc readme.c \$(pkg-config --static --cflags --libs zmlx-static)"
# shellcheck disable=SC2046
"$cc" "${flags[@]}" "$work/readme.c" -o "$work/readme_static" \
  $(pkg-config --static --cflags --libs zmlx-static)
if ldd "$work/readme_static" | grep -q libzmlx; then
  echo "the static build still needs libzmlx.so:"; ldd "$work/readme_static"; exit 1
fi
"$work/readme_static"
echo "ran: exit 0"
