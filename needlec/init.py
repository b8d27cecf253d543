"""needle's initializers; every random draw comes from numpy's global generator, in needle's order."""

from __future__ import annotations

import math

from . import backend_ndarray as nd
from .autograd import Tensor
from .frontend.trace import current
from .ir.ops import user_frame


def _traced_draw(dist: str, shape, dtype: str, requires_grad: bool) -> Tensor | None:
    """Inside a trace, a random node (fresh numbers every call) instead of a baked-in draw."""
    trace = current()
    if trace is None:
        return None
    t = Tensor._make_tracer(trace.random(dist, shape, dtype), trace)
    t.requires_grad = requires_grad
    return t


def _dev(device):
    return nd.as_device(device)


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

    `i` may be a Python sequence, a numpy array or a Tensor of integer class ids (a float
    tensor holding whole numbers is accepted). As in numpy's indexing, a negative id counts
    from the end (-1 gives the last row).

    Where the ids' values are known (eagerly, or inside `jit` for ids made inside the traced
    function) an id outside [-n, n), a fractional one or NaN raises IndexError.

    Inside `jit`, ids passed in as arguments (or read from outside) have no values while
    tracing, so they cannot be checked: there a bad id gives a row of NaN (of zeros for an
    integer or bool `dtype`), so a loss built on it is NaN rather than a plausible number.
    """
    import numpy as np

    if isinstance(i, Tensor) and (current() is not None or i._node is not None):
        trace = current()
        if i._node is None and trace is not None and trace.made_inside(i):
            _check_class_ids(n, i.numpy())  # a constant of the trace: known now
        ids = i.detach()
        ids = (ids < 0).where(ids + n, ids)  # negative ids count from the end
        classes = Tensor(np.arange(n), device=ids.device, dtype=ids.dtype, requires_grad=False)
        hot = ids.reshape((*ids.shape, 1)).eq(classes).cast(dtype)
        if dtype in ("float32", "float64"):  # a bad id matches no class: its row is NaN
            none = hot.sum((hot.ndim - 1,)).eq(0).reshape((*ids.shape, 1))
            hot = none.broadcast_to(hot.shape).where(math.nan, hot)
        if requires_grad or (device is not None and nd.as_device(device) != hot.device):
            hot = Tensor(hot, device=device, dtype=dtype, requires_grad=requires_grad)
        return hot
    if isinstance(i, Tensor):
        device = i.device if device is None else device
        ids = i.numpy()
    else:
        ids = np.asarray(i)
    ids = _check_class_ids(n, ids)
    array = _dev(device).one_hot(n, ids, dtype=dtype)
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def _check_class_ids(n: int, ids):
    """Class ids as an int64 array, or an IndexError saying which id is not one of n classes."""
    import numpy as np

    ids = np.asarray(ids)
    if ids.dtype.kind == "f":
        bad = ~np.isfinite(ids) | (ids != np.round(ids))
        if bad.any():
            raise IndexError(
                f"one_hot: class id {ids[bad].flat[0]} is not an integer (at {user_frame()})"
            )
    if ids.dtype.kind not in "iu":
        ids = ids.astype("int64")
    if ids.size and (ids.max() >= n or ids.min() < -n):
        bad = ids.max() if ids.max() >= n else ids.min()
        raise IndexError(
            f"one_hot: class id {int(bad)} is out of range for n={n} classes "
            f"(valid ids are {-n}..{n - 1}) (at {user_frame()})"
        )
    return ids


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
