"""zmlx.torch against PyTorch's own ops: values and gradients of every op,
torch.library's opcheck (schema, fake kernel, autograd registration),
torch.compile with fullgraph=True (a graph break fails), a small model
trained step for step against pure PyTorch, and patch(model) on randomly
initialised Hugging Face models (when transformers is installed).

Runs on CUDA tensors when torch sees a GPU (zero copy, PyTorch's stream),
else on CPU tensors (copied to zmlx's default device)."""
import os

import sys

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import zmlx  # noqa: E402
import zmlx.torch as zt  # noqa: E402

SEED = int(os.environ.get("ZMLX_TEST_SEED", torch.seed() % (1 << 31)))
print(f"zmlx.torch tests: ZMLX_TEST_SEED={SEED}")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# |got - want| <= atol + rtol |want|: a few units of each dtype's rounding.
TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (4e-3, 4e-3), torch.bfloat16: (3e-2, 3e-2)}


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(SEED)


def rand(gen, *shape, dtype=torch.float32, scale=1.0, grad=False):
    t = (torch.randn(*shape, generator=gen) * scale).to(device=DEVICE, dtype=dtype)
    return t.requires_grad_(grad)


def close(got, want, dtype=torch.float32, scale=1.0):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol * scale)


def rms_ref(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)


UNARY = {
    "softmax": lambda x: torch.softmax(x.float(), -1), "log_softmax": lambda x: torch.log_softmax(x.float(), -1),
    "silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu, "sigmoid": torch.sigmoid, "softplus": F.softplus, "mish": F.mish,
}


@pytest.mark.parametrize("name", sorted(UNARY))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unary_ops_and_grads(gen, name, dtype):
    x = rand(gen, 5, 33, dtype=dtype, scale=2.0, grad=True)
    xr = x.detach().float().requires_grad_(True)
    y, want = getattr(zt, name)(x), UNARY[name](xr)
    assert y.dtype == dtype and y.device == x.device
    close(y, want, dtype, scale=2.0)
    g = rand(gen, 5, 33)
    (gx,), (gr,) = torch.autograd.grad(y, (x,), g.to(dtype)), torch.autograd.grad(want, (xr,), g)
    close(gx, gr, dtype, scale=4.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_norms_and_glu_and_grads(gen, dtype):
    x = rand(gen, 3, 7, 96, dtype=dtype, grad=True)
    w = rand(gen, 96, dtype=dtype, grad=True)
    b = rand(gen, 96, dtype=dtype, grad=True)
    for got, ref in [
        (lambda: zt.rms_norm(x, w, 1e-6), lambda xr, wr, br: rms_ref(xr, wr, 1e-6)),
        (lambda: zt.layer_norm(x, w, b, 1e-5), lambda xr, wr, br: F.layer_norm(xr, (96,), wr, br, 1e-5)),
        (lambda: zt.swiglu(x, w.expand_as(x)), lambda xr, wr, br: F.silu(xr) * wr),
        (lambda: zt.geglu(x, w.expand_as(x), True),
         lambda xr, wr, br: F.gelu(xr, approximate="tanh") * wr),
    ]:
        xr, wr, br = (t.detach().float().requires_grad_(True) for t in (x, w, b))
        y, want = got(), ref(xr, wr, br)
        close(y, want.to(dtype), dtype, scale=4.0)
        g = rand(gen, 3, 7, 96)
        grads = torch.autograd.grad(y, (x, w), g.to(dtype), allow_unused=True)
        wants = torch.autograd.grad(want, (xr, wr), g, allow_unused=True)
        for a, r in zip(grads, wants):
            close(a, r, dtype, scale=30.0)  # sums of 7 x 3 rows for the weight


def moe_ref(x, wt, ix, w1, w3, w2):
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ix.shape[1]):
            e = int(ix[t, j])
            h = F.silu(w1[e] @ x[t]) * (w3[e] @ x[t])
            out[t] = out[t] + wt[t, j] * (w2[e] @ h)
    return out


