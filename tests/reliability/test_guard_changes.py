"""Guards read the change log: modules and optimizers are re-checked only after a write to them.

`Guard.visits` counts the objects a guard's checks compare or fingerprint. On an unchanged
training step it must stay put (modules and optimizers are watched through the change log);
after each kind of change the next call must still trace again, or run the right trace.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest

import needlec as nc
from needlec import nn, optim
from needlec.frontend import guards


def _batch(n: int = 8, d: int = 6, classes: int = 4) -> tuple[nc.Tensor, nc.Tensor]:
    rng = np.random.default_rng(0)
    x = nc.Tensor(rng.standard_normal((n, d)).astype("float32"))
    y = nc.Tensor(rng.integers(0, classes, n).astype("float32"))
    return x, y


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.0), nn.Linear(16, 4))


def _train_step(model: nn.Module, opt: optim.Optimizer):
    loss_fn = nn.SoftmaxLoss()

    @nc.jit
    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def _guards(f) -> list[guards.Guard]:
    return [g for entries in f._cache.values() for _, g in entries]


def _visits(f) -> int:
    return sum(g.visits for g in _guards(f))


@pytest.mark.parametrize("make_opt", [optim.SGD, optim.Adam], ids=["sgd", "adam"])
def test_an_unchanged_training_step_checks_no_object(make_opt):
    model = _mlp()
    opt = make_opt(model.parameters(), lr=0.01)
    step = _train_step(model, opt)
    x, y = _batch()
    step(x, y)
    (guard,) = _guards(step)
    assert len(guard.objects) >= 8  # modules, the optimizer, its params list and state dicts
    before = _visits(step)
    for _ in range(5):
        step(x, y)
        model.train()  # sets `training` to the object it holds: not a change
    assert _visits(step) == before
    assert step.trace_count == 1
    assert guard.check() is None


def test_eval_and_train_select_their_own_traces():
    model = _mlp()
    step = nc.jit(lambda x: model(x))
    x, _ = _batch()
    step(x)
    model.eval()
    step(x)
    assert step.trace_count == 2
    model.train()
    step(x)
    assert step.trace_count == 2  # the training trace, from the cache
    before = _visits(step)
    step(x)
    assert _visits(step) == before


def test_a_module_number_attribute_retraces():
    model = _mlp()
    step = nc.jit(lambda x: model(x))
    x, _ = _batch()
    step(x)
    model.modules[2].p = 0.999999
    out = step(x).numpy()
    assert step.trace_count == 2
    _assert_dropped(model, out)


def _assert_dropped(model: nn.Sequential, out: np.ndarray) -> None:
    """Dropout (p nearly 1) before the last Linear left only its bias."""
    bias = model.modules[3].bias.numpy()
    np.testing.assert_allclose(out, np.broadcast_to(bias, out.shape), rtol=1e-5, atol=1e-6)


def test_a_rebound_tensor_attribute_is_seen():
    lin = nn.Linear(3, 2)
    step = nc.jit(lambda x: lin(x))
    x = nc.Tensor(np.ones((1, 3), "float32"))
    step(x)
    lin.weight = nn.Parameter(np.full((3, 2), 2.0, "float32"))
    np.testing.assert_allclose(step(x).numpy(), 6.0 + lin.bias.numpy(), rtol=1e-6)
    del lin.bias
    lin.bias = None
    np.testing.assert_allclose(step(x).numpy(), np.full((1, 2), 6.0), rtol=1e-6)


def test_parameter_values_are_inputs_not_changes():
    lin = nn.Linear(3, 2)
    step = nc.jit(lambda x: lin(x))
    x = nc.Tensor(np.ones((1, 3), "float32"))
    step(x)
    before = _visits(step)
    lin.weight.data = nc.Tensor(np.zeros((3, 2), "float32"))
    np.testing.assert_allclose(step(x).numpy(), lin.bias.numpy(), rtol=1e-6)
    assert step.trace_count == 1 and _visits(step) == before


class _Stack(nn.Module):
    """A module holding its layers in a plain list (checked at every call: not watched)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = [nn.Linear(2, 2)]

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_a_layer_appended_to_a_module_list_retraces():
    m = _Stack()
    step = nc.jit(lambda x: m(x))
    x = nc.Tensor(np.ones((1, 2), "float32"))
    step(x)
    (guard,) = _guards(step)
    walked = {guards.where(e[4], e[5]) for e in guard._walked}
    assert walked == {"m.layers", "type(m)", "type(m).__init__", "type(m).forward"}
    before = _visits(step)
    step(x)
    assert _visits(step) == before + len(walked)  # the list and the class, not the modules
    m.layers.append(nn.Linear(2, 3))
    assert step(x).shape == (1, 3)
    assert step.trace_count == 2


