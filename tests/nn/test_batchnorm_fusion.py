"""BatchNorm's training forward under jit: its statistics (mean, then the variance of x about
it, two loops over x) and its normalization are one kernel that reads x and writes y, with no
centred copy of x in memory between them. Results match numpy's two-pass statistics, gradients
match finite differences in float64."""

import numpy as np
import pytest

import needlec as nc
from needlec import nn


def _forward_program(module, x):
    f = nc.jit(lambda t: module(t))
    return f, f.lower(nc.Tensor(x))


def _numpy_batchnorm(x, axes, eps=1e-5):
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps), mean, var


@pytest.mark.parametrize(
    "make, shape, axes",
    [
        (lambda: nn.BatchNorm2d(8), (4, 8, 6, 6), (0, 2, 3)),
        (lambda: nn.BatchNorm1d(16), (32, 16), (0,)),
    ],
)
def test_forward_is_one_kernel_reading_x_once_and_writing_y_once(make, shape, axes):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    module = make()
    _, lowered = _forward_program(module, x)
    kg = lowered.kernels
    assert len(kg.kernels) == 1
    (k,) = kg.kernels
    channels = shape[1]
    big = [b for b in (*k.inputs, *k.outputs) if b.nbytes == x.nbytes]
    assert len(big) == 2  # x in, y out: nothing of x's size in between
    cost = kg.cost_analysis()
    small = 4 * channels * 4  # weight, bias and the two running statistics
    assert cost.kernels[0].bytes_read <= x.nbytes + small
    assert cost.kernels[0].bytes_written <= x.nbytes + small


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_forward_matches_numpy_two_pass_statistics(offset):
    """Also for activations far from zero, where one-pass sums of squares would cancel: the
    float32 mean of values near 1000 is good to about 1e-4 of a standard deviation of 0.5, a
    variance from E[x^2] - E[x]^2 to no digit at all."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 8, 6, 6)) * 0.5 + offset).astype(np.float32)
    module = nn.BatchNorm2d(8)
    module.weight = nn.Parameter(rng.standard_normal(8).astype(np.float32))
    module.bias = nn.Parameter(rng.standard_normal(8).astype(np.float32))
    f, _ = _forward_program(module, x)
    y = f(nc.Tensor(x)).numpy()
    x64 = x.astype(np.float64)
    normed, mean, var = _numpy_batchnorm(x64, (0, 2, 3))
    w, b = module.weight.numpy().astype(np.float64), module.bias.numpy().astype(np.float64)
    want = normed * w.reshape(1, 8, 1, 1) + b.reshape(1, 8, 1, 1)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=2e-4 + 3e-6 * offset)
    np.testing.assert_allclose(
        module.running_mean.numpy(), 0.1 * mean.reshape(8), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        module.running_var.numpy(), 0.9 + 0.1 * var.reshape(8), rtol=1e-4, atol=1e-6
    )


def test_gradients_match_finite_differences_in_float64():
    rng = np.random.default_rng(2)
    module = nn.BatchNorm2d(3, dtype="float64")
    module.weight = nn.Parameter(rng.standard_normal(3))
    module.bias = nn.Parameter(rng.standard_normal(3))
    x = rng.standard_normal((2, 3, 3, 3)) + 2.0
    r = rng.standard_normal((2, 3, 3, 3))

    def loss(t):
        saved = (module.running_mean, module.running_var)
        out = nc.ops.summation(module(t) * nc.Tensor(r))
        module.running_mean, module.running_var = saved  # each call sees the same state
        return out

    grad = nc.jit(nc.grad(loss))(nc.Tensor(x)).numpy()

    def value(a):
        normed, _, _ = _numpy_batchnorm(a, (0, 2, 3))
        w, b = module.weight.numpy(), module.bias.numpy()
        return float(np.sum((normed * w.reshape(1, 3, 1, 1) + b.reshape(1, 3, 1, 1)) * r))

    h = 1e-6
    fd = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        fd[i] = (value(up) - value(down)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7)
