#!/usr/bin/env bash
# The main job on the GPU machine (the device tool): `zmlx demo` on CUDA (it
# picks CUDA and the large config by itself), test_lm on CUDA, and the same
# model in PyTorch eager and torch.compile (bench/demo_torch.py) for the
# step-time comparison, all in one run. Carries a slim build: $B with
# libzmlx.so*, the zmlx CLI (built with -DZMLX_WITH_CAIRO=OFF) and
# tests/test_lm; .devlibs with the shared libraries of this machine.
# Results under $OUT: summary.txt, demo.json, demo_torch.json, loss.png.
#   device: B=build-devpy bash scripts/device-demo.sh
. "$(dirname "$0")/device-env.sh"
export ZMLX_CACHE_DIR=/tmp/zc_demo
ZMLX_CACHE_DIR=/tmp/zc_lm timeout 300 "$B/tests/test_lm" >"$LOG/test_lm.log" 2>&1
say "test_lm on CUDA: rc=$? $(grep -E '^\[zmlx test\]' "$LOG/test_lm.log" | tail -n 1)"
timeout 420 "$B/zmlx" demo --json --steps ${DEMO_STEPS:-300} --out "$OUT/demo" >"$OUT/demo.json" 2>"$LOG/demo.err"
say "zmlx demo (default: CUDA, large): rc=$? $(tail -n 2 "$LOG/demo.err" | tr '\n' ' ')"
cat "$OUT/demo.json" >>"$summary"
rm -f "$OUT/demo/model.safetensors"  # large; the numbers are in demo.json
PYTHONUNBUFFERED=1 timeout 300 python3 bench/demo_torch.py --config large \
  --json "$OUT/demo_torch.json" >"$OUT/demo_torch.txt" 2>&1
say "bench/demo_torch.py (PyTorch, same model): rc=$?"
cat "$OUT/demo_torch.txt" >>"$summary"
