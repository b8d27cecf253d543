"""Function transforms: `grad`, `value_and_grad`, `vjp`.

They differentiate with the VJP table of the autodiff pass, so they work eagerly, inside `jit`
(where they build graph nodes), and on each other (`grad(grad(f))`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .autograd import Tensor, TensorOp, tensor_grads
from .frontend.pytree import flatten


class _Alias(TensorOp):
    """The same value under a new name, so it can be differentiated with respect to."""

    def gradient(self, out_grad, node):
        return out_grad

    def __repr__(self) -> str:
        return "alias()"


def _alias(x) -> Tensor:
    x = x if isinstance(x, Tensor) else Tensor(x, requires_grad=False)
    t = Tensor.__new__(Tensor)
    t._init(
        _Alias(),
        [x],
        cached_data=x.cached_data,
        node=x._node,
        trace=x._trace,
        requires_grad=True,
        origin=None if x._node is not None else x,
        detached=False,
    )
    return t


def _zeros_if_none(g, x: Tensor) -> Tensor:
    return x._const(0.0, x.shape, x.dtype) if g is None else g


def value_and_grad(
    f: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False
) -> Callable:
    """`f`'s value and its gradient with respect to the arguments `argnums` (f returns a scalar).
    Keyword arguments are passed through to `f` and not differentiated.

    >>> import needlec as nc, numpy as np
    >>> v, g = nc.value_and_grad(lambda x: (x * x).sum())(np.array([1.0, 2.0]))
    >>> g.numpy()
    array([2., 4.])
    """
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    name = getattr(f, "__name__", "f")

    def wrapped(*args, **kwargs):
        args = list(args)
        for i in nums:
            if i >= len(args):
                raise TypeError(f"grad({name}): argnums {i} but only {len(args)} arguments")
            args[i] = _alias(args[i])
        out = f(*args, **kwargs)
        aux = None
        if has_aux:
            out, aux = out
        if not isinstance(out, Tensor) or out.shape != ():
            what = out.shape if isinstance(out, Tensor) else type(out).__name__
            raise TypeError(f"grad({name}): the function must return a scalar tensor, got {what}")
        xs = [args[i] for i in nums]
        grads = tensor_grads([out], [out._const(1.0, (), out.dtype)], xs)
        grads = tuple(_zeros_if_none(g, x) for g, x in zip(grads, xs, strict=True))
        g = grads[0] if isinstance(argnums, int) else grads
        return ((out, aux), g) if has_aux else (out, g)

    wrapped.__name__ = f"value_and_grad({name})"
    return wrapped


def grad(f: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False) -> Callable:
    """The gradient of scalar-valued `f` with respect to positional argument(s) `argnums`;
    keyword arguments are passed through and not differentiated, as in `jax.grad`.

    >>> import needlec as nc, numpy as np
    >>> df = nc.grad(lambda x: nc.ops.tanh(x).sum())
    >>> ddf = nc.grad(lambda x: df(x).sum())       # second order
    """
    vg = value_and_grad(f, argnums, has_aux)

    def wrapped(*args, **kwargs):
        (value, g) = vg(*args, **kwargs)
        return (g, value[1]) if has_aux else g

    wrapped.__name__ = f"grad({getattr(f, '__name__', 'f')})"
    return wrapped


def vjp(f: Callable, *primals):
    """(f(*primals), vjp_fn): vjp_fn(cotangent) gives one gradient per primal, as a tuple."""
    xs = [_alias(p) for p in primals]
    out = f(*xs)
    flat_out, _ = flatten(out)

    def vjp_fn(cotangent):
        cots, _ = flatten(cotangent)
        if len(cots) != len(flat_out):
            raise ValueError(f"vjp: {len(flat_out)} outputs but {len(cots)} cotangents")
        cots = [
            c if isinstance(c, Tensor) else Tensor(c, dtype=o.dtype, requires_grad=False)
            for c, o in zip(cots, flat_out, strict=True)
        ]
        for c, o in zip(cots, flat_out, strict=True):
            if c.shape != o.shape:
                raise ValueError(
                    f"vjp: cotangent of shape {c.shape} for an output of shape {o.shape}"
                )
        grads = tensor_grads(flat_out, cots, xs)
        return tuple(_zeros_if_none(g, x) for g, x in zip(grads, xs, strict=True))

    return out, vjp_fn


__all__ = ["grad", "value_and_grad", "vjp"]
