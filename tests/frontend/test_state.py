"""Functionalized mutation under jit: `.data`, `.grad` and optimizer numbers written back.

Each test runs the same Python twice, eagerly and jitted, and compares what the objects hold
afterwards; the eager run is the reference.
"""

from __future__ import annotations

import numpy as np
import pytest

import needlec as nc
from needlec import TracerError


def f32(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def test_data_write_on_captured_tensor_is_written_back_in_place():
    w = nc.Tensor(f32(3))
    before = w

    @nc.jit
    def bump(x):
        w.data = w.data + x
        return w * 2.0  # reads the new value

    out = bump(np.ones(3, dtype="float32"))
    np.testing.assert_array_equal(w.numpy(), f32(3) + 1)
    np.testing.assert_array_equal(out.numpy(), (f32(3) + 1) * 2)
    assert w is before and bump.trace_count == 1
    bump(np.ones(3, dtype="float32"))  # the second call starts from the written value
    np.testing.assert_array_equal(w.numpy(), f32(3) + 2)
    assert bump.trace_count == 1


def test_data_write_on_argument_is_written_into_the_callers_tensor():
    x = nc.Tensor(f32(4), requires_grad=False)

    @nc.jit
    def scale(t):
        t.data = t.data * 3.0
        return t.sum()

    total = scale(x)
    np.testing.assert_allclose(x.numpy(), f32(4) * 3, rtol=1e-6)
    np.testing.assert_allclose(total.numpy(), (f32(4) * 3).sum(), rtol=1e-5)


def test_backward_inside_jit_sets_grad_of_outside_tensors():
    w = nc.Tensor(f32(3, 2))
    v = nc.Tensor(f32(3, 2, seed=1))

    def loss(x):
        out = ((x @ w) ** 2).sum()
        out.backward()
        return out

    x = f32(5, 3, seed=2)
    ref = loss(nc.Tensor(x, requires_grad=False))
    g_eager = w.grad.numpy()
    w.grad = None
    got = nc.jit(loss)(x)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-6)
    np.testing.assert_allclose(w.grad.numpy(), g_eager, rtol=1e-6)
    assert v.grad is None  # not on the path: untouched
    assert w.grad.op is None and not w.grad.requires_grad  # a plain value, no history


def test_reading_grad_that_the_trace_did_not_write_is_guarded():
    w = nc.Tensor(f32(3))

    @nc.jit
    def has_grad():
        return w * 0.0 if w.grad is None else w.grad * 1.0

    assert np.all(has_grad().numpy() == 0)
    w.grad = nc.Tensor(np.full(3, 5.0, dtype="float32"))
    np.testing.assert_array_equal(has_grad().numpy(), np.full(3, 5.0))  # retraced
    assert has_grad.trace_count == 2
    w.grad = nc.Tensor(np.full(3, 7.0, dtype="float32"))
    np.testing.assert_array_equal(has_grad().numpy(), np.full(3, 7.0))  # read as an input
    assert has_grad.trace_count == 2


def test_optimizer_numbers_are_inputs_and_the_step_count_an_output():
    w = nc.Tensor(f32(4))
    opt = nc.optim.Adam([w], lr=0.1)

    @nc.jit
    def step():
        opt.reset_grad()
        (w * w).sum().backward()
        opt.step()

    step()
    step()
    assert opt.t == 2 and isinstance(opt.t, int)
    opt.lr = 0.0  # takes effect at once, with no retrace
    before = w.numpy().copy()
    step()
    np.testing.assert_array_equal(w.numpy(), before)
    assert opt.t == 3 and step.trace_count == 1


class Scaler:
    """A library-style object whose Python numbers a trace reads (like nn.Module)."""

    _jit_guarded = True

    def __init__(self, k):
        self.k = k
        self.children = [[{"deep": self}]]


class Holder:
    def __init__(self, inner):
        self.a = [[{"b": inner}]]  # far from any captured tensor


def test_watched_objects_are_guarded_however_deep():
    inner = Scaler(2.0)
    holder = Holder(inner)

    @nc.jit
    def f(x):
        return x * holder.a[0][0]["b"].k

    x = np.ones(2, dtype="float32")
    assert np.all(f(x).numpy() == 2)
    inner.k = 3.0
    assert np.all(f(x).numpy() == 3)
    assert f.trace_count == 2


