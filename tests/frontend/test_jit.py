"""jit: arguments and pytrees, static arguments, captured tensors, the cache, lowering."""

import sys
import types

import numpy as np
import pytest

import needlec as nc
from needlec.codegen import reference
from needlec.ir import Graph, Op

RNG = np.random.default_rng(0)


def _a(*shape, dtype="float32"):
    return RNG.uniform(-1.0, 1.0, size=shape).astype(dtype)


def _np(t):
    assert isinstance(t, nc.Tensor), f"expected a Tensor, got {type(t).__name__}"
    return t.numpy()


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "make", [lambda a: a, lambda a: nc.Tensor(a), lambda a: nc.Tensor(a, requires_grad=False)]
)
def test_tensor_and_array_arguments(make):
    x, w = _a(4, 3), _a(3, 2)
    f = nc.jit(lambda x, w: nc.ops.tanh(x @ w) * 2.0)
    out = f(make(x), make(w))
    np.testing.assert_allclose(_np(out), np.tanh(x @ w) * 2.0, rtol=1e-6)
    assert out.shape == (4, 2) and out.dtype == "float32"


def test_pytree_arguments():
    a, b, c, d = _a(3), _a(3), _a(3), _a(2, 3)
    f = nc.jit(lambda t, lst, dct: t[0] * t[1] + lst[0] + dct["w"].sum(0) + dct["nested"][0][1])
    out = f((a, nc.Tensor(b)), [c], {"w": d, "nested": [(c, a)]})
    np.testing.assert_allclose(_np(out), a * b + c + d.sum(0) + a, rtol=1e-6)


def test_pytree_outputs():
    a, b = _a(3), _a(3)
    f = nc.jit(lambda x, y: {"sum": x + y, "parts": [x * 2.0, (y.exp(), x.sum())], "none": None})
    out = f(a, b)
    assert set(out) == {"sum", "parts", "none"} and out["none"] is None
    assert isinstance(out["parts"], list) and isinstance(out["parts"][1], tuple)
    np.testing.assert_allclose(_np(out["sum"]), a + b, rtol=1e-6)
    np.testing.assert_allclose(_np(out["parts"][0]), a * 2, rtol=1e-6)
    np.testing.assert_allclose(_np(out["parts"][1][0]), np.exp(b), rtol=1e-6)
    np.testing.assert_allclose(_np(out["parts"][1][1]), a.sum(), rtol=1e-6)
    assert out["parts"][1][1].shape == ()


def test_python_values_in_outputs_are_returned_as_is():
    f = nc.jit(lambda x: (x + 1.0, "label", 3))
    t, s, n = f(_a(2))
    assert s == "label" and n == 3 and isinstance(t, nc.Tensor)


def test_output_is_an_input_or_a_constant():
    a = _a(3)
    out, c = nc.jit(lambda x: (x, nc.Tensor(np.full(2, 5.0, "float32"))))(a)
    np.testing.assert_array_equal(_np(out), a)
    np.testing.assert_array_equal(_np(c), [5.0, 5.0])