def test_moe_experts_forward_and_grads(gen):
    T, H, I, E, K = 7, 32, 24, 5, 2
    x = rand(gen, T, H, grad=True)
    wt = torch.softmax(rand(gen, T, K), -1).requires_grad_(True)
    ix = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)]).to(DEVICE)
    gate_up = rand(gen, E, 2 * I, H, scale=0.3, grad=True)  # a fused projection, sliced
    w2 = rand(gen, E, H, I, scale=0.3, grad=True)
    args = (x, wt, ix, gate_up[:, :I], gate_up[:, I:], w2)
    out = zt.moe_experts(*args)
    refs = [t.detach().clone().requires_grad_(True) for t in (x, wt, gate_up, w2)]
    want = moe_ref(refs[0], refs[1], ix, refs[2][:, :I], refs[2][:, I:], refs[3])
    close(out, want, scale=4.0)
    g = rand(gen, T, H)
    got_g = torch.autograd.grad(out, (x, wt, gate_up, w2), g)
    want_g = torch.autograd.grad(want, refs, g)
    for a, r in zip(got_g, want_g):
        close(a, r, scale=10.0)


def test_cross_entropy_matches_torch(gen):
    logits = rand(gen, 37, 500, scale=3.0, grad=True)
    targets = torch.randint(0, 500, (37,), generator=gen).to(DEVICE)
    targets[5] = -100
    for red in ("mean", "sum"):
        lr = logits.detach().clone().requires_grad_(True)
        loss = zt.cross_entropy(logits, targets, reduction=red)
        want = F.cross_entropy(lr, targets, ignore_index=-100, reduction=red)
        close(loss, want, scale=10.0)
        (g,), (gr,) = torch.autograd.grad(loss, (logits,)), torch.autograd.grad(want, (lr,))
        close(g, gr)


