"""Persistence: tensors, modules and optimizers pickle (and so cross process boundaries), and
`nc.save` / `nc.load` write and read state dicts in a safe format (npz + JSON, no pickles)."""

from __future__ import annotations

import inspect
import multiprocessing
import pickle

import numpy as np
import pytest

import needlec as nc
from needlec import nn, optim


def roundtrip(obj):
    return pickle.loads(pickle.dumps(obj))


# ---------------------------------------------------------------- pickle


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "bool"])
@pytest.mark.parametrize("device", [nc.cpu(), nc.cpu_numpy()])
def test_tensor_pickles_to_an_equal_tensor(dtype, device):
    a = (np.arange(-3, 3).reshape(2, 3) % 3).astype(dtype)
    t = nc.Tensor(a, device=device, dtype=dtype, requires_grad=dtype.startswith("float"))
    u = roundtrip(t)
    assert type(u) is nc.Tensor
    assert (u.dtype, u.device, u.requires_grad) == (t.dtype, t.device, t.requires_grad)
    np.testing.assert_array_equal(u.numpy(), a)


def test_special_values_and_views_pickle():
    a = np.array([np.nan, -0.0, np.inf, -np.inf, 5e-324], dtype="float64")
    u = roundtrip(nc.Tensor(a)).numpy()
    np.testing.assert_array_equal(u, a)
    assert np.signbit(u[1])
    view = nc.NDArray(np.arange(12.0).reshape(3, 4)).permute((1, 0))[1:3, :]
    np.testing.assert_array_equal(roundtrip(view).numpy(), view.numpy())


def test_devices_unpickle_to_the_same_device():
    for d in (nc.cpu(), nc.cpu_numpy(), nc.cuda()):
        assert roundtrip(d) is d


def test_a_traced_tensor_does_not_pickle():
    def f(t):
        pickle.dumps(t)
        return t

    with pytest.raises(TypeError, match="cannot pickle a traced tensor"):
        nc.jit(f)(np.ones(2, dtype="float32"))


def test_model_and_optimizer_pickle_together_and_keep_training_alike():
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 3))
    opt = optim.Adam(model.parameters(), lr=0.01)
    loss_fn = nn.SoftmaxLoss()
    x = nc.Tensor(np.random.randn(5, 4).astype("float32"))
    y = nc.Tensor(np.array([0, 1, 2, 1, 0]))

    def step(model, opt):
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.numpy()

    step(model, opt)
    model2, opt2 = roundtrip((model, opt))
    assert opt2.params[0] is model2.modules[0].weight  # shared objects stay shared
    assert opt2.t == opt.t == 1
    for _ in range(2):
        np.testing.assert_array_equal(step(model2, opt2), step(model, opt))
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def _total(t: nc.Tensor) -> float:
    return float(t.numpy().sum())


def test_tensors_cross_a_process_boundary():
    t = nc.Tensor(np.arange(6, dtype="float32"))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.map(_total, [t, t * 2]) == [15.0, 30.0]


# every module of nn, built small; a test checks the table is complete
MODULES = {
    "AttentionLayer": lambda: nn.AttentionLayer(4, 2, 3, dropout=0.0, causal=True),
    "BatchNorm1d": lambda: nn.BatchNorm1d(4),
    "BatchNorm2d": lambda: nn.BatchNorm2d(2),
    "Conv": lambda: nn.Conv(2, 3, 3),
    "Dropout": lambda: nn.Dropout(0.3),
    "Embedding": lambda: nn.Embedding(5, 3),
    "Flatten": nn.Flatten,
    "Identity": nn.Identity,
    "LSTM": lambda: nn.LSTM(3, 4, num_layers=2),
    "LSTMCell": lambda: nn.LSTMCell(3, 4),
    "LayerNorm1d": lambda: nn.LayerNorm1d(4),
    "Linear": lambda: nn.Linear(4, 3),
    "Module": nn.Module,
    "MultiHeadAttention": lambda: nn.MultiHeadAttention(causal=True),
    "RNN": lambda: nn.RNN(3, 4, num_layers=2, nonlinearity="relu"),
    "RNNCell": lambda: nn.RNNCell(3, 4),
    "ReLU": nn.ReLU,
    "Residual": lambda: nn.Residual(nn.Sequential(nn.Linear(4, 4), nn.Tanh())),
    "Sequential": lambda: nn.Sequential(nn.Linear(4, 4), nn.Sigmoid()),
    "Sigmoid": nn.Sigmoid,
    "SoftmaxLoss": nn.SoftmaxLoss,
    "Tanh": nn.Tanh,
    "Transformer": lambda: nn.Transformer(4, 8, 2, num_head=2, dim_head=3, sequence_len=6),
    "TransformerLayer": lambda: nn.TransformerLayer(4, 2, 3, 8, dropout=0.0),
}