def test_results_are_concrete_tensors_usable_eagerly():
    a = _a(3)
    out = nc.jit(lambda x: x * 3.0)(a)
    np.testing.assert_allclose(_np(out + 1.0), a * 3 + 1, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_follows_the_argument(dtype):
    a = _a(2, 2, dtype=dtype)
    out = nc.jit(lambda x: nc.ops.exp(x).sum(1))(a)
    assert out.dtype == dtype
    np.testing.assert_allclose(_np(out), np.exp(a).sum(1), rtol=1e-6)


def test_jit_as_decorator_with_options():
    @nc.jit(static_argnums=(1,))
    def f(x, n):
        for _ in range(n):
            x = x * 2.0
        return x

    np.testing.assert_allclose(_np(f(np.ones(2, "float32"), 3)), [8.0, 8.0])
    assert f.__name__ == "f"


# ---------------------------------------------------------------- static arguments


def test_static_argument_change_retraces():
    calls = []

    def f(x, n, mode):
        calls.append((n, mode))
        y = x * n
        return y.exp() if mode == "exp" else y.tanh()

    jf = nc.jit(f, static_argnums=(1, 2))
    a = _a(3)
    np.testing.assert_allclose(_np(jf(a, 2.0, "exp")), np.exp(a * 2), rtol=1e-6)
    b = _a(3)
    np.testing.assert_allclose(_np(jf(b, 2.0, "exp")), np.exp(b * 2), rtol=1e-6)
    assert jf.trace_count == 1
    np.testing.assert_allclose(_np(jf(a, 3.0, "exp")), np.exp(a * 3), rtol=1e-6)
    assert jf.trace_count == 2
    np.testing.assert_allclose(_np(jf(a, 3.0, "tanh")), np.tanh(a * 3), rtol=1e-6)
    assert jf.trace_count == 3
    np.testing.assert_allclose(_np(jf(a, 2.0, "exp")), np.exp(a * 2), rtol=1e-6)
    assert jf.trace_count == 3 and len(calls) == 3


def test_static_int_argnum_and_equal_values_share_a_trace():
    jf = nc.jit(lambda x, k: x.sum(k), static_argnums=1)
    a = _a(2, 3)
    np.testing.assert_allclose(_np(jf(a, 0)), a.sum(0), rtol=1e-6)
    np.testing.assert_allclose(_np(jf(a, 1)), a.sum(1), rtol=1e-6)
    np.testing.assert_allclose(_np(jf(a, 0)), a.sum(0), rtol=1e-6)
    assert jf.trace_count == 2


def test_static_argument_must_be_hashable():
    jf = nc.jit(lambda x, opts: x * opts[0], static_argnums=1)
    with pytest.raises(TypeError, match="hashable"):
        jf(_a(2), [2.0])


def test_keyword_arguments():
    f = nc.jit(lambda x, scale=None, shift=None: x * scale + shift["b"])
    a = _a(3)
    s, b = _a(3), _a(3)
    np.testing.assert_allclose(_np(f(a, scale=s, shift={"b": b})), a * s + b, rtol=1e-6)
    s2 = _a(3)
    np.testing.assert_allclose(_np(f(a, shift={"b": b}, scale=s2)), a * s2 + b, rtol=1e-6)
    assert f.trace_count <= 2  # keyword order may or may not be part of the key
    np.testing.assert_allclose(_np(f(a, s, shift={"b": b})), a * s + b, rtol=1e-6)


def test_random_draws_are_fresh_every_call():
    f = nc.jit(lambda x: x + nc.init.rand(2, 50, low=2.0, high=3.0))
    a = np.zeros((2, 50), "float32")
    r1, r2 = _np(f(a)), _np(f(a))
    assert f.trace_count == 1
    assert r1.shape == (2, 50) and np.all((r1 >= 2.0) & (r1 < 3.0))
    assert not np.array_equal(r1, r2)  # never a draw baked in at trace time
    assert len(np.unique(r1)) > 90
    graph = f.lower(a).graph
    assert Op.RAND in {n.op for n in graph.nodes}


# ---------------------------------------------------------------- captured tensors


def test_closure_tensor_is_read_at_every_call():
    p = nc.Tensor(np.ones(3, "float32"))
    f = nc.jit(lambda x: x * p)
    a = np.arange(3, dtype="float32")
    np.testing.assert_array_equal(_np(f(a)), a)
    p.data = nc.Tensor(np.full(3, 2.0, "float32"))
    np.testing.assert_array_equal(_np(f(a)), 2 * a)
    p.data = p.data * 5.0
    np.testing.assert_array_equal(_np(f(a)), 10 * a)
    assert f.trace_count == 1


def test_captured_tensor_is_a_graph_input_not_a_constant():
    p = nc.Tensor(np.full((3,), 7.0, "float32"))
    lowered = nc.jit(lambda x: x + p).lower(_a(3))
    text = lowered.as_text()
    assert "capture[0]" in text
    assert "const" not in text and "7.0" not in text
    assert [n.op for n in lowered.graph.inputs] == [Op.INPUT, Op.INPUT]
    assert [n.arg for n in lowered.graph.inputs] == [("arg", 0), ("capture", 0)]


class _Model:
    def __init__(self):
        self.w = nc.Tensor(np.ones((3, 2), "float32"))
        self.b = nc.Tensor(np.zeros((2,), "float32"))

    def __call__(self, x):
        return x @ self.w + self.b


def test_module_attribute_tensors_are_read_at_every_call():
    m = _Model()
    f = nc.jit(lambda x: m(x))
    x = _a(4, 3)
    np.testing.assert_allclose(_np(f(x)), x @ np.ones((3, 2)), rtol=1e-6)
    w = _a(3, 2)
    m.w.data = nc.Tensor(w)
    m.b.data = nc.Tensor(np.full(2, 0.5, "float32"))
    np.testing.assert_allclose(_np(f(x)), x @ w + 0.5, rtol=1e-6)
    assert f.trace_count == 1
    assert f.lower(x).as_text().count("capture[") == 2


def test_rebound_module_attribute_is_read_at_every_call():
    # `m.w = Tensor(...)` (not `m.w.data = ...`): the function reads m.w at every call
    m = _Model()
    f = nc.jit(lambda x: m(x))
    x = _a(4, 3)
    f(x)
    w = _a(3, 2)
    m.w = nc.Tensor(w)
    np.testing.assert_allclose(_np(f(x)), x @ w, rtol=1e-6)


def test_same_tensor_captured_twice_is_one_input():
    p = nc.Tensor(_a(3))
    g = nc.make_graph(lambda x: x * p + p)(_a(3))
    assert len(g.inputs) == 2


def test_tensor_made_inside_the_function_is_a_constant():
    def f(x):
        return x + nc.Tensor(np.array([1.0, 2.0, 3.0], "float32"), requires_grad=False)

    g = nc.make_graph(f)(_a(3))
    assert len(g.inputs) == 1
    assert "const [1.0, 2.0, 3.0]" in g.as_text()
    a = _a(3)
    np.testing.assert_allclose(_np(nc.jit(f)(a)), a + [1, 2, 3], rtol=1e-6)


# ---------------------------------------------------------------- the cache


def test_same_signature_does_not_retrace():
    f = nc.jit(lambda x, y: x * y + 1.0)
    for _ in range(3):
        a, b = _a(2, 3), _a(2, 3)
        np.testing.assert_allclose(_np(f(a, b)), a * b + 1, rtol=1e-6)
    assert f.trace_count == 1


@pytest.mark.parametrize(
    "second",
    [
        lambda: (_a(3, 3), _a(3, 3)),  # shape
        lambda: (_a(2, 3, dtype="float64"), _a(2, 3, dtype="float64")),  # dtype
        lambda: ((_a(2, 3),), _a(2, 3)),  # structure
    ],
    ids=["shape", "dtype", "structure"],
)
def test_changed_signature_retraces(second):
    def f(x, y):
        x = x[0] if isinstance(x, tuple) else x
        return x * y

    jf = nc.jit(f)
    jf(_a(2, 3), _a(2, 3))
    assert jf.trace_count == 1
    x, y = second()
    out = jf(x, y)
    assert jf.trace_count == 2
    xx = x[0] if isinstance(x, tuple) else x
    np.testing.assert_allclose(_np(out), xx * y, rtol=1e-6)
    assert out.dtype == str(y.dtype)
    jf(x, y)
    assert jf.trace_count == 2
    jf(_a(2, 3), _a(2, 3))  # the first signature is still cached
    assert jf.trace_count == 2


def test_tensor_and_array_of_same_type_share_a_trace():
    f = nc.jit(lambda x: x * 2.0)
    a = _a(3)
    f(a)
    f(nc.Tensor(a, requires_grad=False))
    assert f.trace_count == 1


def test_trace_runs_the_python_function_once_per_signature():
    calls = []

    def f(x):
        calls.append(x.shape)
        return x + 1.0

    jf = nc.jit(f)
    for _ in range(4):
        jf(_a(5))
    jf(_a(6))
    assert calls == [(5,), (6,)]


# ---------------------------------------------------------------- lower and make_graph


def test_lower_gives_graph_text_and_source():
    jf = nc.jit(lambda x, y: nc.ops.exp(x) * y)
    a, b = _a(4, 8), _a(4, 8)
    lowered = jf.lower(a, b)
    assert isinstance(lowered.graph, Graph)
    assert lowered.as_text() == (
        "graph(%0:f32[4,8] = arg[0], %1:f32[4,8] = arg[1]):\n"
        "  %2:f32[4,8] = exp %0\n"
        "  %3:f32[4,8] = mul %2 %1\n"
        "  return (%3)"
    )
    src = lowered.source("python")
    assert src.startswith("def run(")
    # the source is real code: run it and compare with numpy
    namespace = reference.source_namespace(lowered.graph)
    exec(src, namespace)
    (out,) = namespace["run"](a, b)
    np.testing.assert_allclose(out, np.exp(a) * b, rtol=1e-6)
    assert jf.trace_count == 1
    jf(a, b)  # lower filled the cache
    assert jf.trace_count == 1


def test_lower_source_unknown_target():
    lowered = nc.jit(lambda x: x + 1.0).lower(_a(2))
    with pytest.raises(ValueError, match="target"):
        lowered.source("no-such-target")


def test_make_graph_gives_the_traced_graph():
    g = nc.make_graph(lambda x, w: nc.ops.relu(x @ w).sum(1))(_a(4, 3), _a(3, 2))
    assert isinstance(g, Graph)
    assert g.as_text() == (
        "graph(%0:f32[4,3] = arg[0], %1:f32[3,2] = arg[1]):\n"
        "  %2:f32[4,2] = matmul %0 %1\n"
        "  %3:f32[4,2] = relu %2\n"
        "  %4:f32[4] = sum %3 axes=(1,)\n"
        "  return (%4)"
    )
    g.verify()


def test_make_graph_with_static_argnums_and_pytree():
    def f(xs, n):
        return [x * n for x in xs]

    g = nc.make_graph(f, static_argnums=1)([_a(2), _a(3)], 4.0)
    assert g.as_text() == (
        "graph(%0:f32[2] = arg[0], %1:f32[3] = arg[1]):\n"
        "  %2:f32[2] = mul_scalar %0 c=4.0\n"
        "  %3:f32[3] = mul_scalar %1 c=4.0\n"
        "  return (%2, %3)"
    )


# ---------------------------------------------------------------- nesting and deep traces


def test_jit_inside_jit_inlines():
    inner = nc.jit(lambda x: x.exp() * 2.0)
    outer = nc.jit(lambda x: inner(x) + 1.0)
    a = _a(3)
    np.testing.assert_allclose(_np(outer(a)), np.exp(a) * 2 + 1, rtol=1e-6)
    assert inner.trace_count == 0 and outer.trace_count == 1
    text = outer.lower(a).as_text()
    assert "exp %0" in text and "mul_scalar" in text and "add_scalar" in text


def test_jitted_function_called_eagerly_after_inlining():
    inner = nc.jit(lambda x: x * 3.0)
    nc.jit(lambda x: inner(x))(_a(2))
    np.testing.assert_allclose(_np(inner(np.ones(2, "float32"))), [3.0, 3.0])
    assert inner.trace_count == 1


def test_deep_trace_without_recursion_error():
    def f(x):
        for i in range(10_000):
            x = x.tanh() if i % 2 else x * 1.0001
        return x.sum()

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        a = np.array([0.1, -0.4, 0.9])
        out = nc.jit(f)(a)
    finally:
        sys.setrecursionlimit(old)
    v = a.copy()
    for i in range(10_000):
        v = np.tanh(v) if i % 2 else v * 1.0001
    np.testing.assert_allclose(_np(out), v.sum(), rtol=1e-10)


# ---------------------------------------------------------------- guards


class _Scaled:
    def __init__(self, scale):
        self.scale = scale
        self.layers = [_Model()]


def test_python_number_read_from_an_object_is_guarded():
    m = _Scaled(2.0)
    f = nc.jit(lambda x: x * m.scale)
    x = _a(3)
    np.testing.assert_allclose(_np(f(x)), x * 2.0, rtol=1e-6)
    m.scale = 3.0
    np.testing.assert_allclose(_np(f(x)), x * 3.0, rtol=1e-6)
    assert f.trace_count == 2
    f(x)
    assert f.trace_count == 2


def test_tensor_rebound_deep_inside_an_object_retraces():
    m = _Scaled(1.0)
    f = nc.jit(lambda x: m.layers[0](x))
    x = _a(4, 3)
    f(x)
    w = _a(3, 2)
    m.layers[0].w = nc.Tensor(w)
    np.testing.assert_allclose(_np(f(x)), x @ w, rtol=1e-5)
    assert f.trace_count == 2


def test_nonlocal_rebinding_retraces():
    v = nc.Tensor(np.ones(3, "float32"))

    def g(x):
        return x * v

    f = nc.jit(g)
    x = _a(3)
    f(x)
    v = nc.Tensor(np.full(3, 2.0, "float32"))  # noqa: F841 - read by g through its closure
    np.testing.assert_allclose(_np(f(x)), x * 2.0, rtol=1e-6)


def test_many_retraces_warn():
    m = _Scaled(0.0)
    f = nc.jit(lambda x: x * m.scale)
    x = _a(2)
    with pytest.warns(UserWarning, match="has traced 8 times"):
        for k in range(8):
            m.scale = float(k)
            np.testing.assert_allclose(_np(f(x)), x * k, rtol=1e-6)


@pytest.mark.parametrize(
    "op, ref",
    [
        (lambda t, a: a**t, lambda x, a: a**x),
        (lambda t, a: t <= a, lambda x, a: x <= a),
        (lambda t, a: t >= a, lambda x, a: x >= a),
        (lambda t, a: a @ t.reshape((3, 1)), lambda x, a: a @ x.reshape(3, 1)),
    ],
    ids=["array-rpow", "le", "ge", "array-rmatmul"],
)
def test_numpy_array_on_the_left_or_comparisons(op, ref):
    x = np.array([0.5, 1.0, 2.0], "float32")
    a = np.array([[1.5, 1.0, 3.0]], "float32")
    np.testing.assert_allclose(op(nc.Tensor(x), a).numpy(), ref(x, a), rtol=1e-6)
    np.testing.assert_allclose(_np(nc.jit(lambda t: op(t, a))(x)), ref(x, a), rtol=1e-6)


# ---------------------------------------------------------------- detach and views under jit


@pytest.mark.parametrize(
    "view",
    [lambda t: t.detach(), lambda t: t.data, lambda t: nc.Tensor(t)],
    ids=["detach", "data", "Tensor(t)"],
)
def test_views_stop_gradients_through_a_jitted_call(view):
    x = nc.Tensor(np.array([1.0, 2.0, 3.0]))
    f = nc.jit(lambda x: (x * view(x)).sum())
    f(x).backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0, 2.0, 3.0])  # d/dx x*c = c
    w = nc.Tensor(np.array([1.0, 2.0, 3.0]))
    g = nc.jit(lambda x: (w * view(w) * x).sum())
    g(nc.Tensor(np.ones(3), requires_grad=False)).backward()
    np.testing.assert_allclose(w.grad.numpy(), [1.0, 2.0, 3.0])


