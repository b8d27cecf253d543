"""Updates written over the values they replace, where the step still reads the old value.

A compiled step writes a captured tensor's new value (`w.data = ...`) over the old one when the
memory plan accepts the donation and the kernel writing it reads the old value only before it
writes the new one, element by element. Each program here reads the old value in the very
kernel that writes the new one (or around a GEMM whose result lands in the new value's memory),
so a write that came too early would change the result silently. Each runs under the executor
`NEEDLEC_EXECUTE` selects and is checked against numpy; the CUDA cases run over the host
stand-in for a GPU (`tests/backends/fake_pycuda.py`).
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

    backend_ndarray._cuda_available.cache_clear()
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
