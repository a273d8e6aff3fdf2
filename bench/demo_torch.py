"""The `zmlx demo` model in PyTorch, for the step-time comparison of issue 14:
the same architecture as zmlx_lm (byte embedding; per layer RMSNorm, q/k/v
projections without bias, half-split RoPE, GQA causal attention through
scaled_dot_product_attention, wo, RMSNorm, a top-k mixture of SwiGLU experts
with softmax-then-top-k renormalised gating; final RMSNorm, head,
cross-entropy) trained with AdamW(fused=True) on random bytes, timed per
step in eager mode and under torch.compile. A program, not a test.

    python3 bench/demo_torch.py --config large --json OUT.json
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

CONFIGS = {  # tools/cmd_demo.c's CONFIGS
    "small": dict(dim=128, layers=2, heads=4, kv_heads=2, ffn=192, experts=4, top_k=2, batch=32, seq=64),
    "large": dict(dim=512, layers=6, heads=8, kv_heads=4, ffn=1024, experts=8, top_k=2, batch=32, seq=256),
}


def rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, base=10000.0):  # x [B, S, H, D], half-split pairs (i, i + D/2)
    S, D = x.shape[1], x.shape[3]
    inv = base ** (-torch.arange(0, D // 2, device=x.device, dtype=torch.float32) * 2 / D)
    ang = torch.arange(S, device=x.device, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
    a, b = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)


class Model(torch.nn.Module):
    def __init__(self, c, vocab=256):
        super().__init__()
        self.c = c
        d, hd = c["dim"], c["dim"] // c["heads"]
        p = lambda *s, std=0.02: torch.nn.Parameter(torch.randn(*s) * std)
        out_std = 0.02 / (2 * c["layers"]) ** 0.5
        self.embed = p(vocab, d)
        self.layers = torch.nn.ParameterList()
        for _ in range(c["layers"]):
            self.layers.extend([
                torch.nn.Parameter(torch.ones(d)), p(d, c["heads"] * hd), p(d, c["kv_heads"] * hd),
                p(d, c["kv_heads"] * hd), p(c["heads"] * hd, d, std=out_std), torch.nn.Parameter(torch.ones(d)),
                p(c["experts"], d), p(c["experts"], c["ffn"], d), p(c["experts"], c["ffn"], d),
                p(c["experts"], d, c["ffn"], std=out_std)])
        self.norm = torch.nn.Parameter(torch.ones(d))
        self.head = p(d, vocab)

    def moe(self, x, router, w1, w3, w2):
        probs = torch.softmax(x @ router.t(), -1)
        top, idx = probs.topk(self.c["top_k"], -1)
        top = top / top.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e in range(self.c["experts"]):
            tok, slot = torch.where(idx == e)
            h = x[tok]
            y = (F.silu(h @ w1[e].t()) * (h @ w3[e].t())) @ w2[e].t()
            out.index_add_(0, tok, y * top[tok, slot, None])
        return out

    def forward(self, tokens, targets):
        c, B, S = self.c, tokens.shape[0], tokens.shape[1]
        hd = c["dim"] // c["heads"]
        x = self.embed[tokens].reshape(B * S, c["dim"])
        for l in range(c["layers"]):
            an, wq, wk, wv, wo, fn, router, w1, w3, w2 = self.layers[l * 10:(l + 1) * 10]
            h = rms(x, an)
            q = rope((h @ wq).view(B, S, c["heads"], hd))
            k = rope((h @ wk).view(B, S, c["kv_heads"], hd))
            v = (h @ wv).view(B, S, c["kv_heads"], hd)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True, enable_gqa=True)
            x = x + a.transpose(1, 2).reshape(B * S, -1) @ wo
            x = x + self.moe(rms(x, fn), router, w1, w3, w2)
        return F.cross_entropy(rms(x, self.norm) @ self.head, targets.reshape(-1))


def time_steps(model, step_fn, c, steps=20, warm=5):
    g = torch.Generator(device="cuda").manual_seed(0)
    tok = torch.randint(0, 256, (c["batch"], c["seq"] + 1), device="cuda", generator=g)
    for _ in range(warm):
        step_fn(tok[:, :-1], tok[:, 1:])
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step_fn(tok[:, :-1], tok[:, 1:])
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3, float(loss)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="large", choices=sorted(CONFIGS))
    ap.add_argument("--json")
    args = ap.parse_args()
    c = CONFIGS[args.config]
    torch.manual_seed(0)
    result = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "config": args.config}
    for mode in ("eager", "compile"):
        model = Model(c).cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
        fwd = torch.compile(model) if mode == "compile" else model

        def step(tok, tgt):
            opt.zero_grad(set_to_none=True)
            loss = fwd(tok, tgt)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return loss

        ms, loss = time_steps(model, step, c)
        tokens = c["batch"] * c["seq"]
        result[mode] = {"ms_per_step": ms, "tokens_per_s": tokens / ms * 1e3, "loss": loss}
        print(f"{mode:8s} {ms:8.2f} ms/step  {tokens / ms * 1e3:10.0f} tokens/s  loss {loss:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
