"""Property tests: ops vs numpy on random shapes; eager == jit and differentiate == backward on
random programs."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes

import needlec as nc
from needlec.codegen.reference import run_graph
from needlec.passes import differentiate

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SEEDS = st.integers(0, 2**32 - 1)


def _rand(rng, shape, lo=-1.0, hi=1.0, dtype="float64"):
    return np.asarray(rng.uniform(lo, hi, size=shape), dtype=dtype)


def _np(t):
    assert isinstance(t, nc.Tensor), f"expected a Tensor, got {type(t).__name__}"
    return t.numpy()


# ---------------------------------------------------------------- elementwise and broadcast

# name: (needlec op, numpy op, input range of a, input range of b)
BINARY = {
    "add": (nc.ops.add, np.add, (-2, 2), (-2, 2)),
    "sub": (lambda a, b: a - b, np.subtract, (-2, 2), (-2, 2)),
    "multiply": (nc.ops.multiply, np.multiply, (-2, 2), (-2, 2)),
    "divide": (nc.ops.divide, np.divide, (-2, 2), (0.5, 2)),
    "power": (nc.ops.power, np.power, (0.5, 2), (-2, 2)),
    "maximum": (nc.ops.maximum, np.maximum, (-2, 2), (-2, 2)),
}


@SETTINGS
@given(
    shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=4),
    name=st.sampled_from(sorted(BINARY)),
    seed=SEEDS,
)
def test_broadcast_binary_vs_numpy(shapes, name, seed):
    op, ref, ra, rb = BINARY[name]
    rng = np.random.default_rng(seed)
    (sa, sb), result = shapes.input_shapes, shapes.result_shape
    a, b = _rand(rng, sa, *ra), _rand(rng, sb, *rb)
    expected = ref(a, b)
    eager = op(nc.Tensor(a), nc.Tensor(b))
    assert eager.shape == tuple(result)
    np.testing.assert_allclose(_np(eager), expected, rtol=1e-12)
    jitted = nc.jit(op)(a, b)
    np.testing.assert_allclose(_np(jitted), _np(eager), rtol=1e-14)


# name: (needlec op, numpy op, input range)
UNARY = {
    "negate": (nc.ops.negate, np.negative, (-2, 2)),
    "exp": (nc.ops.exp, np.exp, (-2, 2)),
    "log": (nc.ops.log, np.log, (0.1, 3)),
    "tanh": (nc.ops.tanh, np.tanh, (-3, 3)),
    "relu": (nc.ops.relu, lambda x: np.maximum(x, 0), (-2, 2)),
    "add_scalar": (lambda x: nc.ops.add_scalar(x, 1.5), lambda x: x + 1.5, (-2, 2)),
    "mul_scalar": (lambda x: nc.ops.mul_scalar(x, -3.0), lambda x: x * -3.0, (-2, 2)),
    "divide_scalar": (lambda x: nc.ops.divide_scalar(x, 4.0), lambda x: x / 4.0, (-2, 2)),
    "power_scalar": (lambda x: nc.ops.power_scalar(x, -1.5), lambda x: x**-1.5, (0.2, 2)),
    "rsub": (lambda x: 2.0 - x, lambda x: 2.0 - x, (-2, 2)),
    "rdiv": (lambda x: 2.0 / x, lambda x: 2.0 / x, (0.5, 2)),
}


@SETTINGS
@given(
    shape=array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4),
    name=st.sampled_from(sorted(UNARY)),
    seed=SEEDS,
)
def test_unary_vs_numpy(shape, name, seed):
    op, ref, r = UNARY[name]
    a = _rand(np.random.default_rng(seed), shape, *r)
    eager = op(nc.Tensor(a))
    assert eager.shape == tuple(shape)
    np.testing.assert_allclose(_np(eager), ref(a), rtol=1e-12)
    np.testing.assert_allclose(_np(nc.jit(op)(a)), ref(a), rtol=1e-12)


@st.composite
def shape_and_axes(draw):
    shape = draw(array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4))
    n = len(shape)
    choices = [st.none()]
    if n:
        choices.append(st.integers(-n, n - 1))
        choices.append(st.lists(st.integers(0, n - 1), unique=True, max_size=n).map(tuple))
    return shape, draw(st.one_of(*choices))


def _np_axes(axes):
    return axes if axes is None or isinstance(axes, tuple) else (axes,)


def _np_logsumexp(a, axes):
    ax = _np_axes(axes)
    m = np.max(a, axis=ax, keepdims=True)
    return (np.log(np.sum(np.exp(a - m), axis=ax, keepdims=True)) + m).reshape(
        np.sum(a, axis=ax).shape
    )


REDUCE = {
    "summation": (lambda x, axes: nc.ops.summation(x, axes=axes), np.sum),
    "logsumexp": (lambda x, axes: nc.ops.logsumexp(x, axes=axes), _np_logsumexp),
    "max": (lambda x, axes: x.max(axes), np.max),
}


@SETTINGS
@given(sa=shape_and_axes(), name=st.sampled_from(sorted(REDUCE)), seed=SEEDS)
def test_reduce_vs_numpy(sa, name, seed):
    shape, axes = sa
    op, ref = REDUCE[name]
    a = _rand(np.random.default_rng(seed), shape, -3, 3)
    expected = np.asarray(ref(a, _np_axes(axes)))
    eager = op(nc.Tensor(a), axes)
    assert eager.shape == expected.shape
    np.testing.assert_allclose(_np(eager), expected, rtol=1e-12)
    jitted = nc.jit(lambda x: op(x, axes))(a)
    np.testing.assert_allclose(_np(jitted), expected, rtol=1e-12)


@SETTINGS
@given(
    target=array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4),
    data=st.data(),
    seed=SEEDS,
)
def test_broadcast_to_and_its_gradient(target, data, seed):
    # a source shape that broadcasts to target: drop leading dims, set some dims to 1
    drop = data.draw(st.integers(0, len(target)))
    src = tuple(1 if data.draw(st.booleans()) else d for d in target[drop:])
    rng = np.random.default_rng(seed)
    a = _rand(rng, src)
    out = nc.ops.broadcast_to(nc.Tensor(a), target)
    np.testing.assert_array_equal(_np(out), np.broadcast_to(a, target))
    # the gradient of <w, broadcast(a)> sums w back down to a's shape
    w = _rand(rng, target)
    x = nc.Tensor(a)
    (nc.ops.broadcast_to(x, target) * nc.Tensor(w)).sum().backward()
    lead = len(target) - len(src)
    expected = w.sum(axis=tuple(range(lead))) if lead else w
    keep = tuple(i for i, d in enumerate(src) if d == 1 and target[lead + i] != 1)
    expected = np.sum(expected, axis=keep, keepdims=True).reshape(src)
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(
    shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
    seed=SEEDS,
)
def test_broadcast_binary_gradient_vs_numpy(shapes, seed):
    (sa, sb), result = shapes.input_shapes, shapes.result_shape
    rng = np.random.default_rng(seed)
    a, b, w = _rand(rng, sa), _rand(rng, sb), _rand(rng, result)
    ga, gb = nc.grad(lambda x, y: (x * y * nc.Tensor(w)).sum(), argnums=(0, 1))(a, b)
    # d/da sum(w a b) = w b summed to a's shape (and the same for b)
    full_a, full_b = np.broadcast_to(w * b, result), np.broadcast_to(w * a, result)

    def down(g, shape):
        lead = g.ndim - len(shape)
        g = g.sum(axis=tuple(range(lead)))
        axes = tuple(i for i, d in enumerate(shape) if d == 1)
        return g.sum(axis=axes, keepdims=True).reshape(shape)

    np.testing.assert_allclose(_np(ga), down(full_a, sa), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(gb), down(full_b, sb), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- random programs
#
# A program is a list of steps over values (the inputs first); each step appends one value. The
# same program runs on needlec tensors (eagerly or traced) and on numpy arrays.

UNARY_STEPS = {
    "neg": (lambda v: -v, lambda v: -v),
    "tanh": (nc.ops.tanh, np.tanh),
    "relu": (nc.ops.relu, lambda v: np.maximum(v, 0)),
    "exp_tanh": (lambda v: nc.ops.exp(nc.ops.tanh(v)), lambda v: np.exp(np.tanh(v))),
    "log1p_sq": (lambda v: nc.ops.log(v * v + 1.0), lambda v: np.log(v * v + 1.0)),
    "square": (lambda v: v**2, lambda v: v**2),
    "add_c": (lambda v: v + 0.75, lambda v: v + 0.75),
    "mul_c": (lambda v: v * -1.25, lambda v: v * -1.25),
    "div_c": (lambda v: v / 2.0, lambda v: v / 2.0),
}
BINARY_STEPS = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div_safe": (lambda a, b: a / (b * b + 1.0), lambda a, b: a / (b * b + 1.0)),
    "maximum": (nc.ops.maximum, np.maximum),
}
NOT_SMOOTH = {"relu", "maximum", "max"}


def _broadcastable(a, b):
    return all(x == y or x == 1 or y == 1 for x, y in zip(a[::-1], b[::-1], strict=False))


def _bshape(a, b):
    return tuple(np.broadcast_shapes(a, b))


@st.composite
def programs(draw):
    """(input shapes, steps, output indices): shapes are tracked so every step is valid."""
    base = draw(array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    n_in = draw(st.integers(1, 3))
    shapes = []
    for _ in range(n_in):  # inputs broadcast to `base`
        drop = draw(st.integers(0, len(base) - 1))
        shapes.append(tuple(1 if draw(st.booleans()) else d for d in base[drop:]))
    values = list(shapes)
    steps = []
    for _ in range(draw(st.integers(1, 7))):
        i = draw(st.integers(0, len(values) - 1))
        s = values[i]
        kinds = ["unary", "binary", "reduce"]
        if len(s) >= 2:
            kinds.append("transpose")
        if len(s) != 1:
            kinds.append("flatten")
        if len(s) < 3:
            kinds.append("broadcast")
        kind = draw(st.sampled_from(kinds))
        if kind == "unary":
            steps.append(("unary", draw(st.sampled_from(sorted(UNARY_STEPS))), i))
            values.append(s)
        elif kind == "binary":
            partners = [j for j, t in enumerate(values) if _broadcastable(s, t)]
            j = draw(st.sampled_from(partners))
            steps.append(("binary", draw(st.sampled_from(sorted(BINARY_STEPS))), i, j))
            values.append(_bshape(s, values[j]))
        elif kind == "reduce":
            axis = draw(st.integers(0, len(s) - 1)) if s else None
            name = draw(st.sampled_from(["sum", "max", "logsumexp"]))
            steps.append(("reduce", name, i, axis))
            values.append(tuple(d for k, d in enumerate(s) if k != axis) if s else ())
        elif kind == "transpose":
            steps.append(("transpose", None, i))
            values.append(s[:-2] + (s[-1], s[-2]))
        elif kind == "flatten":
            steps.append(("flatten", None, i))
            values.append((math.prod(s),))
        else:
            steps.append(("broadcast", None, i))
            values.append((2,) + s)
    # the last value, plus sometimes one earlier value
    outs = [len(values) - 1]
    if draw(st.booleans()):
        outs.append(draw(st.integers(0, len(values) - 2)))
    return shapes, steps, outs


def _run(program, inputs, lib):
    """Run a program on needlec tensors (lib="nc") or numpy arrays (lib="np")."""
    _, steps, outs = program
    k = 0 if lib == "nc" else 1
    values = list(inputs)
    for step in steps:
        kind, name, i = step[:3]
        v = values[i]
        if kind == "unary":
            values.append(UNARY_STEPS[name][k](v))
        elif kind == "binary":
            values.append(BINARY_STEPS[name][k](v, values[step[3]]))
        elif kind == "reduce":
            axis = step[3]
            axes = None if axis is None else (axis,)
            if lib == "nc":
                values.append(
                    {"sum": nc.ops.summation, "logsumexp": nc.ops.logsumexp}[name](v, axes)
                    if name != "max"
                    else v.max(axes)
                )
            elif name == "logsumexp":
                values.append(_np_logsumexp(v, axes))
            else:
                values.append(getattr(np, name)(v, axis=axes))
        elif kind == "transpose":
            values.append(nc.ops.transpose(v) if lib == "nc" else np.swapaxes(v, -1, -2))
        elif kind == "flatten":
            values.append(
                nc.ops.reshape(v, (math.prod(v.shape),)) if lib == "nc" else v.reshape(-1)
            )
        else:
            shape = (2,) + tuple(v.shape)
            values.append(
                nc.ops.broadcast_to(v, shape) if lib == "nc" else np.broadcast_to(v, shape)
            )
    return tuple(values[j] for j in outs)


def _loss(program, inputs, lib):
    """A scalar of the program: the sum of its outputs."""
    total = None
    for out in _run(program, inputs, lib):
        s = out.sum() if lib == "nc" else np.sum(out)
        total = s if total is None else total + s
    return total


def _inputs(program, seed, dtype):
    rng = np.random.default_rng(seed)
    return [_rand(rng, s, -1.5, 1.5, dtype) for s in program[0]]


@SETTINGS
@given(program=programs(), seed=SEEDS)
def test_eager_equals_jit_on_random_programs(program, seed):
    arrays = _inputs(program, seed, "float32")
    eager = _run(program, [nc.Tensor(a) for a in arrays], "nc")
    jf = nc.jit(lambda *xs: _run(program, xs, "nc"))
    jitted = jf(*arrays)
    assert isinstance(jitted, tuple) and len(jitted) == len(eager)
    for e, j in zip(eager, jitted, strict=True):
        assert e.shape == j.shape and e.dtype == j.dtype
        np.testing.assert_allclose(_np(j), _np(e), rtol=1e-5, atol=1e-6)
    # a second call with new values reuses the trace and still agrees with eager
    arrays2 = _inputs(program, seed + 1, "float32")
    eager2 = _run(program, [nc.Tensor(a) for a in arrays2], "nc")
    for e, j in zip(eager2, jf(*arrays2), strict=True):
        np.testing.assert_allclose(_np(j), _np(e), rtol=1e-5, atol=1e-6)
    assert jf.trace_count == 1


@SETTINGS
@given(program=programs(), seed=SEEDS)
def test_random_programs_vs_numpy(program, seed):
    arrays = _inputs(program, seed, "float64")
    got = _run(program, [nc.Tensor(a) for a in arrays], "nc")
    want = _run(program, arrays, "np")
    for g, w in zip(got, want, strict=True):
        assert g.shape == np.shape(w)
        np.testing.assert_allclose(_np(g), w, rtol=1e-10, atol=1e-12)


def _fd_grad(f, arrays, k, h=1e-6):
    x = arrays[k]
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up = [a.copy() for a in arrays]
        dn = [a.copy() for a in arrays]
        up[k][idx] += h
        dn[k][idx] -= h
        g[idx] = (f(up) - f(dn)) / (2 * h)
    return g


@SETTINGS
@given(program=programs(), seed=SEEDS)
def test_differentiate_on_random_programs(program, seed):
    arrays = _inputs(program, seed, "float64")
    graph = nc.make_graph(lambda *xs: _loss(program, xs, "nc"))(*arrays)
    dgraph = differentiate(graph).verify()
    grads = run_graph(dgraph, arrays)
    assert [g.shape for g in grads] == [a.shape for a in arrays]
    # against eager backward (every program, kinks included: both take the same side)
    ts = [nc.Tensor(a) for a in arrays]
    _loss(program, ts, "nc").backward()
    for g, t in zip(grads, ts, strict=True):
        expected = np.zeros(t.shape) if t.grad is None else t.grad.numpy()
        np.testing.assert_allclose(g, expected, rtol=1e-10, atol=1e-12)
    # against float64 finite differences (smooth programs)
    if any(step[1] in NOT_SMOOTH for step in program[1]):
        return
    f = lambda xs: _loss(program, xs, "np")
    for k, g in enumerate(grads):
        fd = _fd_grad(f, arrays, k)
        scale = 1.0 + np.max(np.abs(fd), initial=0.0)
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_program_runner_itself(n):
    # the harness: a fixed program, by hand
    program = ([(2, 3)] * n, [("unary", "tanh", 0), ("reduce", "sum", n, 1)], [n + 1])
    arrays = [np.full((2, 3), 0.5)] * n
    (out,) = _run(program, [nc.Tensor(a) for a in arrays], "nc")
    np.testing.assert_allclose(_np(out), [3 * np.tanh(0.5)] * 2, rtol=1e-12)