def test_an_optimizer_hyperparameter_read_as_a_number_retraces():
    w = nc.Tensor(np.ones(3, "float32"), requires_grad=True)
    opt = optim.SGD([w], lr=0.5)

    @nc.jit
    def scaled(x):
        return x * (opt.lr * 2)  # the number is baked into the graph: guarded

    x = nc.Tensor(np.ones(3, "float32"))
    np.testing.assert_allclose(scaled(x).numpy(), 1.0)
    opt.lr = 2.0
    np.testing.assert_allclose(scaled(x).numpy(), 4.0)
    assert scaled.trace_count == 2


def test_a_learning_rate_schedule_needs_no_retrace():
    model = _mlp()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = _train_step(model, opt)
    x, y = _batch()
    step(x, y)
    for lr in (0.05, 0.01, 0.001):
        opt.lr = lr
        step(x, y)
    assert step.trace_count == 1


def test_optimizer_containers_are_watched():
    model = _mlp()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = _train_step(model, opt)
    x, y = _batch()
    step(x, y)
    assert isinstance(opt.params, guards.WatchedList) and isinstance(opt.u, guards.WatchedDict)
    opt.u[0] = nc.init.zeros(*opt.params[0].shape)  # a rebound state tensor
    step(x, y)
    assert step.trace_count == 2
    extra = nn.Parameter(np.zeros((2,), "float32"))
    opt.params.append(extra)  # not in the loss: skipped, but the graph reads it
    opt.u[len(opt.params) - 1] = nc.init.zeros(2)
    step(x, y)
    assert step.trace_count == 3


def test_a_change_in_an_unrelated_module_checks_nothing():
    model, other = _mlp(), _mlp()
    step = nc.jit(lambda x: model(x))
    x, _ = _batch()
    step(x)
    before = _visits(step)
    other.eval()
    other.modules[2].p = 0.3
    step(x)
    assert _visits(step) == before and step.trace_count == 1


def test_a_change_pushed_out_of_the_log_is_still_seen():
    model, other = _mlp(), _mlp()
    step = nc.jit(lambda x: model(x))
    x, _ = _batch()
    step(x)
    model.modules[2].p = 0.999999
    for i in range(guards._CHANGES.maxlen + 10):  # the guard's last entry leaves the log
        other.counter = i
    _assert_dropped(model, step(x).numpy())
    assert step.trace_count == 2


def test_many_changes_check_every_watched_object():
    model = _mlp()
    step = nc.jit(lambda x: model(x))
    x, _ = _batch()
    step(x)
    (guard,) = _guards(step)
    for i in range(guard._scan + 5):  # log entries, but every module ends as it was
        model.modules[0].training = bool(i % 2)
    model.train()
    before = guard.visits
    assert guard.check() is None
    assert guard.visits - before == len(guard._watched)
    before = guard.visits
    assert guard.check() is None
    assert guard.visits == before


