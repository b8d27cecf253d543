"""Numerics at the edges: comparisons with NaN, inf and -0.0, and the gradients of sigmoid, tanh,
logsumexp, logsoftmax and the softmax loss at large magnitudes.

Every check runs eagerly, under `jit` (the reference interpreter), and under `jit` with
`NEEDLEC_EXECUTE=kernels` (the fused kernels, where logsumexp and logsoftmax are expanded into
max, exp, sum and log). Forward values are compared with numpy; gradients at large magnitudes with
their analytic values in float64, and at moderate ones with finite differences in float64.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np
import pytest

import needlec as nc
from needlec import nn, ops

MODES = ["eager", "jit", "kernels"]
DTYPES = ["float32", "float64"]
TOL = {"float32": dict(rtol=1e-5, atol=1e-7), "float64": dict(rtol=1e-12, atol=1e-15)}


def run(mode: str, f: Callable, *arrays: np.ndarray, monkeypatch) -> np.ndarray:
    """f(*arrays) eagerly, or jitted (the fused kernels for "kernels"), as numpy."""
    if mode == "eager":
        return f(*(nc.Tensor(a, requires_grad=False) for a in arrays)).numpy()
    if mode == "kernels":
        monkeypatch.setenv("NEEDLEC_EXECUTE", "kernels")
    return nc.jit(f)(*arrays).numpy()


def gradient(mode: str, f: Callable, x: np.ndarray, monkeypatch) -> np.ndarray:
    """d sum(f(x)) / dx: `backward()` eagerly, `jit(grad(f))` otherwise."""
    if mode == "eager":
        t = nc.Tensor(x)
        f(t).backward()
        return t.grad.numpy()
    return run(mode, nc.grad(f), x, monkeypatch=monkeypatch)


# ---------------------------------------------------------------- comparisons

SPECIAL = [np.nan, 1.0, -1.0, 0.0, -0.0, np.inf, -np.inf, 1e-30, -1e-30]
COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(COMPARE))
def test_comparisons_with_nan_inf_and_signed_zero_match_numpy(name, dtype, mode, monkeypatch):
    cmp = COMPARE[name]
    x = np.array(SPECIAL, dtype=dtype)
    # every pair of special values, both ways round
    a, b = (g.reshape(-1) for g in np.meshgrid(x, x, indexing="ij"))
    got = run(mode, cmp, a, b, monkeypatch=monkeypatch)
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, cmp(a, b))
    for scalar in (0, 0.0, -0.0, 1.5, np.inf):  # a Python number on either side
        got = run(mode, lambda t, s=scalar: cmp(t, s), x, monkeypatch=monkeypatch)
        np.testing.assert_array_equal(got, cmp(x, scalar), err_msg=f"x {name} {scalar}")
        got = run(mode, lambda t, s=scalar: cmp(s, t), x, monkeypatch=monkeypatch)
        np.testing.assert_array_equal(got, cmp(scalar, x), err_msg=f"{scalar} {name} x")


def test_the_issue_example():
    t = nc.Tensor(np.array([np.nan, 1.0, -1.0], dtype="float32"))
    np.testing.assert_array_equal((t >= 0).numpy(), [False, True, False])
    np.testing.assert_array_equal((t <= 0).numpy(), [False, False, True])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_through_a_comparison_are_defined(dtype, mode, monkeypatch):
    """A leaky relu built on `>=` and `<=`: the comparisons pass no gradient, the where does."""
    x = np.array([-2.0, -0.0, 0.0, 0.5, 3.0, np.inf, -np.inf], dtype=dtype)

    def leaky(t):
        return ((t >= 0).where(t, t * 0.25) + (t <= 0).where(t * 2.0, t * 0.0)).sum()

    want = np.where(x >= 0, 1.0, 0.25) + np.where(x <= 0, 2.0, 0.0)
    got = gradient(mode, leaky, x, monkeypatch)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want.astype(dtype))


# ---------------------------------------------------------------- large magnitudes

# large and moderate values; -89 and 89 are where exp(-x) overflows float32
EDGE = [-1e4, -1e3, -100.0, -89.0, -88.0, -30.0, -1.0, -0.0, 0.0, 0.5, 30.0, 88.0, 89.0, 1e3, 1e4]


def np_sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def np_softmax(x):
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def np_logsumexp(x):
    m = x.max(axis=1)
    return np.log(np.exp(x - m[:, None]).sum(axis=1)) + m


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_and_its_gradient_are_finite_at_large_magnitudes(dtype, mode, monkeypatch):
    x = np.array(EDGE, dtype=dtype)
    x64 = x.astype("float64")
    got = run(mode, ops.sigmoid, x, monkeypatch=monkeypatch)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, np_sigmoid(x64), **TOL[dtype])
    g = gradient(mode, lambda t: ops.sigmoid(t).sum(), x, monkeypatch)
    assert np.isfinite(g).all(), g
    s = np_sigmoid(x64)
    np.testing.assert_allclose(g, s * (1 - s), **TOL[dtype])
    # nn.Sigmoid is the same op
    g = gradient(mode, lambda t: nn.Sigmoid()(t).sum(), x, monkeypatch)
    np.testing.assert_allclose(g, s * (1 - s), **TOL[dtype])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_gradient_at_large_magnitudes(dtype, mode, monkeypatch):
    x = np.array(EDGE, dtype=dtype)
    got = run(mode, ops.tanh, x, monkeypatch=monkeypatch)
    np.testing.assert_allclose(got, np.tanh(x.astype("float64")), **TOL[dtype])
    g = gradient(mode, lambda t: ops.tanh(t).sum(), x, monkeypatch)
    assert np.isfinite(g).all(), g
    np.testing.assert_allclose(g, 1 - np.tanh(x.astype("float64")) ** 2, **TOL[dtype])


LOGITS = [
    [1e4, -1e4, 0.0, 3.0],
    [-1e4, -1e4, -1e4, -1e4],
    [1e4, 1e4, -1e4, 1e4],
    [-100.0, -89.0, 3.0, 88.0],
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_logsumexp_gradient_at_large_magnitudes(dtype, mode, monkeypatch):
    x = np.array(LOGITS, dtype=dtype)
    x64 = x.astype("float64")
    got = run(mode, lambda t: ops.logsumexp(t, (1,)), x, monkeypatch=monkeypatch)
    np.testing.assert_allclose(got, np_logsumexp(x64), **TOL[dtype])
    g = gradient(mode, lambda t: ops.logsumexp(t, (1,)).sum(), x, monkeypatch)
    assert np.isfinite(g).all(), g
    np.testing.assert_allclose(g, np_softmax(x64), **TOL[dtype])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_logsoftmax_gradient_at_large_magnitudes(dtype, mode, monkeypatch):
    x = np.array(LOGITS, dtype=dtype)
    x64 = x.astype("float64")
    w = np.arange(1, 17, dtype=dtype).reshape(4, 4) / 8  # a weighted sum: every term matters
    got = run(mode, ops.logsoftmax, x, monkeypatch=monkeypatch)
    np.testing.assert_allclose(got, x64 - np_logsumexp(x64)[:, None], **TOL[dtype])
    g = gradient(mode, lambda t: (ops.logsoftmax(t) * nc.Tensor(w)).sum(), x, monkeypatch)
    assert np.isfinite(g).all(), g
    w64 = w.astype("float64")
    want = w64 - np_softmax(x64) * w64.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(g, want, **TOL[dtype])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_loss_gradient_at_large_magnitudes(dtype, mode, monkeypatch):
    x = np.array(LOGITS, dtype=dtype)
    x64 = x.astype("float64")
    y = np.array([1, 0, 2, 0], dtype=dtype)
    onehot = np.eye(4)[y.astype(int)]

    def loss(t):
        return nn.SoftmaxLoss()(t, nc.Tensor(y, requires_grad=False))

    got = run(mode, loss, x, monkeypatch=monkeypatch)
    want = np.mean(np_logsumexp(x64) - (x64 * onehot).sum(axis=1))
    np.testing.assert_allclose(got, want, **TOL[dtype])
    g = gradient(mode, loss, x, monkeypatch)
    assert np.isfinite(g).all(), g
    np.testing.assert_allclose(g, (np_softmax(x64) - onehot) / 4, **TOL[dtype])


def test_lstm_gradients_are_finite_with_saturated_gates():
    np.random.seed(0)
    cell = nn.LSTMCell(3, 2, dtype="float32")
    x = np.array([[1e3, -1e3, 50.0], [-1e3, 1e3, -50.0]], dtype="float32")
    h, c = cell(nc.Tensor(x, requires_grad=False))
    (h.sum() + c.sum()).backward()
    for p in cell.parameters():
        assert np.isfinite(p.grad.numpy()).all()


# ---------------------------------------------------------------- finite differences (float64)

MODERATE = [-30.0, -5.0, -1.0, -0.3, 0.2, 1.0, 5.0, 30.0]


def finite_difference(f: Callable[[np.ndarray], float], x: np.ndarray, eps=1e-6) -> np.ndarray:
    out = np.zeros_like(x)
    for i in range(x.size):
        d = np.zeros_like(x)
        d.flat[i] = eps
        out.flat[i] = (f(x + d) - f(x - d)) / (2 * eps)
    return out


@pytest.mark.parametrize(
    "name, f, shape",
    [
        ("sigmoid", lambda t: ops.sigmoid(t).sum(), (8,)),
        ("tanh", lambda t: ops.tanh(t).sum(), (8,)),
        ("logsumexp", lambda t: ops.logsumexp(t, (1,)).sum(), (2, 4)),
        ("logsoftmax", lambda t: (ops.logsoftmax(t) * ops.logsoftmax(t)).sum(), (2, 4)),
    ],
)
def test_gradients_match_finite_differences(name, f, shape):
    x = np.array(MODERATE).reshape(shape)
    t = nc.Tensor(x)
    f(t).backward()
    want = finite_difference(lambda a: float(f(nc.Tensor(a)).numpy()), x)
    np.testing.assert_allclose(t.grad.numpy(), want, rtol=1e-6, atol=1e-8)
    # and the second derivative of sigmoid, through its where
    if name == "sigmoid":
        g2 = nc.grad(lambda a: nc.grad(f)(a).sum())(x).numpy()
        s = np_sigmoid(x)
        np.testing.assert_allclose(g2, s * (1 - s) * (1 - 2 * s), rtol=1e-9, atol=1e-12)


def test_logsumexp_over_an_empty_axis_has_an_empty_gradient():
    x = nc.Tensor(np.zeros((2, 0)))
    y = ops.logsumexp(x, (1,))
    np.testing.assert_array_equal(y.numpy(), [-np.inf, -np.inf])
    y.sum().backward()
    assert x.grad.shape == (2, 0)