def test_the_module_table_covers_nn():
    names = {n for n, c in vars(nn).items() if inspect.isclass(c) and issubclass(c, nn.Module)}
    assert names == set(MODULES)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_pickles(name):
    np.random.seed(1)
    m = MODULES[name]()
    m.eval()
    u = roundtrip(m)
    assert type(u) is type(m) and u.training is False
    want, got = m.state_dict(), u.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert type(got[k]) is type(want[k])
        np.testing.assert_array_equal(got[k].numpy(), want[k].numpy())
    assert [type(p) for p in u.parameters()] == [type(p) for p in m.parameters()]


# ---------------------------------------------------------------- save / load


def test_save_and_load_a_model_state_dict(tmp_path):
    np.random.seed(2)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    x = nc.Tensor(np.random.randn(3, 4).astype("float32"))
    model(x)  # training: running statistics change
    model.eval()
    path = tmp_path / "model.npz"
    nc.save(model.state_dict(), path)
    other = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).eval()
    other.load_state_dict(nc.load(path))
    np.testing.assert_array_equal(other(x).numpy(), model(x).numpy())
    np.testing.assert_array_equal(
        other.modules[1].running_var.numpy(), model.modules[1].running_var.numpy()
    )


def test_load_state_dict_checks_names_and_shapes(tmp_path):
    state = nn.Linear(4, 3).state_dict()
    with pytest.raises(KeyError, match="missing"):
        nn.Sequential(nn.Linear(4, 3)).load_state_dict(state)
    with pytest.raises(ValueError, match="shape"):
        nn.Linear(3, 3).load_state_dict(state)


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_save_and_load_an_optimizer_state_dict(kind, tmp_path):
    def make():
        np.random.seed(3)
        model = nn.Linear(3, 2)
        if kind == "SGD":
            return model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
        return model, optim.Adam(model.parameters(), lr=0.05, weight_decay=0.01)

    x = nc.Tensor(np.random.randn(4, 3).astype("float32"))

    def step(model, opt):
        opt.reset_grad()
        (model(x) ** 2).sum().backward()
        opt.step()

    model, opt = make()
    step(model, opt)
    step(model, opt)
    nc.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": 2}, tmp_path / "ck")
    model2, opt2 = make()
    opt2.lr = 123.0
    ck = nc.load(tmp_path / "ck")
    assert ck["epoch"] == 2
    model2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["opt"])
    assert opt2.lr == opt.lr
    step(model, opt)
    step(model2, opt2)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        np.testing.assert_array_equal(q.numpy(), p.numpy())


def test_save_keeps_values_dtypes_and_structure(tmp_path):
    obj = {
        "t": nc.Tensor(np.array([np.nan, -0.0, 1e-45], dtype="float32")),
        "i": nc.Tensor(np.array([2**40], dtype="int64"), requires_grad=False),
        "a": np.array([True, False]),
        3: [1, 2.5, "s", None, (True,)],
    }
    nc.save(obj, tmp_path / "x.npz")
    got = nc.load(tmp_path / "x.npz")
    assert list(got) == ["t", "i", "a", 3]
    assert got[3] == [1, 2.5, "s", None, (True,)]
    assert got["t"].dtype == "float32" and got["i"].dtype == "int64"
    assert got["i"].requires_grad is False
    np.testing.assert_array_equal(got["t"].numpy(), obj["t"].numpy())
    assert np.signbit(got["t"].numpy()[1])
    np.testing.assert_array_equal(got["a"], obj["a"])


def test_save_rejects_objects_that_are_not_state(tmp_path):
    with pytest.raises(TypeError, match="state_dict"):
        nc.save(nn.Linear(2, 2), tmp_path / "m.npz")
    with pytest.raises(TypeError, match="lambda|function"):
        nc.save({"f": lambda: 0}, tmp_path / "m.npz")


def test_load_never_unpickles(tmp_path):
    path = tmp_path / "evil.npz"
    with open(path, "wb") as f:
        tree = b'{"format": "needlec-state/1", "root": {"array": 0}}'
        np.savez(f, a0=np.array([object()], dtype=object), __tree__=np.frombuffer(tree, np.uint8))
    with pytest.raises(ValueError, match="allow_pickle"):  # numpy refuses to unpickle it
        nc.load(path)
    with open(tmp_path / "plain.npz", "wb") as f:
        np.savez(f, x=np.ones(2))
    with pytest.raises(ValueError, match="not a file written by needlec.save"):
        nc.load(tmp_path / "plain.npz")
