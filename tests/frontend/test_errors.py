"""Errors a user sees: they name the shapes, the operation, and the user's own file and line."""

import inspect
import os

import numpy as np
import pytest

import needlec as nc

HERE = os.path.basename(__file__)


def _next_line():
    """The line number after the caller's line: put the offending call right below."""
    return inspect.currentframe().f_back.f_lineno + 1


def _assert_names_line(message, line):
    assert f"{HERE}:{line}" in message, f"expected {HERE}:{line} in: {message}"


def _t(*shape):
    return nc.Tensor(np.ones(shape, "float32"))


# ---------------------------------------------------------------- shape errors

# name: (op on two tensors, shape a, shape b)
SHAPE_MISMATCH = {
    "matmul_operator": (lambda a, b: a @ b, (2, 3), (4, 5)),
    "matmul_function": (lambda a, b: nc.ops.matmul(a, b), (2, 3), (4, 5)),
    "batched_matmul": (lambda a, b: a @ b, (2, 3, 4), (3, 4, 5)),
    "add_operator": (lambda a, b: a + b, (2, 3), (4, 5)),
    "add_function": (lambda a, b: nc.ops.add(a, b), (2, 3), (3, 2)),
    "multiply": (lambda a, b: nc.ops.multiply(a, b), (2, 3), (2, 4)),
    "subtract": (lambda a, b: a - b, (3,), (4,)),
    "divide": (lambda a, b: a / b, (2, 3), (4, 5)),
}


@pytest.mark.parametrize("name", list(SHAPE_MISMATCH))
def test_shape_error_eager_names_shapes_and_line(name):
    op, sa, sb = SHAPE_MISMATCH[name]
    a, b = _t(*sa), _t(*sb)
    with pytest.raises(nc.ShapeError) as info:
        op(a, b)
    msg = str(info.value)
    assert str(sa) in msg and str(sb) in msg, msg
    # the lambda in the table is the user's line that applied the op
    _assert_names_line(msg, op.__code__.co_firstlineno)


@pytest.mark.parametrize("name", list(SHAPE_MISMATCH))
def test_shape_error_in_jit_names_shapes_and_line(name):
    op, sa, sb = SHAPE_MISMATCH[name]

    def f(a, b):
        return op(a, b) * 2.0

    with pytest.raises(nc.ShapeError) as info:
        nc.jit(f)(np.ones(sa, "float32"), np.ones(sb, "float32"))
    msg = str(info.value)
    assert str(sa) in msg and str(sb) in msg, msg
    _assert_names_line(msg, op.__code__.co_firstlineno)


def test_shape_error_names_the_line_of_a_direct_call():
    a, b = _t(2, 3), _t(4, 5)
    with pytest.raises(nc.ShapeError) as info:
        line = _next_line()
        a @ b
    _assert_names_line(str(info.value), line)
    with pytest.raises(nc.ShapeError) as info:
        line = _next_line()
        a + b
    _assert_names_line(str(info.value), line)


def test_shape_error_in_jit_names_the_line_inside_the_function():
    lines = {}

    def f(x, w, b):
        lines["matmul"] = _next_line()
        y = x @ w
        lines["add"] = _next_line()
        return y + b

    with pytest.raises(nc.ShapeError) as info:
        nc.jit(f)(np.ones((2, 3), "float32"), np.ones((4, 5), "float32"), np.ones(3, "float32"))
    msg = str(info.value)
    assert "(2, 3)" in msg and "(4, 5)" in msg
    _assert_names_line(msg, lines["matmul"])
    with pytest.raises(nc.ShapeError) as info:
        nc.jit(f)(np.ones((2, 3), "float32"), np.ones((3, 5), "float32"), np.ones(3, "float32"))
    msg = str(info.value)
    assert "(2, 5)" in msg and "(3,)" in msg
    _assert_names_line(msg, lines["add"])


@pytest.mark.parametrize(
    "op,fragments",
    [
        (lambda a: nc.ops.reshape(a, (4, 5)), ["(2, 3)", "(4, 5)"]),
        (lambda a: nc.ops.broadcast_to(a, (4, 5)), ["(2, 3)", "(4, 5)"]),
        (lambda a: a.reshape((4, -1)), ["(2, 3)", "(4, -1)"]),
        (lambda a: nc.ops.summation(a, axes=(5,)), ["axis 5"]),
        (lambda a: nc.ops.stack([a, _t(3, 2)], 0), ["(2, 3)", "(3, 2)"]),
    ],
    ids=["reshape", "broadcast_to", "reshape_infer", "summation_axis", "stack"],
)
@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_other_shape_errors_name_shapes_and_line(op, fragments, jitted):
    with pytest.raises(nc.ShapeError) as info:
        if jitted:
            nc.jit(op)(np.ones((2, 3), "float32"))
        else:
            op(_t(2, 3))
    msg = str(info.value)
    for fragment in fragments:
        assert fragment in msg, msg
    _assert_names_line(msg, op.__code__.co_firstlineno)


def test_shape_error_is_a_value_error():
    assert issubclass(nc.ShapeError, ValueError)
    assert nc.ShapeError is nc.ir.ShapeError


# ---------------------------------------------------------------- reading values inside jit


def test_python_if_on_a_traced_value():
    lines = []

    def f(x):
        lines.append(_next_line())
        if x.sum() > 0:
            return x
        return -x

    with pytest.raises(nc.TracerError) as info:
        nc.jit(f)(np.ones(3, "float32"))
    msg = str(info.value)
    assert "bool()" in msg or "if" in msg
    _assert_names_line(msg, lines[0])
    assert "static_argnums" in msg  # says what to do instead


