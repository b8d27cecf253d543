"""Error messages and argument handling of jit and grad: each names what the user wrote.

Each test runs the failing (or formerly failing) case and checks the message or the numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

import needlec as nc
from needlec import ops


def _a(*shape) -> np.ndarray:
    return np.arange(1, 1 + int(np.prod(shape)), dtype="float32").reshape(shape) / 4


def test_tracer_stored_in_a_global_dict_names_the_root():
    cache: dict = {}

    def f(x):
        cache["h"] = x * 2.0
        return x

    with pytest.raises(nc.TracerError, match=r"stored a traced value in cache\['h'\]"):
        nc.jit(f)(_a(3))


def test_tracer_stored_in_a_closure_list_names_the_list():
    history: list = []

    def f(x):
        history.append(x + 1.0)
        return x

    with pytest.raises(nc.TracerError, match=r"stored a traced value in history\[0\]"):
        nc.jit(f)(_a(3))


def test_negative_static_argnums():
    def f(x, n):
        return x * float(n)

    jf = nc.jit(f, static_argnums=(-1,))
    x = _a(3)
    np.testing.assert_allclose(jf(x, 2).numpy(), x * 2)
    np.testing.assert_allclose(jf(x, 3).numpy(), x * 3)
    np.testing.assert_allclose(jf(x, 2).numpy(), x * 2)
    assert jf.trace_count == 2


def test_static_argnames_passed_by_position():
    def f(x, mode):
        return x * 2.0 if mode == "double" else x + 1.0

    jf = nc.jit(f, static_argnames=("mode",))
    x = _a(3)
    np.testing.assert_allclose(jf(x, "double").numpy(), x * 2)
    np.testing.assert_allclose(jf(x, "inc").numpy(), x + 1)
    np.testing.assert_allclose(jf(x, mode="double").numpy(), x * 2)


def test_static_argnums_passed_by_keyword():
    def f(x, n):
        return x * float(n)

    jf = nc.jit(f, static_argnums=(1,))
    x = _a(3)
    np.testing.assert_allclose(jf(x, n=4).numpy(), x * 4)


def test_jit_of_a_non_callable_fails_at_once():
    with pytest.raises(TypeError, match="callable"):
        nc.jit(3)


def test_grad_accepts_keyword_arguments():
    def f(w, x, *, scale=1.0):
        return (ops.tanh(x @ w) * scale).sum()

    w, x = _a(3, 2), _a(4, 3)
    g = nc.grad(f)(w, x, scale=3.0).numpy()
    t = np.tanh(x @ w)
    np.testing.assert_allclose(g, 3.0 * x.T @ (1 - t**2), rtol=1e-5)
    v, g2 = nc.value_and_grad(f)(w, x, scale=2.0)
    np.testing.assert_allclose(float(v.numpy()), 2.0 * t.sum(), rtol=1e-5)
    np.testing.assert_allclose(g2.numpy(), 2.0 * x.T @ (1 - t**2), rtol=1e-5)


def test_python_numbers_are_dynamic_scalars():
    jf = nc.jit(lambda x, s, n: x * s + n)
    x = _a(3)
    np.testing.assert_allclose(jf(x, 2.0, 1).numpy(), x * 2 + 1)
    out = jf(x, -0.5, 7)
    np.testing.assert_allclose(out.numpy(), x * -0.5 + 7)
    assert jf.trace_count == 1  # a new value is not a new trace
    assert out.dtype == "float32"  # weakly typed: the array's dtype wins


def test_list_of_numbers_is_a_pytree_of_scalars():
    def poly(x, coeffs):
        out = x * 0.0
        for k, c in enumerate(coeffs):
            out = out + c * x**k
        return out

    jf = nc.jit(poly)
    x = _a(4)
    np.testing.assert_allclose(jf(x, [1.0, 2.0, 3.0]).numpy(), 1 + 2 * x + 3 * x**2, rtol=1e-6)
    np.testing.assert_allclose(jf(x, [0.5, 0.0, -1.0]).numpy(), 0.5 - x**2, rtol=1e-6)
    assert jf.trace_count == 1


def test_numpy_arguments_are_read_in_place_and_never_written():
    """A contiguous numpy argument is read where it lies (no copy per call); a function that
    writes its argument writes the jit's tensor for it, never the caller's array."""
    import needlec as nc

    @nc.jit
    def bump(x):
        x.data = x + 1.0
        return x * 2.0

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    before = a.copy()
    for _ in range(3):
        np.testing.assert_array_equal(bump(a).numpy(), (before + 1.0) * 2.0)
    np.testing.assert_array_equal(a, before)
    b = np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3))  # copied: not C-order
    np.testing.assert_array_equal(bump(b).numpy(), (b + 1.0) * 2.0)
