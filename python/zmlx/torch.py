"""zmlx's kernels as PyTorch operators, and ``patch(model)`` for Hugging Face LLMs.

Each op is registered with ``torch.library`` (namespace ``zmlx``): a schema,
one implementation for CPU and CUDA tensors, a fake (meta) kernel so that
``torch.compile`` traces through it without a graph break, and an autograd
rule whose backward is itself a ``zmlx`` op running zmlx's VJP kernels.

CUDA tensors are passed zero copy (DLPack) and zmlx runs on PyTorch's current
stream of the tensor's device (``zmlx.set_stream``), so no host sync happens
in either direction. CPU tensors are copied to zmlx's default device and the
results copied back (on a machine without a GPU that device is OpenCL on the
CPU: correct, not fast).

Backward recomputes the forward inside ``zmlx.vjp`` (the fused kernels are
cheap next to saving their intermediates).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch

import zmlx
from . import _core

__all__ = [
    "rms_norm", "layer_norm", "softmax", "log_softmax", "silu", "gelu", "gelu_tanh", "relu",
    "sigmoid", "softplus", "mish", "swiglu", "geglu", "moe_experts", "cross_entropy", "attention",
    "rope", "elementwise", "logsumexp", "exp", "log", "tanh", "swiglu_split", "geglu_split",
    "bias_silu", "bias_swiglu", "bias_gelu", "elu", "dropout", "add_rmsnorm", "add_layernorm",
    "softmax_masked", "reduce_last", "argmax", "argmin", "topk", "quantize_int8", "dequantize_int8",
    "patch",
    "unpatch", "PatchReport", "attention_fallbacks", "rope_fallbacks",
]

_ZMLX_DTYPE = {
    torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
    torch.int32: "i32", torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8", torch.bool: "bool",
}
_TORCH_DTYPE = {v: k for k, v in _ZMLX_DTYPE.items()}


# ------------------------------------------------------------ tensors, streams
#
# This is every op's per-call path, so it avoids PyTorch's Python layers: the
# raw current stream (no torch.cuda.Stream object), DLPack capsules made and
# taken in C (torch's Tensor.__dlpack__ / torch.from_dlpack are Python that
# query and compare streams again), and the stream switch done by one C call
# around the op. zmlx runs on the tensor's current stream, so neither hand-off
# needs a wait.

_to_capsule = torch.utils.dlpack.to_dlpack
_from_capsule = getattr(torch._C, "_from_dlpack", torch.utils.dlpack.from_dlpack)
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream",
                      lambda index: torch.cuda.current_stream(index).cuda_stream)


def _on_stream(like: torch.Tensor, fn: Callable, *args):
    """fn(*args) with zmlx on PyTorch's current stream of like's device
    (CUDA), or as it is (CPU tensors: zmlx's default device)."""
    if like.is_cuda:
        index = like.get_device()
        return _core.on_stream(_raw_stream(index), index, fn, *args)
    return fn(*args)


def _in(t: Optional[torch.Tensor]):
    """A zmlx Array over t (zero copy on CUDA, a copy of a CPU tensor)."""
    if t is None:
        return None
    return _core.from_dlpack(_to_capsule(t.detach()))


def _out(a, like: torch.Tensor) -> torch.Tensor:
    """A torch tensor of zmlx Array a, on like's device."""
    if like.is_cuda:
        return _from_capsule(a.__dlpack__(stream=-1))
    return _from_capsule(a.__dlpack__(dl_device=(1, 0), copy=True))  # kDLCPU: a host copy


# ---------------------------------------------------------------- the op table

_lib = torch.library.Library("zmlx", "DEF")


def _weighted_total(ys, live):
    """sum_j sum(ys[j] * g_j) over the (index, cotangent array) pairs in
    live: its gradient is the vector-Jacobian product of a several-output
    function with cotangents g_j (the multiply and the sum pass them on
    exactly)."""
    total = None
    for j, g in live:
        term = zmlx.sum(zmlx.multiply(ys[j], g))
        total = term if total is None else zmlx.add(total, term)
    return total


def _define(name: str, schema: str, forward: Callable, n_tensors: int,
            differentiable: Sequence[int], fake: Optional[Callable] = None,
            outputs: Sequence[str] = ("float",)) -> Callable:
    """Register zmlx::name(schema) computing forward(*zmlx arrays, *scalars),
    and zmlx::name_backward; returns the Python entry point.

    The first n_tensors arguments are tensors (None allowed where the schema
    says Tensor?); the rest are passed to forward as they are. Gradients flow
    to the tensor arguments listed in `differentiable` (none: no autograd
    rule). `outputs` names each output "float" or "int" (int outputs carry
    no gradient); with several, forward returns a tuple. fake(*args) gives
    the output's (or outputs') shape and dtype, default like args[0]."""
    qual = f"zmlx::{name}"
    multi = len(outputs) > 1
    ret = "(" + ", ".join(["Tensor"] * len(outputs)) + ")" if multi else "Tensor"
    _lib.define(f"{name}({schema}) -> {ret}")

    def run(tensors, scalars):
        r = forward(*[_in(t) for t in tensors], *scalars)
        if multi:
            return tuple(_out(a, tensors[0]) for a in r)
        return _out(r, tensors[0])

    def impl(*args):
        return _on_stream(args[0], run, args[:n_tensors], args[n_tensors:])

    def fake_impl(*args):
        return fake(*args) if fake else torch.empty_like(args[0])

    for key in ("CPU", "CUDA"):
        _lib.impl(name, impl, key)
    torch.library.register_fake(qual, fake_impl, lib=_lib)
    eager_fn = None
    if differentiable:
        eager_fn = _define_backward(name, schema, forward, n_tensors, differentiable, outputs, impl)
    op = getattr(torch.ops.zmlx, name)
    grad_args = tuple(differentiable)

    def entry(*args):
        route = _eager_route(args[:n_tensors], grad_args)
        if route == _KERNEL:
            return impl(*args)
        if route == _FUNCTION:
            return eager_fn.apply(*args)
        return op(*args)

    entry.op = op
    entry.__name__ = name
    return entry


_OP, _KERNEL, _FUNCTION = 0, 1, 2


def _eager_route(tensors, differentiable) -> int:
    """How a call runs. In eager (not traced by torch.compile), on plain
    tensors, with no torch_function / torch_dispatch mode or functorch
    transform active, the dispatcher can be skipped with the same result:
    _KERNEL (the op's kernel) when no gradient is to be recorded, else
    _FUNCTION (an autograd.Function over the same kernels). Otherwise _OP:
    the registered op, which those systems see. Why: torch.library's Python
    autograd layer costs more than the launch, and runs even when nothing
    requires grad (H100: a no-op op 6.7 us with the autograd registration,
    1.3 without)."""
    if torch.compiler.is_compiling():
        return _OP
    for t in tensors:
        if t is not None and type(t) is not torch.Tensor:
            return _OP
    if _dispatch_modes() or _function_mode_on() or _functorch_on():
        return _OP
    if differentiable and torch.is_grad_enabled():
        for i in differentiable:
            t = tensors[i]
            if t is not None and t.requires_grad:
                return _FUNCTION
    return _KERNEL


_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_mode_on = torch._C._is_torch_function_mode_enabled
_functorch_on = getattr(torch._C._functorch, "_are_functorch_transforms_active", lambda: False)


def _define_backward(name: str, schema: str, forward: Callable, n_tensors: int,
                     differentiable: Sequence[int], outputs: Sequence[str],
                     impl: Callable) -> type:
    """zmlx::name_backward (zmlx's VJP kernels, recomputing the forward) and
    the autograd rule of zmlx::name that calls it; returns the eager
    autograd.Function running impl (the op's kernel) and the same backward
    without the dispatcher."""
    qual = f"zmlx::{name}"
    multi = len(outputs) > 1
    grad_arg = "Tensor?[] grads" if multi else "Tensor grad"
    bwd_args = ", ".join([grad_arg] + [a.strip() for a in schema.split(",")])
    _lib.define(f"{name}_backward({bwd_args}) -> Tensor[]")

    def backward_impl(grad, *args):
        tensors, scalars = list(args[:n_tensors]), args[n_tensors:]
        wanted = [i for i in differentiable if tensors[i] is not None]
        fixed = [_in(t) for t in tensors]

        def fn(*varying):
            arrays = list(fixed)
            for i, a in zip(wanted, varying):
                arrays[i] = a
            return forward(*arrays, *scalars)

        if not multi:
            def run():
                _, grads = zmlx.vjp(fn, [fixed[i] for i in wanted], _in(grad.contiguous()))
                return [_out(g, grad) for g in grads]
            return _on_stream(grad, run)
        given = [(j, g) for j, g in enumerate(grad)
                 if g is not None and outputs[j] == "float" and g.is_floating_point()]
        if not given:
            return [torch.zeros_like(tensors[i]) for i in wanted]
        like = given[0][1]

        def run_multi():
            live = [(j, _in(g.contiguous())) for j, g in given]
            one = zmlx.full([], 1.0, dtype=live[0][1].dtype, device=live[0][1].device)
            _, grads = zmlx.vjp(lambda *xs: _weighted_total(fn(*xs), live),
                                [fixed[i] for i in wanted], one)
            return [_out(g, like) for g in grads]
        return _on_stream(like, run_multi)

    def fake_backward(grad, *args):
        return [torch.empty_like(args[i]) for i in differentiable if args[i] is not None]

    for key in ("CPU", "CUDA"):
        _lib.impl(f"{name}_backward", backward_impl, key)
    torch.library.register_fake(f"{qual}_backward", fake_backward, lib=_lib)
    backward_op = getattr(torch.ops.zmlx, f"{name}_backward")

    def setup_context(ctx, inputs, output):
        tensors = inputs[:n_tensors]
        ctx.save_for_backward(*[t if t is not None else torch.empty(0) for t in tensors])
        ctx.present = [t is not None for t in tensors]
        ctx.scalars = inputs[n_tensors:]

    def placed(grads, present, n_scalars):
        out: List[Optional[torch.Tensor]] = [None] * (n_tensors + n_scalars)
        it = iter(grads)
        for i in differentiable:
            if present[i]:
                out[i] = next(it)
        return tuple(out)

    def backward(ctx, *grads):
        saved = [t if p else None for t, p in zip(ctx.saved_tensors, ctx.present)]
        grads = backward_op(list(grads) if multi else grads[0], *saved, *ctx.scalars)
        return placed(grads, ctx.present, len(ctx.scalars))

    torch.library.register_autograd(qual, backward, setup_context=setup_context, lib=_lib)
    int_outputs = [j for j, kind in enumerate(outputs) if kind == "int"]

    class Eager(torch.autograd.Function):
        # old-style (ctx in forward): several times cheaper a call than a
        # Function with setup_context or torch.library's autograd layer
        @staticmethod
        def forward(ctx, *args):
            ctx.set_materialize_grads(False)
            tensors = args[:n_tensors]
            ctx.save_for_backward(*tensors)
            ctx.scalars = args[n_tensors:]
            out = impl(*args)
            if int_outputs:
                ctx.mark_non_differentiable(*[out[j] for j in int_outputs])
            return out

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, *grads):
            saved = ctx.saved_tensors
            present = [t is not None for t in saved]
            if not multi and grads[0] is None:
                return (None,) * (n_tensors + len(ctx.scalars))
            grads = backward_impl(list(grads) if multi else grads[0], *saved, *ctx.scalars)
            return placed(grads, present, len(ctx.scalars))

    Eager.__name__ = f"zmlx_{name}"
    return Eager


