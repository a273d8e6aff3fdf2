"""Host time per launch of a tiny elementwise op in the peers a user would
pick instead of zmlx (PyTorch eager, CuPy ElementwiseKernel, Triton), timed
the way bench_launch times zmlx: batches of 64 launches with the host clock,
the stream drained between batches, median over 31 batches.

    python3 bench/peer_launch.py [--json FILE]
"""
import json
import statistics
import sys
import time


def median_us(launch, sync, reps=31, batch=64):
    for _ in range(3 * batch):  # warm-up: compile, caches, allocator
        launch()
    sync()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(batch):
            launch()
        samples.append((time.perf_counter() - t0) * 1e6 / batch)
        sync()
    return statistics.median(samples)


def main():
    rows = []
    try:
        import torch
        x = torch.randn(1024, device="cuda")
        out = torch.empty_like(x)
        rows.append(("torch eager: torch.mul(x, 2, out=o)",
                     median_us(lambda: torch.mul(x, 2.0, out=out), torch.cuda.synchronize)))
        rows.append(("torch eager: y = x * 2 (allocates)",
                     median_us(lambda: x * 2.0, torch.cuda.synchronize)))
    except Exception as e:  # the table says what could not run
        rows.append((f"torch unavailable: {e}", float("nan")))
    try:
        import cupy as cp
        k = cp.ElementwiseKernel("float32 x", "float32 y", "y = x * 2.0f", "tiny")
        cx = cp.random.standard_normal(1024, dtype=cp.float32)
        cy = cp.empty_like(cx)
        rows.append(("cupy ElementwiseKernel(x, y)",
                     median_us(lambda: k(cx, cy), cp.cuda.runtime.deviceSynchronize)))
    except Exception as e:
        rows.append((f"cupy unavailable: {e}", float("nan")))
    try:
        import torch
        import triton
        import triton.language as tl

        @triton.jit
        def tiny(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            mask = offs < n
            tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask) * 2.0, mask=mask)

        x = torch.randn(1024, device="cuda")
        y = torch.empty_like(x)
        rows.append(("triton @jit launch",
                     median_us(lambda: tiny[(4,)](x, y, 1024, BLOCK=256), torch.cuda.synchronize)))
    except Exception as e:
        rows.append((f"triton unavailable: {e}", float("nan")))

    print(f"{'peer':48s} {'us/launch':>10s}")
    for name, us in rows:
        print(f"{name:48s} {us:10.2f}")
    if "--json" in sys.argv:
        with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
            json.dump([{"peer": n, "us_per_launch": u} for n, u in rows], f, indent=1)


if __name__ == "__main__":
    main()