def test_recompile_reason_is_printed(capsys, monkeypatch):
    monkeypatch.setenv("NEEDLEC_DEBUG", "recompiles")
    inner = Scaler(2.0)
    f = nc.jit(lambda x: x * inner.k)
    f(np.ones(2, dtype="float32"))
    inner.k = 5.0
    f(np.ones(2, dtype="float32"))
    err = capsys.readouterr().err
    assert "first call" in err
    assert "inner.k changed (2.0 -> 5.0)" in err


def test_storing_a_tracer_in_a_dict_names_the_place_and_the_fix():
    state = {}
    w = nc.Tensor(f32(2))

    def step():
        state["u"] = w * 2.0
        return w

    with pytest.raises(TracerError, match=r"state\.u|u.*assign its \.data"):
        nc.jit(step)()


def test_reading_a_value_inside_jit_names_the_users_line():
    w = nc.Tensor(f32(2))

    def step(x):
        loss = (x * w).sum()
        return float(loss)  # the line the error names

    with pytest.raises(TracerError, match=r"float\(\).*test_state\.py:\d+"):
        nc.jit(step)(np.ones(2, dtype="float32"))


def test_a_tracer_stored_in_a_closure_list_is_caught_at_trace_time():
    leaked = []

    @nc.jit
    def f(x):
        y = x * 2.0
        leaked.append(y)
        return y

    with pytest.raises(TracerError, match=r"stored a traced value in leaked\[0\]"):
        f(np.ones(2, dtype="float32"))


_SINK = Holder(None)


def test_a_tracer_leaked_past_the_checks_fails_where_it_is_used():
    def f(x):
        y = x * 2.0
        globals()["_SINK"].a = y  # reached by name lookup, which the trace-time walk cannot see
        return y

    nc.jit(f)(np.ones(2, dtype="float32"))
    with pytest.raises(TracerError, match=r"escaped.*test_state\.py:\d+"):
        _SINK.a + 1.0  # the line the error names


def test_data_assignment_checks_dtype_inside_jit():
    w = nc.Tensor(f32(2))

    def bad(x):
        w.data = x  # float64 into float32
        return w

    with pytest.raises(TypeError, match="dtype float64 does not match float32"):
        nc.jit(bad)(np.ones(2))


def test_backward_sets_grad_of_tensor_arguments_as_eagerly():
    x = f32(5, 3, seed=2)
    w0 = f32(3, 2)

    def loss(w, x):
        out = ((x @ w) ** 2).sum()
        out.backward()
        return out

    w_eager = nc.Tensor(w0)
    loss(w_eager, nc.Tensor(x, requires_grad=False))
    w_jit = nc.Tensor(w0)
    nc.jit(loss)(w_jit, x)
    np.testing.assert_allclose(w_jit.grad.numpy(), w_eager.grad.numpy(), rtol=1e-6)


def test_reading_the_callers_grad_of_an_argument_is_an_error_not_none():
    w = nc.Tensor(f32(3))
    w.grad = nc.Tensor(np.ones(3, dtype="float32"))

    def halve(t):
        return t.grad * 0.5  # the line the error names

    with pytest.raises(TracerError, match=r"\.grad of a jit argument.*test_state\.py:\d+"):
        nc.jit(halve)(w)


# ---------------------------------------------------------------- no stale traces


def test_freezing_a_captured_parameter_retraces():
    a, b = nc.Tensor(f32(3)), nc.Tensor(f32(3, seed=1))
    opt = nc.optim.SGD([a, b], lr=0.1)

    @nc.jit
    def step():
        opt.reset_grad()
        (a * b).sum().backward()
        opt.step()

    step()
    b.requires_grad = False  # frozen: backward no longer reaches it, the step skips it
    before = b.numpy().copy()
    step()
    np.testing.assert_array_equal(b.numpy(), before)
    assert step.trace_count == 2


class Box:
    _jit_guarded = True

    def __init__(self):
        self.fn = lambda x: x * 2.0
        self.factors = (5.0,)
        self.items = [1.0]


def test_watched_structure_swaps_and_appends_retrace():
    box = Box()
    f = nc.jit(lambda x: box.fn(x) * box.factors[0] * float(len(box.items)))
    x = np.ones(2, dtype="float32")
    assert np.all(f(x).numpy() == 10)
    box.fn = lambda x: x * 3.0  # a swapped callable (a layer)
    assert np.all(f(x).numpy() == 15)
    box.factors = (7.0,)  # a rebound tuple
    assert np.all(f(x).numpy() == 21)
    box.items.append(2.0)  # a list grown in place
    assert np.all(f(x).numpy() == 42)
    assert f.trace_count == 4


