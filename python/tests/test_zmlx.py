"""zmlx from Python against NumPy references: arrays and DLPack, expression
ops and @zmlx.jit with gradients, the kernel object, the catalog, errors.
Fresh random inputs per run (the seed is printed on failure by pytest's
report of `seed`)."""
import gc
import math
import os

import numpy as np
import pytest

import zmlx

SEED = int(os.environ.get("ZMLX_TEST_SEED", np.random.SeedSequence().entropy % (1 << 32)))
print(f"zmlx python tests: ZMLX_TEST_SEED={SEED}")


@pytest.fixture
def rng():
    return np.random.default_rng(SEED)


TOL = {"f32": (1e-5, 1e-5), "f16": (2e-3, 2e-3), "bf16": (1.6e-2, 1.6e-2)}


def close(got, want, dtype="f32", scale=1.0):
    rtol, atol = TOL[dtype]
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# ------------------------------------------------------------------ arrays

def test_numpy_round_trip_every_dtype(rng):
    for np_dt, name in [(np.float32, "f32"), (np.float16, "f16"), (np.int32, "i32"),
                        (np.int64, "i64"), (np.uint8, "u8"), (np.int8, "i8"), (np.float64, "f64")]:
        x = (rng.standard_normal((3, 5)) * 10).astype(np_dt)
        a = zmlx.asarray(x)
        assert a.dtype == name and a.shape == (3, 5)
        back = np.asarray(a)
        assert back.dtype == np_dt
        np.testing.assert_array_equal(back, x)