def _unary(name: str, fn: Callable, doc: str, fake: Optional[Callable] = None) -> Callable:
    op = _define(name, "Tensor x", fn, 1, (0,), fake=fake)

    def call(x: torch.Tensor) -> torch.Tensor:
        return op(x)

    call.__name__ = name
    call.__doc__ = doc
    return call


# ------------------------------------------------------------------- the ops

_rms_norm = _define("rms_norm", "Tensor x, Tensor? weight, float eps",
                    lambda x, w, eps: zmlx.rmsnorm(x, w, eps), 2, (0, 1))
_layer_norm = _define("layer_norm", "Tensor x, Tensor? weight, Tensor? bias, float eps",
                      lambda x, w, b, eps: zmlx.layernorm(x, w, b, eps), 3, (0, 1, 2))
_swiglu = _define("swiglu", "Tensor gate, Tensor up", lambda g, u: zmlx.swiglu(g, u), 2, (0, 1))
_geglu = _define("geglu", "Tensor gate, Tensor up, bool approximate",
                 lambda g, u, approx: zmlx.geglu(g, u, approx), 2, (0, 1))
_moe_experts = _define(
    "moe_experts", "Tensor x, Tensor weights, Tensor indices, Tensor w1, Tensor w3, Tensor w2",
    lambda x, wt, ix, w1, w3, w2: zmlx.moe_experts(x, wt, ix, w1, w3, w2), 6, (0, 1, 3, 4, 5))
