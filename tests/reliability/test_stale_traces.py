"""Stale traces: a jitted function must never return a result computed from values that have
since changed. Each test changes something the function reads between two calls (in place or
by rebinding), then compares the second result with numpy."""

from __future__ import annotations

import types

import numpy as np
import pytest

import needlec as nc
from needlec import nn, ops


def _a(*shape) -> np.ndarray:
    return np.arange(1, 1 + int(np.prod(shape)), dtype="float32").reshape(shape) / 4


X = _a(3)

# ---------------------------------------------------------------- numpy arrays

W_GLOBAL = np.array([1.0, 2.0, 3.0], "float32")


def _times_global(x):
    return x * W_GLOBAL


def test_global_array_mutated_in_place():
    f = nc.jit(_times_global)
    np.testing.assert_allclose(f(X).numpy(), X * W_GLOBAL)
    W_GLOBAL[:] = [5.0, 6.0, 7.0]
    try:
        np.testing.assert_allclose(f(X).numpy(), X * np.array([5.0, 6.0, 7.0]))
    finally:
        W_GLOBAL[:] = [1.0, 2.0, 3.0]


def test_global_array_rebound():
    global W_GLOBAL
    f = nc.jit(_times_global)
    old = W_GLOBAL
    f(X)
    W_GLOBAL = np.array([-1.0, 0.5, 4.0], "float32")
    try:
        np.testing.assert_allclose(f(X).numpy(), X * W_GLOBAL)
    finally:
        W_GLOBAL = old


def test_default_argument_array_mutated_in_place():
    def f(x, w=np.array([1.0, 2.0, 3.0], "float32")):  # noqa: B008 - the case under test
        return x * w

    jf = nc.jit(f)
    jf(X)
    f.__defaults__[0][:] = 10.0
    np.testing.assert_allclose(jf(X).numpy(), X * 10.0)


CFG_MODULE = types.ModuleType("stale_cfg")
CFG_MODULE.W = np.array([1.0, 1.0, 1.0], "float32")


def _times_module_array(x):
    return x * CFG_MODULE.W


def test_module_attribute_array_mutated_and_rebound():
    f = nc.jit(_times_module_array)
    f(X)
    CFG_MODULE.W[:] = 3.0
    np.testing.assert_allclose(f(X).numpy(), X * 3.0)
    CFG_MODULE.W = np.array([2.0, 0.0, -1.0], "float32")
    np.testing.assert_allclose(f(X).numpy(), X * CFG_MODULE.W)


# ---------------------------------------------------------------- functions


def _helper(x):
    return x * 2.0


def _calls_helper(x):
    return _helper(x) + 1.0


def test_global_helper_function_redefined():
    global _helper
    f = nc.jit(_calls_helper)
    np.testing.assert_allclose(f(X).numpy(), X * 2 + 1)
    old = _helper

    def _helper(x):  # a notebook cell run again
        return x * 3.0

    try:
        np.testing.assert_allclose(f(X).numpy(), X * 3 + 1)
    finally:
        _helper = old


def test_callable_swapped_in_a_dict():
    acts = {"act": ops.tanh}
    f = nc.jit(lambda x: acts["act"](x))
    np.testing.assert_allclose(f(X).numpy(), np.tanh(X), rtol=1e-6)
    acts["act"] = ops.relu
    np.testing.assert_allclose(f(X - 0.5).numpy(), np.maximum(X - 0.5, 0))


# ---------------------------------------------------------------- values below a root


def test_value_three_levels_into_a_dict():
    cfg = {"model": {"act": {"scale": 2.0}}}
    f = nc.jit(lambda x: x * cfg["model"]["act"]["scale"])
    f(X)
    cfg["model"]["act"]["scale"] = 5.0
    np.testing.assert_allclose(f(X).numpy(), X * 5.0)


