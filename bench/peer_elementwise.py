"""Peers for bench_elementwise: the same op, shape and dtype through PyTorch
eager, torch.compile and CuPy's ElementwiseKernel, with the same byte count
and the device copy measured in the same run (CUDA events, median).

    python3 bench/peer_elementwise.py [--rows R] [--cols C] [--json FILE]
"""
import json
import statistics
import sys

import torch


def arg(name, default):
    return type(default)(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def median_ms(fn, reps=21, inner=10):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def main():
    rows, cols = arg("--rows", 16384), arg("--cols", 14336)
    x = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16)
    y = torch.randn_like(x)
    n_bytes = x.numel() * x.element_size()
    dst = torch.empty_like(x)
    copy_ms = median_ms(lambda: dst.copy_(x))
    copy_gbs = 2 * n_bytes / copy_ms * 1e-6

    def eager():
        return x * torch.sigmoid(x) * y

    compiled = torch.compile(eager)
    rows_out = [("device copy (torch)", copy_ms, 2 * n_bytes)]
    rows_out.append(("torch eager", median_ms(eager), 3 * n_bytes))
    rows_out.append(("torch.compile", median_ms(compiled), 3 * n_bytes))
    try:
        import cupy as cp
        # CuPy has no bfloat16 dtype: pass the bits as int16 and convert in
        # the kernel (round to nearest even on the way out), as a CuPy user would.
        k = cp.ElementwiseKernel(
            "int16 xb, int16 yb", "int16 zb",
            """
            float v = __uint_as_float(((unsigned)(unsigned short)xb) << 16);
            float w = __uint_as_float(((unsigned)(unsigned short)yb) << 16);
            unsigned u = __float_as_uint(v / (1.0f + expf(-v)) * w);
            u += 0x7fffu + ((u >> 16) & 1u);
            zb = (short)(u >> 16);
            """, "silu_mul_bf16")
        cx, cy = cp.from_dlpack(x.view(torch.int16)), cp.from_dlpack(y.view(torch.int16))
        cz = cp.empty_like(cx)
        rows_out.append(("cupy ElementwiseKernel", median_ms(lambda: k(cx, cy, cz)), 3 * n_bytes))
    except Exception as e:
        print(f"cupy skipped: {e}")
    print(f"{'peer':28s} {'ms':>9s} {'GB/s':>9s} {'% copy':>7s}")
    out = []
    for name, ms, b in rows_out:
        gbs = b / ms * 1e-6
        print(f"{name:28s} {ms:9.4f} {gbs:9.1f} {100 * gbs / copy_gbs:7.1f}")
        out.append({"peer": name, "ms": ms, "gbs": gbs, "pct_copy": 100 * gbs / copy_gbs})
    if "--json" in sys.argv:
        with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
            json.dump({"rows": rows, "cols": cols, "dtype": "bf16", "peers": out}, f, indent=1)


if __name__ == "__main__":
    main()
