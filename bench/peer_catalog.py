"""Peers for `zmlx bench`: the issue-5 table ops at their LLM shapes through
PyTorch eager and torch.compile (bf16, CUDA events, median of 21 samples of
10 calls), written as one JSON object per line:
  {"op": "softmax", "shape": "4096x32768", "peer": "torch.compile", "ms": 0.123}
`zmlx bench --peer FILE` matches rows by op and shape string.

    python3 bench/peer_catalog.py [--json FILE] [--op NAME[,NAME...]]
"""
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F


def median_ms(fn, reps=21, inner=10):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / inner)
    return statistics.median(times)


def rope_half(x, cos, sin):
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def rope_interleaved(x, cos, sin):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)


class FwdBwd:
    """Forward + backward of a loss: what a training step runs. The compiled
    peer compiles the forward (AOTAutograd compiles the matching backward)."""

    def __init__(self, loss_fn, x, *rest):
        self.loss_fn, self.x, self.rest = loss_fn, x, rest

    def __call__(self):
        self.x.grad = None
        self.loss_fn(self.x, *self.rest).backward()

    def compiled(self):
        return FwdBwd(torch.compile(self.loss_fn), self.x, *self.rest)


def cases():
    bf = dict(device="cuda", dtype=torch.bfloat16)
    for r, c in ((4096, 32768), (32768, 4096)):
        x = torch.randn(r, c, **bf)
        yield "softmax", f"{r}x{c}", (lambda x=x: torch.softmax(x, -1)), 2 * x.nbytes
    x = torch.randn(4096, 32768, **bf)
    yield "log_softmax", "4096x32768", (lambda: torch.log_softmax(x, -1)), 2 * x.nbytes
    yield ("logsumexp", "4096x32768", (lambda: torch.logsumexp(x, -1)),
           x.nbytes + 2 * x.shape[0])
    x = torch.randn(16384, 4096, **bf)
    res = torch.randn_like(x)
    w = torch.randn(4096, **bf)
    b = torch.randn(4096, **bf)
    yield "rmsnorm", "16384x4096", (lambda: F.rms_norm(x, (4096,), w, 1e-6)), 2 * x.nbytes
    yield ("add_rmsnorm", "16384x4096",
           (lambda: (lambda h: (F.rms_norm(h, (4096,), w, 1e-6), h))(x + res)), 4 * x.nbytes)
    yield "layernorm", "16384x4096", (lambda: F.layer_norm(x, (4096,), w, b, 1e-5)), 2 * x.nbytes
    yield ("add_layernorm", "16384x4096",
           (lambda: (lambda h: (F.layer_norm(h, (4096,), w, b, 1e-5), h))(x + res)), 4 * x.nbytes)
    g = torch.randn(16384, 14336, **bf)
    u = torch.randn_like(g)
    yield "swiglu", "16384x14336", (lambda: F.silu(g) * u), 3 * g.nbytes
    del g, u
    gu = torch.randn(16384, 2 * 14336, **bf)
    yield ("swiglu_split", "16384x14336", (lambda: F.silu(gu[:, :14336]) * gu[:, 14336:]),
           3 * gu.nbytes // 2)
    del gu
    q = torch.randn(8, 4096, 32, 128, **bf)
    pos = torch.arange(4096, device="cuda", dtype=torch.float32)
    inv = 1.0 / (10000 ** (torch.arange(0, 128, 2, device="cuda", dtype=torch.float32) / 128))
    ang = torch.outer(pos, inv)[None, :, None, :]
    cos, sin = ang.cos().to(torch.bfloat16), ang.sin().to(torch.bfloat16)
    yield "rope", "8x4096x32x128", (lambda: rope_half(q, cos, sin)), 2 * q.nbytes
    yield "rope_tables", "8x4096x32x128", (lambda: rope_half(q, cos, sin)), 2 * q.nbytes
    yield ("rope_interleaved", "8x4096x32x128", (lambda: rope_interleaved(q, cos, sin)),
           2 * q.nbytes)
    for vocab in (32000, 128256):
        logits = torch.randn(8192, vocab, **bf)
        tgt = torch.randint(0, vocab, (8192,), device="cuda")
        yield ("cross_entropy", f"8192x{vocab}",
               (lambda logits=logits, tgt=tgt: F.cross_entropy(logits, tgt)), logits.nbytes)
    x = torch.randn(16384, 4096, **bf)
    red = {"sum": lambda: x.sum(-1), "mean": lambda: x.mean(-1),
           "max": lambda: x.amax(-1), "min": lambda: x.amin(-1),
           "var": lambda: x.var(-1), "std": lambda: x.std(-1),
           "argmax": lambda: x.argmax(-1)}
    for name, fn in red.items():
        yield name, "16384x4096", fn, x.nbytes + 2 * x.shape[0]
    for vocab in (32000, 128256):
        lg = torch.randn(8192, vocab, **bf)
        if vocab == 128256:
            yield "argmax", "8192x128256", (lambda lg=lg: lg.argmax(-1)), lg.nbytes + 4 * 8192
        yield ("topk", f"8192x{vocab}", (lambda lg=lg: torch.topk(lg, 8, -1)),
               lg.nbytes + 8192 * 8 * 6)
        del lg
    del x
    a = torch.randn(16384, 14336, **bf)
    acts = {"silu": F.silu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
            "gelu": F.gelu, "exp": torch.exp}
    for name, f in acts.items():
        yield name, "16384x14336", (lambda f=f: f(a)), 2 * a.nbytes
    del a
    for n in (4096, 8192):
        for dt, name in ((torch.bfloat16, "bf16"), (torch.float32, "f32")):
            a = torch.randn(n, n, device="cuda", dtype=dt)
            b = torch.randn(n, n, device="cuda", dtype=dt)
            # rows keyed by op and shape: the f32 rows carry "f32" in the op name
            yield ("matmul" if name == "bf16" else "matmul_f32", f"{n}x{n}",
                   (lambda a=a, b=b: a @ b), 3 * a.nbytes)
            del a, b
    q, k, v = (torch.randn(4, 32, 4096, 128, **bf, requires_grad=True) for _ in range(3))
    yield ("attention_causal", "4x32x4096x128",
           (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)), 4 * q.nbytes)
    yield ("attention_causal_fwd_bwd", "4x32x4096x128",
           FwdBwd(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True).sum(),
                  q, k, v), 9 * q.nbytes)
    del q, k, v
    # paged decode's peers: gather the blocks into a contiguous cache, then
    # SDPA (what a PyTorch server without a paged kernel does), and SDPA on
    # an already contiguous cache; batch 32, 32 q / 8 kv heads, ctx 4096
    B, H, HKV, D, ctx, bs = 32, 32, 8, 128, 4096, 16
    blocks = B * ctx // bs
    kc = torch.randn(blocks, bs, HKV, D, **bf)
    vc = torch.randn(blocks, bs, HKV, D, **bf)
    table = torch.randperm(blocks, device="cuda").view(B, ctx // bs)
    qd = torch.randn(B, H, 1, D, **bf)

    def gather_sdpa():
        k = kc[table].view(B, ctx, HKV, D).transpose(1, 2).repeat_interleave(H // HKV, 1)
        v = vc[table].view(B, ctx, HKV, D).transpose(1, 2).repeat_interleave(H // HKV, 1)
        return F.scaled_dot_product_attention(qd, k, v)

    kk = torch.randn(B, H, ctx, D, **bf)
    vv = torch.randn(B, H, ctx, D, **bf)
    yield "paged_decode", f"{B}x{H}x{D}", gather_sdpa, 2 * kc.nbytes
    yield "paged_decode_contig", f"{B}x{H}x{D}", (lambda: F.scaled_dot_product_attention(qd, kk, vv)), 2 * kc.nbytes
    del kc, vc, kk, vv
    # MoE's peers: the per-expert loop of Hugging Face's Mixtral / Qwen-MoE
    # blocks (a host sync per expert), 64 experts, top-8, hidden 2048,
    # expert dim 1408, bf16; decode bytes are the distinct chosen experts'
    # weights, prefill's the dense GEMM of the same FLOPs beside it
    E, K, Hm, Im = 64, 8, 2048, 1408
    w1 = torch.randn(E, Im, Hm, **bf) * 0.02
    w3 = torch.randn(E, Im, Hm, **bf) * 0.02
    w2 = torch.randn(E, Hm, Im, **bf) * 0.02

    def moe_loop(x, ix, wt):
        out = torch.zeros_like(x)
        for e in range(E):
            tok, slot = torch.where(ix == e)
            if tok.numel() == 0:
                continue
            h = x[tok]
            y = (F.silu(h @ w1[e].T) * (h @ w3[e].T)) @ w2[e].T
            out.index_add_(0, tok, y * wt[tok, slot, None].to(y.dtype))
        return out

    for T in (1, 8, 64, 4096):
        x = torch.randn(T, Hm, **bf)
        ix = torch.stack([torch.randperm(E, device="cuda")[:K] for _ in range(T)])
        wt = torch.full((T, K), 1.0 / K, device="cuda")
        distinct = int(torch.unique(ix).numel())
        op = "moe_decode" if T < 4096 else "moe_prefill"
        nbytes = distinct * 3 * Im * Hm * 2 if T < 4096 else 3 * E * Im * Hm * 2 + 2 * T * Hm * 2
        yield op, f"{T}x{Hm}", (lambda x=x, ix=ix, wt=wt: moe_loop(x, ix, wt)), nbytes
    a = torch.randn(4096 * K, Hm, **bf)
    b = torch.randn(Hm, 3 * Im, **bf)
    yield "moe_prefill_dense_gemm", f"4096x{Hm}", (lambda: a @ b), a.nbytes + b.nbytes
    del w1, w3, w2, a, b
    # AdamW's peer: torch.optim.AdamW(fused=True) over 16 f32 params of
    # 4096 x 4096 (28 bytes an element: p, g, m, v read, p, m, v written)
    ps = [torch.randn(4096, 4096, device="cuda", requires_grad=True) for _ in range(16)]
    for p in ps:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, fused=True)
    opt.step()  # the state exists before timing
    yield "adamw", "16x4096x4096", opt.step, 28 * 16 * 4096 * 4096
    del ps, opt
    logits = torch.randn(8192, 32000, **bf, requires_grad=True)
    tgt = torch.randint(0, 32000, (8192,), device="cuda")
    yield ("cross_entropy_fused", "8192x32000", FwdBwd(F.cross_entropy, logits, tgt),
           2 * logits.nbytes)


def main():
    only = set(sys.argv[sys.argv.index("--op") + 1].split(",")) if "--op" in sys.argv else None
    rows = []
    for op, shape, fn, nbytes in cases():
        if only and op not in only:
            continue
        peers = [("torch eager", fn)]
        if not os.environ.get("PEER_EAGER_ONLY"):  # compiling takes minutes per case
            peers.append(("torch.compile", fn.compiled() if isinstance(fn, FwdBwd) else torch.compile(fn)))
        for peer, f in peers:
            try:
                ms = median_ms(f)
            except Exception as e:  # a peer that cannot run is reported, not hidden
                print(f"{op} {shape} {peer}: {e}", file=sys.stderr)
                continue
            rows.append({"op": op, "shape": shape, "peer": peer, "ms": ms,
                         "gbs": nbytes / ms * 1e-6})
            print(f"{op:14s} {shape:16s} {peer:14s} {ms:9.4f} ms {nbytes / ms * 1e-6:8.1f} GB/s",
                  flush=True)
    if "--json" in sys.argv:
        with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
