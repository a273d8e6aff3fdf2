"""MLX arrays in and out of zmlx, and zmlx ops as MLX functions with gradients.

* :func:`from_mlx` / :func:`to_mlx`: ``mx.array`` <-> :class:`zmlx.Array`.
  MLX exports its arrays through DLPack as host (kDLCPU) tensors, so
  ``from_mlx`` copies them onto zmlx's device; ``to_mlx`` copies back through
  NumPy (MLX cannot import an OpenCL or CUDA DLPack tensor). Copies both
  ways, on every backend: the bridge is for correctness and convenience.
* :func:`elementwise` and :func:`wrap`: a zmlx op (an expression, or any
  function of zmlx arrays with a VJP, such as the catalog's) as an MLX
  function wrapped in ``mx.custom_function``, whose ``vjp`` runs zmlx's
  symbolic VJP kernels, so ``mx.grad`` and ``mx.vjp`` differentiate through
  it. Not under ``mx.compile`` / ``mx.vmap`` (the bridge evaluates its
  inputs to copy them).

* On MLX's CUDA backend (``mlx[cuda13]``, the GPU the default device),
  :func:`elementwise` builds MLX's own custom kernels instead: zmlx's
  generated CUDA source for the expression (its dense kernel, forward and
  symbolic VJP) becomes the header of an ``mx.fast.cuda_kernel`` whose body
  calls it, so the op runs inside MLX's graph on MLX's stream with no copy,
  under ``mx.custom_function`` with the VJP kernel as its ``vjp``. Inputs are
  broadcast, given one float dtype and flattened by MLX first (the dense
  kernel's layout); gradients are summed back over broadcast axes by MLX.

Not here: ``mx.fast.metal_kernel`` from zmlx's Metal source (no Apple
machine to run it on; ``zmlx emit --backend metal`` prints that source).
"""
from __future__ import annotations

import re
from typing import Callable, Dict, List, Sequence, Tuple

import mlx.core as mx
import numpy as np

import zmlx

__all__ = ["from_mlx", "to_mlx", "wrap", "elementwise", "on_mlx_cuda", "cuda_kernel_parts"]


def from_mlx(x: "mx.array") -> zmlx.Array:
    """A zmlx Array with x's values (a copy onto zmlx's default device)."""
    if x.dtype == mx.bfloat16:  # NumPy has no bf16 without ml_dtypes: go through f32
        return zmlx.astype(zmlx.asarray(np.array(x.astype(mx.float32))), "bf16")
    return zmlx.asarray(np.array(x))


def to_mlx(a: zmlx.Array) -> "mx.array":
    """An mx.array with a's values (a copy through host memory)."""
    if a.dtype == "bf16":
        return mx.array(zmlx.astype(a, "f32").numpy()).astype(mx.bfloat16)
    return mx.array(a.numpy())


def wrap(fn: Callable[..., zmlx.Array]) -> Callable[..., "mx.array"]:
    """fn (zmlx arrays -> one zmlx array, differentiable by zmlx.vjp) as an
    MLX function of mx.arrays whose gradient is zmlx's VJP."""

    @mx.custom_function
    def forward(*xs):
        return to_mlx(fn(*[from_mlx(x) for x in xs]))

    @forward.vjp
    def backward(primals, cotangent, output):
        if isinstance(primals, mx.array):
            primals = (primals,)
        _, grads = zmlx.vjp(fn, [from_mlx(p) for p in primals], from_mlx(cotangent))
        out = tuple(to_mlx(g) for g in grads)
        return out if len(out) > 1 else out[0]

    return forward


def on_mlx_cuda() -> bool:
    """Whether MLX computes on its CUDA backend here (the GPU is MLX's
    default device): then :func:`elementwise` builds MLX CUDA kernels."""
    try:
        return mx.default_device() == mx.gpu and bool(mx.cuda.is_available())
    except (AttributeError, RuntimeError, ValueError):
        return False


def elementwise(expr: str, names: Sequence[str], backend: str = "auto") -> Callable[..., "mx.array"]:
    """An MLX function computing the zmlx expression over mx.arrays named
    `names` (broadcasting), differentiable with mx.grad through zmlx's
    symbolic VJP: ``zmlx.mlx.elementwise("x * sigmoid(x)", ["x"])``.

    backend "auto": an MLX CUDA kernel built from zmlx's source where MLX
    runs on CUDA (:func:`on_mlx_cuda`), else zmlx's own device with copies;
    "mlx-cuda" or "zmlx" force one. The returned function's ``path`` says
    which it took."""
    op = zmlx.elementwise(expr, list(names))
    if backend not in ("auto", "mlx-cuda", "zmlx"):
        raise ValueError(f"zmlx.mlx.elementwise: backend {backend!r}: auto, mlx-cuda or zmlx")
    if backend == "mlx-cuda" or (backend == "auto" and on_mlx_cuda()):
        fn = _mlx_cuda_function(op, len(names))
        path = "mlx-cuda"
    else:
        fn = wrap(lambda *xs: op(*xs))
        path = "zmlx"

    def call(*xs):
        return fn(*xs)

    call.path = path
    return call


# ------------------------------------------- MLX CUDA kernels from zmlx's source

_MX_DTYPE = {"float": "float32", "zmlx_half": "float16", "zmlx_bf16": "bfloat16"}
_ZMLX_DTYPE = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}


