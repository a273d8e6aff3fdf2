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
    "sigmoid", "softplus", "mish", "swiglu", "geglu", "moe_experts", "cross_entropy", "elementwise",
    "patch",
    "unpatch", "PatchReport",
]

_ZMLX_DTYPE = {
    torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
    torch.int32: "i32", torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8", torch.bool: "bool",
}
_TORCH_DTYPE = {v: k for k, v in _ZMLX_DTYPE.items()}


# ------------------------------------------------------------ tensors, streams

class _Stream:
    """zmlx work inside the block runs on PyTorch's current stream of t's
    device; the thread's previous zmlx stream comes back after it."""
    __slots__ = ("name", "prev")

    def __init__(self, t: torch.Tensor):
        self.name = None
        if t.is_cuda:
            index = t.device.index if t.device.index is not None else torch.cuda.current_device()
            self.name = f"cuda:{index}"

    def __enter__(self):
        if self.name is not None:
            self.prev = _core.current_stream(self.name)
            _core.set_stream(torch.cuda.current_stream(self.name).cuda_stream, self.name)
        return self

    def __exit__(self, *exc):
        if self.name is not None:
            if self.prev is None:
                _core.set_stream(None)
            else:
                _core.set_stream(self.prev, self.name)
        return False


def _in(t: Optional[torch.Tensor]):
    """A zmlx Array over t (zero copy on CUDA, a copy of a CPU tensor)."""
    if t is None:
        return None
    return _core.from_dlpack(t.detach())


def _out(a, like: torch.Tensor) -> torch.Tensor:
    """A torch tensor of zmlx Array a, on like's device."""
    if like.is_cuda:
        return torch.from_dlpack(a)
    dtype = _TORCH_DTYPE[a.dtype]
    if a.size == 0:
        return torch.empty(a.shape, dtype=dtype)
    return torch.frombuffer(bytearray(a.tobytes()), dtype=dtype).reshape(a.shape)


# ---------------------------------------------------------------- the op table

_lib = torch.library.Library("zmlx", "DEF")


def _define(name: str, schema: str, forward: Callable, n_tensors: int,
            differentiable: Sequence[int], fake: Optional[Callable] = None) -> Callable:
    """Register zmlx::name(schema) computing forward(*zmlx arrays, *scalars),
    and zmlx::name_backward; returns the Python entry point.

    The first n_tensors arguments are tensors (None allowed where the schema
    says Tensor?); the rest are passed to forward as they are. Gradients flow
    to the tensor arguments listed in `differentiable`."""
    qual = f"zmlx::{name}"
    _lib.define(f"{name}({schema}) -> Tensor")
    bwd_args = ", ".join(["Tensor grad"] + [a.strip() for a in schema.split(",")])
    _lib.define(f"{name}_backward({bwd_args}) -> Tensor[]")

    def impl(*args):
        tensors, scalars = args[:n_tensors], args[n_tensors:]
        with _Stream(tensors[0]):
            return _out(forward(*[_in(t) for t in tensors], *scalars), tensors[0])

    def backward_impl(grad, *args):
        tensors, scalars = list(args[:n_tensors]), args[n_tensors:]
        wanted = [i for i in differentiable if tensors[i] is not None]
        fixed = [_in(t) for t in tensors]

        def fn(*varying):
            arrays = list(fixed)
            for i, a in zip(wanted, varying):
                arrays[i] = a
            return forward(*arrays, *scalars)

        with _Stream(grad):
            _, grads = zmlx.vjp(fn, [fixed[i] for i in wanted], _in(grad.contiguous()))
            return [_out(g, grad) for g in grads]

    def fake_impl(*args):
        return fake(*args) if fake else torch.empty_like(args[0])

    def fake_backward(grad, *args):
        return [torch.empty_like(args[i]) for i in differentiable if args[i] is not None]

    for key in ("CPU", "CUDA"):
        _lib.impl(name, impl, key)
        _lib.impl(f"{name}_backward", backward_impl, key)
    torch.library.register_fake(qual, fake_impl, lib=_lib)
    torch.library.register_fake(f"{qual}_backward", fake_backward, lib=_lib)
    backward_op = getattr(torch.ops.zmlx, f"{name}_backward")

    def setup_context(ctx, inputs, output):
        tensors = inputs[:n_tensors]
        ctx.save_for_backward(*[t if t is not None else torch.empty(0) for t in tensors])
        ctx.present = [t is not None for t in tensors]
        ctx.scalars = inputs[n_tensors:]

    def backward(ctx, grad):
        saved = [t if p else None for t, p in zip(ctx.saved_tensors, ctx.present)]
        grads = backward_op(grad, *saved, *ctx.scalars)
        out: List[Optional[torch.Tensor]] = [None] * (n_tensors + len(ctx.scalars))
        it = iter(grads)
        for i in differentiable:
            if ctx.present[i]:
                out[i] = next(it)
        return tuple(out)

    torch.library.register_autograd(qual, backward, setup_context=setup_context, lib=_lib)
    return getattr(torch.ops.zmlx, name)


def _unary(name: str, fn: Callable, doc: str) -> Callable:
    op = _define(name, "Tensor x", fn, 1, (0,))

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
    Strided weights (slices of a fused gate_up projection) are copied dense
    per call."""
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


softmax = _unary("softmax", zmlx.softmax, "softmax over the last axis.")
log_softmax = _unary("log_softmax", zmlx.log_softmax, "log_softmax over the last axis.")
silu = _unary("silu", zmlx.silu, "x * sigmoid(x).")
gelu = _unary("gelu", zmlx.gelu, "gelu(x) with erf.")
gelu_tanh = _unary("gelu_tanh", zmlx.gelu_tanh, "gelu(x), tanh approximation.")
relu = _unary("relu", zmlx.relu, "max(x, 0).")
sigmoid = _unary("sigmoid", zmlx.sigmoid, "1 / (1 + exp(-x)).")
softplus = _unary("softplus", zmlx.softplus, "log(1 + exp(x)).")
mish = _unary("mish", zmlx.mish, "x * tanh(softplus(x)).")


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
    with _Stream(inputs[0]):
        return _out(_elementwise_op(expr, names)(*[_in(t) for t in inputs]), inputs[0])


def _elementwise_backward_impl(expr, names, grad, inputs):
    op = _elementwise_op(expr, names)
    with _Stream(grad):
        _, grads = zmlx.vjp(lambda *xs: op(*xs), [_in(t) for t in inputs], _in(grad.contiguous()))
        return [_out(g, grad) for g in grads]


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


from ._patch import PatchReport, patch, unpatch  # noqa: E402  (needs the ops above)
