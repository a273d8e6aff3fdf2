"""zmlx.capture: a block of ops captured once and replayed with new inputs
written in place gives what the block computes eagerly; what a replay could
not repeat raises inside the block; a failed block leaves no capture open."""
import numpy as np
import pytest

import zmlx


def step(x, w):
    h = zmlx.rmsnorm(x, None, 1e-5)
    y = zmlx.silu(zmlx.matmul(h, w)) * x
    return zmlx.softmax(y) + zmlx.tanh(x)


def test_replay_matches_eager():
    rng = np.random.default_rng(7)
    xv = rng.standard_normal((4, 24)).astype(np.float32)
    wv = rng.standard_normal((24, 24)).astype(np.float32)
    x, w = zmlx.asarray(xv), zmlx.asarray(wv)
    with zmlx.capture() as g:
        y = step(x, w)
    assert g.info()["operations"] >= 7
    np.testing.assert_allclose(np.asarray(y), np.asarray(step(zmlx.asarray(xv), w)), rtol=1e-6)
    for seed in range(3):
        xv = np.random.default_rng(seed).standard_normal((4, 24)).astype(np.float32)
        x.write(xv)
        g.replay()
        want = np.asarray(step(zmlx.asarray(xv), w))
        np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-6)


def test_refusals_and_a_failed_block():
    x = zmlx.zeros((3,))
    with pytest.raises(zmlx.Error, match="host read"):
        with zmlx.capture():
            np.asarray(zmlx.silu(x))
    with pytest.raises(zmlx.Error, match="host write"):
        with zmlx.capture():
            x.write(np.ones(3, np.float32))
    with zmlx.capture() as g:  # the failed blocks left no capture open
        y = zmlx.silu(x)
    g.replay()
    assert np.asarray(y).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="4 values for an array of 3"):
        x.write(np.ones(4, np.float32))
    with pytest.raises(RuntimeError, match="nothing captured"):
        zmlx.capture().replay()