_cross_entropy = _define(
    "cross_entropy",
    "Tensor logits, Tensor targets, int ignore_index, float label_smoothing, str reduction",
    lambda lg, t, ii, ls, red: zmlx.cross_entropy(lg, t, ignore_index=ii, label_smoothing=ls,
                                                  reduction=red),
    2, (0,), fake=lambda lg, t, ii, ls, red: lg.new_empty((), dtype=torch.float32))

_attention = _define(
    "attention", "Tensor q, Tensor k, Tensor v, Tensor? mask, bool causal, float scale, str layout",
    lambda q, k, v, m, causal, scale, layout: zmlx.attention(q, k, v, m, causal, scale, layout),
    4, (0, 1, 2))
_rope = _define(
    "rope", "Tensor x, Tensor? cos, Tensor? sin, Tensor? offsets, Tensor? positions, str mode, "
    "str layout, int rotary_dims, float base, float scale",
    lambda x, c, s, o, p, mode, layout, rd, base, scale: zmlx.rope(
        x, mode=mode, layout=layout, rotary_dims=rd, base=base, scale=scale, offsets=o, cos=c,
        sin=s, positions=p),
    5, (0,))


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None,
             eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(mean(x^2, -1) + eps) * weight, statistics in f32; output in x's dtype."""
    return _rms_norm(x, weight, float(eps))


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last axis (statistics in f32)."""
    return _layer_norm(x, weight, bias, float(eps))


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up in one kernel."""
    return _swiglu(gate, up)


