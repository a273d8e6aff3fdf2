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
  :func:`kernel` does the same for a dialect kernel (``zmlx.kernel``'s
  arguments, MLX's ``cuda_kernel`` calling convention).

Not here: ``mx.fast.metal_kernel`` from zmlx's Metal source (no Apple
machine to run it on; ``zmlx emit --backend metal`` prints that source).
"""
from __future__ import annotations

import hashlib
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import mlx.core as mx
import numpy as np

import zmlx

__all__ = ["from_mlx", "to_mlx", "wrap", "elementwise", "kernel", "on_mlx_cuda",
           "cuda_kernel_parts", "kernel_parts"]


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


_SIGNATURE = re.compile(r'extern "C" __global__ void (zmlx_k_\w+)\((.*?)\) \{', re.S)


def _device_function(source: str) -> Tuple[str, str, List[str]]:
    """zmlx's first CUDA kernel in `source` (banner, prelude, kernel) as a
    device function: its name, the header text and its parameters."""
    sections = source.split("/* ==== ")
    text = sections[1].split("\n", 1)[1] if len(sections) > 1 else source
    m = _SIGNATURE.search(text)
    if not m:
        raise ValueError("zmlx.mlx: no zmlx CUDA kernel signature in the source")
    name, params = m.group(1), [p.strip() for p in m.group(2).split(",")]
    # __grid_constant__ belongs to a __global__ function's parameters only
    plain = [p.replace("ZMLX_GRID_CONST ", "") for p in params]
    header = text.replace(m.group(0), "static __device__ __forceinline__ void %s(%s) {"
                          % (name, ", ".join(plain)), 1)
    return name, header, params


def _param_type(param: str) -> str:
    return " ".join(t for t in param.split()[:-1] if t not in ("__restrict__", "ZMLX_GRID_CONST"))


def cuda_kernel_parts(source: str, n_in: int, n_out: int) -> Tuple[str, str, str, List[str]]:
    """From zmlx's CUDA source of one direction (``Op.source("cuda", ...)``):
    the kernel's name (zmlx's, which carries a hash of its source), the
    header (the prelude and the dense kernel turned into a device
    function), the body of an ``mx.fast.cuda_kernel`` with inputs a0.. and
    outputs o0.. (1-D, dense) that calls it, and the outputs' MLX dtype
    names. The kernel's own parameters after the arrays are the element
    count and the grid; any other shape of kernel is refused."""
    if "/* ==== " not in source:
        raise ValueError("zmlx.mlx: no kernel in the source")
    name, header, params = _device_function(source)
    if len(params) != n_in + n_out + 4:
        raise ValueError(f"zmlx.mlx: kernel {name} takes {len(params)} parameters; expected "
                         f"{n_in} inputs, {n_out} outputs, the count and the grid")
    ptr_types = [_param_type(p) for p in params[:n_in + n_out]]
    out_dtypes = [_MX_DTYPE[t.replace("const", "").replace("*", "").strip()] for t in ptr_types[n_in:]]
    args = [f"({t})a{i}" for i, t in enumerate(ptr_types[:n_in])]
    args += [f"({t})o{i}" for i, t in enumerate(ptr_types[n_in:])]
    body = ("  const long long zmlx_n = a0_shape[0];\n"
            "  ::%s(%s, zmlx_n, gridDim.x * blockDim.x, 1u, 1u);\n" % (name, ", ".join(args)))
    return name, header, body, out_dtypes


_MX_OF_ZMLX = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i32": "int32",
               "u32": "uint32", "i64": "int64", "u8": "uint8", "i8": "int8", "bool": "bool_"}
_ZMLX_OF_MX = {v: k for k, v in _MX_OF_ZMLX.items()}


def _zmlx_dtype(dt) -> str:
    name = str(dt).split(".")[-1]
    if name not in _ZMLX_OF_MX:
        raise TypeError(f"zmlx.mlx: dtype {name} has no zmlx counterpart")
    return _ZMLX_OF_MX[name]


def _template_dict(template) -> Dict[str, object]:
    """MLX's template list [("T", mx.float32), ("N", 4)] (or zmlx's dict) as
    zmlx's dict of name -> dtype name, int or bool."""
    items = template.items() if isinstance(template, dict) else (template or ())
    return {k: (v if isinstance(v, (bool, int, str)) else _zmlx_dtype(v)) for k, v in items}


