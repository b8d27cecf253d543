"""A user's own needle op under `jit` and `grad`: one Python callback in the graph.

A needle homework writes ops as `TensorOp` subclasses with `compute` (over NDArrays) and
`gradient` (over Tensors) and no IR op behind them. Eagerly they run as they are. Inside a trace,
`traced_op` makes such an op one CALLBACK node (`needlec.ir.callback`): to learn the output's
shape and dtype it runs `compute` once, at trace time, on zeros of the inputs' shapes and dtypes
(a tracer has no value, and a needle op's output type follows from its inputs' types alone; if
zeros make `compute` raise, ones are tried). When the graph runs, the node calls `compute` on
NDArrays made from its inputs. Its gradient is a second CALLBACK node that calls the user's
`gradient(out_grad, node)` eagerly, on concrete tensors: `node` is a tensor holding the forward's
value whose `.op` is the user's op and whose `.inputs` hold the inputs' values, as needle's
gradient methods read them.

The cost: no pass sees into a callback, so it is a kernel of its own that never fuses with its
neighbours, its inputs and output go through memory, and compiled code stops there and calls
back into Python (on the kernel interpreter, between native segments). A second-order gradient
through it raises (`CallbackError`); an op returning several values (a TensorTuple) raises at
trace time.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import backend_ndarray as nd
from .autograd import NDArray, Primitive, Tensor, TensorOp, TensorTuple
from .frontend.trace import TracerError, eager
from .ir import Op
from .ir.callback import Callback, CallbackError
from .ir.ops import DTYPES, FLOATS, arg_key, promote, user_frame


class _Unfrozen(Exception):
    pass


def _freeze(v):
    """A hashable stand-in for an op attribute, compared by value (numbers, strings, None,
    tuples and lists of them), or `_Unfrozen`."""
    if v is None or isinstance(v, bool | int | float | str | bytes):
        return (type(v).__name__, arg_key(v))
    if isinstance(v, np.generic):
        return (type(v).__name__, arg_key(v.item()))
    if isinstance(v, tuple | list):
        return (type(v).__name__, tuple(_freeze(x) for x in v))
    raise _Unfrozen


def op_key(op: TensorOp) -> tuple:
    """What tells two custom ops apart: their class and attributes when every attribute is a
    plain value (a new `Square()` per call is the same op, so retraces give the same graph), or
    else the op object itself."""
    try:
        items = tuple(sorted((k, _freeze(v)) for k, v in vars(op).items()))
    except (_Unfrozen, TypeError):
        return (type(op), "object", id(op))  # the Callback keeps op alive: ids stay distinct
    return (type(op), items)


def _ndarray(a: np.ndarray) -> NDArray:
    """A numpy array as a new NDArray of its own (the callee may keep or change it)."""
    return NDArray(np.asarray(a), device=nd.default_device())


def _numpy(value, what: str) -> np.ndarray:
    if isinstance(value, tuple | list | TensorTuple):
        raise CallbackError(
            f"{what} returned {len(value)} values: under jit a custom op has one output "
            "(TensorTuple ops are not supported)"
        )
    if isinstance(value, Tensor):
        return value.numpy()
    if isinstance(value, NDArray):
        return value.numpy()
    return np.asarray(value)


def _output_type(op: TensorOp, shapes: list, dtypes: list, where: str) -> tuple[tuple, str]:
    """The shape and dtype of `op.compute` on inputs of these types: compute run once on zeros
    of them (then on ones, if zeros make it raise)."""
    name = type(op).__name__
    first = None
    for fill in (0, 1):
        arrays = [_ndarray(np.full(s, fill, dtype=d)) for s, d in zip(shapes, dtypes, strict=True)]
        try:
            with eager(), np.errstate(all="ignore"):
                out = op.compute(*arrays)
        except Exception as e:  # the user's code: any error
            first = first or e
            continue
        if isinstance(out, tuple | list | TensorTuple):
            raise TracerError(
                f"{name} at {where}: its compute returned {len(out)} values; under jit a custom "
                "op (a Python callback) has one output, so TensorTuple ops are not supported. "
                "Write it with needlec ops, or apply it outside the jitted function."
            )
        out = _numpy(out, f"{name}.compute")
        dtype = nd._infer_dtype(out.dtype) if out.dtype.kind in "biuf" else None
        if dtype not in DTYPES:
            raise TracerError(
                f"{name} at {where}: its compute returned numpy dtype {out.dtype}, which needlec "
                f"does not hold (one of {', '.join(DTYPES)})"
            )
        return tuple(out.shape), dtype
    raise TracerError(
        f"{name} at {where}: to trace a custom op, jit runs its compute once on zeros (and then "
        f"ones) of its inputs' shapes {shapes} and dtypes {dtypes} to learn its output's shape "
        f"and dtype, and it raised {type(first).__name__}: {first}"
    ) from first


def _run_compute(op: TensorOp, cb: Callback, *arrays: np.ndarray) -> np.ndarray:
    """The forward of a CALLBACK node: the user's compute on NDArrays of its inputs."""
    with eager():
        try:
            out = op.compute(*[_ndarray(a) for a in arrays])
        except Exception as e:
            raise CallbackError(f"{cb.describe()}: compute raised {type(e).__name__}: {e}") from e
    out = _numpy(out, f"{cb.describe()}: compute")
    if tuple(out.shape) != cb.shape:
        raise CallbackError(
            f"{cb.describe()}: compute returned shape {tuple(out.shape)} for inputs of shapes "
            f"{[tuple(a.shape) for a in arrays]}, but {cb.shape} when it was traced; under jit "
            "a custom op's output shape must follow from its inputs' shapes alone"
        )
    return out