class _OwnSetattr(nn.Module):
    """Overrides __setattr__: the log cannot vouch for it, so it is checked at every call."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = 2.0

    def __setattr__(self, name, value) -> None:
        object.__setattr__(self, name, value)

    def forward(self, x):
        return x * self.scale


def test_a_module_with_its_own_setattr_is_checked_at_every_call():
    m = _OwnSetattr()
    step = nc.jit(lambda x: m(x))
    x = nc.Tensor(np.ones(2, "float32"))
    step(x)
    before = _visits(step)
    step(x)
    assert _visits(step) > before
    m.scale = 5.0
    np.testing.assert_allclose(step(x).numpy(), 5.0)


def test_a_direct_dict_write_with_note_change_is_seen():
    m = _mlp()
    step = nc.jit(lambda x: m(x))
    x, _ = _batch()
    step(x)
    drop = m.modules[2]
    drop.__dict__["p"] = 0.999999
    guards.note_change(drop, "p")
    _assert_dropped(m, step(x).numpy())


@pytest.mark.parametrize("how", ["vars", "update", "setdefault-after-del"])
def test_a_direct_dict_write_is_seen(how):
    """Writes to a module's instance dict itself, not through `__setattr__`, go to the log too
    (the dict is a logged one): the next call retraces with the new value."""
    m = _mlp()
    step = nc.jit(lambda x: m(x))
    x, _ = _batch()
    step(x)
    drop = m.modules[2]
    if how == "vars":
        vars(drop)["p"] = 0.999999
    elif how == "update":
        drop.__dict__.update(p=0.999999)
    else:
        del vars(drop)["p"]
        vars(drop).setdefault("p", 0.999999)
    _assert_dropped(m, step(x).numpy())


def test_a_watched_object_keeps_a_logged_dict_through_copy_and_pickle():
    import pickle

    m = _mlp()
    for twin in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        step = nc.jit(lambda x, twin=twin: twin(x))
        x, _ = _batch()
        step(x)
        vars(twin.modules[2])["p"] = 0.999999
        _assert_dropped(twin, step(x).numpy())


def test_a_change_from_another_thread_is_seen():
    m = _mlp()
    step = nc.jit(lambda x: m(x))
    x, _ = _batch()
    step(x)
    t = threading.Thread(target=m.eval)
    t.start()
    t.join()
    step(x)
    assert step.trace_count == 2


def test_watched_containers_behave_as_lists_and_dicts():
    xs = guards.WatchedList([3, 1, 2])
    start = guards._CHANGES[-1]
    xs.append(4)
    xs.sort()
    xs += [5]
    xs[0] = 0
    del xs[-1]
    assert xs == [0, 2, 3, 4] and type(xs) is guards.WatchedList
    ids = [c[0] for c in list(guards._CHANGES)[-5:]]
    assert ids == [id(xs)] * 5 and guards._CHANGES[-6] is start
    d = guards.WatchedDict(a=1)
    d["b"] = 2
    d.update(c=3)
    d.setdefault("e", 5)
    d |= {"f": 6}
    assert d.pop("a") == 1 and d == {"b": 2, "c": 3, "e": 5, "f": 6}
    assert [c[0] for c in list(guards._CHANGES)[-5:]] == [id(d)] * 5


def test_an_optimizer_copies_with_watched_containers():
    w = nc.Tensor(np.ones(3, "float32"))
    opt = optim.Adam([w], lr=0.1)
    twin = copy.deepcopy(opt)
    assert type(twin.params) is guards.WatchedList and type(twin.m) is guards.WatchedDict
    assert twin.params[0] is not w and np.array_equal(twin.params[0].numpy(), w.numpy())
    assert sorted(twin.m) == [0] and twin.lr == 0.1


def test_a_step_count_written_back_is_seen_by_a_function_that_bakes_it():
    model = _mlp()
    opt = optim.Adam(model.parameters(), lr=0.01)
    step = _train_step(model, opt)  # reads and writes opt.t at every call: an input
    times_t = nc.jit(lambda x: x * opt.t)  # reads it as a Python number: guarded
    x, y = _batch()
    step(x, y)
    np.testing.assert_allclose(times_t(x).numpy(), x.numpy() * 1, rtol=1e-6)
    step(x, y)
    assert opt.t == 2 and step.trace_count == 1
    np.testing.assert_allclose(times_t(x).numpy(), x.numpy() * 2, rtol=1e-6)
    assert times_t.trace_count == 2