def test_snapshot_taken_before_the_trace_keeps_its_values():
    w = nc.Tensor(np.ones(3, "float32"))
    w0 = w.data  # shares the array w has now
    f = nc.jit(lambda x: ((w - w0) ** 2).sum() + x.sum())
    x = np.zeros(3, "float32")
    assert float(f(x)) == 0.0
    w.data = w.data + 1  # w gets a new array; w0 keeps the old one
    assert float(f(x)) == pytest.approx(3.0)


def test_reading_a_captured_tensors_value_inside_jit_raises():
    t = nc.Tensor(np.array(2.0, "float32"))
    f = nc.jit(lambda x: x * float(t))
    with pytest.raises(nc.TracerError, match="outside the trace"):
        f(np.ones(2, "float32"))


def test_dtype_copy_of_a_captured_tensor_reads_it_at_every_call():
    q = nc.Tensor(np.array([1.0, 2.0], "float32"))
    f = nc.jit(lambda x: x + nc.Tensor(q, dtype="float64"))
    x = np.zeros(2)
    np.testing.assert_allclose(_np(f(x)), [1.0, 2.0])
    q.data = nc.Tensor(np.array([5.0, 6.0], "float32"))
    np.testing.assert_allclose(_np(f(x)), [5.0, 6.0])


