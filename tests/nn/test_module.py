"""Module and Parameter: the parameter walk, train/eval, call; the stateless modules."""

import numpy as np
import pytest

import needlec as nc
from needlec import nn

from .util import close, randn


class _Holder(nn.Module):
    """Parameters hidden in every kind of container, plus tensors that are not parameters."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(nc.init.ones(2))
        self.plain = nc.init.ones(3)  # a plain tensor: not a parameter
        self.items = [nn.Linear(2, 3), (nn.Parameter(nc.init.ones(4)), {"k": nn.ReLU()})]
        self.table = {"z": nn.Parameter(nc.init.ones(5)), "b": nn.Linear(3, 1, bias=False)}
        self.count = 3

    def forward(self, x, scale=1.0):
        return x * scale


def test_parameters_walk_attributes_in_insertion_order():
    m = _Holder()
    expected = [
        m.a,
        m.items[0].weight,
        m.items[0].bias,
        m.items[1][0],
        m.table["z"],
        m.table["b"].weight,
    ]
    got = m.parameters()
    assert len(got) == len(expected)
    assert all(g is e for g, e in zip(got, expected, strict=True))
    assert all(isinstance(p, nn.Parameter) and isinstance(p, nc.Tensor) for p in got)
    assert not any(p is m.plain for p in got)


def test_parameter_requires_grad_and_keeps_values():
    p = nn.Parameter(nc.Tensor(np.arange(3.0, dtype="float32"), requires_grad=False))
    assert p.requires_grad and p.dtype == "float32"
    np.testing.assert_array_equal(p.numpy(), [0.0, 1.0, 2.0])


def test_plain_tensors_are_not_parameters():
    bn = nn.BatchNorm1d(4)
    params = bn.parameters()
    assert len(params) == 2 and params[0] is bn.weight and params[1] is bn.bias
    assert not isinstance(bn.running_mean, nn.Parameter)


def test_train_and_eval_reach_nested_lists_and_dicts():
    m = _Holder()
    inner = [m.items[0], m.items[1][1]["k"], m.table["b"]]
    m.eval()
    assert not m.training and not any(x.training for x in inner)
    m.train()
    assert m.training and all(x.training for x in inner)
    seq = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(0.5)))
    seq.eval()
    assert not seq.modules[1].modules[0].training


def test_children_lists_every_submodule():
    m = _Holder()
    kids = m._children()
    for sub in (m.items[0], m.items[1][1]["k"], m.table["b"]):
        assert any(k is sub for k in kids)
    assert len(kids) == 3


def test_call_passes_arguments_to_forward():
    m = _Holder()
    x = nc.Tensor([1.0, 2.0])
    close(m(x, scale=3.0), [3.0, 6.0])


def test_base_module_forward_is_abstract():
    with pytest.raises(NotImplementedError):
        nn.Module()(nc.Tensor([1.0]))


def test_identity_and_flatten(rng):
    x = randn(rng, 2, 3, 4, 5)
    assert nn.Identity()(nc.Tensor(x)).numpy().tobytes() == x.tobytes()
    y = nn.Flatten()(nc.Tensor(x))
    assert y.shape == (2, 60)
    close(y, x.reshape(2, 60), rtol=0, atol=0)


@pytest.mark.parametrize(
    "module, ref, dref",
    [
        (nn.ReLU, lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(x.dtype)),
        (nn.Tanh, np.tanh, lambda x: 1 - np.tanh(x) ** 2),
        (
            nn.Sigmoid,
            lambda x: 1 / (1 + np.exp(-x)),
            lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2,
        ),
    ],
)
def test_activations_forward_and_backward(module, ref, dref, rng):
    x64 = randn(rng, 4, 5, dtype="float64")
    x = nc.Tensor(x64.astype("float32"))
    y = module()(x)
    close(y, ref(x64), rtol=1e-6, atol=1e-6)
    y.sum().backward()
    close(x.grad, dref(x64), rtol=1e-5, atol=1e-6)


def test_sequential_applies_in_order(rng):
    np.random.seed(1)
    first, second = nn.Linear(3, 4), nn.Linear(4, 2)
    seq = nn.Sequential(first, nn.ReLU(), second)
    assert len(seq.modules) == 3 and seq.parameters()[0] is first.weight
    x = randn(rng, 5, 3)
    w1, b1 = first.weight.numpy(), first.bias.numpy()
    w2, b2 = second.weight.numpy(), second.bias.numpy()
    close(seq(nc.Tensor(x)), np.maximum(x @ w1 + b1, 0) @ w2 + b2)


def test_residual_adds_its_input(rng):
    np.random.seed(2)
    lin = nn.Linear(3, 3)
    x = randn(rng, 4, 3)
    res = nn.Residual(nn.Sequential(lin, nn.Tanh()))
    expected = np.tanh(x @ lin.weight.numpy() + lin.bias.numpy()) + x
    xt = nc.Tensor(x)
    out = res(xt)
    close(out, expected)
    out.sum().backward()
    d = 1 - np.tanh(x @ lin.weight.numpy() + lin.bias.numpy()) ** 2
    close(xt.grad, d @ lin.weight.numpy().T + 1)
    params = res.parameters()
    assert len(params) == 2 and params[0] is lin.weight and params[1] is lin.bias
