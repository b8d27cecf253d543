"""Updates written over the values they replace, where the step still reads the old value.

A compiled step writes a captured tensor's new value (`w.data = ...`) over the old one when the
memory plan accepts the donation and the kernel writing it reads the old value only before it
writes the new one, element by element. Each program here reads the old value in the very
kernel that writes the new one (or around a GEMM whose result lands in the new value's memory),
so a write that came too early would change the result silently; a new value of another shape
must replace the tensor's array, neither written over it nor copied into it. Each runs under
the executor `NEEDLEC_EXECUTE` selects, checked against numpy (whole training steps against
the reference interpreter); the CUDA cases run over the host stand-in for a GPU
(`tests/backends/fake_pycuda.py`).
"""

from __future__ import annotations

import numpy as np
import pytest
from backends.test_cuda_device import host_gpu  # noqa: F401  (a fixture)

import needlec as nc

RTOL, ATOL = 1e-5, 1e-5


def _arrays(shape: tuple[int, ...], n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


def _on_cuda(monkeypatch) -> None:
    """Tensors on `nc.cuda()` run the CUDA backend (here over the host stand-in)."""
    from needlec import backend_ndarray

    monkeypatch.setattr(backend_ndarray, "_cuda_available", lambda: True)
    monkeypatch.setitem(
        backend_ndarray._DEVICES, "cuda", backend_ndarray.BackendDevice("cuda", lambda: True)
    )
    monkeypatch.delenv("NEEDLEC_EXECUTE", raising=False)


def _store_before_load(shape: tuple[int, ...], device=None):
    """A step whose kernel computes the new value of `w` first and reads the old `w` after:
    the schedule stores `w`'s new value before it loads the old one."""
    (w0,) = _arrays(shape, 1, seed=1)
    w = nc.Tensor(w0, device=device)

    def step(x):
        new = x * 2
        out = w * 3 + new
        w.data = new
        return out

    return w, w0, nc.jit(step)


@pytest.mark.parametrize("shape", [(4, 8), (3, 5), (96, 130)])
def test_old_value_read_after_the_new_one_is_computed(shape):
    w, old, step = _store_before_load(shape)
    for x in _arrays(shape, 3):
        out = step(x).numpy()
        np.testing.assert_allclose(out, old * 3 + x * 2, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(w.numpy(), x * 2, rtol=RTOL, atol=ATOL)
        old = x * 2


@pytest.mark.parametrize("shape", [(4, 8), (3, 5)])
def test_old_value_read_after_the_new_one_is_computed_on_cuda(host_gpu, monkeypatch, shape):  # noqa: F811
    _on_cuda(monkeypatch)
    w, old, step = _store_before_load(shape, nc.cuda())
    for x in _arrays(shape, 3):
        out = step(nc.Tensor(x, device=nc.cuda())).numpy()
        np.testing.assert_allclose(out, old * 3 + x * 2, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(w.numpy(), x * 2, rtol=RTOL, atol=ATOL)
        old = x * 2


def _reshaping_update(device=None):
    """A step that gives `w` a new value of another shape (eager code rebinds `w` to it)."""
    w = nc.Tensor(np.arange(24, dtype=np.float32).reshape(4, 6), device=device)

    def step(x):
        s = w.sum()
        w.data = x * 3
        return s

    return w, nc.jit(step)


@pytest.mark.parametrize("shape", [(1, 6), (6, 4), (2, 6)])
def test_new_value_of_another_shape_rebinds(shape):
    """Neither written over the old array nor copied into it (where it would broadcast)."""
    w, step = _reshaping_update()
    x = np.linspace(-1, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    np.testing.assert_allclose(step(x).numpy(), 276.0, rtol=RTOL)
    assert w.shape == shape
    np.testing.assert_allclose(step(x).numpy(), (x * 3).sum(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(w.numpy(), x * 3, rtol=RTOL)


@pytest.mark.parametrize("shape", [(1, 6), (6, 4)])
def test_new_value_of_another_shape_rebinds_on_cuda(host_gpu, monkeypatch, shape):  # noqa: F811
    _on_cuda(monkeypatch)
    w, step = _reshaping_update(nc.cuda())
    x = np.linspace(-1, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    np.testing.assert_allclose(step(nc.Tensor(x, device=nc.cuda())).numpy(), 276.0, rtol=RTOL)
    assert w.shape == shape
    got = step(nc.Tensor(x, device=nc.cuda())).numpy()
    np.testing.assert_allclose(got, (x * 3).sum(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(w.numpy(), x * 3, rtol=RTOL)


def _run_steps(step, state: list, batches: list) -> list[np.ndarray]:
    """Each call's results, then every state tensor's value, as numpy arrays."""
    got = []
    for args in batches:
        out = step(*args)
        got += [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
    return got + [t.numpy() for t in state]


def test_gemm_stored_as_the_new_value_while_its_epilogue_reads_the_old():
    """The GEMM's result is the parameter's new value, and the same kernel reads the old value:
    the core may not run into the parameter's memory before the epilogue has read it."""
    (w0,) = _arrays((12, 10), 1, seed=2)
    w = nc.Tensor(w0)

    def step(x, g):
        new = x.transpose() @ g
        out = w * 2 + new
        w.data = new
        return out

    f, old = nc.jit(step), w0
    for x, g in zip(_arrays((7, 12), 3, 3), _arrays((7, 10), 3, 4), strict=True):
        new = x.T @ g
        np.testing.assert_allclose(f(x, g).numpy(), old * 2 + new, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(w.numpy(), new, rtol=1e-4, atol=1e-4)
        old = new


def test_update_reading_a_reduction_of_the_old_value():
    """A row sum of the old value broadcast into the new one: a reduction and the store over
    the parameter in one kernel, the store's loop after the sum's."""
    (w0,) = _arrays((6, 5), 1, seed=5)
    w = nc.Tensor(w0)

    def step(x):
        w.data = w - w.sum((1,)).reshape((6, 1)).broadcast_to((6, 5)) * 0.1 + x
        return w.sum()

    f, want = nc.jit(step), w0
    for x in _arrays((6, 5), 3, 6):
        total = f(x).numpy()
        want = want - want.sum(1, keepdims=True) * 0.1 + x
        np.testing.assert_allclose(w.numpy(), want, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(total, want.sum(), rtol=1e-4, atol=1e-4)


def test_update_reading_the_old_value_elsewhere():
    """The new value at one index is the old value at another (a flip): never in place."""
    (w0,) = _arrays((6, 5), 1, seed=7)
    w = nc.Tensor(w0)

    def step(x):
        w.data = nc.ops.flip(w, (0,)) + x
        return x * 1.0

    f, want = nc.jit(step), w0
    for x in _arrays((6, 5), 3, 8):
        f(x)
        want = want[::-1] + x
        np.testing.assert_allclose(w.numpy(), want, rtol=RTOL, atol=ATOL)


def test_residual_gemms_around_an_update():
    """Residual adds after GEMMs that read the parameter before its update, and the update
    from another GEMM of those results: intermediates reuse memory between them."""
    (w0,) = _arrays((8, 8), 1, seed=9)
    w0 = w0 * 0.3
    w = nc.Tensor(w0)

    def step(x):
        h = nc.ops.relu(x @ w) + x
        h2 = (h @ w) + h
        w.data = w + 0.01 * h2.transpose() @ h2 * 0.001
        return h2

    f, want = nc.jit(step), w0
    for x in _arrays((5, 8), 3, 10):
        h = np.maximum(x @ want, 0) + x
        h2 = h @ want + h
        np.testing.assert_allclose(f(x).numpy(), h2, rtol=1e-4, atol=1e-4)
        want = want + h2.T @ h2 * 1e-5
        np.testing.assert_allclose(w.numpy(), want, rtol=1e-4, atol=1e-4)


def _residual_mlp() -> nc.nn.Module:
    nn = nc.nn
    block = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16))
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Residual(block), nn.Linear(16, 5))


def _small_convnet() -> nc.nn.Module:
    nn = nc.nn
    return nn.Sequential(
        nn.Conv(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv(4, 4, 3, stride=2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 5),
    )


STEPS = {
    "mlp_sgd_weight_decay": (_residual_mlp, (7, 12), "sgd", dict(lr=0.1, weight_decay=0.01)),
    "mlp_adam": (_residual_mlp, (7, 12), "adam", dict(lr=0.01, weight_decay=0.01)),
    "conv_momentum": (_small_convnet, (2, 3, 6, 6), "sgd", dict(lr=0.05, momentum=0.9)),
}


@pytest.mark.parametrize("name", sorted(STEPS))
def test_training_steps_updating_in_place_agree_with_the_reference(name, monkeypatch):
    """Parameters, BatchNorm statistics and optimizer state updated in place over four steps,
    against the same steps on the reference interpreter."""
    build, shape, opt_name, kw = STEPS[name]
    rng = np.random.default_rng(11)
    batches = [
        (rng.standard_normal(shape).astype(np.float32), rng.integers(0, 5, shape[0]))
        for _ in range(4)
    ]

    def run() -> list[np.ndarray]:
        np.random.seed(0)
        model = build()
        opt = (nc.optim.SGD if opt_name == "sgd" else nc.optim.Adam)(model.parameters(), **kw)
        loss_fn = nc.nn.SoftmaxLoss()

        def step(x, y):
            opt.reset_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss

        bn = [m for m in model._children() if isinstance(m, nc.nn.BatchNorm1d)]
        state = [*model.parameters(), *(t for m in bn for t in (m.running_mean, m.running_var))]
        assert len(bn) == 1
        moments = [t for name in ("u", "m", "v") for t in getattr(opt, name, {}).values()]
        return _run_steps(nc.jit(step), state, batches) + [t.numpy() for t in moments]

    got = run()
    monkeypatch.setenv("NEEDLEC_EXECUTE", "reference")
    want = run()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
