#!/usr/bin/env bash
# MLX's CUDA backend on the GPU machine (issue 15): python/tests/test_mlx.py
# with mlx[cuda13], where zmlx.mlx.elementwise builds MLX CUDA kernels from
# zmlx's generated source (forward and VJP) and mx.grad goes through them.
# The mlx-cuda-13 wheel (89.8 MB) is over the device tool's 64 MiB carry,
# so it travels in two calls on one warm machine (the second within the
# machine's idle time of the first):
#   here:     W=mlx_cuda_13-0.32.4-py3-none-manylinux_2_35_x86_64.whl (pip download)
#             head -c 60000000 $W >.mlxw/a/part_a; tail -c +60000001 $W >.mlxw/b/part_b
#             sha256sum $W | cut -d' ' -f1 >.mlxw/b/sha256; mlx-0.32.4-cp3*.whl into .mlxw/b
#             build-mlx/: lib/ (libzmlx.so* and its libraries), include/dlpack, pylib (pytest)
#   device 1: bash scripts/device-mlx.sh stash          (carry .mlxw/a)
#   device 2: bash scripts/device-mlx.sh run            (carry .mlxw/b build-mlx)
# Results under $OUT: summary.txt, pytest_mlx.txt.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
summary="$OUT/summary.txt"
say() { echo "$*" | tee -a "$summary"; }
stash=/tmp/mlxw
if [ "${1:-run}" = stash ]; then
  mkdir -p "$stash" && cp .mlxw/a/part_a "$stash/" && say "stashed part_a ($(stat -c %s "$stash/part_a") bytes)"
  exit
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$summary"
if [ ! -f "$stash/part_a" ]; then
  say "no stashed part_a: this machine is not the one the stash call ran on"
  exit 2
fi
whl=$stash/mlx_cuda_13-0.32.4-py3-none-manylinux_2_35_x86_64.whl
cat "$stash/part_a" .mlxw/b/part_b >"$whl"
if [ "$(sha256sum "$whl" | cut -d' ' -f1)" != "$(cat .mlxw/b/sha256)" ]; then
  say "the reassembled wheel's sha256 differs"
  exit 3
fi
PY=python3
ver=$($PY -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
pkgs=/tmp/mlxpkgs
$PY -m pip install -q --no-deps --no-index --target "$pkgs" .mlxw/b/mlx-0.32.4-cp$ver-*.whl "$whl" \
  >"$OUT/pip.txt" 2>&1 || { say "pip install failed: $(tail -n 2 "$OUT/pip.txt")"; exit 4; }
# libmlx.so finds the CUDA libraries at $ORIGIN/../../nvidia/..: PyTorch's, beside it
nv=$($PY -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null)
[ -n "$nv" ] && ln -sfn "$nv/nvidia" "$pkgs/nvidia"
export LD_LIBRARY_PATH="$PWD/build-mlx/lib:${LD_LIBRARY_PATH:-}"
export PYTHONPATH="$pkgs"
$PY -c 'import mlx.core as mx; print("mlx", mx.__version__, "cuda available:", mx.cuda.is_available(),
         "default device:", mx.default_device())' >>"$summary" 2>&1
# the zmlx extension, built here against this Python and the carried libzmlx
pyb=/tmp/zpy_mlx
mkdir -p "$pyb/python/zmlx"
cp python/zmlx/*.py python/zmlx/py.typed "$pyb/python/zmlx/"
inc=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
ext=$($PY -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
if ! gcc -O2 -std=c11 -shared -fPIC -Iinclude -Ibuild-mlx/include -I"$inc" python/src/*.c \
    -Lbuild-mlx/lib -lzmlx -Wl,-rpath,"$PWD/build-mlx/lib" -o "$pyb/python/zmlx/_core$ext" \
    >"$OUT/pybuild.txt" 2>&1; then
  say "python extension build failed: $(tail -n 3 "$OUT/pybuild.txt")"
  exit 5
fi
$PY -c "import pytest" 2>/dev/null || PYTHONPATH="$PYTHONPATH:$PWD/build-mlx/pylib"
export PYTHONPATH="$pyb/python:$PYTHONPATH"
(cd "$pyb" && timeout 300 $PY -m pytest -q -rs -p no:cacheprovider "$OLDPWD/python/tests/test_mlx.py" \
  >"$OUT/pytest_mlx.txt" 2>&1)
say "python/tests/test_mlx.py with mlx[cuda13]: rc=$? $(tail -n 1 "$OUT/pytest_mlx.txt")"
