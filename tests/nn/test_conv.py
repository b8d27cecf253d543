"""Conv: init draws, parameter counts, forward and gradients against torch's conv2d."""

import math

import numpy as np
import pytest

import needlec as nc
from needlec import nn

from .util import close, kaiming_uniform_draw, n_params, next_draw_after, randn, uniform_draw


@pytest.mark.parametrize("bias", [True, False])
def test_conv_draws_weight_then_bias(bias):
    np.random.seed(7)
    conv = nn.Conv(3, 5, 3, bias=bias)
    after = np.random.rand()
    np.random.seed(7)
    w = kaiming_uniform_draw(3 * 9, 5 * 9, shape=(3, 3, 3, 5))
    assert conv.weight.shape == (3, 3, 3, 5)
    close(conv.weight, w, rtol=1e-6, atol=1e-7)
    if bias:
        close(conv.bias, uniform_draw((5,), 1 / math.sqrt(27)), rtol=1e-6, atol=1e-7)
    else:
        assert conv.bias is None
    assert after == next_draw_after(7, 135 + 5 * bias)


def test_conv_parameter_count_and_tuple_arguments():
    assert n_params(nn.Conv(3, 16, 3)) == 3 * 3 * 3 * 16 + 16
    assert n_params(nn.Conv(16, 32, 1, bias=False)) == 16 * 32
    conv = nn.Conv(2, 4, (5, 5), stride=(2, 2))
    assert conv.kernel_size == 5 and conv.stride == 2 and conv.padding == 2


@pytest.mark.parametrize(
    "k, stride, hw",
    [(3, 1, (6, 6)), (3, 2, (7, 8)), (1, 1, (5, 4)), (5, 2, (9, 9)), (4, 1, (5, 6))],
)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_matches_torch(k, stride, hw, bias, torch, rng, device):
    np.random.seed(8)
    conv = nn.Conv(3, 4, k, stride=stride, bias=bias, device=device)
    x_np = randn(rng, 2, 3, *hw)
    w = torch.tensor(conv.weight.numpy().transpose(3, 2, 0, 1).copy(), requires_grad=True)
    b = torch.tensor(conv.bias.numpy(), requires_grad=True) if bias else None
    x, xt = nc.Tensor(x_np, device=device), torch.tensor(x_np, requires_grad=True)
    y = conv(x)
    yt = torch.nn.functional.conv2d(xt, w, b, stride=stride, padding=k // 2)
    assert y.shape == tuple(yt.shape) and y.device == device
    close(y, yt, atol=1e-5)
    seed = randn(rng, *y.shape)
    (y * nc.Tensor(seed, device=device)).sum().backward()
    (yt * torch.tensor(seed)).sum().backward()
    close(x.grad, xt.grad, atol=1e-4)
    close(conv.weight.grad, w.grad.permute(2, 3, 1, 0), atol=1e-4)
    if bias:
        close(conv.bias.grad, b.grad, atol=1e-4)


def test_conv_under_jit(rng):
    conv = nn.Conv(2, 3, 3, stride=2)
    x = nc.Tensor(randn(rng, 2, 2, 7, 7))
    close(nc.jit(lambda x: conv(x))(x), conv(x), rtol=1e-6, atol=1e-6)