def kernel_parts(source: str, input_names: Sequence[str], output_names: Sequence[str],
                 param_names: Sequence[str] = ()) -> Tuple[str, str, str]:
    """From zmlx's CUDA source of a dialect kernel (``Kernel.source("cuda",
    ...)``): its name, the header (prelude and kernel as a device function)
    and the body of an ``mx.fast.cuda_kernel`` with inputs a0.. (then p0..,
    one-element arrays holding the scalar parameters) and outputs o0.. that
    calls it: shapes, strides and ndim from MLX's (a0_shape, ...), the grid
    from the template constants ZMLX_GX, ZMLX_GY, ZMLX_GZ."""
    name, header, params = _device_function(source)
    ins = {n: i for i, n in enumerate(input_names)}
    outs = {n: i for i, n in enumerate(output_names)}
    scalars = {n: i for i, n in enumerate(param_names)}
    grid = {"zmlx_grid_x": "ZMLX_GX", "zmlx_grid_y": "ZMLX_GY", "zmlx_grid_z": "ZMLX_GZ"}
    prologue, args = [], []
    for p in params:
        pname, ptype = p.split()[-1], _param_type(p)
        base = pname.rsplit("_", 2)[0] if pname.endswith(("_shape_v", "_strides_v")) else \
            pname[:-5] if pname.endswith("_ndim") else None
        if pname in ins:
            args.append(f"({ptype})a{ins[pname]}")
        elif pname.endswith("_shape_v") and base in ins:
            i = ins[base]
            prologue.append(f"zmlx_kshape zs{i} = {{}};\n  for (int d = 0; d < a{i}_ndim && d < 8; ++d) "
                            f"zs{i}.v[d] = (int)a{i}_shape[d];")
            args.append(f"zs{i}")
        elif pname.endswith("_strides_v") and base in ins:
            i = ins[base]
            prologue.append(f"zmlx_kstrides zt{i} = {{}};\n  for (int d = 0; d < a{i}_ndim && d < 8; ++d) "
                            f"zt{i}.v[d] = (long long)a{i}_strides[d];")
            args.append(f"zt{i}")
        elif pname.endswith("_ndim") and base in ins:
            args.append(f"a{ins[base]}_ndim")
        elif pname in outs:
            args.append(f"({ptype})o{outs[pname]}")
        elif pname in scalars:
            args.append(f"(({ptype.replace('const', '').strip()} const*)p{scalars[pname]})[0]")
        elif pname in grid:
            args.append(grid[pname])
        else:
            raise ValueError(f"zmlx.mlx: kernel {name}: parameter {p!r} has no MLX counterpart")
    body = "".join(f"  {line}\n" for line in prologue)
    body += "  ::%s(%s);\n" % (name, ", ".join(args))
    return name, header, body


def _mlx_cuda_kernel(header: str, body: str, in_names: List[str], n_out: int, **kw):
    """An mx.fast.cuda_kernel named after its text (MLX caches compiled
    modules by name, so equal names must mean equal sources)."""
    digest = hashlib.sha1((header + "\0" + body).encode()).hexdigest()[:16]
    return mx.fast.cuda_kernel(name=f"zmlx_{digest}", input_names=in_names,
                               output_names=[f"o{i}" for i in range(n_out)], source=body,
                               header=header, **kw)


