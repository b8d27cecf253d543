"""The hit path of a jitted call (needlec.frontend.hit): a cached call with plain positional
tensors and arrays runs without the general machinery, and gives what the general path gives,
for every argument the general path would treat differently."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import needlec as nc
from needlec import nn, optim
from needlec.frontend import hit

RNG = np.random.default_rng(3)

# only compiled code has a hit plan; under the oracles every call takes the general path, and
# these tests then check the same results through it
compiled = os.environ.get("NEEDLEC_EXECUTE", "compiled") == "compiled"
compiled_only = pytest.mark.skipif(not compiled, reason="the hit path runs compiled code only")


def _a(*shape, dtype="float32"):
    return RNG.uniform(-1.0, 1.0, size=shape).astype(dtype)


@pytest.fixture
def hits(monkeypatch):
    """A list that gets True for each call the hit path answered, False for each it passed on."""
    seen: list[bool] = []
    run = hit.HitPlan.run

    def spy(plan, args):
        out = run(plan, args)
        seen.append(out is not hit.MISS)
        return out

    monkeypatch.setattr(hit.HitPlan, "run", spy)
    return seen


def test_repeated_calls_hit_and_agree_with_numpy(hits):
    f = nc.jit(lambda a, b: a * b + 1.0)
    a, b = _a(3, 4), _a(3, 4)
    ta, tb = nc.Tensor(a, requires_grad=False), nc.Tensor(b, requires_grad=False)
    for _ in range(3):
        np.testing.assert_allclose(f(a, b).numpy(), a * b + 1.0, rtol=1e-6)
        np.testing.assert_allclose(f(ta, tb).numpy(), a * b + 1.0, rtol=1e-6)
    assert f.trace_count == 1
    if compiled:
        assert hits.count(True) >= 4 and False not in hits


def test_results_of_successive_hits_are_distinct_arrays():
    """Each call's outputs are new memory: a later call never writes over an earlier result."""
    f = nc.jit(lambda a: a * 2.0)
    xs = [_a(2, 3) for _ in range(4)]
    outs = [f(x) for x in xs]
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_allclose(out.numpy(), x * 2.0, rtol=1e-6)
    out = f(xs[0])
    out.cached_data[0, 0] = 100.0  # writing a result in place changes no other result
    np.testing.assert_allclose(outs[0].numpy(), xs[0] * 2.0, rtol=1e-6)


def test_a_changed_shape_retraces_and_the_old_one_still_hits(hits):
    f = nc.jit(lambda a, b: a + b)
    a, b = _a(2, 2), _a(2, 2)
    f(a, b), f(a, b)
    c, d = _a(3, 5), _a(3, 5)
    np.testing.assert_allclose(f(c, d).numpy(), c + d, rtol=1e-6)
    assert f.trace_count == 2
    hits.clear()
    np.testing.assert_allclose(f(a, b).numpy(), a + b, rtol=1e-6)
    np.testing.assert_allclose(f(c, d).numpy(), c + d, rtol=1e-6)
    assert f.trace_count == 2
    assert hits == ([True, True] if compiled else [])


def test_a_changed_dtype_retraces():
    f = nc.jit(lambda a, b: a + b)
    a, b = _a(2, 2), _a(2, 2)
    f(a, b), f(a, b)
    a64, b64 = a.astype("float64"), b.astype("float64")
    out = f(a64, b64)
    assert out.dtype == "float64" and f.trace_count == 2
    np.testing.assert_allclose(out.numpy(), a64 + b64, rtol=1e-12)
    t64 = [nc.Tensor(v, dtype="float64", requires_grad=False) for v in (a64, b64)]
    out = f(*t64)
    assert out.dtype == "float64" and f.trace_count == 2


def test_an_array_the_general_path_converts_is_converted():
    """A float16 or int8 array becomes float32 / int64 as the general path makes it."""
    f = nc.jit(lambda a: a * 2)
    x = _a(2, 3)
    f(x), f(x)
    half = x.astype("float16")
    got = f(half)
    assert got.dtype == "float32"
    np.testing.assert_allclose(got.numpy(), half.astype("float32") * 2, rtol=1e-6)
    small = np.arange(6, dtype="int8").reshape(2, 3)
    f(small), f(small)
    got = f(small)
    assert got.dtype == "int64"
    np.testing.assert_array_equal(got.numpy(), small.astype("int64") * 2)