# ---------------------------------------------------------------- callables, pytrees, seeds


def test_namedtuple_arguments_and_outputs_keep_their_type():
    import collections

    Pair = collections.namedtuple("Pair", "a b")
    f = nc.jit(lambda p: Pair(p.a * 2.0, p.b + 1.0))
    out = f(Pair(np.ones(2, "float32"), np.zeros(2, "float32")))
    assert isinstance(out, Pair)
    np.testing.assert_allclose(_np(out.a), [2.0, 2.0])
    np.testing.assert_allclose(_np(out.b), [1.0, 1.0])


def test_jit_on_a_method_reads_the_instance():
    class Layer:
        def __init__(self, scale):
            self.w = nc.Tensor(np.full(2, scale, "float32"))

        @nc.jit
        def forward(self, x):
            return x * self.w

    a, b = Layer(2.0), Layer(3.0)
    x = np.ones(2, "float32")
    np.testing.assert_allclose(_np(a.forward(x)), [2.0, 2.0])
    np.testing.assert_allclose(_np(b.forward(x)), [3.0, 3.0])
    a.w.data = nc.Tensor(np.full(2, 5.0, "float32"))
    np.testing.assert_allclose(_np(a.forward(x)), [5.0, 5.0])


def test_jit_of_a_callable_object_and_a_partial():
    import functools

    m = _Model()
    x = _a(4, 3)
    np.testing.assert_allclose(_np(nc.jit(m)(x)), x @ np.ones((3, 2)), rtol=1e-6)
    scaled = functools.partial(lambda x, c: x * c, c=nc.Tensor(np.full(3, 2.0, "float32")))
    np.testing.assert_allclose(_np(nc.jit(scaled)(_a(3) * 0 + 1)), [2.0, 2.0, 2.0])


