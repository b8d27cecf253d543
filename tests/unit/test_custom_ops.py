"""A user's own needle TensorOp (compute over NDArrays, gradient over Tensors) under jit and grad.

Inside a trace such an op is one CALLBACK node (`needlec.custom_ops`): a kernel of its own that
calls back into Python; its gradient is a second callback that calls the user's `gradient`.
"""

from __future__ import annotations

import numpy as np
import pytest

import needlec as nc
from needlec import nn, ops
from needlec.autograd import TensorOp
from needlec.ir import Op

EXECUTORS = ["compiled", "reference", "kernels"]


class Square(TensorOp):
    """As a homework writes it: compute with NDArray ops, gradient with needle ops."""

    def compute(self, a):
        return a * a

    def gradient(self, out_grad, node):
        (a,) = node.inputs
        return out_grad * a * 2.0


def square(a):
    return Square()(a)


class Softplus(TensorOp):
    """numpy inside compute; the gradient reads the input's value (needs concrete tensors)."""

    def __init__(self, beta: float = 1.0) -> None:
        self.beta = beta

    def compute(self, a):
        x = a.numpy()
        out = np.logaddexp(0.0, self.beta * x) / self.beta
        return nc.NDArray(out.astype(x.dtype), device=a.device)

    def gradient(self, out_grad, node):
        x = node.inputs[0].realize_cached_data().numpy()
        sig = 1.0 / (1.0 + np.exp(-self.beta * x))
        return out_grad * nc.Tensor(sig.astype(x.dtype), device=out_grad.device)


class WeightedProduct(TensorOp):
    """Two float inputs: a tuple of gradients."""

    def compute(self, a, b):
        return a * b * 3.0

    def gradient(self, out_grad, node):
        a, b = node.inputs
        return out_grad * b * 3.0, out_grad * a * 3.0


def mixed(x, w):
    """Built-in ops on both sides of the custom ones: a GEMM, a bias, an exp, a sum."""
    h = Softplus(2.0)(square(x @ w) + 1.0)
    return ops.summation(ops.exp(h * -0.5) * 2.0)


