#!/usr/bin/env bash
# Graph capture / replay on the GPU machine (the device tool): test_graph on
# CUDA (native CUDA graphs), the same under compute-sanitizer memcheck, and
# bench/bench_graph (a step of 20 kernels launched vs replayed). Results
# under $OUT: summary.txt, test_graph.txt, graph_memcheck.txt,
# bench_graph.txt/.json.
#   here:   cmake -S . -B build-device -DZMLX_BUILD_BENCH=ON
#           cmake --build build-device -j2 --target test_graph bench_graph
#           (copied into $B/tests and $B/bench)
#   device: B=build-devpy bash scripts/device-graph.sh
. "$(dirname "$0")/device-env.sh"
export ZMLX_CACHE_DIR=/tmp/zc_graph
timeout 120 "$B/tests/test_graph" >"$OUT/test_graph.txt" 2>&1
say "test_graph on CUDA: rc=$? $(tail -n 1 "$OUT/test_graph.txt") $(grep -h '\[graph\]' "$OUT/test_graph.txt")"
timeout 300 compute-sanitizer --tool memcheck --error-exitcode 3 "$B/tests/test_graph" \
  >"$OUT/graph_memcheck.txt" 2>&1
say "test_graph under compute-sanitizer memcheck: rc=$? $(grep -h 'ERROR SUMMARY' "$OUT/graph_memcheck.txt" | tail -n 1)"
timeout 120 "$B/bench/bench_graph" --json "$OUT/bench_graph.json" >"$OUT/bench_graph.txt" 2>&1
say "bench_graph: rc=$?"
cat "$OUT/bench_graph.txt" >>"$summary"
