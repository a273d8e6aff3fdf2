"""The MLX bridge (zmlx.mlx) against MLX's own ops on MLX's CPU backend
(mlx[cpu] from PyPI): mx.array -> zmlx op -> mx.array equal to MLX's result,
and mx.grad through zmlx.mlx.elementwise / wrap equal to MLX's gradient."""
import os

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
import zmlx  # noqa: E402
import zmlx.mlx as zm  # noqa: E402

SEED = int(os.environ.get("ZMLX_TEST_SEED", np.random.SeedSequence().entropy % (1 << 32)))


@pytest.fixture
def rng():
    return np.random.default_rng(SEED)


def close(got, want, tol=2e-5):
    np.testing.assert_allclose(np.array(got, dtype=np.float64), np.array(want, dtype=np.float64),
                               rtol=tol, atol=tol)


def test_round_trip_and_catalog_ops_equal_mlx(rng):
    x = mx.array(rng.standard_normal((7, 96)).astype(np.float32))
    w = mx.array(rng.standard_normal(96).astype(np.float32))
    a = zm.from_mlx(x)
    assert a.shape == (7, 96) and a.dtype == "f32"
    np.testing.assert_array_equal(np.array(zm.to_mlx(a)), np.array(x))
    close(zm.to_mlx(zmlx.softmax(a)), mx.softmax(x, axis=-1))
    close(zm.to_mlx(zmlx.rmsnorm(a, zm.from_mlx(w), 1e-5)), mx.fast.rms_norm(x, w, 1e-5))
    close(zm.to_mlx(zmlx.silu(a)), x * mx.sigmoid(x))
    b = zm.from_mlx(x.astype(mx.bfloat16))
    assert b.dtype == "bf16"
    assert zm.to_mlx(b).dtype == mx.bfloat16


def test_elementwise_values_and_mx_grad(rng):
    f = zm.elementwise("x * sigmoid(x) * y + (x > 0 ? x : 0.1 * x)", ["x", "y"])
    x = mx.array(rng.standard_normal((5, 8)).astype(np.float32))
    y = mx.array(rng.standard_normal((5, 8)).astype(np.float32))

    def ref(x, y):
        return x * mx.sigmoid(x) * y + mx.where(x > 0, x, 0.1 * x)

    close(f(x, y), ref(x, y))
    got = mx.grad(lambda x, y: (f(x, y) * y).sum(), argnums=(0, 1))(x, y)
    want = mx.grad(lambda x, y: (ref(x, y) * y).sum(), argnums=(0, 1))(x, y)
    for g, w in zip(got, want):
        close(g, w, tol=1e-4)


def test_wrap_a_catalog_op_and_differentiate(rng):
    x = mx.array(rng.standard_normal((4, 32)).astype(np.float32))
    w = mx.array(rng.standard_normal(32).astype(np.float32))
    rms = zm.wrap(lambda a, b: zmlx.rmsnorm(a, b, 1e-5))
    close(rms(x, w), mx.fast.rms_norm(x, w, 1e-5))
    g = mx.random.normal((4, 32))
    got = mx.grad(lambda x, w: (rms(x, w) * g).sum(), argnums=(0, 1))(x, w)
    want = mx.grad(lambda x, w: (mx.fast.rms_norm(x, w, 1e-5) * g).sum(), argnums=(0, 1))(x, w)
    for a, b in zip(got, want):
        close(a, b, tol=1e-4)


def test_cuda_kernel_parts_from_zmlx_source():
    # runs anywhere: the pieces of the MLX CUDA kernel zmlx.mlx builds
    op = zmlx.elementwise("x * sigmoid(x) * y", ["x", "y"])
    name, header, body, dtypes = zm.cuda_kernel_parts(op.source("cuda", "vjp", ["bf16", "bf16"]), 3, 2)
    assert name.startswith("zmlx_k_ew_") and dtypes == ["bfloat16", "bfloat16"]
    assert f"static __device__ __forceinline__ void {name}(" in header
    assert f'extern "C" __global__ void {name}(' not in header
    assert "ZMLX_CUDA_PRELUDE" in header and "ew_strided" not in header
    assert f"::{name}((const zmlx_bf16*)a0, (const zmlx_bf16*)a1, (const zmlx_bf16*)a2, " \
           "(zmlx_bf16*)o0, (zmlx_bf16*)o1, zmlx_n" in body
    with pytest.raises(ValueError):
        zm.cuda_kernel_parts(op.source("cuda", "forward", ["f32", "f32"]), 3, 1)
    f = zm.elementwise("x * y", ["x", "y"])
    assert f.path == ("mlx-cuda" if zm.on_mlx_cuda() else "zmlx")