def kernel(name: str, input_names: Sequence[str], output_names: Sequence[str], source: str,
           header: Optional[str] = None, ensure_row_contiguous: bool = True,
           atomic_outputs: bool = False, params: Optional[Sequence[Tuple[str, str]]] = None):
    """A dialect kernel (``zmlx.kernel``'s arguments: the body in zmlx's
    portable dialect, ``x_shape`` / ``x_strides`` / ``x_ndim`` where used,
    scalar ``params`` as (name, dtype) with dtype f32, i32, u32 or i64) as an
    MLX CUDA kernel: zmlx generates the CUDA source, MLX compiles and runs
    it in its graph. Called like MLX's kernels: ``k(inputs=[...],
    output_shapes=[...], output_dtypes=[...], grid=(x, y, z),
    threadgroup=(x, y, z), template=None, init_value=None, params=None,
    shared_memory=0)`` -> list of mx.array (template: MLX's list of (name,
    dtype / int / bool) or zmlx's dict). Needs MLX's CUDA backend."""
    specs = list(params or [])
    for pname, pdt in specs:
        if pdt not in ("f32", "i32", "u32", "i64"):
            raise ValueError(f"zmlx.mlx.kernel: param {pname} of dtype {pdt}: f32, i32, u32 or i64")
    zk = zmlx.kernel(name, list(input_names), list(output_names), source, header=header,
                     ensure_row_contiguous=ensure_row_contiguous, atomic_outputs=atomic_outputs,
                     params=specs or None)
    built: Dict[tuple, object] = {}

    def call(inputs, output_shapes, output_dtypes, grid, threadgroup, template=None,
             init_value=None, params=None, shared_memory=0):
        xs = [x if isinstance(x, mx.array) else mx.array(x) for x in inputs]
        xs = [x.reshape(1) if x.ndim == 0 else x for x in xs]  # MLX passes no shape for 0-d
        values = list(params or [])
        if len(xs) != len(input_names) or len(values) != len(specs):
            raise TypeError(f"zmlx.mlx.kernel {name}: {len(input_names)} inputs and {len(specs)} "
                            f"params, {len(xs)} and {len(values)} given")
        dts = [_zmlx_dtype(x.dtype) for x in xs] + [_zmlx_dtype(d) for d in output_dtypes]
        targs = _template_dict(template)
        key = (tuple(dts), tuple(sorted(targs.items())), shared_memory)
        if key not in built:
            src = zk.source("cuda", dts, targs or None)
            _, hdr, body = kernel_parts(src, input_names, output_names, [p for p, _ in specs])
            names = [f"a{i}" for i in range(len(xs))] + [f"p{i}" for i in range(len(specs))]
            built[key] = _mlx_cuda_kernel(hdr, body, names, len(output_names),
                                          ensure_row_contiguous=ensure_row_contiguous,
                                          shared_memory=shared_memory)
        pv = [mx.array([v], dtype=getattr(mx, _MX_OF_ZMLX[d])) for (_, d), v in zip(specs, values)]
        g = tuple(grid) + (1,) * (3 - len(grid))
        return built[key](inputs=xs + pv, output_shapes=list(output_shapes),
                          output_dtypes=list(output_dtypes), grid=g,
                          threadgroup=tuple(threadgroup) + (1,) * (3 - len(threadgroup)),
                          template=[("ZMLX_GX", g[0]), ("ZMLX_GY", g[1]), ("ZMLX_GZ", g[2])],
                          init_value=init_value)

    return call


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
            _, header, body, out_dtypes = cuda_kernel_parts(src, len(arrays), n_out)
            names = [f"a{i}" for i in range(len(arrays))]
            self.cache[key] = (_mlx_cuda_kernel(header, body, names, n_out), out_dtypes)
        mk, out_dtypes = self.cache[key]
        n = arrays[0].size
        threads = max(256, min(-(-n // 4 // 256) * 256, 65535 * 256))
        return mk(inputs=arrays, output_shapes=[(n,)] * n_out,
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
