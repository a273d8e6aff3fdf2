"""zmlx.torch on a GPU: per-call overhead, torch.compile, and patch(model) on
randomly initialised Hugging Face models (built from a config: nothing is
downloaded). A program, not a test: it prints a table and writes JSON.

* overhead: microseconds per call on a one-element CUDA tensor, the host
  cost of a cache hit: zmlx's C binding on a zmlx Array (the issue's goal:
  <= 6 us), zmlx.torch's op (torch.library dispatch + DLPack both ways), and
  PyTorch eager's own op, in the same run;
* compile: torch.compile (inductor) of a function of zmlx.torch ops, its
  graph-break count (torch._dynamo.explain) and agreement with eager;
* patch: Llama and Qwen3-MoE, greedy decoding of 64 new tokens patched vs
  unpatched from the same prompt (f32: tokens must be identical), and
  tokens/s (bf16, batch 1, HF generate with its KV cache; best of 3 after a
  whole warm-up generation) unpatched, patched except attention, patched.

    python3 bench/torch_patch.py --json OUT.json
"""
import argparse
import json
import time

import torch

import zmlx
import zmlx.torch as zt


def per_call_us(fn, n=20000):
    for _ in range(200):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def _noop():
    return None


_FLOOR_LIB = []  # kept alive: destroying a Library leaves torch's decomposition tables stale


def _floor_ops():
    """Two do-nothing torch.library ops, the floor of any Python custom op:
    one with only a kernel, one with an autograd registration too."""
    lib = torch.library.Library("zmlx_bench", "DEF")
    _FLOOR_LIB.append(lib)
    for name in ("plain", "autograd"):
        lib.define(f"{name}(Tensor x) -> Tensor")
        lib.impl(name, lambda x: x, "CUDA")
        torch.library.register_fake(f"zmlx_bench::{name}", lambda x: torch.empty_like(x), lib=lib)
    torch.library.register_autograd("zmlx_bench::autograd", lambda ctx, g: g,
                                    setup_context=lambda ctx, inputs, output: None, lib=lib)
    return lib, torch.ops.zmlx_bench.plain, torch.ops.zmlx_bench.autograd


def overhead():
    x = torch.randn(1, device="cuda")
    xg = torch.randn(1, device="cuda", requires_grad=True)
    a = zmlx.from_dlpack(x)
    _, plain, autograd = _floor_ops()
    torch.cuda.synchronize()
    rows = {
        "zmlx.silu (C binding, zmlx Array)": per_call_us(lambda: zmlx.silu(a)),
        "zmlx.torch.silu (torch op)": per_call_us(lambda: zt.silu(x)),
        "zmlx.torch.silu (torch op, x requires grad)": per_call_us(lambda: zt.silu(xg)),
        "torch.nn.functional.silu (eager)": per_call_us(lambda: torch.nn.functional.silu(x)),
        "torch.nn.functional.silu (eager, requires grad)":
            per_call_us(lambda: torch.nn.functional.silu(xg)),
        "zmlx.rmsnorm (C binding)": per_call_us(lambda: zmlx.rmsnorm(a, None, 1e-6)),
        "zmlx.torch.rms_norm (torch op)": per_call_us(lambda: zt.rms_norm(x, None, 1e-6)),
        "floor: no-op torch.library op (kernel only)": per_call_us(lambda: plain(x)),
        "floor: no-op torch.library op (+ autograd)": per_call_us(lambda: autograd(x)),
        # the parts of zmlx.torch's per-call path (python/zmlx/torch.py)
        "part: torch tensor -> zmlx Array (_in)": per_call_us(lambda: zt._in(x)),
        "part: zmlx Array -> torch tensor (_out)": per_call_us(lambda: zt._out(a, x)),
        "part: raw current stream": per_call_us(lambda: zt._raw_stream(0)),
        "part: _core.on_stream around a no-op": per_call_us(
            lambda: zt._core.on_stream(zt._raw_stream(0), 0, _noop)),
    }
    return rows


def compile_check():
    def block(x, w):
        h = zt.rms_norm(x, w, 1e-6)
        return zt.swiglu(h, h * 2)

    x = torch.randn(64, 1024, device="cuda")
    w = torch.randn(1024, device="cuda")
    explain = torch._dynamo.explain(block)(x, w)
    out = torch.compile(block, fullgraph=True)(x, w)
    err = (out - block(x, w)).abs().max().item()
    return {"graph_breaks": explain.graph_break_count, "max_abs_diff_vs_eager": err}


def build(kind, dtype):
    import transformers
    common = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                  num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048)
    torch.manual_seed(0)
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        cfg = transformers.Qwen3MoeConfig(**common, head_dim=64, num_experts=16, num_experts_per_tok=4,
                                          moe_intermediate_size=512, decoder_sparse_step=2)
        model = transformers.Qwen3MoeForCausalLM(cfg)
    return model.to(device="cuda", dtype=dtype).eval()


def generate(model, prompt, n):
    with torch.no_grad():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        torch.cuda.synchronize()
        return out[0, prompt.shape[1]:].tolist(), n / (time.perf_counter() - t0)


def tokens_per_s(model, prompt, n=64, runs=3):
    """The best of `runs` timed generations after a whole untimed one (the
    first call of each kernel compiles or loads it)."""
    generate(model, prompt, n)
    return max(generate(model, prompt, n)[1] for _ in range(runs))


def patched_vs_unpatched(kind):
    prompt = torch.randint(0, 32000, (1, 16), generator=torch.Generator().manual_seed(1)).cuda()
    row = {"model": kind}
    model = build(kind, torch.float32)
    want, _ = generate(model, prompt, 64)
    report = zt.patch(model)
    got, _ = generate(model, prompt, 64)
    same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(want))
    row.update(report=str(report), f32_identical_tokens=same, f32_all_identical=got == want)
    del model
    model = build(kind, torch.bfloat16)
    row["bf16_tokens_per_s_unpatched"] = tokens_per_s(model, prompt)
    zt.patch(model, exclude=["attention"])
    row["bf16_tokens_per_s_patched_but_attention"] = tokens_per_s(model, prompt)
    zt.unpatch(model)
    zt.patch(model)
    row["bf16_tokens_per_s_patched"] = tokens_per_s(model, prompt)
    row["attention_fallbacks"] = zt.attention_fallbacks()
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    result = {"card": torch.cuda.get_device_name(), "torch": torch.__version__}
    result["overhead_us"] = overhead()
    print(f"card: {result['card']}, torch {result['torch']}")
    print(f"{'per-call host cost (1-element tensor)':44s} {'us':>8s}")
    for k, v in result["overhead_us"].items():
        print(f"{k:44s} {v:8.2f}")
    result["compile"] = compile_check()
    print("torch.compile (inductor):", result["compile"])
    result["patch"] = []
    for kind in ("llama", "qwen3_moe"):
        try:
            row = patched_vs_unpatched(kind)
        except Exception as e:  # say what failed, keep the other rows
            row = {"model": kind, "error": f"{type(e).__name__}: {e}"}
        result["patch"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "report"}))
        print(row.get("report", ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
