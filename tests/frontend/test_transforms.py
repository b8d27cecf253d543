"""grad, value_and_grad, vjp: eagerly, inside jit, on each other; the graphs they build."""

import numpy as np
import pytest

import needlec as nc
from needlec.codegen.reference import run_graph
from needlec.ir import Op
from needlec.passes import differentiate

RNG = np.random.default_rng(1)


def _a(*shape, lo=-1.0, hi=1.0, dtype="float64"):
    return RNG.uniform(lo, hi, size=shape).astype(dtype)


def _np(t):
    assert isinstance(t, nc.Tensor), f"expected a Tensor, got {type(t).__name__}"
    return t.numpy()


def _fd_grad(f, x, h=1e-6):
    """Central differences of a numpy function f: R^n -> R, in float64."""
    x = np.asarray(x, dtype="float64")
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def _fd_hessian(f, x, h=1e-4):
    """Second differences of a numpy function f: R^n -> R (x flat), in float64."""
    n = x.size
    hess = np.zeros((n, n))
    eye = np.eye(n) * h
    for i in range(n):
        for j in range(n):
            hess[i, j] = (
                f(x + eye[i] + eye[j])
                - f(x + eye[i] - eye[j])
                - f(x - eye[i] + eye[j])
                + f(x - eye[i] - eye[j])
            ) / (4 * h * h)
    return hess


# ---------------------------------------------------------------- first order, against numpy

# name: (needlec f, numpy f, analytic gradient, input range)
FIRST_ORDER = {
    "tanh": (
        lambda x: nc.ops.tanh(x).sum(),
        lambda x: np.tanh(x).sum(),
        lambda x: 1 - np.tanh(x) ** 2,
        (-2, 2),
    ),
    "exp_times_2": (
        lambda x: (nc.ops.exp(x) * 2.0).sum(),
        lambda x: (np.exp(x) * 2).sum(),
        lambda x: 2 * np.exp(x),
        (-1, 1),
    ),
    "log_square": (
        lambda x: nc.ops.log(x * x + 1.0).sum(),
        lambda x: np.log(x * x + 1).sum(),
        lambda x: 2 * x / (x * x + 1),
        (-2, 2),
    ),
    "cube": (
        lambda x: nc.ops.power_scalar(x, 3).sum(),
        lambda x: (x**3).sum(),
        lambda x: 3 * x**2,
        (-2, 2),
    ),
    "reciprocal": (
        lambda x: (1.0 / x).sum(),
        lambda x: (1 / x).sum(),
        lambda x: -1 / x**2,
        (0.5, 2),
    ),
    "logsumexp": (
        lambda x: nc.ops.logsumexp(x, axes=(1,)).sum(),
        lambda x: np.log(np.exp(x).sum(1)).sum(),
        lambda x: np.exp(x) / np.exp(x).sum(1, keepdims=True),
        (-2, 2),
    ),
}