def test_partial_functions_are_guarded_through_their_arguments():
    import functools

    box = Box()

    def fwd(b, x):
        return x * b.factors[0]

    f = nc.jit(functools.partial(fwd, box))
    x = np.ones(2, dtype="float32")
    assert np.all(f(x).numpy() == 5)
    box.factors = (6.0,)
    assert np.all(f(x).numpy() == 6)


def test_a_data_view_taken_before_a_write_keeps_the_old_value():
    def f(x):
        old = w.data
        w.data = w.data * 2.0
        return x + old

    w = nc.Tensor(np.ones(3, dtype="float32"))
    eager = f(nc.Tensor(np.zeros(3, dtype="float32"))).numpy()
    w = nc.Tensor(np.ones(3, dtype="float32"))
    got = nc.jit(f)(np.zeros(3, dtype="float32")).numpy()
    np.testing.assert_array_equal(got, eager)
    np.testing.assert_array_equal(w.numpy(), [2, 2, 2])


def test_a_hyperparameter_read_as_a_python_number_is_guarded():
    w = nc.Tensor(np.ones(2, dtype="float32"))
    opt = nc.optim.SGD([w], lr=0.5)

    @nc.jit
    def shrink():
        w.data = w.data * (1 - opt.lr)  # a Python float baked into the graph

    shrink()
    opt.lr = 0.25
    shrink()
    np.testing.assert_allclose(w.numpy(), [0.5 * 0.75] * 2)
    assert shrink.trace_count == 2


def test_an_argument_grad_that_appears_after_the_trace_is_an_error():
    def f(t):
        return t * 0.0 if t.grad is None else t.grad * 1.0

    jf = nc.jit(f)
    x = nc.Tensor(np.ones(2, dtype="float32"))
    jf(x)
    x.grad = nc.Tensor(np.full(2, 7.0, dtype="float32"))
    with pytest.raises(TracerError, match=r"\.grad of a jit argument"):
        jf(x)


def test_aliased_arguments_that_are_written_are_refused():
    def twice(a, b):
        a.data = a.data + 1.0
        b.data = b.data + 1.0
        return a

    x = nc.Tensor(np.ones(2, dtype="float32"))
    with pytest.raises(ValueError, match="argument leaf 0 is also argument leaf 1"):
        nc.jit(twice)(x, x)
    w = nc.Tensor(np.ones(2, dtype="float32"))

    def bump(t):
        w.data = w.data + 1.0
        return t * 1.0

    with pytest.raises(ValueError, match="also writes through the closure"):
        nc.jit(bump)(w)


def test_parameters_sharing_one_grad_object_are_read_through_each_owner():
    a, b = nc.Tensor(np.ones(2, dtype="float32")), nc.Tensor(np.ones(2, dtype="float32"))
    (a + b).sum().backward()  # both .grad may be one object
    f = nc.jit(lambda: a.grad * 1.0 + b.grad * 10.0)
    np.testing.assert_array_equal(f().numpy(), [11, 11])
    a.grad = nc.Tensor(np.full(2, 2.0, dtype="float32"))
    b.grad = nc.Tensor(np.full(2, 3.0, dtype="float32"))
    np.testing.assert_array_equal(f().numpy(), [32, 32])


def test_a_written_back_value_never_shares_memory_with_an_input():
    p, q = nc.Tensor(np.zeros(2, dtype="float32")), nc.Tensor(np.ones(2, dtype="float32"))

    @nc.jit
    def copy():
        p.data = q.data * 1.0  # simplifies to q itself

    copy()
    q.realize_cached_data().numpy()  # a copy; perturb through the backing array instead
    np.asarray(q.realize_cached_data())[...] += 5.0
    np.testing.assert_array_equal(p.numpy(), [1, 1])


def test_a_non_number_hyperparameter_is_a_clear_error():
    w = nc.Tensor(np.ones(2, dtype="float32"))
    opt = nc.optim.SGD([w], lr=0.1)

    @nc.jit
    def step():
        opt.reset_grad()
        (w * w).sum().backward()
        opt.step()

    step()
    opt.lr = None
    with pytest.raises(TypeError, match=r"SGD\.lr = None"):
        step()