@pytest.mark.skipif(not zm.on_mlx_cuda(), reason="MLX is not running on its CUDA backend here "
                    "(needs mlx[cuda13] and an NVIDIA GPU)")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_elementwise_as_an_mlx_cuda_kernel(rng, dtype):
    f = zm.elementwise("x * sigmoid(x) * y + (x > 0 ? x : 0.1 * x)", ["x", "y"])
    assert f.path == "mlx-cuda"
    dt = getattr(mx, dtype)
    x = mx.array(rng.standard_normal((37, 65)).astype(np.float32)).astype(dt)
    y = mx.array(rng.standard_normal((65,)).astype(np.float32)).astype(dt)  # broadcast

    def ref(x, y):
        return x * mx.sigmoid(x) * y + mx.where(x > 0, x, 0.1 * x)

    tol = 2e-5 if dtype == "float32" else 2e-2
    live = zmlx._core.live_arrays()
    got = f(x, y)
    assert got.dtype == dt and got.shape == (37, 65)
    close(got.astype(mx.float32), ref(x, y).astype(mx.float32), tol)
    gx, gy = mx.grad(lambda x, y: (f(x, y) * x).sum(), argnums=(0, 1))(x, y)
    wx, wy = mx.grad(lambda x, y: (ref(x, y) * x).sum(), argnums=(0, 1))(x, y)
    assert gx.shape == x.shape and gy.shape == y.shape
    close(gx.astype(mx.float32), wx.astype(mx.float32), 10 * tol)
    close(gy.astype(mx.float32), wy.astype(mx.float32), 10 * tol * 37)
    mx.eval(got, gx, gy)
    assert zmlx._core.live_arrays() == live  # no zmlx array was made: the kernels ran in MLX


SCALE_KERNEL = """
  uint i = thread_position_in_grid.x, j = thread_position_in_grid.y;
  uint rows = x_shape[0], cols = x_shape[1];
  if (i < cols && j < rows)
    out[j * cols + i] = (float)x_load(j * cols + i) * scale * K
                        + y_load(j * y_strides[0] + i * y_strides[1]) + n;
"""


def test_kernel_parts_from_zmlx_source():
    k = zmlx.kernel("scale_add", ["x", "y"], ["out"], SCALE_KERNEL,
                    params=[("scale", "f32"), ("n", "i32")])
    name, header, body = zm.kernel_parts(k.source("cuda", ["bf16", "f32", "f32"], {"K": 2}), ["x", "y"],
                                         ["out"], ["scale", "n"])
    assert f"static __device__ __forceinline__ void {name}(" in header
    assert "__grid_constant__" not in header.split(name + "(")[1].split(")")[0]
    for part in ("zs0.v[d] = (int)a0_shape[d]", "zt1.v[d] = (long long)a1_strides[d]",
                 f"::{name}((const zmlx_bf16*)a0, zs0, ", "(float*)o0",
                 "((float const*)p0)[0], ((int const*)p1)[0], ZMLX_GX, ZMLX_GY, ZMLX_GZ);"):
        assert part in body, part
    with pytest.raises(ValueError):
        zm.kernel_parts(k.source("cuda", ["f32", "f32", "f32"], {"K": 1}), ["x", "z"], ["out"],
                        ["scale", "n"])
    with pytest.raises(ValueError):
        zm.kernel("k", ["x"], ["out"], "out[0] = x[0];", params=[("a", "f64")])


@pytest.mark.skipif(not zm.on_mlx_cuda(), reason="MLX is not running on its CUDA backend here "
                    "(needs mlx[cuda13] and an NVIDIA GPU)")
def test_dialect_kernel_as_an_mlx_cuda_kernel(rng):
    k = zm.kernel("scale_add", ["x", "y"], ["out"], SCALE_KERNEL, ensure_row_contiguous=False,
                  params=[("scale", "f32"), ("n", "i32")])
    x = mx.array(rng.standard_normal((19, 70)).astype(np.float32)).astype(mx.bfloat16)
    base = mx.array(rng.standard_normal((70, 19)).astype(np.float32))
    y = base.T  # a transposed view: strides (1, 19)
    live = zmlx._core.live_arrays()
    (out,) = k(inputs=[x, y], output_shapes=[(19, 70)], output_dtypes=[mx.float32],
               grid=(70, 19, 1), threadgroup=(32, 8, 1), params=[0.5, 3], template=[("K", 1)])
    want = np.array(x.astype(mx.float32)) * 0.5 + np.array(base).T + 3
    close(out, want, 1e-5)
    (again,) = k(inputs=[x, y], output_shapes=[(19, 70)], output_dtypes=[mx.float32],
                 grid=(70, 19, 1), threadgroup=(32, 8, 1), params=[-2.0, 0], init_value=7.0,
                 template=[("K", 3)])
    close(again, np.array(x.astype(mx.float32)) * -6.0 + np.array(base).T, 1e-5)
    mx.eval(out, again)
    assert zmlx._core.live_arrays() == live
