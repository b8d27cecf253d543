"""The reference semantics of each op: what every backend computes, written with numpy.

`EVAL` holds one row per op that computes from its sources, `LEAF_EVAL` one per leaf that makes
its value from the node alone, and `draw_random` gives a RAND node's draws (the counter-based
mapping of `needlec.ir.random`). The reference interpreter (`needlec.codegen.reference`), the
kernel interpreter, constant folding and the memory planner's check all evaluate through them.

>>> evaluate(Op.ADD, [np.ones(2), np.ones(2)], None, (2,), "float32").tolist()
[2.0, 2.0]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

from .collective import allreduce
from .ops import COMPARE, Op
from .random import draw


def _slice(x, spec):
    return x[tuple(slice(a, b, c) for a, b, c in spec)]


def _dilate(x, arg):
    axes, d = arg
    shape = [n * (d + 1) if i in axes else n for i, n in enumerate(x.shape)]
    out = np.zeros(shape, dtype=x.dtype)
    out[tuple(slice(None, None, d + 1) if i in axes else slice(None) for i in range(x.ndim))] = x
    return out


def _logsumexp(x, axes):
    m = np.max(x, axis=axes, keepdims=True) if x.size else np.zeros(())
    m = np.where(np.isfinite(m), m, 0)
    return (np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m).reshape(
        [d for i, d in enumerate(x.shape) if i not in axes]
    )


def _logsoftmax(x, _):
    m = np.max(x, axis=1, keepdims=True)
    z = x - m
    return z - np.log(np.sum(np.exp(z), axis=1, keepdims=True))


def _windows(x, stride: int, pad: int, kh: int, kw: int):
    """im2col: (N*Ho*Wo, KH*KW*Cin) rows of x's zero-padded windows, one per conv output."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    n, h, wd, c = x.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    s = x.strides
    cols = np.lib.stride_tricks.as_strided(
        x, (n, ho, wo, kh, kw, c), (s[0], s[1] * stride, s[2] * stride, s[1], s[2], s[3])
    )
    return cols.reshape(n * ho * wo, kh * kw * c)


def _conv(x, w, arg):
    stride, pad = arg
    kh, kw, cin, cout = w.shape
    ho, wo = (x.shape[1] + 2 * pad - kh) // stride + 1, (x.shape[2] + 2 * pad - kw) // stride + 1
    return (_windows(x, stride, pad, kh, kw) @ w.reshape(kh * kw * cin, cout)).reshape(
        x.shape[0], ho, wo, cout
    )


def _conv_input_grad(g, w, arg):
    """dx[n, oh*s + i - p, ow*s + j - p, c] += sum_o g[n, oh, ow, o] * w[i, j, c, o]: each
    output's window gets its share back (col2im), cropped to the unpadded input."""
    stride, pad, h, wd = arg
    n, ho, wo, cout = g.shape
    kh, kw, cin, _ = w.shape
    cols = g.reshape(n * ho * wo, cout) @ w.reshape(kh * kw * cin, cout).T
    cols = cols.reshape(n, ho, wo, kh, kw, cin)
    dx = np.zeros((n, h + 2 * pad, wd + 2 * pad, cin), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, i : i + stride * ho : stride, j : j + stride * wo : stride] += cols[:, :, :, i, j]
    return dx[:, pad : pad + h, pad : pad + wd]


def _conv_weight_grad(x, g, arg):
    """dw[i, j, c, o] = sum over outputs (n, oh, ow) of x's window value times g."""
    stride, pad, kh, kw = arg
    cols = _windows(x, stride, pad, kh, kw)
    n, ho, wo, cout = g.shape
    return (cols.T @ g.reshape(n * ho * wo, cout)).reshape(kh, kw, x.shape[3], cout)