def cuda_kernel_parts(source: str, n_in: int, n_out: int) -> Tuple[str, str, str, List[str]]:
    """From zmlx's CUDA source of one direction (``Op.source("cuda", ...)``):
    the kernel's name (zmlx's, which carries a hash of its source), the
    header (the prelude and the dense kernel turned into a device
    function), the body of an ``mx.fast.cuda_kernel`` with inputs a0.. and
    outputs o0.. (1-D, dense) that calls it, and the outputs' MLX dtype
    names. The kernel's own parameters after the arrays are the element
    count and the grid; any other shape of kernel is refused."""
    sections = source.split("/* ==== ")
    if len(sections) < 2:
        raise ValueError("zmlx.mlx: no kernel in the source")
    dense = sections[1].split("\n", 1)[1]  # the dense kernel, without its banner line
    m = re.search(r'extern "C" __global__ void (zmlx_k_\w+)\((.*?)\) \{', dense, re.S)
    if not m:
        raise ValueError("zmlx.mlx: the dense kernel's signature was not found")
    name, params = m.group(1), [p.strip() for p in m.group(2).split(",")]
    if len(params) != n_in + n_out + 4:
        raise ValueError(f"zmlx.mlx: kernel {name} takes {len(params)} parameters; expected "
                         f"{n_in} inputs, {n_out} outputs, the count and the grid")
    ptr_types = [p.replace("__restrict__", "").rsplit(None, 1)[0].strip() for p in params[:n_in + n_out]]
    out_dtypes = [_MX_DTYPE[t.replace("*", "").strip()] for t in ptr_types[n_in:]]
    header = dense.replace(m.group(0), "static __device__ __forceinline__ void %s(%s) {"
                           % (name, ", ".join(params)), 1)
    args = [f"({t})a{i}" for i, t in enumerate(ptr_types[:n_in])]
    args += [f"({t})o{i}" for i, t in enumerate(ptr_types[n_in:])]
    body = ("  const long long zmlx_n = a0_shape[0];\n"
            "  ::%s(%s, zmlx_n, gridDim.x * blockDim.x, 1u, 1u);\n" % (name, ", ".join(args)))
    return name, header, body, out_dtypes


class _CudaKernels:
    """One op's MLX CUDA kernels, built on first use per (direction, dtype)."""

    def __init__(self, op: zmlx.Op, n_in: int):
        self.op, self.n_in = op, n_in
        self.cache: Dict[Tuple[str, str], Tuple[object, List[str]]] = {}

    def run(self, direction: str, arrays: List["mx.array"], n_out: int) -> List["mx.array"]:
        dt = _ZMLX_DTYPE[str(arrays[0].dtype).split(".")[-1]]
        key = (direction, dt)
        if key not in self.cache:
            src = self.op.source("cuda", direction, [dt] * self.n_in)
            name, header, body, out_dtypes = cuda_kernel_parts(src, len(arrays), n_out)
            kernel = mx.fast.cuda_kernel(
                name=name,
                input_names=[f"a{i}" for i in range(len(arrays))],
                output_names=[f"o{i}" for i in range(n_out)],
                source=body, header=header)
            self.cache[key] = (kernel, out_dtypes)
        kernel, out_dtypes = self.cache[key]
        n = arrays[0].size
        threads = max(256, min(-(-n // 4 // 256) * 256, 65535 * 256))
        return kernel(inputs=arrays, output_shapes=[(n,)] * n_out,
                      output_dtypes=[getattr(mx, d) for d in out_dtypes],
                      grid=(threads, 1, 1), threadgroup=(256, 1, 1))


def _dense_inputs(xs) -> Tuple[List["mx.array"], Tuple[int, ...]]:
    """The inputs broadcast together, in one float dtype, flattened."""
    xs = [x if isinstance(x, mx.array) else mx.array(x) for x in xs]
    dts = {x.dtype for x in xs}
    dt = dts.pop() if len(dts) == 1 else mx.float32  # mixed dtypes compute in f32
    if dt not in (mx.float32, mx.float16, mx.bfloat16):
        dt = mx.float32
    shape = tuple(mx.broadcast_shapes(*[x.shape for x in xs]))
    return [mx.broadcast_to(x.astype(dt), shape).flatten() for x in xs], shape


def _unbroadcast(g: "mx.array", shape: Tuple[int, ...]) -> "mx.array":
    """g summed down to `shape` (NumPy broadcasting rules, backwards)."""
    lead = g.ndim - len(shape)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(shape) if d == 1 and g.shape[lead + i] != 1]
    return (g.sum(axis=axes) if axes else g).reshape(shape)


def _mlx_cuda_function(op: zmlx.Op, n_in: int) -> Callable[..., "mx.array"]:
    kernels = _CudaKernels(op, n_in)

    @mx.custom_function
    def forward(*xs):
        flat, shape = _dense_inputs(xs)
        if not flat[0].size:
            return mx.zeros(shape, flat[0].dtype)
        return kernels.run("forward", flat, 1)[0].reshape(shape)

    @forward.vjp
    def backward(primals, cotangent, output):
        single = isinstance(primals, mx.array)
        primals = (primals,) if single else tuple(primals)
        flat, shape = _dense_inputs(primals)
        cot = mx.broadcast_to(cotangent.astype(flat[0].dtype), shape).flatten()
        grads = kernels.run("vjp", flat + [cot], n_in) if flat[0].size else \
            [mx.zeros((0,), flat[0].dtype)] * n_in
        out = tuple(_unbroadcast(g.reshape(shape), p.shape).astype(p.dtype)
                    for g, p in zip(grads, primals))
        return out[0] if single else out

    return forward
