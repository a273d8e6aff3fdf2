#!/usr/bin/env python3
"""Per-call host overhead of zmlx from Python, and why the binding is a C
extension: the same trivial C entry point (zmlx_array_ndim) called through
the extension and through ctypes, then whole calls on a cache hit (an
elementwise op on a one-element array, a catalog op, a grad), and PyTorch
eager on the same sizes when torch is importable. Prints a table and JSON.
   PYTHONPATH=build/python python3 bench/python_overhead.py [--lib build/libzmlx.so]"""
import argparse
import ctypes
import json
import sys
import time

import zmlx


def per_call_us(fn, n=20000, repeat=5):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="build/libzmlx.so")
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    rows = []
    a = zmlx.full((1,), 1.0)
    b = zmlx.full((1,), 2.0)
    # the binding itself: one trivial C call
    rows.append(("extension", "a.ndim (zmlx_array_ndim)", per_call_us(lambda: a.ndim, args.n)))
    try:
        lib = ctypes.CDLL(args.lib)
        lib.zmlx_array_ndim.argtypes = [ctypes.c_void_p]
        lib.zmlx_array_ndim.restype = ctypes.c_int
        lib.zmlx_array_full.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                        ctypes.POINTER(ctypes.c_int64), ctypes.c_double,
                                        ctypes.POINTER(ctypes.c_void_p)]
        h = ctypes.c_void_p()
        shape = (ctypes.c_int64 * 1)(1)
        lib.zmlx_array_full(None, 8, 1, shape, 1.0, ctypes.byref(h))
        rows.append(("ctypes", "zmlx_array_ndim(h)", per_call_us(lambda: lib.zmlx_array_ndim(h), args.n)))
    except OSError as e:
        print(f"# ctypes row left out: {e}", file=sys.stderr)
    # whole calls on a cache hit (kernels compiled by the first call)
    op = zmlx.elementwise("x * sigmoid(x) * y", ["x", "y"])
    op(a, b)
    rows.append(("extension", "elementwise op(a, b), 1 element", per_call_us(lambda: op(a, b), args.n // 10)))
    zmlx.silu(a)
    rows.append(("extension", "zmlx.silu(a), 1 element", per_call_us(lambda: zmlx.silu(a), args.n // 10)))
    g = zmlx.grad(lambda x: zmlx.sum(zmlx.silu(x)))
    g(a)
    rows.append(("extension", "zmlx.grad(sum(silu)), 1 element", per_call_us(lambda: g(a), args.n // 100)))
    zmlx.synchronize()
    try:
        import torch
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        t = torch.ones(1, device=dev)
        torch.nn.functional.silu(t)
        rows.append(("torch eager", f"F.silu(t) on {dev}, 1 element",
                     per_call_us(lambda: torch.nn.functional.silu(t), args.n // 10)))
    except ImportError:
        print("# torch not importable: no PyTorch row", file=sys.stderr)
    print(f"# zmlx {zmlx.__version__} on {zmlx.default_device()}: best of 5, us per call")
    print(f"{'binding':<12} {'call':<40} {'us/call':>9}")
    for r in rows:
        print(f"{r[0]:<12} {r[1]:<40} {r[2]:9.3f}")
    print(json.dumps({"device": zmlx.default_device(),
                      "rows": [{"binding": r[0], "call": r[1], "us": round(r[2], 4)} for r in rows]}))


if __name__ == "__main__":
    main()