def draw_random(seed, arg: tuple[str, int], shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A random node's draws: element i a function of (seed, stream, i) alone, the mapping of
    `needlec.ir.random` that every backend draws the same way."""
    dist, stream = arg
    return draw(int(np.asarray(seed).reshape(())), stream, tuple(shape), dtype, dist)


# op -> f(*source arrays, arg) -> array; the result is cast to the node's dtype by the caller
EVAL: dict[Op, Callable] = {
    Op.NEG: lambda x, _: -x,
    Op.EXP: lambda x, _: np.exp(x),
    Op.LOG: lambda x, _: np.log(x),
    Op.TANH: lambda x, _: np.tanh(x),
    Op.RELU: lambda x, _: np.maximum(x, 0),
    Op.SQRT: lambda x, _: np.sqrt(x),
    Op.CAST: lambda x, dtype: x.astype(dtype),
    Op.STOP_GRADIENT: lambda x, _: x,
    Op.ADD_SCALAR: lambda x, c: x + c,
    Op.MUL_SCALAR: lambda x, c: x * c,
    Op.DIV_SCALAR: lambda x, c: x / c,
    Op.POW_SCALAR: lambda x, c: np.power(
        x
        if x.dtype.kind == "f" or (isinstance(c, (int, np.integer)) and c >= 0)
        else x.astype("float64"),
        c,
    ),
    Op.ADD: lambda x, y, _: x + y,
    Op.MUL: lambda x, y, _: x * y,
    Op.DIV: lambda x, y, _: x / y,
    Op.POW: lambda x, y, _: np.power(x, y),
    Op.MAXIMUM: lambda x, y, _: np.maximum(x, y),
    Op.CMPLT: lambda x, y, _: x < y,
    Op.CMPEQ: lambda x, y, _: x == y,
    Op.WHERE: lambda c, x, y, _: np.where(c, x, y),
    Op.SUM: lambda x, axes: np.sum(x, axis=axes),
    Op.MAX: lambda x, axes: np.max(x, axis=axes),
    Op.LOGSUMEXP: _logsumexp,
    Op.RESHAPE: lambda x, shape: np.reshape(x, shape),
    Op.BROADCAST: lambda x, shape: np.broadcast_to(x, shape),
    Op.PERMUTE: lambda x, perm: np.transpose(x, perm),
    Op.FLIP: lambda x, axes: np.flip(x, axes),
    Op.PAD: lambda x, widths: np.pad(x, widths),
    Op.SLICE: _slice,
    Op.DILATE: _dilate,
    Op.STACK: lambda *xs: np.stack(xs[:-1], axis=xs[-1]),
    Op.MATMUL: lambda x, y, _: np.matmul(x, y),
    Op.CONV: _conv,
    Op.CONV_INPUT_GRAD: _conv_input_grad,
    Op.CONV_WEIGHT_GRAD: _conv_weight_grad,
    Op.LOGSOFTMAX: _logsoftmax,
    Op.CALLBACK: lambda *xs: xs[-1](*xs[:-1]),  # the arg (a Callback) runs the user's function
    Op.ALLREDUCE: allreduce,  # over the communicator `needlec.distributed.init` set (mpi4py)
}

# leaves are evaluated from the node itself
LEAF_EVAL: dict[Op, Callable] = {
    Op.CONST: lambda n: (
        n.arg.array if hasattr(n.arg, "array") else np.full(n.shape, n.arg, dtype=n.dtype)
    ),
}


def compute_dtype(op: Op, dtypes: tuple[str, ...], arg) -> str:
    """The dtype numpy computes `op` in for operands of `dtypes` (and scalar `arg`): an int
    over an int divides in float64, an int tensor's exp is float64, bool times float32 is
    float32. For comparisons and `where`, the common dtype of the compared (chosen) operands.
    The result before it is cast to the node's dtype (see `evaluate`)."""
    return _compute_dtype(op, tuple(dtypes), arg)


@functools.lru_cache(maxsize=4096, typed=True)  # 3 and 3.0 compute differently
def _compute_dtype(op: Op, dts: tuple[str, ...], arg) -> str:
    if op is Op.CAST:
        return str(np.dtype(arg))
    if op in COMPARE or op is Op.WHERE:
        return str(np.result_type(*dts[-2:]))
    with np.errstate(all="ignore"):
        out = np.asarray(EVAL[op](*[np.ones(1, d) for d in dts], arg))
    return str(out.dtype)


def evaluate(op: Op, arrays: Sequence[np.ndarray], arg, shape, dtype: str) -> np.ndarray:
    """Apply one op to numpy arrays; the result has exactly `shape` and `dtype`."""
    with np.errstate(all="ignore"):
        out = EVAL[op](*arrays, arg)
    out = np.asarray(out)
    if out.dtype != dtype:
        out = out.astype(dtype)
    return out


__all__ = ["EVAL", "LEAF_EVAL", "compute_dtype", "draw_random", "evaluate"]