def _as_tuple(grads) -> tuple:
    if isinstance(grads, TensorTuple):
        return grads.tuple()
    if isinstance(grads, tuple | list):
        return tuple(grads)
    return (grads,)


def _run_gradient(op: TensorOp, cb: Callback, floats: list[int], g, out, *xs) -> np.ndarray:
    """The VJP of a CALLBACK node: the user's gradient(out_grad, node), run eagerly, with
    `node.inputs` the inputs' values; the float inputs' gradients (raveled end to end for
    several)."""
    with eager():
        inputs = [Tensor.make_const(_ndarray(x)) for x in xs]
        node = Tensor.__new__(Tensor)
        node._init(op, inputs, cached_data=_ndarray(out), requires_grad=False)
        try:
            grads = _as_tuple(op.gradient(Tensor.make_const(_ndarray(g)), node))
        except Exception as e:
            raise CallbackError(f"{cb.describe()}: gradient raised {type(e).__name__}: {e}") from e
        if len(grads) != len(xs):
            raise CallbackError(
                f"{cb.describe()}: gradient returned {len(grads)} gradients for {len(xs)} inputs"
            )
        parts = []
        for i in floats:
            x = xs[i]
            if grads[i] is None:
                parts.append(np.zeros(x.shape, x.dtype))
                continue
            a = _numpy(grads[i], f"{cb.describe()}: gradient {i}")
            if tuple(a.shape) != tuple(x.shape):
                raise CallbackError(
                    f"{cb.describe()}: gradient returned shape {tuple(a.shape)} for input {i} "
                    f"of shape {tuple(x.shape)}"
                )
            parts.append(a)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p.reshape(-1).astype(cb.dtype) for p in parts])


def _make_gradient(op: TensorOp, fwd: Callback, shapes: list, dtypes: list[str]) -> Callback:
    floats = [i for i, d in enumerate(dtypes) if d in FLOATS]
    if len(floats) == 1:
        shape, dtype = shapes[floats[0]], dtypes[floats[0]]
    else:
        shape = (sum(math.prod(shapes[i]) for i in floats),)
        dtype = functools.reduce(promote, [dtypes[i] for i in floats])
    key = (fwd.key, tuple(map(tuple, shapes)), tuple(dtypes))
    cb = Callback(None, shape, dtype, fwd.name, fwd.where, key, kind="gradient")
    cb.fn = functools.partial(_run_gradient, op, cb, floats)
    return cb


def traced_op(op: TensorOp, inputs: list) -> Primitive:
    """The op that stands for the user's `op` applied to `inputs` inside a trace: one CALLBACK
    node (its output type found by running `compute` once on zeros; see the module docstring)."""
    where = user_frame()
    shapes = [tuple(x.shape) for x in inputs]
    dtypes = [x.dtype for x in inputs]
    shape, dtype = _output_type(op, shapes, dtypes, where)
    cb = Callback(None, shape, dtype, type(op).__name__, where, op_key(op))
    cb.fn = functools.partial(_run_compute, op, cb)
    cb.make_gradient = functools.partial(_make_gradient, op, cb)
    return Primitive(Op.CALLBACK, cb)


__all__ = ["CallbackError", "op_key", "traced_op"]