@pytest.mark.parametrize("make", ["transposed", "strided", "read-only"])
def test_arrays_not_taken_as_they_lie_give_the_same_result(make, hits):
    """A non-contiguous or read-only array has the signature of a plain one, so the cached
    trace runs; the hit path passes on a non-contiguous one and the general path copies it."""
    f = nc.jit(lambda a, b: a - b)
    a, b = _a(4, 4), _a(4, 4)
    f(a, b), f(a, b)
    if make == "transposed":
        x = _a(4, 4).T
    elif make == "strided":
        x = _a(4, 8)[:, ::2]
    else:
        x = _a(4, 4)
        x.flags.writeable = False
    hits.clear()
    np.testing.assert_allclose(f(x, b).numpy(), x - b, rtol=1e-6)
    np.testing.assert_allclose(f(b, x).numpy(), b - x, rtol=1e-6)
    assert f.trace_count == 1
    if compiled:
        assert hits == ([True, True] if make == "read-only" else [False, False])


def test_a_tensor_view_that_is_not_contiguous():
    f = nc.jit(lambda a, b: a + b)
    a, b = _a(3, 3), _a(3, 3)
    ta, tb = nc.Tensor(a, requires_grad=False), nc.Tensor(b, requires_grad=False)
    f(ta, tb), f(ta, tb)
    tt = ta.transpose()
    np.testing.assert_allclose(f(tt, tb).numpy(), a.T + b, rtol=1e-6)
    rows = nc.Tensor(_a(6, 3), requires_grad=False)
    tail = nc.Tensor(rows.cached_data[3:6, :], requires_grad=False)  # offset, contiguous
    np.testing.assert_allclose(f(tail, tb).numpy(), rows.numpy()[3:] + b, rtol=1e-6)


def test_a_tensor_whose_data_was_replaced_is_read_again(hits):
    f = nc.jit(lambda a: a * 3.0)
    x = nc.Tensor(_a(2, 2), requires_grad=False)
    f(x), f(x)
    new = _a(2, 2)
    x.data = nc.Tensor(new, requires_grad=False)
    np.testing.assert_allclose(f(x).numpy(), new * 3.0, rtol=1e-6)
    x.cached_data = nc.Tensor(_a(5, 2), requires_grad=False).cached_data  # a new shape
    np.testing.assert_allclose(f(x).numpy(), x.numpy() * 3.0, rtol=1e-6)
    assert f.trace_count == 2


def test_arguments_on_two_devices_still_raise():
    f = nc.jit(lambda a, b: a + b)
    a = nc.Tensor([1.0, 2.0], device=nc.cpu())
    f(a, a), f(a, a)
    with pytest.raises(ValueError, match="different devices"):
        f(a, nc.Tensor([3.0, 4.0], device=nc.cpu_numpy()))
    np.testing.assert_allclose(f(a, a).numpy(), [2.0, 4.0])


def test_a_captured_tensor_on_another_device_still_raises():
    w = nc.Tensor([1.0, 2.0], device=nc.cpu())
    f = nc.jit(lambda a: a * w)
    a = nc.Tensor([3.0, 4.0], device=nc.cpu())
    f(a), f(a)
    w.cached_data = nc.Tensor([5.0, 6.0], device=nc.cpu_numpy()).cached_data
    with pytest.raises(ValueError, match="different devices"):
        f(a)


