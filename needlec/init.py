"""needle's initializers; every random draw comes from numpy's global generator, in needle's order."""

from __future__ import annotations

import math

from . import backend_ndarray as nd
from .autograd import Tensor
from .frontend.trace import current


def _traced_draw(dist: str, shape, dtype: str, requires_grad: bool) -> Tensor | None:
    """Inside a trace, a random node (fresh numbers every call) instead of a baked-in draw."""
    trace = current()
    if trace is None:
        return None
    t = Tensor._make_tracer(trace.random(dist, shape, dtype), trace)
    t.requires_grad = requires_grad
    return t


def _dev(device):
    return nd.default_device() if device is None else device


def rand(*shape, low=0.0, high=1.0, device=None, dtype="float32", requires_grad=False) -> Tensor:
    """Uniform in [low, high): `np.random.rand(*shape) * (high - low) + low`."""
    u = _traced_draw("uniform", shape, dtype, requires_grad)
    if u is not None:
        return u * (high - low) + low
    array = _dev(device).rand(*shape) * (high - low) + low
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def randn(*shape, mean=0.0, std=1.0, device=None, dtype="float32", requires_grad=False) -> Tensor:
    """Normal: `np.random.randn(*shape) * std + mean`."""
    z = _traced_draw("normal", shape, dtype, requires_grad)
    if z is not None:
        return z * std + mean
    array = _dev(device).randn(*shape) * std + mean
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def constant(*shape, c=1.0, device=None, dtype="float32", requires_grad=False) -> Tensor:
    """A tensor filled with `c`."""
    array = _dev(device).ones(*shape, dtype=dtype) * c
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def ones(*shape, device=None, dtype="float32", requires_grad=False) -> Tensor:
    return constant(*shape, c=1.0, device=device, dtype=dtype, requires_grad=requires_grad)


def zeros(*shape, device=None, dtype="float32", requires_grad=False) -> Tensor:
    return constant(*shape, c=0.0, device=device, dtype=dtype, requires_grad=requires_grad)


def randb(*shape, p=0.5, device=None, dtype="bool", requires_grad=False) -> Tensor:
    """Bernoulli(p) as `rand(*shape) <= p`."""
    u = _traced_draw("uniform", shape, "float32", False)
    if u is not None:
        return (u <= p).cast(dtype)
    array = _dev(device).rand(*shape) <= p
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def one_hot(n, i, device=None, dtype="float32", requires_grad=False) -> Tensor:
    """`eye(n)[i]`: the rows of the n x n identity picked by the class ids `i` (any rank).

    `i` may be a Python sequence, a numpy array or a Tensor of integer or float class ids.

    Outside a trace, with concrete ids, this is exactly numpy's `np.eye(n)[i]`: a negative id
    counts from the end (-1 gives the last row) and an id outside [-n, n) raises IndexError.

    Inside a trace (`needlec.jit`), or when `i` is itself a traced tensor, the ids' values are
    not known yet, so `i` is compared with a constant `arange(n)` by tensor ops instead: there
    an id outside [0, n) (a negative one included) gives a row of zeros, not an error.
    """
    import numpy as np

    if isinstance(i, Tensor) and (current() is not None or i._node is not None):
        # Traced: the ids have no values yet, so no range check (and no negative indexing) is
        # possible; an id outside [0, n) matches no class and gives a row of zeros.
        ids = i.detach()
        classes = Tensor(np.arange(n), device=ids.device, dtype=ids.dtype, requires_grad=False)
        hot = ids.reshape((*ids.shape, 1)).eq(classes).cast(dtype)
        if requires_grad or (device is not None and device != hot.device):
            hot = Tensor(hot, device=device, dtype=dtype, requires_grad=requires_grad)
        return hot
    if isinstance(i, Tensor):
        device = i.device if device is None else device
        ids = i.numpy()
    else:
        ids = np.asarray(i)
    ids = ids if ids.dtype.kind in "iu" else ids.astype("int64")
    if ids.size and (ids.max() >= n or ids.min() < -n):
        bad = ids.max() if ids.max() >= n else ids.min()
        raise IndexError(
            f"one_hot: class id {int(bad)} is out of range for n={n} classes "
            f"(valid ids are {-n}..{n - 1})"
        )
    array = _dev(device).one_hot(n, ids, dtype=dtype)
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def zeros_like(array: Tensor, *, device=None, requires_grad=False) -> Tensor:
    return zeros(
        *array.shape, dtype=array.dtype, device=device or array.device, requires_grad=requires_grad
    )


def ones_like(array: Tensor, *, device=None, requires_grad=False) -> Tensor:
    return ones(
        *array.shape, dtype=array.dtype, device=device or array.device, requires_grad=requires_grad
    )


def xavier_uniform(fan_in, fan_out, gain=1.0, **kwargs) -> Tensor:
    a = gain * math.sqrt(6 / (fan_in + fan_out))
    return rand(fan_in, fan_out, low=-a, high=a, **kwargs)


def xavier_normal(fan_in, fan_out, gain=1.0, **kwargs) -> Tensor:
    std = gain * math.sqrt(2 / (fan_in + fan_out))
    return randn(fan_in, fan_out, std=std, **kwargs)


def kaiming_uniform(fan_in, fan_out, shape=None, nonlinearity="relu", **kwargs) -> Tensor:
    bound = math.sqrt(2) * math.sqrt(3 / fan_in)
    return rand(*(shape or (fan_in, fan_out)), low=-bound, high=bound, **kwargs)


def kaiming_normal(fan_in, fan_out, nonlinearity="relu", **kwargs) -> Tensor:
    std = math.sqrt(2) / math.sqrt(fan_in)
    return randn(fan_in, fan_out, std=std, **kwargs)
