#!/usr/bin/env bash
# zmlx.torch on the GPU machine (the device tool): builds the Python
# extension there against its own Python (the carried build-device/ has
# libzmlx.so; .devlibs/include has dlpack.h, .devlibs/pylib pytest for a
# Python without it), then python/tests/torch on CUDA tensors, the plain
# python/tests on the CUDA device, and bench/torch_patch.py (per-call
# overhead, torch.compile, patch(model) on HF Llama / Qwen3-MoE).
# Results under $OUT: summary.txt, pytest_*.txt, torch_patch.txt/.json.
#   here:   cmake --build build-device -j2
#           mkdir -p .devlibs/include/dlpack && cp /usr/include/dlpack/dlpack.h .devlibs/include/dlpack/
#           pip install --target .devlibs/pylib pytest
#   device: bash scripts/device-torch.sh
. "$(dirname "$0")/device-env.sh"
export ZMLX_CACHE_DIR=/tmp/zc_torch
PY=python3
root=$PWD
pyb=/tmp/zpy_build
mkdir -p "$pyb/python/zmlx"
cp python/zmlx/*.py python/zmlx/py.typed "$pyb/python/zmlx/"
inc=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
ext=$($PY -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
if ! gcc -O2 -std=c11 -shared -fPIC -Iinclude -I.devlibs/include -I"$inc" python/src/*.c \
    -L"$root/$B" -lzmlx -Wl,-rpath,"$root/$B" -o "$pyb/python/zmlx/_core$ext" 2>"$LOG/pybuild.txt"; then
  say "python extension build failed: $(tail -n 3 "$LOG/pybuild.txt")"
  exit 1
fi
say "python extension built for $($PY --version) ($ext)"
$PY -c "import pytest" 2>/dev/null || export PYTHONPATH="$root/.devlibs/pylib"
export ZMLX_TORCH_PYTHON=$PY
timeout 400 bash scripts/python-tests.sh --torch $PY "$pyb" -rs >"$OUT/pytest_torch.txt" 2>&1
say "python/tests/torch on CUDA: rc=$? $(tail -n 1 "$OUT/pytest_torch.txt")"
(cd "$pyb" && PYTHONPATH="$pyb/python:${PYTHONPATH:-}" timeout 300 $PY -m pytest -q -p no:cacheprovider \
  --ignore="$root/python/tests/torch" "$root/python/tests" >"$OUT/pytest_plain.txt" 2>&1)
say "python/tests (zmlx arrays on the default device): rc=$? $(tail -n 1 "$OUT/pytest_plain.txt")"
PYTHONPATH="$pyb/python:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 timeout 420 $PY bench/torch_patch.py \
  --json "$OUT/torch_patch.json" >"$OUT/torch_patch.txt" 2>&1
say "bench/torch_patch.py: rc=$?"
cat "$OUT/torch_patch.txt" >>"$summary"
