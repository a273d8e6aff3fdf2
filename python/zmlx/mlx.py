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

Not yet: building MLX's own custom kernels (``mx.fast.cuda_kernel``,
``mx.fast.metal_kernel``) from zmlx's generated CUDA / Metal source, which
would run zero copy inside MLX's graph on its GPU backends.
"""
from __future__ import annotations

from typing import Callable, Sequence

import mlx.core as mx
import numpy as np

import zmlx

__all__ = ["from_mlx", "to_mlx", "wrap", "elementwise"]


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


def elementwise(expr: str, names: Sequence[str]) -> Callable[..., "mx.array"]:
    """An MLX function computing the zmlx expression over mx.arrays named
    `names` (broadcasting), differentiable with mx.grad through zmlx's
    symbolic VJP: ``zmlx.mlx.elementwise("x * sigmoid(x)", ["x"])``."""
    op = zmlx.elementwise(expr, list(names))
    return wrap(lambda *xs: op(*xs))