def geglu(gate: torch.Tensor, up: torch.Tensor, approximate: bool = False) -> torch.Tensor:
    """gelu(gate) * up in one kernel (tanh approximation if approximate)."""
    return _geglu(gate, up, bool(approximate))


def moe_experts(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, w1: torch.Tensor,
                w3: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """SwiGLU experts over routed tokens, combined per token:
    out[t] = sum_j weights[t, j] * w2[e] @ (silu(w1[e] @ x[t]) * (w3[e] @ x[t])),
    e = indices[t, j]. x [tokens, hidden]; weights / indices [tokens, k];
    w1, w3 [experts, inter, hidden]; w2 [experts, hidden, inter]. Each pair
    reads only its expert's rows; gradients to x, weights, w1, w3, w2.
    w1 and w3 may be the row halves of one fused gate_up [experts, 2 inter,
    hidden] (``gate_up[:, :inter]``, ``gate_up[:, inter:]``): read in place,
    no copy; other strided weights are copied dense per call."""
    return _moe_experts(x, weights, indices.to(torch.int32), w1, w3, w2)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                  label_smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """Softmax cross-entropy of [..., vocab] logits against class indices, an
    f32 scalar: the mean over rows not ignored, or the sum (like
    ``torch.nn.functional.cross_entropy``); the backward recomputes the
    fused forward + gradient kernel."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"zmlx.torch.cross_entropy: reduction is 'mean' or 'sum', not {reduction!r}")
    return _cross_entropy(logits, targets, int(ignore_index), float(label_smoothing), reduction)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None,
              causal: bool = False, scale: Optional[float] = None,
              layout: str = "bhsd") -> torch.Tensor:
    """Flash attention: softmax(q k^T * scale + mask) v without the score
    matrix, f32 statistics. q [B, Hq, Sq, D], k / v [B, Hkv, Sk, D] (layout
    "bshd": [B, S, H, D]), Hkv dividing Hq (GQA / MQA without repeating k, v),
    D <= 256, f32 / f16 / bf16. causal: key j visible to query i when
    j <= i + Sk - Sq (bottom-right, as a KV cache needs). mask: additive
    (float, -inf drops) or bool (True keeps), broadcast to [B, H, Sq, Sk].
    scale None: 1 / sqrt(D). Gradients to q, k and v (FlashAttention-2's
    recomputing backward)."""
    return _attention(q, k, v, mask, bool(causal), float(scale or 0.0), layout)


def rope(x: torch.Tensor, base: float = 10000.0, offsets: Optional[torch.Tensor] = None,
         rotary_dims: int = 0, scale: float = 1.0, mode: str = "half_split", layout: str = "bshd",
         cos: Optional[torch.Tensor] = None, sin: Optional[torch.Tensor] = None,
         positions: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Rotary position embedding of a 4-D x (layout "bshd" or "bhsd"): position
    = offsets[b] + s (offsets: int [B], None: 0), or positions[b, s] (int
    [B, S], Hugging Face's position_ids; not with offsets); angles position *
    scale * base^(-2i/R) computed in the kernel, or looked up in f32 cos / sin
    tables [positions, R/2]. mode "half_split" (Llama / NeoX) or
    "interleaved" (GPT-J). rotary_dims R (0: head_dim); dims past R pass
    through. The gradient is the inverse rotation."""
    if offsets is not None:
        offsets = offsets.to(torch.int32)
    if positions is not None:
        positions = positions.to(torch.int32).contiguous()
    if (cos is None) != (sin is None):
        raise ValueError("zmlx.torch.rope: give both cos and sin tables, or neither")
    if cos is not None:
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
    return _rope(x, cos, sin, offsets, positions, mode, layout, int(rotary_dims), float(base),
                 float(scale))


softmax = _unary("softmax", zmlx.softmax, "softmax over the last axis.")
log_softmax = _unary("log_softmax", zmlx.log_softmax, "log_softmax over the last axis.")
silu = _unary("silu", zmlx.silu, "x * sigmoid(x).")
gelu = _unary("gelu", zmlx.gelu, "gelu(x) with erf.")
gelu_tanh = _unary("gelu_tanh", zmlx.gelu_tanh, "gelu(x), tanh approximation.")
relu = _unary("relu", zmlx.relu, "max(x, 0).")
sigmoid = _unary("sigmoid", zmlx.sigmoid, "1 / (1 + exp(-x)).")
softplus = _unary("softplus", zmlx.softplus, "log(1 + exp(x)).")
mish = _unary("mish", zmlx.mish, "x * tanh(softplus(x)).")


# ------------------------------------------------- the rest of the catalog

def _last_halved(x, *rest):
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


def _last_dropped(x, *rest, keepdims=False):
    return x.new_empty((*x.shape[:-1], 1) if keepdims else x.shape[:-1])


logsumexp = _unary("logsumexp", zmlx.logsumexp, "log(sum(exp(x))) over the last axis (dropped).",
                   fake=_last_dropped)
exp = _unary("exp", zmlx.exp, "exp(x).")
log = _unary("log", zmlx.log, "log(x).")
tanh = _unary("tanh", zmlx.tanh, "tanh(x).")
_swiglu_split = _define("swiglu_split", "Tensor x", zmlx.swiglu_split, 1, (0,), fake=_last_halved)
_geglu_split = _define("geglu_split", "Tensor x, bool approximate",
                       lambda x, a: zmlx.geglu_split(x, a), 1, (0,), fake=_last_halved)
_bias_silu = _define("bias_silu", "Tensor x, Tensor bias", zmlx.bias_silu, 2, (0, 1))
_bias_swiglu = _define("bias_swiglu", "Tensor x, Tensor bias", zmlx.bias_swiglu, 2, (0, 1),
                       fake=_last_halved)
_bias_gelu = _define("bias_gelu", "Tensor x, Tensor bias, bool approximate",
                     lambda x, b, a: zmlx.bias_gelu(x, b, a), 2, (0, 1))
_elu = _define("elu", "Tensor x, float alpha", lambda x, a: zmlx.elu(x, a), 1, (0,))
_dropout = _define("dropout", "Tensor x, float p, int seed", lambda x, p, sd: zmlx.dropout(x, p, sd),
                   1, (0,))
_add_rmsnorm = _define(
    "add_rmsnorm", "Tensor x, Tensor residual, Tensor? weight, float eps",
    lambda x, r, w, eps: zmlx.add_rmsnorm(x, r, w, eps), 3, (0, 1, 2),
    fake=lambda x, r, w, eps: (torch.empty_like(x), torch.empty_like(x)), outputs=("float", "float"))
_add_layernorm = _define(
    "add_layernorm", "Tensor x, Tensor residual, Tensor? weight, Tensor? bias, float eps",
    lambda x, r, w, b, eps: zmlx.add_layernorm(x, r, w, b, eps), 4, (0, 1, 2, 3),
    fake=lambda x, r, w, b, eps: (torch.empty_like(x), torch.empty_like(x)),
    outputs=("float", "float"))
_softmax_masked = _define(
    "softmax_masked", "Tensor x, Tensor? mask, float scale, bool causal",
    lambda x, m, sc, c: zmlx.softmax_masked(x, m, sc, c), 2, (0,))
_reduce_last = _define(
    "reduce_last", "Tensor x, str kind, int ddof, bool keepdims",
    lambda x, kind, ddof, keep: zmlx.reduce_last(x, kind, ddof, keep), 1, (0,),
    fake=lambda x, kind, ddof, keep: _last_dropped(x, keepdims=keep))
_argmax = _define("argmax", "Tensor x, bool keepdims", lambda x, keep: zmlx.argmax(x, keep), 1, (),
                  fake=lambda x, keep: _last_dropped(x, keepdims=keep).to(torch.int32),
                  outputs=("int",))
_argmin = _define("argmin", "Tensor x, bool keepdims", lambda x, keep: zmlx.argmin(x, keep), 1, (),
                  fake=lambda x, keep: _last_dropped(x, keepdims=keep).to(torch.int32),
                  outputs=("int",))
_topk = _define(
    "topk", "Tensor x, int k", lambda x, k: zmlx.topk(x, k), 1, (0,),
    fake=lambda x, k: (x.new_empty((*x.shape[:-1], k)),
                       x.new_empty((*x.shape[:-1], k), dtype=torch.int32)),
    outputs=("float", "int"))
_quantize_int8 = _define(
    "quantize_int8", "Tensor x, str scale_dtype",
    lambda x, sd: zmlx.quantize_int8(x, sd), 1, (),
    fake=lambda x, sd: (x.new_empty(x.shape, dtype=torch.int8),
                        x.new_empty(x.shape[:-1], dtype=_TORCH_DTYPE[sd])),
    outputs=("int", "float"))
_dequantize_int8 = _define(
    "dequantize_int8", "Tensor q, Tensor scales, str dtype, bool silu",
    lambda q, sc, dt, silu: zmlx.dequantize_int8(q, sc, dt, silu), 2, (),
    fake=lambda q, sc, dt, silu: q.new_empty(q.shape, dtype=_TORCH_DTYPE[dt]))


def swiglu_split(x: torch.Tensor) -> torch.Tensor:
    """silu(x[..., :F]) * x[..., F:] (a fused gate / up projection's output), F = last dim / 2."""
    return _swiglu_split(x)


def geglu_split(x: torch.Tensor, approximate: bool = False) -> torch.Tensor:
    """gelu(x[..., :F]) * x[..., F:], F = last dim / 2."""
    return _geglu_split(x, bool(approximate))


def bias_silu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """silu(x + bias), bias over the last axis."""
    return _bias_silu(x, bias)


def bias_swiglu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """swiglu_split(x + bias)."""
    return _bias_swiglu(x, bias)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: bool = False) -> torch.Tensor:
    """gelu(x + bias) (tanh approximation if approximate)."""
    return _bias_gelu(x, bias, bool(approximate))