def sdpa_ref(q, k, v, mask=None, causal=False, scale=None):
    """F.scaled_dot_product_attention in f32 with k / v repeated for GQA and
    the causal mask bottom-right aligned (key j visible to query i when
    j <= i + Sk - Sq), as zmlx's is."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.float().repeat_interleave(rep, 1), v.float().repeat_interleave(rep, 1)
    sq, sk = q.shape[2], k.shape[2]
    if causal:
        mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
    return F.scaled_dot_product_attention(q.float(), k, v, attn_mask=mask, scale=scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_matches_sdpa_with_grads(gen, dtype):
    B, Hq, Hkv, Sq, Sk, D = 2, 4, 2, 13, 21, 32
    q = rand(gen, B, Hq, Sq, D, dtype=dtype, grad=True)
    k = rand(gen, B, Hkv, Sk, D, dtype=dtype, grad=True)
    v = rand(gen, B, Hkv, Sk, D, dtype=dtype, grad=True)
    keep = torch.rand(B, 1, Sq, Sk, generator=gen) > 0.3
    keep[..., 0] = True  # no row fully masked (SDPA gives NaN there, zmlx 0)
    keep = keep.to(DEVICE)
    additive = torch.where(keep, 0.0, float("-inf")).to(DEVICE) + rand(gen, 1, Hq, Sq, Sk, scale=0.5)
    for kw in [dict(causal=True), dict(mask=keep), dict(mask=additive.to(dtype), scale=0.3)]:
        refs = [t.detach().float().requires_grad_(True) for t in (q, k, v)]
        out = zt.attention(q, k, v, **kw)
        ref_mask = kw.get("mask")
        want = sdpa_ref(*refs, mask=None if ref_mask is None else ref_mask.float()
                        if ref_mask.dtype != torch.bool else ref_mask,
                        causal=kw.get("causal", False), scale=kw.get("scale"))
        assert out.shape == q.shape and out.dtype == dtype
        close(out, want, dtype, scale=2.0)
        g = rand(gen, B, Hq, Sq, D)
        got_g = torch.autograd.grad(out, (q, k, v), g.to(dtype))
        want_g = torch.autograd.grad(want, refs, g)
        for a, r in zip(got_g, want_g):
            close(a, r, dtype, scale=8.0)
    # bshd layout: the same numbers transposed
    out = zt.attention(q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(),
                       v.transpose(1, 2).contiguous(), causal=True, layout="bshd")
    close(out.transpose(1, 2), sdpa_ref(q, k, v, causal=True), dtype, scale=2.0)


def rope_ref(x, positions, base=10000.0, interleaved=False):
    """x [B, S, H, D] rotated by angle positions[b, s] * base^(-2i/D)."""
    D = x.shape[-1]
    inv = base ** (-torch.arange(0, D, 2, dtype=torch.float64, device=x.device) / D)
    ang = positions.double()[:, :, None, None] * inv  # [B, S, 1, D/2]
    cos, sin = ang.cos(), ang.sin()
    xd = x.double()
    if interleaved:
        a, b = xd[..., 0::2], xd[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)
    a, b = xd[..., :D // 2], xd[..., D // 2:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)


def test_rope_matches_reference_with_grads(gen):
    B, S, H, D = 2, 7, 3, 16
    x = rand(gen, B, S, H, D, grad=True)
    offsets = torch.tensor([0, 5], device=DEVICE)
    positions = offsets[:, None] + torch.arange(S, device=DEVICE)[None]
    for interleaved in (False, True):
        xr = x.detach().double().requires_grad_(True)
        mode = "interleaved" if interleaved else "half_split"
        out = zt.rope(x, base=500.0, offsets=offsets, mode=mode)
        want = rope_ref(xr, positions, 500.0, interleaved)
        close(out, want.float())
        g = rand(gen, B, S, H, D)
        (gx,), (gr,) = torch.autograd.grad(out, (x,), g), torch.autograd.grad(want, (xr,), g.double())
        close(gx, gr.float())
    # cos / sin tables [positions, D/2] and the bhsd layout
    inv = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.arange(32, dtype=torch.float64)[:, None] * inv
    out = zt.rope(x.transpose(1, 2), offsets=offsets, layout="bhsd", cos=ang.cos().to(DEVICE),
                  sin=ang.sin().to(DEVICE))
    close(out.transpose(1, 2), rope_ref(x.detach(), positions).float())
    with pytest.raises(ValueError):
        zt.rope(x, cos=ang.cos().to(DEVICE))
    # per-token positions (HF position_ids: a left-padded row, a packed row
    # restarting at 0), computed angles and tables, with gradients
    positions = torch.tensor([[1, 1, 0, 1, 2, 3, 4], [0, 1, 2, 0, 1, 2, 3]], device=DEVICE)
    for tables in (False, True):
        xr = x.detach().double().requires_grad_(True)
        kw = dict(cos=ang.cos().to(DEVICE), sin=ang.sin().to(DEVICE)) if tables else {}
        out = zt.rope(x, positions=positions, **kw)
        want = rope_ref(xr, positions)
        close(out, want.float())
        g = rand(gen, B, S, H, D)
        (gx,), (gr,) = torch.autograd.grad(out, (x,), g), torch.autograd.grad(want, (xr,), g.double())
        close(gx, gr.float())
    with pytest.raises(RuntimeError, match="not both"):
        zt.rope(x, positions=positions, offsets=offsets)


def _grads_match(got_out, want_out, inputs, refs, gen, dtype=torch.float32, scale=4.0):
    """Values, then gradients of sum(out * g) for one random g, against the
    f32 / f64 reference computed on refs."""
    close(got_out, want_out.to(got_out.dtype), dtype, scale=scale)
    g = rand(gen, *got_out.shape)
    got_g = torch.autograd.grad(got_out, inputs, g.to(got_out.dtype))
    want_g = torch.autograd.grad(want_out, refs, g.to(want_out.dtype))
    for a, r in zip(got_g, want_g):
        close(a, r.to(a.dtype), dtype, scale=scale)


def _refs(*ts):
    return [t.detach().double().requires_grad_(True) for t in ts]


def test_more_unary_and_glu_ops_with_grads(gen):
    x = rand(gen, 6, 40, grad=True)
    pos = (torch.rand(6, 40, generator=gen) + 0.5).to(DEVICE).requires_grad_(True)
    b = rand(gen, 40, grad=True)
    cases = [
        (lambda: zt.logsumexp(x), lambda xr: torch.logsumexp(xr, -1), [x]),
        (lambda: zt.exp(x), torch.exp, [x]),
        (lambda: zt.log(pos), torch.log, [pos]),
        (lambda: zt.tanh(x), torch.tanh, [x]),
        (lambda: zt.elu(x, 0.7), lambda xr: F.elu(xr, 0.7), [x]),
        (lambda: zt.swiglu_split(x), lambda xr: F.silu(xr[:, :20]) * xr[:, 20:], [x]),
        (lambda: zt.geglu_split(x, True),
         lambda xr: F.gelu(xr[:, :20], approximate="tanh") * xr[:, 20:], [x]),
        (lambda: zt.bias_silu(x, b), lambda xr, br: F.silu(xr + br), [x, b]),
        (lambda: zt.bias_swiglu(x, b),
         lambda xr, br: F.silu((xr + br)[:, :20]) * (xr + br)[:, 20:], [x, b]),
        (lambda: zt.bias_gelu(x, b), lambda xr, br: F.gelu(xr + br), [x, b]),
    ]
    for got, ref, ins in cases:
        refs = _refs(*ins)
        _grads_match(got(), ref(*refs), ins, refs, gen)


def test_add_norms_two_outputs_with_grads(gen):
    x, r = rand(gen, 5, 64, grad=True), rand(gen, 5, 64, grad=True)
    w, b = rand(gen, 64, grad=True), rand(gen, 64, grad=True)
    refs = _refs(x, r, w, b)
    normed, total = zt.add_rmsnorm(x, r, w, 1e-6)
    s = refs[0] + refs[1]
    want_n = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-6) * refs[2]
    close(normed, want_n.float())
    close(total, s.float())
    # both outputs carry gradient: the rule gets both cotangents
    g1, g2 = rand(gen, 5, 64), rand(gen, 5, 64)
    got = torch.autograd.grad((normed * g1).sum() + (total * g2).sum(), (x, r, w))
    want = torch.autograd.grad((want_n * g1.double()).sum() + (s * g2.double()).sum(), refs[:3])
    for a, e in zip(got, want):
        close(a, e.float(), scale=4.0)
    # one output used: the other's cotangent is absent
    normed, total = zt.add_layernorm(x, r, w, b, 1e-5)
    want_n = F.layer_norm(refs[0] + refs[1], (64,), refs[2], refs[3], 1e-5)
    _grads_match(normed, want_n, [x, r, w, b], refs, gen)


def test_masked_softmax_reductions_and_selection(gen):
    x = rand(gen, 2, 3, 9, 11, grad=True)
    keep = (torch.rand(9, 11, generator=gen) > 0.3).to(DEVICE)
    keep[:, 0] = True
    (xr,) = _refs(x)
    want = torch.softmax((xr * 0.5).masked_fill(~keep, float("-inf")), -1)
    _grads_match(zt.softmax_masked(x, keep, 0.5), want, [x], [xr], gen)
    want = torch.softmax((xr).masked_fill(~torch.ones(9, 11, dtype=torch.bool, device=DEVICE)
                                          .tril(2), float("-inf")), -1)
    _grads_match(zt.softmax_masked(x, None, 1.0, True), want, [x], [xr], gen)
    for kind, ref in [("sum", lambda t: t.sum(-1)), ("mean", lambda t: t.mean(-1)),
                      ("max", lambda t: t.amax(-1)), ("var", lambda t: t.var(-1, correction=1))]:
        (xr,) = _refs(x)
        got = zt.reduce_last(x, kind, ddof=1 if kind == "var" else 0)
        _grads_match(got, ref(xr), [x], [xr], gen)
    assert zt.reduce_last(x, "sum", keepdims=True).shape == (2, 3, 9, 1)
    am = zt.argmax(x)
    assert am.dtype == torch.int32 and torch.equal(am.long(), x.argmax(-1))
    assert torch.equal(zt.argmin(x, keepdims=True).long(), x.argmin(-1, keepdim=True))
    values, indices = zt.topk(x, 4)
    want_v, want_i = torch.topk(x.detach(), 4, -1)
    assert indices.dtype == torch.int32 and torch.equal(indices.long(), want_i)
    (xr,) = _refs(x)
    _grads_match(values, torch.topk(xr, 4, -1).values, [x], [xr], gen)


def test_dropout_and_int8_quantization(gen):
    x = rand(gen, 64, 128, grad=True)
    y = zt.dropout(x, 0.25, 7)
    kept = y != 0
    assert 0.6 < kept.float().mean().item() < 0.9  # about 1 - p of 8192 elements
    close(y[kept], x.detach()[kept] / 0.75)
    assert torch.equal(zt.dropout(x, 0.25, 7), y)  # a seed gives one mask
    assert not torch.equal(zt.dropout(x, 0.25, 8) != 0, kept)
    (gx,) = torch.autograd.grad(y, (x,), torch.ones_like(y))
    close(gx, kept.float() / 0.75)  # the backward uses the forward's mask
    q, scales = zt.quantize_int8(x.detach())
    assert q.dtype == torch.int8 and scales.shape == (64,)
    close(scales, x.detach().abs().amax(-1) / 127)
    back = zt.dequantize_int8(q, scales)
    assert (back - x.detach()).abs().max().item() <= scales.max().item() * 0.5 + 1e-6
    close(zt.dequantize_int8(q, scales, "f32", True), F.silu(back))


def test_elementwise_with_gradients_and_broadcast(gen):
    f = zt.elementwise("x * sigmoid(x) * y + (x > 0 ? x : 0.5 * x)", ["x", "y"])
    x, y = rand(gen, 4, 9, grad=True), rand(gen, 9, grad=True)
    xr, yr = (t.detach().clone().requires_grad_(True) for t in (x, y))
    out = f(x, y)
    want = xr * torch.sigmoid(xr) * yr + torch.where(xr > 0, xr, 0.5 * xr)
    close(out, want)
    g = rand(gen, 4, 9)
    for a, r in zip(torch.autograd.grad(out, (x, y), g), torch.autograd.grad(want, (xr, yr), g)):
        close(a, r, scale=4.0)


def test_opcheck_schema_fake_and_autograd(gen):
    x, w = rand(gen, 4, 64, grad=True), rand(gen, 64, grad=True)
    t = torch.randint(0, 64, (4,), generator=gen).to(DEVICE)
    cases = [
        (torch.ops.zmlx.rms_norm.default, (x, w, 1e-6)),
        (torch.ops.zmlx.layer_norm.default, (x, w, None, 1e-5)),
        (torch.ops.zmlx.swiglu.default, (x, x.detach().clone().requires_grad_(True))),
        (torch.ops.zmlx.softmax.default, (x,)),
        (torch.ops.zmlx.cross_entropy.default, (x, t, -100, 0.0, "mean")),
        (torch.ops.zmlx.elementwise.default, ("x * tanh(x)", ["x"], [x])),
        (torch.ops.zmlx.attention.default, (rand(gen, 1, 2, 5, 16, grad=True),
                                            rand(gen, 1, 1, 7, 16, grad=True),
                                            rand(gen, 1, 1, 7, 16, grad=True), None, True, 0.0, "bhsd")),
        (torch.ops.zmlx.rope.default, (rand(gen, 1, 5, 2, 8, grad=True), None, None, None,
                                       None, "half_split", "bshd", 0, 10000.0, 1.0)),
        (torch.ops.zmlx.rope.default, (rand(gen, 2, 4, 2, 8, grad=True), None, None, None,
                                       torch.tensor([[3, 4, 5, 6], [1, 2, 0, 1]], dtype=torch.int32,
                                                    device=DEVICE),
                                       "half_split", "bshd", 0, 10000.0, 1.0)),
        (torch.ops.zmlx.add_rmsnorm.default, (x, x.detach().clone().requires_grad_(True), w, 1e-6)),
        (torch.ops.zmlx.topk.default, (x, 3)),
        (torch.ops.zmlx.reduce_last.default, (x, "std", 1, True)),
        (torch.ops.zmlx.swiglu_split.default, (x,)),
        (torch.ops.zmlx.argmax.default, (x.detach(), False)),
        (torch.ops.zmlx.quantize_int8.default, (x.detach(), "f32")),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_compile_has_no_graph_break(gen):
    def block(x, w):
        h = zt.rms_norm(x, w, 1e-6)
        return zt.swiglu(h, h * 2).sum()

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    x, w = rand(gen, 6, 32, grad=True), rand(gen, 32, grad=True)
    out = compiled(x, w)
    close(out, block(x, w), scale=10.0)
    out.backward()
    assert x.grad is not None and w.grad is not None
    explain = torch._dynamo.explain(block)(x, w)
    assert explain.graph_break_count == 0, explain.break_reasons


class TinyBlock(torch.nn.Module):
    """RMSNorm -> SwiGLU MLP -> logits, with either torch's or zmlx's ops."""

    def __init__(self, use_zmlx, d=32, hidden=64, vocab=50):
        super().__init__()
        self.use_zmlx = use_zmlx
        self.emb = torch.nn.Embedding(vocab, d)
        self.norm = torch.nn.Parameter(torch.ones(d))
        self.gate = torch.nn.Linear(d, hidden, bias=False)
        self.up = torch.nn.Linear(d, hidden, bias=False)
        self.down = torch.nn.Linear(hidden, d, bias=False)
        self.head = torch.nn.Linear(d, vocab, bias=False)

    def forward(self, tokens, targets):
        x = self.emb(tokens)
        if self.use_zmlx:
            h = zt.rms_norm(x, self.norm, 1e-6)
            x = x + self.down(zt.swiglu(self.gate(h), self.up(h)))
            return zt.cross_entropy(self.head(x).flatten(0, 1), targets.flatten())
        h = rms_ref(x, self.norm, 1e-6)
        x = x + self.down(F.silu(self.gate(h)) * self.up(h))
        return F.cross_entropy(self.head(x).flatten(0, 1), targets.flatten())


def test_small_model_trains_like_pure_torch(gen):
    torch.manual_seed(SEED)
    ours = TinyBlock(True).to(DEVICE)
    ref = TinyBlock(False).to(DEVICE)
    ref.load_state_dict(ours.state_dict())
    opt_a = torch.optim.AdamW(ours.parameters(), lr=1e-2)
    opt_b = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    losses = []
    tokens = torch.randint(0, 50, (4, 16), generator=gen).to(DEVICE)
    targets = torch.roll(tokens, -1, dims=1)  # learnable: the next token of a fixed batch
    for step in range(8):
        for model, opt in ((ours, opt_a), (ref, opt_b)):
            opt.zero_grad()
            loss = model(tokens, targets)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        a, b = losses[-2], losses[-1]
        assert abs(a - b) <= 1e-4 * (1 + abs(b)), (step, a, b)
    assert losses[-1] < losses[0]


@pytest.mark.skipif(DEVICE != "cuda", reason="zero copy and streams are for CUDA tensors")
def test_cuda_zero_copy_and_torch_side_stream(gen):
    x = torch.randn(1000, device="cuda")
    a = zmlx.from_dlpack(x)
    assert torch.from_dlpack(a).data_ptr() == x.data_ptr()
    out = zt.silu(x)
    assert out.device == x.device
    # zmlx runs on the side stream PyTorch makes current: the result is
    # ordered after the producer there with no sync in between
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        big = torch.randn(2048, 4096, device="cuda")
        got = zt.softmax(big)
        want = torch.softmax(big, -1)
        ok = torch.allclose(got, want, rtol=2e-5, atol=2e-5)
    side.synchronize()
    assert ok
    assert zmlx.current_stream("cuda:0") is None  # restored after the op


def test_bad_input_raises_with_zmlx_message(gen):
    with pytest.raises(zmlx.Error) as e:
        zt.elementwise("x +* y", ["x", "y"])
    assert "^" in str(e.value)
    f = zt.elementwise("x * y", ["x", "y"])
    with pytest.raises(TypeError):
        f(rand(gen, 3))
    with pytest.raises(Exception) as e:
        zt.swiglu(rand(gen, 3, 4), rand(gen, 3, 5))
    assert "[3, 4]" in str(e.value) and "[3, 5]" in str(e.value)
    with pytest.raises(ValueError):
        zt.cross_entropy(rand(gen, 3, 4), torch.zeros(3, dtype=torch.long, device=DEVICE), reduction="none")


# ------------------------------------------------------------ patch(model)

def _tiny_hf(kind):
    transformers = pytest.importorskip("transformers")
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if kind == "llama":
        cfg = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen3MoeConfig(**common, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                          moe_intermediate_size=32, decoder_sparse_step=1)
        model = transformers.Qwen3MoeForCausalLM(cfg)
    return model.to(DEVICE).eval()


@pytest.mark.parametrize("kind", ["llama", "qwen3_moe"])
def test_patch_hf_model_matches_unpatched(kind, monkeypatch):
    torch.manual_seed(SEED)
    model = _tiny_hf(kind)
    ids = torch.randint(0, 128, (2, 24)).to(DEVICE)
    padding = torch.ones(2, 24, dtype=torch.long, device=DEVICE)
    padding[1, :5] = 0  # left padding: a bool mask reaches the attention function
    with torch.no_grad():
        want = model(ids, labels=ids)
        want_padded = model(ids, attention_mask=padding).logits
        want_tokens = model.generate(ids[:1, :8], max_new_tokens=12, do_sample=False)
    model.train()  # (no dropout in these configs) the gradients of the unpatched model
    model(ids, labels=ids).loss.backward()
    want_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.eval()
    calls, rope_calls = [], []
    real_attention, real_rope = zt.attention, zt.rope
    monkeypatch.setattr(zt, "attention", lambda *a, **k: calls.append(1) or real_attention(*a, **k))
    monkeypatch.setattr(zt, "rope", lambda *a, **k: rope_calls.append(1) or real_rope(*a, **k))
    unpatched_twin = _tiny_hf(kind)  # same family, not patched: must keep transformers' rope
    report = zt.patch(model)
    text = str(report)
    assert report.patched, text
    assert any(cls.endswith("RMSNorm") for _, cls, _ in report.patched), text
    if kind == "llama":
        assert any("swiglu" in what for _, _, what in report.patched), text
    else:  # every layer is sparse: the fused experts run on zmlx
        assert any("moe_experts" in what for _, _, what in report.patched), text
    assert any(name == "loss_function" for name, _, _ in report.patched), text
    assert any(cls.endswith("RotaryEmbedding") and "rope" in what
               for _, cls, what in report.patched), text
    assert any("zmlx.torch.attention" in what for _, _, what in report.patched), text
    with torch.no_grad():
        got = model(ids, labels=ids)
        got_padded = model(ids, attention_mask=padding).logits
        got_tokens = model.generate(ids[:1, :8], max_new_tokens=12, do_sample=False)
    assert len(calls) >= 2 * 2 + 12 and not zt.attention_fallbacks(), (len(calls), zt.attention_fallbacks())
    # q and k of each layer and call (2 layers, 2 full forwards, 12 decode steps)
    assert len(rope_calls) >= 2 * 2 * (2 + 12) and not zt.rope_fallbacks(), zt.rope_fallbacks()
    seen = len(rope_calls)
    with torch.no_grad():
        unpatched_twin(ids)
    assert len(rope_calls) == seen, "an unpatched model of the same family went through zmlx"
    close(got.logits, want.logits, scale=10.0)
    close(got.loss, want.loss, scale=10.0)
    close(got_padded[1, 5:], want_padded[1, 5:], scale=10.0)  # padded positions differ by design
    assert torch.equal(got_tokens, want_tokens)
    # a patched model trains: gradients reach every parameter
    model.train()
    model.zero_grad()
    model(ids, labels=ids).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing or kind == "qwen3_moe", missing  # unrouted experts get none
    for n, p in model.named_parameters():  # through rope, attention, norms, MLP / experts, loss
        if n in want_grads:
            close(p.grad, want_grads[n], scale=10.0)
    restored = zt.unpatch(model)
    assert restored == len(report.patched)
    assert model.config._attn_implementation == "sdpa"
    modeling = sys.modules[type(model).__module__]
    assert not hasattr(modeling.apply_rotary_pos_emb, "_zmlx_original"), "router left installed"
    assert "patched" in str(zt.patch(model, include=["nothing"]))
    zt.unpatch(model)


def test_patch_report_says_why_nothing_was_patched():
    report = zt.patch(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    assert not report.patched
    assert "nothing was patched" in str(report)


def test_eager_fast_path_only_where_nothing_is_lost(gen, monkeypatch):
    """zt ops skip the dispatcher in eager when no gradient is recorded; a
    gradient, a torch_dispatch mode or torch.compile goes through the op."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    taken = []
    real = zt._eager_route
    monkeypatch.setattr(zt, "_eager_route", lambda *a: taken.append(real(*a)) or taken[-1])
    x, xg = rand(gen, 5, 7), rand(gen, 5, 7, grad=True)
    close(zt.silu(x), F.silu(x))
    with torch.no_grad():
        close(zt.silu(xg), F.silu(xg.detach()))
    y = zt.silu(xg)
    assert y.requires_grad and y.grad_fn is not None
    assert taken == [zt._KERNEL, zt._KERNEL, zt._FUNCTION], taken
    g = rand(gen, 5, 7)
    (gx,) = torch.autograd.grad(y, (xg,), g)
    xr = xg.detach().double().requires_grad_(True)
    (gr,) = torch.autograd.grad(F.silu(xr), (xr,), g.double())
    close(gx, gr.float())
    with Log() as log:
        close(zt.silu(x), F.silu(x))
    assert any("zmlx.silu" in op for op in log.ops), log.ops
    assert taken[-1] == zt._OP
