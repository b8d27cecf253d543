"""Helpers shared by the nn tests: random arrays, comparisons, finite differences."""

from __future__ import annotations

import math

import numpy as np

import needlec as nc


def randn(rng, *shape, dtype="float32", scale=1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(dtype)


def value(x) -> np.ndarray:
    """A numpy array from a needlec Tensor or a torch tensor (detached)."""
    if isinstance(x, nc.Tensor):
        return x.numpy()
    if hasattr(x, "detach"):
        return x.detach().numpy()
    return np.asarray(x)


def close(actual, expected, rtol=1e-5, atol=1e-5) -> None:
    np.testing.assert_allclose(value(actual), value(expected), rtol=rtol, atol=atol)


def n_params(module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())


def uniform_draw(shape, bound) -> np.ndarray:
    """What needle's init.rand(*shape, low=-bound, high=bound) draws next (float32 arithmetic)."""
    u = np.random.rand(*shape).astype("float32")
    return u * np.float32(2 * bound) + np.float32(-bound)


def kaiming_uniform_draw(fan_in, fan_out, shape=None) -> np.ndarray:
    return uniform_draw(shape or (fan_in, fan_out), math.sqrt(2) * math.sqrt(3 / fan_in))


def numeric_grad(loss, tensor: nc.Tensor, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar `loss()` with respect to the float64 `tensor`'s values."""
    base = tensor.numpy().astype("float64")
    grad = np.zeros_like(base)
    for j in range(base.size):
        for sign in (1, -1):
            moved = base.copy()
            moved.flat[j] += sign * eps
            tensor.data = nc.Tensor(moved, dtype="float64", requires_grad=False)
            grad.flat[j] += sign * float(loss().numpy()) / (2 * eps)
    tensor.data = nc.Tensor(base, dtype="float64", requires_grad=False)
    return grad


def flat_outputs(out) -> list:
    """The tensors of a module's output (a tensor or nested tuples of tensors)."""
    if isinstance(out, nc.Tensor):
        return [out]
    return [t for o in out for t in flat_outputs(o)]


def next_draw_after(seed: int, n: int) -> float:
    """The uniform draw that follows the first `n` uniform draws after `np.random.seed(seed)`."""
    state = np.random.get_state()
    np.random.seed(seed)
    np.random.rand(n)
    out = np.random.rand()
    np.random.set_state(state)
    return out