def test_captures_and_hyperparameters_are_read_at_every_hit(hits):
    """A jitted training step on the hit path equals the eager step, with the learning rate
    changed between calls (an input, not a guard: no retrace)."""
    x, y = _a(8, 5), RNG.integers(0, 3, size=8)
    states = []
    for mode in ("eager", "jit"):
        np.random.seed(0)
        model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss_fn = nn.SoftmaxLoss()

        def step(x, y, model=model, opt=opt, loss_fn=loss_fn):
            opt.reset_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss

        run = nc.jit(step) if mode == "jit" else step
        args = (x, y) if mode == "jit" else (nc.Tensor(x), nc.Tensor(y, dtype="int64"))
        losses = []
        for i in range(6):
            opt.lr = 0.1 / (1 + i)
            losses.append(run(*args).numpy())
        if mode == "jit":
            assert run.trace_count == 1
        states.append((losses, [p.numpy() for p in model.parameters()]))
    (le, pe), (lj, pj) = states
    np.testing.assert_allclose(lj, le, rtol=1e-4, atol=1e-6)
    for a, b in zip(pe, pj, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    if compiled:
        assert hits.count(True) >= 4


def test_a_hyperparameter_of_the_wrong_type_still_raises():
    opt = optim.SGD([nc.nn.Parameter(nc.Tensor(_a(2)))], lr=0.1)
    w = opt.params[0]

    def step(x):
        opt.reset_grad()
        loss = (w * x).sum()
        loss.backward()
        opt.step()
        return loss

    f = nc.jit(step)
    x = _a(2)
    f(x), f(x)
    opt.lr = np.float32(0.05)  # a numpy number: the general path converts it
    f(x)
    opt.lr = "fast"
    with pytest.raises(TypeError, match="lr"):
        f(x)


def test_a_written_tensor_passed_as_an_argument_still_raises():
    w = nc.nn.Parameter(nc.Tensor(_a(3)))
    opt = optim.SGD([w], lr=0.1)

    def step(x):
        opt.reset_grad()
        loss = (w * x).sum()
        loss.backward()
        opt.step()
        return loss

    f = nc.jit(step)
    x = nc.Tensor(_a(3), requires_grad=False)
    f(x), f(x)
    with pytest.raises(ValueError, match="also writes"):
        f(w)


def test_differentiable_results_from_a_hit():
    """A result is differentiable when an input requires grad, through the hit path too."""
    w = nc.Tensor(_a(3, 3))
    f = nc.jit(lambda x: (x @ w).sum())
    x = _a(2, 3)
    f(x)
    for _ in range(2):
        w.grad = None
        out = f(x)
        out.backward()
        np.testing.assert_allclose(w.grad.numpy(), np.repeat(x.sum(0)[:, None], 3, 1), rtol=1e-5)


def test_random_draws_are_fresh_and_seeded_as_the_general_path_draws_them():
    def noisy(a):
        return a + nc.init.rand(*a.shape)

    f = nc.jit(noisy)
    x = np.zeros((4, 4), np.float32)
    f(x), f(x)
    np.random.seed(7)
    first, second = f(x).numpy(), f(x).numpy()
    assert not np.array_equal(first, second)
    np.random.seed(7)
    np.testing.assert_array_equal(f(x).numpy(), first)
    np.random.seed(7)
    np.testing.assert_array_equal(nc.jit(noisy)(x).numpy(), first)  # a first, general call


def test_a_refused_hit_does_not_draw_a_second_seed(hits):
    """A call the native binding refuses after the hit path drew its seed (a parameter
    updated in place made read-only) draws once from numpy's generator, as any call does."""
    w = nc.Tensor(np.ones(4, "float32"))

    @nc.jit
    def f(x):
        w.data = w.data + nc.init.rand(4)
        return x * 2.0

    x = nc.Tensor(np.ones(4, "float32"))
    np.random.seed(0)
    for _ in range(3):
        f(x)
    data = w.cached_data.numpy()
    w.data = nc.Tensor(data)  # the same values, in a read-only buffer the step cannot update
    w.cached_data._np.flags.writeable = False
    hits.clear()
    f(x)
    after = np.random.get_state()[2]
    np.random.seed(0)
    for _ in range(4):
        np.random.randint(0, 2**62)
    assert after == np.random.get_state()[2]
    if compiled:
        assert hits == [False]  # the hit path took it up and passed it on


def test_inside_another_trace_the_call_is_inlined():
    inner = nc.jit(lambda a: a * 2.0)
    x = _a(2, 2)
    inner(x), inner(x)
    outer = nc.jit(lambda a: inner(a) + 1.0)
    np.testing.assert_allclose(outer(x).numpy(), x * 2.0 + 1.0, rtol=1e-6)
    assert outer.lower(x).graph.as_text().count("mul") >= 1


@compiled_only
def test_keyword_static_and_pytree_calls_take_the_general_path(hits):
    f = nc.jit(lambda a, b: a + b)
    a, b = _a(2), _a(2)
    for _ in range(2):
        np.testing.assert_allclose(f(a, b=b).numpy(), a + b, rtol=1e-6)
    g = nc.jit(lambda a, n: a * n, static_argnums=(1,))
    for _ in range(2):
        np.testing.assert_allclose(g(a, 3).numpy(), a * 3, rtol=1e-6)
    h = nc.jit(lambda ab: ab[0] + ab[1])
    for _ in range(2):
        np.testing.assert_allclose(h((a, b)).numpy(), a + b, rtol=1e-6)
    assert hits == [] and not f._hits and not g._hits and not h._hits


def test_threads_calling_one_function_get_their_own_results():
    f = nc.jit(lambda a, b: a @ b + 1.0)
    a = _a(8, 8)
    f(a, a)
    inputs = [_a(8, 8) for _ in range(4)]
    errors: list = []

    def work(x):
        try:
            for _ in range(200):
                np.testing.assert_allclose(f(x, a).numpy(), x @ a + 1.0, rtol=1e-5, atol=1e-6)
        except Exception as e:  # reported below, in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(x,)) for x in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert f.trace_count == 1