def test_dlpack_from_numpy_and_strides(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    view = x[:, ::2]  # strided: DLPack carries the strides
    a = zmlx.from_dlpack(view)
    np.testing.assert_array_equal(np.asarray(a), view)
    # a capsule is consumed once
    cap = x.__dlpack__()
    zmlx.from_dlpack(cap)
    with pytest.raises(ValueError):
        zmlx.from_dlpack(cap)


def test_dlpack_export():
    a = zmlx.arange(0, 1, 12, "f32")
    dev_type, dev_id = a.__dlpack_device__()
    info = zmlx.default_device()
    assert dev_type == (2 if info.startswith("cuda") else 4) and dev_id == int(info.split(":")[1])
    cap = a.__dlpack__()
    assert "dltensor" in repr(cap)
    # a consumer that asks for the CPU gets a host copy
    host = a.__dlpack__(dl_device=(1, 0))
    b = zmlx.from_dlpack(host)
    np.testing.assert_array_equal(np.asarray(b), np.arange(12, dtype=np.float32))
    if hasattr(np, "from_dlpack"):
        try:
            n = np.from_dlpack(a, device="cpu")
        except TypeError:  # NumPy before 2.1 has no device argument
            n = None
        if n is not None:
            np.testing.assert_array_equal(n, np.arange(12, dtype=np.float32))


def test_bf16_through_buffers(rng):
    x = rng.standard_normal(7).astype(np.float32)
    a = zmlx.astype(zmlx.asarray(x), "bf16")
    assert a.dtype == "bf16"
    back = np.asarray(zmlx.astype(a, "f32"))
    np.testing.assert_allclose(back, x, rtol=2 ** -8)


def test_creators_and_random():
    z = zmlx.zeros((2, 3), "f16")
    assert z.dtype == "f16" and np.all(np.asarray(z) == 0)
    r1 = np.asarray(zmlx.random_uniform((1000,), seed=5, low=-1, high=1))
    r2 = np.asarray(zmlx.random_uniform((1000,), seed=5, low=-1, high=1))
    np.testing.assert_array_equal(r1, r2)
    assert -1 <= r1.min() and r1.max() < 1 and abs(r1.mean()) < 0.1
    n = np.asarray(zmlx.random_normal((4000,), seed=9))
    assert abs(n.mean()) < 0.1 and abs(n.std() - 1) < 0.1


def test_operators(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    y = rng.standard_normal((4,)).astype(np.float32)
    a, b = zmlx.asarray(x), zmlx.asarray(y)
    close(a + b, x + y)
    close(a * b - 2.0, x * y - 2)
    close(1.0 / (a * a + 1.0), 1 / (x * x + 1))
    close(-a, -x)
    m = rng.standard_normal((4, 5)).astype(np.float32)
    close(a @ zmlx.asarray(m), x @ m, scale=4)
    close(a.T, x.T)


# ------------------------------------------------------- expression ops

@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_elementwise_forward_and_grads(rng, dtype):
    x = rng.uniform(-3, 3, (5, 7)).astype(np.float32)
    y = rng.uniform(-3, 3, (7,)).astype(np.float32)  # broadcast
    op = zmlx.elementwise("x * sigmoid(x) * y", ["x", "y"])
    a, b = zmlx.astype(zmlx.asarray(x), dtype), zmlx.astype(zmlx.asarray(y), dtype)
    xr, yr = np.asarray(zmlx.astype(a, "f32")), np.asarray(zmlx.astype(b, "f32"))
    out = op(a, b)
    assert out.dtype == dtype
    close(zmlx.astype(out, "f32"), xr * sigmoid(xr) * yr, dtype, scale=3)
    gx, gy = zmlx.grad(lambda p, q: zmlx.sum(op(p, q)), argnums=[0, 1])(a, b)
    s = sigmoid(xr)
    close(zmlx.astype(gx, "f32"), (s + xr * s * (1 - s)) * yr, dtype, scale=3)
    close(zmlx.astype(gy, "f32"), (xr * s).sum(axis=0), dtype, scale=30)


def test_elementwise_params_and_source():
    op = zmlx.elementwise("alpha * x + beta", ["x"], ["alpha", "beta"])
    a = zmlx.arange(0, 1, 5)
    close(op(a, params=[2.0, 1.0]), 2 * np.arange(5) + 1)
    close(op(a, params=[-1.0, 0.5]), -np.arange(5) + 0.5)  # no recompile
    src = op.source("cuda")
    assert "__global__" in src and "extern \"C\"" in src
    with pytest.raises(TypeError):
        op(a)  # parameters missing


def test_op_vjp_and_jvp(rng):
    x = rng.uniform(-2, 2, 9).astype(np.float32)
    op = zmlx.elementwise("tanh(x) * x", ["x"])
    a = zmlx.asarray(x)
    g = rng.uniform(-1, 1, 9).astype(np.float32)
    (gx,) = op.vjp([a], zmlx.asarray(g))
    d = (1 - np.tanh(x) ** 2) * x + np.tanh(x)
    close(gx, g * d)
    out, t = zmlx.jvp(lambda p: op(p), [x], [np.ones(9, np.float32)])
    close(out, np.tanh(x) * x)
    close(t, d)
    out, grads = zmlx.vjp(lambda p: op(p), [x], g)
    close(grads[0], g * d)


def test_reduce_and_map_reduce(rng):
    x = rng.uniform(-1, 1, (4, 33)).astype(np.float32)
    a = zmlx.asarray(x)
    sumsq = zmlx.reduce("0", "acc + x", map="x * x", combine="a + b")
    close(sumsq(a), (x * x).sum(axis=1), scale=33)
    norm = zmlx.map_reduce([{"init": "0", "map": "x * x", "update": "acc + x", "combine": "a + b",
                             "finalize": "rsqrt(acc / n + 1e-6)"}], "x * r0")
    close(norm(a), x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-6), scale=3)


def _jit_source_fn(x, y, *, k=2.0):
    s = math.exp(-x)
    t = k * x / (1 + s)
    return t if x > 0.5 and y < 2 else zmlx.sigmoid(y) * abs(x) - max(x, y) ** 2


def test_jit_lowers_and_differentiates(rng):
    f = zmlx.jit(_jit_source_fn)
    assert "?" in f.expr and "exp(" in f.expr and "sigmoid(" in f.expr
    x = rng.uniform(-2, 2, 64).astype(np.float32)
    y = rng.uniform(-3, 3, 64).astype(np.float32)

    def ref(x, y, k):
        t = k * x / (1 + np.exp(-x))
        return np.where((x > 0.5) & (y < 2), t, sigmoid(y) * np.abs(x) - np.maximum(x, y) ** 2)

    close(f(x, y), ref(x, y, 2.0), scale=10)
    close(f(x, y, k=-0.5), ref(x, y, -0.5), scale=10)
    # gradients through the lowered expression, against central differences in f64
    gx = np.asarray(zmlx.grad(lambda p, q: zmlx.sum(f(p, q)))(zmlx.asarray(x), zmlx.asarray(y)))
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    h = 1e-6
    num = (ref(xd + h, yd, 2.0) - ref(xd - h, yd, 2.0)) / (2 * h)
    near_kink = np.abs(xd - 0.5) < 1e-3
    np.testing.assert_allclose(gx[~near_kink], num[~near_kink], rtol=1e-3, atol=1e-3)


def _jit_loop(x):
    for _ in range(3):
        x = x + 1
    return x


def test_jit_rejects_what_it_cannot_lower():
    with pytest.raises(zmlx._jit.JitError) as e:
        zmlx.jit(_jit_loop)
    assert "For" in str(e.value) and e.value.lineno == _jit_loop.__code__.co_firstlineno + 1


# ------------------------------------------------------------ kernel object

def test_kernel_object(rng):
    k = zmlx.kernel("axpb", ["x", "y"], ["out"],
                    "uint i = thread_position_in_grid.x;\n"
                    "out_store(i, x_load(i) * y_load(i) + b);\n",
                    params=[("b", "f32")])
    x = rng.standard_normal((7, 301)).astype(np.float32)
    y = rng.standard_normal((7, 301)).astype(np.float32)
    (out,) = k([zmlx.asarray(x), zmlx.asarray(y)], params=[1.5])
    assert out.shape == (7, 301)
    close(out, x * y + 1.5, scale=3)
    # explicit outputs, grid and a template
    k2 = zmlx.kernel("scale_t", ["x"], ["out"],
                     "uint i = thread_position_in_grid.x;\n"
                     "if (i < (uint)grid_size.x) out_store(i, (T)(x_load(i) * (float)N));\n")
    (o2,) = k2([zmlx.asarray(x)], output_shapes=[x.shape], output_dtypes=["f32"],
               grid=[x.size], threadgroup=[64], template={"T": "f32", "N": 3})
    close(o2, 3 * x, scale=3)
    src = k2.source("cuda", template={"T": "f16", "N": 2})
    assert "__global__" in src and "x_load" in src


def test_kernel_compile_error_has_log_and_line():
    k = zmlx.kernel("broken", ["x"], ["out"], "uint i = thread_position_in_grid.x;\nout_store(i, nope);\n")
    with pytest.raises(zmlx.Error) as e:
        k([zmlx.arange(0, 1, 4)])
    assert e.value.status == "ZMLX_ERR_COMPILE"
    assert "nope" in str(e.value)


# ------------------------------------------------------------------ catalog

def softmax_ref(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_catalog_vs_numpy(rng, dtype):
    x = rng.standard_normal((6, 40)).astype(np.float32) * 2
    w = rng.standard_normal(40).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)

    def dev(v):
        return zmlx.astype(zmlx.asarray(v), dtype)

    def host(a):
        return np.asarray(zmlx.astype(a, "f32")).astype(np.float64)

    xa, wa, ba = dev(x), dev(w), dev(b)
    xr, wr, br = host(xa), host(wa), host(ba)
    close(host(zmlx.softmax(xa)), softmax_ref(xr), dtype)
    close(host(zmlx.log_softmax(xa)), np.log(softmax_ref(xr)), dtype, scale=8)
    lse = np.log(np.exp(xr).sum(axis=-1))
    close(host(zmlx.logsumexp(xa)), lse, dtype, scale=8)
    rms = xr / np.sqrt((xr * xr).mean(axis=-1, keepdims=True) + 1e-6) * wr
    close(host(zmlx.rmsnorm(xa, wa, 1e-6)), rms, dtype, scale=8)
    mu = xr.mean(axis=-1, keepdims=True)
    ln = (xr - mu) / np.sqrt(((xr - mu) ** 2).mean(axis=-1, keepdims=True) + 1e-5) * wr + br
    close(host(zmlx.layernorm(xa, wa, ba, 1e-5)), ln, dtype, scale=8)
    close(host(zmlx.silu(xa)), xr * sigmoid(xr), dtype, scale=4)
    gelu = 0.5 * xr * (1 + np.vectorize(math.erf)(xr / math.sqrt(2)))
    close(host(zmlx.gelu(xa)), gelu, dtype, scale=4)
    close(host(zmlx.swiglu(xa, xa)), xr * sigmoid(xr) * xr, dtype, scale=16)
    close(host(zmlx.swiglu_split(xa)), xr[:, :20] * sigmoid(xr[:, :20]) * xr[:, 20:], dtype, scale=16)
    y, h = zmlx.add_rmsnorm(xa, xa, wa, 1e-6)
    close(host(h), host(zmlx.add(xa, xa)), dtype, scale=8)
    causal = np.where(np.arange(40)[None, :] > np.arange(6)[:, None] + 34, -np.inf, xr * 0.5)
    close(host(zmlx.softmax_masked(xa, None, 0.5, True)), softmax_ref(causal), dtype)
    close(host(zmlx.reduce_last(xa, "var")), xr.var(axis=-1), dtype, scale=8)
    vals, idx = zmlx.topk(xa, 3)
    order = np.argsort(-xr, axis=-1, kind="stable")[:, :3]
    np.testing.assert_array_equal(np.asarray(idx), order)
    np.testing.assert_array_equal(np.asarray(zmlx.argmax(xa)), xr.argmax(axis=-1))


def test_cross_entropy_and_its_gradient(rng):
    x = rng.standard_normal((5, 11)).astype(np.float32) * 3
    t = rng.integers(0, 11, 5).astype(np.int32)
    t[1] = -100
    loss, g = zmlx.cross_entropy(zmlx.asarray(x), zmlx.asarray(t), with_grad=True)
    p = softmax_ref(x.astype(np.float64))
    keep = t != -100
    want = -np.log(p[keep, t[keep]]).mean()
    close(loss, want, scale=4)
    onehot = np.zeros_like(p)
    onehot[np.arange(5)[keep], t[keep]] = 1
    gw = (p - onehot) * keep[:, None] / keep.sum()
    close(g, gw)
    # through autograd too
    gg = zmlx.grad(lambda l: zmlx.cross_entropy(l, zmlx.asarray(t)))(zmlx.asarray(x))
    close(gg, gw)


def test_rope_and_dropout(rng):
    B, S, H, D = 2, 5, 3, 8
    x = rng.standard_normal((B, S, H, D)).astype(np.float32)
    out = np.asarray(zmlx.rope(zmlx.asarray(x)))
    half = D // 2
    inv = 10000.0 ** (-np.arange(half) * 2.0 / D)
    ang = np.arange(S)[:, None] * inv[None, :]
    c, s = np.cos(ang)[None, :, None, :], np.sin(ang)[None, :, None, :]
    want = np.concatenate([x[..., :half] * c - x[..., half:] * s,
                           x[..., :half] * s + x[..., half:] * c], axis=-1)
    close(out, want, scale=2)
    # per-token positions [B, S] (left padding in row 0, a restart in row 1)
    pos = np.array([[0, 0, 0, 1, 2], [0, 1, 0, 1, 2]], dtype=np.int32)
    out = np.asarray(zmlx.rope(zmlx.asarray(x), positions=zmlx.asarray(pos)))
    ang = pos[:, :, None, None] * inv[None, None, None, :]
    c, s = np.cos(ang), np.sin(ang)
    want = np.concatenate([x[..., :half] * c - x[..., half:] * s,
                           x[..., :half] * s + x[..., half:] * c], axis=-1)
    close(out, want, scale=2)
    with pytest.raises(zmlx.Error, match=r"positions must be \[batch, seq\]"):
        zmlx.rope(zmlx.asarray(x), positions=zmlx.asarray(pos[:, :4].copy()))
    ones = zmlx.ones((100000,))
    d = np.asarray(zmlx.dropout(ones, 0.25, seed=3))
    kept = d != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(d[kept], 1 / 0.75, rtol=1e-6)


def test_quantize_int8_round_trip(rng):
    x = rng.standard_normal((4, 64)).astype(np.float32)
    q, s = zmlx.quantize_int8(zmlx.asarray(x))
    assert q.dtype == "i8" and s.shape == (4,)
    back = np.asarray(zmlx.dequantize_int8(q, s))
    assert np.all(np.abs(back - x) <= np.asarray(s)[:, None] / 2 + 1e-7)


# ------------------------------------------------------------------- errors

def test_parse_error_shows_caret():
    with pytest.raises(zmlx.Error) as e:
        zmlx.elementwise("x +* y", ["x", "y"])
    msg = str(e.value)
    assert e.value.status == "ZMLX_ERR_PARSE"
    assert "^" in msg and "1:" in msg


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(zmlx.Error) as e:
        zmlx.add(zmlx.zeros((2, 3)), zmlx.zeros((4, 5)))
    assert "[2, 3]" in str(e.value) and "[4, 5]" in str(e.value)


def test_bad_arguments_raise():
    with pytest.raises(TypeError):
        zmlx.softmax(np.zeros(3))  # not an Array
    with pytest.raises(TypeError):
        zmlx.zeros((2,), "complex64")
    with pytest.raises(zmlx.Error):
        zmlx.rmsnorm(zmlx.zeros((2, 3)), zmlx.zeros((4,)))
    with pytest.raises(ValueError):
        zmlx.cross_entropy(zmlx.zeros((2, 3)), zmlx.asarray(np.zeros(2, np.int32)), reduction="avg")


def test_python_exception_in_grad_function_propagates():
    class Boom(Exception):
        pass

    def f(x):
        raise Boom("from the function")

    with pytest.raises(Boom):
        zmlx.grad(f)(zmlx.zeros((3,)))
    with pytest.raises(TypeError):
        zmlx.grad(lambda x: 3.0)(zmlx.zeros((3,)))


def test_no_leaked_arrays(rng):
    gc.collect()
    before = zmlx.live_arrays()
    x = zmlx.asarray(rng.standard_normal((3, 4)).astype(np.float32))
    for _ in range(3):
        zmlx.grad(lambda p: zmlx.sum(zmlx.softmax(p) * p))(x)
        zmlx.softmax(x).tobytes()
    del x
    gc.collect()
    assert zmlx.live_arrays() == before


def test_cache_stats():
    s = zmlx.cache_stats()
    assert {"memory_hits", "misses", "compile_ms", "dir"} <= set(s)


def test_attention_vs_numpy_and_grads(rng):
    B, Hq, Hkv, Sq, Sk, D = 2, 4, 2, 5, 9, 16
    q = rng.standard_normal((B, Hq, Sq, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, Sk, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, Sk, D)).astype(np.float32)
    kk, vv = np.repeat(k, Hq // Hkv, axis=1), np.repeat(v, Hq // Hkv, axis=1)
    s = q.astype(np.float64) @ kk.transpose(0, 1, 3, 2) / math.sqrt(D)
    s = np.where(np.arange(Sk)[None, :] <= np.arange(Sq)[:, None] + Sk - Sq, s, -np.inf)
    p = softmax_ref(s)
    out, lse = zmlx.attention(zmlx.asarray(q), zmlx.asarray(k), zmlx.asarray(v), causal=True,
                              with_lse=True)
    close(out, p @ vv, scale=4)
    close(lse, np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1)) + s.max(-1), scale=8)
    g = rng.standard_normal(out.shape).astype(np.float32)
    gq, gk, gv = zmlx.grad(lambda a, b, c: zmlx.sum(zmlx.attention(a, b, c, causal=True) * zmlx.asarray(g)),
                           argnums=[0, 1, 2])(q, k, v)
    dp = g @ vv.transpose(0, 1, 3, 2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) / math.sqrt(D)
    close(gq, ds @ kk, scale=8)
    close(gk, (ds.transpose(0, 1, 3, 2) @ q).reshape(B, Hkv, Hq // Hkv, Sk, D).sum(2), scale=8)
    close(gv, (p.transpose(0, 1, 3, 2) @ g).reshape(B, Hkv, Hq // Hkv, Sk, D).sum(2), scale=8)
    with pytest.raises(zmlx.Error) as e:
        zmlx.attention(zmlx.asarray(q), zmlx.asarray(k[:, :, :, :8]), zmlx.asarray(v))
    assert e.value.status == "ZMLX_ERR_SHAPE" and "[2, 2, 9, 8]" in str(e.value)


ACTIVATIONS = {
    "exp": np.exp, "tanh": np.tanh, "sigmoid": sigmoid, "relu": lambda x: np.maximum(x, 0),
    "silu": lambda x: x * sigmoid(x), "softplus": lambda x: np.log1p(np.exp(x)),
    "mish": lambda x: x * np.tanh(np.log1p(np.exp(x))),
    "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_vs_numpy(rng, name):
    x = rng.uniform(-4, 4, (3, 50)).astype(np.float32)
    close(getattr(zmlx, name)(zmlx.asarray(x)), ACTIVATIONS[name](x.astype(np.float64)), scale=4)
    close(zmlx.elu(zmlx.asarray(x), 0.5), np.where(x > 0, x, 0.5 * np.expm1(x)))
    close(zmlx.log(zmlx.asarray(np.abs(x) + 0.1)), np.log(np.abs(x) + 0.1))


def test_glu_family_and_reductions(rng):
    x = rng.uniform(-3, 3, (4, 16)).astype(np.float32)
    b = rng.uniform(-1, 1, 16).astype(np.float32)
    xa, ba = zmlx.asarray(x), zmlx.asarray(b)
    gelu = lambda t: 0.5 * t * (1 + np.vectorize(math.erf)(t / math.sqrt(2)))
    close(zmlx.geglu(xa, xa), gelu(x.astype(np.float64)) * x, scale=8)
    close(zmlx.geglu_split(xa), gelu(x[:, :8].astype(np.float64)) * x[:, 8:], scale=8)
    close(zmlx.bias_silu(xa, ba), (x + b) * sigmoid(x + b), scale=4)
    close(zmlx.bias_gelu(xa, ba), gelu((x + b).astype(np.float64)), scale=4)
    h = x + b
    close(zmlx.bias_swiglu(xa, ba), h[:, :8] * sigmoid(h[:, :8]) * h[:, 8:], scale=8)
    for kind, ref in (("sum", x.sum(-1)), ("mean", x.mean(-1)), ("max", x.max(-1)),
                      ("min", x.min(-1)), ("std", x.std(-1))):
        close(zmlx.reduce_last(xa, kind), ref, scale=16)
    np.testing.assert_array_equal(np.asarray(zmlx.argmin(xa)), x.argmin(-1))
    close(zmlx.sum(xa, axes=[0]), x.sum(0), scale=4)
    close(zmlx.mean(xa), x.mean(), scale=4)
    lsm = zmlx.log_softmax(xa)
    close(zmlx.add_layernorm(xa, xa, ba, ba)[1], 2 * x, scale=2)
    assert lsm.shape == (4, 16)


def test_kv_cache_fork_and_decode(rng):
    c = zmlx.KVCache(layers=1, kv_heads=2, head_dim=8, num_blocks=8, block_size=8)
    a = c.add_sequence()
    c.extend(a, 11)
    k = rng.standard_normal((11, 2, 8)).astype(np.float32)
    v = rng.standard_normal((11, 2, 8)).astype(np.float32)
    c.write(a, 0, 0, zmlx.asarray(k), zmlx.asarray(v))
    b = c.fork(a)
    assert c.stats()["used_blocks"] == 2  # the fork shares them
    c.extend(b, 1)
    k1 = rng.standard_normal((1, 2, 8)).astype(np.float32)
    c.write(b, 0, 11, zmlx.asarray(k1), zmlx.asarray(k1))  # copy-on-write of the shared block
    ka, _ = c.read(a, 0)
    kb, _ = c.read(b, 0)
    np.testing.assert_array_equal(np.asarray(ka), k)
    np.testing.assert_array_equal(np.asarray(kb), np.concatenate([k, k1]))
    q = rng.standard_normal((1, 4, 8)).astype(np.float32)
    out = np.asarray(c.attention(0, zmlx.asarray(q), [a]))
    kk = np.repeat(k, 2, axis=1).astype(np.float64)  # GQA: kv head h // 2
    vv = np.repeat(v, 2, axis=1).astype(np.float64)
    s = np.einsum("hd,thd->ht", q[0], kk) / math.sqrt(8)
    p = softmax_ref(s)
    close(out[0], np.einsum("ht,thd->hd", p, vv), scale=4)
    c.free_sequence(b)
    with pytest.raises(zmlx.Error) as e:
        c.extend(b, 1)
    assert "was freed" in str(e.value)
    with pytest.raises(zmlx.Error) as e:
        c.extend(a, 1000)
    assert e.value.status == "ZMLX_ERR_OUT_OF_MEMORY"


def rope_at(x, pos, base=10000.0, scale=1.0):
    """Half-split RoPE of x [..., D] at positions pos (broadcast over x's
    leading dims but the last two)."""
    D = x.shape[-1]
    half = D // 2
    inv = base ** (-np.arange(half) * 2.0 / D)
    ang = (np.asarray(pos, dtype=np.float64) * scale)[..., None, None] * inv
    c, s = np.cos(ang), np.sin(ang)
    return np.concatenate([x[..., :half] * c - x[..., half:] * s,
                           x[..., :half] * s + x[..., half:] * c], axis=-1)


def test_kv_cache_rope_writes(rng):
    """write_rope (one sequence's tokens) and write_rope_step (a token of
    each sequence at its own position, one launch): the cache holds k
    rotated at each token's position, v as given, and q comes back rotated
    the same way."""
    c = zmlx.KVCache(layers=2, kv_heads=2, head_dim=8, num_blocks=8, block_size=8)
    a, b = c.add_sequence(), c.add_sequence()
    k = rng.standard_normal((5, 2, 8)).astype(np.float32)
    v = rng.standard_normal((5, 2, 8)).astype(np.float32)
    q = rng.standard_normal((5, 4, 8)).astype(np.float32)
    c.extend(a, 5)
    qa = np.asarray(c.write_rope(a, 1, 0, zmlx.asarray(k), zmlx.asarray(v), zmlx.asarray(q),
                                 base=500.0, scale=0.5))
    close(qa, rope_at(q, np.arange(5), 500.0, 0.5), scale=2)
    ka, va = c.read(a, 1)
    close(np.asarray(ka), rope_at(k, np.arange(5), 500.0, 0.5), scale=2)
    np.testing.assert_array_equal(np.asarray(va), v)
    c.extend(b, 9)
    c.write(b, 1, 0, zmlx.asarray(np.zeros((9, 2, 8), np.float32)),
            zmlx.asarray(np.zeros((9, 2, 8), np.float32)))
    c.extend(a, 1)
    c.extend(b, 1)  # a's next token is position 5, b's 9
    ks = rng.standard_normal((2, 2, 8)).astype(np.float32)
    vs = rng.standard_normal((2, 2, 8)).astype(np.float32)
    qs = rng.standard_normal((2, 4, 8)).astype(np.float32)
    qo = np.asarray(c.write_rope_step(1, [b, a], zmlx.asarray(ks), zmlx.asarray(vs),
                                      zmlx.asarray(qs)))
    pos = np.array([9, 5])
    close(qo, rope_at(qs, pos), scale=2)
    kb, vb = c.read(b, 1)
    ka, va = c.read(a, 1)
    close(np.asarray(kb)[9], rope_at(ks[0], 9), scale=2)
    close(np.asarray(ka)[5], rope_at(ks[1], 5), scale=2)
    np.testing.assert_array_equal(np.asarray(vb)[9], vs[0])
    np.testing.assert_array_equal(np.asarray(va)[5], vs[1])
    with pytest.raises(zmlx.Error, match="in the batch twice"):
        c.write_rope_step(1, [a, a], zmlx.asarray(ks), zmlx.asarray(vs), zmlx.asarray(qs))
    with pytest.raises(ValueError, match="half_split"):
        c.write_rope_step(1, [a, b], zmlx.asarray(ks), zmlx.asarray(vs), zmlx.asarray(qs),
                          mode="sideways")


def test_kv_cache_decode_several_tokens(rng):
    """q [batch, T, heads, dim]: each sequence's last T tokens, token t
    attending to the first len - (T - 1 - t) positions."""
    c = zmlx.KVCache(layers=1, kv_heads=1, head_dim=8, num_blocks=4, block_size=8)
    a = c.add_sequence()
    c.extend(a, 10)
    k = rng.standard_normal((10, 1, 8)).astype(np.float32)
    v = rng.standard_normal((10, 1, 8)).astype(np.float32)
    c.write(a, 0, 0, zmlx.asarray(k), zmlx.asarray(v))
    q = rng.standard_normal((1, 3, 2, 8)).astype(np.float32)
    out = np.asarray(c.attention(0, zmlx.asarray(q), [a]))
    assert out.shape == (1, 3, 2, 8)
    for t in range(3):
        n = 10 - (2 - t)
        s = q[0, t] @ k[:n, 0].T / math.sqrt(8)
        close(out[0, t], softmax_ref(s) @ v[:n, 0], scale=4)


# ------------------------------------------------------------ model layer

def adamw_ref(p, g, m, v, lr, step, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    p = p * (1 - lr * wd)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    denom = np.sqrt(v) / math.sqrt(1 - b2 ** step) + eps
    return p - lr / (1 - b1 ** step) * m / denom, m, v


def test_adamw_object_matches_numpy(rng):
    shapes = [(3, 5), (7,), (2, 2, 2), (1,), (64,), (4, 9), (3,), (11,)]  # 8 tensors: 2 launches
    ps = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    params = [zmlx.asarray(p) for p in ps]
    opt = zmlx.AdamW(params, weight_decay=0.01)
    ms = [np.zeros_like(p, dtype=np.float64) for p in ps]
    vs = [np.zeros_like(p, dtype=np.float64) for p in ps]
    ref = [p.astype(np.float64) for p in ps]
    for step in range(1, 4):
        gs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        lr = 1e-2 * step
        norm = opt.step([zmlx.asarray(g) for g in gs], lr)
        want_norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in gs))
        close(np.asarray(norm), want_norm)
        for i, g in enumerate(gs):
            ref[i], ms[i], vs[i] = adamw_ref(ref[i], g.astype(np.float64), ms[i], vs[i], lr, step,
                                             wd=0.01)
    for i in range(len(shapes)):
        close(np.asarray(params[i]), ref[i])
        close(np.asarray(opt.state(i)["exp_avg"]), ms[i])
    assert opt.state(0)["steps"] == 3 and opt.state(0)["master"] is None


def test_adamw_step_clips_and_refuses_bad_lists(rng):
    p = zmlx.asarray(rng.standard_normal(10).astype(np.float32))
    g = rng.standard_normal(10).astype(np.float32) * 10
    m, v = zmlx.zeros((10,)), zmlx.zeros((10,))
    p0 = np.asarray(p).astype(np.float64)
    norm = zmlx.adamw_step([p], [zmlx.asarray(g)], [m], [v], 1e-3, 1, max_grad_norm=1.0)
    n = float(np.linalg.norm(g.astype(np.float64)))
    close(np.asarray(norm), n)
    want, _, _ = adamw_ref(p0, g.astype(np.float64) / (n + 1e-6), 0, 0, 1e-3, 1)
    close(np.asarray(p), want)
    with pytest.raises(zmlx.Error, match=r"exp_avg\[0\] has shape \[3\], params\[0\] \[10\]"):
        zmlx.adamw_step([p], [zmlx.asarray(g)], [zmlx.zeros((3,))], [v], 1e-3, 2)
    with pytest.raises(ValueError, match="grads has 2 arrays, params 1"):
        zmlx.adamw_step([p], [zmlx.asarray(g)] * 2, [m], [v], 1e-3, 2)


def softmax_np(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def silu_np(x):
    return x * sigmoid(x)


def test_moe_gate_dispatch_and_experts_match_numpy(rng):
    T, E, k, H, I = 9, 8, 2, 16, 24
    logits = rng.standard_normal((T, E)).astype(np.float32)
    w, ix = zmlx.moe_gate(zmlx.asarray(logits), k=k, renormalize=True)
    w, ix = np.asarray(w), np.asarray(ix)
    want_ix = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(ix, want_ix)
    p = softmax_np(logits.astype(np.float64))
    chosen = np.take_along_axis(p, want_ix, 1)
    close(w, chosen / chosen.sum(1, keepdims=True))
    off, order, slot = (np.asarray(a) for a in zmlx.moe_dispatch(zmlx.asarray(ix), E))
    flat = ix.reshape(-1)
    np.testing.assert_array_equal(order, np.argsort(flat, kind="stable"))
    np.testing.assert_array_equal(off, np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=E))]))
    np.testing.assert_array_equal(slot[order], np.arange(T * k))
    x = rng.standard_normal((T, H)).astype(np.float32)
    w1 = (rng.standard_normal((E, I, H)) * 0.2).astype(np.float32)
    w3 = (rng.standard_normal((E, I, H)) * 0.2).astype(np.float32)
    w2 = (rng.standard_normal((E, H, I)) * 0.2).astype(np.float32)
    y = np.asarray(zmlx.moe_experts(zmlx.asarray(x), zmlx.asarray(w), zmlx.asarray(ix),
                                    zmlx.asarray(w1), zmlx.asarray(w3), zmlx.asarray(w2)))
    want = np.zeros((T, H))
    for t in range(T):
        for j in range(k):
            e = ix[t, j]
            h = silu_np(w1[e] @ x[t]) * (w3[e] @ x[t])
            want[t] += w[t, j] * (w2[e] @ h)
    close(y, want)
    with pytest.raises(zmlx.Error, match="k = 9 with 8 experts"):
        zmlx.moe_gate(zmlx.asarray(logits), k=9)
    with pytest.raises(ValueError, match="scoring is"):
        zmlx.moe_gate(zmlx.asarray(logits), scoring="argmax")


def test_moe_layer_gradient_reaches_every_weight(rng):
    T, E, H, I = 5, 4, 8, 12
    arrs = [rng.standard_normal(s).astype(np.float32) * 0.3
            for s in [(T, H), (E, H), (E, I, H), (E, I, H), (E, H, I)]]
    xs = [zmlx.asarray(a) for a in arrs]

    def loss(x, router, w1, w3, w2):
        return zmlx.sum(zmlx.moe(x, router, w1, w3, w2, k=2, scoring="sigmoid", renormalize=True))

    grads = zmlx.grad(loss, argnums=[0, 1, 2, 3, 4])(*xs)
    for g, a in zip(grads, arrs):
        assert g.shape == a.shape
        assert np.abs(np.asarray(g)).sum() > 0  # every input gets a gradient (values: zmlx check)


def test_embedding_rows_and_gradient(rng):
    V, D = 11, 6
    table = rng.standard_normal((V, D)).astype(np.float32)
    ids = np.array([[1, 3, 3, 10], [0, -1, 11, 3]], dtype=np.int32)
    got = zmlx.embedding(zmlx.asarray(table), zmlx.asarray(ids)).numpy()
    want = np.where(((ids >= 0) & (ids < V))[..., None], table[np.clip(ids, 0, V - 1)], 0)
    np.testing.assert_array_equal(got, want)
    g = rng.standard_normal((2, 4, D)).astype(np.float32)
    _, (dt,) = zmlx.vjp(lambda t: zmlx.embedding(t, zmlx.asarray(ids)), [table], g)
    want_dt = np.zeros_like(table)
    for t, i in enumerate(ids.reshape(-1)):
        if 0 <= i < V:
            want_dt[i] += g.reshape(-1, D)[t]
    close(dt.numpy(), want_dt)


def test_language_model_checkpoint_read_by_safetensors(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open
    lm = zmlx.LanguageModel(dim=16, layers=2, heads=4, ffn_dim=12, kv_heads=2, experts=4, top_k=2,
                            vocab=13, seed=SEED)
    path = str(tmp_path / "model.safetensors")
    lm.save(path)
    ours = {k: v.numpy() for k, v in lm.parameters().items()}
    theirs = st.load_file(path)
    assert sorted(theirs) == sorted(ours)
    for name, value in ours.items():
        np.testing.assert_array_equal(theirs[name], value)
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
    assert '"experts":4' in meta["zmlx.config"]
    back = zmlx.LanguageModel.load(path)
    for name, value in back.parameters().items():
        np.testing.assert_array_equal(value.numpy(), ours[name])
    tokens = zmlx.asarray(np.array([[1, 2, 3, 4]], dtype=np.int32))
    np.testing.assert_array_equal(back.logits(tokens).numpy(), lm.logits(tokens).numpy())
    (tmp_path / "bad.safetensors").write_bytes(open(path, "rb").read()[:-64])
    with pytest.raises(zmlx.Error) as e:
        zmlx.LanguageModel.load(str(tmp_path / "bad.safetensors"))
    assert "truncated" in str(e.value)


def test_layers_against_numpy_and_their_gradients(rng):
    lin = zmlx.Layer("linear", in_features=5, out_features=3, bias=True, seed=SEED)
    params = lin.parameters()
    assert list(params) == ["weight", "bias"] and lin.config["out_features"] == 3
    w = rng.standard_normal((5, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    got = lin(zmlx.asarray(x), params=[zmlx.asarray(w), zmlx.asarray(b)]).numpy()
    close(got, x @ w + b)
    close(lin(zmlx.asarray(x)).numpy(), x @ params["weight"].numpy() + params["bias"].numpy())
    # the layer's gradient through zmlx.value_and_grad: d sum(x w + b) / dw = sum over rows of x
    loss = zmlx.value_and_grad(lambda w_, b_: zmlx.sum(lin(zmlx.asarray(x), params=[w_, b_])),
                               argnums=(0, 1))
    _, (gw, gb) = loss(w, b)
    close(gw.numpy(), np.broadcast_to(x.reshape(-1, 5).sum(0)[:, None], (5, 3)))
    close(gb.numpy(), np.full(3, 8, np.float32))
    norm = zmlx.Layer("rmsnorm", dim=5, norm_eps=1e-6)
    close(norm(zmlx.asarray(x)).numpy(), x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6))
    with pytest.raises(zmlx.Error) as e:
        lin(zmlx.asarray(x[..., :4]))
    assert "x [..., 5], got [2, 4, 4]" in str(e.value)
    with pytest.raises(ValueError):
        zmlx.Layer("conv", dim=4)
    with pytest.raises(zmlx.Error):
        zmlx.Layer("attention", dim=30, heads=4)


def test_block_layer_decode_matches_full_forward(rng):
    block = zmlx.Layer("block", dim=16, heads=4, kv_heads=2, ffn_dim=24, experts=4, top_k=2,
                       init_std=0.3, seed=SEED)
    assert list(block.parameters())[:6] == ["attn_norm", "wq", "wk", "wv", "wo", "ffn_norm"]
    seq_x = rng.standard_normal((1, 7, 16)).astype(np.float32)
    full = block(zmlx.asarray(seq_x)).numpy()[0]
    cache = zmlx.KVCache(layers=1, kv_heads=2, head_dim=4, num_blocks=4, block_size=8)
    s = cache.add_sequence()
    cache.extend(s, 5)
    pre = block.prefill(cache, 0, s, zmlx.asarray(seq_x[0, :5])).numpy()
    close(pre, full[:5], scale=10)
    for t in (5, 6):
        cache.extend(s, 1)
        step = block.decode(cache, 0, [s], zmlx.asarray(seq_x[0, t:t + 1])).numpy()
        close(step[0], full[t], scale=10)
