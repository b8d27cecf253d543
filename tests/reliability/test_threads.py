"""Threads: tracing state is per thread, and a jitted function may be called from several threads.

Each test starts its threads at a `threading.Barrier` and shortens the interpreter's switch
interval, so that one thread's trace is in progress while the others run ops, compiled calls and
traces of their own. Every result is compared with the same work done serially (or with numpy).
"""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Callable

import numpy as np
import pytest

import needlec as nc
from needlec import autograd, nn, ops, optim

TIMEOUT = 60  # seconds for any one thread; a deadlock fails the test instead of hanging it


@pytest.fixture(autouse=True)
def frequent_switches():
    """Switch threads every 10 microseconds instead of 5 ms: the races happen every run."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


def run_threads(targets: list[Callable[[], object]]) -> list:
    """Run each target in a thread of its own, started together; their results, in order.
    The first exception a thread raised is raised here."""
    barrier = threading.Barrier(len(targets))
    results: list = [None] * len(targets)
    errors: list[BaseException] = []

    def runner(k: int) -> None:
        try:
            barrier.wait(timeout=TIMEOUT)
            results[k] = targets[k]()
        except BaseException as e:  # reported by the main thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=runner, args=(k,), daemon=True) for k in range(len(targets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread did not finish (a deadlock?)"
    if errors:
        raise errors[0]
    return results


def deep(n: int) -> Callable:
    """A function that takes a while to trace (n ops), so other threads run during its trace."""

    def f(x):
        for k in range(n):
            x = ops.tanh(x * 0.5 + float(k % 3))
        return x.sum()

    return f


def deep_numpy(x: np.ndarray, n: int) -> np.ndarray:
    for k in range(n):
        x = np.tanh(x * np.float32(0.5) + np.float32(k % 3))
    return x.sum()


def trace_until(done: threading.Event, min_traces: int = 3) -> int:
    """Trace new functions until `done` is set (at least `min_traces`); check each result."""
    rng = np.random.default_rng(1)
    count = 0
    while count < min_traces or not done.is_set():
        n = 20 + count % 7
        x = rng.standard_normal((3, 4)).astype("float32")
        got = nc.jit(deep(n))(x).numpy()
        np.testing.assert_allclose(got, deep_numpy(x, n), rtol=1e-5)
        count += 1
    return count


# ---------------------------------------------------------------- a training step beside a trace


def build(seed: int):
    np.random.seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.SoftmaxLoss()

    @nc.jit
    def step(x, y):
        opt.reset_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return model, step


def batches(n: int = 4):
    rng = np.random.default_rng(0)
    return [
        (rng.standard_normal((16, 8)).astype("float32"), rng.integers(0, 3, 16).astype("float32"))
        for _ in range(n)
    ]


def train(step, data, steps: int) -> list[float]:
    return [float(step(*data[i % len(data)]).numpy()) for i in range(steps)]


def test_compiled_training_step_beside_a_trace_matches_the_serial_run():
    data, steps = batches(), 40
    serial_model, serial_step = build(seed=7)
    serial_losses = train(serial_step, data, steps)

    model, step = build(seed=7)
    done = threading.Event()

    def training():
        try:
            return train(step, data, steps)
        finally:
            done.set()

    losses, traced = run_threads([training, lambda: trace_until(done)])
    assert traced >= 3
    assert losses == serial_losses
    for p, q in zip(model.parameters(), serial_model.parameters(), strict=True):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    assert step.trace_count == 1
    # eager code afterwards sees concrete parameters
    x = nc.Tensor(data[0][0], requires_grad=False)
    np.testing.assert_array_equal(model(x).numpy(), serial_model(x).numpy())


# ---------------------------------------------------------------- one function, many threads


def test_threads_calling_one_jitted_function_trace_each_shape_once():
    calls = []

    def f(x, w):
        calls.append(x.shape)
        return ops.tanh(x @ w) * 2.0 + x.sum()

    fn = nc.jit(f)
    rng = np.random.default_rng(2)
    w = rng.standard_normal((5, 3)).astype("float32")
    shapes = [(k + 1, 5) for k in range(4)]
    inputs = [rng.standard_normal(s).astype("float32") for s in shapes]

    def want(x):
        return np.tanh(x @ w) * 2.0 + x.sum()

    def caller(k: int) -> Callable:
        x = inputs[k % len(shapes)]  # two threads per shape: both miss the cache at once
        return lambda: [fn(x, w).numpy() for _ in range(15)]

    results = run_threads([caller(k) for k in range(2 * len(shapes))])
    for k, outs in enumerate(results):
        for got in outs:
            np.testing.assert_allclose(got, want(inputs[k % len(shapes)]), rtol=1e-5, atol=1e-6)
    assert fn.trace_count == len(shapes)
    assert sorted(calls) == sorted(shapes)  # the Python function ran once per shape


# ---------------------------------------------------------------- eager code beside a trace


def test_eager_code_beside_a_trace():
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((6, 4)) for _ in range(3)]
    w0 = rng.standard_normal((4, 2))
    done = threading.Event()

    def eager():
        try:
            for k in range(60):
                x = xs[k % len(xs)]
                w = nc.Tensor(w0)
                loss = ops.summation(ops.tanh(nc.Tensor(x, requires_grad=False) @ w))
                loss.backward()
                np.testing.assert_allclose(loss.numpy(), np.tanh(x @ w0).sum(), rtol=1e-12)
                dw = x.T @ (1 - np.tanh(x @ w0) ** 2)
                np.testing.assert_allclose(w.grad.numpy(), dw, rtol=1e-10)
                assert float(loss) == loss.numpy().item()
        finally:
            done.set()

    run_threads([eager, lambda: trace_until(done)])


# ---------------------------------------------------------------- a stress loop


def test_stress_mixed_calls_from_four_threads():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((4, 4)).astype("float32")
    shared = nc.jit(lambda x: ops.relu(x @ w) - x)
    sizes = (1, 2, 3)
    data = {n: rng.standard_normal((n, 4)).astype("float32") for n in sizes}
    gc.collect()

    def worker(k: int) -> Callable:
        def run() -> int:
            done = 0
            for i in range(75):
                x = data[sizes[(i + k) % len(sizes)]]
                kind = (i + k) % 5
                if kind < 3:  # a cache hit (after the first call of each size)
                    got = shared(x).numpy()
                    want = np.maximum(x @ w, 0) - x
                elif kind == 3:  # a new trace
                    got = nc.jit(lambda t, c=float(i): ops.tanh(t + c))(x).numpy()
                    want = np.tanh(x + np.float32(i))
                else:  # eager, with a gradient
                    t = nc.Tensor(x)
                    (t * t).sum().backward()
                    got, want = t.grad.numpy(), 2 * x
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
                done += 1
            return done

        return run

    assert run_threads([worker(k) for k in range(4)]) == [75] * 4
    assert shared.trace_count == len(sizes)
    gc.collect()
    live = sum(issubclass(type(o), nc.Tensor) for o in gc.get_objects())
    assert autograd.TENSOR_COUNTER == live  # the live-tensor count lost no update


# ---------------------------------------------------------------- interned nodes


def test_nodes_built_at_once_in_several_threads_are_one_object():
    from needlec.ir import Node, Op

    def build() -> list:
        x = Node.leaf(Op.INPUT, "float32", (7, 3), ("arg", 0))
        out = []
        for k in range(3000):  # constants no other test makes: each is a miss in every thread
            out.append(x * (0.123 + k))
        return out

    results = run_threads([build for _ in range(4)])
    for nodes in results[1:]:
        assert all(a is b for a, b in zip(nodes, results[0], strict=True))


# ---------------------------------------------------------------- a tracer handed to another thread


@pytest.mark.parametrize("use", ["eager op", "numpy", "inside a trace"])
def test_a_tracer_used_by_another_thread_raises_a_clear_error(use):
    leaked, ready, used = [], threading.Event(), threading.Event()

    def f(x):
        y = ops.tanh(x)
        leaked.append(y)
        ready.set()
        assert used.wait(TIMEOUT)  # the trace stays in progress while the other thread uses y
        return y

    def tracing():
        return nc.make_graph(f)(np.ones(3, dtype="float32"))

    def other():
        assert ready.wait(TIMEOUT)
        try:
            with pytest.raises(nc.TracerError, match="in progress in another thread"):
                if use == "eager op":
                    leaked[0] + 1.0
                elif use == "numpy":
                    leaked[0].numpy()
                else:
                    nc.make_graph(lambda z: z * leaked[0])(np.ones(3, dtype="float32"))
        finally:
            used.set()

    run_threads([tracing, other])


def test_threads_stepping_one_model_in_place_never_tear_its_parameters():
    """Four threads call one compiled training step on one model, whose parameters it updates in
    place: each call runs whole (one at a time), so with one batch for every call the result is
    that of 40 serial steps, bit for bit."""
    (x, y), steps = batches(1)[0], 40
    serial_model, serial_step = build(seed=11)
    for _ in range(steps):
        serial_step(x, y)
    model, step = build(seed=11)
    step(x, y)  # trace and compile first
    assert step.lower(x, y).executable.donated  # parameters are written in place

    def work():
        for _ in range(steps // 4 - (1 if threading.current_thread() is threads[0] else 0)):
            step(x, y)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(serial_model.parameters(), model.parameters(), strict=True):
        np.testing.assert_array_equal(b.numpy(), a.numpy())
