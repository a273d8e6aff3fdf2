"""zmlx: write, JIT-compile, cache, launch and differentiate ML kernels.

A thin layer over the C library (the ``zmlx._core`` extension):

* arrays: :class:`Array` (``__dlpack__``, ``__array__``), :func:`asarray`
  takes NumPy arrays (copied to the device) and anything with
  ``__dlpack__`` (zero copy on the same device);
* kernels from expressions: :func:`elementwise`, :func:`reduce`,
  :func:`map_reduce`, :func:`jit` (a Python function's AST lowered to the
  expression language, with symbolic gradients); dialect kernels:
  :func:`kernel` (the ``mx.fast.metal_kernel`` analog);
* autograd: :func:`grad`, :func:`value_and_grad`, :func:`vjp`, :func:`jvp`
  over Python functions of zmlx ops;
* the catalog: softmax, rmsnorm, layernorm, swiglu, rope, cross_entropy, ...

Errors from the library raise :class:`Error`, whose message is the
library's (a bad expression shows line, column and a caret) and whose
``status`` names the status.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

from . import _core
from ._core import (  # noqa: F401  (re-exported)
    Array,
    Error,
    Kernel,
    AdamW,
    KVCache,
    LanguageModel,
    Layer,
    Op,
    add,
    add_layernorm,
    add_rmsnorm,
    adamw_step,
    arange,
    argmax,
    argmin,
    astype,
    attention,
    bias_gelu,
    bias_silu,
    bias_swiglu,
    cache_stats,
    cross_entropy,
    current_stream,
    default_device,
    dequantize_int8,
    divide,
    dropout,
    elementwise,
    elu,
    embedding,
    exp,
    from_buffer,
    from_dlpack,
    full,
    gelu,
    gelu_tanh,
    geglu,
    geglu_split,
    grad_is_recording,
    kernel,
    layernorm,
    live_arrays,
    log,
    log_softmax,
    logsumexp,
    map_reduce,
    matmul,
    mean,
    mish,
    moe,
    moe_dispatch,
    moe_experts,
    moe_gate,
    multiply,
    quantize_int8,
    reduce,
    reduce_last,
    relu,
    reshape,
    rmsnorm,
    rope,
    set_stream,
    sigmoid,
    silu,
    softmax,
    softmax_masked,
    softplus,
    stop_gradient,
    subtract,
    sum,
    swiglu,
    swiglu_split,
    synchronize,
    tanh,
    topk,
    transpose,
)
from ._jit import jit  # noqa: F401

__version__ = _core.__version__

ArrayLike = Any

# NumPy dtype names of zmlx dtypes (bf16 needs ml_dtypes).
_NUMPY_NAMES = {
    "bool": "bool", "u8": "uint8", "i8": "int8", "i32": "int32", "u32": "uint32",
    "i64": "int64", "f16": "float16", "bf16": "bfloat16", "f32": "float32", "f64": "float64",
}


def _numpy():
    try:
        import numpy
    except ImportError as e:  # pragma: no cover
        raise ImportError("zmlx: NumPy is needed for this (pip install numpy)") from e
    return numpy


def _numpy_dtype(name: str):
    np = _numpy()
    if name == "bf16":
        try:
            import ml_dtypes
        except ImportError as e:
            raise TypeError("zmlx: a bf16 array needs ml_dtypes for NumPy (pip install ml_dtypes)") from e
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_NUMPY_NAMES[name])


def to_numpy(a: Array):
    """A NumPy copy of ``a`` (bf16 as ml_dtypes.bfloat16)."""
    np = _numpy()
    return np.frombuffer(a.tobytes(), dtype=_numpy_dtype(a.dtype)).reshape(a.shape).copy()


def _array_to_numpy(self, dtype=None, copy=None):
    out = to_numpy(self)
    return out if dtype is None else out.astype(dtype)


Array.__array__ = _array_to_numpy  # type: ignore[attr-defined]
Array.numpy = to_numpy  # type: ignore[attr-defined]
Array.__add__ = lambda a, b: add(a, asarray(b, like=a))  # type: ignore[attr-defined]
Array.__radd__ = lambda a, b: add(asarray(b, like=a), a)  # type: ignore[attr-defined]
Array.__sub__ = lambda a, b: subtract(a, asarray(b, like=a))  # type: ignore[attr-defined]
Array.__rsub__ = lambda a, b: subtract(asarray(b, like=a), a)  # type: ignore[attr-defined]
Array.__mul__ = lambda a, b: multiply(a, asarray(b, like=a))  # type: ignore[attr-defined]
Array.__rmul__ = lambda a, b: multiply(asarray(b, like=a), a)  # type: ignore[attr-defined]
Array.__truediv__ = lambda a, b: divide(a, asarray(b, like=a))  # type: ignore[attr-defined]
Array.__rtruediv__ = lambda a, b: divide(asarray(b, like=a), a)  # type: ignore[attr-defined]
Array.__matmul__ = lambda a, b: matmul(a, b)  # type: ignore[attr-defined]
Array.__neg__ = lambda a: multiply(a, asarray(-1.0, like=a))  # type: ignore[attr-defined]
Array.T = property(lambda a: transpose(a))  # type: ignore[attr-defined]
Array.__len__ = lambda a: a.shape[0]  # type: ignore[attr-defined]


def asarray(x: ArrayLike, dtype: Optional[str] = None, device: Optional[str] = None,
            like: Optional[Array] = None) -> Array:
    """An Array from ``x``: an Array (converted to ``dtype`` if given), anything
    with ``__dlpack__`` (zero copy on the same device; host tensors copied), or
    whatever NumPy turns into an array (copied onto the device). A Python scalar
    with ``like`` becomes a 0-d array of like's dtype and device."""
    if isinstance(x, Array):
        return x if dtype is None or x.dtype == dtype else astype(x, dtype)
    if like is not None and isinstance(x, (int, float, bool)):
        return full((), float(x), dtype or like.dtype, device or like.device)
    if hasattr(x, "__dlpack__") and dtype is None and _dlpack_ok(x):
        return from_dlpack(x, device)
    np = _numpy()
    arr = np.asarray(x)
    if dtype is None:
        dtype = _zmlx_dtype_of(arr)
    arr = np.ascontiguousarray(arr.astype(_numpy_dtype(dtype), copy=False))
    return from_buffer(arr, dtype, arr.shape, device)