def elu(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """x if x > 0 else alpha (exp(x) - 1)."""
    return _elu(x, float(alpha))


def dropout(x: torch.Tensor, p: float, seed: int = 0) -> torch.Tensor:
    """x / (1 - p) where a counter-based draw (seed, element index) keeps it,
    else 0: the same mask on every backend and in the backward."""
    return _dropout(x, float(p), int(seed))


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: Optional[torch.Tensor] = None,
                eps: float = 1e-6):
    """(rms_norm(x + residual) * weight, x + residual) in one pass: a
    pre-norm block's residual add and the next norm."""
    return _add_rmsnorm(x, residual, weight, float(eps))


def add_layernorm(x: torch.Tensor, residual: torch.Tensor, weight: Optional[torch.Tensor] = None,
                  bias: Optional[torch.Tensor] = None, eps: float = 1e-5):
    """(layer_norm(x + residual), x + residual) in one pass."""
    return _add_layernorm(x, residual, weight, bias, float(eps))


def softmax_masked(x: torch.Tensor, mask: Optional[torch.Tensor] = None, scale: float = 1.0,
                   causal: bool = False) -> torch.Tensor:
    """softmax(x * scale + mask) over the last axis; mask additive (float)
    or bool (True keeps), broadcast; causal hides columns past each row's
    index (bottom-right aligned)."""
    return _softmax_masked(x, mask, float(scale), bool(causal))