class _Leaky(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cfg = {"act": {"slope": 0.5}}

    def forward(self, x):
        return ops.relu(x) + (x - ops.relu(x)) * self.cfg["act"]["slope"]


def test_value_in_a_dict_of_a_module_attribute():
    m = _Leaky()
    f = nc.jit(lambda x: m(x))
    xs = X - 0.5
    f(xs)
    m.cfg["act"]["slope"] = 0.1
    np.testing.assert_allclose(f(xs).numpy(), np.where(xs > 0, xs, xs * 0.1), rtol=1e-6)


class _Step:
    def __init__(self, scale: float) -> None:
        self.scale = scale


class _Steps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.steps = [_Step(2.0), _Step(3.0)]

    def forward(self, x):
        for s in self.steps:
            x = x * s.scale
        return x


def test_value_of_a_plain_object_in_a_module_list():
    m = _Steps()
    f = nc.jit(lambda x: m(x))
    f(X)
    m.steps[0].scale = 10.0
    np.testing.assert_allclose(f(X).numpy(), X * 30.0)


class _ClassScaled(nn.Module):
    scale = 2.0

    def forward(self, x):
        return x * self.scale


def test_class_attribute_of_a_module():
    m = _ClassScaled()
    f = nc.jit(lambda x: m(x))
    f(X)
    _ClassScaled.scale = 4.0
    try:
        np.testing.assert_allclose(f(X).numpy(), X * 4.0)
    finally:
        _ClassScaled.scale = 2.0


SCALE = 2.0


class _PropertyScaled:
    @property
    def scale(self) -> float:
        return SCALE


class _HelperReadsGlobal:
    def apply(self, x):
        return x * SCALE


def test_property_reading_a_global():
    global SCALE
    obj = _PropertyScaled()
    f = nc.jit(lambda x: x * obj.scale)
    f(X)
    SCALE = 7.0
    try:
        np.testing.assert_allclose(f(X).numpy(), X * 7.0)
    finally:
        SCALE = 2.0


def test_global_read_in_a_method_of_a_helper_object():
    global SCALE
    helper = _HelperReadsGlobal()
    f = nc.jit(lambda x: helper.apply(x))
    f(X)
    SCALE = -3.0
    try:
        np.testing.assert_allclose(f(X).numpy(), X * -3.0)
    finally:
        SCALE = 2.0


# ---------------------------------------------------------------- containers of tensors

TERMS: list = []
NAMED: dict = {}


def _sum_terms(x):
    for t in TERMS:
        x = x + t
    return x


def _sum_named(x):
    for t in NAMED.values():
        x = x + t
    return x


def test_tensor_appended_to_a_global_list():
    f = nc.jit(_sum_terms)
    TERMS[:] = [nc.Tensor(np.ones(3, "float32"))]
    f(X)
    TERMS.append(nc.Tensor(np.full(3, 2.0, "float32")))
    try:
        np.testing.assert_allclose(f(X).numpy(), X + 3.0)
    finally:
        TERMS.clear()


def test_tensor_added_to_a_global_dict():
    f = nc.jit(_sum_named)
    NAMED.clear()
    NAMED["a"] = nc.Tensor(np.ones(3, "float32"))
    f(X)
    NAMED["b"] = nc.Tensor(np.full(3, 2.0, "float32"))
    try:
        np.testing.assert_allclose(f(X).numpy(), X + 3.0)
    finally:
        NAMED.clear()


def test_rebound_weight_on_an_object_holding_many_others():
    class Holder:
        pass

    h = Holder()
    h.table = [object() for _ in range(60_000)]  # more than any walk limit once was
    h.w = nc.Tensor(np.ones(3, "float32"))
    f = nc.jit(lambda x: x * h.w)
    with pytest.warns(UserWarning, match="objects"):  # a large guard says so
        f(X)
    h.w = nc.Tensor(np.full(3, 4.0, "float32"))
    np.testing.assert_allclose(f(X).numpy(), X * 4.0)


# ---------------------------------------------------------------- what no guard sees


class _Slotted:
    __slots__ = ("scale",)

    def __init__(self, scale: float) -> None:
        self.scale = scale


def test_unseen_reads_are_listed_under_debug_guards(monkeypatch, capsys):
    s = _Slotted(2.0)
    monkeypatch.setenv("NEEDLEC_DEBUG", "guards")
    nc.jit(lambda x: x * s.scale)(X)
    err = capsys.readouterr().err
    assert "_Slotted" in err and "no guard" in err


def test_check_mode_names_what_changed():
    s = _Slotted(2.0)
    f = nc.jit(lambda x: x * s.scale, check=True)
    np.testing.assert_allclose(f(X).numpy(), X * 2.0)
    np.testing.assert_allclose(f(X).numpy(), X * 2.0)  # unchanged: no error
    s.scale = 3.0
    with pytest.raises(nc.StaleTraceError, match="constant"):
        f(X)


def test_check_mode_from_the_environment(monkeypatch):
    s = _Slotted(2.0)
    monkeypatch.setenv("NEEDLEC_CHECK", "1")
    f = nc.jit(lambda x: x * s.scale)
    f(X)
    s.scale = 3.0
    with pytest.raises(nc.StaleTraceError):
        f(X)


def _train(check: bool) -> list[float]:
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 3))
    opt = nc.optim.Adam(model.parameters(), lr=0.05)
    loss_fn = nn.SoftmaxLoss()

    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    jstep = nc.jit(step, check=check)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4)).astype("float32")
    y = rng.integers(0, 3, 6).astype("float32")
    np.random.seed(1)  # the same dropout seeds in both runs
    return [float(jstep(x, y).numpy()) for _ in range(4)]


def test_check_mode_runs_a_training_loop_unchanged():
    np.testing.assert_allclose(_train(check=True), _train(check=False), rtol=1e-6)


def _times_global_view(x):
    return x * W_GLOBAL[1:]


def test_view_of_a_global_array_mutated_in_place():
    f = nc.jit(_times_global_view)
    x = _a(2)
    np.testing.assert_allclose(f(x).numpy(), x * W_GLOBAL[1:])
    W_GLOBAL[:] = [5.0, 6.0, 7.0]
    try:
        np.testing.assert_allclose(f(x).numpy(), x * np.array([6.0, 7.0]))
    finally:
        W_GLOBAL[:] = [1.0, 2.0, 3.0]


def test_array_made_by_the_function_is_a_constant():
    def f(x):
        return x + np.arange(3, dtype="float32")

    jf = nc.jit(f)
    np.testing.assert_allclose(jf(X).numpy(), X + [0, 1, 2])
    assert "const [0.0, 1.0, 2.0]" in jf.lower(X).traced.graph.as_text()


def test_a_running_profiler_is_left_alone():
    import cProfile
    import sys

    f = nc.jit(lambda x: ops.tanh(x) * 2.0)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        got = f(X).numpy()
        still = sys.getprofile()
    finally:
        profiler.disable()
    np.testing.assert_allclose(got, np.tanh(X) * 2.0, rtol=1e-6)
    assert still is not None  # tracing did not switch the profiler off


def test_a_dict_the_function_counts_in_still_guards_its_other_values():
    state = {"traces": 0, "scale": 2.0}

    def f(x):
        state["traces"] += 1  # a side effect: runs when traced
        return x * state["scale"]

    jf = nc.jit(f)
    with pytest.warns(UserWarning, match="changed a Python value while tracing"):
        jf(X)
    jf(X)
    assert jf.trace_count == 1
    state["scale"] = 4.0
    with pytest.warns(UserWarning, match="changed a Python value while tracing"):
        np.testing.assert_allclose(jf(X).numpy(), X * 4.0)