def _dlpack_ok(x) -> bool:
    # NumPy's bf16 (ml_dtypes) has no DLPack export: it goes through buffers.
    dt = getattr(x, "dtype", None)
    return str(dt) != "bfloat16"


def _zmlx_dtype_of(arr) -> str:
    name = str(arr.dtype)
    table = {v: k for k, v in _NUMPY_NAMES.items()}
    if name in table:
        return table[name]
    if arr.dtype.kind == "f":
        return "f32"
    if arr.dtype.kind in "iu":
        return "i64"
    raise TypeError(f"zmlx: no zmlx dtype for NumPy dtype {arr.dtype}")


def zeros(shape, dtype: str = "f32", device: Optional[str] = None) -> Array:
    """An Array of zeros."""
    return full(shape, 0.0, dtype, device)


def ones(shape, dtype: str = "f32", device: Optional[str] = None) -> Array:
    """An Array of ones."""
    return full(shape, 1.0, dtype, device)


def random_uniform(shape, seed: int = 0, low: float = 0.0, high: float = 1.0,
                   dtype: str = "f32", device: Optional[str] = None) -> Array:
    """Counter-based uniform values (Philox): the same bits on every backend."""
    return _core._random("uniform", shape, seed, low, high, dtype, device)


def random_normal(shape, seed: int = 0, mean: float = 0.0, std: float = 1.0,
                  dtype: str = "f32", device: Optional[str] = None) -> Array:
    """Counter-based normal values (Philox + Box-Muller)."""
    return _core._random("normal", shape, seed, mean, std, dtype, device)


