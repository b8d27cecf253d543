"""A compiled training step writes the new parameters and optimizer state over the old (the
memory plan's donations): PyTorch's semantics. Each test runs 20 jitted steps next to 20 eager
ones and compares everything a step writes."""

from __future__ import annotations

import os

import numpy as np
import pytest

import needlec as nc
from needlec import nn, optim

from .test_train_steps import OPTIMIZERS, assert_same_state, digits_batches, train_both
from .test_train_steps import make_step as _make_step


def make_step(model, opt):
    """`test_train_steps.make_step` with SoftmaxLoss."""
    return _make_step(model, opt, nn.SoftmaxLoss())


# the compiled backend writes in place; the oracles (NEEDLEC_EXECUTE=reference, =kernels) give
# every new value new memory, and write it back by rebinding, as eager code does
compiled_only = pytest.mark.skipif(
    os.environ.get("NEEDLEC_EXECUTE", "compiled") != "compiled",
    reason="in-place updates are the compiled backend's",
)


def build_mlp():
    np.random.seed(1)
    return nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def _donated(step, x, y) -> int:
    return len(step.lower(x, y).executable.donated)


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_steps_update_parameters_in_place_and_equal_eager(opt_name):
    batches = digits_batches()
    eager, jitted, step = train_both(build_mlp, batches, opt_name)
    assert_same_state(eager, jitted)
    assert _donated(step, *batches[0]) > 0


@compiled_only
def test_arrays_taken_before_the_steps_see_the_updates():
    """`old = p.data` before a step is the same memory afterwards, as in PyTorch."""
    batches = digits_batches()
    model = build_mlp()
    step = nc.jit(make_step(model, optim.SGD(model.parameters(), lr=0.1, momentum=0.9)))
    params = model.parameters()
    old = [p.data for p in params]
    arrays = [p.numpy() for p in params]  # copies
    before = [a.copy() for a in arrays]
    for i in range(20):
        step(*batches[i % 3])
    assert _donated(step, *batches[0]) > 0
    moved = 0
    for p, o, b in zip(params, old, before, strict=True):
        np.testing.assert_array_equal(o.numpy(), p.numpy())  # the taken reference moved along
        moved += not np.array_equal(p.numpy(), b)
    assert moved >= len(params) - 1  # (the bias before BatchNorm gets a zero gradient)


def test_a_parameter_also_returned_and_one_passed_as_an_argument():
    """A parameter the step returns keeps its old value for the caller; a tensor passed as an
    argument that shares the parameter's memory (`.data`) is read before it is overwritten."""
    batches = digits_batches()
    results = {}
    for mode in ("eager", "jit"):
        model = build_mlp()
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss_fn = nn.SoftmaxLoss()
        w = model.parameters()[0]

        def step(x, y, w_view, model=model, opt=opt, loss_fn=loss_fn, w=w):
            opt.reset_grad()
            loss = loss_fn(model(x), y) + (w_view * w_view).sum() * 1e-3
            loss.backward()
            opt.step()
            return loss, w, w_view.sum()

        run = nc.jit(step) if mode == "jit" else step
        got = []
        for i in range(20):
            x, y = batches[i % 3]
            if mode == "eager":
                x, y = nc.Tensor(x), nc.Tensor(y)
            loss, returned, view_sum = run(x, y, w.data)
            got.append((loss.numpy(), returned.numpy(), view_sum.numpy()))
        results[mode] = (got, [p.numpy() for p in model.parameters()])
    for (le, re_, se), (lj, rj, sj) in zip(results["eager"][0], results["jit"][0], strict=True):
        np.testing.assert_allclose(lj, le, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rj, re_, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(sj, se, rtol=1e-4, atol=1e-5)
    for a, b in zip(results["eager"][1], results["jit"][1], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@compiled_only
def test_parameters_sharing_memory_are_copied_not_corrupted(capsys, monkeypatch):
    """Two parameters over one array: writing one's new value over it would change what the
    step reads through the other, so the donated one is copied first (and says so)."""
    monkeypatch.setenv("NEEDLEC_DEBUG", "donation")
    results = []
    for mode in ("eager", "jit"):
        shared = np.linspace(-1, 1, 12).astype("float32").reshape(3, 4)
        a = nn.Parameter(nc.Tensor(shared))
        b = nn.Parameter(nc.Tensor(shared))
        b.cached_data = a.cached_data  # the same memory
        opt = optim.SGD([a], lr=0.5)

        def step(x, a=a, b=b, opt=opt):
            opt.reset_grad()
            loss = ((x @ a.transpose()) * (x @ b.transpose())).sum()
            loss.backward()
            opt.step()
            return loss

        run = nc.jit(step) if mode == "jit" else step
        x = np.ones((2, 4), np.float32)
        losses = [run(x if mode == "jit" else nc.Tensor(x)).numpy() for _ in range(3)]
        results.append((losses, a.numpy(), b.numpy()))
    (le, ae, be), (lj, aj, bj) = results
    np.testing.assert_allclose(lj, le, rtol=1e-5)
    np.testing.assert_allclose(aj, ae, rtol=1e-5)
    np.testing.assert_allclose(bj, be, rtol=1e-5)
    assert "shares memory with another input" in capsys.readouterr().err


@compiled_only
def test_steady_state_steps_allocate_no_buffers():
    """Across 100 steps: one arena, at most two output blocks taking turns, and
    every parameter and optimizer state array keeps its memory."""
    batches = digits_batches()
    model = build_mlp()
    step = nc.jit(make_step(model, optim.SGD(model.parameters(), lr=0.05, momentum=0.9)))
    step(*batches[0])
    ex = step.lower(*batches[0]).executable
    blocks = set()
    take = ex._output_block

    def spy():
        block, address = take()
        blocks.add(address)
        return block, address

    ex._output_block = spy
    state = ex._thread_state()
    where = [np.asarray(p.cached_data).ctypes.data for p in model.parameters()]
    for i in range(100):
        step(*batches[i % 3])
    assert len(blocks) <= 2
    assert ex._thread_state() is state  # the same arena and pointer table
    assert [np.asarray(p.cached_data).ctypes.data for p in model.parameters()] == where