def reduce_last(x: torch.Tensor, kind: str, ddof: int = 0, keepdims: bool = False) -> torch.Tensor:
    """sum, mean, max, min, var or std over the last axis (f32 accumulation)."""
    return _reduce_last(x, kind, int(ddof), bool(keepdims))


def argmax(x: torch.Tensor, keepdims: bool = False) -> torch.Tensor:
    """Index of the largest element over the last axis (int32; the first on ties)."""
    return _argmax(x, bool(keepdims))


def argmin(x: torch.Tensor, keepdims: bool = False) -> torch.Tensor:
    """Index of the smallest element over the last axis (int32)."""
    return _argmin(x, bool(keepdims))


def topk(x: torch.Tensor, k: int):
    """(values, indices int32) of the k largest elements over the last axis,
    largest first; the gradient flows to x through the values."""
    return _topk(x, int(k))


def quantize_int8(x: torch.Tensor, scale_dtype: str = "f32"):
    """(q int8, scales) with x[..., j] ~ q[..., j] * scales[...]: symmetric,
    one scale per row (max |x| / 127)."""
    return _quantize_int8(x, scale_dtype)


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, dtype: str = "f32",
                    silu: bool = False) -> torch.Tensor:
    """q * scales per row as dtype ("f32", "f16", "bf16"), silu applied if asked."""
    return _dequantize_int8(q, scales, dtype, bool(silu))