def _data(seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((4, 3)).astype(dtype), rng.standard_normal((3, 5)).astype(dtype)


def _numeric_grad(f, arrays, i, eps=1e-6):
    """Central differences of the scalar f(*arrays) with respect to arrays[i] (float64)."""
    base = [a.copy() for a in arrays]
    g = np.zeros_like(base[i])
    for j in range(base[i].size):
        hi = [a.copy() for a in base]
        lo = [a.copy() for a in base]
        hi[i].flat[j] += eps
        lo[i].flat[j] -= eps
        g.flat[j] = (f(*hi) - f(*lo)) / (2 * eps)
    return g


@pytest.mark.parametrize("executor", EXECUTORS)
def test_forward_under_jit_equals_eager(executor, monkeypatch):
    monkeypatch.setenv("NEEDLEC_EXECUTE", executor)
    x, w = _data()
    want = mixed(nc.Tensor(x), nc.Tensor(w)).numpy()
    got = nc.jit(mixed)(x, w).numpy()
    # compiled exp and tanh are within a few ulps of numpy's (ir.ops.TOLERANCE)
    np.testing.assert_allclose(got, want, rtol=1e-13)

    def pair(a, b):
        return WeightedProduct()(a, ops.tanh(b))

    want = pair(nc.Tensor(x), nc.Tensor(x)).numpy()
    np.testing.assert_allclose(nc.jit(pair)(x, x).numpy(), want, rtol=1e-13)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_grad_matches_finite_differences(executor, monkeypatch):
    monkeypatch.setenv("NEEDLEC_EXECUTE", executor)
    x, w = _data(1)

    def value(a, b):
        return float(mixed(nc.Tensor(a), nc.Tensor(b)).numpy())

    df = nc.grad(mixed, argnums=(0, 1))
    for grads in (df(x, w), nc.jit(df)(x, w)):  # eager, then traced with callbacks
        for i, g in enumerate(grads):
            np.testing.assert_allclose(g.numpy(), _numeric_grad(value, [x, w], i), rtol=1e-6)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_tuple_gradient_of_two_inputs(executor, monkeypatch):
    monkeypatch.setenv("NEEDLEC_EXECUTE", executor)
    a, b = _data(2)[0], _data(3)[0]

    def f(x, y):
        return ops.summation(ops.tanh(WeightedProduct()(x, y * 2.0)))

    def value(x, y):
        return float(f(nc.Tensor(x), nc.Tensor(y)).numpy())

    ga, gb = nc.jit(nc.grad(f, argnums=(0, 1)))(a, b)
    np.testing.assert_allclose(ga.numpy(), _numeric_grad(value, [a, b], 0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gb.numpy(), _numeric_grad(value, [a, b], 1), rtol=1e-6, atol=1e-8)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(Softplus()(square(self.fc1(x)) * 0.1))


@pytest.mark.parametrize("executor", EXECUTORS)
def test_backward_in_a_jitted_training_step_updates_like_eager(executor, monkeypatch):
    monkeypatch.setenv("NEEDLEC_EXECUTE", executor)
    rng = np.random.default_rng(4)
    xb = rng.standard_normal((16, 6)).astype("float32")
    yb = rng.integers(0, 3, 16).astype("float32")
    models, steps = [], []
    for jitted in (False, True):
        np.random.seed(0)
        model = _Net()
        opt = nc.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
        loss_fn = nn.SoftmaxLoss()

        def step(x, y, model=model, opt=opt, loss_fn=loss_fn):
            opt.reset_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss

        models.append(model)
        steps.append(nc.jit(step) if jitted else step)
    for _ in range(3):
        want = steps[0](nc.Tensor(xb), nc.Tensor(yb)).numpy()
        got = steps[1](xb, yb).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for pe, pj in zip(models[0].parameters(), models[1].parameters(), strict=True):
        np.testing.assert_allclose(pj.numpy(), pe.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(models[1].fc1.weight.numpy(), _initial_fc1())


def _initial_fc1():
    np.random.seed(0)
    return _Net().fc1.weight.numpy()


def test_a_jitted_output_backward_and_vjp_go_through_the_callback():
    x, w = _data(5)
    xt, wt = nc.Tensor(x), nc.Tensor(w)
    nc.jit(mixed)(xt, wt).backward()  # the gradient graph of the jitted call
    want = nc.grad(mixed, argnums=(0, 1))(nc.Tensor(x), nc.Tensor(w))
    np.testing.assert_allclose(xt.grad.numpy(), want[0].numpy(), rtol=1e-12)
    np.testing.assert_allclose(wt.grad.numpy(), want[1].numpy(), rtol=1e-12)


def test_the_callback_is_a_kernel_of_its_own_between_fused_neighbours():
    x, w = _data()
    f = nc.jit(lambda a, b: ops.summation(square(ops.exp(a @ b + 1.0) * 2.0).tanh()))
    low = f.lower(x, w)
    kernels = low.kernels.kernels
    kinds = [k.kind for k in kernels]
    assert kinds == ["gemm", "callback", "reduce"], low.kernels.as_text()
    cb = kernels[1]
    assert [n.op for n in cb.nodes] == [Op.CALLBACK] and cb.core.arg.name == "Square"
    assert len(kernels[0].nodes) > 1  # the bias, exp and scaling are the GEMM's epilogue
    assert "k1" in low.executable.fallbacks  # runs between native segments
    refused = low.kernels.report.as_text()
    assert "Python callback" in refused, refused


def test_debug_passes_names_the_callback(monkeypatch, capsys):
    monkeypatch.setenv("NEEDLEC_DEBUG", "passes")
    x, w = _data()
    nc.jit(nc.grad(mixed))(x, w)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "as a Python callback" in line]
    assert any("custom op Square" in line and "the gradient" not in line for line in lines), err
    assert any("the gradient of custom op Softplus" in line for line in lines), err
    assert all("test_custom_ops.py" in line for line in lines)


def test_second_order_through_a_callback_is_a_clear_error():
    x, _ = _data()

    def f(a):
        return ops.summation(square(a))

    def g(a):
        return ops.summation(nc.grad(f)(a))

    # eagerly the user's gradient is made of needlec ops: second order works
    np.testing.assert_allclose(nc.grad(g)(nc.Tensor(x)).numpy(), np.full(x.shape, 2.0))
    with pytest.raises(nc.CallbackError, match=r"second-order gradient through custom op Square"):
        nc.jit(nc.grad(g))(x)


def test_retraces_with_new_op_objects_give_the_same_graph():
    x, w = _data()
    f = nc.jit(mixed, check=True)  # every call traces again and compares with the cached trace
    a = f(x, w).numpy()
    b = f(x, w).numpy()
    np.testing.assert_array_equal(a, b)


def test_a_tensor_tuple_op_is_refused_when_traced():
    class Halves(TensorOp):
        def compute(self, a):
            return (a, a)

        def gradient(self, out_grad, node):
            return out_grad

    x, _ = _data()
    with pytest.raises(nc.TracerError, match=r"Halves at .*test_custom_ops.py.*one output"):
        nc.jit(lambda a: Halves()(a))(x)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_compute_whose_shape_follows_values_is_a_clear_error(executor, monkeypatch):
    monkeypatch.setenv("NEEDLEC_EXECUTE", executor)

    class Positive(TensorOp):  # keeps the positive entries: its shape depends on the values
        def compute(self, a):
            x = a.numpy()
            return nc.NDArray(x[x > 0], device=a.device)

        def gradient(self, out_grad, node):
            raise NotImplementedError

    x = np.array([1.0, -1.0, 2.0])
    with pytest.raises(nc.CallbackError, match=r"custom op Positive .*shape \(2,\).*\(0,\)"):
        nc.jit(lambda a: Positive()(a))(x)


class Take(TensorOp):
    """Rows of `a` at integer indices: a float input and an int one (no gradient)."""

    def compute(self, a, idx):
        return nc.NDArray(a.numpy()[idx.numpy().astype(int)], device=a.device)

    def gradient(self, out_grad, node):
        a, idx = node.inputs
        g = np.zeros(a.shape, out_grad.dtype)
        np.add.at(g, idx.numpy().astype(int), out_grad.numpy())
        return nc.Tensor(g, device=out_grad.device), None


@pytest.mark.parametrize("executor", EXECUTORS)
def test_an_int_input_and_a_transposed_operand(executor, monkeypatch):
    monkeypatch.setenv("NEEDLEC_EXECUTE", executor)
    x, _ = _data(6)
    idx = np.array([2, 0, 2], dtype="int64")

    def f(a, i):
        return ops.summation(Take()(ops.transpose(a), i) * ops.tanh(ops.transpose(a)) * 3.0)

    df = nc.grad(f)
    want = df(nc.Tensor(x), nc.Tensor(idx)).numpy()
    np.testing.assert_allclose(nc.jit(df)(x, idx).numpy(), want, rtol=1e-13)
    np.testing.assert_allclose(
        nc.jit(f)(x, idx).numpy(), f(nc.Tensor(x), nc.Tensor(idx)).numpy(), rtol=1e-13
    )


def test_the_reference_source_names_and_runs_the_callback():
    from needlec.codegen.reference import compile_source

    x, w = _data()
    text = nc.jit(mixed).lower(x, w).source("python")
    assert "CALLBACKS[0]" in text and "# v" in text and "custom op Square" in text, text
    graph = nc.make_graph(mixed)(x, w)
    (got,) = compile_source(graph)(x, w)
    np.testing.assert_allclose(got, mixed(nc.Tensor(x), nc.Tensor(w)).numpy(), rtol=1e-13)