@pytest.mark.parametrize(
    "read,name",
    [
        (lambda t: float(t.sum()), "float()"),
        (lambda t: t.numpy(), "numpy()"),
        (lambda t: int(t.sum()), "int()"),
        (lambda t: t.sum().item(), "item()"),
        (lambda t: np.asarray(t), "np.asarray()"),
        (lambda t: t.realize_cached_data(), "realize_cached_data()"),
        (lambda t: [0, 1, 2][t.sum()], "index"),
    ],
    ids=["float", "numpy", "int", "item", "asarray", "realize_cached_data", "index"],
)
def test_reading_a_traced_value(read, name):
    lines = []

    def f(x):
        lines.append(_next_line())
        read(x)
        return x

    with pytest.raises(nc.TracerError) as info:
        nc.jit(f)(np.ones(3, "float32"))
    msg = str(info.value)
    assert name in msg, msg
    _assert_names_line(msg, read.__code__.co_firstlineno)


def test_float_of_a_traced_value_names_the_line_in_the_function():
    lines = []

    def f(x):
        lines.append(_next_line())
        s = float(x.sum())
        return x * s

    with pytest.raises(nc.TracerError) as info:
        nc.jit(f)(np.ones(3, "float32"))
    assert "float()" in str(info.value)
    _assert_names_line(str(info.value), lines[0])


def test_tracer_error_is_a_runtime_error():
    assert issubclass(nc.TracerError, RuntimeError)


@pytest.mark.filterwarnings("ignore:jit")  # the call counter is a side effect, on purpose
def test_a_failed_trace_leaves_jit_usable():
    calls = {"n": 0}

    def f(x, flag):
        calls["n"] += 1
        if flag:
            float(x)
        return x * 2.0

    jf = nc.jit(f, static_argnums=1)
    with pytest.raises(nc.TracerError):
        jf(np.ones(2, "float32"), True)
    np.testing.assert_array_equal(jf(np.ones(2, "float32"), False).numpy(), [2.0, 2.0])
    # and eager code right after runs eagerly (no trace left behind)
    np.testing.assert_array_equal((_t(2) * 3.0).numpy(), [3.0, 3.0])


# ---------------------------------------------------------------- non-static Python arguments


@pytest.mark.parametrize(
    "value",
    ["mode", b"raw", 1 + 2j, ["a", "b"], {"act": "relu"}, (np.ones(2, "float32"), "x")],
    ids=["str", "bytes", "complex", "list_of_str", "dict_of_str", "tuple_with_str"],
)
def test_python_value_argument_must_be_static(value):
    jf = nc.jit(lambda x, s: x)
    with pytest.raises(TypeError) as info:
        jf(np.ones(2, "float32"), value)
    msg = str(info.value)
    assert "static_argnums" in msg and "argument 1" in msg, msg


def test_string_argument_message_shows_the_fix():
    def scale(x, s):
        return x * len(s)

    with pytest.raises(TypeError) as info:
        nc.jit(scale)(np.ones(2, "float32"), "two")
    msg = str(info.value)
    assert "str" in msg and "'two'" in msg
    assert "jit(scale, static_argnums=(1,))" in msg


def test_python_value_keyword_argument_names_the_keyword():
    def scale(x, factor=None):
        return x * factor

    with pytest.raises(TypeError) as info:
        nc.jit(scale)(np.ones(2, "float32"), factor="2.0")
    msg = str(info.value)
    assert "factor" in msg and "'2.0'" in msg, msg


# ---------------------------------------------------------------- escaped tracers


def _leak():
    leaked = []

    def f(x):
        y = x * 2.0
        leaked.append(y)
        return y

    nc.make_graph(f)(np.ones(3, "float32"))  # make_graph only traces: the leak goes unchecked
    return leaked[0]


def test_jit_refuses_a_tracer_stored_in_an_object_it_reaches():
    class State:
        pass

    s = State()
    s.running = nc.Tensor(np.zeros(3, "float32"))

    def f(x):
        s.running = s.running * 0.9 + x * 0.1
        return x

    with pytest.raises(nc.TracerError, match=r"stored a traced value in s\.running"):
        nc.jit(f)(np.ones(3, "float32"))


def test_jit_warns_of_a_python_side_effect_while_tracing():
    class Counter:
        t = 0

    c = Counter()
    c.t = 0

    def f(x):
        c.t += 1
        return x / c.t

    with pytest.warns(UserWarning, match="changed a Python value while tracing"):
        nc.jit(f)(np.ones(3, "float32"))


@pytest.mark.parametrize(
    "use",
    [
        lambda t: t + 1.0,
        lambda t: t * _t(3),
        lambda t: nc.ops.exp(t),
        lambda t: t.numpy(),
        lambda t: float(t.sum()),
        lambda t: nc.jit(lambda x: x + t)(np.ones(3, "float32")),
        lambda t: nc.make_graph(lambda x: x * t)(np.ones(3, "float32")),
    ],
    ids=["scalar_op", "binary_op", "op_function", "numpy", "float", "in_jit", "in_make_graph"],
)
def test_escaped_tracer(use):
    t = _leak()
    with pytest.raises(nc.TracerError) as info:
        use(t)
    msg = str(info.value)
    assert "escaped" in msg, msg
    _assert_names_line(msg, use.__code__.co_firstlineno)  # where it was used


def test_escaped_tracer_names_the_line_of_use():
    t = _leak()
    with pytest.raises(nc.TracerError) as info:
        line = _next_line()
        t + 1.0
    _assert_names_line(str(info.value), line)


def test_escaped_tracer_repr_says_so():
    assert "escaped" in repr(_leak())