def test_random_draws_are_fresh_each_call_and_follow_np_random_seed():
    f = nc.jit(lambda x: x + nc.init.rand(4))
    x = np.zeros(4, "float32")
    np.random.seed(0)
    first, second = _np(f(x)), _np(f(x))
    assert not np.allclose(first, second)
    np.random.seed(0)
    np.testing.assert_array_equal(_np(f(x)), first)


def test_switching_a_flag_back_and_forth_reuses_both_traces():
    m = _Scaled(1.0)
    f = nc.jit(lambda x: x * m.scale)
    x = _a(2)
    for k in range(6):
        m.scale = float(k % 2)
        np.testing.assert_allclose(_np(f(x)), x * (k % 2), rtol=1e-6)
    assert f.trace_count == 2


_usermod = types.ModuleType("_usermod")
_usermod.W = nc.Tensor(np.ones(2, "float32"))
_usermod.SCALE = 1.0


class _Config:
    gain = nc.Tensor(np.ones(2, "float32"))


_CFG = {"scale": 1.0}


@pytest.mark.parametrize(
    "fn, change, expect",
    [
        (
            lambda x: x * _usermod.W * _usermod.SCALE,
            lambda: setattr(_usermod, "SCALE", 3.0),
            [3.0, 3.0],
        ),
        (
            lambda x: x * _usermod.W,
            lambda: setattr(_usermod, "W", nc.Tensor(np.full(2, 5.0, "float32"))),
            [5.0, 5.0],
        ),
        (
            lambda x: x * _Config.gain,
            lambda: setattr(_Config, "gain", nc.Tensor(np.full(2, 7.0, "float32"))),
            [7.0, 7.0],
        ),
        (lambda x: x * _CFG["scale"], lambda: _CFG.update(scale=4.0), [4.0, 4.0]),
    ],
    ids=["module-number", "module-tensor", "class-attribute", "dict-value"],
)
def test_values_read_through_modules_classes_and_dicts_are_guarded(fn, change, expect):
    _usermod.W, _usermod.SCALE = nc.Tensor(np.ones(2, "float32")), 1.0
    _Config.gain, _CFG["scale"] = nc.Tensor(np.ones(2, "float32")), 1.0
    f = nc.jit(fn)
    x = np.ones(2, "float32")
    np.testing.assert_allclose(_np(f(x)), [1.0, 1.0])
    change()
    np.testing.assert_allclose(_np(f(x)), expect)


