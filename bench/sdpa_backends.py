"""PyTorch's scaled_dot_product_attention backends at one causal shape, each
forced through torch.nn.attention.sdpa_kernel: forward and forward+backward
times and TFLOP/s, the peers of `zmlx bench --op attention` (issue 10).

  python3 bench/sdpa_backends.py [--shape B,H,S,D] [--json FILE]

FLOPs as zmlx bench counts them: 4 B H S^2 D for the two forward products,
halved by the causal mask; the backward does 2.5 times that."""
import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_ms(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(3):
        start.record()
        for _ in range(reps):
            fn()
        stop.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(stop) / reps)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="4,32,4096,128")
    ap.add_argument("--json")
    a = ap.parse_args()
    B, H, S, D = (int(x) for x in a.shape.split(","))
    q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    g = torch.randn_like(q)
    fwd_flops = 2.0 * B * H * S * S * D
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, causal bf16 {B}x{H}x{S}x{D}")
    print(f"{'backend':<22}{'fwd ms':>10}{'TFLOP/s':>10}{'fwd+bwd ms':>12}{'TFLOP/s':>10}")
    for name, be in (("default", None), ("flash", SDPBackend.FLASH_ATTENTION),
                     ("cudnn", SDPBackend.CUDNN_ATTENTION),
                     ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
        def fwd():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def fwd_bwd():
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            torch.autograd.grad(y, (q, k, v), g)

        try:
            if be is None:
                tf, tb = time_ms(lambda: fwd().detach()), time_ms(fwd_bwd)
            else:
                with sdpa_kernel([be]):
                    tf, tb = time_ms(lambda: fwd().detach()), time_ms(fwd_bwd)
        except RuntimeError as e:  # a backend that does not take this shape or card
            print(f"{name:<22}unavailable: {str(e).splitlines()[0][:80]}")
            continue
        row = {"backend": name, "shape": f"{B}x{H}x{S}x{D}", "fwd_ms": tf,
               "fwd_tflops": fwd_flops / tf / 1e9, "fwd_bwd_ms": tb,
               "fwd_bwd_tflops": 3.5 * fwd_flops / tb / 1e9}
        rows.append(row)
        print(f"{name:<22}{tf:>10.3f}{row['fwd_tflops']:>10.1f}{tb:>12.3f}{row['fwd_bwd_tflops']:>10.1f}")
    if a.json:
        with open(a.json, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
