"""Every module traced by `needlec.jit` gives what it gives eagerly (table-driven); gradients
through modules under jit match eager backward; BatchNorm's running statistics update in jit."""

import numpy as np
import pytest

import needlec as nc
from needlec import nn

from .util import close, flat_outputs, randn

# (name, module factory, input shapes); inputs are standard normal float32
CASES = [
    ("identity", lambda: nn.Identity(), [(3, 4)]),
    ("flatten", lambda: nn.Flatten(), [(2, 3, 4, 5)]),
    ("relu", lambda: nn.ReLU(), [(3, 4)]),
    ("tanh", lambda: nn.Tanh(), [(3, 4)]),
    ("sigmoid", lambda: nn.Sigmoid(), [(3, 4)]),
    ("linear", lambda: nn.Linear(4, 3), [(5, 4)]),
    ("linear_3d_nobias", lambda: nn.Linear(4, 3, bias=False), [(2, 5, 4)]),
    (
        "sequential",
        lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
        [(5, 4)],
    ),
    ("residual", lambda: nn.Residual(nn.Sequential(nn.Linear(4, 4), nn.Tanh())), [(5, 4)]),
    ("batchnorm1d_eval", lambda: nn.BatchNorm1d(4).eval(), [(6, 4)]),
    ("batchnorm2d_eval", lambda: nn.BatchNorm2d(3).eval(), [(2, 3, 4, 4)]),
    ("layernorm1d", lambda: nn.LayerNorm1d(4), [(6, 4)]),
    ("dropout_eval", lambda: nn.Dropout(0.5).eval(), [(6, 4)]),
    ("conv", lambda: nn.Conv(3, 4, 3), [(2, 3, 6, 6)]),
    ("conv_stride2", lambda: nn.Conv(3, 4, 5, stride=2, bias=False), [(2, 3, 9, 9)]),
    ("rnn_cell", lambda: nn.RNNCell(3, 4), [(2, 3), (2, 4)]),
    ("rnn", lambda: nn.RNN(3, 4, num_layers=2), [(5, 2, 3)]),
    ("lstm_cell", lambda: nn.LSTMCell(3, 4), [(2, 3)]),
    ("lstm", lambda: nn.LSTM(3, 4, num_layers=2), [(5, 2, 3)]),
    ("mha", lambda: nn.MultiHeadAttention(causal=True), [(2, 2, 4, 3)] * 3),
    ("attention_layer", lambda: nn.AttentionLayer(6, 2, 3), [(2, 4, 6)]),
    ("transformer_layer", lambda: nn.TransformerLayer(6, 2, 3, 12).eval(), [(2, 4, 6)]),
    ("transformer", lambda: nn.Transformer(8, 16, 2, num_head=2, dim_head=4), [(5, 2, 8)]),
]


@pytest.mark.parametrize("name, make, shapes", CASES, ids=[c[0] for c in CASES])
def test_jit_forward_equals_eager(name, make, shapes, rng):
    np.random.seed(0)
    module = make()
    args = [nc.Tensor(randn(rng, *s)) for s in shapes]
    eager = flat_outputs(module(*args))
    traced = flat_outputs(nc.jit(lambda *xs: module(*xs))(*args))
    assert len(eager) == len(traced)
    for a, b in zip(traced, eager, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name, make, shape",
    [
        ("linear", lambda: nn.Linear(4, 3), (5, 4)),
        ("layernorm1d", lambda: nn.LayerNorm1d(4), (5, 4)),
        ("conv", lambda: nn.Conv(2, 3, 3, stride=2), (2, 2, 5, 5)),
        ("lstm", lambda: nn.Sequential(nn.LSTM(3, 4), _First()), (4, 2, 3)),
        ("transformer_layer", lambda: nn.TransformerLayer(6, 2, 3, 12), (2, 4, 6)),
    ],
    ids=["linear", "layernorm1d", "conv", "lstm", "transformer_layer"],
)
def test_jit_grad_through_modules_equals_backward(name, make, shape, rng):
    module = make()
    x_np = randn(rng, *shape)
    x = nc.Tensor(x_np)
    out = module(x)
    seed = nc.Tensor(randn(rng, *out.shape), requires_grad=False)
    (out * seed).sum().backward()
    g = nc.jit(nc.grad(lambda x: (module(x) * seed).sum()))(nc.Tensor(x_np))
    close(g, x.grad, rtol=1e-5, atol=1e-5)


class _First(nn.Module):
    def forward(self, pair):
        return pair[0]


def test_batchnorm_training_under_jit_updates_running_statistics(rng):
    eager, traced = nn.BatchNorm1d(4), nn.BatchNorm1d(4)
    f = nc.jit(lambda x: traced(x))
    for _ in range(3):
        x = nc.Tensor(randn(rng, 6, 4, scale=2.0) + 1.0)
        close(f(x), eager(x), rtol=1e-5, atol=1e-5)
        close(traced.running_mean, eager.running_mean, rtol=1e-6, atol=1e-7)
        close(traced.running_var, eager.running_var, rtol=1e-6, atol=1e-7)
    assert traced.running_mean.dtype == "float32"
    assert not np.allclose(traced.running_mean.numpy(), 0)


def test_module_mode_switch_retraces(rng):
    bn = nn.BatchNorm1d(3)
    f = nc.jit(lambda x: bn(x))
    x = nc.Tensor(randn(rng, 5, 3) + 2.0)
    f(x)
    bn.eval()
    close(f(x), bn(x), rtol=1e-6, atol=1e-6)  # eval: running stats, not batch stats


def test_a_changed_hyperparameter_retraces(rng):
    drop = nn.Dropout(0.5)
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), drop))
    f = nc.jit(lambda x: model(x))
    x = nc.init.ones(400, 4)
    f(x)
    drop.p = 0.0
    out = f(x).numpy()  # a stale trace would still drop half the entries, scaled by 2
    close(out, model.eval()(x), rtol=1e-6, atol=1e-6)
    assert f.trace_count == 2