# ------------------------------------------------------- expression operators

_ELEMENTWISE: Dict[tuple, object] = {}


def _elementwise_op(expr: str, names: Sequence[str]):
    key = (expr, tuple(names))
    op = _ELEMENTWISE.get(key)
    if op is None:
        op = _ELEMENTWISE[key] = zmlx.elementwise(expr, list(names))
    return op


_lib.define("elementwise(str expr, str[] names, Tensor[] inputs) -> Tensor")
_lib.define("elementwise_backward(str expr, str[] names, Tensor grad, Tensor[] inputs) -> Tensor[]")


def _elementwise_impl(expr, names, inputs):
    op = _elementwise_op(expr, names)
    return _on_stream(inputs[0], lambda: _out(op(*[_in(t) for t in inputs]), inputs[0]))


def _elementwise_backward_impl(expr, names, grad, inputs):
    op = _elementwise_op(expr, names)

    def run():
        _, grads = zmlx.vjp(lambda *xs: op(*xs), [_in(t) for t in inputs], _in(grad.contiguous()))
        return [_out(g, grad) for g in grads]

    return _on_stream(grad, run)


def _elementwise_fake(expr, names, inputs):
    shape = torch.broadcast_shapes(*[t.shape for t in inputs])
    return inputs[0].new_empty(shape)


for _key in ("CPU", "CUDA"):
    _lib.impl("elementwise", _elementwise_impl, _key)
    _lib.impl("elementwise_backward", _elementwise_backward_impl, _key)
torch.library.register_fake("zmlx::elementwise", _elementwise_fake, lib=_lib)
torch.library.register_fake("zmlx::elementwise_backward",
                            lambda expr, names, grad, inputs: [torch.empty_like(t) for t in inputs],
                            lib=_lib)


def _elementwise_setup(ctx, inputs, output):
    ctx.expr, ctx.names = inputs[0], inputs[1]
    ctx.save_for_backward(*inputs[2])


def _elementwise_backward(ctx, grad):
    grads = torch.ops.zmlx.elementwise_backward(ctx.expr, ctx.names, grad, list(ctx.saved_tensors))
    return None, None, list(grads)


torch.library.register_autograd("zmlx::elementwise", _elementwise_backward,
                                setup_context=_elementwise_setup, lib=_lib)


def elementwise(expr: str, names: Sequence[str]) -> Callable[..., torch.Tensor]:
    """A PyTorch function of tensors named `names` computing the zmlx
    expression `expr` (broadcasting, output dtype of the first input), with
    its symbolic gradient as the backward: ``elementwise("x * sigmoid(x)", ["x"])``.
    The expression is parsed now, so a bad one raises zmlx.Error here."""
    names = list(names)
    _elementwise_op(expr, names)

    def call(*inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(names):
            raise TypeError(f"zmlx.torch.elementwise: {len(names)} inputs expected "
                            f"({', '.join(names)}), got {len(inputs)}")
        return torch.ops.zmlx.elementwise(expr, names, list(inputs))

    return call


from ._patch import PatchReport, attention_fallbacks, patch, rope_fallbacks, unpatch  # noqa: E402  (needs the ops above)