def _argnums(argnums) -> Optional[Sequence[int]]:
    if argnums is None:
        return None
    return [argnums] if isinstance(argnums, int) else list(argnums)


def value_and_grad(fn: Callable[..., Array], argnums: Union[int, Sequence[int]] = 0):
    """``value_and_grad(fn)(*arrays) -> (value, grads)``: fn returns one element;
    grads is one Array for an int ``argnums``, else a tuple."""
    single = isinstance(argnums, int)

    def wrapped(*inputs):
        ins = [asarray(x) for x in inputs]
        value, grads = _core._value_and_grad(fn, ins, _argnums(argnums))
        return value, (grads[0] if single else tuple(grads))

    return wrapped


def grad(fn: Callable[..., Array], argnums: Union[int, Sequence[int]] = 0):
    """``grad(fn)(*arrays)``: the gradient of a one-element function (of
    ``argnums``: an int gives one Array, a sequence a tuple)."""
    vg = value_and_grad(fn, argnums)
    return lambda *inputs: vg(*inputs)[1]


def vjp(fn: Callable[..., Array], primals: Sequence[ArrayLike], cotangent: ArrayLike,
        argnums: Optional[Sequence[int]] = None):
    """``(fn(*primals), [cotangent^T d fn / d primals[i]])``."""
    ins = [asarray(x) for x in primals]
    return _core._vjp(fn, ins, asarray(cotangent), argnums)


def jvp(fn: Callable[..., Array], primals: Sequence[ArrayLike], tangents: Sequence[ArrayLike]):
    """``(fn(*primals), d fn along tangents)`` (forward mode)."""
    return _core._jvp(fn, [asarray(x) for x in primals], [asarray(t) for t in tangents])


def _array_write(a: Array, values: ArrayLike) -> None:
    """Overwrite ``a``'s elements in place with ``values`` (converted to a's
    dtype; a's shape or its element count): how a captured graph's inputs
    change between replays."""
    np = _numpy()
    arr = np.ascontiguousarray(np.asarray(values).astype(_numpy_dtype(a.dtype), copy=False))
    if arr.size != a.size:
        raise ValueError(f"zmlx: {arr.size} values for an array of {a.size} elements "
                         f"(shape {list(a.shape)})")
    a.write_bytes(arr)


Array.write = _array_write  # type: ignore[attr-defined]


class capture:
    """Capture the device work of a block once, replay it as one launch::

        with zmlx.capture() as g:     # runs the block once, capturing it
            y = step(x)
        x.write(new_values)
        g.replay()                    # y holds step(new x)

    CUDA graphs on CUDA, recorded launches elsewhere. Arrays the block made
    keep their memory while the graph lives; host reads and writes inside
    the block raise (a replay could not repeat them). ``device``: None for
    the default device."""

    def __init__(self, device: Optional[str] = None):
        self.device = device
        self.graph = None

    def __enter__(self) -> "capture":
        _core.graph_capture_begin(self.device)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.graph = _core.graph_capture_end(self.device)
            return False
        try:  # end the capture, keep the block's own exception
            _core.graph_capture_end(self.device)
        except Error:
            pass
        return False

    def replay(self) -> None:
        """Run the captured work again (new input values written in place)."""
        if self.graph is None:
            raise RuntimeError("zmlx.capture: nothing captured yet (use it as a `with` block)")
        self.graph.replay()

    def info(self) -> dict:
        """{'operations': launches / copies / GEMMs captured, 'native': CUDA graph?}"""
        if self.graph is None:
            raise RuntimeError("zmlx.capture: nothing captured yet")
        return self.graph.info()


__all__ = [n for n in dir() if not n.startswith("_")]