@pytest.mark.parametrize("name", list(FIRST_ORDER))
def test_grad_eager_matches_analytic_and_finite_differences(name):
    f, fnp, df, (lo, hi) = FIRST_ORDER[name]
    x = _a(3, 4, lo=lo, hi=hi)
    g = _np(nc.grad(f)(x))
    np.testing.assert_allclose(g, df(x), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g, _fd_grad(fnp, x), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", list(FIRST_ORDER))
def test_jit_of_grad_equals_grad(name):
    f, _, df, (lo, hi) = FIRST_ORDER[name]
    x = _a(3, 4, lo=lo, hi=hi)
    jg = nc.jit(nc.grad(f))
    np.testing.assert_allclose(_np(jg(x)), _np(nc.grad(f)(x)), rtol=1e-12)
    np.testing.assert_allclose(_np(jg(x)), df(x), rtol=1e-10, atol=1e-12)
    assert jg.trace_count == 1


def test_grad_argnums_and_value_and_grad():
    def f(w, x, b):
        return nc.ops.tanh(x @ w + b).sum()

    w, x, b = _a(3, 2), _a(4, 3), _a(2)
    z = np.tanh(x @ w + b)
    dz = 1 - z**2
    expected = {0: x.T @ dz, 1: dz @ w.T, 2: dz.sum(0)}
    # arguments not differentiated are passed as tensors here (arrays: see the test below)
    tw, tx, tb = (nc.Tensor(a, requires_grad=False) for a in (w, x, b))
    np.testing.assert_allclose(_np(nc.grad(f)(w, tx, tb)), expected[0], rtol=1e-10)
    np.testing.assert_allclose(_np(nc.grad(f, argnums=2)(tw, tx, b)), expected[2], rtol=1e-10)
    gs = nc.grad(f, argnums=(0, 1, 2))(w, x, b)
    assert isinstance(gs, tuple) and len(gs) == 3
    for k in range(3):
        np.testing.assert_allclose(_np(gs[k]), expected[k], rtol=1e-10)
    v, (g0, g2) = nc.value_and_grad(f, argnums=(0, 2))(w, tx, b)
    np.testing.assert_allclose(_np(v), z.sum(), rtol=1e-12)
    np.testing.assert_allclose(_np(g0), expected[0], rtol=1e-10)
    np.testing.assert_allclose(_np(g2), expected[2], rtol=1e-10)
    # the same under jit
    v, (g0, g2) = nc.jit(nc.value_and_grad(f, argnums=(0, 2)))(w, x, b)
    np.testing.assert_allclose(_np(v), z.sum(), rtol=1e-12)
    np.testing.assert_allclose(_np(g0), expected[0], rtol=1e-10)
    np.testing.assert_allclose(_np(g2), expected[2], rtol=1e-10)


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_value_and_grad_has_aux(jitted):
    def f(x):
        y = x * x
        return y.sum(), {"y": y, "max": y.max()}

    vg = nc.value_and_grad(f, has_aux=True)
    vg = nc.jit(vg) if jitted else vg
    x = _a(5)
    (v, aux), g = vg(x)
    np.testing.assert_allclose(_np(v), (x * x).sum(), rtol=1e-12)
    np.testing.assert_allclose(_np(aux["y"]), x * x, rtol=1e-12)
    np.testing.assert_allclose(_np(aux["max"]), (x * x).max(), rtol=1e-12)
    np.testing.assert_allclose(_np(g), 2 * x, rtol=1e-12)
    g2, aux2 = nc.grad(f, has_aux=True)(x)
    np.testing.assert_allclose(_np(g2), 2 * x, rtol=1e-12)
    np.testing.assert_allclose(_np(aux2["y"]), x * x, rtol=1e-12)


def test_grad_accepts_arrays_for_the_other_arguments():
    # as jit does: an array argument that is not differentiated is a constant tensor
    w, x = _a(3, 2), _a(4, 3)
    g = nc.grad(lambda w, x: nc.ops.tanh(x @ w).sum())(w, x)
    np.testing.assert_allclose(_np(g), x.T @ (1 - np.tanh(x @ w) ** 2), rtol=1e-10)


def test_grad_of_unused_argument_is_zero():
    x = nc.Tensor(_a(3), requires_grad=False)
    g = nc.grad(lambda x, y: (x * 2.0).sum(), argnums=1)(x, _a(2, 2))
    np.testing.assert_array_equal(_np(g), np.zeros((2, 2)))


def test_grad_needs_a_scalar_output():
    with pytest.raises(TypeError, match="scalar"):
        nc.grad(lambda x: x * 2.0)(_a(3))


def test_grad_does_not_touch_dot_grad():
    x = nc.Tensor(_a(3))
    nc.grad(lambda t: (t * t).sum())(x)
    assert x.grad is None


def test_grad_matches_eager_backward():
    def f(w, x):
        return nc.ops.logsumexp(nc.ops.relu(x @ w), axes=(1,)).sum()

    w, x = _a(3, 4), _a(5, 3)
    tw, tx = nc.Tensor(w), nc.Tensor(x)
    f(tw, tx).backward()
    gw, gx = nc.grad(f, argnums=(0, 1))(w, x)
    np.testing.assert_allclose(_np(gw), tw.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(_np(gx), tx.grad.numpy(), rtol=1e-12)


# ---------------------------------------------------------------- vjp


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_vjp(jitted):
    def f(a, b):
        return a * b, (a @ b.transpose()).sum(0)

    a, b = _a(2, 3), _a(2, 3)
    ca, cb = _a(2, 3), _a(2)

    def run(a, b, ca, cb):
        out, fn = nc.vjp(f, a, b)
        return out, fn((ca, cb))

    run = nc.jit(run) if jitted else run
    (p, q), (ga, gb) = run(a, b, ca, cb)
    np.testing.assert_allclose(_np(p), a * b, rtol=1e-12)
    np.testing.assert_allclose(_np(q), (a @ b.T).sum(0), rtol=1e-12)
    # d/da <ca, a*b> + <cb, sum_0(a b^T)> = ca*b + (ones cb^T) b ; same shape logic for b
    ones = np.ones((2, 1))
    np.testing.assert_allclose(_np(ga), ca * b + (ones * cb) @ b, rtol=1e-12)
    np.testing.assert_allclose(_np(gb), ca * a + (ones * cb).T @ a, rtol=1e-12)


def test_vjp_checks_cotangents():
    out, fn = nc.vjp(lambda x: x * 2.0, _a(3))
    with pytest.raises(ValueError, match="shape"):
        fn(np.ones(4))
    with pytest.raises(ValueError, match="cotangent"):
        fn((np.ones(3), np.ones(3)))


# ---------------------------------------------------------------- second order

# name: (needlec f, numpy f, analytic row sums of the Hessian, input range)
SECOND_ORDER = {
    "tanh": (
        lambda x: nc.ops.tanh(x).sum(),
        lambda x: np.tanh(x).sum(),
        lambda x: -2 * np.tanh(x) * (1 - np.tanh(x) ** 2),
        (-2, 2),
    ),
    "cube": (
        lambda x: (x * x * x).sum(),
        lambda x: (x**3).sum(),
        lambda x: 6 * x,
        (-2, 2),
    ),
    "log": (
        lambda x: nc.ops.log(x).sum(),
        lambda x: np.log(x).sum(),
        lambda x: -1 / x**2,
        (0.5, 2),
    ),
    "exp_sum_squared": (  # (sum e^x)^2: a dense Hessian 2 e^xi e^xj + 2 S e^xi [i == j]
        lambda x: nc.ops.exp(x).sum() * nc.ops.exp(x).sum(),
        lambda x: np.exp(x).sum() ** 2,
        lambda x: 2 * np.exp(x) * np.exp(x).sum() * 2,
        (-1, 1),
    ),
}


def _second(f):
    df = nc.grad(f)
    return nc.grad(lambda x: df(x).sum())


@pytest.mark.parametrize("name", list(SECOND_ORDER))
def test_grad_of_grad_eager(name):
    f, fnp, hess_rows, (lo, hi) = SECOND_ORDER[name]
    x = _a(4, lo=lo, hi=hi)
    ddf = _np(_second(f)(x))
    np.testing.assert_allclose(ddf, hess_rows(x), rtol=1e-10)
    np.testing.assert_allclose(ddf, _fd_hessian(fnp, x).sum(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(SECOND_ORDER))
def test_grad_of_grad_jit(name):
    f, _, hess_rows, (lo, hi) = SECOND_ORDER[name]
    x = _a(4, lo=lo, hi=hi)
    jddf = nc.jit(_second(f))
    np.testing.assert_allclose(_np(jddf(x)), hess_rows(x), rtol=1e-10)
    np.testing.assert_allclose(_np(jddf(x)), _np(_second(f)(x)), rtol=1e-12)
    assert jddf.trace_count == 1


def test_mixed_second_derivative():
    # f(a, b) = sum(a^2 b); d/db = a^2; d/da sum(a^2) = 2a
    f = lambda a, b: (a * a * b).sum()
    dfdb = nc.grad(f, argnums=1)
    mixed = nc.grad(lambda a, b: dfdb(a, b).sum(), argnums=0)
    a, b = _a(3), _a(3)
    np.testing.assert_allclose(_np(mixed(a, b)), 2 * a, rtol=1e-12)
    np.testing.assert_allclose(_np(nc.jit(mixed)(a, b)), 2 * a, rtol=1e-12)


def test_third_derivative():
    f = lambda x: (x * x * x * x).sum()  # f''' = 24 x
    d1 = nc.grad(f)
    d2 = nc.grad(lambda x: d1(x).sum())
    d3 = nc.grad(lambda x: d2(x).sum())
    x = _a(3)
    np.testing.assert_allclose(_np(d3(x)), 24 * x, rtol=1e-10)
    np.testing.assert_allclose(_np(nc.jit(d3)(x)), 24 * x, rtol=1e-10)


def test_eager_backward_of_a_gradient():
    # needle: gradients are built from differentiable ops, so they can be differentiated
    x = nc.Tensor(_a(3))
    y = nc.ops.tanh(x).sum()
    y.backward()
    gx = x.grad
    x.grad = None
    gx.sum().backward()
    t = np.tanh(x.numpy())
    np.testing.assert_allclose(x.grad.numpy(), -2 * t * (1 - t**2), rtol=1e-10)


# ---------------------------------------------------------------- grad and jit composed


def test_grad_of_jit_inside_jit_inlines():
    f = lambda x: (nc.ops.exp(x) * nc.ops.tanh(x)).sum()
    jf = nc.jit(f)
    x = _a(4)
    expected = np.exp(x) * np.tanh(x) + np.exp(x) * (1 - np.tanh(x) ** 2)
    outer = nc.jit(nc.grad(jf))
    np.testing.assert_allclose(_np(outer(x)), expected, rtol=1e-10)
    assert jf.trace_count == 0  # traced through, not run as a black box


def test_grad_of_jit_eagerly():
    # a jitted function is a function: its gradient is the gradient of what it computes
    f = lambda x: (nc.ops.exp(x) * nc.ops.tanh(x)).sum()
    x = _a(4)
    expected = np.exp(x) * np.tanh(x) + np.exp(x) * (1 - np.tanh(x) ** 2)
    np.testing.assert_allclose(_np(nc.grad(nc.jit(f))(x)), expected, rtol=1e-10)


def test_backward_through_a_jitted_call():
    f = nc.jit(lambda x: (x * x).sum())
    x = nc.Tensor(_a(3))
    f(x).backward()
    assert x.grad is not None, "a jitted call cut the tape: x.grad is None"
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy(), rtol=1e-12)


def test_deep_chain_eager_backward_and_grad():
    x0 = np.array([0.1, -0.4, 0.9])

    def f(x):
        for i in range(10_000):
            x = x.tanh() if i % 2 else x * 1.0001
        return x.sum()

    v, d = x0.copy(), np.ones(3)
    for i in range(10_000):
        if i % 2:
            v = np.tanh(v)
            d = d * (1 - v * v)
        else:
            v, d = v * 1.0001, d * 1.0001
    t = nc.Tensor(x0)
    f(t).backward()
    np.testing.assert_allclose(t.grad.numpy(), d, rtol=1e-9)
    np.testing.assert_allclose(_np(nc.jit(nc.grad(f))(x0)), d, rtol=1e-9)


# ---------------------------------------------------------------- the graphs grad builds


def test_grad_graph_has_no_dead_forward_nodes():
    f = lambda x: (nc.ops.exp(x) * 2.0).sum()
    x = _a(4, 8, dtype="float32")
    g = nc.make_graph(nc.grad(f))(x)
    ops = [n.op for n in g.nodes]
    assert Op.SUM not in ops  # the forward sum is dead: d/dx sum(...) needs no value of it
    exp = [n for n in g.nodes if n.op is Op.EXP]
    assert len(exp) == 1  # e^x is needed (d e^x = e^x), once
    # the forward exp(x) * 2 is dead: nothing multiplies e^x by the scalar 2
    assert not any(n.op is Op.MUL_SCALAR and n.src == (exp[0],) for n in g.nodes)
    text = g.as_text()
    assert " sum " not in text
    lowered = nc.jit(nc.grad(f)).lower(x)
    assert " sum " not in lowered.as_text()
    assert len(lowered.graph.outputs) == 1 and lowered.graph.outputs[0].shape == (4, 8)


def test_golden_grad_graph():
    # written by hand from the VJP rows: g = 1 broadcast back over sum, times 2, times e^x
    f = lambda x: (nc.ops.exp(x) * 2.0).sum()
    g = nc.make_graph(nc.grad(f))(_a(4, 8, dtype="float32"))
    assert g.as_text() == (
        "graph(%0:f32[4,8] = arg[0]):\n"
        "  %1:f32[] = const 1.0\n"
        "  %2:f32[1,1] = reshape %1 shape=(1,1)\n"
        "  %3:f32[4,8] = broadcast %2 shape=(4,8)\n"
        "  %4:f32[4,8] = mul_scalar %3 c=2.0\n"
        "  %5:f32[4,8] = exp %0\n"
        "  %6:f32[4,8] = mul %4 %5\n"
        "  return (%6)"
    )


def test_golden_traced_graphs():
    x = _a(4, 8, dtype="float32")
    b = _a(8, dtype="float32")
    g = nc.make_graph(lambda x, b: nc.ops.relu(x + b) - x)(x, b)
    assert g.as_text() == (
        "graph(%0:f32[4,8] = arg[0], %1:f32[8] = arg[1]):\n"
        "  %2:f32[4,8] = broadcast %1 shape=(4,8)\n"
        "  %3:f32[4,8] = add %0 %2\n"
        "  %4:f32[4,8] = relu %3\n"
        "  %5:f32[4,8] = neg %0\n"
        "  %6:f32[4,8] = add %4 %5\n"
        "  return (%6)"
    )
    g = nc.make_graph(lambda x: nc.ops.transpose(x).reshape((2, 16)) - 1.0)(x)
    assert g.as_text() == (
        "graph(%0:f32[4,8] = arg[0]):\n"
        "  %1:f32[8,4] = permute %0 perm=(1,0)\n"
        "  %2:f32[2,16] = reshape %1 shape=(2,16)\n"
        "  %3:f32[2,16] = add_scalar %2 c=-1.0\n"
        "  return (%3)"
    )
    # a shared subexpression is one node (interning)
    g = nc.make_graph(lambda x: nc.ops.exp(x) + nc.ops.exp(x))(x)
    assert g.as_text() == (
        "graph(%0:f32[4,8] = arg[0]):\n"
        "  %1:f32[4,8] = exp %0\n"
        "  %2:f32[4,8] = add %1 %1\n"
        "  return (%2)"
    )


# name: (function, argument shapes)
DIFFERENTIATE_CASES = {
    "exp_times_2": (lambda x: (nc.ops.exp(x) * 2.0).sum(), [(4, 8)]),
    "tanh_matmul": (lambda x, w: nc.ops.tanh(x @ w).sum(), [(4, 3), (3, 2)]),
    "broadcast_add": (lambda x, b: (x * (x + b)).sum(), [(4, 3), (3,)]),
    "logsumexp": (lambda x: nc.ops.logsumexp(x, axes=(1,)).sum(), [(3, 5)]),
    "logsoftmax": (lambda x: nc.ops.logsoftmax(x).sum(), [(3, 5)]),
    "relu_div": (lambda x, y: (nc.ops.relu(x) / (y * y + 1.0)).sum(), [(2, 2), (2, 2)]),
}


@pytest.mark.parametrize("name", list(DIFFERENTIATE_CASES))
def test_differentiate_pass_matches_grad_transform(name):
    f, shapes = DIFFERENTIATE_CASES[name]
    args = [_a(*s, dtype="float32") for s in shapes]
    nums = tuple(range(len(args)))
    by_pass = differentiate(nc.make_graph(f)(*args))
    by_transform = nc.make_graph(nc.grad(f, argnums=nums))(*args)
    assert by_pass.as_text() == by_transform.as_text()
    for a, b in zip(by_pass.outputs, by_transform.outputs, strict=True):
        assert a is b  # interned: the same structure is the same node
    # and both compute the eager gradient
    ts = [nc.Tensor(a) for a in args]
    f(*ts).backward()
    for out, t in zip(run_graph(by_pass.verify(), args), ts, strict=True):
        np.testing.assert_allclose(out, t.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_differentiate_with_seeds_and_wrt():
    x, w = _a(4, 3, dtype="float32"), _a(3, 2, dtype="float32")
    graph = nc.make_graph(lambda x, w: nc.ops.tanh(x @ w))(x, w)
    dg = differentiate(graph, wrt=[1], seeds=True)
    assert len(dg.inputs) == 3 and dg.inputs[2].arg == ("cotangent", 0)
    assert [o.shape for o in dg.outputs] == [(3, 2)]
    c = _a(4, 2, dtype="float32")
    (gw,) = run_graph(dg.verify(), [x, w, c])
    z = np.tanh(x @ w)
    np.testing.assert_allclose(gw, x.T @ (c * (1 - z**2)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="seed"):
        differentiate(graph)