def test_default_argument_tensor_is_guarded():
    def g(x, w=nc.Tensor(np.ones(2, "float32"))):  # noqa: B008 - the default is the point
        return x * w

    f = nc.jit(g)
    x = np.ones(2, "float32")
    f(x)
    g.__defaults__ = (nc.Tensor(np.full(2, 6.0, "float32")),)
    np.testing.assert_allclose(_np(f(x)), [6.0, 6.0])


class _Dropoutish:
    def __init__(self, p):
        self.p = p

    def __call__(self, x):
        return x * (1 - self.p)


def test_plain_values_of_objects_next_to_the_captured_ones_are_guarded():
    # model.layers holds a parameter-free callable whose `p` the trace bakes in,
    # and model.cfg holds a scale but no tensor
    m = _Scaled(1.0)
    m.layers.append(_Dropoutish(0.5))
    m.cfg = types.SimpleNamespace(scale=1.0)
    f = nc.jit(lambda x: m.layers[1](m.layers[0](x)) * m.cfg.scale)
    x = _a(4, 3)
    base = x @ np.ones((3, 2))
    np.testing.assert_allclose(_np(f(x)), base * 0.5, rtol=1e-5)
    m.layers[1].p = 0.0
    np.testing.assert_allclose(_np(f(x)), base, rtol=1e-5)
    m.cfg.scale = 2.0
    np.testing.assert_allclose(_np(f(x)), base * 2.0, rtol=1e-5)
